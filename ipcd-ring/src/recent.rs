//! The last bytes written, carried on the writer's line beside `tail`.
//!
//! A reader that waits for a small message polls `tail`; when it changes,
//! reading the bytes from the data area costs a second cache-line transfer
//! from the writer's core, one after the other. The writer therefore also
//! keeps a copy of the last [`RECENT`] bytes it published on its own line:
//! the load that brings the new `tail` brings the bytes with it.
//!
//! The copy is an accelerator only. The data area stays authoritative and
//! complete; a reader that finds the copy torn, stale or not covering what
//! it wants reads the data area as before. The copy is published under a
//! sequence lock (`recent_end` is [`BUSY`] while the words change), so a
//! reader never uses a mix of two writes; a hostile writer can only put
//! wrong bytes there, which it could as well put in the data area.

use crate::layout::{to_index, WriterLine, BUSY, RECENT};
use crate::sync::{fence, Ordering};

const WORDS: usize = RECENT / 8;

/// The byte at stream position `pos` lives at this index of the copy.
#[inline]
fn slot(pos: u64) -> usize {
    to_index(pos % RECENT as u64)
}

/// The writer's private view of the copy: the last bytes written, at their
/// slots, and the stream range `[end - len, end)` they cover.
pub(crate) struct Shadow {
    bytes: [u8; RECENT],
    end: u64,
    len: usize,
}

impl Shadow {
    pub(crate) const fn new() -> Shadow {
        Shadow { bytes: [0; RECENT], end: BUSY, len: 0 }
    }

    /// Forgets the bytes: another handle of this end may have written since.
    pub(crate) fn reset(&mut self) {
        self.len = 0;
        self.end = BUSY;
    }

    /// Notes `chunk`, written at stream position `pos`.
    #[inline]
    pub(crate) fn append(&mut self, pos: u64, chunk: &[u8]) {
        if self.end != pos {
            self.len = 0;
        }
        // Only the last RECENT bytes can survive.
        let skip = chunk.len().saturating_sub(RECENT);
        for (i, &b) in chunk[skip..].iter().enumerate() {
            self.bytes[slot(pos.wrapping_add((skip + i) as u64))] = b;
        }
        self.len = (self.len + chunk.len()).min(RECENT);
        self.end = pos.wrapping_add(chunk.len() as u64);
    }

    /// Publishes the copy on `line`. Call after the bytes are in the data
    /// area and before `tail` is stored.
    #[inline]
    pub(crate) fn publish(&self, line: &WriterLine) {
        if self.len == 0 {
            return;
        }
        // The sequence lock's writer side: mark busy, order that before the
        // word stores (Release fence), then the bounds with Release.
        line.recent_end.store(BUSY, Ordering::Relaxed);
        fence(Ordering::Release);
        for (w, chunk) in line.recent.iter().zip(self.bytes.chunks_exact(8)) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            w.store(u64::from_le_bytes(word), Ordering::Relaxed);
        }
        // `len <= RECENT` (32), so the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        line.recent_len.store(self.len as u32, Ordering::Relaxed);
        line.recent_end.store(self.end, Ordering::Release);
    }
}

/// The reader's snapshot of the copy: bytes of `[end - len, end)`.
pub(crate) struct Snapshot {
    bytes: [u8; RECENT],
    end: u64,
    len: usize,
}

impl Snapshot {
    pub(crate) const fn new() -> Snapshot {
        Snapshot { bytes: [0; RECENT], end: 0, len: 0 }
    }

    /// Takes a consistent copy from `line`, or keeps the old one if the
    /// writer is rewriting it.
    #[inline]
    pub(crate) fn take(&mut self, line: &WriterLine) {
        // The sequence lock's reader side: bounds (Acquire), words, Acquire
        // fence, bounds again; equal bounds mean no rewrite overlapped.
        let end = line.recent_end.load(Ordering::Acquire);
        if end == BUSY {
            return;
        }
        let len = line.recent_len.load(Ordering::Relaxed) as usize;
        let mut words = [0u64; WORDS];
        for (w, v) in line.recent.iter().zip(words.iter_mut()) {
            *v = w.load(Ordering::Relaxed);
        }
        fence(Ordering::Acquire);
        if line.recent_end.load(Ordering::Relaxed) != end || len > RECENT {
            return;
        }
        for (chunk, w) in self.bytes.chunks_exact_mut(8).zip(words) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        self.end = end;
        self.len = len;
    }

