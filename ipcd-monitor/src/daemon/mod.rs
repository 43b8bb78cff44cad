//! The monitor daemon: one thread, one epoll set holding the control
//! listener, a signalfd for SIGTERM/SIGINT, and every client channel.
//!
//! It is on the control path only. A client that misbehaves (bad message,
//! wrong fds, lying credentials, not reading its replies) is dropped alone,
//! with a log line; its drop is handled exactly as its death.

use ipcd_ring::ConnSegment;
use std::collections::{HashMap, HashSet};

use std::io;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use std::time::Instant;

/// Why an exec'd process's old channel is dropped when its new image says Hello.
const EXECED: &str = "replaced by its exec'd image";

/// Why a client whose process closed its channel is dropped.
const CLOSED: &str = "channel closed";

use ipcd_proto::channel::{Channel, ChannelError, Listener as ChannelListener, BATCH};

use ipcd_proto::message::{ConnInfo, EndState, ErrorCode, Request, Response, Side, MAX_FRAME};

use ipcd_proto::SockAddr;

use crate::config::Config;

use crate::local_addrs::LocalAddrs;

use crate::log;

use crate::log::Level;

use crate::registry::Registry;

use crate::segment::{cvt, doorbell, SharedSegment};

mod broker;
mod defer;
mod handle;
mod handoff;
mod lifecycle;
mod outbox;
mod passing;
mod queues;
mod relays;
mod standby;
mod status;
mod trace;
mod verify;

use verify::{is_eventfd, parent_of, socket_inode, verify_listening_socket};

const TOKEN_LISTENER: u64 = 0;

const TOKEN_SIGNAL: u64 = 1;

/// A relay ended (see `relays`).
const TOKEN_RELAY: u64 = 2;

const FIRST_CLIENT: u64 = 3;

