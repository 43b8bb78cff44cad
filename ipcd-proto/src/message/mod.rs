//! Control messages and their codec.
//!
//! A frame is one `SOCK_SEQPACKET` packet:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 2 | magic [`FRAME_MAGIC`] |
//! | 2 | 1 | codec version [`CODEC_VERSION`] |
//! | 3 | 1 | reserved, 0 |
//! | 4 | 2 | message type |
//! | 6 | 2 | reserved, 0 |
//! | 8 | 4 | sequence number (a reply carries its request's; events 0) |
//! | 12 | 4 | body length |
//! | 16 | n | body |
//!
//! all little-endian, at most [`MAX_FRAME`] bytes. Requests (process →
//! monitor) use types `0x01xx`, responses and events (monitor → process)
//! `0x02xx`; each side decodes only the other's range. The fds that travel
//! with a message (`SCM_RIGHTS`) are part of its definition
//! ([`Request::fd_count`], [`Response::fd_count`]) and their count is checked
//! on decode; their order is given on each variant. Every request gets one
//! reply carrying its sequence number, except the notifications marked
//! "no reply" (so `close` never waits for the monitor).

use bitflags::bitflags;

use crate::addr::SockAddr;

mod codec;

/// First two bytes of every frame ("ID" in ASCII, little-endian).
pub const FRAME_MAGIC: u16 = u16::from_le_bytes(*b"ID");
/// Version of the frame layout and codec.
pub const CODEC_VERSION: u8 = 1;
/// Bytes of the frame header.
pub const HEADER_LEN: usize = 16;
/// Largest frame either side sends or accepts.
pub const MAX_FRAME: usize = 1024;
/// Most fds any message carries.
pub const MAX_FDS: usize = 3;

/// The length of the whole frame whose first [`HEADER_LEN`] bytes are
/// `header`, from its body length: how a reader of a byte stream (a
/// request queue) finds where a frame ends. Only the length is checked
/// here ([`Request::decode`] checks the rest).
pub fn frame_len(header: &[u8; HEADER_LEN]) -> Result<usize, crate::DecodeError> {
    let body = u32::from_le_bytes([header[12], header[13], header[14], header[15]]) as usize;
    match HEADER_LEN.checked_add(body) {
        Some(n) if n <= MAX_FRAME => Ok(n),
        _ => Err(crate::DecodeError::TooLong(HEADER_LEN.saturating_add(body))),
    }
}

bitflags! {
    /// What a process or the monitor can do, exchanged in the handshake.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct Caps: u32 {
        /// Registered for `membarrier` global expedited fences: its ring
        /// publishes may use compiler-only barriers.
        const ASYM_FENCE = 1 << 0;
        /// Can hand connections across fork.
        const FORK = 1 << 1;
        /// Can re-attach connections after exec.
        const EXEC = 1 << 2;
    }
}

bitflags! {
    /// Options of a listening socket that change who may share its port.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct ListenFlags: u32 {
        /// `SO_REUSEPORT`: several listeners share the port.
        const REUSEPORT = 1 << 0;
        /// `SO_REUSEADDR`.
        const REUSEADDR = 1 << 1;
        /// `IPV6_V6ONLY` on an IPv6 listener.
        const V6ONLY = 1 << 2;
        /// The listener's bell (an eventfd) travels with `Listen`, second
        /// fd: connectors taking a standby ring it.
        const BELL = 1 << 3;
        /// A rule of the config file leaves the listener to the kernel:
        /// connects to it are sent there, with reason `Fallback::Rule`.
        const KERNEL = 1 << 4;
    }
}

/// Which end of a segment a process holds (side A wrote ring 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The connecting end.
    A,
    /// The accepting end.
    B,
}

/// Why the monitor sends a connection to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fallback {
    /// No ipcd listener at the destination.
    NoListener,
    /// The listener belongs to another user.
    OtherUser,
    /// The listener's accept queue is full.
    BacklogFull,
    /// The destination is not on this host.
    NotLocal,
    /// The monitor is out of memory for segments, or at its limit.
    NoMemory,
    /// Acceleration is turned off for this process or port.
    Disabled,
    /// The process found no monitor to ask (counted by the process, and
    /// reported once one answers).
    NoMonitor,
    /// The process uses io_uring, whose socket I/O bypasses the library
    /// (counted by the process).
    IoUring,
    /// A rule of the config file leaves it to the kernel (counted by the
    /// process).
    Rule,
}

