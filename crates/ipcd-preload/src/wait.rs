//! Sleeping until the peer rings our doorbell, for the blocking calls.
//!
//! The ring's protocol (ipcd-ring's `wait` module) decides *whether* to
//! sleep; this module does the sleeping. One end has one doorbell but may
//! have several threads waiting on it (a reader and a writer, or several
//! readers). Whoever drains the eventfd would steal the wake-up meant for
//! another, so exactly one thread at a time (the drainer) sleeps on the
//! eventfd; the others sleep on a futex over a generation counter that the
//! drainer bumps each time it wakes. Everyone then re-checks the ring.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::link;
use crate::real;
use crate::signals::Caught;

/// Waiters of one connection end.
#[derive(Debug, Default)]
pub struct Sleepers {
    generation: AtomicU32,
    drainer: AtomicBool,
    /// Threads in (or about to enter) the futex wait: the drainer wakes
    /// them only if there are any, saving a system call per sleep.
    futex_waiters: AtomicU32,
}

/// Why a sleep ended without the ring telling us anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// Something may have changed: re-check.
    Retry,
    /// The deadline passed.
    Timeout,
    /// A signal handler ran.
    Interrupted,
}

impl Sleepers {
    /// Sleeps until the doorbell `bell` is rung, a sibling drainer wakes, the
    /// deadline passes, or a signal arrives. The caller has armed its
    /// waiting flag in the ring and got `Wait::Sleep`.
    pub fn sleep(&self, bell: i32, deadline: Option<Instant>) -> Woken {
        let seen = self.generation.load(Ordering::Acquire);
        let timeout = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(timespec(left)),
                _ => return Woken::Timeout,
            },
        };
        let tp = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        if self.drainer.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            let mut pfd = libc::pollfd { fd: bell, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd; a null timeout means no deadline.
            let r = unsafe { real::ppoll(&mut pfd, 1, tp, std::ptr::null()) };
            let err = real::errno();
            if r > 0 {
                link::drain(bell);
            }
            self.drainer.store(false, Ordering::Release);
            // SeqCst with the waiters' increment: either we see their count,
            // or their futex wait sees the new generation and returns.
            self.generation.fetch_add(1, Ordering::SeqCst);
            if self.futex_waiters.load(Ordering::SeqCst) != 0 {
                futex_wake_all(&self.generation);
            }
            return match r {
                0 => Woken::Timeout,
                r if r < 0 && err == libc::EINTR => Woken::Interrupted,
                _ => Woken::Retry,
            };
        }
        // A drainer sleeps on the bell already; it bumps `generation` when it
        // wakes (or gives up the role), so a bump between our load and the
        // futex call makes the futex return at once.
        self.futex_waiters.fetch_add(1, Ordering::SeqCst);
        // SAFETY: futex wait on a live, aligned u32 with an optional relative timeout.
        let r = unsafe {
            real::syscall(
                libc::SYS_futex,
                self.generation.as_ptr() as libc::c_long,
                libc::c_long::from(libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG),
                libc::c_long::from(seen),
                tp as libc::c_long,
                0,
                0,
            )
        };
        let err = real::errno();
        self.futex_waiters.fetch_sub(1, Ordering::SeqCst);
        match (r, err) {
            (0, _) => Woken::Retry,
            (_, libc::ETIMEDOUT) => Woken::Timeout,
            (_, libc::EINTR) => Woken::Interrupted,
            _ => Woken::Retry,
        }
    }
}

impl Sleepers {
    /// In a forked child: the threads that slept here are not in it.
    pub fn forget_threads(&self) {
        self.drainer.store(false, Ordering::Relaxed);
        self.futex_waiters.store(0, Ordering::Relaxed);
    }

    /// A poll or epoll caller drained `bell`: if a blocked call sleeps on it
    /// as drainer, ring it again so that thread wakes and re-checks too.
    pub fn pass_on(&self, bell: i32) {
        if self.drainer.load(Ordering::Acquire) {
            link::ring(bell);
        }
    }
}

fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: futex wake on a live, aligned u32.
    unsafe {
        real::syscall(
            libc::SYS_futex,
            word.as_ptr() as libc::c_long,
            libc::c_long::from(libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG),
            libc::c_long::from(i32::MAX),
            0,
            0,
            0,
        )
    };
}

fn timespec(d: Duration) -> libc::timespec {
    libc::timespec { tv_sec: d.as_secs() as libc::time_t, tv_nsec: libc::c_long::from(d.subsec_nanos() as i32) }
}

