//! The control channel to the monitor: opened on first need, one per
//! process, shared by every thread. Replies are matched to requests by
//! sequence number; events (`Incoming`, `PeerGone`) that arrive in between
//! are queued for `accept`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ipcd_proto::channel::{decode_response, Channel, ChannelError, Fds};
use ipcd_proto::message::{ConnInfo, Request, Response, Side, MAX_FRAME};
use ipcd_proto::{Caps, SockAddr};
use ipcd_ring::Ticket;

use crate::conn::bell::Bell;
use crate::conn::link::{Finished, Link, Renewal, Round};
use crate::sys::log::{log, Level};
use crate::sys::real;

/// A standby connection for our next connect to `dest` (side A).
struct HeldStandby {
    dest: SockAddr,
    info: ConnInfo,
    /// For the next round of a renewed one: its segment, until the round
    /// begins. Otherwise the segment is in the link cache.
    renewal: Option<Box<Renewal>>,
}

/// A connection waiting in a listener's accept queue.
pub(crate) enum Pending {
    /// Told by `Incoming`: connected; its segment is mapped at accept.
    /// With when the monitor made it (`monotonic_ns`), for the accept
    /// order.
    Told(ConnInfo, Vec<OwnedFd>, u64),
    /// Told by `Expect` before its connector used it (a standby): mapped
    /// already, and taken once its ticket says connected.
    Expected(ConnInfo, Box<Link>),
    /// The next round of a renewed standby whose last round this process
    /// closed first: expected once its connector's end finishes too.
    Renewing(ConnInfo, Box<Renewal>),
}

impl Pending {
    /// The connection as the monitor described it.
    pub(crate) fn info(&self) -> &ConnInfo {
        match self {
            Pending::Told(info, ..) | Pending::Expected(info, _) | Pending::Renewing(info, _) => info,
        }
    }

    /// What accept may do with it now.
    fn look(&self) -> Look {
        match self {
            Pending::Told(.., at) => Look::Ready(None, *at),
            Pending::Expected(_, link) => match link.ticket() {
                Ticket::Expected => Look::Later,
                Ticket::Connected(words) => Look::Ready(SockAddr::from_words(words), link.connected_at()),
                Ticket::Cancelled | Ticket::Other => Look::Gone,
            },
            Pending::Renewing(info, r) => match r.next_round(info.conn) {
                Some(Ticket::Connected(words)) => Look::Ready(SockAddr::from_words(words), r.connected_at()),
                None | Some(Ticket::Expected) => Look::Later,
                Some(_) => Look::Gone,
            },
        }
    }

    /// The segment under it, if mapped here already.
    fn segment(&self) -> Option<u64> {
        match self {
            Pending::Told(..) => None,
            Pending::Expected(_, link) => Some(link.segment()),
            Pending::Renewing(_, r) => Some(r.segment()),
        }
    }

    /// A cancelled one's segment, kept until the monitor's `Forget`.
    fn drop_kept(self) {
        match self {
            Pending::Told(..) => {}
            Pending::Expected(_, link) => drop((*link).keep()),
            Pending::Renewing(_, r) => r.keep(),
        }
    }
}

/// A queued connection's place, when it was made (`monotonic_ns`, with
/// `AFTER_BROKERED`) and its connector's address if the ticket gives it.
type First = (usize, u64, Option<SockAddr>);

enum Look {
    /// Take it (an expected one's connector at this address), connected
    /// at that time (`monotonic_ns`).
    Ready(Option<SockAddr>, u64),
    /// Not connected yet.
    Later,
    /// Cancelled: never connected, drop it.
    Gone,
}

/// A listener's bell a connector rings (see `Response::Standby`), kept
/// out of the program's sight.
struct PeerBell(OwnedFd);

impl Drop for PeerBell {
    fn drop(&mut self) {
        crate::sys::fds::unhide(self.0.as_raw_fd());
    }
}

/// A listener's accept queue here, and how its waiters are told.
#[derive(Default)]
struct Queue {
    items: VecDeque<Pending>,
    /// The listener's bell, once a waiter showed it (see [`Control::watch`]).
    bell: Weak<ListenerBell>,
    /// Connections came since the bell last rang.
    fresh: bool,
    /// Threads of ours asleep waiting on the listener (see
    /// [`Control::sleep_on`]): connectors of expected connections ring
    /// its bell only while there are some.
    asleep: u32,
    /// A connector may have rung the bell since it was last emptied: a
    /// thread went to sleep on it since.
    maybe_rung: bool,
}

