//! Readiness of our sockets for poll, select and epoll, from ring state
//! (never from the idle kernel socket underneath), and arming their
//! doorbells before a sleep.

use std::sync::Arc;

use ipcd_ring::Wait;

use crate::conn::wait::Nap;
use crate::control::{self, ListenerBell};
use crate::socket::stream::Edge;
use crate::socket::{Socket, State};

/// `POLLIN`-like bits a caller can ask for.
const IN_BITS: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;
/// `POLLOUT`-like bits.
const OUT_BITS: u32 = (libc::POLLOUT | libc::POLLWRNORM) as u32;

/// How one of our fds is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An ipcd connection: the ring says.
    Stream,
    /// A listener: its ipcd queue, and the kernel fd for kernel clients.
    Listener(u64),
    /// Not set up yet (or a kernel-only listener): the kernel says.
    Kernel,
}

/// What a socket is, for readiness.
pub(crate) fn kind(sock: &Socket) -> Kind {
    kind_of(&sock.lock())
}

fn kind_of(state: &State) -> Kind {
    match state {
        State::Stream(_) => Kind::Stream,
        State::Listening { id, .. } => Kind::Listener(*id),
        State::Fresh { .. } | State::Closed => Kind::Kernel,
    }
}

/// [`kind`] and, for a stream, its poll mask and edge (see [`Edge`]; none
/// for the others), under one hold of the socket's lock (epoll's scan took
/// it twice per member).
pub(crate) fn see(sock: &Socket) -> (Kind, u32, Edge) {
    let mut state = sock.lock();
    let kind = kind_of(&state);
    match &mut *state {
        State::Stream(s) => {
            let (mask, edge) = crate::socket::stream::in_link(s, |s| s.poll());
            (kind, mask, edge)
        }
        _ => (kind, 0, Edge::default()),
    }
}

/// A stream's poll mask now and its edge (see [`Edge`]). A stream closed
/// under us reports `POLLNVAL`, as for a closed file.
pub(crate) fn stream_mask(sock: &Socket) -> Option<(u32, Edge)> {
    Some(crate::socket::stream::poll(sock).unwrap_or((libc::POLLNVAL as u32, Edge::default())))
}

/// Whether an ipcd connection waits in listener `id`'s queue (no system
/// call: what the control channel already delivered).
pub(crate) fn listener_pending(id: u64) -> bool {
    control::peek(|c| c.has_incoming(id)).unwrap_or(false)
}

/// Listeners' bells watched for a wait (see [`watch_listeners`]).
pub(crate) struct Watched {
    /// Each listener's socket serial and bell.
    pub bells: Vec<(u64, Arc<ListenerBell>)>,
    /// A connection already waits for one of them: do not sleep.
    pub pending: bool,
    /// Held for the sleep: until dropped, connectors ring the bells.
    pub asleep: Asleep,
}

/// Listeners a thread sleeps on (`Control::sleep_on`) until this drops.
#[derive(Default)]
pub(crate) struct Asleep(Vec<u64>);

impl Asleep {
    /// The calling thread sleeps on `listener` from now until this drops;
    /// `None` if a connection came before it could say so (look again).
    pub(crate) fn on(listener: u64) -> Option<Asleep> {
        match control::peek_mut(|c| c.sleep_on(listener)) {
            None => Some(Asleep::default()),
            Some(missed) => {
                let asleep = Asleep(vec![listener]);
                (!missed).then_some(asleep)
            }
        }
    }
}

impl Drop for Asleep {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            control::peek_mut(|c| self.0.iter().for_each(|&id| c.wake_on(id)));
        }
    }
}

/// Watches the bells of the listeners among `members` (socket, kind,
/// events) that ask for input, so that a connection another thread reads
/// from the monitor from now on rings them (see `ListenerBell`), and says
/// whether one already has a connection waiting.
pub(crate) fn watch_listeners<'a>(members: impl Iterator<Item = (&'a Arc<Socket>, Kind, u32)>) -> Watched {
    // Listeners a fork left shared that this process now waits on for the
    // first time: the monitor hands it connects from now on.
    let mut serve = Vec::new();
    let bells: Vec<(u64, u64, Arc<ListenerBell>)> = members
        .filter(|(_, _, events)| events & IN_BITS != 0)
        .filter_map(|(sock, kind, _)| match (kind, &mut *sock.lock()) {
            (Kind::Listener(id), State::Listening { bell, shared, served, .. }) => {
                if crate::socket::setup::serve_now(*shared, served) {
                    serve.push((id, bell.clone()));
                }
                bell.as_ref().map(|b| (id, sock.serial, Arc::clone(b)))
            }
            _ => None,
        })
        .collect();
    if !serve.is_empty() {
        let _ = control::with(|c| serve.iter().try_for_each(|(listener, bell)| c.serve(*listener, bell.as_deref())));
    }
    let mut asleep = Asleep::default();
    let pending = !bells.is_empty()
        && control::with(|c| {
            for (id, _, b) in &bells {
                c.watch(*id, b);
                c.sleep_on(*id);
                asleep.0.push(*id);
            }
            Ok(bells.iter().any(|(id, _, _)| c.has_incoming(*id)))
        })
        .unwrap_or(false);
    Watched { bells: bells.into_iter().map(|(_, serial, b)| (serial, b)).collect(), pending, asleep }
}

