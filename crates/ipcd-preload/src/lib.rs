//! The ipcd preload library: loaded with `LD_PRELOAD` into unmodified
//! programs, it moves their TCP connections to other ipcd processes on this
//! host onto shared-memory rings, and leaves every other fd to libc.
//!
//! Layout: [`real`] resolves the libc functions we stand in for; `ffi_*`
//! are the interposed symbols (thin: find the fd, call in, set `errno`);
//! [`table`] maps fds to [`socket::Socket`] objects; [`setup`] does
//! connect/listen/accept through the monitor ([`control`]); [`stream`] is
//! the data path over a [`link::Link`], waiting with [`wait`], which asks
//! [`signals`] whether a handler interrupted the wait.
#![warn(missing_docs)]

pub mod bell;
pub mod config;
pub mod control;
pub mod epoll;
pub mod exec;
pub mod fds;
mod ffi_io;
mod ffi_poll;
mod ffi_signal;
mod ffi_socket;
mod ffi_stdio;
mod ffi_syscall;
pub mod fork;
pub mod iov;
pub mod link;
pub mod log;
pub mod pass;
pub mod poll;
pub mod readiness;
pub mod real;
pub mod setup;
pub mod signals;
pub mod socket;
pub mod stream;
pub mod table;
pub mod wait;
pub mod yields;

/// The library's constructor: the fd table grown while we are alone in the
/// process, fork handlers, and connections handed over by the image that
/// exec'd us.
extern "C" fn init() {
    guarded((), || {
        if !config::get().disabled {
            fds::reserve_table();
            fork::install();
            exec::restore();
        }
    });
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

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