/// Why the daemon could not start.
#[derive(Debug)]
pub enum StartError {
    /// A monitor already answers on this socket name.
    AlreadyRunning(String),
    /// A system call failed.
    Io(io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::AlreadyRunning(name) => {
                write!(f, "a monitor already answers on @{name}; stop it with `ipcd stop` or pick another --socket")
            }
            StartError::Io(e) => write!(f, "cannot start the monitor: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Io(e)
    }
}

struct Client {
    chan: Channel,
    pid: u32,
    uid: u32,
    hello: bool,
    exec_pending: bool,
    holdings: Vec<(u64, Side)>,
    /// Ends of connections an earlier monitor made that it reports holding
    /// (`Held`), for `ipcd status` only.
    held: Vec<HeldEnd>,
    /// Its connects that went to the kernel (answered so, or reported).
    to_kernel: u64,
    /// Listeners' bells this client was sent, by (acceptor, listener id).
    bells: HashSet<(u64, u64)>,
    /// What its channel could not take yet, in order: sent as it drains
    /// (`EPOLLOUT`), so a long report reaches a slow reader whole and a
    /// burst of connections a busy acceptor.
    outbox: outbox::Outbox,
    /// Its request ring, in a queue mode.
    queue: Option<queues::ClientQueue>,
    /// Events held back until the end of the current report
    /// ([`Client::uncork`]), to go in one system call.
    cork: Vec<(u32, Response)>,
}

impl Client {
    /// Sends `resp` with `fds`, after what is corked and what waits in the
    /// outbox; `Ok(true)` if it is corked or waits in the outbox (the
    /// caller puts the client on `watch`, see [`outbox::Outbox::send`]).
    fn send(&mut self, seq: u32, resp: &Response, fds: &[BorrowedFd<'_>]) -> Result<bool, ChannelError> {
        if fds.is_empty() && corkable(resp) && self.outbox.is_empty() {
            if self.cork.len() == ipcd_proto::channel::BATCH {
                self.uncork()?;
            }
            if self.outbox.is_empty() {
                self.cork.push((seq, *resp));
                return Ok(true);
            }
        }
        self.uncork()?;
        self.outbox.send(&self.chan, seq, resp, fds)
    }

    /// Sends what is corked, in one call where the channel takes it all,
    /// the rest after it through the outbox.
    fn uncork(&mut self) -> Result<(), ChannelError> {
        if self.cork.is_empty() {
            return Ok(());
        }
        let cork = std::mem::take(&mut self.cork);
        let mut sent = 0;
        if self.outbox.is_empty() {
            sent = match self.chan.send_responses(&cork) {
                Ok(n) => n,
                Err(e) if e.is_would_block() => 0,
                Err(e) => return Err(e),
            };
        }
        for (seq, resp) in &cork[sent..] {
            self.outbox.send(&self.chan, *seq, resp, &[])?;
        }
        Ok(())
    }
}

/// Events the monitor sends per connection in steady state, without fds
/// and with nothing that waits for them at once: a standby and the
/// `Expect` of the next one. Held until the end of the report that made
/// them, they go to each process in one `sendmmsg` (a process's batch of
/// `Close`s used to cost one `sendmsg` per standby and per `Expect`).
fn corkable(resp: &Response) -> bool {
    matches!(resp, Response::Expect { .. } | Response::Standby { .. })
}

/// `clients[token]`'s [`Client::send`]; a client whose outbox it joined
/// goes on `watch`, to be watched for room ([`Daemon::watch_outboxes`]).
/// A free function, for callers that hold other fields of the daemon.
fn send_to(
    clients: &mut HashMap<u64, Client>,
    watch: &mut Vec<u64>,
    token: u64,
    seq: u32,
    resp: &Response,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ChannelError> {
    let client = clients.get_mut(&token).ok_or(ChannelError::Closed)?;
    if client.send(seq, resp, fds)? {
        watch.push(token);
    }
    Ok(())
}

/// An end of a connection an earlier monitor made, as its holder reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HeldEnd {
    conn: u64,
    side: Side,
    local: SockAddr,
    peer: SockAddr,
}

/// A process that announced an exec and whose channel closed: its holdings
/// wait for the new image (same pid) until `deadline`.
struct Orphan {
    token: u64,
    pid: u32,
    uid: u32,
    holdings: Vec<(u64, Side)>,
    deadline: Instant,
}

/// How a holding of a connection end ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gone {
    /// `Close`: the holder gave back its share of the segment's holder
    /// count itself (and closed the end if it was the last).
    Closed,
    /// `Release`: the holder left its share to the monitor (a shared end,
    /// or one it never mapped), which closes the end if it was the last.
    Released { abort: bool },
    /// The holder's process died, or its client was dropped.
    Died,
}

/// A connection end passed over `SCM_RIGHTS` and not yet claimed: held
/// for its receiver by a token no client has, until `deadline`.
struct Passed {
    conn: u64,
    side: Side,
    holder: u64,
    deadline: Instant,
    /// The passing process's user: only that user may claim it (unless
    /// `--cross-uid`).
    uid: u32,
}

struct ConnRec {
    seg: SharedSegment,
    info: [ConnInfo; 2],
    holders: [Vec<u64>; 2],
    gone: [bool; 2],
    /// The listener whose accept queue this connection still sits in.
    pending_in: Option<(u64, u64)>,
    /// It waits for room in that queue (`admit_waiting`): not counted in
    /// its `pending` yet.
    waits: bool,
    /// The connector's and the acceptor's clients: the pair whose pool the
    /// segment may go back to.
    pair: (u64, u64),
    /// Each end closed saying it keeps the segment mapped.
    kept: [bool; 2],
    /// Only the original two processes ever held it, and both closed
    /// normally: nobody else maps it, so the pair may reuse it.
    recyclable: bool,
    /// Relays serving each end (see `relays`).
    relays: [u32; 2],
    /// Made from a standby: the listener and destination to hold the
    /// connector's next standby for once this one's segment is free.
    refill: Option<((u64, u64), SockAddr)>,
}

impl ConnRec {
    /// `side`'s end for a process that maps the segment afresh (an exec'd
    /// image, the receiver of a pass, the next acceptor of a waiting
    /// connection): its info, and the segment to send with it.
    fn fresh_end(&self, side: Side) -> (ConnInfo, [BorrowedFd<'_>; 1]) {
        (ConnInfo { reused: false, ..self.info[idx(side)] }, [self.seg.fd()])
    }
}

/// A segment whose connection ended, kept for the next connection between
/// the same two processes (both still map it): no memfd, mapping, eventfds
/// or fd passing for that one.
struct Pooled {
    id: u64,
    seg: SharedSegment,
}

/// A connection being set up: the connector's client and end, the
/// acceptor's client, the listener (owner, id), the segment and doorbells.
struct NewConn {
    token: u64,
    acceptor: u64,
    listener: (u64, u64),
    seg: SharedSegment,
    info_a: ConnInfo,
    /// The listener's `TCP_DEFER_ACCEPT` seconds (0: announce at once).
    defer: u32,
    /// Its queue is full: the connection waits for room (`admit_waiting`).
    waiting: bool,
}

/// A connection held ready for a process's next connect to `dest`
/// (`Response::Standby`), for `acceptor` (the listener's owner, or for a
/// listener a fork shared one of the processes that serve it).
struct Standby {
    client: u64,
    listener: (u64, u64),
    acceptor: u64,
    dest: SockAddr,
    info: ConnInfo,
    seg: SharedSegment,
    /// Its processes' renewals already in the totals (see
    /// `Daemon::count_renewed`).
    counted: u64,
}

/// Standby connections held per process and destination: a client that
/// reconnects several connections at once (wrk, a pool, `redis-benchmark
/// -k 0`) finds one for each. With 16, one churning 50 at once found a
/// standby for 30 % of its connects (2× the kernel); with 64, 77 % (3.4×).
const STANDBYS_PER_DEST: usize = 64;

/// Segments kept per pair of processes (as many as the pair had open at
/// once, up to this); the preload library keeps at most `MAX_CACHED`.
const POOL_PER_PAIR: usize = 128;

/// A connector's address before its own is known: `dest`'s address, port 0.
fn port_zero(dest: SockAddr) -> SockAddr {
    match dest {
        SockAddr::V4 { ip, .. } => SockAddr::V4 { ip, port: 0 },
        SockAddr::V6 { ip, .. } => SockAddr::V6 { ip, port: 0, flowinfo: 0, scope_id: 0 },
    }
}

/// `rec` left its listener's accept queue (accepted, or its acceptor's
/// end went): the listener counts one fewer, unless it was waiting for
/// room and so never counted (a connect that gave up waiting made room
/// for one more).
fn left_queue(rec: &mut ConnRec, registry: &mut Registry) {
    let Some((owner, id)) = rec.pending_in.take() else { return };
    if std::mem::take(&mut rec.waits) {
        return;
    }
    if let Some(l) = registry.get_mut(owner, id) {
        l.pending = l.pending.saturating_sub(1);
    }
}

fn idx(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

fn ring_side(side: Side) -> ipcd_ring::Side {
    match side {
        Side::A => ipcd_ring::Side::A,
        Side::B => ipcd_ring::Side::B,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

/// Most of a process's queued requests taken before its channel is read
/// (its ring holds ~140).
const QUEUED_FIRST: usize = 1024;

/// The running monitor.
pub struct Daemon {
    /// Where `serve` reads requests into (kept: 16 KiB zeroed per read
    /// cost more than the read).
    recv_bufs: Vec<[u8; MAX_FRAME + 1]>,
    cfg: Config,
    listener: ChannelListener,
    epoll: OwnedFd,
    signals: OwnedFd,
    clients: HashMap<u64, Client>,
    next_token: u64,
    registry: Registry,
    conns: HashMap<u64, ConnRec>,
    next_conn: u64,
    /// Where the next port given to a connector without one is looked for
    /// (see `broker::assign_port`).
    next_port: u16,
    /// Reusable segments by (connector, acceptor) client.
    pools: HashMap<(u64, u64), Vec<Pooled>>,
    /// Standby connections by connection id.
    standbys: HashMap<u64, Standby>,
    next_segment: u64,
    orphans: Vec<Orphan>,
    /// Passed ends by the inode of the kernel socket they travel with.
    passes: HashMap<u64, Vec<Passed>>,
    local: LocalAddrs,
    started: Instant,
    connects_total: u64,
    /// Of those, made by their processes alone (renewed standbys).
    renewed_total: u64,
    fallbacks_total: u64,
    /// Of those, by reason (`Fallback::index`).
    fallbacks: [u64; ipcd_proto::FALLBACK_KINDS],
    reused_total: u64,
    standby_total: u64,
    uid: u32,
    running: bool,
    /// Clients to drop after the current event (with the reason).
    doomed: Vec<(u64, String)>,
    /// Clients whose outbox may have filled during the current event.
    watch: Vec<u64>,
    /// A connect is reading its listener owner's channel (see `broker`).
    catching_up: bool,
    /// Listeners' bells (eventfds) by (owner, id), and for a listener a
    /// fork shared by (server, id) too: rung by connectors that take a
    /// standby issued to that process.
    listener_bells: HashMap<(u64, u64), OwnedFd>,
    /// Connections not yet announced to their acceptor (`TCP_DEFER_ACCEPT`).
    deferred: HashMap<u64, defer::Deferred>,
    /// Connections waiting for room in their listener's full queue, in
    /// the order they came.
    waiting: std::collections::VecDeque<u64>,
    /// The loopback listeners demoted sockets connect to.
    junction: crate::relay::Junction,
    /// Clients watching connections (`ipcd trace`).
    tracers: Vec<trace::Tracer>,
    /// Rung by a relay that ended, after it sent on `relay_done`.
    relay_bell: OwnedFd,
    /// Every doorbell registered, the processes' and the monitor's own.
    bells: std::sync::Arc<crate::bells::Bells>,
    /// The monitor's doorbell for deferred connections: its id and eventfd.
    defer_bell: (u64, std::sync::Arc<OwnedFd>),
    relay_done: (std::sync::mpsc::Sender<crate::relay::Finished>, std::sync::mpsc::Receiver<crate::relay::Finished>),
    /// Processes' request rings, in a queue mode (`--queues`).
    queues: queues::RequestQueues,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("socket", &self.cfg.socket)
            .field("clients", &self.clients.len())
            .field("connections", &self.conns.len())
            .field("standbys", &self.standbys.len())
            .field("running", &self.running)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Binds the control socket and sets up the event loop. SIGTERM and
    /// SIGINT stop it: their handler rings an eventfd in the epoll set.
    /// (A signalfd in epoll was tried first; on this kernel a signal sent
    /// while the loop slept in epoll_wait did not wake it.)
    pub fn bind(cfg: Config) -> Result<Daemon, StartError> {
        // The monitor holds fds per connection: its soft limit goes up to
        // the hard one, as daemons' do (at 1 024 it could broker ~330).
        crate::limits::raise_nofile();
        if Channel::connect_abstract(cfg.socket.as_bytes()).is_ok() {
            return Err(StartError::AlreadyRunning(cfg.socket.clone()));
        }
        let listener = match ChannelListener::bind_abstract(cfg.socket.as_bytes()) {
            Ok(l) => l,
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
                return Err(StartError::AlreadyRunning(cfg.socket.clone()))
            }
            Err(e) => return Err(e.into()),
        };
        listener.set_nonblocking(true)?;
        // SAFETY: plain epoll creation.
        let epoll = unsafe { OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?) };
        let signals = doorbell()?;
        install_stop_handler(&signals)?;
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let bells = std::sync::Arc::new(crate::bells::Bells::default());
        let defer_id = bells.add(crate::bells::MONITOR, uid, doorbell()?);
        let defer_bell = (defer_id, bells.get(defer_id).ok_or_else(|| io::Error::other("no doorbell"))?.1);
        let d = Daemon {
            cfg,
            listener,
            epoll,
            signals,
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            registry: Registry::default(),
            conns: HashMap::new(),
            next_conn: id_base(),
            next_port: 0,
            pools: HashMap::new(),
            standbys: HashMap::new(),
            // Ids of another monitor's run (a process kept segments across
            // a restart) must not match ours.
            next_segment: id_base(),
            orphans: Vec::new(),
            passes: HashMap::new(),
            local: LocalAddrs::default(),
            started: Instant::now(),
            connects_total: 0,
            renewed_total: 0,
            fallbacks_total: 0,
            fallbacks: [0; ipcd_proto::FALLBACK_KINDS],
            reused_total: 0,
            standby_total: 0,
            uid,
            running: true,
            recv_bufs: vec![[0; MAX_FRAME + 1]; BATCH],
            doomed: Vec::new(),
            watch: Vec::new(),
            catching_up: false,
            listener_bells: HashMap::new(),
            deferred: HashMap::new(),
            waiting: std::collections::VecDeque::new(),
            junction: crate::relay::Junction::default(),
            tracers: Vec::new(),
            relay_bell: doorbell()?,
            bells,
            defer_bell,
            relay_done: std::sync::mpsc::channel(),
            queues: queues::RequestQueues::default(),
        };
        d.watch(d.listener.as_fd(), TOKEN_LISTENER)?;
        d.watch(d.signals.as_fd(), TOKEN_SIGNAL)?;
        d.watch(d.relay_bell.as_fd(), TOKEN_RELAY)?;
        d.watch(d.defer_bell.1.as_fd(), defer::DEFER_TAG)?;
        Ok(d)
    }

    fn watch(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: adds an open fd to our epoll set.
        cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd.as_raw_fd(), &mut ev) })?;
        Ok(())
    }

