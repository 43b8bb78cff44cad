//! A socket object: what one open TCP socket of ours is (fresh, listening,
//! an ipcd connection) and the options we emulate for it.

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ipcd_proto::message::ConnInfo;
use ipcd_proto::{Conn, SockAddr};

use crate::conn::link::Link;
use crate::control::ListenerBell;
use crate::socket::options::Inherited;

/// An ipcd connection end.
pub(crate) struct Stream {
    /// Linux TCP's answers for this end.
    pub conn: Conn,
    /// The mapped rings.
    pub link: Link,
    /// Addresses and ids from the monitor.
    pub info: ConnInfo,
    /// Times a send found no room (EAGAIN or a short count): each is a
    /// new edge for edge-triggered EPOLLOUT once room comes back, as Linux's
    /// SOCK_NOSPACE makes the next write-space wake-up one.
    pub out_blocked: u64,
    /// A non-blocking connect answered EINPROGRESS and no later `connect`
    /// has reported the completion yet (Linux answers that one with 0).
    pub connect_pending: bool,
    /// `MSG_ZEROCOPY` completions not yet read from the error queue.
    pub zerocopy: Zerocopy,
    /// Receives in a row, with nothing sent in between, that found a few
    /// bytes already waiting, fewer than they had room for: the peer
    /// streams small writes faster than we look (see `stream::recv`).
    pub behind: u8,
    /// How many times the configured batch the next pause of a reader
    /// that is behind lasts (see `stream::recv`): doubles while reads
    /// after a pause still find a few bytes, back to 1 when they do not.
    pub pause_scale: u8,
    /// The monitor (pid) that knew of this end when it was made here: only
    /// that one may be asked to release it (see `stream::let_go`).
    pub monitor: u32,
    /// Where the library bound the kernel socket under it (its port
    /// reserved for this connection), kept with it for reuse.
    pub bound: Option<SockAddr>,
    /// When (`conn::wait::now_ms`) a wait may next look whether the peer
    /// died unseen: a busy end waits often, and a look costs system calls.
    pub next_look_ms: u64,
    /// The monitor (pid) this end was reported to as held, when another
    /// made it (see [`crate::socket::held`]); 0 if none.
    pub reported_to: u32,
    /// When (`now_ms`) the bytes held back now (`TCP_CORK`, `MSG_MORE`)
    /// were first held (see [`crate::socket::cork`]).
    pub held_since: u64,
    /// The monitor admitted the connection into its listener's queue (see
    /// [`Stream::admission`]); false while a full backlog keeps it waiting.
    pub admitted: bool,
    /// A connect refused (`ECONNREFUSED`) or given up by `shutdown`
    /// (`ECONNRESET`) while waiting, not yet reported: `SO_ERROR` or the
    /// next call takes it.
    pub connect_error: libc::c_int,
    /// The monitor refused the connect (its listener went while it waited).
    pub refused: bool,
    /// The program shut the connection down while it was still waiting.
    pub shut_waiting: bool,
    /// The listener an accepted end of a renewable connection came from:
    /// its next round waits in that listener's queue (see `stream::let_go`).
    pub listener: Option<u64>,
}

impl Stream {
    /// A connection just set up (or taken over across exec): established,
    /// nothing sent or blocked yet.
    pub(crate) fn new(link: Link, info: ConnInfo, connect_pending: bool) -> Stream {
        let admitted = link.admission() == ipcd_ring::Admission::Established;
        Stream {
            conn: Conn::established(),
            link,
            info,
            out_blocked: 0,
            connect_pending,
            zerocopy: Zerocopy::default(),
            behind: 0,
            pause_scale: 1,
            monitor: crate::control::monitor(),
            bound: None,
            next_look_ms: 0,
            reported_to: 0,
            held_since: 0,
            admitted,
            connect_error: 0,
            refused: false,
            shut_waiting: false,
            listener: None,
        }
    }

