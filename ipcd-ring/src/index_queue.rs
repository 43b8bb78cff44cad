//! A bounded queue of small numbers that many processes push and one
//! pops: the shared request queue of the poster's second design, where
//! each entry is the number of a process whose own request ring has work.
//!
//! Region layout (every word shared with every pusher, so none is
//! trusted by the popper):
//!
//! ```text
//! line 0: magic, slot count | line 1: head (popper) | line 2: tail (pushers) | slots
//! ```
//!
//! A pusher reserves position `t` by compare-exchange on `tail` (only while
//! `t - head < slots`, so it never laps the popper) and then stores
//! `(lap + 1) << 32 | number` into slot `t % slots`, where `lap = t /
//! slots`: the popper takes a slot only when its tag is the one position
//! `head` expects, so a slot left from an earlier lap, or never written,
//! is never mistaken for an entry. The popper keeps `head` to itself and
//! only publishes it, so a pusher that overwrites the shared `head` or
//! `tail` makes entries late or lost, never read twice or out of bounds;
//! the popper's owner sweeps every ring now and then for that case.

use core::ptr::NonNull;

use crate::error::Error;
use crate::layout::CACHE_LINE;
use crate::sync::{AtomicU64, Ordering};

/// First word of an index queue's region ("IPCDIDXQ").
pub const INDEX_QUEUE_MAGIC: u64 = u64::from_le_bytes(*b"IPCDIDXQ");

/// Where the slots start in the region.
const SLOTS_AT: usize = 3 * CACHE_LINE;
const MAGIC_AT: usize = 0;
const COUNT_AT: usize = 8;
const HEAD_AT: usize = CACHE_LINE;
const TAIL_AT: usize = 2 * CACHE_LINE;

/// A view of an index queue in a region shared by all its pushers.
#[derive(Debug)]
pub struct IndexQueue {
    base: NonNull<u8>,
    slots: u64,
}

// SAFETY: the view holds a pointer to a mapping the creator keeps valid
// (contract of `init`/`attach`) and touches it only through atomics.
unsafe impl Send for IndexQueue {}
// SAFETY: as above; `&IndexQueue` only performs atomic operations.
unsafe impl Sync for IndexQueue {}

/// What [`Popper::pop`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pop {
    /// Nothing queued.
    Empty,
    /// The next entry: a number a pusher queued (untrusted: any value).
    Number(u32),
    /// A pusher reserved the next position and has not written it yet
    /// (it is between its two steps, or gone): try again soon, or
    /// [`Popper::skip`] it and sweep.
    Pending,
    /// The shared words were overwritten (a `tail` more than a lap ahead):
    /// the popper caught up with `tail`; entries may be lost, so sweep.
    Lost,
}

impl IndexQueue {
    /// Bytes a queue of `slots` entries needs.
    pub const fn required_len(slots: usize) -> usize {
        SLOTS_AT + slots * 8
    }

    /// Writes an empty queue of `slots` entries (a power of two) into the
    /// region.
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, 8-byte
    /// aligned, not in use by anyone else during this call, and stay
    /// mapped while this view exists.
    pub unsafe fn init(base: NonNull<u8>, len: usize, slots: usize) -> Result<IndexQueue, Error> {
        if slots == 0 || !slots.is_power_of_two() || slots > u32::MAX as usize {
            return Err(Error::BadCapacity(slots as u64));
        }
        check(base, len, IndexQueue::required_len(slots))?;
        let words = [(MAGIC_AT, INDEX_QUEUE_MAGIC), (COUNT_AT, slots as u64), (HEAD_AT, 0), (TAIL_AT, 0)];
        for (at, v) in words {
            // SAFETY: within the region (checked), aligned, ours alone now.
            unsafe { base.as_ptr().add(at).cast::<AtomicU64>().write(AtomicU64::new(v)) };
        }
        for i in 0..slots {
            // SAFETY: as above; slot `i` lies within `required_len(slots)`.
            unsafe { base.as_ptr().add(SLOTS_AT + i * 8).cast::<AtomicU64>().write(AtomicU64::new(0)) };
        }
        Ok(IndexQueue { base, slots: slots as u64 })
    }

