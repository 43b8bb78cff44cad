//! Sleeping until a doorbell rings, for the blocking calls.
//!
//! The ring's protocol (ipcd-ring's `wait` module) decides *whether* to
//! sleep; this module does the sleeping. Each waiting thread sleeps on a
//! doorbell of its own (an epoll wait on its instance's), named in the
//! waiting lines of the rings it waits on (see `bell`), so whoever takes
//! a line's flag wakes every sleeper of that line, in any process: no
//! waiter empties a doorbell another one needed.
//!
//! A line names at most `ipcd_ring::WAITER_SLOTS` sleepers; one that
//! finds no slot free, or no doorbell (no monitor to register it with),
//! naps instead ([`Nap::Unnamed`]).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::sys::signals::Caught;
use crate::sys::{real, yields};

/// Longest sleep of a wait on an end another process shares: it may be
/// made by a holder that cannot name itself (an earlier monitor's end).
pub(crate) const SHARED_NAP: Duration = Duration::from_millis(10);

/// Longest sleep of a wait that could not name its doorbell.
pub(crate) const UNNAMED_NAP: Duration = Duration::from_millis(1);

/// How soon a wait must look again, whatever wakes it: the longest sleep
/// allowed by the ends it waits on. Ordered: a wait on several ends takes
/// the largest (the shortest sleep).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Nap {
    /// No end: sleep until the deadline.
    #[default]
    None,
    /// An end: no longer than `peer::LOOK_NAP` (its monitor and peer may
    /// die unseen, see `peer`).
    End,
    /// An end another process shares: no longer than [`SHARED_NAP`].
    Shared,
    /// The waiter's doorbell is not named: no longer than [`UNNAMED_NAP`].
    Unnamed,
}

impl Nap {
    /// The nap of an end, shared or not.
    pub(crate) fn of_end(shared: bool) -> Nap {
        if shared {
            Nap::Shared
        } else {
            Nap::End
        }
    }
}

/// When a wait should look again at the latest: `deadline`, or sooner as
/// `nap` asks.
pub(crate) fn nap_until(deadline: Option<Instant>, nap: Nap) -> Option<Instant> {
    let longest = match nap {
        Nap::None => return deadline,
        Nap::End => crate::conn::peer::LOOK_NAP,
        Nap::Shared => SHARED_NAP,
        Nap::Unnamed => UNNAMED_NAP,
    };
    let nap = Instant::now() + longest;
    Some(deadline.map_or(nap, |d| d.min(nap)))
}

/// Why a sleep ended without the ring telling us anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Woken {
    /// Something may have changed: re-check.
    Retry,
    /// The deadline passed.
    Timeout,
    /// A signal handler ran.
    Interrupted,
}

