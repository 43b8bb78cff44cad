//! Sleeping until the peer rings our doorbell, for the blocking calls.
//!
//! The ring's protocol (ipcd-ring's `wait` module) decides *whether* to
//! sleep; this module does the sleeping. One end has one doorbell but may
//! have several threads waiting on it (a reader and a writer, or several
//! readers). Whoever drains the eventfd would steal the wake-up meant for
//! another, so exactly one thread at a time (the drainer) sleeps on the
//! eventfd; the others sleep on a futex over a generation counter that the
//! drainer bumps each time it wakes. Everyone then re-checks the ring.
//!
//! Threads in poll or epoll sleep on the doorbell too, each beside a bell
//! of its own (its thread's, or its epoll instance's), which it watches on
//! the end: whoever empties the doorbell rings every other watcher's bell
//! ([`Sleepers::fan_out`]). Without that, the first waiter to wake took
//! the ring from all the others, whose kernel waits looked again, saw an
//! empty doorbell and slept on: a thread polling for room missed the
//! wake-up a thread polling the same end for input had taken.
//!
//! Fan-out reaches the waiters of one process only. When a fork left an
//! end shared by several processes, a waiter in one of them may empty the
//! doorbell while a waiter in another has armed its flag but not yet gone
//! to sleep; that one then sleeps on an empty doorbell. So a wait on a
//! shared end never sleeps longer than [`SHARED_NAP`] before it looks at
//! the ring again ([`nap_until`]): a wake-up taken elsewhere costs at most
//! that, never a hang.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::conn::bell::{self, Bell};
use crate::sys::signals::Caught;
use crate::sys::{real, yields};

/// Longest sleep of a wait on an end another process shares (see the
/// module): long enough that an idle shared end costs about a hundred
/// wake-ups a second, short against any timeout a program sets.
pub(crate) const SHARED_NAP: Duration = Duration::from_millis(10);

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
    };
    let nap = Instant::now() + longest;
    Some(deadline.map_or(nap, |d| d.min(nap)))
}

/// Waiters of one connection end.
#[derive(Debug, Default)]
pub(crate) struct Sleepers {
    generation: AtomicU32,
    drainer: AtomicBool,
    /// Threads in (or about to enter) the futex wait: the drainer wakes
    /// them only if there are any, saving a system call per sleep.
    futex_waiters: AtomicU32,
    /// Bells of the waiters that sleep on the doorbell (see the module).
    watchers: Mutex<Vec<Weak<Bell>>>,
}

/// A bell watching an end until dropped.
pub(crate) struct Watching<'a> {
    sleepers: &'a Sleepers,
    bell: Arc<Bell>,
}

impl Drop for Watching<'_> {
    fn drop(&mut self) {
        self.sleepers.unwatch(&self.bell);
    }
}

/// Where a blocked call stands before it arms the ring's waiting flag.
pub(crate) struct Prepared<'a> {
    /// The futex generation seen (a wake-up after this is not missed).
    seen: u32,
    /// This thread's bell, watching the end.
    watching: Option<Watching<'a>>,
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

impl Sleepers {
    /// `bell` wakes its owner whenever another waiter empties the end's
    /// doorbell, from now on (until [`Sleepers::unwatch`]). Watch before
    /// arming the ring's flags, or a wake-up in between is missed.
    pub(crate) fn watch(&self, bell: &Arc<Bell>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        if w.iter().any(|b| std::ptr::eq(b.as_ptr(), Arc::as_ptr(bell))) {
            return;
        }
        // Bells whose owner is gone (a closed epoll set, an ended thread).
        w.retain(|b| b.strong_count() > 0);
        w.push(Arc::downgrade(bell));
    }

    /// `bell` stops watching the end.
    pub(crate) fn unwatch(&self, bell: &Arc<Bell>) {
        let mut w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        w.retain(|b| b.strong_count() > 0 && !std::ptr::eq(b.as_ptr(), Arc::as_ptr(bell)));
    }

    /// [`Sleepers::watch`] for as long as the result lives.
    pub(crate) fn watching(&self, bell: &Arc<Bell>) -> Watching<'_> {
        self.watch(bell);
        Watching { sleepers: self, bell: Arc::clone(bell) }
    }

    /// We emptied the end's doorbell: rings every watcher's bell but `me`
    /// (the waker), so each looks at the ring again.
    pub(crate) fn fan_out(&self, me: Option<&Bell>) {
        let w = self.watchers.lock().unwrap_or_else(|p| p.into_inner());
        for b in w.iter().filter_map(Weak::upgrade) {
            if !me.is_some_and(|m| std::ptr::eq(m, &*b)) {
                b.ring();
            }
        }
    }

    /// Before a blocked call arms the ring's waiting flag: the futex
    /// generation it has seen, and this thread's bell watching the end.
    pub(crate) fn prepare(&self) -> Prepared<'_> {
        let watching = bell::this_thread().map(|b| self.watching(&b));
        Prepared { seen: self.generation.load(Ordering::Acquire), watching }
    }

    /// Sleeps until the doorbell `bell` is rung, a sibling drainer wakes, the
    /// deadline passes, or a signal arrives. The caller made `prep`, then
    /// armed its waiting flag in the ring and got `Wait::Sleep`.
    pub(crate) fn sleep(&self, bell: i32, deadline: Option<Instant>, prep: Prepared<'_>) -> Woken {
        let seen = prep.seen;
        let mine = prep.watching.as_ref().map(|w| &*w.bell);
        let timeout = match deadline {
            None => None,
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(timespec(left)),
                _ => return Woken::Timeout,
            },
        };
        let tp = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
        if self.drainer.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_ok() {
            let mut pfds = [
                libc::pollfd { fd: bell, events: libc::POLLIN, revents: 0 },
                libc::pollfd { fd: mine.map_or(-1, Bell::fd), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two live pollfds (a negative fd is skipped); a null
            // timeout means no deadline.
            let r = unsafe { real::ppoll(pfds.as_mut_ptr(), 2, tp, std::ptr::null()) };
            let err = real::errno();
            if pfds[0].revents != 0 && bell::take(bell) {
                self.fan_out(mine);
            }
            if let Some(m) = mine.filter(|_| pfds[1].revents != 0) {
                m.take();
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
    pub(crate) fn forget_threads(&self) {
        self.drainer.store(false, Ordering::Relaxed);
        self.futex_waiters.store(0, Ordering::Relaxed);
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

fn monotonic_ns() -> u64 {
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
