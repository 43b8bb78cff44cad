//! The monitor daemon: one thread, one epoll set holding the control
//! listener, a signalfd for SIGTERM/SIGINT, and every client channel.
//!
//! It is on the control path only. A client that misbehaves (bad message,
//! wrong fds, lying credentials, not reading its replies) is dropped alone,
//! with a log line; its drop is handled exactly as its death.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// Why an exec'd process's old channel is dropped when its new image says Hello.
const EXECED: &str = "replaced by its exec'd image";
/// Why a client whose process closed its channel is dropped.
const CLOSED: &str = "channel closed";

use ipcd_proto::channel::{Channel, ChannelError, Fds, Listener as ChannelListener, BATCH};
use ipcd_proto::message::{
    ConnInfo, ConnStatus, EndState, ErrorCode, Fallback, ListenerStatus, Request, Response, Side, Status, MAX_FRAME,
};
use ipcd_proto::{Caps, ListenFlags, SockAddr, PROTOCOL_VERSIONS};

use crate::config::Config;
use crate::local_addrs::LocalAddrs;
use crate::log;
use crate::log::Level;
use crate::registry::{Listener, Registry};
use crate::segment::{cvt, doorbell, ring, SharedSegment};
use ipcd_ring::Ticket;

const TOKEN_LISTENER: u64 = 0;
const TOKEN_SIGNAL: u64 = 1;
const FIRST_CLIENT: u64 = 2;

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
    /// Listeners (owner, id) whose bell this client was sent.
    bells: HashSet<(u64, u64)>,
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

/// A connection end passed over `SCM_RIGHTS` and not yet claimed: held
/// for its receiver by a token no client has, until `deadline`.
struct Passed {
    conn: u64,
    side: Side,
    holder: u64,
    deadline: Instant,
}

struct ConnRec {
    seg: SharedSegment,
    bells: [OwnedFd; 2],
    info: [ConnInfo; 2],
    holders: [Vec<u64>; 2],
    gone: [bool; 2],
    /// The listener whose accept queue this connection still sits in.
    pending_in: Option<(u64, u64)>,
    /// The connector's and the acceptor's clients: the pair whose pool the
    /// segment may go back to.
    pair: (u64, u64),
    /// Each end closed saying it keeps the segment mapped.
    kept: [bool; 2],
    /// Only the original two processes ever held it, and both closed
    /// normally: nobody else maps it, so the pair may reuse it.
    recyclable: bool,
    /// Made from a standby: the listener and destination to hold the
    /// connector's next standby for once this one's segment is free.
    refill: Option<((u64, u64), SockAddr)>,
}