/// Sleeps in `ppoll` on doorbell `bell` until it rings, `until` passes
/// (None: no limit) or a signal arrives, and empties it.
pub(crate) fn sleep_on(bell: i32, until: Option<Instant>) -> Woken {
    let timeout = match until {
        None => None,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() => Some(timespec(left)),
            _ => return Woken::Timeout,
        },
    };
    let tp = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let mut p = libc::pollfd { fd: bell, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd; a null timeout means no deadline.
    let r = unsafe { real::ppoll(&mut p, 1, tp, std::ptr::null()) };
    let err = real::errno();
    if p.revents != 0 {
        crate::conn::bell::take(bell);
    }
    match r {
        0 => Woken::Timeout,
        r if r < 0 && err == libc::EINTR => Woken::Interrupted,
        _ => Woken::Retry,
    }
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

/// A yield that took longer than this gave the core to a thread that did
/// not hand it back soon: one that runs until the scheduler's tick (4 ms
/// here) takes the core from it.
const SLOW_YIELD_NS: u64 = 1_000_000;

/// How long waits in this process skip the yielding part of their spin
/// and sleep at once instead (the doorbell then wakes them, as the kernel
/// would), after a slow yield that gave the core to work not ours (see
/// `yields`). Then a yield is tried again: such a yield costs a tick per
/// this much time.
const CONTENDED_NS: u64 = 100_000_000;

/// Until when (`monotonic_ns`) the cores are taken to be busy with work
/// not ours.
static CONTENDED_UNTIL: AtomicU64 = AtomicU64::new(0);

/// Milliseconds of the monotonic clock (vDSO: no system call).
pub(crate) fn now_ms() -> u64 {
    monotonic_ns() / 1_000_000
}

/// Nanoseconds of the monotonic clock (vDSO: no system call).
pub(crate) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a live timespec; CLOCK_MONOTONIC cannot fail (vDSO).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Between two looks of a spin that has lasted `spun`; false when the wait
/// should sleep now: the cores are busy with work not ours, to which a
/// yield would give ours for a whole tick. `yield_first`: no pure spin
/// (the peer waits for this very core, see [`spin`]).
#[inline]
fn pause(spun: Duration, yield_first: bool) -> bool {
    if spun < PURE_SPIN && !yield_first {
        std::hint::spin_loop();
        return true;
    }
    let before = monotonic_ns();
    if before < CONTENDED_UNTIL.load(Ordering::Relaxed) {
        return false;
    }
    let mark = yields::before();
    // SAFETY: no arguments; returns at once if nothing else can run here.
    unsafe { libc::sched_yield() };
    let after = monotonic_ns();
    if after.saturating_sub(before) > SLOW_YIELD_NS && !yields::others_ran(mark) {
        CONTENDED_UNTIL.fetch_max(after + CONTENDED_NS, Ordering::Relaxed);
        return false;
    }
    true
}

/// Spins for `d` without looking at anything shared.
pub(crate) fn pause_for(d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        for _ in 0..4 {
            std::hint::spin_loop();
        }
    }
}

/// Threads of this process spinning now (see [`SpinSlot`]).
static SPINNING: AtomicU32 = AtomicU32::new(0);

/// A place among the threads of this process that may spin at once
/// (`Config::spinners`); a wait that gets none sleeps. Spinners
/// beyond the cores only burn CPU the threads they wait for could use
/// (eight threads connecting at once, each waiting for its one-byte
/// answer: about a third less user time with one place than with eight).
#[derive(Debug)]
pub(crate) struct SpinSlot(());

impl SpinSlot {
    /// A place, if one is free.
    pub(crate) fn take() -> Option<SpinSlot> {
        let max = crate::sys::config::get().spinners;
        if SPINNING.fetch_add(1, Ordering::Relaxed) >= max {
            SPINNING.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(SpinSlot(()))
    }

    /// In a forked child: only the forking thread lives on, and it is not
    /// spinning.
    pub(crate) fn reset_after_fork() {
        SPINNING.store(0, Ordering::Relaxed);
    }
}

impl Drop for SpinSlot {
    fn drop(&mut self) {
        SPINNING.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Looks at the ring between two looks at the clock in [`spin`].
const LOOKS_PER_BATCH: u32 = 64;

/// How a spin ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Spun {
    /// `ready` said yes.
    Ready,
    /// The spin time passed.
    Done,
    /// A signal handler that interrupts this call ran (see `signals`).
    Interrupted,
}

/// Spins while `ready` says no, for at most the configured spin time, and
/// until a handler interrupts the call (`interrupted`, asked between
/// batches of looks). `yield_first`: the peer that will answer last ran
/// on this very core, so it cannot answer before we yield it: the spin
/// yields from its first look instead of spinning first (two pairs of
/// processes on two cores, each pair put on one core by the scheduler's
/// wake-affine placement: 0.17 -> 1.0-2.1 M round trips/s).
#[inline]
pub(crate) fn spin(yield_first: bool, mut ready: impl FnMut() -> bool, mut interrupted: impl FnMut() -> bool) -> Spun {
    let budget = crate::sys::config::get().spin;
    if budget.is_zero() {
        return Spun::Done;
    }
    // The clock is read only after each batch of looks, and started after
    // the first: most waits end within it (a round trip is a fraction of a
    // microsecond) and never pay for reading the clock, nor for a place
    // among the spinners (two locked instructions), taken only then.
    let mut start = None;
    let mut slot = None;
    // A peer that needs this core cannot answer before we yield it.
    let looks = if yield_first { 1 } else { LOOKS_PER_BATCH };
    loop {
        for _ in 0..looks {
            if ready() {
                return Spun::Ready;
            }
            std::hint::spin_loop();
        }
        if slot.is_none() {
            slot = SpinSlot::take();
            if slot.is_none() {
                return Spun::Done;
            }
        }
        if interrupted() {
            return Spun::Interrupted;
        }
        let now = Instant::now();
        let spun = now.duration_since(*start.get_or_insert(now));
        if spun >= budget {
            return Spun::Done;
        }
        if !pause(spun, yield_first) {
            return Spun::Done;
        }
    }
}

/// The rhythm of a wait over several fds (poll, select, epoll): rounds that
/// look at the rings, and at the kernel's fds on the first round and every
/// few rounds after, for the spin budget; then a sleep.
#[derive(Debug)]
pub(crate) struct Rounds {
    round: u32,
    spin_start: Option<Instant>,
    spin: Duration,
    /// Held while the rounds spin (not across a sleep).
    slot: Option<SpinSlot>,
    /// Handlers run before the call began.
    caught: Caught,
}

/// What a wait does after a round that found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
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
    pub(crate) fn new() -> Rounds {
        Rounds { round: 0, spin_start: None, spin: crate::sys::config::get().spin, slot: None, caught: Caught::now() }
    }

