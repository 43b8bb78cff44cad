//! Where the monitor maps the first page of each connection segment (its
//! header and ring controls, all the monitor touches): side by side in one
//! reserved range, so that 512 of them share a page-table page. Mapped
//! next to its megabytes-wide segment, each would need one of its own: 4 kB
//! of page tables per connection.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Pages reserved at first use (1 GiB of address space, no memory).
const SLOTS: usize = 1 << 18;

const PAGE: usize = 4096;

struct Arena {
    /// Start of the reserved range (`PROT_NONE`), or null before the first
    /// use or if it could not be reserved.
    base: usize,
    /// Slots never used yet start here.
    next: usize,
    /// Slots given back.
    free: Vec<usize>,
}

static ARENA: Mutex<Arena> = Mutex::new(Arena { base: 0, next: 0, free: Vec::new() });

/// The first page of a segment, mapped shared; unmapped on drop.
pub(crate) struct ControlPage {
    ptr: NonNull<u8>,
    /// Its slot in the arena, or None for a mapping made elsewhere (the
    /// arena was full or could not be reserved).
    slot: Option<usize>,
}

// SAFETY: a shared mapping owned by this value; the pointer is only an address.
unsafe impl Send for ControlPage {}

impl ControlPage {
    /// Maps the first page of `file`.
    pub(crate) fn map(file: BorrowedFd<'_>) -> io::Result<ControlPage> {
        let slot = take_slot();
        let (addr, flags) = match slot {
            Some((_, at)) => (at as *mut libc::c_void, libc::MAP_SHARED | libc::MAP_FIXED),
            None => (std::ptr::null_mut(), libc::MAP_SHARED),
        };
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: MAP_FIXED only over a slot of our own reservation, which
        // nothing else uses; otherwise the kernel chooses.
        let p = unsafe { libc::mmap(addr, PAGE, prot, flags, file.as_raw_fd(), 0) };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            if let Some((slot, at)) = slot {
                // The reservation's page is still there: a failed MAP_FIXED
                // leaves the old mapping (or none, which `give_back` mends).
                give_back(slot, at);
            }
            return Err(e);
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("null mapping"))?;
        Ok(ControlPage { ptr, slot: slot.map(|(s, _)| s) })
    }

    pub(crate) fn as_ptr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn len(&self) -> usize {
        PAGE
    }
}

impl Drop for ControlPage {
    fn drop(&mut self) {
        match self.slot {
            Some(slot) => give_back(slot, self.ptr.as_ptr() as usize),
            // SAFETY: our own mapping of one page, no longer referenced.
            None => unsafe {
                libc::munmap(self.ptr.as_ptr().cast(), PAGE);
            },
        }
    }
}

fn arena() -> std::sync::MutexGuard<'static, Arena> {
    ARENA.lock().unwrap_or_else(|p| p.into_inner())
}

/// A free slot and its address, reserving the range at first use.
fn take_slot() -> Option<(usize, usize)> {
    let mut a = arena();
    if a.base == 0 {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a new inaccessible anonymous range; no memory behind it.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), SLOTS * PAGE, libc::PROT_NONE, flags, -1, 0) };
        if p == libc::MAP_FAILED {
            return None;
        }
        a.base = p as usize;
    }
    let slot = match a.free.pop() {
        Some(s) => s,
        None if a.next < SLOTS => {
            a.next += 1;
            a.next - 1
        }
        None => return None,
    };
    Some((slot, a.base + slot * PAGE))
}

/// Puts the reservation back over slot `slot` at `at` and frees it.
fn give_back(slot: usize, at: usize) {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED;
    // SAFETY: MAP_FIXED over our own slot, whose page nobody references.
    let p = unsafe { libc::mmap(at as *mut libc::c_void, PAGE, libc::PROT_NONE, flags, -1, 0) };
    if p != libc::MAP_FAILED {
        arena().free.push(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    fn memfd() -> OwnedFd {
        // SAFETY: a NUL-terminated name.
        let fd = unsafe { libc::memfd_create(c"control-page-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sizing our memfd.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 2 * PAGE as libc::off_t) }, 0);
        fd
    }

    #[test]
    fn pages_share_memory_with_the_file_and_slots_come_back() {
        let f = memfd();
        let a = ControlPage::map(f.as_fd()).unwrap();
        let b = ControlPage::map(f.as_fd()).unwrap();
        assert_ne!(a.as_ptr(), b.as_ptr());
        // SAFETY: both map the memfd's first page, read and write.
        unsafe {
            a.as_ptr().as_ptr().write_volatile(42);
            assert_eq!(b.as_ptr().as_ptr().read_volatile(), 42);
        }
        // Both in the arena, whose slots are pages of one range.
        assert!(a.slot.is_some() && b.slot.is_some());
        let base = arena().base;
        for p in [&a, &b] {
            let at = p.as_ptr().as_ptr() as usize;
            assert!(at >= base && at < base + SLOTS * PAGE && (at - base) % PAGE == 0);
        }
        drop(a);
        // A slot given back is mapped again, over the reservation.
        let c = ControlPage::map(f.as_fd()).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { c.as_ptr().as_ptr().read_volatile() }, 42);
    }
}
