//! Which of the program's signal handlers ran during one of our blocking
//! calls, so that the call answers `EINTR` exactly when Linux's would.
//!
//! Linux interrupts a blocking call when a handler runs during it, and
//! restarts socket calls (`recv`, `send`, `accept`, ...) after a handler
//! installed with `SA_RESTART` unless the socket has a timeout; `poll`,
//! `select` and `epoll_wait` are never restarted. Our calls first spin in
//! user space, where a handler runs without interrupting any system call,
//! and then sleep in `ppoll` or `futex`, which every handler interrupts.
//! Left to that, a signal during the spin was lost (nginx missed the
//! SIGTERM that arrived while it finished a connection, and slept on) and
//! an `SA_RESTART` handler made `recv` fail with `EINTR`.
//!
//! So every handler the program installs (`sigaction`, `signal` and its
//! variants are interposed) is installed behind [`relay`], which counts,
//! per thread, the handlers run and those without `SA_RESTART`, then calls
//! the program's. A call takes a [`Caught`] when it starts and asks it
//! whether it was interrupted. A handler we did not install (a raw
//! `rt_sigaction`, glibc's own) is not counted: a call it interrupts is
//! restarted, as those handlers ask.
//!
//! `SIGSEGV` and `SIGBUS` always go through the relay (installed from the
//! constructor, whatever the program sets): a fault in the library's
//! copies of the program's memory is answered with `EFAULT` (`user`), and
//! only other faults reach the program's handler or its default action.

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};

use libc::{c_int, c_void, siginfo_t};

use crate::sys::{real, user};

/// Signal numbers are below this (`_NSIG` on Linux).
const NSIG: usize = 65;

/// glibc adds it to every action it installs (`<bits/sigaction.h>`).
const SA_RESTORER: c_int = 0x0400_0000;

/// The program's handler and flags for each signal we relay.
static HANDLERS: [AtomicUsize; NSIG] = [const { AtomicUsize::new(0) }; NSIG];
static FLAGS: [AtomicI32; NSIG] = [const { AtomicI32::new(0) }; NSIG];

thread_local! {
    // Const-initialised and without destructors: touching them from a
    // signal handler neither allocates nor registers anything.
    static RAN: Cell<u32> = const { Cell::new(0) };
    static RAN_NO_RESTART: Cell<u32> = const { Cell::new(0) };
}

fn bump(c: &'static std::thread::LocalKey<Cell<u32>>) {
    let _ = c.try_with(|c| c.set(c.get().wrapping_add(1)));
}

fn read(c: &'static std::thread::LocalKey<Cell<u32>>) -> u32 {
    c.try_with(Cell::get).unwrap_or(0)
}

/// The handlers run on this thread up to some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Caught {
    ran: u32,
    ran_no_restart: u32,
}

impl Caught {
    /// Now, at the start of a call.
    pub(crate) fn now() -> Caught {
        Caught { ran: read(&RAN), ran_no_restart: read(&RAN_NO_RESTART) }
    }

    /// Whether a handler ran since `self` that interrupts a call which is
    /// `restartable` (a socket call without a timeout) or not (poll, a
    /// socket with `SO_RCVTIMEO`/`SO_SNDTIMEO`).
    pub(crate) fn interrupts(self, restartable: bool) -> bool {
        let now = Caught::now();
        if restartable {
            now.ran_no_restart != self.ran_no_restart
        } else {
            now.ran != self.ran
        }
    }
}

/// What the kernel calls for every signal whose handler the program
/// installed: counts, then calls the program's handler.
extern "C" fn relay(sig: c_int, info: *mut siginfo_t, ctx: *mut c_void) {
    let Some(i) = index(sig) else { return };
    if is_fault(sig) && user::fixup(ctx) {
        return;
    }
    let (handler, flags) = (HANDLERS[i].load(Ordering::Acquire), FLAGS[i].load(Ordering::Acquire));
    if is_fault(sig) {
        // SAFETY: the kernel passes a valid siginfo to an SA_SIGINFO handler.
        let sent = unsafe { info.as_ref() }.is_none_or(|i| i.si_code <= 0);
        if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
            default_fault(sig, sent && handler == libc::SIG_DFL, sent && handler == libc::SIG_IGN);
            return;
        }
        if flags & libc::SA_RESETHAND != 0 {
            // Emulated (the relay must stay): the next one is the default's.
            HANDLERS[i].store(libc::SIG_DFL, Ordering::Release);
        }
    }
    bump(&RAN);
    if flags & libc::SA_RESTART == 0 {
        bump(&RAN_NO_RESTART);
    }
    if handler == libc::SIG_DFL || handler == libc::SIG_IGN {
        // Only in the instant a concurrent sigaction swaps handlers.
        return;
    }
    if flags & libc::SA_SIGINFO != 0 {
        // SAFETY: the program installed this as an SA_SIGINFO handler.
        let f: extern "C" fn(c_int, *mut siginfo_t, *mut c_void) = unsafe { std::mem::transmute(handler) };
        f(sig, info, ctx);
    } else {
        // SAFETY: the program installed this as a plain handler.
        let f: extern "C" fn(c_int) = unsafe { std::mem::transmute(handler) };
        f(sig);
    }
}

/// `SIGSEGV` or `SIGBUS`: the relay stays installed for them.
fn is_fault(sig: c_int) -> bool {
    sig == libc::SIGSEGV || sig == libc::SIGBUS
}

