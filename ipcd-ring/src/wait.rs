//! The wait/wake protocol, shared by both ends of a ring.
//!
//! A side that cannot make progress (reader: ring empty; writer: not enough
//! space) may sleep in the kernel on its own doorbell, and the other side
//! rings that doorbell only when it is needed:
//!
//! 1. the sleeper names its doorbell in the line's [`Waiters`], sets the
//!    `*_waiting` flag, issues a `SeqCst` fence, then re-checks the ring and
//!    the peer's closed flag ([`Consumer::prepare_wait`],
//!    [`Producer::prepare_wait`]); if progress is possible it does not sleep
//!    ([`Wait::Ready`]) and leaves the flag set: another sleeper of the line
//!    may have armed it too, and a stale flag only makes the other side look
//!    at the names once;
//! 2. otherwise ([`Wait::Sleep`]) it blocks on its doorbell, and takes its
//!    name back when it wakes;
//! 3. the other side publishes its index (Release) or its closed flag, issues
//!    a `SeqCst` fence, and if the sleeper's flag is set clears it and
//!    reports that the doorbells named must be rung ([`Transfer::wake_peer`],
//!    or `true` from `close`).
//!
//! The two fences make this Dekker's pattern: either the sleeper's re-check
//! sees the new index, or the publisher sees the flag. A doorbell rung for a
//! sleeper that then decided not to sleep leaves a stale token; the next sleep
//! returns at once, the caller re-checks and waits again, so stale tokens cost
//! a loop, never a lost byte. After a sleep that ended for another reason
//! (timeout, signal) a caller that alone sleeps on the line may call
//! `cancel_wait`.
//!
//! [`Consumer::prepare_wait`]: crate::Consumer::prepare_wait
//! [`Producer::prepare_wait`]: crate::Producer::prepare_wait

use crate::layout::{RingControl, FLAG_CLOSED, WAITER_SLOTS};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// What a side may do after `prepare_wait`.
#[must_use = "sleeping after Wait::Ready can wait forever"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Progress is possible now (or the peer closed): do not sleep, retry.
    Ready,
    /// The waiting flag is armed and nothing can happen until the peer acts:
    /// block on the doorbell, then retry.
    Sleep,
}

/// Result of a write or a read that moved bytes.
#[must_use = "the peer's doorbell must be rung when wake_peer is set"]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transfer {
    /// Bytes moved.
    pub len: usize,
    /// The peer was asleep waiting for this: ring its doorbell.
    pub wake_peer: bool,
}

/// Arms a waiting flag and orders it before the caller's re-check.
#[inline]
pub(crate) fn arm(flag: &AtomicU32) {
    // The SeqCst fence right after orders it before the re-check. A
    // read-modify-write with Release: whoever takes the flag (Acquire)
    // then sees every name written before any sleeper armed it (each RMW
    // continues the release sequence of the ones before).
    flag.fetch_or(1, Ordering::Release);
    // Pairs with the fence in `publish_then_check` on the other side (Dekker).
    crate::sync::fence(Ordering::SeqCst);
}

/// Clears our own waiting flag when we decided not to sleep (or woke early).
#[inline]
pub(crate) fn disarm(flag: &AtomicU32) {
    flag.store(0, Ordering::Relaxed);
}

/// Clears a waiting flag a sleeper no longer needs (it took its name back
/// first), unless another sleeper is named on the line. True when one
/// named itself meanwhile: the flag is set again, but a publish between
/// the clear and that may have skipped its doorbell, so the caller rings
/// the line's doorbells itself.
#[inline]
pub(crate) fn disarm_alone(flag: &AtomicU32, slots: &[AtomicU64; WAITER_SLOTS]) -> bool {
    let named = || slots.iter().any(|s| s.load(Ordering::Relaxed) != 0);
    if flag.load(Ordering::Relaxed) == 0 || named() {
        return false;
    }
    // Acquire: a sleeper whose arming this swap erases is seen by the
    // look below (its name was written before its Release arming).
    flag.swap(0, Ordering::Acquire);
    crate::sync::fence(Ordering::SeqCst);
    if named() {
        flag.fetch_or(1, Ordering::Release);
        return true;
    }
    false
}