    /// Where the connection stands against its listener's backlog: once
    /// established it stays so (a load of our own flag); before, the
    /// monitor's word in the segment. A refused one notes `ECONNREFUSED`
    /// to report once.
    pub(crate) fn admission(&mut self) -> ipcd_ring::Admission {
        if self.admitted {
            return ipcd_ring::Admission::Established;
        }
        if self.refused || self.shut_waiting {
            return ipcd_ring::Admission::Refused;
        }
        let a = self.link.admission();
        match a {
            ipcd_ring::Admission::Established => self.admitted = true,
            ipcd_ring::Admission::Refused => {
                self.refused = true;
                self.connect_error = libc::ECONNREFUSED;
            }
            ipcd_ring::Admission::Waiting => {}
        }
        a
    }

    /// Shows the peer the bytes held back (`TCP_CORK`, `MSG_MORE`), waking
    /// it if it sleeps.
    pub(crate) fn publish_held(&mut self) {
        if self.link.tx.publish() {
            self.link.ring_peer();
        }
    }

    /// How long a wait on this end may sleep with its doorbell named (see
    /// `wait::Nap`): a peer finds a doorbell through the monitor that made
    /// the end, so with that monitor gone (or replaced) a peer that has
    /// not rung ours yet cannot, and a wait only naps.
    pub(crate) fn nap(&self) -> crate::conn::wait::Nap {
        let orphan = self.monitor != crate::control::monitor() || !crate::conn::peer::monitor_lives(self.monitor);
        crate::conn::wait::Nap::of_end(self.link.is_shared() || orphan)
    }

    /// Before a wait sleeps: closes the peer's side if the peer died where
    /// no monitor could see it (see `conn::peer`), and wakes this end's
    /// other waiters.
    pub(crate) fn look_for_dead_peer(&mut self) {
        let now = crate::conn::wait::now_ms();
        if now < self.next_look_ms {
            return;
        }
        self.next_look_ms = now + crate::conn::peer::LOOK_EVERY_MS;
        if self.link.bury_dead_peer(self.monitor) {
            self.link.ring_own();
        }
    }
}

/// The `MSG_ZEROCOPY` completions of a stream. Our sends always copy, so
/// each completes at once, flagged `SO_EE_CODE_ZEROCOPY_COPIED`, as Linux
/// flags a copied loopback send; consecutive ones merge into one range,
/// as Linux merges them while they wait in the error queue.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Zerocopy {
    /// The id of the next zerocopy send.
    pub next: u32,
    /// Completed ids `lo..=hi` not yet read.
    pub pending: Option<(u32, u32)>,
}

impl Zerocopy {
    /// A zerocopy send moved bytes: it completes now.
    pub(crate) fn sent(&mut self) {
        let id = self.next;
        self.next = id.wrapping_add(1);
        self.pending = Some(match self.pending {
            Some((lo, _)) => (lo, id),
            None => (id, id),
        });
    }
}

/// What the socket is now.
pub(crate) enum State {
    /// Made by `socket()`, maybe bound: `connect` or `listen` decides.
    /// `bound`: a reused kernel socket still bound where the library bound
    /// it for an earlier connection (the program sees it unbound; see
    /// [`crate::socket::reuse`]).
    Fresh { bound: Option<SockAddr> },
    /// Listening in the kernel and registered with the monitor.
    Listening {
        /// Our id for it in the monitor.
        id: u64,
        /// `listen`'s backlog (registered again after exec).
        backlog: libc::c_int,
        /// Readable while connections wait for it here (`None`: no
        /// eventfd could be made; waiters wake on the channel only).
        bell: Option<Arc<ListenerBell>>,
        /// A fork left the kernel socket held by other processes too: the
        /// monitor hands connects only to those that said they accept
        /// (`Serve`), and this one says so at its first accept or wait.
        shared: bool,
        /// `Serve` was sent since the last fork.
        served: bool,
        /// Passed to another process over a Unix socket
        /// ([`crate::socket::setup::pass_listener`]): no longer registered, and
        /// its kernel socket's `O_NONBLOCK` is the program's again. Accepts
        /// take what was queued here before, then the kernel's.
        passed: bool,
        /// The monitor (pid) it is registered with: a new one (after a
        /// restart) is told of it again at the next accept.
        monitor: u32,
    },
    /// An ipcd connection.
    Stream(Box<Stream>),
    /// Its last fd was closed.
    Closed,
}

