//! poll/ppoll/select/pselect over a mix of ipcd sockets and kernel fds.
//!
//! The ipcd part is answered from the rings without a system call; the
//! kernel part by a zero-timeout `poll`. When nothing is ready the caller
//! spins (checking the rings every round and the kernel now and then),
//! then names its thread's doorbell in the rings it waits on, arms their
//! waiting flags and sleeps in one `ppoll` on the kernel fds and that
//! doorbell together.

use std::sync::Arc;
use std::time::Instant;

use libc::{c_int, pollfd};

use crate::conn::wait::{self, Nap, Next, Rounds};
use crate::control::{self, ListenerBell};
use crate::ready::readiness::{self, Kind};
use crate::socket::Socket;
use crate::sys::real;

/// One of our entries in the caller's array.
type Ours = (usize, Arc<Socket>, Kind);

/// Where a kernel-side pollfd comes from.
#[derive(Clone, Copy)]
enum Src {
    /// The caller's entry at this index.
    User(usize),
    /// The control channel (an `Incoming` may be waiting).
    Channel,
    /// A listener's bell, readable while connections wait for it.
    Events,
    /// This thread's doorbell, named in our streams' rings.
    Wake,
}

/// Polls `fds`, of which `ours` are ours (non-empty). `deadline` None waits
/// forever; `sigmask` is applied while sleeping, as ppoll does.
pub(crate) fn poll(
    fds: &mut [pollfd],
    ours: &[Ours],
    deadline: Option<Instant>,
    sigmask: Option<&libc::sigset_t>,
) -> Result<c_int, c_int> {
    let streams: Vec<usize> = ours.iter().enumerate().filter(|(_, o)| o.2 == Kind::Stream).map(|(k, _)| k).collect();
    let is_stream = |i: usize| ours.iter().any(|o| o.0 == i && o.2 == Kind::Stream);
    let any_listener = ours.iter().any(|o| matches!(o.2, Kind::Listener(_)));
    let mut kfds: Vec<pollfd> = Vec::with_capacity(fds.len() + 2);
    let mut srcs: Vec<Src> = Vec::with_capacity(fds.len() + 2);
    for (i, p) in fds.iter().enumerate() {
        if !is_stream(i) {
            kfds.push(pollfd { fd: p.fd, events: p.events, revents: 0 });
            srcs.push(Src::User(i));
        }
    }
    // Kept open while their fds are in `kfds`.
    let _bells = if any_listener { listener_sources(fds, ours, &mut kfds, &mut srcs) } else { Default::default() };
    // This thread's doorbell, named in our streams' rings while it sleeps.
    let mine = if streams.is_empty() { None } else { crate::conn::bell::Sleeper::this_thread() };
    if let Some(b) = &mine {
        kfds.push(pollfd { fd: b.bell.fd(), events: libc::POLLIN, revents: 0 });
        srcs.push(Src::Wake);
    }
    let me = mine.as_ref().map(|m| m.id);
    let base = kfds.len();
    let mut rounds = Rounds::new();
    loop {
        look_ours(fds, ours);
        if rounds.kernel_now() {
            kernel_look(&mut kfds[..base], &srcs, fds)?;
        }
        let ready = fds.iter().filter(|p| p.revents != 0).count();
        if ready > 0 {
            return Ok(ready as c_int);
        }
        match rounds.after_empty(deadline) {
            Next::Again => continue,
            Next::TimedOut => return Ok(0),
            Next::Interrupted => return Err(libc::EINTR),
            Next::Sleep => {}
        }
        // Arm every stream; if one turned ready meanwhile, look again.
        kfds.truncate(base);
        srcs.truncate(base);
        let armed = arm_streams(fds, ours, &streams, me);
        let Some(nap) = armed else {
            unname_streams(ours, &streams, me);
            rounds.look_again();
            continue;
        };
        // A nap that ends before the deadline ends in another round.
        let slept = sleep(&mut kfds, wait::nap_until(crate::socket::cork::cap(deadline), nap), sigmask);
        unname_streams(ours, &streams, me);
        slept?;
        for (p, src) in kfds.iter_mut().zip(&srcs) {
            if p.revents != 0 && !took(*src, p.fd) {
                // Gone for good (the monitor went): poll ignores a negative
                // fd, so its hang-up does not end every later sleep at once.
                p.fd = -1;
            }
        }
        // Look at everything again, the kernel first thing.
        rounds.woke(false);
    }
}

