//! One end of an ipcd connection as a pure state machine that answers every
//! socket call exactly as Linux TCP would (sans-IO: the caller moves the
//! bytes through the ring and rings doorbells; this type only decides).
//!
//! The state mirrors what Linux keeps per TCP socket, because the answers are
//! functions of exactly that:
//! - `phase`: connecting (`SYN_SENT`), established (`ESTABLISHED`,
//!   `CLOSE_WAIT`, `FIN_WAIT*`), or closed (`TCP_CLOSE`: reset, refused, or
//!   both FINs exchanged);
//! - `shutdown`: the socket's `sk_shutdown` bits. `RD` is set by a local
//!   `shutdown(SHUT_RD)` *and* by the peer's FIN; `WR` by a local
//!   `shutdown(SHUT_WR)`;
//! - `peer_fin`: `SOCK_DONE`, the peer's FIN was received;
//! - `error`: the pending `sk_err`, reported once by the next call that
//!   checks it (and by `SO_ERROR`), then cleared.
//!
//! Every call first absorbs what the ring says of the peer ([`Ring`]), then
//! decides from the tables below. Each row cites the kernel code it models
//! (net/ipv4/tcp.c, net/ipv4/af_inet.c, net/core/stream.c); the differential
//! test in `tests/kernel_diff.rs` runs random call sequences on real kernel
//! TCP loopback pairs and through two of these and compares every answer.

use bitflags::bitflags;

/// Linux errno values the machine can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Errno {
    /// Nothing to do now on a non-blocking socket.
    EAGAIN = 11,
    /// Bad `how` for shutdown.
    EINVAL = 22,
    /// Writing side shut, or the peer is gone after a FIN.
    EPIPE = 32,
    /// The peer reset the connection.
    ECONNRESET = 104,
    /// The socket is not (or no longer) connected.
    ENOTCONN = 107,
    /// The peer's process or the monitor timed the connection out.
    ETIMEDOUT = 110,
    /// Nobody listens at the destination.
    ECONNREFUSED = 111,
    /// A non-blocking connect is in progress.
    EINPROGRESS = 115,
}

impl Errno {
    /// The raw errno value.
    pub const fn code(self) -> i32 {
        self as i32
    }
}

bitflags! {
    /// `sk_shutdown` bits.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Shutdown: u8 {
        /// No more reading: local `SHUT_RD` or the peer's FIN.
        const RD = 1;
        /// No more writing: local `SHUT_WR`.
        const WR = 2;
    }
}

bitflags! {
    /// Poll bits, with Linux's values.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Readiness: u32 {
        /// `POLLIN`.
        const IN = 0x001;
        /// `POLLOUT`.
        const OUT = 0x004;
        /// `POLLERR`.
        const ERR = 0x008;
        /// `POLLHUP`.
        const HUP = 0x010;
        /// `POLLRDNORM`, set with `POLLIN`.
        const RDNORM = 0x040;
        /// `POLLWRNORM`, set with `POLLOUT`.
        const WRNORM = 0x100;
        /// `POLLRDHUP`.
        const RDHUP = 0x2000;
    }
}

/// `how` of `shutdown(2)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// `SHUT_RD`.
    Read,
    /// `SHUT_WR`.
    Write,
    /// `SHUT_RDWR`.
    Both,
}

impl How {
    /// From the raw `how` argument; Linux answers anything else with `EINVAL`.
    pub fn from_raw(how: i32) -> Result<How, Errno> {
        match how {
            0 => Ok(How::Read),
            1 => Ok(How::Write),
            2 => Ok(How::Both),
            _ => Err(Errno::EINVAL),
        }
    }

    fn bits(self) -> Shutdown {
        match self {
            How::Read => Shutdown::RD,
            How::Write => Shutdown::WR,
            How::Both => Shutdown::RD | Shutdown::WR,
        }
    }
}

/// Connection phase (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Non-blocking connect in progress.
    Connecting,
    /// Connected; either direction may have been shut.
    Established,
    /// `TCP_CLOSE`: reset, refused, or both FINs exchanged.
    Closed,
}

/// What the ring and the monitor say of the peer, read just before a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ring {
    /// Bytes readable in our receiving ring.
    pub readable: usize,
    /// Free space in our sending ring.
    pub writable: usize,
    /// The peer shut its writing side (its FIN).
    pub peer_fin: bool,
    /// The peer reset the connection (close with unread data, `SO_LINGER`
    /// 0, corruption, or its process died with unread data).
    pub peer_reset: bool,
    /// The peer no longer reads: its fd is closed, or its process is gone.
    /// Bytes we send now would meet a closed socket (Linux answers them
    /// with a reset).
    pub peer_reader_closed: bool,
}

