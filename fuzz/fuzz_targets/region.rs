//! An aligned heap region for fuzz targets (shared by both targets via `#[path]`).

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::ptr::NonNull;

pub struct Region {
    pub ptr: NonNull<u8>,
    layout: Layout,
}

impl Region {
    pub fn new(len: usize) -> Region {
        let layout = Layout::from_size_align(len.max(1), ipcd_ring::SEGMENT_ALIGN).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) }).expect("allocation failed");
        Region { ptr, layout }
    }

    pub fn len(&self) -> usize {
        self.layout.size()
    }

    /// A hostile peer overwriting bytes anywhere in the region. Plain byte
    /// stores: the fuzz target is single-threaded, so no access races them.
    pub fn scribble(&self, off: usize, bytes: &[u8]) {
        let off = off % self.len();
        let n = bytes.len().min(self.len() - off);
        // SAFETY: `off..off + n` lies within the allocation.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.ptr.as_ptr().add(off), n) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}
