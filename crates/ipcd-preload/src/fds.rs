//! Where the library keeps its own fds (control channel, doorbells): high
//! in the fd space and close-on-exec, away from the low numbers programs
//! assume are theirs (`dup2(x, 3)`, "close everything above 2").

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::real;

/// Highest floor we use: the kernel grows a process's fd table up to the
/// number used, so a huge `RLIMIT_NOFILE` must not make every table huge.
const MAX_FLOOR: u64 = 4096;

fn floor() -> libc::c_int {
    static FLOOR: OnceLock<libc::c_int> = OnceLock::new();
    *FLOOR.get_or_init(|| {
        let mut rl = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
        // SAFETY: getrlimit into a live struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
        (rl.rlim_cur - rl.rlim_cur / 4).min(MAX_FLOOR) as libc::c_int
    })
}

/// Moves `fd` to a high, close-on-exec number (keeps it where it is if
/// there is no room up there).
pub fn hide(fd: OwnedFd) -> OwnedFd {
    if fd.as_raw_fd() >= floor() {
        return fd;
    }
    // SAFETY: duplicates an fd we own; the original closes when `fd` drops.
    let high = unsafe { real::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, floor() as usize) };
    if high < 0 {
        return fd;
    }
    // SAFETY: `high` is a fresh fd that only we hold.
    unsafe { OwnedFd::from_raw_fd(high) }
}
