//! Test and fuzzing support, compiled only for the fuzz targets
//! (`--cfg fuzzing`, set by cargo-fuzz) and this crate's own tests (feature
//! `fuzzing`, which the crate's dev-dependency on itself turns on): an
//! aligned heap region standing in for a mapped segment, and the pokes of
//! a hostile peer that scribbles on it. Not part of the crate's API.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::{Segment, SEGMENT_ALIGN};

/// Zeroed heap memory aligned like an mmap'd segment.
#[derive(Debug)]
pub struct Region {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Region {
    /// `len` zeroed bytes (at least one), aligned as a segment.
    pub fn new(len: usize) -> Region {
        let layout = Layout::from_size_align(len.max(1), SEGMENT_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation failed");
        Region { ptr, layout }
    }

    /// The region's first byte.
    pub fn ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    /// The region's length in bytes.
    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// Never: a region holds at least one byte.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// A hostile peer storing a u64 anywhere in the segment.
    pub fn poke_u64(&self, off: usize, v: u64) {
        assert!(off + 8 <= self.len() && off % 8 == 0);
        // SAFETY: in bounds and aligned (asserted); the location is an AtomicU64.
        unsafe { (*self.ptr.as_ptr().add(off).cast::<AtomicU64>()).store(v, Ordering::SeqCst) }
    }

    /// A hostile peer storing a u32 anywhere in the segment.
    pub fn poke_u32(&self, off: usize, v: u32) {
        assert!(off + 4 <= self.len() && off % 4 == 0);
        // SAFETY: in bounds and aligned (asserted); the location is an AtomicU32.
        unsafe { (*self.ptr.as_ptr().add(off).cast::<AtomicU32>()).store(v, Ordering::SeqCst) }
    }

    /// A hostile peer overwriting bytes anywhere (offset taken modulo the
    /// length). Plain byte stores: only for single-threaded callers, where
    /// no access races them (the fuzz targets).
    pub fn scribble(&self, off: usize, bytes: &[u8]) {
        let off = off % self.len();
        let n = bytes.len().min(self.len() - off);
        // SAFETY: `off..off + n` lies within the allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), n) }
    }

    /// The u64 at `off` (aligned, in bounds).
    pub fn peek_u64(&self, off: usize) -> u64 {
        assert!(off + 8 <= self.len() && off % 8 == 0);
        // SAFETY: as in poke_u64.
        unsafe { (*self.ptr.as_ptr().add(off).cast::<AtomicU64>()).load(Ordering::SeqCst) }
    }

    /// The u32 at `off` (aligned, in bounds).
    pub fn peek_u32(&self, off: usize) -> u32 {
        assert!(off + 4 <= self.len() && off % 4 == 0);
        // SAFETY: as in poke_u32.
        unsafe { (*self.ptr.as_ptr().add(off).cast::<AtomicU32>()).load(Ordering::SeqCst) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A fresh segment over a new region; the region must outlive the segment.
pub fn segment(caps: [u64; 2]) -> (Region, Segment) {
    let region = Region::new(Segment::required_len(caps).unwrap());
    // SAFETY: the region is returned with the view and the tests keep it alive
    // for as long as they use the view or its handles.
    let seg = unsafe { Segment::init(region.ptr(), region.len(), 42, caps) }.unwrap();
    (region, seg)
}
