//! One mapped connection segment: our producer and consumer in it. No fd
//! stays open for it: its sleepers are woken through the doorbells they
//! name in its rings (see `bell`).
//!
//! A segment whose connection closed stays mapped here (up to
//! [`MAX_CACHED`]) when the monitor may hand it to the next connection
//! between the same two processes: that connection then costs no memfd,
//! mapping, page faults, unmapping (with its TLB flush) or fd passing.

use ipcd_ring::ConnSegment;
use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Mutex;

use ipcd_proto::message::{ConnInfo, Side};
use ipcd_proto::Ring;
use ipcd_ring::{Consumer, EndLock, Producer, Segment};

use crate::conn::peer;
use crate::sys::real;

/// Why a connection from the monitor could not be attached.
#[derive(Debug)]
pub(crate) enum AttachError {
    /// The message did not carry its segment.
    Fds(usize),
    /// The segment's size disagrees with what the monitor said.
    Size,
    /// `mmap` failed (errno).
    Map(i32),
    /// The header failed validation.
    Ring(ipcd_ring::Error),
    /// A reused segment that we do not hold.
    NotCached(u64),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Fds(n) => write!(f, "expected 1 fd, got {n}"),
            AttachError::Size => f.write_str("segment size mismatch"),
            AttachError::Map(e) => write!(f, "mmap failed: errno {e}"),
            AttachError::Ring(e) => write!(f, "bad segment: {e}"),
            AttachError::NotCached(id) => write!(f, "segment {id} is not mapped here"),
        }
    }
}

/// A segment mapped here for one of its ends; unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
    /// The monitor's segment id.
    segment: u64,
    side: ipcd_ring::Side,
}