impl Fallback {
    /// Every value, in wire-code order.
    pub const ALL: &'static [Fallback] = &[
        Fallback::NoListener,
        Fallback::OtherUser,
        Fallback::BacklogFull,
        Fallback::NotLocal,
        Fallback::NoMemory,
        Fallback::Disabled,
        Fallback::NoMonitor,
        Fallback::IoUring,
        Fallback::Rule,
    ];

    /// Its place in [`Fallback::ALL`] (and in [`Status::fallbacks`]).
    pub fn index(self) -> usize {
        self as usize
    }

    /// Short name for `ipcd status`.
    pub fn name(self) -> &'static str {
        match self {
            Fallback::NoListener => "no listener under ipcd",
            Fallback::OtherUser => "other user",
            Fallback::BacklogFull => "backlog full",
            Fallback::NotLocal => "not local",
            Fallback::NoMemory => "no memory",
            Fallback::Disabled => "disabled",
            Fallback::NoMonitor => "monitor unreachable",
            Fallback::IoUring => "io_uring in use",
            Fallback::Rule => "rule",
        }
    }
}

/// How many reasons a connect may be sent to the kernel for.
pub const FALLBACK_KINDS: usize = 9;
const _: () = assert!(Fallback::ALL.len() == FALLBACK_KINDS);

/// Error codes of [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// No protocol version in common.
    VersionMismatch,
    /// A request before `Hello`, or a second `Hello`.
    NotRegistered,
    /// Malformed or out-of-place request.
    BadRequest,
    /// The passed fd is not the listening socket claimed, or the
    /// connection is not held by this process.
    NotOwner,
    /// An ipcd listener already owns the address.
    AddrInUse,
    /// No such listener of this process.
    NoSuchListener,
    /// No such connection of this process.
    NoSuchConnection,
    /// A per-user limit was reached.
    Limit,
    /// The monitor failed; the request may be retried through the kernel.
    Internal,
}

impl ErrorCode {
    /// Every value, in wire-code order.
    pub const ALL: &'static [ErrorCode] = &[
        ErrorCode::VersionMismatch,
        ErrorCode::NotRegistered,
        ErrorCode::BadRequest,
        ErrorCode::NotOwner,
        ErrorCode::AddrInUse,
        ErrorCode::NoSuchListener,
        ErrorCode::NoSuchConnection,
        ErrorCode::Limit,
        ErrorCode::Internal,
    ];
}

/// A connection as the monitor hands it to one end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnInfo {
    /// Connection id, unique on the host; also in the segment header.
    pub conn: u64,
    /// Which end this process holds.
    pub side: Side,
    /// This end's address (`getsockname`).
    pub local: SockAddr,
    /// The other end's address (`getpeername`).
    pub peer: SockAddr,
    /// Segment length in bytes.
    pub segment_len: u64,
    /// The segment's id, unique on the host.
    pub segment: u64,
    /// The segment is one both ends still map from an earlier connection
    /// between the same two processes (`Close { keep }`): the message
    /// carries no fds and the ends find it by `segment`.
    pub reused: bool,
}

/// Counters for `ipcd status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status {
    /// Monitor process id.
    pub monitor_pid: u32,
    /// Processes with an open channel.
    pub processes: u32,
    /// ipcd listeners.
    pub listeners: u32,
    /// Live connections.
    pub connections: u32,
    /// Bytes of live segments and of those kept for reuse.
    pub segment_bytes: u64,
    /// Connections set up through ipcd since start.
    pub connects_total: u64,
    /// Of those, how many reused the segment of an earlier connection
    /// between the same two processes.
    pub reused_total: u64,
    /// Of those, how many a process took from a standby (`Use`), without
    /// waiting for an answer.
    pub standby_total: u64,
    /// Of those, how many the two processes made alone, through a standby
    /// they renewed after their last connection (no message to the
    /// monitor: counted from the rounds the segment records).
    pub renewed_total: u64,
    /// Connects sent to the kernel since start.
    pub fallbacks_total: u64,
    /// Of those, how many for each reason, in [`Fallback::ALL`]'s order.
    pub fallbacks: [u64; FALLBACK_KINDS],
    /// Milliseconds since the monitor started.
    pub uptime_ms: u64,
}

