//! The ipcd preload library: loaded with `LD_PRELOAD` into unmodified
//! programs, it moves their TCP connections to other ipcd processes on this
//! host onto shared-memory rings, and leaves every other fd to libc.
//!
//! Its surface is its `#[no_mangle]` symbols; the modules are layers, each
//! using only those below it:
//!
//! - `ffi` — the interposed entry points (thin: decode, find the fd, call in);
//! - `fork` — the fork handlers; `close` — what closing one of our fds does;
//! - `ready` — readiness, poll/select and epoll over ring state;
//! - `socket` — the socket object, fd table, data path, set-up, pass, exec;
//! - `control` — the channel to the monitor (`request_queue`: its shared-memory
//!   ring for requests without fds or replies, in the monitor's queue modes);
//! - `conn` — the link to a segment, doorbells, waiting;
//! - `sys` — real libc, our own fds, signals, config, log, process identity.
#![warn(missing_docs, missing_debug_implementations)]

mod close;
mod conn;
mod control;
mod ffi;
mod fork;
mod ready;
mod request_queue;
mod socket;
mod sys;

/// The library's constructor: the fd table grown while we are alone in the
/// process, fork handlers, and connections handed over by the image that
/// exec'd us.
extern "C" fn init() {
    sys::guarded((), || {
        sys::config::report_invalid();
        if !sys::config::get().disabled {
            sys::fds::reserve_table();
            fork::install();
            sys::signals::guard_faults();
            socket::exec::restore();
            ffi::standard_streams();
        }
    });
}

#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;
