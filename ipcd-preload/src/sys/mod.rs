//! The floor of the library: the real libc functions, our own hidden fds,
//! signal bookkeeping, the CPU-yield counters, configuration, logging, the
//! iovec cursor and the process's identity. Nothing here knows of sockets.

pub(crate) mod config;
pub(crate) mod fds;
pub(crate) mod iov;
pub(crate) mod log;
pub(crate) mod memfd;
pub(crate) mod process;
pub(crate) mod real;
pub(crate) mod signals;
pub(crate) mod uring;
pub(crate) mod user;
pub(crate) mod yields;

/// Runs `f`, turning a panic into `fail` with `errno = EIO`: a bug of ours
/// must never unwind into C or abort the program.
#[inline]
pub(crate) fn guarded<R>(fail: R, f: impl FnOnce() -> R) -> R {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(_) => {
            real::set_errno(libc::EIO);
            fail
        }
    }
}
