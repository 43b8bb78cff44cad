//! The one bulk primitive: a logical range of the ring is at most two
//! contiguous spans of an area (before and after the wrap), each copied
//! with one `copy_nonoverlapping`; a ring has two areas (see [`DataArea`]),
//! so a range is at most four.

use core::ptr::NonNull;

use crate::error::{Corruption, Error};
use crate::layout::{to_index, WriterLine};
use crate::sync::Ordering;

/// One power-of-two area of a ring's bytes: base pointer and capacity.
#[derive(Clone, Copy)]
pub(crate) struct Area {
    pub(crate) base: NonNull<u8>,
    pub(crate) cap: u64,
}

impl Area {
    /// The (offset, length) spans that logical bytes `pos..pos + len` occupy.
    /// `len <= cap` is the caller's invariant (validated indices guarantee it).
    #[inline]
    fn spans(&self, pos: u64, len: usize) -> [(usize, usize); 2] {
        debug_assert!(len as u64 <= self.cap);
        if len == 0 {
            return [(0, 0); 2];
        }
        // Masking keeps `start < cap` whatever `pos` is (`cap` is not 0
        // when there are bytes to place: see `DataArea::split`).
        let start = to_index(pos & (self.cap - 1));
        let first = len.min(to_index(self.cap) - start);
        [(start, first), (0, len - first)]
    }

    /// Copies `src` into logical position `pos`.
    ///
    /// # Safety
    /// `src.len() <= cap`, and the area `base..base + cap` is valid for writes.
    #[inline]
    unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let mut done = 0;
        for (off, len) in self.spans(pos, src.len()) {
            if len == 0 {
                continue;
            }
            // SAFETY: `off + len <= cap` by construction of `spans`; the area is
            // valid per this function's contract; `src` is a separate local
            // buffer, so the ranges do not overlap. The bytes are plain `u8`,
            // so whatever a peer scribbles there concurrently is still a valid value.
            unsafe { core::ptr::copy_nonoverlapping(src.as_ptr().add(done), self.base.as_ptr().add(off), len) };
            done += len;
        }
    }

    /// Copies logical bytes `pos..pos + dst.len()` out into `dst`.
    ///
    /// # Safety
    /// As for [`Area::copy_in`], with reads instead of writes.
    #[inline]
    unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let mut done = 0;
        for (off, len) in self.spans(pos, dst.len()) {
            if len == 0 {
                continue;
            }
            // SAFETY: as in `copy_in`: in bounds by `spans`, valid by contract,
            // `dst` is local memory distinct from the shared area.
            unsafe { core::ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr().add(done), len) };
            done += len;
        }
    }
}

/// The bytes of one ring as seen by one process. A ring starts in its
/// small area (in the segment's first page, so that a connection that
/// only ever has a few hundred bytes in flight touches no other page) and
/// moves to its bulk area, for good, at the first write that does not fit
/// there: the writer's switch position (`grown_at`), from which on every
/// byte lives in the bulk area. `cap` is the bulk area's capacity, the
/// ring's: the small area only changes where the first bytes are placed.
#[derive(Clone, Copy)]
pub(crate) struct DataArea {
    pub(crate) small: Area,
    pub(crate) bulk: Area,
    pub(crate) cap: u64,
    /// The switch position as this handle knows it (validated): `None`
    /// while the ring is (as far as it knows) in its small area.
    pub(crate) grown_at: Option<u64>,
}

impl DataArea {
    /// A ring over `small` and `bulk`, not yet grown.
    pub(crate) fn new(small: Area, bulk: Area) -> Self {
        DataArea { small, bulk, cap: bulk.cap, grown_at: None }
    }

    /// How many of the bytes `pos..pos + len` lie in the small area (the
    /// rest follow in the bulk area). Any `grown_at` is memory-safe here:
    /// the count is at most the small area's capacity (each area masks
    /// its own offsets), so a false one only misplaces bytes.
    #[inline]
    fn split(&self, pos: u64, len: usize) -> usize {
        match self.grown_at {
            None => len,
            Some(at) => {
                let before = at.wrapping_sub(pos);
                if before <= self.small.cap {
                    len.min(to_index(before))
                } else {
                    0
                }
            }
        }
    }

    /// Copies `src` into logical position `pos`.
    ///
    /// # Safety
    /// `src.len() <= cap`; while the ring is in its small area,
    /// `src.len() <=` the small area's capacity; both areas are valid for
    /// writes (guaranteed by the segment's validated layout for as long
    /// as the handle exists).
    #[inline]
    pub(crate) unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
        let n = self.split(pos, src.len());
        // SAFETY: the caller's contract; `n` is at most the small area's
        // capacity and the rest at most `cap`.
        unsafe {
            self.small.copy_in(pos, &src[..n]);
            self.bulk.copy_in(pos.wrapping_add(n as u64), &src[n..]);
        }
    }

    /// Copies logical bytes `pos..pos + dst.len()` out into `dst`.
    ///
    /// # Safety
    /// As for [`DataArea::copy_in`], with reads instead of writes.
    #[inline]
    pub(crate) unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
        let n = self.split(pos, dst.len());
        let (small, bulk) = dst.split_at_mut(n);
        // SAFETY: as in `copy_in`.
        unsafe {
            self.small.copy_out(pos, small);
            self.bulk.copy_out(pos.wrapping_add(n as u64), bulk);
        }
    }
}

/// Where the ring's bytes lie, as its writer's line says, validated
/// against a `head..tail` the caller validated: `None` while the ring is
/// in its small area, which must then hold every unread byte; else the
/// switch position, which, if it lies among the unread bytes, must leave
/// at most a small area's worth before it (as the writer keeps it). Read
/// after an Acquire load of `tail`: a tail past the switch was published
/// after it.
pub(crate) fn grown_at(w: &WriterLine, data: &DataArea, head: u64, tail: u64) -> Result<Option<u64>, Error> {
    let unread = tail.wrapping_sub(head);
    if w.grown.load(Ordering::Acquire) == 0 {
        if unread > data.small.cap {
            return Err(Error::Corrupt(Corruption::Tail { found: tail }));
        }
        return Ok(None);
    }
    let at = w.grown_at.load(Ordering::Relaxed);
    let before = at.wrapping_sub(head);
    if before <= unread && before > data.small.cap {
        return Err(Error::Corrupt(Corruption::Tail { found: tail }));
    }
    Ok(Some(at))
}