impl State {
    /// A listener whose kernel socket we keep non-blocking (its accept
    /// watches the kernel and the monitor together), whatever the program
    /// asks: not one passed on, whose description is the program's again.
    pub(crate) fn keeps_kernel_nonblocking(&self) -> bool {
        matches!(self, State::Listening { passed: false, .. })
    }
}

/// A data call in progress on a socket. Linux's call holds a reference to
/// the file, so a last `close` from another thread takes effect only when
/// the call ends; here the call is counted for that only once it is about
/// to wait ([`Call::before_wait`]). Until then the socket's lock orders it
/// against a close: one that comes first leaves the call nothing to work
/// on (`EBADF`, or the count already moved), as if it had come before the
/// call. A call that never waits costs no locked instruction for this.
pub(crate) struct Call<'a> {
    sock: &'a Socket,
    counted: std::cell::Cell<bool>,
}

impl<'a> Call<'a> {
    /// A call on `sock` begins.
    #[inline]
    pub(crate) fn new(sock: &'a Socket) -> Call<'a> {
        Call { sock, counted: std::cell::Cell::new(false) }
    }

    /// The call is about to wait: from now on a last close is left to it.
    /// Call it before the call looks at the socket again.
    #[inline]
    pub(crate) fn before_wait(&self) {
        if !self.counted.replace(true) {
            self.sock.enter_call();
        }
    }

    /// The call ends; true if it must now do the close deferred to it.
    #[inline]
    pub(crate) fn end(self) -> bool {
        self.counted.get() && self.sock.leave_call()
    }
}

/// One socket object, shared by every fd that `dup` made of it.
pub(crate) struct Socket {
    /// Unique for the life of the process (an address or an fd number can
    /// be reused by a later socket; this cannot).
    pub serial: u64,
    /// `AF_INET` or `AF_INET6`.
    pub family: libc::c_int,
    /// What it is; held only for short sections, never while sleeping.
    pub state: Mutex<State>,
    /// `O_NONBLOCK` as the program set it (the kernel fd of a listener is
    /// always non-blocking underneath).
    nonblock: AtomicBool,
    /// Fds referring to this object.
    fds: AtomicU32,
    /// The state is (or was) a stream: data calls are ours. Set once.
    stream: AtomicBool,
    /// `SO_RCVTIMEO` / `SO_SNDTIMEO` in microseconds (0: none).
    rcvtimeo_us: AtomicU64,
    sndtimeo_us: AtomicU64,
    /// `SO_LINGER` on with a zero timeout: close resets.
    linger_zero: AtomicBool,
    /// `TCP_INQ` on: `recvmsg` reports the bytes left to read.
    inq: AtomicBool,
    /// `SO_ZEROCOPY` on: `MSG_ZEROCOPY` sends report completions.
    zerocopy: AtomicBool,
    /// The `SO_TIMESTAMP` kind on (the option's number, which is its
    /// control message's type), 0 for none.
    timestamp: AtomicU32,
    /// The send buffer the program set (`SO_SNDBUF`, as the kernel took
    /// it), 0 if none: what a connection may hold unread by its peer.
    sndbuf: AtomicU32,
    /// The receive buffer the program set (`SO_RCVBUF`, as the kernel took
    /// it), 0 if none: told to the peer, whose send limit it adds to.
    rcvbuf: AtomicU32,
    /// `TCP_CORK` is on: sends hold partial data back (see `cork`).
    corked: AtomicBool,
    /// Its connection may still wait for room in a full backlog: data
    /// calls look at the admission first (see `stream::admitted`).
    may_wait: AtomicBool,
    /// Data calls in progress. A close while one is in progress (another
    /// thread blocked in recv) waits for it to end, as Linux's close only
    /// drops the fd and the blocked call keeps the socket open.
    inflight: AtomicU32,
    /// The last fd was closed during a call: the call's end closes.
    close_deferred: AtomicBool,
    /// Nothing the program did shows on the kernel socket beyond the
    /// options in `resets`: it may serve the next socket (see
    /// [`crate::socket::reuse`]). Set only for sockets this process made.
    clean: AtomicBool,
    /// The hidden fd of the kept kernel socket this one was duplicated
    /// from, still open (-1 for none): its last close keeps it again
    /// without a system call (see [`crate::socket::reuse`]).
    lent: AtomicI32,
    /// Options the program set that are put back to their defaults before
    /// the kernel socket is reused (bits of `reuse::RESETTABLE`).
    resets: AtomicU32,
    /// Options set while it was not a connection, for the connections it
    /// accepts (see [`crate::socket::options`]).
    pub inherited: Inherited,
}

impl Drop for Socket {
    fn drop(&mut self) {
        // A socket forgotten on a path that did not close its lent copy.
        crate::socket::reuse::give_up(self);
    }
}

impl Socket {
    /// A fresh socket of `family`.
    pub(crate) fn new(family: libc::c_int, nonblock: bool, state: State) -> Socket {
        static SERIAL: AtomicU64 = AtomicU64::new(1);
        Socket {
            serial: SERIAL.fetch_add(1, Ordering::Relaxed),
            family,
            stream: AtomicBool::new(matches!(state, State::Stream(_))),
            state: Mutex::new(state),
            nonblock: AtomicBool::new(nonblock),
            fds: AtomicU32::new(0),
            rcvtimeo_us: AtomicU64::new(0),
            sndtimeo_us: AtomicU64::new(0),
            linger_zero: AtomicBool::new(false),
            inq: AtomicBool::new(false),
            zerocopy: AtomicBool::new(false),
            timestamp: AtomicU32::new(0),
            sndbuf: AtomicU32::new(0),
            rcvbuf: AtomicU32::new(0),
            corked: AtomicBool::new(false),
            may_wait: AtomicBool::new(false),
            inflight: AtomicU32::new(0),
            close_deferred: AtomicBool::new(false),
            clean: AtomicBool::new(false),
            lent: AtomicI32::new(-1),
            resets: AtomicU32::new(0),
            inherited: Inherited::default(),
        }
    }