/// Our sockets' masks from the rings and from what the control channel
/// already delivered to our listeners' queues (no system call).
fn look_ours(fds: &mut [pollfd], ours: &[Ours]) {
    for p in fds.iter_mut() {
        p.revents = 0;
    }
    for (i, sock, kind) in ours {
        let ev = fds[*i].events as u32;
        let got = match kind {
            Kind::Stream => readiness::stream_mask(sock).map_or(0, |(m, _)| readiness::filter(m, ev)),
            Kind::Listener(id) if readiness::listener_pending(*id) => ev & libc::POLLIN as u32,
            _ => 0,
        };
        fds[*i].revents = got as libc::c_short;
    }
}

/// The control channel and each listener's bell as sources of the sleep;
/// the bells are watched before the first look at the listeners' queues,
/// so no arrival slips between. Returns the bells, to keep while their fds
/// are in `kfds`, and the listeners the call sleeps on until it returns.
fn listener_sources(
    fds: &[pollfd],
    ours: &[Ours],
    kfds: &mut Vec<pollfd>,
    srcs: &mut Vec<Src>,
) -> (Vec<Arc<ListenerBell>>, readiness::Asleep) {
    if let Some(chan) = control::peek(|c| c.fd()) {
        kfds.push(pollfd { fd: chan, events: libc::POLLIN, revents: 0 });
        srcs.push(Src::Channel);
    }
    let watched = readiness::watch_listeners(ours.iter().map(|(i, s, k)| (s, *k, fds[*i].events as u32)));
    let mut bells = Vec::new();
    for (_, bell) in watched.bells {
        kfds.push(pollfd { fd: bell.fd(), events: libc::POLLIN, revents: 0 });
        srcs.push(Src::Events);
        bells.push(bell);
    }
    (bells, watched.asleep)
}

/// Names doorbell `me` in every stream's rings and arms their waiting
/// flags. `None` if one turned ready meanwhile (look again); otherwise
/// the nap the sleep must keep (see `wait::Nap`).
fn arm_streams(fds: &[pollfd], ours: &[Ours], streams: &[usize], me: Option<u64>) -> Option<Nap> {
    let mut nap = Nap::None;
    for &k in streams {
        let (i, sock, _) = &ours[k];
        let a = readiness::arm(sock, fds[*i].events as u32, me)?;
        nap = nap.max(a.nap);
    }
    Some(nap)
}

/// Takes doorbell `me` off every stream's rings after a sleep.
fn unname_streams(ours: &[Ours], streams: &[usize], me: Option<u64>) {
    for &k in streams {
        readiness::unname(&ours[k].1, me);
    }
}

/// Sleeps in `ppoll` on `kfds` until `until` (None: no limit) with the
/// caller's signal mask.
fn sleep(kfds: &mut [pollfd], until: Option<Instant>, sigmask: Option<&libc::sigset_t>) -> Result<(), c_int> {
    let timeout = until.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long }
    });
    let tp = timeout.as_ref().map_or(std::ptr::null(), |t| t as *const libc::timespec);
    let mp = sigmask.map_or(std::ptr::null(), |m| m as *const libc::sigset_t);
    // SAFETY: live pollfds; null timeout and mask mean none.
    let r = unsafe { real::ppoll(kfds.as_mut_ptr(), kfds.len() as libc::nfds_t, tp, mp) };
    if r < 0 {
        return Err(real::errno());
    }
    Ok(())
}