/// After a publish: fence, then take the peer's waiting flag if it is set.
/// Returns whether the peer's doorbell must be rung.
#[inline]
pub(crate) fn fence_then_take(flag: &AtomicU32) -> bool {
    // Pairs with the fence in `arm` (Dekker): our publish or their flag is seen.
    crate::sync::fence(Ordering::SeqCst);
    // A plain load first: the flag's line stays shared in our cache until the
    // peer actually sleeps, so the common case costs no write.
    flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Acquire) != 0
}

/// Sets the writer's flags (`FLAG_CLOSED`, optionally `FLAG_RESET`) and
/// reports whether the reader must be woken to see them.
pub(crate) fn close_writer(ctrl: &RingControl, flags: u32) -> bool {
    // Release pairs with the reader's Acquire load of the flags: the last tail
    // store is visible to whoever sees the flag.
    ctrl.writer.flags.fetch_or(flags, Ordering::Release);
    fence_then_take(&ctrl.reader_waiting.waiting)
}

/// Sets the reader's [`FLAG_CLOSED`] and reports whether the writer must be woken.
pub(crate) fn close_reader(ctrl: &RingControl) -> bool {
    // Release pairs with the writer's Acquire load in `is_reader_closed`.
    ctrl.reader.flags.fetch_or(FLAG_CLOSED, Ordering::Release);
    fence_then_take(&ctrl.writer_waiting.waiting)
}

/// The sleepers of one waiting line, named by their doorbells' ids.
///
/// A thread about to sleep on a ring names its doorbell here
/// ([`Waiters::name`]) before it arms the line's waiting flag, and takes
/// the name back when it wakes ([`Waiters::unname`]); whoever takes the
/// flag rings every doorbell named ([`Waiters::ids`]). So each sleeper
/// is rung on a doorbell of its own, whichever process it is in, and a
/// doorbell serves all the ends its thread waits on: nothing per
/// connection. The ids mean nothing to this crate (ipcd's monitor gives
/// them out); a peer can write any value, so they are only looked up,
/// never trusted.
#[derive(Clone, Copy)]
pub struct Waiters<'a> {
    slots: &'a [AtomicU64; WAITER_SLOTS],
}

impl core::fmt::Debug for Waiters<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("Waiters").field(&self.ids()).finish()
    }
}

impl<'a> Waiters<'a> {
    pub(crate) fn of(slots: &'a [AtomicU64; WAITER_SLOTS]) -> Self {
        Waiters { slots }
    }

    /// Names doorbell `id` (nonzero) among the sleepers; false if every
    /// slot is taken (the caller then cannot count on being rung). Before
    /// arming the flag: arming publishes the name.
    pub fn name(&self, id: u64) -> bool {
        if id == 0 {
            return false;
        }
        if self.slots.iter().any(|s| s.load(Ordering::Relaxed) == id) {
            return true;
        }
        self.slots.iter().any(|s| s.compare_exchange(0, id, Ordering::Relaxed, Ordering::Relaxed).is_ok())
    }

    /// Takes doorbell `id`'s name back (every slot holding it).
    pub fn unname(&self, id: u64) {
        for s in self.slots {
            if s.load(Ordering::Relaxed) == id {
                let _ = s.compare_exchange(id, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// The doorbells named, 0 for a free slot. Read after taking the
    /// line's flag, which orders every name written before it was armed.
    pub fn ids(&self) -> [u64; WAITER_SLOTS] {
        core::array::from_fn(|i| self.slots[i].load(Ordering::Relaxed))
    }

    /// Frees every slot (a segment reset for a new connection).
    pub(crate) fn clear(&self) {
        for s in self.slots {
            s.store(0, Ordering::Relaxed);
        }
    }
}