    /// Serves until SIGTERM, SIGINT or a `Stop` request.
    pub fn run(&mut self) -> io::Result<()> {
        log!(
            Level::Info,
            "msg=\"monitor started\" socket=@{} poll={} queues={}",
            self.cfg.socket,
            self.cfg.poll,
            self.cfg.queues.name()
        );
        if self.cfg.poll {
            pin_to_last_cpu();
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        while self.running {
            let timeout = match (self.cfg.poll, self.next_deferral()) {
                (true, _) => 0,
                (false, Some(d)) => d.as_millis().clamp(1, 1000) as libc::c_int,
                (false, None) => 1000,
            };
            // SAFETY: `events` has room for 64 entries.
            let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), 64, timeout) };
            if STOP.load(std::sync::atomic::Ordering::Relaxed) {
                log!(Level::Info, "msg=\"signal received, stopping\"");
                self.running = false;
                break;
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events[..n as usize] {
                // Copied out: epoll_event is packed.
                let (token, mask) = (ev.u64, ev.events);
                match token {
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_SIGNAL => {}
                    TOKEN_RELAY => self.relays_finished(),
                    defer::DEFER_TAG => self.deferred_rang(),
                    // What waits, in one call (a process's batch of
                    // `Close`s comes at once): one read that takes fewer
                    // than it had room for found them all, so no call
                    // finds nothing (reading until EAGAIN did, once per
                    // wake-up: ~3 of the ~11 system calls a connection
                    // cost the monitor); epoll, level-triggered, reports
                    // the channel again if more wait.
                    token => {
                        if mask & libc::EPOLLOUT as u32 != 0 {
                            self.flush_outbox(token);
                        }
                        if mask & !(libc::EPOLLOUT as u32) != 0 {
                            self.serve(token, BATCH);
                        }
                    }
                }
                self.send_and_drop();
            }
            self.expire_orphans();
            if !self.waiting.is_empty() {
                self.admit_waiting();
            }
            if !self.deferred.is_empty() {
                self.expire_deferred();
            }
            if !self.passes.is_empty() {
                self.expire_passes();
            }
            self.poll_queues();
            // What the work after the events sent waits no longer.
            self.send_and_drop();
            if self.cfg.poll && n == 0 {
                std::hint::spin_loop();
            }
        }
        log!(Level::Info, "msg=\"monitor stopped\" connections={} clients={}", self.conns.len(), self.clients.len());
        Ok(())
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept(true) {
                Ok(chan) => {
                    let cred = match chan.peer_cred() {
                        Ok(c) => c,
                        Err(e) => {
                            log!(Level::Warn, "msg=\"no peer credentials, refusing\" err=\"{e}\"");
                            continue;
                        }
                    };
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.watch(chan.as_fd(), token) {
                        log!(Level::Error, "msg=\"epoll_ctl failed\" err=\"{e}\"");
                        continue;
                    }
                    log!(Level::Debug, "msg=\"client connected\" client={token} pid={} uid={}", cred.pid, cred.uid);
                    let client = Client {
                        chan,
                        pid: cred.pid,
                        uid: cred.uid,
                        hello: false,
                        exec_pending: false,
                        holdings: Vec::new(),
                        held: Vec::new(),
                        to_kernel: 0,
                        bells: HashSet::new(),
                        outbox: outbox::Outbox::default(),
                        cork: Vec::new(),
                        queue: None,
                    };
                    self.clients.insert(token, client);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    log!(Level::Warn, "msg=\"accept failed\" err=\"{e}\"");
                    return;
                }
            }
        }
    }

    /// Reads up to `batch` of the requests a client has queued, several
    /// per system call.
    fn serve(&mut self, token: u64, batch: usize) {
        // A serve inside a request's handling (an exec's, a fork's) finds
        // the buffers taken and has its own.
        let mut bufs = std::mem::take(&mut self.recv_bufs);
        if bufs.is_empty() {
            bufs = vec![[0; MAX_FRAME + 1]; BATCH];
        }
        self.serve_into(token, batch, &mut bufs);
        self.recv_bufs = bufs;
    }

    fn serve_into(&mut self, token: u64, batch: usize, bufs: &mut [[u8; MAX_FRAME + 1]]) {
        // What it queued came before what its channel holds.
        let _ = self.take_queued(token, QUEUED_FIRST);
        if self.doomed.iter().any(|(t, _)| *t == token) {
            return;
        }
        let mut reset = false;
        let mut left = batch;
        while left > 0 {
            let Some(client) = self.clients.get(&token) else { return };
            let room = left.min(bufs.len());
            let mut got = Vec::with_capacity(room);
            let read = client.chan.recv_packets(&mut bufs[..room], |bytes, fds| match fds {
                // A packet carries one request, or (without fds) a batch.
                Ok(fds) => {
                    let n = fds.len();
                    let mut fds = Some(fds);
                    for r in Request::decode_packet(bytes, n) {
                        got.push(match r {
                            Ok((seq, req)) => Ok((seq, req, fds.take().unwrap_or_default())),
                            Err(e) => Err(ChannelError::Decode(e)),
                        });
                    }
                }
                Err(e) => got.push(Err(e)),
            });
            let n = match read {
                Ok(n) => n,
                Err(e) if e.is_would_block() => {
                    if reset {
                        self.doom(token, CLOSED.into());
                    }
                    return;
                }
                // A process that closed its channel with messages of ours
                // unread (one that exec'd with an `Incoming` queued) looks
                // like this, once, before what it sent until then, which
                // must still be read (its `ExecPrepare`): a close like any
                // other, after the rest.
                Err(ChannelError::Io(e)) if e.raw_os_error() == Some(libc::ECONNRESET) => {
                    reset = true;
                    continue;
                }
                Err(e) => {
                    self.fail_input(token, e);
                    return;
                }
            };
            left = left.saturating_sub(n);
            for r in got {
                match r {
                    Ok((seq, req, fds)) => {
                        log!(Level::Debug, "msg=request client={token} seq={seq} req=\"{req:?}\"");
                        self.handle(token, seq, req, fds);
                        if self.doomed.iter().any(|(t, _)| *t == token) {
                            return;
                        }
                    }
                    Err(e) => {
                        self.fail_input(token, e);
                        return;
                    }
                }
            }
            if n < room {
                // Nothing more waited (a reset shows on the next read).
                if !reset {
                    return;
                }
            }
        }
    }

    /// The client's channel gave `e`: it is served no more.
    fn fail_input(&mut self, token: u64, e: ChannelError) {
        match e {
            ChannelError::Closed => self.doom(token, CLOSED.into()),
            e => self.doom(token, format!("bad input: {e}")),
        }
    }

    fn doom(&mut self, token: u64, why: String) {
        if !self.doomed.iter().any(|(t, _)| *t == token) {
            self.doomed.push((token, why));
        }
    }

    /// Sends `resp` to `token` in order, now or from its outbox (see
    /// [`send_to`]).
    fn send(&mut self, token: u64, seq: u32, resp: &Response, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        send_to(&mut self.clients, &mut self.watch, token, seq, resp, fds)
    }

    fn reply(&mut self, token: u64, seq: u32, resp: &Response, fds: &[BorrowedFd<'_>]) {
        if let Err(e) = self.send(token, seq, resp, fds) {
            // A client that does not read its replies is not served on.
            self.doom(token, undeliverable("cannot reply", &e));
        }
    }

    /// Sends replies without fds in order; what the client's channel cannot
    /// take now waits in its outbox and goes as the channel drains.
    fn reply_all(&mut self, token: u64, seq: u32, replies: impl IntoIterator<Item = Response>) {
        for r in replies {
            self.reply(token, seq, &r, &[]);
        }
    }

    /// Sends what waits in `token`'s outbox until its channel is full.
    fn flush_outbox(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else { return };
        if let Err(e) = client.outbox.flush(&client.chan) {
            self.doom(token, undeliverable("cannot reply", &e));
            return;
        }
        self.watch_out(token);
    }

    /// Sends what this event corked, client by client in the order they
    /// were first sent something (see [`Daemon::uncork_before`]), and asks
    /// epoll for room (`EPOLLOUT`) on the channels of clients whose outbox
    /// filled.
    fn watch_outboxes(&mut self) {
        for token in std::mem::take(&mut self.watch) {
            let Some(client) = self.clients.get_mut(&token) else { continue };
            if let Err(e) = client.uncork() {
                self.doom(token, undeliverable("cannot send", &e));
                continue;
            }
            self.watch_out(token);
        }
    }

    /// After a piece of work: what it corked goes, the clients it doomed
    /// are dropped, and what dropping them sent goes too.
    fn send_and_drop(&mut self) {
        self.watch_outboxes();
        self.drop_doomed();
        self.watch_outboxes();
    }

    /// Makes what is corked for `first` go before what is sent next to
    /// `then` (corked if `corks`): sent now, unless `then` is the same
    /// client or will be uncorked after it. A standby's `Expect` must
    /// reach its acceptor before the standby its connector, who may use
    /// it at once and ring the acceptor, which must then find the
    /// `Expect` on its channel.
    fn uncork_before(&mut self, first: u64, then: u64, corks: bool) {
        if first == then {
            return;
        }
        let at = |t: u64| self.watch.iter().position(|&w| w == t);
        if corks && at(then).is_none_or(|b| at(first).is_some_and(|a| a < b)) {
            return;
        }
        let Some(client) = self.clients.get_mut(&first) else { return };
        if let Err(e) = client.uncork() {
            self.doom(first, undeliverable("cannot send", &e));
        }
    }

    /// Asks for `EPOLLOUT` on `token`'s channel while its outbox holds
    /// anything, and stops asking once it is empty.
    fn watch_out(&mut self, token: u64) {
        let Some(client) = self.clients.get_mut(&token) else { return };
        let want = !client.outbox.is_empty();
        if want != client.outbox.watching {
            client.outbox.watching = want;
            let events = libc::EPOLLIN as u32 | if want { libc::EPOLLOUT as u32 } else { 0 };
            let mut ev = libc::epoll_event { events, u64: token };
            let fd = client.chan.as_fd().as_raw_fd();
            // SAFETY: changes the events of a channel in our epoll set.
            if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) } != 0 {
                let e = io::Error::last_os_error();
                self.doom(token, format!("cannot watch its channel: {e}"));
            }
        }
    }

    fn fail(&mut self, token: u64, seq: u32, code: ErrorCode) {
        self.reply(token, seq, &Response::Error { code }, &[]);
    }
}

