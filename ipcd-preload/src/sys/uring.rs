//! Whether this process uses io_uring. Its socket operations run in the
//! kernel without passing through any libc call of ours, so on an ipcd
//! socket they would act on the idle kernel socket underneath: a process
//! that uses io_uring keeps its connections on the kernel.
//!
//! Seen: an `io_uring_setup` made through libc's `syscall`, liburing's
//! exported entry points (`io_uring_setup`, `io_uring_queue_init*`) when
//! liburing is a shared library, and an io_uring fd already open when the
//! process first connects or listens (one look at `/proc/self/fd`). Not
//! seen: a ring set up later with an inline system call (a statically
//! linked liburing, Go) or by another process that passes it over.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::sys::log::{log, Level};

static SEEN: AtomicBool = AtomicBool::new(false);
static LOOKED: AtomicBool = AtomicBool::new(false);

/// The process set up (or is about to set up) an io_uring; true the
/// first time.
pub(crate) fn seen() -> bool {
    let first = !SEEN.swap(true, Ordering::Relaxed);
    if first {
        log!(Level::Info, "io_uring in use: this process's new connections and listeners use the kernel");
    }
    first
}

/// Whether the process uses io_uring (a load, and once a look at its fds).
pub(crate) fn in_use() -> bool {
    if SEEN.load(Ordering::Relaxed) {
        return true;
    }
    if !LOOKED.swap(true, Ordering::Relaxed) && has_ring_fd() {
        seen();
        return true;
    }
    false
}

/// Whether some fd of the process is an io_uring instance.
fn has_ring_fd() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return false };
    dir.flatten().any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:[io_uring]"))
}