impl Queue {
    /// Nothing waits here any more: the bell is emptied if it rang.
    /// Connectors ring it too, from other processes, while a thread of
    /// ours sleeps on it: with connections expected and a sleep since it
    /// was last emptied, it is emptied whether we rang it or not, and rung
    /// again if one connected meanwhile, so that no waiter sleeps past it.
    /// (A connector's ring that comes after that is one early wake-up of
    /// the next sleeper, which empties it.) Emptied of our own ring, it is
    /// rung again if a renewed round connected meanwhile: its connector
    /// rang too, and a thread of ours asleep on the bell may not have
    /// woken for it yet.
    fn quiet(&mut self) {
        let Some(b) = self.bell.upgrade() else { return };
        if !self.expects() || !self.maybe_rung {
            if b.quiet() && self.has_ready() {
                b.ring();
            }
            return;
        }
        b.settle();
        self.maybe_rung = self.asleep > 0;
        if self.has_ready() {
            b.ring();
        }
    }

    /// As [`Queue::quiet`], whether or not a thread slept on it since.
    fn empty_bell(&mut self) {
        self.maybe_rung = true;
        self.quiet();
    }

    /// Renewed standbys whose new round began become expected ones
    /// (watched unless one of us sleeps on the listener, as an `Expect`
    /// that arrives).
    fn refresh(&mut self) {
        let mut i = 0;
        while i < self.items.len() {
            let begun = matches!(&self.items[i], Pending::Renewing(info, r)
                if matches!(r.ticket(info.conn), Ticket::Expected | Ticket::Connected(_)));
            let taken = if begun { self.items.remove(i) } else { None };
            let Some(Pending::Renewing(info, r)) = taken else {
                i += 1;
                continue;
            };
            match r.attach(&info) {
                Ok(link) => {
                    if self.asleep == 0 {
                        link.watch_ticket(true);
                    }
                    self.items.insert(i, Pending::Expected(info, Box::new(link)));
                    i += 1;
                }
                // Only a peer that broke the header gets here: its own
                // connection is what is lost.
                Err(e) => log!(Level::Debug, "renewed connection {} cannot be attached ({e})", info.conn),
            }
        }
    }

    /// The connection accept may take that was made first (as Linux's
    /// accept queue gives them, whichever standby carried it), dropping
    /// cancelled ones on the way: its place, time and connector, for
    /// [`Queue::take`].
    fn look_first(&mut self) -> Option<First> {
        self.refresh();
        let mut i = 0;
        while i < self.items.len() {
            if matches!(self.items[i].look(), Look::Gone) {
                // The monitor sends `Forget` for it; kept until then.
                if let Some(p) = self.items.remove(i) {
                    p.drop_kept();
                }
            } else {
                i += 1;
            }
        }
        self.first()
    }

    /// Takes the connection [`Queue::look_first`] found (nothing moved
    /// in the queue since); an expected one gets its connector's address.
    fn take(&mut self, (i, _, peer): First) -> Option<Pending> {
        let mut p = self.items.remove(i)?;
        if let (Pending::Expected(info, _) | Pending::Renewing(info, _), Some(peer)) = (&mut p, peer) {
            info.peer = peer;
        }
        Some(p)
    }

    /// The ready connection made first.
    fn first(&self) -> Option<First> {
        let mut first: Option<First> = None;
        for (i, p) in self.items.iter().enumerate() {
            if let Look::Ready(peer, at) = p.look() {
                if first.is_none_or(|(_, t, _)| at < t) {
                    first = Some((i, at, peer));
                }
            }
        }
        first
    }

    fn has_ready(&self) -> bool {
        self.items.iter().any(|p| matches!(p.look(), Look::Ready(..)))
    }

    /// Whether standbys issued here are expected (their connectors may
    /// ring the bell while we sleep: see [`Queue::quiet`]).
    fn expects(&self) -> bool {
        self.items.iter().any(|p| matches!(p, Pending::Expected(..)))
    }

    /// [`Queue::expects`], or a renewed standby's next round is (an
    /// accept spins on them before it sleeps).
    fn awaits(&self) -> bool {
        self.items.iter().any(|p| matches!(p, Pending::Expected(..) | Pending::Renewing(..)))
    }

    /// Marks every expected connection's ticket watched (nobody of ours
    /// sleeps on the listener: its connector need not ring) or not (see
    /// `ConnSegment::watch`); true if one says connected after.
    fn watch(&self, on: bool) -> bool {
        let mut connected = false;
        for p in &self.items {
            if let Pending::Expected(_, link) = p {
                connected |= matches!(link.watch_ticket(on), Ticket::Connected(_));
            }
        }
        connected
    }
}

/// An eventfd readable while connections wait in one listener's queue:
/// rung when connections are left queued as the channel is let go, emptied
/// when the queue empties. A thread waiting on the listener (accept, poll,
/// epoll) sleeps on it beside the channel, so a thread that read another's
/// connection from the monitor wakes that thread, and no waiter can take
/// the wake-up meant for another. (One bell for every listener, emptied by
/// whoever woke, let a poller on one listener swallow the wake-up of a
/// thread asleep in accept on another, which then slept on with its
/// connection queued.)
pub(crate) struct ListenerBell {
    bell: Bell,
    rung: AtomicBool,
}