/// Outcome of a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// Copy this many bytes into the ring (then ring the peer if it sleeps).
    Write(usize),
    /// Report these bytes as sent but drop them: the peer no longer reads,
    /// and this end is now reset as the kernel's answering RST would leave
    /// it. The caller marks its writing side reset, so a peer that still
    /// has its fd sees the reset too.
    Discard(usize),
    /// No space: `EAGAIN` if non-blocking, else wait for space and retry.
    WouldBlock,
    /// Fail with this errno; raise `SIGPIPE` first if `sigpipe`.
    Fail {
        /// errno to return.
        errno: Errno,
        /// Raise `SIGPIPE` on the calling thread (not with `MSG_NOSIGNAL`).
        sigpipe: bool,
    },
}

/// Outcome of a receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recv {
    /// Copy (or, with `MSG_PEEK`, peek) this many bytes out of the ring.
    Read(usize),
    /// Return 0: end of stream.
    Eof,
    /// Nothing yet: `EAGAIN` if non-blocking, else wait and retry.
    WouldBlock,
    /// Fail with this errno.
    Fail(Errno),
}

/// What `close` must do to the rings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAction {
    /// Mark our writing side closed (a FIN) and stop reading.
    Fin,
    /// Reset: unread data was discarded or `SO_LINGER` was zero.
    Reset,
    /// Nothing left to signal (already shut, or already closed).
    Quiet,
}

/// One end of a connection. See the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conn {
    phase: Phase,
    shutdown: Shutdown,
    peer_fin: bool,
    error: Option<Errno>,
    /// Our FIN went out (`tcp_close_state` moved us past ESTABLISHED/CLOSE_WAIT).
    fin_sent: bool,
    /// A local `shutdown(SHUT_RD)` (the `RD` bit alone cannot tell it from
    /// the peer's FIN).
    rd_shut_local: bool,
    /// The fd was closed.
    closed: bool,
}

impl Conn {
    /// An end whose connect completed (or that was accepted).
    pub fn established() -> Conn {
        Conn {
            phase: Phase::Established,
            shutdown: Shutdown::empty(),
            peer_fin: false,
            error: None,
            fin_sent: false,
            rd_shut_local: false,
            closed: false,
        }
    }

    /// An end whose non-blocking connect is in progress.
    pub fn connecting() -> Conn {
        Conn { phase: Phase::Connecting, ..Conn::established() }
    }

    /// Phase now.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// `sk_shutdown` now.
    pub fn shutdown_bits(&self) -> Shutdown {
        self.shutdown
    }

    /// The pending error, without clearing it.
    pub fn pending_error(&self) -> Option<Errno> {
        self.error
    }

    /// Our writing side is shut: the ring's writer must be closed.
    pub fn fin_sent(&self) -> bool {
        self.fin_sent
    }

    /// This end no longer accepts data: its fd is closed, or it shut both
    /// reading and writing (FIN_WAIT with `RCV_SHUTDOWN`, where Linux answers
    /// new data with a reset). The caller closes the ring's reader then, so
    /// the peer's next send sees [`Ring::peer_reader_closed`].
    pub fn stops_reading(&self) -> bool {
        self.closed || (self.rd_shut_local && self.fin_sent)
    }

    /// Linux's TCP state number for `TCP_INFO`'s `tcpi_state`: the peer's
    /// acknowledgement is immediate in shared memory, so a FIN we sent is
    /// acknowledged at once (`FIN_WAIT2`, never `FIN_WAIT1`), and both
    /// FINs make `TCP_CLOSE` as a closed Linux socket reports.
    pub fn tcp_state(&self) -> u8 {
        const ESTABLISHED: u8 = 1;
        const SYN_SENT: u8 = 2;
        const FIN_WAIT2: u8 = 5;
        const CLOSE: u8 = 7;
        const CLOSE_WAIT: u8 = 8;
        match self.phase {
            Phase::Connecting => SYN_SENT,
            Phase::Closed => CLOSE,
            Phase::Established => match (self.fin_sent, self.peer_fin) {
                (false, false) => ESTABLISHED,
                (true, false) => FIN_WAIT2,
                (false, true) => CLOSE_WAIT,
                (true, true) => CLOSE,
            },
        }
    }