/// One process, in the listing that follows [`Response::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProcessStatus {
    /// Its pid (as the monitor sees it).
    pub pid: u32,
    /// Its uid.
    pub uid: u32,
    /// Connection ends it holds (those an earlier monitor made included).
    pub connections: u32,
    /// ipcd listeners it registered.
    pub listeners: u32,
    /// Bytes sent on the ends it holds so far (their rings' totals: an
    /// end shared by several processes counts in each).
    pub sent: u64,
    /// Bytes received on them so far (sent by their peers).
    pub received: u64,
    /// Its connects that went to the kernel (the monitor's answers and
    /// its own reports).
    pub to_kernel: u64,
}

/// One listener, in the listing that follows [`Response::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerStatus {
    /// Owning process.
    pub pid: u32,
    /// Bound address.
    pub addr: SockAddr,
    /// `listen` backlog.
    pub backlog: u32,
    /// Connections brokered and not yet accepted.
    pub pending: u32,
    /// Member of an `SO_REUSEPORT` group.
    pub reuseport: bool,
}

/// What one end of a connection has done, as its ring shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EndState {
    /// Sending and receiving.
    Open,
    /// Its writing side is shut (a FIN went out).
    Fin,
    /// It reset the connection.
    Reset,
    /// No process holds it any more.
    Gone,
    /// Not known to this monitor: a connection an earlier monitor made,
    /// whose holder of this end has not reported it.
    Unknown,
    /// Open, and served by the monitor over a kernel TCP connection for a
    /// program that cannot map it (see [`Request::Demote`]).
    Relayed,
}

impl EndState {
    /// Every value, in wire-code order.
    pub const ALL: &'static [EndState] =
        &[EndState::Open, EndState::Fin, EndState::Reset, EndState::Gone, EndState::Unknown, EndState::Relayed];

    /// Short name for `ipcd status`.
    pub fn name(self) -> &'static str {
        match self {
            EndState::Open => "open",
            EndState::Fin => "fin",
            EndState::Reset => "reset",
            EndState::Gone => "gone",
            EndState::Unknown => "unknown",
            EndState::Relayed => "relayed",
        }
    }
}

/// One connection, in the listing that follows [`Response::Status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnStatus {
    /// Connection id.
    pub conn: u64,
    /// Process holding side A (the connector) and side B; 0 once gone.
    pub pids: [u32; 2],
    /// Address of side A and of side B.
    pub addrs: [SockAddr; 2],
    /// Bytes written by side A and by side B so far.
    pub bytes: [u64; 2],
    /// Segment length in bytes.
    pub segment_len: u64,
    /// State of side A and of side B.
    pub states: [EndState; 2],
}