impl ConnRec {
    /// `side`'s end for a process that maps the segment afresh (an exec'd
    /// image, the receiver of a pass, the next acceptor of a waiting
    /// connection): its info, and the segment and the end's own and peer
    /// doorbells to send with it.
    fn fresh_end(&self, side: Side) -> (ConnInfo, [BorrowedFd<'_>; 3]) {
        let i = idx(side);
        let fds = [self.seg.fd(), self.bells[i].as_fd(), self.bells[idx(other(side))].as_fd()];
        (ConnInfo { reused: false, ..self.info[i] }, fds)
    }
}

/// A segment whose connection ended, kept for the next connection between
/// the same two processes (both still map it): no memfd, mapping, eventfds
/// or fd passing for that one.
struct Pooled {
    id: u64,
    seg: SharedSegment,
    bells: [OwnedFd; 2],
}

/// A connection being set up: the connector's client and end, the
/// acceptor's client, the listener (owner, id), the segment and doorbells.
struct NewConn {
    token: u64,
    acceptor: u64,
    listener: (u64, u64),
    seg: SharedSegment,
    bells: [OwnedFd; 2],
    info_a: ConnInfo,
}

/// A connection held ready for a process's next connect to `dest`
/// (`Response::Standby`): its listener's owner is told only at `Use`.
struct Standby {
    client: u64,
    listener: (u64, u64),
    dest: SockAddr,
    info: ConnInfo,
    seg: SharedSegment,
    bells: [OwnedFd; 2],
}

/// Standby connections held per process and destination: a client that
/// reconnects several connections at once (wrk, a pool) finds one for each.
const STANDBYS_PER_DEST: usize = 16;

/// Segments kept per pair of processes (as many as the pair had open at
/// once, up to this); the preload library keeps at most `MAX_CACHED`.
const POOL_PER_PAIR: usize = 32;

/// Whether a message can go on `chan` now (its peer's queue has room).
fn has_room(chan: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd { fd: chan.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
    // SAFETY: one live pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) == 1 && p.revents & libc::POLLOUT != 0 }
}

/// A connector's address before its own is known: `dest`'s address, port 0.
fn port_zero(dest: SockAddr) -> SockAddr {
    match dest {
        SockAddr::V4 { ip, .. } => SockAddr::V4 { ip, port: 0 },
        SockAddr::V6 { ip, .. } => SockAddr::V6 { ip, port: 0, flowinfo: 0, scope_id: 0 },
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
    fallbacks_total: u64,
    reused_total: u64,
    standby_total: u64,
    uid: u32,
    running: bool,
    /// Clients to drop after the current event (with the reason).
    doomed: Vec<(u64, String)>,
    /// A connect is reading its listener owner's channel (see `broker`).
    catching_up: bool,
    /// Listeners' bells (eventfds) by (owner, id), rung by connectors
    /// that take a standby.
    listener_bells: HashMap<(u64, u64), OwnedFd>,
}

impl Daemon {
    /// Binds the control socket and sets up the event loop. SIGTERM and
    /// SIGINT stop it: their handler rings an eventfd in the epoll set.
    /// (A signalfd in epoll was tried first; on this kernel a signal sent
    /// while the loop slept in epoll_wait did not wake it.)
    pub fn bind(cfg: Config) -> Result<Daemon, StartError> {
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
        let d = Daemon {
            cfg,
            listener,
            epoll,
            signals,
            clients: HashMap::new(),
            next_token: FIRST_CLIENT,
            registry: Registry::default(),
            conns: HashMap::new(),
            next_conn: 1,
            pools: HashMap::new(),
            standbys: HashMap::new(),
            // Ids of another monitor's run (a process kept segments across
            // a restart) must not match ours.
            next_segment: segment_id_base(),
            orphans: Vec::new(),
            passes: HashMap::new(),
            local: LocalAddrs::default(),
            started: Instant::now(),
            connects_total: 0,
            fallbacks_total: 0,
            reused_total: 0,
            standby_total: 0,
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            running: true,
            recv_bufs: vec![[0; MAX_FRAME + 1]; BATCH],
            doomed: Vec::new(),
            catching_up: false,
            listener_bells: HashMap::new(),
        };
        d.watch(d.listener.as_fd(), TOKEN_LISTENER)?;
        d.watch(d.signals.as_fd(), TOKEN_SIGNAL)?;
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
        log!(Level::Info, "msg=\"monitor started\" socket=@{} poll={}", self.cfg.socket, self.cfg.poll);
        if self.cfg.poll {
            pin_to_last_cpu();
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        while self.running {
            let timeout = if self.cfg.poll { 0 } else { 1000 };
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
                match ev.u64 {
                    TOKEN_LISTENER => self.accept_all(),
                    TOKEN_SIGNAL => {}
                    // What waits, in one call (a process's batch of
                    // `Close`s comes at once): one read that takes fewer
                    // than it had room for found them all, so no call
                    // finds nothing (reading until EAGAIN did, once per
                    // wake-up: ~3 of the ~11 system calls a connection
                    // cost the monitor); epoll, level-triggered, reports
                    // the channel again if more wait.
                    token => self.serve(token, BATCH),
                }
                self.drop_doomed();
            }
            self.expire_orphans();
            if !self.passes.is_empty() {
                self.expire_passes();
            }
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
                        bells: HashSet::new(),
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
        let mut reset = false;
        let mut left = batch;
        while left > 0 {
            let Some(client) = self.clients.get(&token) else { return };
            let room = left.min(bufs.len());
            let mut got = Vec::with_capacity(room);
            let read = client.chan.recv_packets(&mut bufs[..room], |bytes, fds| {
                got.push(fds.and_then(|fds| match Request::decode(bytes, fds.len()) {
                    Ok((seq, req)) => Ok((seq, req, fds)),
                    Err(e) => Err(ChannelError::Decode(e)),
                }))
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

    fn reply(&mut self, token: u64, seq: u32, resp: &Response, fds: &[BorrowedFd<'_>]) {
        let Some(client) = self.clients.get(&token) else { return };
        if let Err(e) = client.chan.send_response(seq, resp, fds) {
            // A client that does not read its replies is not served on.
            self.doom(token, undeliverable("cannot reply", &e));
        }
    }

    fn fail(&mut self, token: u64, seq: u32, code: ErrorCode) {
        self.reply(token, seq, &Response::Error { code }, &[]);
    }

    fn handle(&mut self, token: u64, seq: u32, req: Request, fds: Fds) {
        let (pid, uid, hello) = match self.clients.get(&token) {
            Some(c) => (c.pid, c.uid, c.hello),
            None => return,
        };
        if !hello && !matches!(req, Request::Hello { .. }) {
            self.fail(token, seq, ErrorCode::NotRegistered);
            self.doom(token, "request before hello".into());
            return;
        }
        // Standbys used since (their connectors send nothing) become
        // connections before anything that may concern them.
        match req {
            Request::Close { conn, .. }
            | Request::Reopen { conn, .. }
            | Request::Pass { conn, .. }
            | Request::Decline { conn }
            | Request::Accepted { conn } => self.promote(conn),
            // A connect only needs its own (its stock of standbys); a
            // process about to exec, its own and its listeners'.
            Request::Connect { .. } => self.promote_where(|s| s.client == token),
            Request::ExecPrepare => self.promote_where(|s| s.client == token || s.listener.0 == token),
            // A fork's parent is known by pid only; a report shows all.
            Request::Forked { .. } | Request::Status => self.promote_where(|_| true),
            _ => {}
        }
        match req {
            Request::Hello { version_min, version_max, pid: claimed_pid, uid: claimed_uid, caps } => {
                if hello {
                    self.fail(token, seq, ErrorCode::NotRegistered);
                    self.doom(token, "second hello".into());
                    return;
                }
                if claimed_pid != pid || claimed_uid != uid {
                    self.fail(token, seq, ErrorCode::BadRequest);
                    self.doom(
                        token,
                        format!("hello claims pid {claimed_pid} uid {claimed_uid}, kernel says {pid} {uid}"),
                    );
                    return;
                }
                let version = (version_min.max(*PROTOCOL_VERSIONS.start())..=version_max.min(*PROTOCOL_VERSIONS.end()))
                    .next_back();
                let Some(version) = version else {
                    self.fail(token, seq, ErrorCode::VersionMismatch);
                    self.doom(token, format!("no common version in {version_min}..={version_max}"));
                    return;
                };
                if let Some(c) = self.clients.get_mut(&token) {
                    c.hello = true;
                }
                // The same process again after ExecPrepare: its old channel
                // closed at the exec even if we have not read the hang-up yet,
                // nor, at times, the ExecPrepare itself (one wait reported both
                // channels, and this one was read first): read what the old
                // one still holds before looking.
                let same: Vec<u64> = self
                    .clients
                    .iter()
                    .filter(|(&t, c)| t != token && c.pid == pid && c.uid == uid && !c.exec_pending)
                    .map(|(&t, _)| t)
                    .collect();
                for t in same {
                    self.serve(t, 64);
                }
                let replaced: Vec<u64> = self
                    .clients
                    .iter()
                    .filter(|(&t, c)| t != token && c.pid == pid && c.uid == uid && c.exec_pending)
                    .map(|(&t, _)| t)
                    .collect();
                for t in replaced {
                    self.doom(t, EXECED.into());
                }
                self.drop_doomed();
                self.adopt_orphans(token, pid, uid);
                log!(Level::Debug, "msg=\"process registered\" client={token} pid={pid} uid={uid} caps={caps:?}");
                let welcome = Response::Welcome {
                    version,
                    monitor_pid: std::process::id(),
                    caps: Caps::FORK | Caps::EXEC,
                    ring_bytes: self.cfg.ring_bytes,
                };
                self.reply(token, seq, &welcome, &[]);
            }
            Request::Listen { listener, addr, backlog, flags } => {
                let fds = fds.into_vec();
                if let Err(why) = verify_listening_socket(&fds[0], &addr) {
                    log!(Level::Warn, "msg=\"listen refused\" client={token} pid={pid} addr={addr} why=\"{why}\"");
                    self.fail(token, seq, ErrorCode::NotOwner);
                    return;
                }
                if let Some(l) = self.registry.get_mut(token, listener).filter(|l| l.addr == addr) {
                    // `listen` again on a listening socket: Linux takes the
                    // new backlog and keeps the queue.
                    l.backlog = backlog;
                    log!(Level::Info, "msg=\"backlog changed\" client={token} pid={pid} addr={addr} backlog={backlog}");
                    self.reply(token, seq, &Response::Ok, &[]);
                    return;
                }
                let inode = socket_inode(&fds[0]);
                if self.registry.share_inherited(token, listener, &addr, inode) {
                    log!(Level::Info, "msg=\"inherited listener shared\" client={token} pid={pid} addr={addr}");
                    self.reply(token, seq, &Response::Ok, &[]);
                    return;
                }
                let mut entry = Listener::new(token, listener, pid, uid, addr, backlog, flags - ListenFlags::BELL);
                entry.inode = inode;
                let mut fds = fds;
                if flags.contains(ListenFlags::BELL) && fds.len() == 2 {
                    if let Some(bell) = fds.pop() {
                        self.listener_bells.insert((token, listener), bell);
                    }
                }
                let stale = self.registry.add(entry);
                for s in &stale {
                    log!(Level::Info, "msg=\"stale listener replaced\" addr={addr} old_pid={}", s.pid);
                }
                if !stale.is_empty() {
                    self.rehome_parked();
                }
                log!(Level::Info, "msg=listening client={token} pid={pid} addr={addr} backlog={backlog}");
                self.reply(token, seq, &Response::Ok, &[]);
                self.requeue_after_exec(token, listener);
            }
            Request::Unlisten { listener } => {
                // A forked child closing its copy of its parent's listener
                // (same id) gives back its share.
                let (owned, handed) = self.registry.disown(token, Some(listener));
                self.handed_on(token, &handed);
                self.withdraw_standbys(|s| s.listener == (token, listener));
                self.listener_bells.remove(&(token, listener));
                if owned > 0 || self.registry.unshare(token, Some(listener)) {
                    self.reply(token, seq, &Response::Ok, &[]);
                    self.rehome_parked();
                } else {
                    self.fail(token, seq, ErrorCode::NoSuchListener);
                }
            }
            Request::Connect { dest, source, .. } => self.broker(token, seq, pid, uid, dest, source),
            // A connector that had no bell for the listener says so
            // itself; the ticket has the rest.
            Request::Use { conn, .. } => self.promote(conn),
            Request::Unused { conn } => self.unused_standby(token, conn),
            Request::Accepted { conn } => {
                if let Some(rec) = self.conns.get_mut(&conn) {
                    if rec.holders[1].contains(&token) {
                        if let Some((owner, id)) = rec.pending_in.take() {
                            if let Some(l) = self.registry.get_mut(owner, id) {
                                l.pending = l.pending.saturating_sub(1);
                            }
                        }
                    }
                }
            }
            Request::Shutdown { .. } => {}
            Request::Close { conn, side, keep } => match self.holds(token, conn, side) {
                true => {
                    if let Some(c) = self.clients.get_mut(&token) {
                        if let Some(pos) = c.holdings.iter().position(|h| *h == (conn, side)) {
                            c.holdings.remove(pos);
                        }
                    }
                    if let Some(rec) = self.conns.get_mut(&conn) {
                        rec.kept[idx(side)] = keep;
                    }
                    self.release(token, conn, side, false);
                }
                false => log!(Level::Warn, "msg=\"close of a connection not held\" client={token} conn={conn}"),
            },
            Request::Forked { parent_pid } => self.forked(token, seq, pid, uid, parent_pid),
            Request::ExecPrepare => {
                if let Some(c) = self.clients.get_mut(&token) {
                    c.exec_pending = true;
                }
            }
            Request::Reopen { conn, side } => match (self.holds(token, conn, side), self.conns.get(&conn)) {
                (true, Some(rec)) => {
                    let (info, fds) = rec.fresh_end(side);
                    let resp = Response::Reopened(info);
                    let Some(client) = self.clients.get(&token) else { return };
                    if let Err(e) = client.chan.send_response(seq, &resp, &fds) {
                        self.doom(token, undeliverable("cannot reply", &e));
                    }
                }
                _ => self.fail(token, seq, ErrorCode::NoSuchConnection),
            },
            Request::Pass { conn, side, inode } => self.pass(token, seq, conn, side, inode),
            Request::Claim { inode } => self.claim(token, seq, inode),
            Request::Serve { listener } => {
                if self.registry.serve(token, listener) {
                    self.take_from_idle(token, listener);
                    self.rehome_parked();
                } else {
                    log!(Level::Warn, "msg=\"serve of a listener not held\" client={token} listener={listener}");
                }
            }
            Request::Decline { conn } => self.decline(token, conn),
            Request::Status => self.status(token, seq),
            Request::Stop => {
                if uid == self.uid || uid == 0 {
                    log!(Level::Info, "msg=\"stop requested\" pid={pid}");
                    self.reply(token, seq, &Response::Ok, &[]);
                    self.running = false;
                } else {
                    self.fail(token, seq, ErrorCode::NotOwner);
                }
            }
        }
    }

    /// `Pass`: the end gains a holder (a token of no client) that waits
    /// for the receiver's `Claim`.
    fn pass(&mut self, token: u64, seq: u32, conn: u64, side: Side, inode: u64) {
        if !self.holds(token, conn, side) {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        }
        let Some(rec) = self.conns.get_mut(&conn) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let holder = self.next_token;
        self.next_token += 1;
        rec.holders[idx(side)].push(holder);
        // A third process maps it: never reused by the pair.
        rec.recyclable = false;
        let deadline = Instant::now() + Duration::from_secs(self.cfg.exec_grace_secs);
        self.passes.entry(inode).or_default().push(Passed { conn, side, holder, deadline });
        self.reply(token, seq, &Response::Ok, &[]);
    }

    /// `Claim`: the end passed with the socket `inode` becomes the
    /// claimer's, as `Reopen` gives an exec'd image its own.
    fn claim(&mut self, token: u64, seq: u32, inode: u64) {
        // No list is left empty in `passes`.
        let Some(list) = self.passes.get_mut(&inode) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let p = list.remove(0);
        if list.is_empty() {
            self.passes.remove(&inode);
        }
        let Some(rec) = self.conns.get_mut(&p.conn) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let i = idx(p.side);
        for h in rec.holders[i].iter_mut().filter(|h| **h == p.holder) {
            *h = token;
        }
        let (info, fds) = rec.fresh_end(p.side);
        let resp = Response::Reopened(info);
        let Some(client) = self.clients.get_mut(&token) else { return };
        client.holdings.push((p.conn, p.side));
        if let Err(e) = client.chan.send_response(seq, &resp, &fds) {
            self.doom(token, undeliverable("cannot reply", &e));
        }
    }

    /// Passed ends nobody claimed in time: given back as a dead holder's
    /// are (the last one's going closes the end).
    fn expire_passes(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for list in self.passes.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(|p| p.deadline <= now);
            *list = kept;
            expired.extend(gone);
        }
        self.passes.retain(|_, v| !v.is_empty());
        for p in expired {
            log!(Level::Info, "msg=\"passed connection not claimed\" conn={}", p.conn);
            self.release(p.holder, p.conn, p.side, true);
        }
    }

    /// Whether the client `token` holds `side` of `conn`.
    fn holds(&self, token: u64, conn: u64, side: Side) -> bool {
        self.clients.get(&token).is_some_and(|c| c.holdings.contains(&(conn, side)))
    }

    /// The listener a connect to `dest` reaches, if any.
    fn listener_for(&mut self, dest: &SockAddr) -> Option<Listener> {
        let local = &mut self.local;
        self.registry.lookup(dest, |ip| local.is_local(ip)).cloned()
    }

    fn broker(&mut self, token: u64, seq: u32, pid: u32, uid: u32, dest: SockAddr, source: Option<SockAddr>) {
        let mut found = self.listener_for(&dest);
        // A listener's owner reports its accepts on its own channel, which
        // this loop may read after a connect sent later (the owner
        // accepted, then told the connector through a pipe): before a full
        // backlog sends the connector to the kernel, read what the owner
        // has sent so far. Once, not nested: a connect met while catching
        // up is judged on what is known.
        let full = |l: &Listener| l.pending >= l.backlog.max(1);
        if let Some(owner) =
            found.as_ref().filter(|l| full(l) && l.owner != token && !self.catching_up).map(|l| l.owner)
        {
            self.catching_up = true;
            // Everything it has sent so far, bounded so that a flooding
            // owner cannot hold the connect forever.
            self.serve(owner, 256);
            self.catching_up = false;
            found = self.listener_for(&dest);
        }
        // Whose accept queue it joins: the owner's, or a sharer's that
        // serves it (see `Listener::acceptor`).
        let acceptor = found.as_ref().and_then(|l| self.registry.get_mut(l.owner, l.id)).and_then(Listener::acceptor);
        let fallback = match &found {
            None => Some(Fallback::NoListener),
            Some(l) if l.uid != uid && !self.cfg.cross_uid => Some(Fallback::OtherUser),
            Some(l) if full(l) => Some(Fallback::BacklogFull),
            Some(_) if acceptor.is_none() => Some(Fallback::Disabled),
            Some(_) => None,
        };
        if let Some(reason) = fallback {
            self.fallbacks_total += 1;
            log!(Level::Debug, "msg=\"use kernel\" pid={pid} dest={dest} reason={reason:?}");
            self.reply(token, seq, &Response::UseKernel { reason }, &[]);
            return;
        }
        let (l, acceptor) = (found.expect("checked above"), acceptor.expect("checked above"));
        let conn = self.next_conn;
        let pair = (token, acceptor);
        let Some((segment, seg, bells, reused)) = self.take_segment(pair, conn) else {
            self.fallbacks_total += 1;
            self.reply(token, seq, &Response::UseKernel { reason: Fallback::NoMemory }, &[]);
            return;
        };
        self.next_conn += 1;
        let a_addr = source.unwrap_or(port_zero(dest));
        let info_a =
            ConnInfo { conn, side: Side::A, local: a_addr, peer: dest, segment_len: seg.len() as u64, segment, reused };
        let new = NewConn { token, acceptor, listener: (l.owner, l.id), seg, bells, info_a };
        // Sent before the answer: the connector, woken by the answer,
        // often runs before the rest of this, and its next connect would
        // find no standby yet. A pair with a pool has had a connection before.
        self.issue_standby(token, (l.owner, l.id), dest, reused || self.pools.contains_key(&pair));
        self.deliver(new, Some(seq));
    }

    /// A segment for a new connection `conn` between `pair`: one of the
    /// pair's pool, made fresh for it (`true`: both ends map it already),
    /// else a new one. `None` when none can be made.
    fn take_segment(&mut self, pair: (u64, u64), conn: u64) -> Option<(u64, SharedSegment, [OwnedFd; 2], bool)> {
        if let Some(p) = self.pools.get_mut(&pair).and_then(Vec::pop) {
            let mut seg = p.seg;
            seg.reuse(conn);
            return Some((p.id, seg, p.bells, true));
        }
        let made = SharedSegment::create(conn, self.cfg.ring_bytes).and_then(|s| Ok((s, [doorbell()?, doorbell()?])));
        match made {
            Ok((seg, bells)) => {
                self.next_segment += 1;
                Some((self.next_segment - 1, seg, bells, false))
            }
            Err(e) => {
                log!(Level::Error, "msg=\"cannot create segment\" err=\"{e}\"");
                None
            }
        }
    }

    /// Records connection `new` and tells its acceptor (`Incoming`). The
    /// connector waits for its answer (`Connected`) when `answer` is its
    /// request's sequence number; otherwise it took a standby and has it.
    fn deliver(&mut self, new: NewConn, answer: Option<u32>) {
        let NewConn { token, acceptor, listener: (owner, id), seg, bells, info_a } = new;
        let (conn, segment, reused) = (info_a.conn, info_a.segment, info_a.reused);
        let pair = (token, acceptor);
        let info_b = ConnInfo { side: Side::B, local: info_a.peer, peer: info_a.local, ..info_a };
        // A reused segment is already mapped at both ends, doorbells too.
        let fds_b = [seg.fd(), bells[1].as_fd(), bells[0].as_fd()];
        let fds_a = [seg.fd(), bells[0].as_fd(), bells[1].as_fd()];
        let n = if reused { 0 } else { 3 };
        // The connector is answered first when the listener's channel has
        // room: it then writes while the acceptor wakes, instead of waking
        // after it (one connection at a time, 4 alternating runs: ~16 %
        // more per second). Without room, the listener first, so that a
        // connection it cannot take still gets the kernel's answer.
        let answered = match answer {
            None => true,
            Some(seq) if self.clients.get(&acceptor).is_some_and(|o| has_room(o.chan.as_fd())) => {
                self.reply(token, seq, &Response::Connected(info_a), &fds_a[..n]);
                true
            }
            Some(_) => false,
        };
        let to_pid = self.clients.get(&acceptor).map_or(0, |c| c.pid);
        // A standby's acceptor was told when it was issued (`Expect`).
        let sent = match (answer, self.clients.get(&acceptor)) {
            (None, Some(_)) => Ok(()),
            (Some(_), Some(a)) => {
                seg.view().offer(to_pid);
                a.chan.send_response(0, &Response::Incoming { listener: id, info: info_b }, &fds_b[..n])
            }
            (_, None) => Err(ChannelError::Closed),
        };
        if let Err(e) = &sent {
            log!(Level::Warn, "msg=\"listener cannot take a connection\" pid={to_pid} err=\"{e}\"");
            if !e.is_would_block() {
                self.doom(acceptor, undeliverable("cannot deliver", e));
            }
        }
        if let (Err(_), false, Some(seq)) = (&sent, answered, answer) {
            self.fallbacks_total += 1;
            self.reply(token, seq, &Response::UseKernel { reason: Fallback::BacklogFull }, &[]);
            if reused {
                // Both still map it; a dropped listener's pool is emptied
                // (and the connector told to forget it) with its client.
                self.pools.entry(pair).or_default().push(Pooled { id: segment, seg, bells });
            }
            return;
        }
        if let Some(entry) = self.registry.get_mut(owner, id) {
            entry.pending += 1;
        }
        if let (false, Some(seq)) = (answered, answer) {
            self.reply(token, seq, &Response::Connected(info_a), &fds_a[..n]);
        }
        self.connects_total += 1;
        self.reused_total += u64::from(reused);
        self.standby_total += u64::from(answer.is_none());
        log!(Level::Debug, "msg=brokered conn={conn} to_pid={to_pid} dest={}", info_a.peer);
        // An acceptor that closed its channel is dropped with the rest of
        // what it held, as one that died or exec'd (its new image is sent
        // the connection again, see `requeue_after_exec`): it holds this
        // end as if it had been told.
        let held = match &sent {
            Ok(()) => true,
            Err(e) => peer_closed(e) && self.clients.contains_key(&acceptor),
        };
        for (t, side) in [(token, Side::A), (acceptor, Side::B)] {
            if let Some(c) = self.clients.get_mut(&t).filter(|_| side == Side::A || held) {
                c.holdings.push((conn, side));
            }
        }
        let rec = ConnRec {
            seg,
            bells,
            info: [info_a, info_b],
            holders: [vec![token], vec![acceptor]],
            gone: [false; 2],
            pending_in: Some((owner, id)),
            pair,
            kept: [false; 2],
            recyclable: true,
            refill: answer.is_none().then_some(((owner, id), info_a.peer)),
        };
        self.conns.insert(conn, rec);
        // Answered, but the acceptor could not be told (its channel full
        // or broken): it goes to another process serving the listener if
        // there is one, else its end goes as a dead acceptor's would (the
        // connector reads end of stream or a reset, and is told `PeerGone`).
        if !held && !self.hand_on(acceptor, conn) {
            self.release(acceptor, conn, Side::B, true);
        }
    }

    /// After a connect of `token` to `dest` reached `listener`: holds the
    /// next connection there ready for it (`Standby`), so that its next
    /// connect to `dest` needs no answer. Only for a listener one process
    /// owns alone (shared ones and `SO_REUSEPORT` groups take turns, which
    /// a connection fixed in advance would skip), up to
    /// `STANDBYS_PER_DEST` per destination, and not for a pair's first connection (`again` false), so a process
    /// that connects once does not cost a second segment.
    fn issue_standby(&mut self, token: u64, listener: (u64, u64), dest: SockAddr, again: bool) {
        let plain = self
            .registry
            .get(listener.0, listener.1)
            .is_some_and(|l| !l.is_shared() && !l.handed_on && !l.flags.contains(ListenFlags::REUSEPORT));
        let held = self.standbys.values().filter(|s| s.client == token && s.dest == dest).count();
        if !plain || held >= STANDBYS_PER_DEST || !self.listener_bells.contains_key(&listener) {
            return;
        }
        // A new segment only for the first standby: more would be made here
        // while a busy pair's closing connections find its pool full and
        // unmap theirs (nginx + wrk with `Connection: close`: ~13 % of the
        // monitor's time went to making and unmapping segments).
        let pair = (token, listener.0);
        if (!again || held > 0) && self.pools.get(&pair).is_none_or(Vec::is_empty) {
            return;
        }
        let conn = self.next_conn;
        let Some((segment, seg, bells, reused)) = self.take_segment(pair, conn) else { return };
        self.next_conn += 1;
        let info = ConnInfo {
            conn,
            side: Side::A,
            local: port_zero(dest),
            peer: dest,
            segment_len: seg.len() as u64,
            segment,
            reused,
        };
        let n = if reused { 0 } else { 3 };
        // The acceptor first: once the connector has the standby it may
        // connect and ring the listener's bell, and the woken acceptor
        // must find the `Expect` on its channel.
        let acceptor = listener.0;
        let to_pid = self.clients.get(&acceptor).map_or(0, |c| c.pid);
        seg.view().expect(conn);
        seg.view().offer(to_pid);
        let info_b = ConnInfo { side: Side::B, local: dest, peer: port_zero(dest), ..info };
        let fds_b = [seg.fd(), bells[1].as_fd(), bells[0].as_fd()];
        let told = match self.clients.get(&acceptor) {
            Some(a) => a.chan.send_response(0, &Response::Expect { listener: listener.1, info: info_b }, &fds_b[..n]),
            None => Err(ChannelError::Closed),
        };
        if told.is_err() {
            // Not a reason to drop either: the connector has no standby.
            seg.view().cancel(conn);
            if reused {
                self.tell_forget(token, segment);
                self.tell_forget(acceptor, segment);
            }
            return;
        }
        let bell = self.listener_bells.get(&listener).map(|b| b.as_fd());
        let send_bell = bell.is_some() && self.clients.get(&token).is_some_and(|c| !c.bells.contains(&listener));
        let mut fds = vec![seg.fd(), bells[0].as_fd(), bells[1].as_fd()];
        fds.truncate(n);
        fds.extend(bell.filter(|_| send_bell));
        let sent = match self.clients.get(&token) {
            Some(c) => c.chan.send_response(0, &Response::Standby { dest, info, bell: send_bell }, &fds),
            None => Err(ChannelError::Closed),
        };
        if sent.is_err() {
            // The acceptor was told: it drops the entry once it sees it
            // cancelled, and its mapping with `Forget`.
            seg.view().cancel(conn);
            self.tell_forget(acceptor, segment);
            if reused {
                self.tell_forget(token, segment);
            }
            return;
        }
        if let Some(c) = self.clients.get_mut(&token).filter(|_| send_bell) {
            c.bells.insert(listener);
        }
        log!(Level::Debug, "msg=\"standby issued\" conn={conn} client={token} dest={dest} reused={reused}");
        self.standbys.insert(conn, Standby { client: token, listener, dest, info, seg, bells });
    }

    /// Standby `conn`, if its connector connected through it (its ticket
    /// says so), becomes a connection in the records: the connector does
    /// not report it, so this runs whenever something may concern it.
    fn promote(&mut self, conn: u64) {
        let Some(sb) = self.standbys.get(&conn) else { return };
        let Ticket::Connected(words) = sb.seg.view().ticket(conn) else { return };
        let token = sb.client;
        self.use_standby(token, conn, SockAddr::from_words(words));
    }

    /// [`Daemon::promote`] for every standby `pred` picks.
    fn promote_where(&mut self, pred: impl Fn(&Standby) -> bool) {
        let picked: Vec<u64> = self.standbys.iter().filter(|(_, s)| pred(s)).map(|(&c, _)| c).collect();
        for conn in picked {
            self.promote(conn);
        }
    }

    /// `token` connected through its standby `conn` from `source`: the
    /// connection goes to the listener it was held for; if that listener
    /// went meanwhile, the connector's end is closed as a dead acceptor's
    /// would be (as a kernel connection queued on a listener that closes).
    fn use_standby(&mut self, token: u64, conn: u64, source: Option<SockAddr>) {
        let Some(sb) = self.take_standby(token, conn) else {
            log!(Level::Warn, "msg=\"use of an unknown standby\" client={token} conn={conn}");
            return;
        };
        let Standby { listener, dest, mut info, seg, bells, .. } = sb;
        info.local = source.unwrap_or(info.local);
        let live = self.registry.get(listener.0, listener.1).is_some() && self.clients.contains_key(&listener.0);
        let new = NewConn { token, acceptor: listener.0, listener, seg, bells, info_a: info };
        if live {
            // The next one first: the listener, woken by its `Incoming`,
            // often runs before the rest of this, and may answer the
            // connector before its next standby was sent.
            self.issue_standby(token, listener, dest, true);
            self.deliver(new, None);
            return;
        }
        // Recorded as delivered to an acceptor that went at once.
        log!(Level::Debug, "msg=\"standby used after its listener went\" conn={conn}");
        let info_b = ConnInfo { side: Side::B, local: info.peer, peer: info.local, ..info };
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.push((conn, Side::A));
        }
        let rec = ConnRec {
            seg: new.seg,
            bells: new.bells,
            info: [info, info_b],
            holders: [vec![token], vec![listener.0]],
            gone: [false; 2],
            pending_in: None,
            pair: (token, listener.0),
            // A pooled segment is in the acceptor's cache: told to unmap it.
            kept: [false, info.reused],
            recyclable: false,
            refill: None,
        };
        self.conns.insert(conn, rec);
        self.release(listener.0, conn, Side::B, true);
    }

    /// Standby `conn`, if it is `token`'s.
    fn take_standby(&mut self, token: u64, conn: u64) -> Option<Standby> {
        if self.standbys.get(&conn)?.client != token {
            return None;
        }
        self.standbys.remove(&conn)
    }

    /// Standby `conn` will not be used: its connector gave it back, or its
    /// acceptor could not map it (`token` is one of the two).
    fn unused_standby(&mut self, token: u64, conn: u64) {
        if self.standbys.get(&conn).is_some_and(|s| s.client == token || s.listener.0 == token) {
            self.cancel_standby(conn);
        }
    }

    /// Cancels standby `conn` (its ticket), unless its connector used it
    /// first: then it becomes a connection like any used one. A cancelled
    /// one is unmapped by both, who map it (the connector as it came, the
    /// acceptor at its `Expect`); the connector is told to drop it.
    fn cancel_standby(&mut self, conn: u64) {
        let Some(sb) = self.standbys.get(&conn) else { return };
        if let Ticket::Connected(_) = sb.seg.view().cancel(conn) {
            self.promote(conn);
            return;
        }
        let Some(sb) = self.standbys.remove(&conn) else { return };
        if let Some(c) = self.clients.get(&sb.client) {
            let _ = c.chan.send_response(0, &Response::Withdraw { conn }, &[]);
        }
        self.tell_forget(sb.client, sb.info.segment);
        self.tell_forget(sb.listener.0, sb.info.segment);
    }

    /// Withdraws the standbys `pred` picks (their listener closed, became
    /// shared or went, or their connector went): see `cancel_standby`.
    fn withdraw_standbys(&mut self, pred: impl Fn(&Standby) -> bool) {
        let picked: Vec<u64> = self.standbys.iter().filter(|(_, s)| pred(s)).map(|(&c, _)| c).collect();
        for conn in picked {
            self.cancel_standby(conn);
        }
    }

    /// `old` let go of listeners that forked children still hold, and
    /// each went to one of them (`handed`: id, new owner): the entries
    /// show the new owner's pid, and connections waiting in their queues
    /// count against them.
    fn handed_on(&mut self, old: u64, handed: &[(u64, u64)]) {
        for &(id, owner) in handed {
            let pid = self.clients.get(&owner).map_or(0, |c| c.pid);
            if let Some(l) = self.registry.get_mut(owner, id) {
                l.pid = pid;
            }
            for rec in self.conns.values_mut().filter(|r| r.pending_in == Some((old, id))) {
                rec.pending_in = Some((owner, id));
            }
            log!(Level::Info, "msg=\"listener handed on\" listener={id} from={old} to={owner} pid={pid}");
        }
    }

    /// `token` closed its copy of a shared listener with `conn` still in
    /// its accept queue: the connection goes to another process that
    /// serves the listener, as the kernel's shared queue would have left
    /// it to the others, or waits parked for one to say it accepts.
    fn decline(&mut self, token: u64, conn: u64) {
        if !self.conns.get(&conn).is_some_and(|rec| rec.pending_in.is_some() && rec.holders[1] == [token]) {
            // Also one taken from it for a server (`take_from_idle`) while
            // the message that offered it was still on its way.
            log!(Level::Debug, "msg=\"decline of a connection not waiting here\" client={token} conn={conn}");
            return;
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.retain(|h| *h != (conn, Side::B));
        }
        if !self.hand_on(token, conn) {
            self.release(token, conn, Side::B, true);
        }
    }

    /// Whether `conn` waits for `token` alone in a listener's accept queue
    /// and `token` has done nothing on it its peer could see: then the
    /// connector cannot tell it from one still queued for another acceptor.
    fn waits_untouched(&self, token: u64, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|rec| {
            rec.pending_in.is_some()
                && rec.holders[1] == [token]
                && !rec.gone[1]
                && rec.seg.view().untouched(ring_side(Side::B))
        })
    }

    /// Gives `conn`, waiting for `from` in a listener's accept queue, to
    /// another process that serves the listener, trying each in turn
    /// until one takes it. With none, a listener other processes hold
    /// keeps it parked in its queue, held by nobody (see
    /// [`Daemon::rehome_parked`]), as the kernel's shared queue would.
    /// False when it was neither handed on nor parked.
    fn hand_on(&mut self, from: u64, conn: u64) -> bool {
        let Some(rec) = self.conns.get_mut(&conn) else { return false };
        let Some((owner, id)) = rec.pending_in else { return false };
        // The next acceptor has not mapped it, and three processes have.
        rec.recyclable = false;
        let (info, fds) = rec.fresh_end(Side::B);
        let tries = self.registry.get_mut(owner, id).map_or(0, |l| l.servers.len().max(1));
        let mut sent = None;
        for _ in 0..tries {
            let Some(t) = self.registry.get_mut(owner, id).and_then(Listener::acceptor) else { break };
            if t == from || self.doomed.iter().any(|(d, _)| *d == t) {
                continue;
            }
            let Some(c) = self.clients.get(&t) else { continue };
            // Only `t` may take it now: the one it waited for may still
            // read the old offer (see `take_from_idle`).
            rec.seg.view().offer(c.pid);
            match c.chan.send_response(0, &Response::Incoming { listener: id, info }, &fds) {
                Ok(()) => {
                    sent = Some(t);
                    break;
                }
                Err(e) if !e.is_would_block() => self.doomed.push((t, undeliverable("cannot deliver", &e))),
                Err(_) => {}
            }
        }
        let Some(t) = sent else {
            rec.seg.view().offer(0);
            // Only a listener that others hold waits for one of them to
            // accept; its owner's alone has no one else to wait for.
            let park = self.registry.get_mut(owner, id).is_some_and(|l| l.is_shared() || l.handed_on);
            if park {
                rec.holders[1].clear();
                log!(Level::Debug, "msg=\"waiting connection parked\" conn={conn} from={from} listener={id}");
            }
            return park;
        };
        rec.holders[1] = vec![t];
        rec.pair.1 = t;
        if let Some(c) = self.clients.get_mut(&t) {
            c.holdings.push((conn, Side::B));
        }
        log!(Level::Debug, "msg=\"waiting connection handed on\" conn={conn} from={from} to={t}");
        true
    }

    /// `server` has said it accepts on `listener`: connections waiting
    /// for a process that holds the listener but never said so (nginx's
    /// master, for connections that came between its `listen` and the
    /// fork of its workers) are handed on to the servers, as the kernel's
    /// shared queue would let the workers take them. Each is first
    /// withdrawn in its segment, which fails if that process accepted it
    /// meanwhile (it reports accepts lazily); then it stays.
    fn take_from_idle(&mut self, server: u64, listener: u64) {
        let registry = &self.registry;
        let idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter_map(|(&conn, rec)| {
                let (owner, id) = rec.pending_in.filter(|&(_, id)| id == listener)?;
                let &[from] = rec.holders[1].as_slice() else { return None };
                let l = registry.get(owner, id)?;
                let held_by_server = l.owner == server || l.sharers.contains(&server);
                (held_by_server && from != server && !l.servers.contains(&from) && !rec.gone[1]).then_some((conn, from))
            })
            .collect();
        for (conn, from) in idle {
            let Some(pid) = self.clients.get(&from).map(|c| c.pid) else { continue };
            if !self.conns.get(&conn).is_some_and(|rec| rec.seg.view().withdraw(pid)) {
                continue;
            }
            if let Some(c) = self.clients.get_mut(&from) {
                c.holdings.retain(|h| *h != (conn, Side::B));
            }
            if !self.hand_on(from, conn) {
                // No one else can take it after all: it waits where it was.
                if let Some(rec) = self.conns.get(&conn) {
                    rec.seg.view().offer(pid);
                }
                if let Some(c) = self.clients.get_mut(&from) {
                    c.holdings.push((conn, Side::B));
                }
            }
        }
    }

    /// Connections parked in a listener's queue: each goes to a process
    /// that accepts on it now (one said `Serve`, or the listener is its
    /// owner's alone again), or, with the listener gone, is closed as a
    /// dead acceptor's would be. Run when who accepts may have changed.
    fn rehome_parked(&mut self) {
        let parked: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, r)| r.pending_in.is_some() && r.holders[1].is_empty() && !r.gone[1])
            .map(|(&c, _)| c)
            .collect();
        for conn in parked {
            if !self.hand_on(0, conn) {
                self.release(0, conn, Side::B, true);
            }
        }
    }

    /// `token` lets go of its hold on `side` of `conn`. When the last holder
    /// of a side goes without closing (`died`), the monitor closes the end
    /// in the ring the way the kernel closes a dead process's socket, and
    /// tells the peer.
    fn release(&mut self, token: u64, conn: u64, side: Side, died: bool) {
        let Some(rec) = self.conns.get_mut(&conn) else { return };
        let i = idx(side);
        // A process that died may have left the segment in any state; it is
        // not handed to anyone again.
        rec.recyclable &= !died;
        // One holding at a time: a process that was passed its own end
        // holds it twice, and lets go of it once per close.
        if let Some(pos) = rec.holders[i].iter().position(|&t| t == token) {
            rec.holders[i].remove(pos);
        }
        if !rec.holders[i].is_empty() || rec.gone[i] {
            // A holder that dies never closes: give back its share of the
            // segment's holder count, so the survivor's last close is seen
            // as the last. If that leaves none, the survivors have closed
            // already (their `Close` is still on its way), each seeing this
            // one's share and so sending nothing: close the end for them,
            // as the last close would have (a forked child's exit read
            // before its parent's `Close` left the peer waiting for a FIN).
            if died
                && !rec.gone[i]
                && rec.seg.view().release_holder(ring_side(side)) == 0
                && end_state(rec, side) == EndState::Open
            {
                end_gone(&rec.seg, side);
                ring(rec.bells[idx(other(side))].as_fd());
            }
            return;
        }
        rec.gone[i] = true;
        if side == Side::B {
            if let Some((owner, id)) = rec.pending_in.take() {
                if let Some(l) = self.registry.get_mut(owner, id) {
                    l.pending = l.pending.saturating_sub(1);
                }
            }
        }
        if died {
            end_gone(&rec.seg, side);
            ring(rec.bells[idx(other(side))].as_fd());
            let peers = rec.holders[idx(other(side))].clone();
            for p in peers {
                if let Some(c) = self.clients.get(&p) {
                    let _ = c.chan.send_response(0, &Response::PeerGone { conn }, &[]);
                }
            }
        }
        if rec.gone == [true, true] {
            if let Some(rec) = self.conns.remove(&conn) {
                self.retire(rec);
            }
            log!(Level::Debug, "msg=\"connection freed\" conn={conn}");
        }
    }

    /// Both ends of a connection are closed: its segment goes back to the
    /// pair's pool when both ends kept it mapped; otherwise whoever kept
    /// it is told to unmap it.
    fn retire(&mut self, rec: ConnRec) {
        let segment = rec.info[0].segment;
        let (a, b) = rec.pair;
        let live = self.clients.contains_key(&a) && self.clients.contains_key(&b);
        let room = self.pools.get(&rec.pair).map_or(0, Vec::len) < POOL_PER_PAIR;
        if rec.recyclable && rec.kept == [true, true] && live && room {
            rec.seg.trim();
            self.pools.entry(rec.pair).or_default().push(Pooled { id: segment, seg: rec.seg, bells: rec.bells });
            // Its connector used a standby and may use more before it
            // says so (it says nothing): the stock is topped up here.
            if let Some((listener, dest)) = rec.refill {
                self.issue_standby(a, listener, dest, true);
            }
            return;
        }
        for (token, kept) in [(a, rec.kept[0]), (b, rec.kept[1])] {
            if kept {
                self.tell_forget(token, segment);
            }
        }
    }

    fn tell_forget(&self, token: u64, segment: u64) {
        if let Some(c) = self.clients.get(&token) {
            // Best effort: a client that cannot take it is being dropped.
            let _ = c.chan.send_response(0, &Response::Forget { segment }, &[]);
        }
    }

    /// A client is gone: the pools it shared are emptied, its partners
    /// told to unmap their copies.
    fn drop_pools(&mut self, token: u64) {
        let pairs: Vec<(u64, u64)> = self.pools.keys().filter(|(a, b)| *a == token || *b == token).copied().collect();
        for pair in pairs {
            let other = if pair.0 == token { pair.1 } else { pair.0 };
            for p in self.pools.remove(&pair).unwrap_or_default() {
                self.tell_forget(other, p.id);
            }
        }
    }

    fn forked(&mut self, token: u64, seq: u32, pid: u32, uid: u32, parent_pid: u32) {
        if parent_of(pid) != Some(parent_pid) {
            self.fail(token, seq, ErrorCode::NotOwner);
            return;
        }
        let parent = self
            .clients
            .iter()
            .find(|(&t, c)| t != token && c.pid == parent_pid && c.uid == uid)
            .map(|(_, c)| c.holdings.clone());
        let Some(holdings) = parent else {
            self.fail(token, seq, ErrorCode::NotOwner);
            return;
        };
        // The parent counted a share for the child in each end it had in
        // its fd table before it forked (and waits for this message); an
        // end still waiting in its accept queue got none, and the child
        // never sees it: holding it there left it waiting for the child
        // (a `Decline` refused, a reset when the parent exited).
        let holdings: Vec<_> = holdings
            .into_iter()
            .filter(|&(conn, side)| {
                self.conns
                    .get(&conn)
                    .is_some_and(|rec| rec.seg.view().holders(ring_side(side)) as usize > rec.holders[idx(side)].len())
            })
            .collect();
        for &(conn, side) in &holdings {
            if let Some(rec) = self.conns.get_mut(&conn) {
                rec.holders[idx(side)].push(token);
                rec.recyclable = false;
            }
        }
        if let Some((&parent_token, _)) =
            self.clients.iter().find(|(&t, c)| t != token && c.pid == parent_pid && c.uid == uid)
        {
            self.registry.mark_forked(parent_token, token);
            // Its listeners are shared now: connects take turns among
            // the processes that serve them, which a standby would skip.
            self.withdraw_standbys(|s| s.listener.0 == parent_token);
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.extend(holdings);
        }
        self.reply(token, seq, &Response::Ok, &[]);
    }

    fn adopt_orphans(&mut self, token: u64, pid: u32, uid: u32) {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.orphans).into_iter().partition(|o| o.pid == pid && o.uid == uid);
        self.orphans = rest;
        for o in mine {
            for &(conn, side) in &o.holdings {
                if let Some(rec) = self.conns.get_mut(&conn) {
                    for h in rec.holders[idx(side)].iter_mut().filter(|h| **h == o.token) {
                        *h = token;
                    }
                    // The old image's mapping died with it.
                    rec.recyclable = false;
                }
            }
            log!(Level::Info, "msg=\"exec'd process re-registered\" pid={pid} connections={}", o.holdings.len());
            if let Some(c) = self.clients.get_mut(&token) {
                c.holdings.extend(o.holdings);
            }
        }
    }

    /// `token`, a new image after exec, listens again on `listener`, a
    /// socket it kept across the exec: connections that waited in the
    /// old image's queue went with its channel, so each is offered again,
    /// as the kernel's queue would have kept them for the new image. One
    /// the old image had accepted (claimed) is its to reopen instead.
    fn requeue_after_exec(&mut self, token: u64, listener: u64) {
        let Some(pid) = self.clients.get(&token).map(|c| c.pid) else { return };
        let registry = &self.registry;
        let left: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, r)| {
                r.holders[1] == [token] && !r.gone[1] && r.pending_in.is_some_and(|(o, i)| registry.get(o, i).is_none())
            })
            .map(|(&c, _)| c)
            .collect();
        for conn in left {
            let Some(dest) = self.conns.get(&conn).map(|r| r.info[1].local) else { continue };
            if self.listener_for(&dest).map(|l| (l.owner, l.id)) != Some((token, listener)) {
                continue;
            }
            let (Some(rec), Some(c)) = (self.conns.get_mut(&conn), self.clients.get(&token)) else { continue };
            let seg = rec.seg.view();
            if !seg.withdraw(pid) {
                continue;
            }
            seg.offer(pid);
            let (info, fds) = rec.fresh_end(Side::B);
            if let Err(e) = c.chan.send_response(0, &Response::Incoming { listener, info }, &fds) {
                // It stays held, and is reset as a dead acceptor's when
                // this client goes.
                log!(Level::Warn, "msg=\"cannot requeue after exec\" conn={conn} pid={pid} err=\"{e}\"");
                continue;
            }
            rec.pending_in = Some((token, listener));
            if let Some(l) = self.registry.get_mut(token, listener) {
                l.pending += 1;
            }
            log!(Level::Debug, "msg=\"requeued after exec\" conn={conn} pid={pid}");
        }
    }

    fn expire_orphans(&mut self) {
        let now = Instant::now();
        let (expired, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.orphans).into_iter().partition(|o| o.deadline <= now);
        self.orphans = rest;
        for o in expired {
            log!(Level::Info, "msg=\"exec'd process did not come back\" pid={}", o.pid);
            for (conn, side) in o.holdings {
                self.release(o.token, conn, side, true);
            }
        }
    }

    fn drop_doomed(&mut self) {
        while let Some((token, why)) = self.doomed.pop() {
            if why == CLOSED && self.clients.get(&token).is_some_and(|c| !c.exec_pending) {
                // What it sent before it closed is still to be read: a
                // send that found its channel closed gets here before a
                // read reached its `ExecPrepare`.
                self.serve(token, 64);
            }
            self.promote_where(|s| s.client == token || s.listener.0 == token);
            let Some(client) = self.clients.remove(&token) else { continue };
            self.withdraw_standbys(|s| s.client == token || s.listener.0 == token);
            // Its listeners' bells go with it (an exec'd image registers its own).
            self.listener_bells.retain(|&(owner, _), _| owner != token);
            self.drop_pools(token);
            // SAFETY: removes an fd we added; a null event is allowed for DEL.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    client.chan.as_fd().as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            let (listeners, handed) = self.registry.remove_owner(token);
            self.handed_on(token, &handed);
            let level = if why == CLOSED || why == EXECED { Level::Debug } else { Level::Warn };
            log!(
                level,
                "msg=\"client dropped\" client={token} pid={} why=\"{why}\" listeners={listeners} connections={}",
                client.pid,
                client.holdings.len()
            );
            if client.exec_pending && (why == CLOSED || why == EXECED) {
                self.orphans.push(Orphan {
                    token,
                    pid: client.pid,
                    uid: client.uid,
                    holdings: client.holdings,
                    deadline: Instant::now() + Duration::from_secs(self.cfg.exec_grace_secs),
                });
                continue;
            }
            for (conn, side) in client.holdings {
                // Connections that waited for it untouched go to another
                // process serving the listener, as they would have stayed
                // in the kernel's shared queue for the others (a pre-fork
                // worker killed with its queue full reset them all).
                if side == Side::B && self.waits_untouched(token, conn) && self.hand_on(token, conn) {
                    continue;
                }
                self.release(token, conn, side, true);
            }
            self.rehome_parked();
        }
    }

    fn status(&mut self, token: u64, seq: u32) {
        let status = Status {
            monitor_pid: std::process::id(),
            processes: self.clients.values().filter(|c| c.hello).count() as u32,
            listeners: self.registry.len() as u32,
            connections: self.conns.len() as u32,
            segment_bytes: self.conns.values().map(|c| c.seg.len() as u64).sum::<u64>()
                + self.pools.values().flatten().map(|p| p.seg.len() as u64).sum::<u64>(),
            connects_total: self.connects_total,
            fallbacks_total: self.fallbacks_total,
            reused_total: self.reused_total,
            standby_total: self.standby_total,
            uptime_ms: self.started.elapsed().as_millis() as u64,
        };
        let mut out = vec![Response::Status(status)];
        out.extend(self.registry.iter().map(|l| {
            Response::ListenerEntry(ListenerStatus {
                pid: l.pid,
                addr: l.addr,
                backlog: l.backlog,
                pending: l.pending,
                reuseport: l.flags.contains(ipcd_proto::ListenFlags::REUSEPORT),
            })
        }));
        let pid_of = |t: Option<&u64>| t.and_then(|t| self.clients.get(t)).map_or(0, |c| c.pid);
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        out.extend(conns.into_iter().map(|(&conn, rec)| {
            Response::ConnEntry(ConnStatus {
                conn,
                pids: [pid_of(rec.holders[0].first()), pid_of(rec.holders[1].first())],
                addrs: [rec.info[0].local, rec.info[1].local],
                bytes: [rec.seg.view().written(ipcd_ring::Side::A), rec.seg.view().written(ipcd_ring::Side::B)],
                segment_len: rec.seg.len() as u64,
                states: [end_state(rec, Side::A), end_state(rec, Side::B)],
            })
        }));
        out.push(Response::Ok);
        for resp in out {
            self.reply(token, seq, &resp, &[]);
        }
    }
}

/// What `side` of a connection has done, from the monitor's books and the
/// flags its writer left in the ring.
fn end_state(rec: &ConnRec, side: Side) -> EndState {
    if rec.gone[idx(side)] {
        return EndState::Gone;
    }
    // The side's sending ring is read by the other side's consumer.
    match rec.seg.view().consumer(ring_side(other(side))).map(|c| c.peer_state()) {
        Ok(ipcd_ring::PeerState::Open) => EndState::Open,
        Ok(ipcd_ring::PeerState::Closed) => EndState::Fin,
        Ok(ipcd_ring::PeerState::Reset) | Err(_) => EndState::Reset,
    }
}

/// Closes a dead process's end as the kernel closes its socket: a reset if
/// it left bytes unread, else a FIN; on a corrupt ring, a reset.
fn end_gone(seg: &SharedSegment, side: Side) {
    let view = seg.view();
    let s = ring_side(side);
    let unread = view.consumer(s).and_then(|mut c| c.readable()).map_or(true, |n| n > 0);
    if unread {
        let _ = view.mark_gone(s);
        return;
    }
    match (view.producer(s), view.consumer(s)) {
        (Ok(mut p), Ok(mut c)) => {
            let _ = p.close();
            let _ = c.close();
        }
        _ => {
            let _ = view.mark_gone(s);
        }
    }
}

/// Where this run's segment ids start: the start time in microseconds, so
/// that two runs of the monitor do not hand out the same ids.
fn segment_id_base() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros() as u64).max(1)
}