    /// The state, locked. A panic in another thread while holding it does
    /// not make the socket unusable: the state is still consistent (every
    /// update is a single assignment).
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether data calls go through ipcd (the socket is or was a stream).
    #[inline]
    pub(crate) fn is_stream(&self) -> bool {
        self.stream.load(Ordering::Acquire)
    }

    /// Makes `state` (locked by the caller) a stream.
    pub(crate) fn become_stream(&self, state: &mut State, mut stream: Stream) {
        if !stream.admitted {
            self.may_wait.store(true, Ordering::Relaxed);
        }
        stream.link.set_send_limit(self.sndbuf() as usize);
        stream.link.set_window(self.rcvbuf() as usize);
        *state = State::Stream(Box::new(stream));
        self.stream.store(true, Ordering::Release);
    }

    /// Program-visible `O_NONBLOCK`.
    #[inline]
    pub(crate) fn nonblocking(&self) -> bool {
        self.nonblock.load(Ordering::Relaxed)
    }

    /// Sets the program-visible `O_NONBLOCK`.
    pub(crate) fn set_nonblocking(&self, on: bool) {
        self.nonblock.store(on, Ordering::Relaxed);
    }

    /// One more fd refers to this object.
    pub(crate) fn add_fd(&self) {
        self.fds.fetch_add(1, Ordering::Relaxed);
    }

    /// How many fds refer to the socket now.
    pub(crate) fn fd_count(&self) -> u32 {
        self.fds.load(Ordering::Acquire)
    }

