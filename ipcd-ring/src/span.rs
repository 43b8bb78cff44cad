//! The one bulk primitive: a logical range of the ring is at most two
//! contiguous spans of the data area (before and after the wrap), each copied
//! with one `copy_nonoverlapping`.

use core::ptr::NonNull;

use crate::layout::to_index;

/// The data area of one ring as seen by one process: base pointer and a
/// power-of-two capacity, both fixed when the handle was made.
#[derive(Clone, Copy)]
pub(crate) struct DataArea {
    pub(crate) base: NonNull<u8>,
    pub(crate) cap: u64,
}

impl DataArea {
    /// The (offset, length) spans that logical bytes `pos..pos + len` occupy.
    /// `len <= cap` is the caller's invariant (validated indices guarantee it).
    #[inline]
    fn spans(&self, pos: u64, len: usize) -> [(usize, usize); 2] {
        debug_assert!(len as u64 <= self.cap);
        // Masking keeps `start < cap` whatever `pos` is.
        let start = to_index(pos & (self.cap - 1));
        let first = len.min(to_index(self.cap) - start);
        [(start, first), (0, len - first)]
    }

    /// Copies `src` into logical position `pos`.
    ///
    /// # Safety
    /// `src.len() <= cap`, and the area `base..base + cap` is valid for writes
    /// (guaranteed by the segment's validated layout for as long as the
    /// handle exists).
    #[inline]
    pub(crate) unsafe fn copy_in(&self, pos: u64, src: &[u8]) {
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
    /// As for [`DataArea::copy_in`], with reads instead of writes.
    #[inline]
    pub(crate) unsafe fn copy_out(&self, pos: u64, dst: &mut [u8]) {
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