impl ListenerBell {
    /// A new bell, or `None` if no eventfd can be made (waiters then wake
    /// on the channel only).
    pub(crate) fn new() -> Option<Arc<ListenerBell>> {
        Some(Arc::new(ListenerBell { bell: Bell::new()?, rung: AtomicBool::new(false) }))
    }

    /// The eventfd to sleep on.
    pub(crate) fn fd(&self) -> RawFd {
        self.bell.fd()
    }

    // Both run under the channel's lock, which orders them.
    fn ring(&self) {
        self.bell.ring();
        self.rung.store(true, Ordering::Relaxed);
    }

    /// Empties it if we rang it; true if so.
    fn quiet(&self) -> bool {
        let rung = self.rung.swap(false, Ordering::Relaxed);
        if rung {
            self.bell.take();
        }
        rung
    }

    /// Empties it whoever rang it.
    fn settle(&self) {
        self.rung.store(false, Ordering::Relaxed);
        self.bell.take();
    }
}

/// The open channel and what arrived on it.
pub(crate) struct Control {
    chan: Channel,
    seq: u32,
    /// Our process id (a forked child's channel is not the parent's).
    pid: u32,
    /// Our process id as the monitor sees it (`Welcome`): another in a
    /// pid namespace of our own. Ends are offered to us under it.
    seen_pid: u32,
    incoming: HashMap<u64, Queue>,
    /// Connections accepted but not yet reported (`Accepted` only keeps
    /// the monitor's backlog count): sent before the next request, or when
    /// an accept finds nothing, and dropped when the connection's `Close`
    /// (which implies it) goes first — most short connections never need
    /// a message of their own.
    accepted: Vec<u64>,
    /// Connections were queued since the bells last rang.
    unannounced: bool,
    /// Connections the monitor holds ready for our next connect to an
    /// address (`Standby`), oldest first.
    standbys: Vec<HeldStandby>,
    /// A standby ever came: a connect holding none for its address reads
    /// the channel first.
    standby_seen: bool,
    /// When the monitor last made a connection of ours, by destination
    /// (see [`Control::brokered_lately`]).
    brokered: HashMap<SockAddr, u64>,
    /// `Close`s not sent yet (see `send`).
    closes: Vec<Request>,
    /// Listeners' bells by destination and acceptor (a listener a fork
    /// shared has one in each process that serves it), rung by a connect
    /// through a standby issued to that acceptor.
    peer_bells: HashMap<(SockAddr, u64), PeerBell>,
    /// Whose bell a connect through a standby's segment rings: the
    /// acceptor it was issued to (see `Response::Standby`).
    standby_acceptors: HashMap<u64, u64>,
    /// The request ring of a monitor in a queue mode.
    queue: Option<crate::request_queue::RequestQueue>,
}

static CONTROL: Mutex<Option<Control>> = Mutex::new(None);
/// Monotonic milliseconds before which we do not try the monitor again.
static RETRY_AFTER_MS: AtomicU64 = AtomicU64::new(0);
/// How many `Close`s a process holds back at most (see `Control::send`).
const CLOSES_HELD: usize = 8;
/// How long after the monitor made a connection of ours a standby's
/// connect to the same place says so (see `Control::brokered_lately`).
const BROKERING_NS: u64 = 10_000_000;
/// The bit of a connection's time (`Look::Ready`) that says its
/// connector's connection just before, to the same place, was one the
/// acceptor learns of from its channel (made by the monitor, or through
/// a first standby), which it may not have read yet (see
/// `Control::brokered_lately`).
pub(crate) const AFTER_BROKERED: u64 = 1;
/// Most messages one read of the channel takes (see `Control::drain`).
const DRAIN_BATCH: usize = 8;

/// Listeners' bells a connector keeps (see `Control::keep_peer_bell`):
/// one per listener and process serving it that it connects to.
const PEER_BELLS: usize = 64;

/// Standby segments whose acceptor a connector remembers before it
/// forgets those no standby holds (see `Response::Standby`).
const STANDBY_SEGMENTS: usize = 4096;
/// How long to leave a missing monitor alone before trying again.
const RETRY: Duration = Duration::from_secs(1);

/// Runs `f` on the channel if it is open (never opens it, never waits for
/// the monitor).
pub(crate) fn peek<R>(f: impl FnOnce(&Control) -> R) -> Option<R> {
    let guard = CONTROL.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_ref().map(f)
}

/// As [`peek`], able to change what the channel delivered.
pub(crate) fn peek_mut<R>(f: impl FnOnce(&mut Control) -> R) -> Option<R> {
    let mut guard = CONTROL.lock().unwrap_or_else(|p| p.into_inner());
    guard.as_mut().map(f)
}