/// A fault signal whose action the program left at default or ignored:
/// what the kernel would do without us. A fault (the faulting instruction
/// runs again on return) kills under the default action, as the kernel
/// also kills for an ignored one; a signal sent with `kill` is raised
/// again under the default (`raise`: it stays pending until we return)
/// or dropped when ignored.
fn default_fault(sig: c_int, raise: bool, ignored_send: bool) {
    if ignored_send {
        return;
    }
    // SAFETY: an all-zero sigaction is SIG_DFL with an empty mask.
    let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
    dfl.sa_sigaction = libc::SIG_DFL;
    // SAFETY: a live struct; sigaction and raise are async-signal-safe.
    unsafe {
        real::sigaction(sig, &dfl, std::ptr::null_mut());
        if raise {
            libc::raise(sig);
        }
    }
}

/// From the constructor: `SIGSEGV` and `SIGBUS` go through the relay, the
/// actions found (default, or ignored across exec) kept as the program's.
pub(crate) fn guard_faults() {
    for sig in [libc::SIGSEGV, libc::SIGBUS] {
        let Some(i) = index(sig) else { continue };
        // SAFETY: an all-zero sigaction is a valid out buffer.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a query into a live struct.
        if unsafe { real::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return;
        }
        HANDLERS[i].store(old.sa_sigaction, Ordering::Release);
        FLAGS[i].store(old.sa_flags & !SA_RESTORER, Ordering::Release);
        // SAFETY: an all-zero sigaction is a valid empty one.
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = relay as *const () as usize;
        // On the thread's alternate stack if it has one: a fault may be a
        // stack overflow (Rust's runtime, for one, expects that).
        act.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        // SAFETY: a live struct.
        if unsafe { real::sigaction(sig, &act, std::ptr::null_mut()) } != 0 {
            return;
        }
    }
    user::set_guarded();
}

fn index(sig: c_int) -> Option<usize> {
    usize::try_from(sig).ok().filter(|&i| i > 0 && i < NSIG)
}

/// `sigaction(2)` with the program's handler behind [`relay`]; `old` is
/// given back as the program installed it.
///
/// # Safety
/// As for `sigaction`.
pub(crate) unsafe fn sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int {
    let Some(i) = index(sig).filter(|_| sig != libc::SIGKILL && sig != libc::SIGSTOP) else {
        // SAFETY: the caller's arguments; the kernel refuses them itself.
        return unsafe { real::sigaction(sig, act, old) };
    };
    let relayed = relay as *const () as usize;
    let before = (HANDLERS[i].load(Ordering::Acquire), FLAGS[i].load(Ordering::Acquire));
    // SAFETY: `act` is null or the caller's valid struct.
    let mine = unsafe { act.as_ref() }.map(|a| {
        // The relay itself comes back from a program that read the kernel's
        // action around us: it stays as it is (stored, it would call itself).
        let plain = a.sa_sigaction == libc::SIG_DFL || a.sa_sigaction == libc::SIG_IGN;
        if a.sa_sigaction == relayed || (plain && !(is_fault(sig) && user::is_guarded())) {
            return *a;
        }
        // Stored first: from the moment the kernel has the relay, it
        // relays to this handler.
        HANDLERS[i].store(a.sa_sigaction, Ordering::Release);
        FLAGS[i].store(a.sa_flags, Ordering::Release);
        let mut m = *a;
        m.sa_sigaction = relayed;
        m.sa_flags |= libc::SA_SIGINFO;
        if is_fault(sig) {
            // The relay stays; it emulates a one-shot handler itself.
            m.sa_flags &= !libc::SA_RESETHAND;
            if plain {
                m.sa_flags |= libc::SA_ONSTACK;
            }
        }
        m
    });
    let mine_ptr = mine.as_ref().map_or(std::ptr::null(), |m| m as *const libc::sigaction);
    // SAFETY: `mine_ptr` is null or our valid copy; `old` the caller's.
    let r = unsafe { real::sigaction(sig, mine_ptr, old) };
    if r == 0 {
        // SAFETY: `old` is null or the caller's valid struct, just written.
        if let Some(o) = unsafe { old.as_mut() } {
            if o.sa_sigaction == relayed {
                o.sa_sigaction = before.0;
                o.sa_flags = before.1 | (o.sa_flags & SA_RESTORER);
            }
        }
    }
    r
}

/// `signal` and its variants, over [`sigaction`] as glibc builds them
/// (`flags`: `SA_RESTART` for BSD semantics, one-shot for System V).
pub(crate) fn install(sig: c_int, handler: libc::sighandler_t, flags: c_int) -> libc::sighandler_t {
    // SAFETY: an all-zero sigaction is a valid empty one.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler;
    act.sa_flags = flags;
    // SAFETY: an empty set, then one member (an invalid number is refused
    // by sigaction below).
    unsafe {
        libc::sigemptyset(&mut act.sa_mask);
        if flags & libc::SA_NODEFER == 0 {
            libc::sigaddset(&mut act.sa_mask, sig);
        }
    }
    // SAFETY: an all-zero sigaction to receive the old one.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: both structs are live.
    if unsafe { sigaction(sig, &act, &mut old) } != 0 {
        return libc::SIG_ERR;
    }
    old.sa_sigaction
}