    /// A view of a queue another process made; the magic and the slot
    /// count are checked against `len`.
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, 8-byte
    /// aligned, hold a queue written by [`IndexQueue::init`] (in any state
    /// a pusher may have left it) and stay mapped while this view exists.
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<IndexQueue, Error> {
        check(base, len, SLOTS_AT)?;
        let q = IndexQueue { base, slots: 1 };
        if q.word(MAGIC_AT).load(Ordering::Relaxed) != INDEX_QUEUE_MAGIC {
            return Err(Error::BadLayout);
        }
        let slots = q.word(COUNT_AT).load(Ordering::Relaxed);
        let fits = usize::try_from(slots).ok().filter(|&n| n > 0 && n.is_power_of_two() && n <= u32::MAX as usize);
        let Some(n) = fits else { return Err(Error::BadCapacity(slots)) };
        check(base, len, IndexQueue::required_len(n))?;
        Ok(IndexQueue { base, slots })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        // SAFETY: every offset used is within the region checked at
        // init/attach, 8-byte aligned, and holds an atomic (any bit
        // pattern is a valid u64).
        unsafe { &*self.base.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn slot(&self, pos: u64) -> &AtomicU64 {
        // `pos % slots < slots`, so the offset is within the region.
        #[allow(clippy::cast_possible_truncation)]
        self.word(SLOTS_AT + (pos % self.slots) as usize * 8)
    }

    /// Queues `number`; false when the queue is full (the popper is a lap
    /// behind), in which case nothing was queued.
    pub fn push(&self, number: u32) -> bool {
        let tail = self.word(TAIL_AT);
        let mut t = tail.load(Ordering::Relaxed);
        loop {
            let head = self.word(HEAD_AT).load(Ordering::Acquire);
            if t.wrapping_sub(head) >= self.slots {
                return false;
            }
            match tail.compare_exchange_weak(t, t.wrapping_add(1), Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => t = now,
            }
        }
        // Release pairs with the popper's Acquire load of the slot: what the
        // pusher wrote before (its ring's tail) is visible once the entry is.
        self.slot(t).store(tag(t, self.slots) | u64::from(number), Ordering::Release);
        true
    }

    /// The popping side. There must be one popper per queue at a time
    /// (the monitor); nothing here can enforce that across processes.
    pub fn popper(&self) -> Popper<'_> {
        self.popper_at(self.word(HEAD_AT).load(Ordering::Relaxed))
    }

    /// The popping side again, at the position an earlier popper reached
    /// ([`Popper::position`]), whatever the shared `head` says now.
    pub fn popper_at(&self, head: u64) -> Popper<'_> {
        Popper { queue: self, head }
    }
}

/// The lap tag position `pos` expects in its slot.
fn tag(pos: u64, slots: u64) -> u64 {
    ((pos / slots).wrapping_add(1) & 0xffff_ffff) << 32
}

fn check(base: NonNull<u8>, len: usize, need: usize) -> Result<(), Error> {
    if base.as_ptr() as usize % 8 != 0 {
        return Err(Error::Misaligned);
    }
    if len < need {
        return Err(Error::RegionTooSmall { need, have: len });
    }
    Ok(())
}

/// The one consumer of an [`IndexQueue`]: it keeps its own `head`.
#[derive(Debug)]
pub struct Popper<'q> {
    queue: &'q IndexQueue,
    head: u64,
}