/// The channel's lock, for a fork: held by the forking thread from the
/// prepare handler to the parent's and child's (a child must not inherit
/// it locked by a thread that is not in it).
pub(crate) fn lock_for_fork() -> MutexGuard<'static, Option<Control>> {
    CONTROL.lock().unwrap_or_else(|p| p.into_inner())
}

/// The pid of the monitor this process last registered with (0: none
/// yet). Ends made under one monitor are unknown to another (after a
/// restart), which must not be asked to release them.
static MONITOR: AtomicU32 = AtomicU32::new(0);

/// The monitor this process last registered with (see [`MONITOR`]).
pub(crate) fn monitor() -> u32 {
    MONITOR.load(Ordering::Relaxed)
}

/// Sends `req` if the channel is open to `monitor` (a pid from
/// [`monitor`]); false if it is not, or the send failed.
pub(crate) fn notify_monitor(monitor: u32, req: &Request) -> bool {
    with(|c| if MONITOR.load(Ordering::Relaxed) == monitor { c.notify(req).map(|()| true) } else { Ok(false) })
        .unwrap_or(false)
}

/// Runs `f` on the channel, opening it first if needed. `None`: no monitor
/// (logged once per attempt), or the channel broke.
pub(crate) fn with<R>(f: impl FnOnce(&mut Control) -> Result<R, ChannelError>) -> Option<R> {
    let mut guard = CONTROL.lock().unwrap_or_else(|p| p.into_inner());
    // Refreshed in a forked child (atfork); getpid was a system call per use.
    let pid = crate::sys::process::owner_id().get();
    if guard.as_ref().is_some_and(|c| c.pid != pid) {
        // A forked child: the channel is the parent's. Our copy of its fd is
        // closed; the child registers on its own.
        *guard = None;
    }
    if guard.is_none() {
        if crate::conn::wait::now_ms() < RETRY_AFTER_MS.load(Ordering::Relaxed) {
            return None;
        }
        match Control::open(pid) {
            Ok(c) => {
                // Kept segments belong to the channel they were kept on: a
                // new one (a forked child's, or the old broke, or the
                // monitor restarted) will never reuse them.
                crate::conn::link::forget_all();
                *guard = Some(c);
            }
            Err(e) => {
                log!(Level::Warn, "no monitor on @{} ({e}); using kernel sockets", crate::sys::config::get().socket);
                RETRY_AFTER_MS.store(crate::conn::wait::now_ms() + RETRY.as_millis() as u64, Ordering::Relaxed);
                return None;
            }
        }
    }
    let c = guard.as_mut()?;
    match f(c) {
        Ok(r) => {
            c.announce();
            Some(r)
        }
        Err(e) => {
            log!(Level::Warn, "monitor channel failed ({e}); new connections use the kernel");
            // What was queued goes with the channel: no bell may stay rung.
            c.incoming.values_mut().for_each(Queue::empty_bell);
            *guard = None;
            RETRY_AFTER_MS.store(crate::conn::wait::now_ms() + RETRY.as_millis() as u64, Ordering::Relaxed);
            None
        }
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Our own close of the channel must pass the interposed `close`.
        crate::sys::fds::unhide(self.fd());
    }
}