/// How long a wait spins before it also yields the core between looks.
/// A peer on another core answers well within it; a peer waiting for
/// *this* core (more busy threads than cores) only runs once we yield —
/// without yielding, two pairs on two cores spent 50 µs of spin per
/// message.
const PURE_SPIN: Duration = Duration::from_micros(2);

/// Between two looks of a spin that has lasted `spun`.
#[inline]
fn pause(spun: Duration) {
    if spun >= PURE_SPIN {
        // SAFETY: no arguments; returns at once if nothing else can run here.
        unsafe { libc::sched_yield() };
    } else {
        std::hint::spin_loop();
    }
}

/// How a spin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spun {
    /// `ready` said yes.
    Ready,
    /// The spin time passed.
    Done,
    /// A signal handler that interrupts this call ran (see `signals`).
    Interrupted,
}

/// Spins while `ready` says no, for at most the configured spin time, and
/// until a handler interrupts the call (`interrupted`, asked between
/// batches of looks).
#[inline]
pub fn spin(mut ready: impl FnMut() -> bool, mut interrupted: impl FnMut() -> bool) -> Spun {
    let budget = crate::config::get().spin;
    if budget.is_zero() {
        return Spun::Done;
    }
    // The clock is read only after each batch of rounds, and started after
    // the first: most waits end within it (a round trip is a fraction of a
    // microsecond) and never pay for reading the clock.
    let mut start = None;
    loop {
        for _ in 0..64 {
            if ready() {
                return Spun::Ready;
            }
            std::hint::spin_loop();
        }
        if interrupted() {
            return Spun::Interrupted;
        }
        let now = Instant::now();
        let spun = now.duration_since(*start.get_or_insert(now));
        if spun >= budget {
            return Spun::Done;
        }
        pause(spun);
    }
}

/// The rhythm of a wait over several fds (poll, select, epoll): rounds that
/// look at the rings, and at the kernel's fds on the first round and every
/// few rounds after, for the spin budget; then a sleep.
#[derive(Debug)]
pub struct Rounds {
    round: u32,
    spin_start: Option<Instant>,
    spin: Duration,
    /// Handlers run before the call began.
    caught: Caught,
}

/// What a wait does after a round that found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Another round.
    Again,
    /// Arm and sleep.
    Sleep,
    /// The deadline passed and the last round looked at the kernel too.
    TimedOut,
    /// A signal handler ran during the call (these calls are never
    /// restarted): `EINTR`.
    Interrupted,
}

/// Rounds of the spin between two looks at the kernel's fds (a look is a
/// system call; a round without one is a few loads per ipcd socket).
const KERNEL_EVERY: u32 = 32;

impl Rounds {
    /// A wait starting now; its first round looks at the kernel.
    pub fn new() -> Rounds {
        Rounds { round: 0, spin_start: None, spin: crate::config::get().spin, caught: Caught::now() }
    }

    /// Whether this round looks at the kernel's fds too.
    pub fn kernel_now(&self) -> bool {
        self.round % KERNEL_EVERY == 0
    }

    /// After a round that found nothing ready.
    pub fn after_empty(&mut self, deadline: Option<Instant>) -> Next {
        let looked = self.kernel_now();
        self.round = self.round.wrapping_add(1);
        let now = Instant::now();
        if deadline.is_some_and(|d| d <= now) {
            if looked {
                return Next::TimedOut;
            }
            // One last look at the kernel before saying "nothing".
            self.round = 0;
            return Next::Again;
        }
        // After the deadline, as Linux's poll: a zero timeout never
        // answers EINTR.
        if self.caught.interrupts(false) {
            return Next::Interrupted;
        }
        let spun = now.duration_since(*self.spin_start.get_or_insert(now));
        if spun < self.spin {
            pause(spun);
            return Next::Again;
        }
        Next::Sleep
    }

    /// Something turned ready while arming: look again, the kernel first.
    pub fn look_again(&mut self) {
        self.round = 0;
    }

    /// After a sleep: spin afresh; `kernel_seen` if the sleep itself just
    /// reported the kernel's fds (no need to ask again at once).
    pub fn woke(&mut self, kernel_seen: bool) {
        self.round = u32::from(kernel_seen);
        self.spin_start = None;
    }
}

impl Default for Rounds {
    fn default() -> Rounds {
        Rounds::new()
    }
}