/// What a source that woke the sleep needs: this thread's doorbell
/// emptied, the channel read. False when the source is gone for good: the
/// channel broke (the monitor went) or was replaced.
fn took(src: Src, fd: c_int) -> bool {
    match src {
        Src::Wake => {
            crate::conn::bell::take(fd);
        }
        Src::Channel => {
            let _ = control::with(|c| c.drain());
            return control::peek(|c| c.fd()) == Some(fd);
        }
        Src::User(_) | Src::Events => {}
    }
    true
}

/// A zero-timeout poll of the kernel part; merges its answers into `fds`.
fn kernel_look(kfds: &mut [pollfd], srcs: &[Src], fds: &mut [pollfd]) -> Result<(), c_int> {
    if kfds.is_empty() {
        return Ok(());
    }
    // SAFETY: live pollfds, no waiting.
    let r = unsafe { real::poll(kfds.as_mut_ptr(), kfds.len() as libc::nfds_t, 0) };
    if r < 0 {
        return Err(real::errno());
    }
    for (p, src) in kfds.iter().zip(srcs) {
        match *src {
            Src::User(i) => fds[i].revents |= p.revents,
            Src::Channel if p.revents != 0 => {
                // Messages from the monitor: queue them, then the listeners
                // are looked at again on the next round.
                let _ = control::with(|c| c.drain());
            }
            _ => {}
        }
    }
    Ok(())
}

/// An `fd_set` triple as pollfds, for select.
pub(crate) struct SelectSets {
    /// One entry per fd in any set.
    pub fds: Vec<pollfd>,
}

const SEL_IN: c_int = (libc::POLLIN | libc::POLLRDNORM | libc::POLLHUP | libc::POLLERR) as c_int;
const SEL_OUT: c_int = (libc::POLLOUT | libc::POLLWRNORM | libc::POLLERR) as c_int;
const SEL_EX: c_int = libc::POLLPRI as c_int;

impl SelectSets {
    /// The fds below `nfds` set in any of the three sets.
    ///
    /// # Safety
    /// Each set is null or a valid `fd_set`.
    pub(crate) unsafe fn new(
        nfds: c_int,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
    ) -> SelectSets {
        let mut fds = Vec::new();
        for fd in 0..nfds.clamp(0, libc::FD_SETSIZE as c_int) {
            // SAFETY: valid sets (caller), fd below FD_SETSIZE.
            let isset = |s: *mut libc::fd_set| !s.is_null() && unsafe { libc::FD_ISSET(fd, s) };
            let mut events = 0;
            if isset(r) {
                events |= libc::POLLIN;
            }
            if isset(w) {
                events |= libc::POLLOUT;
            }
            if isset(e) {
                events |= libc::POLLPRI;
            }
            if events != 0 {
                fds.push(pollfd { fd, events, revents: 0 });
            }
        }
        SelectSets { fds }
    }

    /// Writes the answers back into the sets; returns select's count, or
    /// `EBADF` for a closed fd as select reports it.
    ///
    /// # Safety
    /// As for `new`.
    pub(crate) unsafe fn finish(
        &self,
        r: *mut libc::fd_set,
        w: *mut libc::fd_set,
        e: *mut libc::fd_set,
    ) -> Result<c_int, c_int> {
        if self.fds.iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(libc::EBADF);
        }
        for s in [r, w, e] {
            if !s.is_null() {
                // SAFETY: a valid set (caller).
                unsafe { libc::FD_ZERO(s) };
            }
        }
        let mut n = 0;
        for p in &self.fds {
            let rev = c_int::from(p.revents);
            for (set, want, bits) in
                [(r, libc::POLLIN, SEL_IN), (w, libc::POLLOUT, SEL_OUT), (e, libc::POLLPRI, SEL_EX)]
            {
                if !set.is_null() && p.events & want != 0 && rev & bits != 0 {
                    // SAFETY: a valid set, fd below FD_SETSIZE.
                    unsafe { libc::FD_SET(p.fd, set) };
                    n += 1;
                }
            }
        }
        Ok(n)
    }
}
