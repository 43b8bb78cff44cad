//! The wait/wake protocol, shared by both ends of a ring.
//!
//! A side that cannot make progress (reader: ring empty; writer: not enough
//! space) may sleep in the kernel on its own doorbell, and the other side
//! rings that doorbell only when it is needed:
//!
//! 1. the sleeper sets its `*_waiting` flag, issues a `SeqCst` fence, then
//!    re-checks the ring and the peer's closed flag ([`Consumer::prepare_wait`],
//!    [`Producer::prepare_wait`]); if progress is possible it clears the flag
//!    and does not sleep ([`Wait::Ready`]);
//! 2. otherwise ([`Wait::Sleep`]) it blocks on its doorbell;
//! 3. the other side publishes its index (Release) or its closed flag, issues
//!    a `SeqCst` fence, and if the sleeper's flag is set clears it and
//!    reports that the doorbell must be rung ([`Transfer::wake_peer`], or
//!    `true` from `close`).
//!
//! The two fences make this Dekker's pattern: either the sleeper's re-check
//! sees the new index, or the publisher sees the flag. A doorbell rung for a
//! sleeper that then decided not to sleep leaves a stale token; the next sleep
//! returns at once, the caller re-checks and waits again, so stale tokens cost
//! a loop, never a lost byte. After a sleep that ended for another reason
//! (timeout, signal) the caller calls `cancel_wait`.
//!
//! [`Consumer::prepare_wait`]: crate::Consumer::prepare_wait
//! [`Producer::prepare_wait`]: crate::Producer::prepare_wait

use crate::layout::{RingControl, FLAG_CLOSED};
use crate::sync::{AtomicU32, Ordering};

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
    // Relaxed store: the SeqCst fence right after orders it before the re-check.
    flag.store(1, Ordering::Relaxed);
    // Pairs with the fence in `publish_then_check` on the other side (Dekker).
    crate::sync::fence(Ordering::SeqCst);
}

/// Clears our own waiting flag when we decided not to sleep (or woke early).
#[inline]
pub(crate) fn disarm(flag: &AtomicU32) {
    flag.store(0, Ordering::Relaxed);
}

/// After a publish: fence, then take the peer's waiting flag if it is set.
/// Returns whether the peer's doorbell must be rung.
#[inline]
pub(crate) fn fence_then_take(flag: &AtomicU32) -> bool {
    // Pairs with the fence in `arm` (Dekker): our publish or their flag is seen.
    crate::sync::fence(Ordering::SeqCst);
    // A plain load first: the flag's line stays shared in our cache until the
    // peer actually sleeps, so the common case costs no write.
    flag.load(Ordering::Relaxed) != 0 && flag.swap(0, Ordering::Relaxed) != 0
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
    fence_then_take(&ctrl.writer_waiting)
}