/// A request from a process to the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Request {
    /// First message on a channel. No fds.
    Hello {
        /// Lowest protocol version the process speaks.
        version_min: u16,
        /// Highest protocol version the process speaks.
        version_max: u16,
        /// Process id as the process sees it (checked against `SO_PEERCRED`).
        pid: u32,
        /// User id (checked against `SO_PEERCRED`).
        uid: u32,
        /// What the process can do.
        caps: Caps,
    },
    /// The process listens in the kernel on `addr`; route local connects to it.
    /// Fds: `[listening socket]`, which proves the ownership.
    Listen {
        /// The process's id for this listener, echoed in `Incoming`.
        listener: u64,
        /// Bound address (`getsockname`).
        addr: SockAddr,
        /// `listen` backlog.
        backlog: u32,
        /// Port-sharing options.
        flags: ListenFlags,
    },
    /// Stop routing to a listener. No fds.
    Unlisten {
        /// Id given in `Listen`.
        listener: u64,
    },
    /// Connect to `dest` through ipcd if possible. No fds.
    Connect {
        /// Destination.
        dest: SockAddr,
        /// The socket's own address if it was bound.
        source: Option<SockAddr>,
        /// The socket is non-blocking.
        nonblocking: bool,
    },
    /// This process shut one direction of its end (for the monitor's books).
    /// No fds, no reply.
    Shutdown {
        /// Connection.
        conn: u64,
        /// 0 read, 1 write, 2 both.
        how: u8,
    },
    /// This process no longer holds its end. No fds, no reply.
    Close {
        /// Connection.
        conn: u64,
        /// Which end (a process may hold both ends of one connection).
        side: Side,
        /// The process keeps the segment mapped, so a later connection
        /// between the same two processes may reuse it (the monitor sends
        /// `Forget` when it will not).
        keep: bool,
    },
    /// First request of a forked child after `Hello`: it holds what the
    /// parent held at the fork. No fds.
    Forked {
        /// Parent's process id.
        parent_pid: u32,
    },
    /// The process is about to exec: keep its holdings while its channel
    /// closes, until the new image says `Reopen` (or a timeout). No fds, no reply.
    ExecPrepare,
    /// After exec: map this held connection end again. No fds.
    Reopen {
        /// Connection.
        conn: u64,
        /// Which end.
        side: Side,
    },
    /// Counters for `ipcd status`, then one entry per listener and per
    /// connection, then `Ok`. No fds.
    Status,
    /// A brokered connection left the listener's accept queue. No fds, no reply.
    Accepted {
        /// Connection.
        conn: u64,
    },
    /// Stop the monitor (same user or root). No fds.
    Stop,
    /// Nothing: answered `Ok` once every request sent before it (through
    /// the channel or a request queue) was handled. No fds.
    Ping,
    /// The process is about to pass its end of `conn` to another process
    /// over a Unix socket (`SCM_RIGHTS`), or to a program it spawns, that
    /// runs the library: keep a holder for it until a process of the same
    /// user claims it with the same kernel socket (or a timeout). It has
    /// added that holder to the segment already. Fds: `[the kernel socket
    /// under the end's fd]` (the monitor learns its inode from it, so the
    /// sender cannot name another socket's); `Ok` or `Error`.
    Pass {
        /// Connection.
        conn: u64,
        /// Which end.
        side: Side,
    },
    /// `Pass` over the Unix socket that comes with it, to whichever process
    /// is at its other end: the monitor looks (`SO_PEERCRED`). One that
    /// can claim the end (under this monitor, or with the library loaded)
    /// is waited for as with `Pass`, `Ok`; for any other the end is
    /// relayed as for `Demote`, `Relayed`. Fds: `[the kernel socket under
    /// the end's fd, the Unix socket]`.
    PassOver {
        /// Connection.
        conn: u64,
        /// Which end.
        side: Side,
    },
    /// The end of `conn` is about to be held by a program that cannot map
    /// it (an exec into an image without the library): the monitor
    /// connects the kernel socket under it to a kernel TCP connection of
    /// its own and relays between that and the end's rings, holding the
    /// share of the end the process added to the segment for it. Fds:
    /// `[the kernel socket under the end's fd]`; `Relayed` or `Error`.
    Demote {
        /// Connection.
        conn: u64,
        /// Which end.
        side: Side,
    },
    /// Watch connections for `ipcd trace`: every connection the monitor
    /// has or makes from now on whose process (either end) is `pid` and
    /// whose address (either end) has port `port` (0: any, for each) is
    /// sent as `Traced`. The monitor's own user or root only. No fds; no
    /// reply but the events (`Error` if refused).
    Trace {
        /// A process's pid, or 0.
        pid: u32,
        /// A port, or 0.
        port: u16,
    },
    /// The process received a socket: map the connection end passed with
    /// it, if any. Fds: `[the received socket]`, which proves the claimer
    /// holds it (a claim cannot name a socket by number). `Reopened`, or
    /// `Error` when nothing was passed with that socket or the passer is
    /// another user.
    Claim,
    /// The process accepts on `listener`, a listener a fork left shared
    /// (its id is the one the registering process gave it): connects to
    /// it may be handed to this process. Sent once per process, when it
    /// first accepts or waits for connections. Fds: `[its bell for the
    /// listener]` when `bell` (connectors of standbys issued to it ring
    /// that one); no reply.
    Serve {
        /// Listener id.
        listener: u64,
        /// The process's own bell for the listener comes with it.
        bell: bool,
    },
    /// The process closed its copy of a shared listener with `conn` still
    /// in its accept queue: hand the connection to another process that
    /// serves the listener (reset it if none). No fds, no reply.
    Decline {
        /// Connection.
        conn: u64,
    },
    /// The process connected through a standby connection (`Standby`)
    /// and has no bell for its listener: tell it (the ticket says the
    /// rest). No fds, no reply.
    Use {
        /// Connection.
        conn: u64,
        /// The connecting socket's own address (the acceptor's peer).
        source: Option<SockAddr>,
    },
    /// A standby connection given back unused: withdrawn (`Withdraw`), or
    /// it could not be mapped (by its connector, or by its acceptor at
    /// `Expect`). No fds, no reply.
    Unused {
        /// Connection.
        conn: u64,
    },
    /// This process lets go of its end of a connection that other
    /// processes may hold too (a fork, an exec or a pass shared it),
    /// leaving its share of the segment's holder count untouched: the
    /// monitor gives the share back and, when it was the last, closes the
    /// end as the kernel's last close would (a reset when `abort` or when
    /// bytes are left unread). Each holding is so given back exactly once,
    /// whether its process closes it or dies. No fds, no reply; never
    /// held back.
    Release {
        /// Connection.
        conn: u64,
        /// Which end.
        side: Side,
        /// `SO_LINGER` 0: the last close resets.
        abort: bool,
    },
    /// Connects this process sent to the kernel by itself since its last
    /// report, by reason (in [`Fallback::ALL`]'s order: a destination not
    /// on this host, no monitor answering): the monitor adds them to its
    /// counts. No fds, no reply.
    Fallbacks {
        /// How many for each reason.
        counts: [u32; FALLBACK_KINDS],
    },
    /// Registers a doorbell of this process (an eventfd one thread or
    /// one epoll set sleeps on) for other processes to ring: its id is
    /// what the process names in a ring's waiting line (see
    /// `ipcd_ring::Waiters`). Fds: `[the eventfd]`; `BellId` or `Error`.
    Bell,
    /// The doorbell registered as `id`, to ring a sleeper that named it.
    /// No fds; `Bell` (with the eventfd) or `Error`.
    BellOf {
        /// The doorbell's id.
        id: u64,
    },
    /// A doorbell of this process is gone (its thread ended): nobody will
    /// sleep on it again. No fds, no reply.
    Unbell {
        /// The doorbell's id.
        id: u64,
    },
    /// This process holds (`open`) or no longer holds an end of `conn`, a
    /// connection an earlier monitor made (the monitor was restarted):
    /// listed in `ipcd status` as reported, nothing more (the monitor
    /// has no segment for it). No fds, no reply.
    Held {
        /// Connection (its ids are unique across monitor runs).
        conn: u64,
        /// Which end.
        side: Side,
        /// Its address.
        local: SockAddr,
        /// Its peer's address.
        peer: SockAddr,
        /// Still held (false: let go).
        open: bool,
    },
}