    /// Copies stream bytes `pos..pos + dst.len()` into `dst` if the
    /// snapshot holds all of them; false otherwise (nothing copied).
    #[inline]
    pub(crate) fn copy(&self, pos: u64, dst: &mut [u8]) -> bool {
        let start = self.end.wrapping_sub(self.len as u64);
        let off = pos.wrapping_sub(start);
        if off > self.len as u64 || dst.len() as u64 > self.len as u64 - off {
            return false;
        }
        for (i, d) in dst.iter_mut().enumerate() {
            *d = self.bytes[slot(pos.wrapping_add(i as u64))];
        }
        true
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    extern crate std;
    use std::{vec, vec::Vec};

    use super::*;
    use crate::layout::WriterLine;

    fn line() -> WriterLine {
        WriterLine::new(0)
    }

    fn read(s: &Snapshot, pos: u64, len: usize) -> Option<Vec<u8>> {
        let mut v = vec![0; len];
        s.copy(pos, &mut v).then_some(v)
    }

    #[test]
    fn a_published_copy_serves_exactly_the_bytes_it_covers() {
        let (l, mut w, mut r) = (line(), Shadow::new(), Snapshot::new());
        // Stream positions near the top of u64 and across a slot wrap.
        let at = u64::MAX - 40;
        w.append(at, b"hello ");
        w.append(at + 6, b"world");
        w.publish(&l);
        r.take(&l);
        assert_eq!(read(&r, at, 11).as_deref(), Some(&b"hello world"[..]));
        assert_eq!(read(&r, at + 6, 5).as_deref(), Some(&b"world"[..]));
        assert_eq!(read(&r, at + 11, 0).as_deref(), Some(&b""[..]));
        assert_eq!(read(&r, at + 6, 6), None, "one past the end");
        assert_eq!(read(&r, at - 1, 2), None, "one before the start");
    }

    #[test]
    fn only_the_last_recent_bytes_survive_and_a_gap_starts_afresh() {
        let (l, mut w, mut r) = (line(), Shadow::new(), Snapshot::new());
        let data: Vec<u8> = (0..50).collect();
        w.append(100, &data[..30]);
        w.append(130, &data[30..]);
        w.publish(&l);
        r.take(&l);
        assert_eq!(read(&r, 118, 32).as_deref(), Some(&data[18..]));
        assert_eq!(read(&r, 117, 1), None);
        // A write that does not continue the last one (another handle wrote
        // in between) must not splice onto the old bytes.
        w.append(200, b"xy");
        w.publish(&l);
        r.take(&l);
        assert_eq!(read(&r, 200, 2).as_deref(), Some(&b"xy"[..]));
        assert_eq!(read(&r, 199, 1), None);
    }

    #[test]
    fn a_copy_being_rewritten_or_claiming_too_much_is_not_taken() {
        let (l, mut w, mut r) = (line(), Shadow::new(), Snapshot::new());
        w.append(0, b"abcd");
        w.publish(&l);
        r.take(&l);
        // The writer is mid-rewrite: the old snapshot stays.
        l.recent_end.store(BUSY, Ordering::Relaxed);
        l.recent[0].store(u64::from_le_bytes(*b"zzzzzzzz"), Ordering::Relaxed);
        r.take(&l);
        assert_eq!(read(&r, 0, 4).as_deref(), Some(&b"abcd"[..]));
        // A hostile length beyond the copy is refused.
        l.recent_len.store(1000, Ordering::Relaxed);
        l.recent_end.store(1000, Ordering::Relaxed);
        r.take(&l);
        assert_eq!(read(&r, 0, 4).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(read(&r, 990, 4), None);
    }

    #[test]
    fn nothing_is_published_before_the_first_write_or_after_a_reset() {
        let (l, mut w, mut r) = (line(), Shadow::new(), Snapshot::new());
        w.publish(&l);
        r.take(&l);
        assert_eq!(read(&r, 0, 1), None);
        assert_eq!(read(&r, 0, 0).as_deref(), Some(&b""[..]), "an empty range is always covered");
        w.append(0, b"ab");
        w.reset();
        w.append(2, b"cd");
        w.publish(&l);
        r.take(&l);
        assert_eq!(read(&r, 0, 2), None);
        assert_eq!(read(&r, 2, 2).as_deref(), Some(&b"cd"[..]));
    }
}