impl Control {
    fn open(pid: u32) -> Result<Control, String> {
        let name = &crate::sys::config::get().socket;
        let chan = Channel::connect_abstract(name.as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let cred = chan.peer_cred().map_err(|e| e.to_string())?;
        if !cred.is_monitor_for(uid) {
            return Err(format!("the monitor runs as uid {}, not {uid} or root", cred.uid));
        }
        chan.set_nonblocking(true).map_err(|e| e.to_string())?;
        // Hidden once it is sure to be kept: from here on `Control`'s drop unhides it.
        let chan = Channel::from_fd(crate::sys::fds::hide(OwnedFd::from(chan)));
        let mut c = Control {
            chan,
            seq: 0,
            pid,
            seen_pid: pid,
            incoming: HashMap::new(),
            accepted: Vec::new(),
            unannounced: false,
            standbys: Vec::new(),
            brokered: HashMap::new(),
            standby_seen: false,
            closes: Vec::new(),
            peer_bells: HashMap::new(),
            standby_acceptors: HashMap::new(),
            queue: None,
        };
        let hello = Request::hello(pid, uid, Caps::empty());
        match c.call(&hello, &[]).map_err(|e| e.to_string())?.0 {
            Response::Welcome { monitor_pid, pid: seen, .. } => {
                MONITOR.store(monitor_pid, Ordering::Relaxed);
                c.seen_pid = seen;
            }
            other => return Err(format!("monitor refused: {other:?}")),
        }
        let cfg = &crate::sys::config::get().resolved;
        log!(
            Level::Info,
            "active: monitor @{name} (uid {}, pid {}), profile {} ({}), {} rule(s)",
            cred.uid,
            cred.pid,
            cfg.profile.value.name(),
            cfg.profile.origin,
            cfg.rules.len()
        );
        if let Some(parent_pid) = crate::sys::process::take_parent() {
            // A forked child: it holds what the parent held at the fork.
            match c.call(&Request::Forked { parent_pid }, &[]).map_err(|e| e.to_string())?.0 {
                Response::Ok => {}
                other => log!(Level::Warn, "monitor did not take the fork from {parent_pid}: {other:?}"),
            }
        }
        Ok(c)
    }

    /// The channel's fd (readable when a message waits).
    pub(crate) fn fd(&self) -> RawFd {
        self.chan.as_fd().as_raw_fd()
    }

    /// Sends a request and waits for its reply, queuing events meanwhile.
    pub(crate) fn call(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(Response, Fds), ChannelError> {
        // Never through the request ring: the reply comes on the channel.
        self.flush()?;
        self.send_now(req, fds)?;
        let want = self.seq;
        loop {
            // Waits first: the reply needs the monitor to wake up, so a
            // read right after the send found nothing (strace -c of 2000
            // connects: one such read each).
            wait_readable(self.fd());
            loop {
                match self.chan.recv_response() {
                    Ok((seq, resp, fds)) if seq == want => return Ok((resp, fds)),
                    Ok((_, resp, fds)) => self.event(resp, fds),
                    Err(e) if e.is_would_block() => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }

    /// Sends a request that has no reply.
    pub(crate) fn notify(&mut self, req: &Request) -> Result<(), ChannelError> {
        self.send(req, &[])
    }

    /// Records an accepted connection, reported later (see `accepted`).
    pub(crate) fn accepted(&mut self, conn: u64) {
        self.accepted.push(conn);
    }

    /// Reports the accepted connections not yet reported.
    pub(crate) fn flush_accepted(&mut self) -> Result<(), ChannelError> {
        if self.accepted.is_empty() {
            return Ok(());
        }
        let reqs = self.accepted.drain(..).map(|conn| Request::Accepted { conn }).collect();
        self.send_batch(reqs)
    }

    /// Reports what waits to be reported: accepted connections and the
    /// `Close`s held back (also before a fork: the child must not be
    /// counted a holder of ends already closed).
    pub(crate) fn flush(&mut self) -> Result<(), ChannelError> {
        if self.accepted.is_empty() && self.closes.is_empty() {
            return Ok(());
        }
        let mut reqs: Vec<Request> = self.accepted.drain(..).map(|conn| Request::Accepted { conn }).collect();
        reqs.append(&mut self.closes);
        self.send_batch(reqs)
    }

    /// Sends requests without fds, in order: through the request ring
    /// while it takes them, the rest several per system call.
    fn send_batch(&mut self, reqs: Vec<Request>) -> Result<(), ChannelError> {
        let queued = match &mut self.queue {
            Some(q) => reqs.iter().take_while(|r| q.push(r)).count(),
            None => 0,
        };
        let batch: Vec<(u32, Request)> = reqs.into_iter().skip(queued).map(|r| (self.next_seq(), r)).collect();
        let mut sent = 0;
        while sent < batch.len() {
            match self.chan.send_requests(&batch[sent..]) {
                Ok(n) => sent += n,
                Err(e) if e.is_would_block() => wait_writable(self.fd()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    /// `Close`s are held back, up to `CLOSES_HELD`, and go before any
    /// other request: the monitor then wakes once for several (a wake-up per connection was most of
    /// set-up's cost on two cores). Nothing waits for them: the ring
    /// already carries the close to the peer; the monitor only recycles
    /// the segment later. A process that exits with some held is seen
    /// to die with those ends, which closes them as they already are.
    /// With a request ring nothing is held: a request there wakes nobody.
    fn send(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if let Request::Close { conn, side, .. } = *req {
            if side == Side::B {
                self.accepted.retain(|&c| c != conn);
            }
            if self.queue.is_none() {
                self.closes.push(*req);
                return if self.closes.len() < CLOSES_HELD { Ok(()) } else { self.flush() };
            }
        }
        self.flush()?;
        if fds.is_empty() && self.queue.as_mut().is_some_and(|q| q.push(req)) {
            return Ok(());
        }
        self.send_now(req, fds)
    }

    fn send_now(&mut self, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        let seq = self.next_seq();
        loop {
            match self.chan.send_request(seq, req, fds) {
                Err(e) if e.is_would_block() => wait_writable(self.fd()),
                other => return other,
            }
        }
    }

    /// Reads every message already waiting (non-blocking).
    pub(crate) fn drain(&mut self) -> Result<(), ChannelError> {
        // Several per system call: the refills of a connect-heavy process
        // come one per connection.
        let mut bufs = [[0u8; MAX_FRAME + 1]; DRAIN_BATCH];
        loop {
            let mut got = Vec::new();
            let mut bad = None;
            let n = self.chan.recv_packets(&mut bufs, |bytes, fds| {
                // A message whose fds were lost (at the fd limit) comes
                // without them; the channel stays.
                match decode_response(bytes, fds) {
                    Ok((_, resp, fds)) => got.push((resp, fds)),
                    Err(e) => {
                        bad.get_or_insert(e);
                    }
                }
            });
            let n = match n {
                Ok(n) => n,
                Err(e) if e.is_would_block() => return Ok(()),
                Err(e) => return Err(e),
            };
            for (resp, fds) in got {
                self.event(resp, fds);
            }
            if let Some(e) = bad {
                return Err(e);
            }
            // Fewer than room for: none was left waiting.
            if n < DRAIN_BATCH {
                return Ok(());
            }
        }
    }

    /// Reads the next message if one waits (non-blocking); false if none did.
    pub(crate) fn read_one(&mut self) -> Result<bool, ChannelError> {
        match self.chan.recv_response() {
            Ok((_, resp, fds)) => {
                self.event(resp, fds);
                Ok(true)
            }
            Err(e) if e.is_would_block() => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn event(&mut self, resp: Response, fds: Fds) {
        match resp {
            Response::Incoming { listener, info, at } => {
                let q = self.incoming.entry(listener).or_default();
                q.items.push_back(Pending::Told(info, fds.into_vec(), at & !AFTER_BROKERED));
                q.fresh = true;
                self.unannounced = true;
            }
            Response::Expect { listener, info } => match Link::attach(&info, fds.into_vec()) {
                Ok(link) => {
                    let q = self.incoming.entry(listener).or_default();
                    // Its connector rings the bell only if one of us sleeps.
                    if q.asleep == 0 {
                        link.watch_ticket(true);
                    }
                    q.items.push_back(Pending::Expected(info, Box::new(link)))
                }
                Err(e) => {
                    log!(Level::Debug, "expected connection {} cannot be mapped ({e}); giving it back", info.conn);
                    let _ = self.send_now(&Request::Unused { conn: info.conn }, &[]);
                }
            },
            // The monitor already closed the dead end in the ring and rang
            // us; the ring is where our sockets learn it.
            Response::PeerGone { .. } => {}
            Response::Forget { segment } => {
                crate::conn::link::forget(segment);
                self.standby_acceptors.remove(&segment);
                for q in self.incoming.values_mut() {
                    q.items.retain(|p| p.segment() != Some(segment));
                }
                self.standbys.retain(|s| s.renewal.as_ref().is_none_or(|r| r.segment() != segment));
            }
            Response::Standby { dest, mut info, bell, acceptor } => {
                let mut fds = fds.into_vec();
                if bell {
                    if let Some(fd) = fds.pop() {
                        self.keep_peer_bell((dest, acceptor), fd);
                    }
                }
                if self.standby_acceptors.len() >= STANDBY_SEGMENTS {
                    // Segments the monitor unmapped without a word (ours
                    // evicted from the cache): keep those still held.
                    let held: HashSet<u64> = self.standbys.iter().map(|s| s.info.segment).collect();
                    self.standby_acceptors.retain(|seg, _| held.contains(seg));
                }
                self.standby_acceptors.insert(info.segment, acceptor);
                if !info.reused {
                    if !crate::conn::link::Link::keep_standby(&info, fds) {
                        let _ = self.send_now(&Request::Unused { conn: info.conn }, &[]);
                        return;
                    }
                    // From now on it is found in the cache, as a reused one.
                    info.reused = true;
                }
                self.standbys.push(HeldStandby { dest, info, renewal: None });
                self.standby_seen = true;
            }
            Response::Withdraw { conn } => {
                // Not ours any more if a connect took it: its `Use` is on
                // its way, and the monitor expects nothing else.
                if let Some(i) = self.standbys.iter().position(|s| s.info.conn == conn) {
                    if let Some(r) = self.standbys.remove(i).renewal {
                        r.keep();
                    }
                    if let Err(e) = self.send_now(&Request::Unused { conn }, &[]) {
                        log!(Level::Debug, "cannot give back standby {conn}: {e}");
                    }
                }
            }
            // Before `Welcome`, from a monitor in a queue mode.
            Response::Queue { index, shared } => {
                match crate::request_queue::RequestQueue::map(index, shared, fds.into_vec()) {
                    Ok(q) => self.queue = Some(q),
                    Err(e) => log!(Level::Warn, "request queue not usable ({e}); requests go on the channel"),
                }
            }
            other => log!(Level::Debug, "unexpected message from the monitor: {other:?}"),
        }
    }

    /// Rings the bell of each listener with connections that came since
    /// it last rang and still wait. It runs as the channel is let go, so
    /// the accept that read a connection and took it at once rings nothing
    /// (ringing on every arrival cost that accept's next wait a poll, a
    /// read and a drain).
    fn announce(&mut self) {
        if !std::mem::take(&mut self.unannounced) {
            return;
        }
        for q in self.incoming.values_mut() {
            if std::mem::take(&mut q.fresh) && q.has_ready() {
                if let Some(b) = q.bell.upgrade() {
                    b.ring();
                }
            }
        }
    }

    /// A thread is about to wait on `listener` with `bell`: connections
    /// that another thread reads from now on ring it. Called before the
    /// waiter's last look at the queue, so none slips in between.
    pub(crate) fn watch(&mut self, listener: u64, bell: &Arc<ListenerBell>) {
        let q = self.incoming.entry(listener).or_default();
        if !std::ptr::eq(q.bell.as_ptr(), Arc::as_ptr(bell)) {
            q.bell = Arc::downgrade(bell);
        }
    }

    /// The standby connection to `dest`, if one was read from the
    /// channel (see `drain`) or renewed, with the segment of a renewed
    /// one. The oldest: its `Expect` reached the acceptor longest ago, so
    /// an acceptor that reads its channel only now and then knows it.
    /// Renewed ones whose acceptor has not closed the last round yet are
    /// left for later; ones promoted or cancelled meanwhile go.
    pub(crate) fn take_standby(&mut self, dest: &SockAddr) -> Option<(ConnInfo, Option<Box<Renewal>>)> {
        let mut i = 0;
        while i < self.standbys.len() {
            let s = &self.standbys[i];
            if s.dest != *dest {
                i += 1;
                continue;
            }
            match s.renewal.as_ref().map(|r| r.next_round(s.info.conn)) {
                Some(None) => i += 1,
                Some(Some(t)) if t != Ticket::Expected => {
                    if let Some(r) = self.standbys.remove(i).renewal {
                        r.keep();
                    }
                }
                _ => {
                    let s = self.standbys.remove(i);
                    return Some((s.info, s.renewal));
                }
            }
        }
        None
    }

    /// A renewable connection's end closed here for good (see
    /// `Link::finish`): its next round waits for our next connect to the
    /// same address (side A) or for an accept on `listener` (side B).
    pub(crate) fn renewed(&mut self, info: ConnInfo, listener: Option<u64>, f: Finished) {
        let info = ConnInfo { conn: f.next, reused: true, ..info };
        let renewal = Box::new(f.renewal);
        if f.state == Round::Cancelled {
            renewal.keep();
            return;
        }
        if info.side == Side::A {
            let info = ConnInfo { local: info.peer.with_port(0), ..info };
            self.standbys.push(HeldStandby { dest: info.peer, info, renewal: Some(renewal) });
            return;
        }
        let Some(q) = listener.and_then(|l| self.incoming.get_mut(&l)) else {
            // Its listener closed: the monitor promotes or cancels it.
            renewal.keep();
            return;
        };
        q.items.push_back(Pending::Renewing(info, renewal));
        if f.state == Round::Renewed {
            // Ours to attach at once: no connect can come before it.
            q.refresh();
        }
    }

    /// Whether the monitor ever held a connection ready for us: only then
    /// is the channel worth reading before a connect.
    pub(crate) fn expects_standbys(&self) -> bool {
        self.standby_seen
    }

    /// Our process id as the monitor sees it (the one it offers ends to).
    pub(crate) fn seen_pid(&self) -> u32 {
        self.seen_pid
    }

    /// How many connections wait here for `listener` (expected ones too).
    pub(crate) fn queued(&self, listener: u64) -> usize {
        self.incoming.get(&listener).map_or(0, |q| q.items.len())
    }

    /// The monitor made a connection of ours to `dest` (`Connected`), or
    /// we connected through a first standby there (see `brokered_lately`).
    pub(crate) fn brokered(&mut self, dest: SockAddr) {
        if self.brokered.len() >= 64 {
            self.brokered.clear();
        }
        self.brokered.insert(dest, crate::conn::wait::monotonic_ns());
    }

    /// Whether the monitor made a connection of ours to `dest` lately (10
    /// ms), or we used a first standby there (which its acceptor learns
    /// of from its channel too): its acceptor may not have read of it yet
    /// when a standby carries our next one, which then tells it to read
    /// its channel first (see `Link::connect_ticket`), so that it accepts
    /// the two in the order they were made.
    pub(crate) fn brokered_lately(&self, dest: &SockAddr) -> bool {
        self.brokered.get(dest).is_some_and(|&t| crate::conn::wait::monotonic_ns().saturating_sub(t) < BROKERING_NS)
    }

    /// Whether a connection accept may take is queued for `listener`.
    pub(crate) fn has_incoming(&self, listener: u64) -> bool {
        self.incoming.get(&listener).is_some_and(Queue::has_ready)
    }

    /// Whether connections are expected on `listener` without the
    /// monitor (standbys issued for it, not yet used, or renewed ones'
    /// next rounds).
    pub(crate) fn awaits(&self, listener: u64) -> bool {
        self.incoming.get(&listener).is_some_and(Queue::awaits)
    }

    /// A thread is about to sleep waiting on `listener` (its bell
    /// watched, see [`Control::watch`]): from now until its
    /// [`Control::wake_on`], connectors of expected connections ring the
    /// bell. Returns true if one connected before it could know (it may
    /// not have rung: the caller must look again before it sleeps).
    pub(crate) fn sleep_on(&mut self, listener: u64) -> bool {
        let q = self.incoming.entry(listener).or_default();
        q.asleep += 1;
        q.maybe_rung = true;
        q.asleep == 1 && q.watch(false)
    }

    /// The end of a [`Control::sleep_on`]: once no thread of ours sleeps
    /// on `listener`, its connectors need not ring it.
    pub(crate) fn wake_on(&mut self, listener: u64) {
        let Some(q) = self.incoming.get_mut(&listener) else { return };
        q.asleep = q.asleep.saturating_sub(1);
        if q.asleep == 0 {
            q.watch(true);
        }
    }

    /// The next connection accept may take from `listener`'s queue.
    pub(crate) fn pop_incoming(&mut self, listener: u64) -> Option<Pending> {
        let mut first = self.incoming.get_mut(&listener)?.look_first();
        // Made right after one the monitor made, which may still be in the
        // channel: the accept order wants that one first. (Judged on the
        // connection taken: one found ready only after a look without it
        // was taken without reading the channel.)
        if first.is_some_and(|(_, at, _)| at & AFTER_BROKERED != 0) {
            if let Err(e) = self.drain() {
                log!(Level::Debug, "cannot read the channel before an accept: {e}");
            }
            first = self.incoming.get_mut(&listener)?.look_first();
        }
        let q = self.incoming.get_mut(&listener)?;
        let next = first.and_then(|f| q.take(f));
        if !q.has_ready() {
            q.quiet();
        }
        next
    }

    /// Puts back a connection an accept took but could not give an fd (the
    /// process is at its fd limit): first in its queue again, as the
    /// kernel keeps a connection queued when accept fails with `EMFILE`.
    pub(crate) fn unpop_incoming(&mut self, listener: u64, pending: Pending) {
        self.incoming.entry(listener).or_default().items.push_front(pending);
    }

    /// Rings the bell of the listener at `dest` in the process the
    /// standby on `segment` was issued to (a connect took it); false if
    /// we have none for it.
    pub(crate) fn ring_listener(&self, dest: &SockAddr, segment: u64) -> bool {
        let Some(&acceptor) = self.standby_acceptors.get(&segment) else { return false };
        let Some(b) = self.peer_bells.get(&(*dest, acceptor)) else { return false };
        crate::conn::bell::ring(b.0.as_raw_fd());
        true
    }

    /// Keeps a listener's bell for connects through standbys issued to
    /// `key`'s acceptor. At most [`PEER_BELLS`]: a server whose workers
    /// come and go (each with a bell of its own) must not grow our fds
    /// without end. One dropped is missed only by standbys still issued
    /// to its acceptor, whose connects then tell the monitor (`Use`).
    fn keep_peer_bell(&mut self, key: (SockAddr, u64), fd: OwnedFd) {
        if self.peer_bells.len() >= PEER_BELLS && !self.peer_bells.contains_key(&key) {
            // The oldest acceptor: monitor tokens grow with time.
            if let Some(&old) = self.peer_bells.keys().min_by_key(|(_, acceptor)| *acceptor) {
                self.peer_bells.remove(&old);
            }
        }
        self.peer_bells.insert(key, PeerBell(crate::sys::fds::hide(fd)));
    }

    /// Tells the monitor this process accepts on `listener`, a listener
    /// a fork shared, with its own bell for it (standbys are issued to it
    /// then).
    pub(crate) fn serve(&mut self, listener: u64, bell: Option<&ListenerBell>) -> Result<(), ChannelError> {
        match bell {
            Some(b) => {
                // SAFETY: the bell's eventfd, alive while `b` is.
                let fd = unsafe { BorrowedFd::borrow_raw(b.fd()) };
                self.flush()?;
                self.send_now(&Request::Serve { listener, bell: true }, &[fd])
            }
            None => self.notify(&Request::Serve { listener, bell: false }),
        }
    }

    /// Everything still queued for `listener` (it is closing).
    pub(crate) fn take_incoming(&mut self, listener: u64) -> VecDeque<Pending> {
        let Some(mut q) = self.incoming.remove(&listener) else { return VecDeque::new() };
        q.empty_bell();
        q.items
    }
}

fn wait_readable(fd: RawFd) {
    poll1(fd, libc::POLLIN);
}

fn wait_writable(fd: RawFd) {
    poll1(fd, libc::POLLOUT);
}

fn poll1(fd: RawFd, events: libc::c_short) {
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one live pollfd. EINTR just means we look again.
    unsafe { real::poll(&mut p, 1, -1) };
}