impl Request {
    /// Whether the request may travel through a request queue: it
    /// carries no fds and has no reply, so nothing but its order tells
    /// the sender it was handled. A monitor takes a process's queued
    /// requests before anything that process sends on its channel, and
    /// before its death.
    pub fn queueable(&self) -> bool {
        matches!(
            self,
            Request::Shutdown { .. }
                | Request::Close { .. }
                | Request::Accepted { .. }
                | Request::Serve { bell: false, .. }
                | Request::Decline { .. }
                | Request::Use { .. }
                | Request::Unused { .. }
                | Request::Release { .. }
                | Request::Fallbacks { .. }
                | Request::Held { .. }
                | Request::Unbell { .. }
        )
    }

    /// The `Hello` of a process: every protocol version this build speaks.
    pub fn hello(pid: u32, uid: u32, caps: Caps) -> Request {
        Request::Hello {
            version_min: *crate::PROTOCOL_VERSIONS.start(),
            version_max: *crate::PROTOCOL_VERSIONS.end(),
            pid,
            uid,
            caps,
        }
    }
}

/// A reply or event from the monitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Response {
    /// Answer to `Hello`. No fds.
    Welcome {
        /// Protocol version chosen.
        version: u16,
        /// Monitor process id.
        monitor_pid: u32,
        /// The client's process id as the monitor sees it (the kernel's
        /// `SO_PEERCRED`): its own in another pid namespace differs. Ends
        /// are offered to it under this id.
        pid: u32,
        /// What the monitor can do.
        caps: Caps,
        /// Default capacity of each ring of a new segment.
        ring_bytes: u64,
    },
    /// The request succeeded. No fds.
    Ok,
    /// The request failed. No fds.
    Error {
        /// What went wrong.
        code: ErrorCode,
    },
    /// Answer to `Connect`: an ipcd connection.
    /// Fds: `[segment memfd]`, none if reused.
    Connected(ConnInfo),
    /// Answer to `Connect`: use the kernel. No fds.
    UseKernel {
        /// Why.
        reason: Fallback,
    },
    /// Event: a connection arrived for a listener.
    /// Fds: `[segment memfd]`, none if reused.
    Incoming {
        /// Listener id from `Listen`.
        listener: u64,
        /// The new connection.
        info: ConnInfo,
        /// When the monitor made it (`CLOCK_MONOTONIC`, ns): accepts take
        /// connections in the order they were made, whether the monitor
        /// or a standby carried them.
        at: u64,
    },
    /// Event: the process holding the other end died. No fds.
    PeerGone {
        /// Connection.
        conn: u64,
    },
    /// Event: a segment this process kept mapped (`Close { keep }`) will
    /// not be reused; unmap it. No fds.
    Forget {
        /// Segment id.
        segment: u64,
    },
    /// Answer to `Reopen` and `Claim`. Fds: `[segment memfd]`.
    Reopened(ConnInfo),
    /// Event for a `Trace`: a connection to watch. Fds: `[segment memfd]`,
    /// to map read-only (the tracer reads what each side wrote; it holds
    /// no end).
    Traced {
        /// Connection.
        conn: u64,
        /// Processes holding side A and side B (0: none, or relayed).
        pids: [u32; 2],
        /// Addresses of side A and side B.
        addrs: [SockAddr; 2],
        /// Segment length in bytes.
        segment_len: u64,
    },
    /// Answer to `PassOver` and `Demote`: the monitor relays the end over the
    /// kernel socket, which is connected now; the process's fds of it are
    /// plain kernel sockets from here on. No fds.
    Relayed,
    /// Event, before `Welcome`, from a monitor in a queue mode (`ipcd
    /// daemon --queues`): requests with no fds and no reply
    /// ([`Request::queueable`]) may go through shared memory instead of
    /// the channel. Fds: `[the process's request queue]` (a segment whose
    /// side-A ring the process writes with encoded frames and the
    /// monitor reads), and with `shared` `[…, the index queue]` (an
    /// `ipcd_ring::IndexQueue` all processes share: a process pushes
    /// `index` when its ring's reader asked to be told).
    Queue {
        /// This process's number in the index queue.
        index: u32,
        /// The monitor polls the index queue, not every request queue.
        shared: bool,
    },
    /// Event: a connection to `dest` held ready for this process, so that
    /// its next connect there needs no answer: it takes it and sends `Use`.
    /// Fds: `[segment memfd]`, none if reused.
    Standby {
        /// The address the process connected to.
        dest: SockAddr,
        /// The connection, side A; `local` is the connector's own.
        info: ConnInfo,
        /// The acceptor's bell for the listener comes last among the fds:
        /// a connect through this standby rings it (sent once per process,
        /// listener and acceptor; the process keeps it per destination and
        /// `acceptor`).
        bell: bool,
        /// Which of the listener's processes the standby was issued to
        /// (an opaque number: a listener a fork shared has several, each
        /// with its bell).
        acceptor: u64,
    },
    /// Event: a standby connection issued for a listener, told to the
    /// acceptor before it is used: accept takes it once its ticket (in
    /// the segment header) says connected, and drops it if cancelled.
    /// Fds: `[segment memfd]`, none if reused.
    Expect {
        /// Listener id from `Listen`.
        listener: u64,
        /// The connection, side B; `peer` is read from the ticket.
        info: ConnInfo,
    },
    /// Event: a standby connection is withdrawn (its ticket cancelled: its
    /// listener went, or it was given back); the process drops it (and
    /// answers `Unused` if it still had it, which changes nothing). No fds.
    Withdraw {
        /// Connection.
        conn: u64,
    },
    /// Answer to `Bell`: the id the doorbell goes by. No fds.
    BellId {
        /// The doorbell's id, unique on this monitor, never 0.
        id: u64,
    },
    /// Answer to `BellOf`. Fds: `[the eventfd]`.
    Bell {
        /// The doorbell's id.
        id: u64,
    },
    /// Answer to `Status`. No fds.
    Status(Status),
    /// A listener in the `Status` listing. No fds.
    ListenerEntry(ListenerStatus),
    /// A connection in the `Status` listing. No fds.
    ConnEntry(ConnStatus),
    /// A process in the `Status` listing. No fds.
    ProcessEntry(ProcessStatus),
}

// ---- framing shared by both directions -------------------------------