/// What `side` of a connection has done, from the monitor's books and the
/// flags its writer left in the ring.
fn end_state(rec: &ConnRec, side: Side) -> EndState {
    if rec.gone[idx(side)] {
        return EndState::Gone;
    }
    match writer_end(rec.seg.view(), ring_side(side)) {
        EndState::Open if rec.relays[idx(side)] > 0 => EndState::Relayed,
        state => state,
    }
}

/// What the ring says of `side`'s end as a writer: open, FIN or reset.
fn writer_end(seg: &ipcd_ring::Segment, side: ipcd_ring::Side) -> EndState {
    match seg.writer_state(side) {
        ipcd_ring::PeerState::Open => EndState::Open,
        ipcd_ring::PeerState::Closed => EndState::Fin,
        ipcd_ring::PeerState::Reset => EndState::Reset,
    }
}

/// Closes `side` of `seg` as the kernel closes a dead process's socket
/// (see `ConnSegment::close_dead_end`).
fn end_gone(seg: &SharedSegment, side: Side, abort: bool) {
    let _ = seg.view().close_dead_end(ring_side(side), abort);
}

/// The monotonic clock in nanoseconds, as the library reads it: when a
/// connection was made, for the accept order (see `Response::Incoming`).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a live timespec; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Where this run's segment and connection ids start: the start time in
/// microseconds, so that two runs of the monitor do not hand out the same
/// ids (processes keep connections an earlier run made, and report them).
fn id_base() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}

