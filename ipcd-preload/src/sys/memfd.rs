//! Mapping a memfd the monitor sent: its size from `fstat` (the monitor
//! seals it against shrinking, so that size is its size for good) and one
//! shared read-write mapping of all of it.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use super::real;

/// Maps the whole of `fd`; `(base, len)`, ours to unmap. `expect`: the
/// size the monitor announced, refused (`EINVAL`) when the file's differs.
pub(crate) fn map_whole(fd: BorrowedFd<'_>, expect: Option<u64>) -> Result<(NonNull<u8>, usize), i32> {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(real::errno());
    }
    let size = u64::try_from(st.st_size).map_err(|_| libc::EINVAL)?;
    let len = usize::try_from(size).map_err(|_| libc::EINVAL)?;
    if len == 0 || expect.is_some_and(|e| e != size) {
        return Err(libc::EINVAL);
    }
    // SAFETY: a fresh shared mapping of the whole memfd.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(real::errno());
    }
    let base = NonNull::new(p.cast::<u8>()).ok_or(libc::EINVAL)?;
    Ok((base, len))
}