    /// Short name of the state, for `ipcd status` and logs.
    pub fn name(&self) -> &'static str {
        match (self.phase, self.error) {
            (Phase::Connecting, _) => "connecting",
            (Phase::Closed, Some(Errno::ECONNREFUSED)) => "refused",
            (Phase::Closed, _) if !self.fin_sent || self.error.is_some() => "reset",
            (Phase::Closed, _) => "closed",
            (Phase::Established, _) => match (self.fin_sent, self.peer_fin, self.shutdown.contains(Shutdown::RD)) {
                (false, false, false) => "established",
                (false, false, true) => "read-shut",
                (true, false, _) => "write-shut",
                (false, true, _) => "peer-write-shut",
                (true, true, _) => "closing",
            },
        }
    }

    // ---- events -------------------------------------------------------

    /// The monitor completed our connect.
    pub fn on_connected(&mut self) {
        if self.phase == Phase::Connecting {
            self.phase = Phase::Established;
        }
    }

    /// The connect failed (no listener: `ECONNREFUSED`; timeout: `ETIMEDOUT`).
    /// tcp_reset in SYN_SENT: error set, then tcp_done.
    pub fn on_connect_failed(&mut self, errno: Errno) {
        if self.phase == Phase::Connecting {
            self.error = Some(errno);
            self.done();
        }
    }

    /// The ring turned out corrupt, or the monitor declared the peer dead
    /// with bytes lost: the connection is reset (`ECONNRESET`).
    pub fn on_abort(&mut self) {
        self.reset_by_peer();
    }

    /// Absorbs what the ring says, in the order the kernel would have seen
    /// it: the peer's FIN before its reset.
    pub fn sync(&mut self, ring: &Ring) {
        if ring.peer_fin && !self.peer_fin && self.phase != Phase::Closed {
            // tcp_fin: RCV_SHUTDOWN and SOCK_DONE; if our FIN went out too,
            // the last ACK moves us to TCP_CLOSE (TIME_WAIT/LAST_ACK end).
            self.peer_fin = true;
            self.shutdown |= Shutdown::RD;
            if self.fin_sent {
                self.phase = Phase::Closed;
            }
        }
        if ring.peer_reset {
            self.reset_by_peer();
        }
    }

    /// tcp_reset: EPIPE in CLOSE_WAIT (we had the peer's FIN), ECONNRESET
    /// otherwise, nothing once closed; then tcp_done.
    fn reset_by_peer(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        self.error = Some(if self.peer_fin && !self.fin_sent { Errno::EPIPE } else { Errno::ECONNRESET });
        self.done();
    }

    /// tcp_done: TCP_CLOSE, both directions shut.
    fn done(&mut self) {
        self.phase = Phase::Closed;
        self.shutdown = Shutdown::RD | Shutdown::WR;
    }

    /// sock_error: the pending error, cleared.
    fn take_error(&mut self) -> Option<Errno> {
        self.error.take()
    }

    // ---- calls --------------------------------------------------------

    /// `send`/`write` of `len` bytes.
    pub fn send(&mut self, ring: &Ring, len: usize, nosignal: bool) -> Send {
        self.sync(ring);
        let fail = |errno: Errno| Send::Fail { errno, sigpipe: errno == Errno::EPIPE && !nosignal };
        match self.phase {
            // tcp_sendmsg_locked → sk_stream_wait_connect: a pending error
            // first, then EAGAIN while SYN_SENT.
            Phase::Connecting => return self.take_error().map_or(Send::WouldBlock, fail),
            // sk_stream_wait_connect in TCP_CLOSE: the pending error, else
            // EPIPE; sk_stream_error turns EPIPE into SIGPIPE.
            Phase::Closed => return fail(self.take_error().unwrap_or(Errno::EPIPE)),
            Phase::Established => {}
        }
        // `if (sk->sk_err || (sk->sk_shutdown & SEND_SHUTDOWN)) goto do_error`
        // with err = EPIPE; sk_stream_error prefers the pending error.
        if let Some(e) = self.take_error() {
            return fail(e);
        }
        if self.shutdown.contains(Shutdown::WR) {
            return fail(Errno::EPIPE);
        }
        // A zero-length send on a healthy socket returns 0.
        if len == 0 {
            return Send::Write(0);
        }
        if ring.writable == 0 {
            return Send::WouldBlock;
        }
        let n = len.min(ring.writable);
        if ring.peer_reader_closed {
            // The bytes are accepted, the closed peer answers with RST
            // (tcp_rcv_state_process on a socket with RCV_SHUTDOWN), and
            // tcp_reset leaves us closed with EPIPE or ECONNRESET pending.
            self.reset_by_peer();
            return Send::Discard(n);
        }
        Send::Write(n)
    }

    /// `recv`/`read` of up to `len` bytes (`MSG_PEEK` does not change the
    /// answer, only whether the caller consumes).
    pub fn recv(&mut self, ring: &Ring, len: usize) -> Recv {
        self.sync(ring);
        // Queued data is returned before any end-of-stream or error check.
        if ring.readable > 0 && self.phase != Phase::Connecting {
            return Recv::Read(len.min(ring.readable));
        }
        // With nothing copied: SOCK_DONE, then sk_err, then RCV_SHUTDOWN,
        // then TCP_CLOSE (ENOTCONN), else wait.
        if self.peer_fin {
            return Recv::Eof;
        }
        if let Some(e) = self.take_error() {
            return Recv::Fail(e);
        }
        if self.shutdown.contains(Shutdown::RD) {
            return Recv::Eof;
        }
        if self.phase == Phase::Closed {
            return Recv::Fail(Errno::ENOTCONN);
        }
        Recv::WouldBlock
    }

    /// `shutdown(how)`. Returns the result and whether our writing side must
    /// now be closed in the ring (a FIN goes out).
    pub fn shutdown(&mut self, ring: &Ring, how: How) -> (Result<(), Errno>, bool) {
        self.sync(ring);
        // inet_shutdown: SYN_SENT disconnects; TCP_CLOSE answers ENOTCONN but
        // still sets the bits; otherwise the bits, then tcp_shutdown.
        match self.phase {
            Phase::Connecting => {
                self.phase = Phase::Closed;
                return (Ok(()), false);
            }
            Phase::Closed => {
                self.shutdown |= how.bits();
                return (Err(Errno::ENOTCONN), false);
            }
            Phase::Established => {}
        }
        self.shutdown |= how.bits();
        self.rd_shut_local |= how != How::Write;
        // tcp_shutdown: SEND_SHUTDOWN sends a FIN once, from ESTABLISHED or
        // CLOSE_WAIT; if the peer's FIN is already in, we end in TCP_CLOSE.
        let mut fin = false;
        if how != How::Read && !self.fin_sent {
            self.fin_sent = true;
            fin = true;
            if self.peer_fin {
                self.phase = Phase::Closed;
            }
        }
        (Ok(()), fin)
    }

    /// `close` of the last fd. `abort` is `SO_LINGER` with a zero timeout.
    /// tcp_close: unread data or a zero linger resets; otherwise a FIN if
    /// none went out yet.
    pub fn close(&mut self, ring: &Ring, abort: bool) -> CloseAction {
        self.sync(ring);
        let action = match self.phase {
            Phase::Closed => CloseAction::Quiet,
            Phase::Connecting => CloseAction::Reset,
            Phase::Established if ring.readable > 0 || abort => CloseAction::Reset,
            Phase::Established if self.fin_sent => CloseAction::Quiet,
            Phase::Established => CloseAction::Fin,
        };
        self.fin_sent |= action == CloseAction::Fin;
        self.done();
        self.closed = true;
        action
    }

    /// `getsockopt(SO_ERROR)`: the pending error (0 if none), cleared.
    pub fn so_error(&mut self, ring: &Ring) -> Option<Errno> {
        self.sync(ring);
        self.take_error()
    }

    /// The poll mask (tcp_poll).
    pub fn poll(&mut self, ring: &Ring) -> Readiness {
        self.sync(ring);
        let mut mask = Readiness::empty();
        let both = Shutdown::RD | Shutdown::WR;
        // Row: all shut or TCP_CLOSE → HUP.
        if self.shutdown == both || self.phase == Phase::Closed {
            mask |= Readiness::HUP;
        }
        // Row: RCV_SHUTDOWN → IN | RDNORM | RDHUP.
        if self.shutdown.contains(Shutdown::RD) {
            mask |= Readiness::IN | Readiness::RDNORM | Readiness::RDHUP;
        }
        // Rows for a connected socket (not SYN_SENT): data → IN; writable
        // or SEND_SHUTDOWN → OUT.
        if self.phase != Phase::Connecting {
            if ring.readable > 0 {
                mask |= Readiness::IN | Readiness::RDNORM;
            }
            if self.shutdown.contains(Shutdown::WR) || ring.writable > 0 {
                mask |= Readiness::OUT | Readiness::WRNORM;
            }
        }
        // Row: pending error → ERR.
        if self.error.is_some() {
            mask |= Readiness::ERR;
        }
        mask
    }
}