    /// One fd less; true when it was the last (the socket is closed now).
    pub(crate) fn drop_fd(&self) -> bool {
        self.fds.fetch_sub(1, Ordering::AcqRel) == 1
    }

    /// `SO_RCVTIMEO` (`None`: wait forever).
    pub(crate) fn rcvtimeo(&self) -> Option<Duration> {
        timeout_of(self.rcvtimeo_us.load(Ordering::Relaxed))
    }

    /// `SO_SNDTIMEO` (`None`: wait forever).
    pub(crate) fn sndtimeo(&self) -> Option<Duration> {
        timeout_of(self.sndtimeo_us.load(Ordering::Relaxed))
    }

    /// Records `SO_RCVTIMEO` (`rcv`) or `SO_SNDTIMEO`: `None` for a
    /// negative one, which makes a wait end at once.
    pub(crate) fn set_timeout(&self, rcv: bool, t: Option<Duration>) {
        let us = match t {
            None => AT_ONCE,
            Some(t) => u64::try_from(t.as_micros()).unwrap_or(AT_ONCE - 1),
        };
        if rcv { &self.rcvtimeo_us } else { &self.sndtimeo_us }.store(us, Ordering::Relaxed);
    }

    /// A data call is about to wait (see [`Call`]).
    #[inline]
    fn enter_call(&self) {
        self.inflight.fetch_add(1, Ordering::SeqCst);
    }

    /// A data call that waited ends; true if it must now do a close
    /// deferred to it.
    #[inline]
    fn leave_call(&self) -> bool {
        // The load spares the common case (no close waiting) a locked swap;
        // SeqCst as in `defer_close`, so one of the two sides sees the other.
        self.inflight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.close_deferred.load(Ordering::SeqCst)
            && self.close_deferred.swap(false, Ordering::SeqCst)
    }

    /// In a forked child: the calls other threads had in progress, and
    /// their sleeps, are not in it (a close would wait for them forever).
    pub(crate) fn forget_threads(&self) {
        self.inflight.store(0, Ordering::SeqCst);
        self.close_deferred.store(false, Ordering::SeqCst);
    }

    /// The last fd is closing: true if a call in progress will do the
    /// close when it ends, false if the caller must do it now. Exactly one
    /// side does it: the closer announces, then looks again.
    pub(crate) fn defer_close(&self) -> bool {
        if self.inflight.load(Ordering::SeqCst) == 0 {
            return false;
        }
        self.close_deferred.store(true, Ordering::SeqCst);
        !(self.inflight.load(Ordering::SeqCst) == 0 && self.close_deferred.swap(false, Ordering::SeqCst))
    }

    /// Whether `SO_LINGER` asks for an abortive close.
    pub(crate) fn linger_zero(&self) -> bool {
        self.linger_zero.load(Ordering::Relaxed)
    }

    /// Records `SO_LINGER`.
    pub(crate) fn set_linger_zero(&self, on: bool) {
        self.linger_zero.store(on, Ordering::Relaxed);
    }

    /// Whether `TCP_INQ` is on.
    pub(crate) fn inq(&self) -> bool {
        self.inq.load(Ordering::Relaxed)
    }

    /// Records `TCP_INQ`.
    pub(crate) fn set_inq(&self, on: bool) {
        self.inq.store(on, Ordering::Relaxed);
    }

    /// Whether `SO_ZEROCOPY` is on.
    pub(crate) fn zerocopy(&self) -> bool {
        self.zerocopy.load(Ordering::Relaxed)
    }

    /// Whether the kernel socket may be reused (see [`Socket::clean`]).
    pub(crate) fn is_clean(&self) -> bool {
        self.clean.load(Ordering::Relaxed)
    }

    /// This process made the kernel socket and nobody else holds it.
    pub(crate) fn set_clean(&self) {
        self.clean.store(true, Ordering::Relaxed);
    }

