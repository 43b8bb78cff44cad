//! A cursor over a caller's iovec array, so that one send or receive can
//! move bytes across several buffers without allocating.

use ipcd_ring::{Consumer, Producer};

use crate::sys::user;

/// Bytes copied between two publications of the ring's index: a large
/// write publishes as it goes, so the reader copies the first part while
/// the writer copies the rest (and a large read frees room as it goes).
/// One publication whole kept the other side idle for the whole copy.
pub(crate) const CHUNK: usize = 64 * 1024;

/// Pieces of an iovec array gathered into one publication of the ring.
pub(crate) const GATHER: usize = 16;

/// Position in an iovec array.
pub(crate) struct IoCursor<'a> {
    iov: &'a [libc::iovec],
    idx: usize,
    off: usize,
}

impl<'a> IoCursor<'a> {
    /// A cursor at the start of `iov`.
    pub(crate) fn new(iov: &'a [libc::iovec]) -> IoCursor<'a> {
        IoCursor { iov, idx: 0, off: 0 }
    }

    /// How many of the next `n` bytes (at most) the program's buffers let
    /// us read (`write`: write), from the cursor on: a copy stops at the
    /// first that faults, as the kernel's does (see `user`).
    pub(crate) fn accessible(&self, n: usize, write: bool) -> usize {
        let (mut idx, mut off, mut left, mut ok) = (self.idx, self.off, n, 0);
        while left > 0 {
            let Some(v) = self.iov.get(idx) else { break };
            let k = (v.iov_len - off).min(left);
            if k > 0 {
                let p = v.iov_base.cast::<u8>().wrapping_add(off);
                let got = user::accessible(p, k, write);
                ok += got;
                if got < k {
                    break;
                }
                left -= k;
            }
            idx += 1;
            off = 0;
        }
        ok
    }

    /// Total bytes the array describes (saturating, as the kernel caps at
    /// `MAX_RW_COUNT` anyway).
    pub(crate) fn total(&self) -> usize {
        self.iov.iter().fold(0usize, |acc, v| acc.saturating_add(v.iov_len)).min(MAX_RW_COUNT)
    }

    /// The next contiguous piece of at most `max` bytes, advancing past it.
    fn next_piece(&mut self, max: usize) -> Option<(*mut u8, usize)> {
        while let Some(v) = self.iov.get(self.idx) {
            let left = v.iov_len - self.off;
            if left == 0 || v.iov_base.is_null() {
                self.idx += 1;
                self.off = 0;
                continue;
            }
            let n = left.min(max);
            // SAFETY: `off < iov_len`, so the pointer stays inside the caller's buffer.
            let p = unsafe { v.iov_base.cast::<u8>().add(self.off) };
            self.off += n;
            if self.off == v.iov_len {
                self.idx += 1;
                self.off = 0;
            }
            return Some((p, n));
        }
        None
    }

    /// Skips `n` bytes.
    pub(crate) fn skip(&mut self, mut n: usize) {
        while n > 0 {
            match self.next_piece(n) {
                Some((_, k)) => n -= k,
                None => return,
            }
        }
    }

    /// Copies `n` bytes from the buffers into the ring. Returns whether the
    /// peer must be woken. The state machine said `n` bytes fit.
    ///
    /// Up to [`GATHER`] pieces (at most [`CHUNK`] bytes) go in one
    /// `write_vectored`: a `writev` of k small pieces is one tail store, one
    /// fence and at most one wake-up, not k of each.
    ///
    /// # Safety
    /// Every iovec must describe readable memory of its length.
    /// With `hold`, the bytes are held back from the reader (`TCP_CORK`).
    pub(crate) unsafe fn write_to(
        &mut self,
        tx: &mut Producer,
        mut n: usize,
        hold: bool,
    ) -> Result<bool, ipcd_ring::Error> {
        let mut wake = false;
        while n > 0 {
            let mut pieces: [&[u8]; GATHER] = [&[]; GATHER];
            let (mut count, mut budget) = (0, n.min(CHUNK));
            while count < GATHER && budget > 0 {
                let Some((p, k)) = self.next_piece(budget) else { break };
                // SAFETY: the caller promised `p..p+k` is readable; the
                // slice lives only until the write below.
                pieces[count] = unsafe { std::slice::from_raw_parts(p, k) };
                count += 1;
                budget -= k;
            }
            if count == 0 {
                break;
            }
            let t = if hold { tx.write_vectored_held(&pieces[..count])? } else { tx.write_vectored(&pieces[..count])? };
            wake |= t.wake_peer;
            n -= n.min(CHUNK) - budget;
        }
        Ok(wake)
    }

    /// Copies (or with `peek`, copies without consuming) `n` readable bytes
    /// into the buffers. Returns whether the peer must be woken.
    ///
    /// # Safety
    /// Every iovec must describe writable memory of its length.
    pub(crate) unsafe fn read_from(
        &mut self,
        rx: &mut Consumer,
        mut n: usize,
        peek: bool,
    ) -> Result<bool, ipcd_ring::Error> {
        let mut wake = false;
        let mut offset = 0;
        while n > 0 {
            let Some((p, k)) = self.next_piece(n.min(CHUNK)) else { break };
            // SAFETY: the caller promised `p..p+k` is writable and ours alone.
            let buf = unsafe { std::slice::from_raw_parts_mut(p, k) };
            if peek {
                rx.peek(offset, buf)?;
                offset += k;
            } else {
                wake |= rx.read(buf)?.wake_peer;
            }
            n -= k;
        }
        Ok(wake)
    }
}

/// Linux caps one read or write at this many bytes (`MAX_RW_COUNT`).
pub(crate) const MAX_RW_COUNT: usize = 0x7fff_f000;