/// The parent pid of `pid`, from /proc.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
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

/// The inode of socket `fd` (0 if fstat fails): the same number in every
/// process that holds the socket.
fn socket_inode(fd: &OwnedFd) -> u64 {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a writable stat.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return 0;
    }
    st.st_ino
}

/// Proves the passed fd is a listening TCP socket bound to `claimed`.
fn verify_listening_socket(fd: &OwnedFd, claimed: &SockAddr) -> Result<(), &'static str> {
    let opt = |level, name| -> Result<libc::c_int, &'static str> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v`/`len` describe a writable int.
        let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
        if r < 0 {
            Err("not a socket")
        } else {
            Ok(v)
        }
    };
    if opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM
        || opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return Err("not a TCP socket");
    }
    if opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1 {
        return Err("not listening");
    }
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname fills it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    // SAFETY: `ss`/`len` describe a writable buffer.
    if unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &mut len) } < 0 {
        return Err("getsockname failed");
    }
    // SAFETY: the kernel wrote `len` bytes into `ss`.
    let bound = unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }.ok_or("not an inet socket")?;
    let same = match (bound, *claimed) {
        (SockAddr::V4 { ip: a, port: p }, SockAddr::V4 { ip: b, port: q }) => a == b && p == q,
        (SockAddr::V6 { ip: a, port: p, .. }, SockAddr::V6 { ip: b, port: q, .. }) => a == b && p == q,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err("bound elsewhere")
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