/// Why a client whose channel a send failed on is dropped: closed, as
/// when a read finds it so, if the process closed its end (it exited or
/// exec'd: its last messages, an `ExecPrepare` above all, are still to
/// be read).
fn undeliverable(what: &str, e: &ChannelError) -> String {
    if peer_closed(e) {
        CLOSED.into()
    } else {
        format!("{what}: {e}")
    }
}

/// Whether a send failed because the process closed its end.
fn peer_closed(e: &ChannelError) -> bool {
    match e {
        ChannelError::Closed => true,
        ChannelError::Io(io) => matches!(io.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)),
        _ => false,
    }
}

static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

static STOP_BELL: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int) {
    // Async-signal-safe only: an atomic store and a write(2).
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
    let fd = STOP_BELL.load(std::sync::atomic::Ordering::Relaxed);
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to the eventfd (or fails harmlessly).
    let _ = unsafe { libc::write(fd, (&raw const one).cast(), 8) };
}

fn install_stop_handler(bell: &OwnedFd) -> io::Result<()> {
    STOP_BELL.store(bell.as_raw_fd(), std::sync::atomic::Ordering::Relaxed);
    // SAFETY: installs a handler that only touches atomics and write(2).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as *const () as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        for sig in [libc::SIGTERM, libc::SIGINT] {
            cvt(libc::sigaction(sig, &sa, std::ptr::null_mut()))?;
        }
    }
    Ok(())
}

fn pin_to_last_cpu() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: cpu_set_t is plain data; pins this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpus - 1, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