impl Popper<'_> {
    /// Takes the next entry, if one is there.
    pub fn pop(&mut self) -> Pop {
        let q = self.queue;
        let t = q.word(TAIL_AT).load(Ordering::Acquire);
        let ahead = t.wrapping_sub(self.head);
        if ahead == 0 {
            return Pop::Empty;
        }
        if ahead > q.slots {
            // Pushers never go a lap ahead: someone wrote `tail` (or `head`).
            self.head = t;
            self.publish();
            return Pop::Lost;
        }
        let v = q.slot(self.head).load(Ordering::Acquire);
        if v & !0xffff_ffff != tag(self.head, q.slots) {
            return Pop::Pending;
        }
        self.head = self.head.wrapping_add(1);
        self.publish();
        #[allow(clippy::cast_possible_truncation)]
        Pop::Number(v as u32)
    }

    /// Gives up on the entry [`Pop::Pending`] waits for (its pusher may be
    /// gone): whatever it named must be found another way (a sweep).
    pub fn skip(&mut self) {
        self.head = self.head.wrapping_add(1);
        self.publish();
    }

    /// The next position this popper takes (see [`IndexQueue::popper_at`]).
    pub fn position(&self) -> u64 {
        self.head
    }

    fn publish(&self) {
        // Release: pushers that see the room see the slot taken.
        self.queue.word(HEAD_AT).store(self.head, Ordering::Release);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    #[repr(C, align(128))]
    struct Region([u8; IndexQueue::required_len(8)]);

    fn region() -> std::boxed::Box<Region> {
        std::boxed::Box::new(Region([0; IndexQueue::required_len(8)]))
    }

    #[test]
    fn entries_come_out_in_order_and_a_full_queue_refuses() {
        let mut r = region();
        let base = NonNull::new(r.0.as_mut_ptr()).unwrap();
        // SAFETY: the region outlives the view.
        let q = unsafe { IndexQueue::init(base, r.0.len(), 8) }.unwrap();
        let mut p = q.popper();
        assert_eq!(p.pop(), Pop::Empty);
        for round in 0..5u32 {
            for i in 0..8 {
                assert!(q.push(round * 100 + i));
            }
            assert!(!q.push(7), "a ninth entry would lap the popper");
            for i in 0..8 {
                assert_eq!(p.pop(), Pop::Number(round * 100 + i));
            }
            assert_eq!(p.pop(), Pop::Empty);
        }
    }

    #[test]
    fn hostile_words_lose_entries_but_never_invent_them() {
        let mut r = region();
        let base = NonNull::new(r.0.as_mut_ptr()).unwrap();
        // SAFETY: the region outlives both views.
        let q = unsafe { IndexQueue::init(base, r.0.len(), 8) }.unwrap();
        // SAFETY: as above.
        let other = unsafe { IndexQueue::attach(base, r.0.len()) }.unwrap();
        let mut p = q.popper();
        // A reserved position never written: pending, then skipped.
        other.word(TAIL_AT).fetch_add(1, Ordering::Relaxed);
        assert_eq!(p.pop(), Pop::Pending);
        p.skip();
        assert_eq!(p.pop(), Pop::Empty);
        // A slot written with another lap's tag is not an entry.
        assert!(q.push(5));
        assert_eq!(p.pop(), Pop::Number(5));
        other.word(TAIL_AT).fetch_add(1, Ordering::Relaxed);
        other.slot(2).store(tag(10, 8) | 9, Ordering::Relaxed);
        assert_eq!(p.pop(), Pop::Pending);
        // A tail thrown far ahead: the popper resyncs and says so.
        other.word(TAIL_AT).store(1 << 40, Ordering::Relaxed);
        assert_eq!(p.pop(), Pop::Lost);
        assert_eq!(p.pop(), Pop::Empty);
        // A shared head rewound by a pusher does not make the popper reread.
        other.word(HEAD_AT).store(0, Ordering::Relaxed);
        assert_eq!(p.pop(), Pop::Empty);
        // Bad regions are refused.
        other.word(COUNT_AT).store(6, Ordering::Relaxed);
        // SAFETY: the region outlives the attempt.
        assert!(unsafe { IndexQueue::attach(base, r.0.len()) }.is_err());
        other.word(COUNT_AT).store(1 << 20, Ordering::Relaxed);
        // SAFETY: the region outlives the attempt.
        assert!(unsafe { IndexQueue::attach(base, r.0.len()) }.is_err());
        other.word(MAGIC_AT).store(0, Ordering::Relaxed);
        // SAFETY: the region outlives the attempt.
        assert!(unsafe { IndexQueue::attach(base, r.0.len()) }.is_err());
    }

    #[test]
    fn many_pushers_one_popper_lose_nothing() {
        const SLOTS: usize = 64;
        #[repr(C, align(128))]
        struct Big([u8; IndexQueue::required_len(SLOTS)]);
        let mut r = std::boxed::Box::new(Big([0; IndexQueue::required_len(SLOTS)]));
        let base = NonNull::new(r.0.as_mut_ptr()).unwrap();
        // SAFETY: the region outlives the view and the threads (scoped).
        let q = unsafe { IndexQueue::init(base, r.0.len(), SLOTS) }.unwrap();
        const EACH: u32 = if cfg!(miri) { 300 } else { 20_000 };
        let mut seen: Vec<u32> = Vec::new();
        std::thread::scope(|s| {
            for t in 0..4u32 {
                let q = &q;
                s.spawn(move || {
                    for i in 0..EACH {
                        while !q.push(t << 24 | i) {
                            std::hint::spin_loop();
                        }
                    }
                });
            }
            let mut p = q.popper();
            while seen.len() < 4 * EACH as usize {
                match p.pop() {
                    Pop::Number(n) => seen.push(n),
                    Pop::Empty | Pop::Pending => std::hint::spin_loop(),
                    Pop::Lost => panic!("no pusher here writes the shared words"),
                }
            }
        });
        // Each pusher's entries come out whole and in its order.
        for t in 0..4u32 {
            let mine: Vec<u32> = seen.iter().filter(|&&n| n >> 24 == t).map(|&n| n & 0xff_ffff).collect();
            assert_eq!(mine, (0..EACH).collect::<Vec<_>>());
        }
    }
}