/// A stream armed for a wait.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Armed {
    /// How long a wait on it may sleep (see `wait::Nap`).
    pub nap: Nap,
}

/// Names doorbell `me` among the sleepers of the lines `events` waits on
/// (input: the ring we read; output: the ring we write); the nap the wait
/// must keep if a line had no room for it (or there is no doorbell).
fn name(s: &crate::socket::Stream, events: u32, me: Option<u64>) -> Nap {
    let shared = s.nap();
    let Some(me) = me else { return Nap::Unnamed };
    let named = (events & IN_BITS == 0 || s.link.rx.waiters().name(me))
        & (events & OUT_BITS == 0 || s.link.tx.waiters().name(me));
    if named {
        shared
    } else {
        Nap::Unnamed
    }
}

/// Takes doorbell `me` off the stream's waiting lines after a wait (and
/// clears flags nobody else waits on, see `Link::settle_wait`).
pub(crate) fn unname(sock: &Socket, me: Option<u64>) {
    let _ = crate::socket::stream::with_stream(sock, |s| s.link.settle_wait(me, true, true));
}

/// Names doorbell `me` and arms the ring's waiting flags for `events` on
/// a stream; `None` when something became ready meanwhile (do not
/// sleep). The flags are left armed after the sleep: another waiter on
/// the same socket may still rely on them, and a stale flag costs the
/// peer a look at the names, never a lost wake-up.
pub(crate) fn arm(sock: &Socket, events: u32, me: Option<u64>) -> Option<Armed> {
    crate::socket::stream::with_stream(sock, |s| {
        if let Some(a) = arm_unadmitted(s, me) {
            return a;
        }
        s.look_for_dead_peer();
        let nap = name(s, events, me);
        if events & IN_BITS != 0 && s.link.rx.prepare_wait() != Ok(Wait::Sleep) {
            return None;
        }
        if events & OUT_BITS != 0 && s.link.prepare_send_wait(1) != Ok(Wait::Sleep) {
            return None;
        }
        Some(Armed { nap })
    })
    .ok()
    .flatten()
}

/// Arms a stream for an edge-triggered wait: wakes on bytes or a state
/// change past `seen` (for input) and, if it has no room now, on room to
/// write. `None` when something new came meanwhile: bytes, or room that
/// the last report (`out_reported` false) did not show — the reader may
/// have drained the ring between that report and now, and would not ring
/// us since we had not asked (nginx stalled until its send timeout).
pub(crate) fn arm_edge(sock: &Socket, events: u32, seen: Edge, out_reported: bool, me: Option<u64>) -> Option<Armed> {
    crate::socket::stream::with_stream(sock, |s| {
        if let Some(a) = arm_unadmitted(s, me) {
            return a;
        }
        s.look_for_dead_peer();
        let nap = name(s, events, me);
        if events & IN_BITS != 0 && s.link.rx.prepare_wait_past(seen.tail, seen.state) != Ok(Wait::Sleep) {
            return None;
        }
        if events & OUT_BITS != 0 && s.link.prepare_send_wait(1) != Ok(Wait::Sleep) && !out_reported {
            return None;
        }
        Some(Armed { nap })
    })
    .ok()
    .flatten()
}

/// A connect still waiting for room in its listener's queue sleeps until
/// the monitor admits or refuses it (it rings the sleepers named on the
/// connector's side; its rings have room, and asked, would say it is
/// ready); a refused one is ready (its errors). `None` for an admitted
/// stream: arm its rings.
fn arm_unadmitted(s: &mut crate::socket::Stream, me: Option<u64>) -> Option<Option<Armed>> {
    match s.admission() {
        ipcd_ring::Admission::Established => None,
        ipcd_ring::Admission::Waiting => {
            let named = me.is_some_and(|me| s.link.rx.waiters().name(me));
            Some(Some(Armed { nap: if named { Nap::End } else { Nap::Unnamed } }))
        }
        ipcd_ring::Admission::Refused => Some(None),
    }
}

/// Our sockets among `fds`, with what each is.
pub(crate) fn ours(fds: impl Iterator<Item = i32>) -> Vec<(usize, Arc<Socket>, Kind)> {
    fds.enumerate().filter_map(|(i, fd)| crate::socket::table::get(fd).map(|s| (i, Arc::clone(&s), kind(&s)))).collect()
}

/// The poll mask of a stream with only the bits Linux would report for
/// `events` (errors and hang-ups always).
pub(crate) fn filter(mask: u32, events: u32) -> u32 {
    let always = (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) as u32;
    mask & (events | always)
}