    /// The program did something to the kernel socket that cannot be
    /// undone, or shared it: never reused, so the hidden copy it was lent
    /// goes now (it would keep the kernel socket open past the program's
    /// last close, and a forked child must not inherit it).
    pub(crate) fn taint(&self) {
        self.clean.store(false, Ordering::Relaxed);
        crate::socket::reuse::give_up(self);
    }

    /// Notes `fd`, the hidden kept socket this one duplicates.
    pub(crate) fn lend(&self, fd: libc::c_int) {
        self.lent.store(fd, Ordering::Relaxed);
    }

    /// The hidden fd this socket was lent, now the caller's.
    pub(crate) fn take_lent(&self) -> Option<libc::c_int> {
        Some(self.lent.swap(-1, Ordering::Relaxed)).filter(|&fd| fd >= 0)
    }

    /// The program set resettable option `bit` (see `reuse::RESETTABLE`).
    pub(crate) fn note_reset(&self, bit: u32) {
        self.resets.fetch_or(1 << bit, Ordering::Relaxed);
    }

    /// The resettable options the program set.
    pub(crate) fn resets(&self) -> u32 {
        self.resets.load(Ordering::Relaxed)
    }

    /// Records `SO_ZEROCOPY`.
    pub(crate) fn set_zerocopy(&self, on: bool) {
        self.zerocopy.store(on, Ordering::Relaxed);
    }

    /// The `SO_TIMESTAMP` kind on (see [`Socket::timestamp`]'s field).
    pub(crate) fn timestamp(&self) -> libc::c_int {
        self.timestamp.load(Ordering::Relaxed) as libc::c_int
    }

    /// The send buffer the program set (0: none).
    pub(crate) fn sndbuf(&self) -> u32 {
        self.sndbuf.load(Ordering::Relaxed)
    }

    /// Records the send buffer the kernel took for `SO_SNDBUF`.
    pub(crate) fn set_sndbuf(&self, bytes: u32) {
        self.sndbuf.store(bytes, Ordering::Relaxed);
    }

    /// Whether the connection may still wait for admission (one load).
    pub(crate) fn may_wait(&self) -> bool {
        self.may_wait.load(Ordering::Relaxed)
    }

    /// The connection was admitted (or gave up): calls stop looking.
    pub(crate) fn admission_settled(&self) {
        self.may_wait.store(false, Ordering::Relaxed);
    }

    /// Whether `TCP_CORK` is on.
    pub(crate) fn corked(&self) -> bool {
        self.corked.load(Ordering::Relaxed)
    }

    /// Records `TCP_CORK` turned on or off.
    pub(crate) fn set_corked(&self, on: bool) {
        self.corked.store(on, Ordering::Relaxed);
    }

    /// The receive buffer the program set (0: none).
    pub(crate) fn rcvbuf(&self) -> u32 {
        self.rcvbuf.load(Ordering::Relaxed)
    }

    /// Records the receive buffer the kernel took for `SO_RCVBUF`.
    pub(crate) fn set_rcvbuf(&self, bytes: u32) {
        self.rcvbuf.store(bytes, Ordering::Relaxed);
    }

    /// Records a `SO_TIMESTAMP` kind turned on (`name`) or off (0): the
    /// last one set decides, and turning any off turns all off (Linux's
    /// `sock_set_timestamp`).
    pub(crate) fn set_timestamp(&self, name: libc::c_int) {
        self.timestamp.store(name as u32, Ordering::Relaxed);
    }
}

/// `TCP_INQ` (and its control message's type, `TCP_CM_INQ`), which the
/// libc crate does not name.
pub(crate) const TCP_INQ: libc::c_int = 36;

/// A stored timeout that ends a wait at once (set negative).
const AT_ONCE: u64 = u64::MAX;

/// A stored timeout in microseconds: 0 waits for ever, [`AT_ONCE`] not at all.
fn timeout_of(us: u64) -> Option<Duration> {
    match us {
        0 => None,
        AT_ONCE => Some(Duration::ZERO),
        us => Some(Duration::from_micros(us)),
    }
}
