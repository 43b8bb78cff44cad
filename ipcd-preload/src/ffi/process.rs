//! Interposed `fork(2)` and `vfork(2)`; the work is in the fork handlers
//! ([`crate::fork`]).

use crate::sys::{guarded, real};

/// Interposed `fork(2)`: the atfork handlers do the work; a failure undoes
/// the holders added for the child.
///
/// # Safety
/// As for `fork(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fork() -> libc::pid_t {
    // SAFETY: plain fork.
    let pid = unsafe { real::fork() };
    if pid < 0 {
        let e = real::errno();
        guarded((), crate::fork::undo);
        real::set_errno(e);
    }
    pid
}

/// Interposed `vfork(2)`: a real fork. A vfork child shares the parent's
/// memory, where our tables live; a fork keeps both processes' books
/// apart, and a program that uses vfork correctly (exec or _exit at once)
/// cannot tell the difference.
///
/// # Safety
/// As for `vfork(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn vfork() -> libc::pid_t {
    // SAFETY: as the caller's contract.
    unsafe { fork() }
}
