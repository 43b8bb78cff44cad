//! Interposed signal-handler installation: `sigaction` and the `signal`
//! family put the program's handlers behind the library's relay
//! (`signals`), which tells our blocking calls when to answer `EINTR`.

use libc::{c_int, sighandler_t};

use crate::sys::{config, real, signals};

/// Interposed `sigaction(2)`.
///
/// # Safety
/// As for `sigaction(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    if config::get().disabled {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::sigaction(sig, act, old) };
    }
    // SAFETY: the caller's arguments.
    unsafe { signals::sigaction(sig, act, old) }
}

/// Interposed `signal(3)` (glibc's BSD semantics: `SA_RESTART`).
#[no_mangle]
pub(super) extern "C" fn signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    signals::install(sig, handler, libc::SA_RESTART)
}

/// Interposed `bsd_signal(3)`, the same as `signal`.
#[no_mangle]
pub(super) extern "C" fn bsd_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    signal(sig, handler)
}

/// Interposed `sysv_signal(3)`: one-shot, not deferred, not restarting.
#[no_mangle]
pub(super) extern "C" fn sysv_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    signals::install(sig, handler, libc::SA_RESETHAND | libc::SA_NODEFER)
}

/// `__sysv_signal`, what `signal` names in strict ISO C programs.
#[no_mangle]
pub(super) extern "C" fn __sysv_signal(sig: c_int, handler: sighandler_t) -> sighandler_t {
    sysv_signal(sig, handler)
}