// SAFETY: the mapping is process-wide memory owned by this value.
unsafe impl Send for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Link::map`; whoever held handles
        // into it (a Link) is gone.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// How many closed connections' segments a process keeps mapped (each
/// holds address space, little memory: the monitor gives back a pooled
/// segment's bulk pages). The standbys the monitor holds for us live here
/// too, up to 64 per destination: with room for 16, wrk's 16 closing
/// connections found it full and the monitor made and unmapped a segment
/// for most of them; with 32, a client churning 50 connections at once
/// found a standby for a third of its connects.
pub(crate) const MAX_CACHED: usize = 128;

/// The receive buffer of a socket whose program set none: the system's
/// default (`net.ipv4.tcp_rmem`'s middle value; Linux grows it only as the
/// program reads, so an unread connection holds about this much), read
/// once, when a send limit first needs it.
fn default_window() -> usize {
    static WINDOW: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let w = WINDOW.load(std::sync::atomic::Ordering::Relaxed);
    if w != 0 {
        return w;
    }
    let read = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_rmem").ok();
    let w = read.and_then(|s| s.split_whitespace().nth(1)?.parse().ok()).unwrap_or(131_072);
    WINDOW.store(w, std::sync::atomic::Ordering::Relaxed);
    w
}

/// The ring side of a connection end.
fn ring_side(side: Side) -> ipcd_ring::Side {
    match side {
        Side::A => ipcd_ring::Side::A,
        Side::B => ipcd_ring::Side::B,
    }
}

/// Segments of closed connections that the monitor may reuse.
static CACHE: Mutex<Vec<Mapping>> = Mutex::new(Vec::new());

fn cache() -> std::sync::MutexGuard<'static, Vec<Mapping>> {
    CACHE.lock().unwrap_or_else(|p| p.into_inner())
}

/// The kept segments' lock, held across a fork (see `control::lock_for_fork`).
pub(crate) struct CacheLock(std::sync::MutexGuard<'static, Vec<Mapping>>);

impl CacheLock {
    /// In a forked child: what the parent kept is not the child's to reuse.
    pub(crate) fn clear(&mut self) {
        self.0.clear();
    }
}

/// Takes the kept segments' lock for a fork.
pub(crate) fn lock_for_fork() -> CacheLock {
    CacheLock(cache())
}

/// The monitor will not reuse `segment`: unmap it.
pub(crate) fn forget(segment: u64) {
    let gone: Vec<Mapping> = {
        let mut c = cache();
        let (gone, keep) = std::mem::take(&mut *c).into_iter().partition(|m| m.segment == segment);
        *c = keep;
        gone
    };
    drop(gone);
}

/// Unmaps every kept segment: none will be reused.
pub(crate) fn forget_all() {
    let gone = std::mem::take(&mut *cache());
    drop(gone);
}

/// A closed end's segment, kept for the next round of its renewed
/// standby (see [`Link::finish`]): its ticket is read from here, without
/// the cache's lock, until that round can be attached.
pub(crate) struct Renewal {
    /// A view of `map` (declared first: it points there).
    seg: Segment,
    map: Mapping,
    /// The round that closed.
    prev: u64,
}

impl Renewal {
    /// The next round's ticket, `conn` being its id.
    pub(crate) fn ticket(&self, conn: u64) -> ipcd_ring::Ticket {
        self.seg.ticket(conn)
    }

    /// The next round's ticket, `conn` being its id, or `None` while the
    /// peer's end of the last round is still to finish or is renewing the
    /// segment. Read in that order: the ticket moves from the last
    /// round's to the next one's and never back, so a renewal completed
    /// between the two reads shows as done. (Read the other way round,
    /// such a round showed as neither awaited nor begun, and was dropped:
    /// its connector's connection never reached accept.)
    pub(crate) fn next_round(&self, conn: u64) -> Option<ipcd_ring::Ticket> {
        if self.seg.awaits_renewal(self.prev) {
            return None;
        }
        Some(self.seg.ticket(conn))
    }

    /// The monitor's id of the segment.
    pub(crate) fn segment(&self) -> u64 {
        self.map.segment
    }

    /// When the next round's connector connected (see `Link::connected_at`).
    pub(crate) fn connected_at(&self) -> u64 {
        self.seg.connected_at()
    }

    /// The next round's end.
    pub(crate) fn attach(self, info: &ConnInfo) -> Result<Link, AttachError> {
        Link::attach_renewed(info, self)
    }

    /// Not renewed after all (promoted or cancelled): kept with the
    /// closed ends' segments, where the monitor's `Forget` or its reuse
    /// of the segment finds it.
    pub(crate) fn keep(self) {
        let mut c = cache();
        if c.len() < MAX_CACHED {
            c.push(self.map);
        }
    }
}

/// How the round a [`Link::finish`] ended stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Round {
    /// Renewed here: the next round's ticket is expected.
    Renewed,
    /// The peer's end renews it when it finishes.
    Awaited,
    /// The monitor cancelled it while it was renewed: not used again.
    Cancelled,
}

/// What [`Link::finish`] left: the next round's id and the segment.
pub(crate) struct Finished {
    pub next: u64,
    pub state: Round,
    pub renewal: Renewal,
}

/// A mapped segment and our end of it.
pub(crate) struct Link {
    /// Our side's sending ring.
    pub tx: Producer,
    /// Our side's receiving ring.
    pub rx: Consumer,
    /// The monitor's connection id.
    pub conn: u64,
    seg: Segment,
    side: ipcd_ring::Side,
    /// Another process holds this end too (after fork): every use takes
    /// the end's locks in the segment and resyncs the handles first.
    shared: bool,
    /// The send buffer the program set (`SO_SNDBUF`, as the kernel took
    /// it; 0: none): see [`Link::reserve`].
    send_limit: usize,
    /// Declared last: the handles above point into it.
    map: Mapping,
}

impl Link {
    /// The segment of `info`: mapped from `fds` = `[segment]`, or, for a
    /// reused one (no fds), the one we kept.
    pub(crate) fn attach(info: &ConnInfo, fds: Vec<OwnedFd>) -> Result<Link, AttachError> {
        let side = ring_side(info.side);
        let map = if info.reused {
            if !fds.is_empty() {
                return Err(AttachError::Fds(fds.len()));
            }
            let mut c = cache();
            let at = c.iter().position(|m| m.segment == info.segment && m.side == side);
            at.map(|i| c.swap_remove(i)).ok_or(AttachError::NotCached(info.segment))?
        } else {
            Link::map(info, side, fds)?
        };
        // The header is validated again: the monitor rewrote it for this
        // connection.
        // SAFETY: `map` is a live shared mapping of `len` bytes, owned by
        // the Link with the view and handles made from it.
        let seg = unsafe { Segment::attach(map.base, map.len) }.map_err(AttachError::Ring)?;
        if seg.conn_id() != info.conn {
            return Err(AttachError::Size);
        }
        // SAFETY: a side of an end is written and read by one holder at a
        // time: several (fork, exec, pass) take the end's locks and resync.
        let (tx, rx) = unsafe { seg.endpoint(side) }.map_err(AttachError::Ring)?;
        let link = Link { tx, rx, conn: info.conn, seg, side, shared: false, send_limit: 0, map };
        link.name_self();
        Ok(link)
    }

    /// The end of a renewed standby's next round, over the segment its
    /// last round left in `renewal` (see [`Link::finish`]).
    fn attach_renewed(info: &ConnInfo, renewal: Renewal) -> Result<Link, AttachError> {
        let Renewal { map, .. } = renewal;
        let side = ring_side(info.side);
        // SAFETY: as in `attach`: a live shared mapping of `len` bytes.
        let seg = unsafe { Segment::attach(map.base, map.len) }.map_err(AttachError::Ring)?;
        if seg.conn_id() != info.conn || map.side != side {
            return Err(AttachError::Size);
        }
        // SAFETY: as in `attach`.
        let (tx, rx) = unsafe { seg.endpoint(side) }.map_err(AttachError::Ring)?;
        let link = Link { tx, rx, conn: info.conn, seg, side, shared: false, send_limit: 0, map };
        link.name_self();
        Ok(link)
    }

    /// Whether this end's connection is renewed by its two processes when
    /// both closed (its standby's ticket says so, and no fork shares it).
    pub(crate) fn renewable(&self) -> bool {
        !self.shared && self.seg.renewable(self.conn)
    }

    /// The end is closed (in the ring) and this process was its only
    /// holder: if the connection is renewable, its segment is kept for
    /// the next round (see `ConnSegment::finish`), renewed here if the
    /// peer's end finished first, and the link is to become that round's
    /// [`Renewal`] ([`Link::into_finished`]). `None` if it is not: it
    /// then closes through the monitor as any other.
    pub(crate) fn finish(&self) -> Option<Round> {
        if !self.renewable() {
            return None;
        }
        match self.seg.finish(self.conn, self.side) {
            ipcd_ring::Finish::Not => None,
            ipcd_ring::Finish::First => Some(Round::Awaited),
            ipcd_ring::Finish::Last if self.seg.renew(self.conn, ipcd_ring::next_ticket_id(self.conn)) => {
                Some(Round::Renewed)
            }
            ipcd_ring::Finish::Last => Some(Round::Cancelled),
        }
    }

    /// What a [`Link::finish`] that said `state` leaves.
    pub(crate) fn into_finished(self, state: Round) -> Finished {
        let (prev, next) = (self.conn, ipcd_ring::next_ticket_id(self.conn));
        let Link { seg, map, .. } = self;
        Finished { next, state, renewal: Renewal { seg, map, prev } }
    }

    /// Maps a segment the monitor sent (it is then ours to unmap).
    fn map(info: &ConnInfo, side: ipcd_ring::Side, fds: Vec<OwnedFd>) -> Result<Mapping, AttachError> {
        let [seg_fd]: [OwnedFd; 1] = fds.try_into().map_err(|v: Vec<OwnedFd>| AttachError::Fds(v.len()))?;
        // A monitor that lied about the size is caught here.
        let (base, len) = crate::sys::memfd::map_whole(seg_fd.as_fd(), Some(info.segment_len)).map_err(|e| {
            if e == libc::EINVAL {
                AttachError::Size
            } else {
                AttachError::Map(e)
            }
        })?;
        Ok(Mapping { base, len, segment: info.segment, side })
    }

    /// Maps a new segment the monitor holds a standby connection on and
    /// keeps it with the closed ends' segments, where the connect that
    /// takes the standby finds it as a reused one: holding its fds until
    /// then would show them to the program. False if there is no room or
    /// it cannot be mapped.
    pub(crate) fn keep_standby(info: &ConnInfo, fds: Vec<OwnedFd>) -> bool {
        let side = ring_side(info.side);
        let mut c = cache();
        if c.len() >= MAX_CACHED {
            return false;
        }
        match Link::map(info, side, fds) {
            Ok(map) => {
                c.push(map);
                true
            }
            Err(_) => false,
        }
    }

    /// The end is closed: keeps the segment mapped for the monitor to reuse
    /// between the same two processes, if this process alone holds the end
    /// and has room. Returns whether it was kept (what `Close` says).
    pub(crate) fn keep(self) -> bool {
        if self.shared {
            return false;
        }
        let mut c = cache();
        if c.len() >= MAX_CACHED {
            return false;
        }
        c.push(self.map);
        true
    }

    /// The id of the segment under this end.
    pub(crate) fn segment(&self) -> u64 {
        self.map.segment
    }

    /// This connection's ticket, if it came as a standby (see
    /// `ipcd_ring::Segment::ticket`).
    pub(crate) fn ticket(&self) -> ipcd_ring::Ticket {
        self.seg.ticket(self.conn)
    }

    /// Connects through this standby's ticket from `addr`: `None` if it
    /// was cancelled (the connection was not made), else whether an
    /// acceptor watched it (and needs no wake-up; see `ConnSegment::connect`).
    pub(crate) fn connect_ticket(&self, addr: [u32; 8], after_brokered: bool) -> Option<bool> {
        let at = crate::conn::wait::monotonic_ns() & !crate::control::AFTER_BROKERED;
        self.seg.set_connected_at(at | u64::from(after_brokered));
        self.seg.connect(self.conn, addr)
    }

    /// When this expected end's connector connected (its word: a hint for
    /// the accept order).
    pub(crate) fn connected_at(&self) -> u64 {
        self.seg.connected_at()
    }

    /// An acceptor starts or stops watching this expected end's ticket
    /// (see `ConnSegment::watch`); the ticket as it is after.
    pub(crate) fn watch_ticket(&self, on: bool) -> ipcd_ring::Ticket {
        self.seg.watch(self.conn, on)
    }

    /// Cancels this standby's ticket unless its connector used it; the
    /// ticket as it is after.
    pub(crate) fn cancel_ticket(&self) -> ipcd_ring::Ticket {
        self.seg.cancel(self.conn)
    }

    /// Process `pid` accepts this end, which waited in its accept queue;
    /// false if the monitor withdrew it for another process meanwhile
    /// (see `ConnSegment::claim`): it is then not ours to use or close.
    pub(crate) fn claim(&self, pid: u32) -> bool {
        self.seg.claim(pid)
    }

    /// A process is about to fork: one more holder of this end. Bytes held
    /// back (`TCP_CORK`) go first: a shared end holds none.
    pub(crate) fn add_holder(&mut self) {
        if self.tx.publish() {
            self.ring_peer();
        }
        self.seg.add_holder(self.side);
    }

    /// This process lets go of the end; true if it was the last holder
    /// (the caller then closes the end as Linux would).
    pub(crate) fn release_holder(&self) -> bool {
        self.unname_self();
        self.seg.release_holder(self.side) == 0
    }

    /// Takes this process off the end's named holders (its share goes
    /// through the monitor).
    pub(crate) fn unname_self(&self) {
        if let Some(id) = peer::my_id() {
            self.seg.unname_holder(self.side, id);
        }
    }

    /// Limits what this end holds unread by its peer as Linux's buffers
    /// limit a connection: `limit` is the send buffer the program set (0:
    /// none, the whole ring), and on top of it the peer's receive buffer
    /// (`SO_RCVBUF` as it set it, or the system's default) may fill.
    pub(crate) fn set_send_limit(&mut self, limit: usize) {
        self.send_limit = limit;
    }

    /// The send buffer the program set, if any: a non-blocking send moves
    /// at most that much at once, as Linux's fills its send queue.
    pub(crate) fn send_burst(&self) -> Option<usize> {
        (self.send_limit != 0).then_some(self.send_limit)
    }

    /// Ring bytes this end leaves unused: with a send buffer set, all but
    /// it and the peer's receive buffer (0 without one).
    fn reserve(&self) -> usize {
        if self.send_limit == 0 {
            return 0;
        }
        let cap = self.tx.capacity();
        // A default share of at most half the ring: a send buffer the
        // program raises later then always finds room, as on Linux.
        let window = match self.tx.peer_window() {
            0 => default_window().min(cap / 2),
            w => usize::try_from(w).unwrap_or(usize::MAX),
        };
        cap.saturating_sub(self.send_limit.saturating_add(window))
    }

    /// Tells the peer this end's receive buffer, `bytes` (0: the default).
    pub(crate) fn set_window(&self, bytes: usize) {
        self.rx.set_window(bytes as u64);
    }

    /// Room to send now, within the send limit (the reader's progress
    /// read afresh).
    pub(crate) fn send_room(&mut self) -> Result<usize, ipcd_ring::Error> {
        let reserve = self.reserve();
        self.tx.writable().map(|n| n.saturating_sub(reserve))
    }

    /// What this end may hold unread by its peer: the ring, or less.
    pub(crate) fn send_capacity(&self) -> usize {
        self.tx.capacity() - self.reserve()
    }

    /// Arms the wait for room to send `want` bytes within the limit.
    pub(crate) fn prepare_send_wait(&mut self, want: usize) -> Result<ipcd_ring::Wait, ipcd_ring::Error> {
        self.tx.prepare_wait((want + self.reserve()).min(self.tx.capacity()))
    }

    /// Where the connection stands against its listener's backlog (the
    /// monitor says it in the segment).
    pub(crate) fn admission(&self) -> ipcd_ring::Admission {
        self.seg.admission()
    }

    /// Bytes this end has written so far.
    pub(crate) fn sent_total(&self) -> u64 {
        self.seg.written(self.side)
    }

    /// Bytes the peer has written to this end so far.
    pub(crate) fn received_total(&self) -> u64 {
        self.seg.written(self.side.peer())
    }

    /// Names this process among the holders of the end (see `peer`): on
    /// attach, and in a forked child for what it inherited.
    pub(crate) fn name_self(&self) {
        if let Some(id) = peer::my_id() {
            let _ = self.seg.name_holder(self.side, id);
        }
    }

    /// With `monitor` (the pid of the monitor that made the end) gone: if
    /// every holder of the peer's side is named and none lives, closes
    /// that side as the monitor closes a dead process's end and returns
    /// true (see `peer`).
    pub(crate) fn bury_dead_peer(&self, monitor: u32) -> bool {
        let peer = self.side.peer();
        if self.rx.peer_state() != ipcd_ring::PeerState::Open && self.tx.is_reader_closed() {
            return false;
        }
        if peer::monitor_lives(monitor) {
            return false;
        }
        let Some(ids) = self.seg.holders_named(peer) else { return false };
        if !peer::all_dead(&ids) {
            return false;
        }
        let _ = self.seg.close_dead_end(peer, false);
        true
    }

    /// Whether another process may hold this end.
    pub(crate) fn is_shared(&self) -> bool {
        self.shared
    }

    /// The end is (from now on) held by more than one process.
    pub(crate) fn set_shared(&mut self) {
        self.shared = true;
    }

    /// Before using the handles: with a shared end, takes both of its locks
    /// and rereads the indices another process may have moved.
    pub(crate) fn enter(&mut self) {
        if !self.shared {
            return;
        }
        let me = crate::sys::process::owner_id();
        for lock in [EndLock::Send(self.side), EndLock::Recv(self.side)] {
            take(&self.seg, lock, me);
        }
        if self.tx.resync().is_err() || self.rx.resync().is_err() {
            // A corrupt ring shows up again in `observe`, which resets.
        }
    }

    /// After using the handles: releases what `enter` took.
    pub(crate) fn leave(&mut self) {
        if !self.shared {
            return;
        }
        let me = crate::sys::process::owner_id();
        for lock in [EndLock::Recv(self.side), EndLock::Send(self.side)] {
            self.seg.unlock(lock, me);
        }
    }

    /// Rings the peer's sleepers (a publish or a close said one asked to
    /// be woken): every doorbell named in the lines it waits on.
    pub(crate) fn ring_peer(&self) {
        self.ring_sleepers(self.side.peer());
    }

    /// Rings every doorbell named on `side`'s two waiting lines.
    fn ring_sleepers(&self, side: ipcd_ring::Side) {
        let [reader, writer] = self.seg.waiters_of(side);
        crate::conn::bell::ring_ids(reader.ids().into_iter().chain(writer.ids()));
    }

    /// A wait on this end is over (it found the rings ready, or woke):
    /// takes doorbell `me` off the lines it waited on (`rx`: for data,
    /// `tx`: for room) and clears their flags unless other sleepers are
    /// named there, so the peer's next publish has nothing to ring.
    pub(crate) fn settle_wait(&self, me: Option<u64>, rx: bool, tx: bool) {
        if rx {
            if let Some(me) = me {
                self.rx.waiters().unname(me);
            }
            if self.rx.cancel_wait_alone() {
                crate::conn::bell::ring_ids(self.rx.waiters().ids());
            }
        }
        if tx {
            if let Some(me) = me {
                self.tx.waiters().unname(me);
            }
            if self.tx.cancel_wait_alone() {
                crate::conn::bell::ring_ids(self.tx.waiters().ids());
            }
        }
    }

    /// Rings this end's own sleepers in this process and any other (its
    /// state changed under them: a shutdown, a dead peer, a new buffer).
    pub(crate) fn ring_own(&self) {
        self.ring_sleepers(self.side);
    }

    /// What the rings say now, for the state machine. `None`: the ring is
    /// corrupt (the peer broke the protocol); the caller resets.
    pub(crate) fn observe(&mut self) -> Option<Ring> {
        let peer_fin = self.rx.peer_fin();
        let peer_reset = self.rx.peer_state() == ipcd_ring::PeerState::Reset;
        Some(Ring {
            readable: self.rx.readable().ok()?,
            writable: self.tx.writable_cached().ok()?.saturating_sub(self.reserve()),
            peer_fin,
            peer_reset,
            // Every end closes its writing side before its reading side (the
            // preload library and the monitor alike), so a closed reader is
            // only possible once a FIN or reset is visible. Checking it only
            // then keeps each send off the line the peer's reads keep
            // writing (its `head`), which would cost a cache miss per send.
            peer_reader_closed: (peer_fin || peer_reset) && self.tx.is_reader_closed(),
        })
    }
}

/// Takes `lock`, breaking it if its holder died (`ConnSegment::lock`).
fn take(seg: &Segment, lock: EndLock, me: std::num::NonZeroU32) {
    // SAFETY: signal 0 only checks whether the process exists.
    let dead = |pid: u32| unsafe { libc::kill(pid as libc::pid_t, 0) } != 0 && real::errno() == libc::ESRCH;
    seg.lock(lock, me, dead, std::thread::yield_now);
}