    /// Whether this round looks at the kernel's fds too.
    pub(crate) fn kernel_now(&self) -> bool {
        self.round % KERNEL_EVERY == 0
    }

    /// After a round that found nothing ready.
    pub(crate) fn after_empty(&mut self, deadline: Option<Instant>) -> Next {
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
            if self.slot.is_none() {
                self.slot = SpinSlot::take();
            }
            if self.slot.is_some() && pause(spun, false) {
                return Next::Again;
            }
        }
        self.slot = None;
        Next::Sleep
    }

    /// Something turned ready while arming: look again, the kernel first.
    pub(crate) fn look_again(&mut self) {
        self.round = 0;
    }

    /// After a sleep: spin afresh; `kernel_seen` if the sleep itself just
    /// reported the kernel's fds (no need to ask again at once).
    pub(crate) fn woke(&mut self, kernel_seen: bool) {
        self.round = u32::from(kernel_seen);
        self.spin_start = None;
    }
}

impl Default for Rounds {
    fn default() -> Rounds {
        Rounds::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A spin whose `ready` says yes at look `at` (never if 0); the looks made.
    fn spin_until(at: u32) -> (Spun, u32) {
        spin_until_with(false, at)
    }

    fn spin_until_with(yield_first: bool, at: u32) -> (Spun, u32) {
        let mut looks = 0;
        let spun = spin(
            yield_first,
            || {
                looks += 1;
                looks == at
            },
            || false,
        );
        (spun, looks)
    }

    #[test]
    fn no_more_threads_spin_than_there_are_places() {
        let max = crate::sys::config::get().spinners as usize;
        let held: Vec<SpinSlot> = std::iter::from_fn(SpinSlot::take).take(max + 1).collect();
        assert_eq!(held.len(), max);
        // A wait without a place gives up after its first batch of looks.
        assert_eq!(spin_until(0), (Spun::Done, LOOKS_PER_BATCH));
        // A wait that ends within that batch needs no place.
        assert_eq!(spin_until(3), (Spun::Ready, 3));
        // A wait whose peer shares our core looks once before it asks for
        // a place (to yield the core to that peer).
        assert_eq!(spin_until_with(true, 0), (Spun::Done, 1));
        drop(held);
        // Places come back when the spinners stop: this spin takes one for
        // its second batch and gives it back when it ends.
        assert_eq!(spin_until(LOOKS_PER_BATCH + 3), (Spun::Ready, LOOKS_PER_BATCH + 3));
        let held: Vec<SpinSlot> = std::iter::from_fn(SpinSlot::take).take(max + 1).collect();
        assert_eq!(held.len(), max, "the spin gave its place back");
    }
}
