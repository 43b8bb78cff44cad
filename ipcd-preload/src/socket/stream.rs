//! The data path of an ipcd connection: send, receive, shutdown and close
//! of a [`Stream`], answering as Linux TCP would (the state machine in
//! ipcd-proto decides, this module moves the bytes and waits).

use std::time::Instant;

use ipcd_proto::{CloseAction, Errno, How, Phase, Recv, Ring, Send};
use ipcd_ring::Wait;

use ipcd_proto::message::Request;

use crate::conn::wait::{self, Spun, Woken};
use crate::control;
use crate::socket::{cork, Call, Socket, State, Stream};
use crate::sys::iov::IoCursor;
use crate::sys::signals::Caught;

/// A call's outcome: bytes moved, or an errno.
pub(crate) type IoResult = Result<usize, libc::c_int>;

/// `MSG_*` flags that change how we behave.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Flags {
    /// `MSG_DONTWAIT`, or the socket is non-blocking.
    pub nonblock: bool,
    /// `MSG_PEEK`.
    pub peek: bool,
    /// `MSG_WAITALL`.
    pub waitall: bool,
    /// `MSG_NOSIGNAL`.
    pub nosignal: bool,
    /// `MSG_TRUNC` on a receive: discard the bytes instead of copying them.
    pub trunc: bool,
    /// `MSG_ZEROCOPY` on a send of a socket with `SO_ZEROCOPY`.
    pub zerocopy: bool,
    /// `MSG_MORE`, or `TCP_CORK` on: a send's partial data is held back.
    pub more: bool,
}

impl Flags {
    /// From a call's `flags` and the socket's mode.
    pub(crate) fn new(sock: &Socket, flags: libc::c_int) -> Flags {
        Flags {
            nonblock: sock.nonblocking() || flags & libc::MSG_DONTWAIT != 0,
            peek: flags & libc::MSG_PEEK != 0,
            waitall: flags & libc::MSG_WAITALL != 0,
            nosignal: flags & libc::MSG_NOSIGNAL != 0,
            trunc: flags & libc::MSG_TRUNC != 0,
            zerocopy: flags & libc::MSG_ZEROCOPY != 0 && sock.zerocopy(),
            more: flags & libc::MSG_MORE != 0 || sock.corked(),
        }
    }
}

fn errno(e: Errno) -> libc::c_int {
    e.code()
}

impl Stream {
    /// What the rings say, or — on a ring the peer corrupted — the
    /// connection is reset and the state machine is told.
    fn observe(&mut self) -> Ring {
        match self.link.observe() {
            Some(r) => r,
            None => {
                self.abort();
                Ring { peer_reset: true, ..Ring::default() }
            }
        }
    }

    /// Resets our end: the peer sees `ECONNRESET`, we stop reading.
    fn abort(&mut self) {
        self.conn.on_abort();
        let w = self.link.tx.reset() | self.link.rx.close();
        if w {
            self.link.ring_peer();
        }
    }

    /// Brings the rings in line with the state machine after a call: a FIN
    /// goes out once our writing side is shut; the reader closes once we no
    /// longer read.
    fn settle(&mut self, fin: bool) {
        let mut wake = false;
        if fin {
            wake |= self.link.tx.close();
        }
        if self.conn.stops_reading() {
            wake |= self.link.rx.close();
        }
        if wake {
            self.link.ring_peer();
        }
    }
}

/// Which way a blocked call waits.
#[derive(Clone, Copy)]
enum Dir {
    /// For input; `peer_here`: its writer last ran on this CPU.
    Recv { peer_here: bool },
    /// For room for this many bytes.
    Send(usize),
}

/// Runs `f` on the socket's stream, inside the end's locks if another
/// process shares it. `Err(EBADF)` when it was closed meanwhile.
pub(crate) fn with_stream<R>(sock: &Socket, f: impl FnOnce(&mut Stream) -> R) -> Result<R, libc::c_int> {
    match &mut *sock.lock() {
        State::Stream(s) => Ok(in_link(s, f)),
        _ => Err(libc::EBADF),
    }
}

/// Runs `f` on a stream whose socket lock the caller holds, inside the
/// end's locks if another process shares it.
pub(crate) fn in_link<R>(s: &mut Stream, f: impl FnOnce(&mut Stream) -> R) -> R {
    s.link.enter();
    let r = f(s);
    s.link.leave();
    r
}

/// Blocks until the ring may let `dir` progress: spins first, then sleeps on
/// the doorbell with the ring's protocol. `Err` is the errno to give up with.
fn block(sock: &Socket, call: &Call<'_>, dir: Dir, deadline: Option<Instant>) -> Result<(), libc::c_int> {
    call.before_wait();
    let ready = |s: &mut Stream| match dir {
        Dir::Recv { .. } => {
            s.link.rx.readable().map_or(true, |n| n > 0) || s.link.rx.peer_state() != ipcd_ring::PeerState::Open
        }
        Dir::Send(want) => {
            s.link.send_room().map_or(true, |n| n >= want)
                || s.link.tx.is_reader_closed()
                || s.link.rx.peer_state() == ipcd_ring::PeerState::Reset
        }
    };
    // Linux restarts a socket call after an SA_RESTART handler, unless the
    // socket has a timeout.
    let (caught, restartable) = (Caught::now(), deadline.is_none());
    let yield_first = matches!(dir, Dir::Recv { peer_here: true });
    match wait::spin(yield_first, || with_stream(sock, ready).unwrap_or(true), || caught.interrupts(restartable)) {
        Spun::Ready => return Ok(()),
        Spun::Interrupted => return Err(libc::EINTR),
        Spun::Done => {}
    }
    // This thread's doorbell, named in the ring's waiting line while it
    // sleeps (registered with the monitor at its first sleep).
    let me = crate::conn::bell::Sleeper::this_thread();
    loop {
        let prepared = with_stream(sock, |s| {
            s.look_for_dead_peer();
            let waiters = match dir {
                Dir::Recv { .. } => s.link.rx.waiters(),
                Dir::Send(_) => s.link.tx.waiters(),
            };
            // Before arming: arming publishes the name.
            let named = me.as_ref().is_some_and(|m| waiters.name(m.id));
            let w = match dir {
                Dir::Recv { .. } => s.link.rx.prepare_wait(),
                Dir::Send(want) => s.link.prepare_send_wait(want),
            };
            let nap = if named { s.nap() } else { wait::Nap::Unnamed };
            (w, nap)
        })?;
        let unname = || {
            let recv = matches!(dir, Dir::Recv { .. });
            let _ = with_stream(sock, |s| s.link.settle_wait(me.as_ref().map(|m| m.id), recv, !recv));
        };
        let (Ok(Wait::Sleep), nap) = prepared else {
            unname();
            return Ok(());
        };
        if caught.interrupts(restartable) {
            unname();
            return Err(libc::EINTR);
        }
        // After the sleep the flag is cleared only if no other sleeper
        // (here or in a process sharing the end) is named: one may still
        // rely on it (a plain clear lost its wake-up: four threads sending
        // on one socket hung).
        let until = wait::nap_until(cork::cap(deadline), nap);
        let woken = crate::conn::bell::Sleeper::sleep(me.as_ref(), until);
        unname();
        return match woken {
            Woken::Retry => Ok(()),
            // Only a nap ended: arm and sleep again, without a spin (an
            // idle end that spun at each nap cost its thread 50 µs a
            // second; thousands of threads, a core).
            Woken::Timeout if deadline.is_none_or(|d| Instant::now() < d) => continue,
            Woken::Timeout => Err(libc::EAGAIN),
            // Only SA_RESTART handlers ran (or ones we did not install): the
            // call goes on, as Linux restarts it.
            Woken::Interrupted if restartable && !caught.interrupts(true) => Ok(()),
            Woken::Interrupted => Err(libc::EINTR),
        };
    }
}

/// The CPU this thread runs on (glibc reads it from rseq: no system
/// call), or [`ipcd_ring::NO_CPU`].
fn current_cpu() -> u32 {
    // SAFETY: no arguments; async-signal-safe, never allocates.
    u32::try_from(unsafe { libc::sched_getcpu() }).unwrap_or(ipcd_ring::NO_CPU)
}

/// What a call that moved `done` bytes answers when it stops on `e`: the
/// count if it moved any (Linux's rule for a partial transfer), else `e`.
pub(crate) fn moved_or(done: usize, e: libc::c_int) -> IoResult {
    if done > 0 {
        Ok(done)
    } else {
        Err(e)
    }
}

fn deadline(t: Option<std::time::Duration>) -> Option<Instant> {
    t.map(|t| Instant::now() + t)
}

/// Before a data call on a connection that may still wait for room in its
/// listener's backlog: on with it once admitted; a non-blocking call
/// answers `EAGAIN` while it waits, a blocking one waits (as Linux's wait
/// for the connect to complete); a refused or given-up connect answers
/// its error once, then `ENOTCONN` (`EPIPE` for a send).
fn admitted(sock: &Socket, flags: &Flags, sending: bool) -> Result<(), libc::c_int> {
    if !sock.may_wait() {
        return Ok(());
    }
    let deadline = deadline(if sending { sock.sndtimeo() } else { sock.rcvtimeo() });
    loop {
        let (a, e) = with_stream(sock, |s| {
            let a = s.admission();
            (a, if a == ipcd_ring::Admission::Refused { std::mem::take(&mut s.connect_error) } else { 0 })
        })?;
        match a {
            ipcd_ring::Admission::Established => {
                sock.admission_settled();
                return Ok(());
            }
            ipcd_ring::Admission::Refused if e != 0 => return Err(e),
            ipcd_ring::Admission::Refused => return Err(if sending { libc::EPIPE } else { libc::ENOTCONN }),
            ipcd_ring::Admission::Waiting if flags.nonblock => return Err(libc::EAGAIN),
            ipcd_ring::Admission::Waiting => wait_admission(sock, deadline)?,
        }
    }
}

/// Sleeps until the monitor admits or refuses the waiting connection (it
/// rings the connector's doorbell), `deadline` passes (`EAGAIN`) or a
/// handler interrupts (`EINTR`). Looks again at least every 100 ms.
pub(crate) fn wait_admission(sock: &Socket, deadline: Option<Instant>) -> Result<(), libc::c_int> {
    let caught = Caught::now();
    let me = crate::conn::bell::Sleeper::this_thread();
    loop {
        // Named where the monitor rings when it admits or refuses it.
        let a = with_stream(sock, |s| {
            if let Some(m) = &me {
                s.link.rx.waiters().name(m.id);
            }
            s.admission()
        })?;
        if a != ipcd_ring::Admission::Waiting {
            if let Some(m) = &me {
                let _ = with_stream(sock, |s| s.link.rx.waiters().unname(m.id));
            }
            return Ok(());
        }
        if caught.interrupts(deadline.is_none()) {
            return Err(libc::EINTR);
        }
        let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if left.is_some_and(|l| l.is_zero()) {
            return Err(libc::EAGAIN);
        }
        let nap = left.map_or(std::time::Duration::from_millis(100), |l| l.min(std::time::Duration::from_millis(100)));
        let until = Some(Instant::now() + nap);
        let _ = crate::conn::bell::Sleeper::sleep(me.as_ref(), until);
    }
}

/// A blocking connect that found its listener's queue full: waits for
/// the monitor's answer, as Linux's connect waits out its SYN retries.
/// `ECONNREFUSED` if the listener went; `EINPROGRESS` after `SO_SNDTIMEO`
/// (the connect goes on, and a later `connect` reports it), `EINTR`.
pub(crate) fn wait_connected(sock: &Socket) -> Result<(), libc::c_int> {
    match wait_admission(sock, deadline(sock.sndtimeo())) {
        Ok(()) => {}
        Err(libc::EAGAIN) => {
            let _ = with_stream(sock, |s| s.connect_pending = true);
            return Err(libc::EINPROGRESS);
        }
        Err(e) => return Err(e),
    }
    with_stream(sock, |s| match s.admission() {
        ipcd_ring::Admission::Refused => {
            Err(Some(std::mem::take(&mut s.connect_error)).filter(|&e| e != 0).unwrap_or(libc::ECONNREFUSED))
        }
        _ => Ok(()),
    })?
}

/// `send`/`write`/`sendmsg` of the bytes in `iov`.
///
/// A blocking send of up to a quarter of the ring goes in whole (it waits
/// for room for all of it), so such sends from several threads never
/// interleave. A larger one goes in pieces as room appears, as Linux's
/// does: waiting for room for all of it kept writer and reader taking
/// turns instead of overlapping (1 MiB writes into a 1 MiB ring ran at the
/// kernel's speed).
///
/// # Safety
/// `iov` must describe readable memory.
pub(crate) unsafe fn send(sock: &Socket, call: &Call<'_>, iov: &[libc::iovec], flags: Flags) -> IoResult {
    admitted(sock, &flags, true)?;
    let mut cur = IoCursor::new(iov);
    let total = cur.total();
    let deadline = deadline(sock.sndtimeo());
    let mut done = 0;
    // A buffer faulted part way: what went in before it is the answer.
    let mut short = false;
    loop {
        let looked = with_stream(sock, |s| {
            let cap = s.link.send_capacity();
            let whole = !flags.nonblock && total <= cap / 4;
            let mut ring = s.observe();
            if ring.writable < total - done {
                // The cached view of the reader's progress may be stale: a
                // send that has room must not come back short (Linux sends
                // it whole, and programs count on that).
                ring.writable = s.link.send_room().unwrap_or(0);
            }
            if let Some(burst) = s.link.send_burst().filter(|_| flags.nonblock) {
                // A non-blocking send fills a send buffer's worth at most,
                // as Linux's fills its send queue before the receiver
                // takes any of it.
                ring.writable = ring.writable.min(burst.saturating_sub(done));
            }
            // A send to a peer that no longer reads resets this end; one
            // that faults sent nothing, so the reset has not happened yet.
            let before = ring.peer_reader_closed.then(|| s.conn.clone());
            let step = match s.conn.send(&ring, total - done, flags.nosignal) {
                Send::Write(n) if whole && n < total => Err(None),
                // Linux copies from the buffers and faults on a bad one.
                Send::Write(n) => match cur.accessible(n, false) {
                    0 if n > 0 => Err(Some((libc::EFAULT, false))),
                    k => {
                        short = k < n;
                        write(s, &mut cur, k, flags.more)
                    }
                },
                // Linux copies these bytes too before the peer's reset
                // throws them away: a bad buffer faults all the same.
                Send::Discard(n) => match cur.accessible(n, false) {
                    0 if n > 0 => {
                        if let Some(b) = before {
                            s.conn = b;
                        }
                        Err(Some((libc::EFAULT, false)))
                    }
                    k => {
                        short = k < n;
                        cur.skip(k);
                        if s.link.tx.reset() {
                            s.link.ring_peer();
                        }
                        Ok(k)
                    }
                },
                Send::WouldBlock => Err(None),
                Send::Fail { errno: e, sigpipe } => Err(Some((errno(e), sigpipe))),
            };
            if done == 0 && flags.zerocopy && step.is_ok_and(|n| n > 0) {
                // One completion per send call that moved bytes.
                s.zerocopy.sent();
            }
            (step, cap)
        });
        // Closed by another thread since the last look (see `Call`): what
        // went out still counts.
        let (step, cap) = match looked {
            Ok(l) => l,
            Err(e) => return moved_or(done, e),
        };
        match step {
            Ok(n) => {
                done += n;
                if done >= total || short {
                    return Ok(done);
                }
            }
            Err(Some((e, sigpipe))) => {
                if done > 0 {
                    return Ok(done);
                }
                if sigpipe {
                    raise_sigpipe();
                }
                return Err(e);
            }
            Err(None) => {
                if flags.nonblock {
                    let _ = with_stream(sock, |s| s.out_blocked += 1);
                    return moved_or(done, libc::EAGAIN);
                }
                // Room for all of a whole send; for a larger one a quarter
                // ring at least, so it moves in batches instead of waking
                // per byte freed.
                let want = if total <= cap / 4 { total } else { (total - done).min(cap / 4) }.max(1);
                if let Err(e) = block(sock, call, Dir::Send(want), deadline) {
                    return moved_or(done, e);
                }
            }
        }
    }
}

/// Copies `n` bytes (which the ring has room for) from the cursor; with
/// `more` (`MSG_MORE`, `TCP_CORK`) held back as Linux holds a partial
/// segment (see `cork`), except on a shared end.
fn write(s: &mut Stream, cur: &mut IoCursor<'_>, n: usize, more: bool) -> Result<usize, Option<(libc::c_int, bool)>> {
    let hold = more && !s.link.is_shared();
    let was_held = s.link.tx.held();
    // SAFETY: the caller's iovecs are readable (contract of `send`).
    let moved = unsafe { cur.write_to(&mut s.link.tx, n, hold) };
    if hold {
        // A full segment goes, as Linux sends one; so does half a ring,
        // which a reader must get before a writer fills the rest.
        if s.link.tx.held() >= cork::SEGMENT.min(s.link.tx.capacity() / 2) {
            s.publish_held();
        } else if was_held == 0 && s.link.tx.held() > 0 {
            s.held_since = crate::conn::wait::now_ms();
            cork::note_held(s.held_since);
        }
    }
    // A reader that sends is not one side of a one-way stream.
    s.set_behind(0);
    s.pause_scale = 1;
    Ok(s.moved(moved, n))
}

impl Stream {
    /// Notes how many small reads in a row found bytes waiting, and tells
    /// the writer whether this reader now reads in batches (it then leaves
    /// out the copy of its last bytes, which a batch never uses: 8-byte
    /// writes ~8 % faster). A load of our own line when nothing changes.
    fn set_behind(&mut self, behind: u8) {
        self.behind = behind;
        self.link.rx.set_batching(behind >= BEHIND);
    }

    /// A read that took bytes: `few` when they were a few small ones that
    /// were already waiting (the reader is behind a stream of small
    /// writes); `after_pause` when a pause came just before it, which then
    /// was too short and doubles.
    #[inline]
    fn note_read(&mut self, few: bool, after_pause: bool) {
        self.set_behind(if few { self.behind.saturating_add(1) } else { 0 });
        self.pause_scale = match (few, after_pause) {
            (false, _) => 1,
            (true, true) => (self.pause_scale * 2).min(MAX_PAUSE_SCALE),
            (true, false) => self.pause_scale,
        };
    }

    /// A read that found nothing and is about to wait, here or
    /// (non-blocking) in poll/epoll: not behind any more; says where we run,
    /// for a peer that waits for us, and answers whether the peer last
    /// waited on our CPU (our own wait then yields at once).
    #[inline]
    fn note_empty(&mut self) -> bool {
        self.set_behind(0);
        self.pause_scale = 1;
        let cpu = current_cpu();
        self.link.tx.note_cpu(cpu);
        cpu != ipcd_ring::NO_CPU && self.link.rx.writer_cpu() == cpu
    }

    /// After `n` bytes were copied through a ring: wakes the peer if it
    /// asked; a ring that turned out corrupt resets the connection and
    /// counts nothing moved.
    fn moved(&mut self, r: Result<bool, ipcd_ring::Error>, n: usize) -> usize {
        match r {
            Ok(wake) => {
                if wake {
                    self.link.ring_peer();
                }
                n
            }
            Err(_) => {
                self.abort();
                0
            }
        }
    }
}

/// Reads no larger than this, from bytes already waiting, mark a reader
/// that is behind a writer of small writes (see `recv`).
const SMALL_READ: usize = 4096;

/// After this many such reads in a row, a receive pauses before it looks.
/// Two, not one: a reader that empties the socket until `EAGAIN` (every
/// edge-triggered epoll loop) finds bytes waiting once per event, and
/// would pause before each `EAGAIN`.
const BEHIND: u8 = 2;

/// The longest pause, in multiples of the configured batch (32 × 500 ns
/// = 16 µs by default). A look costs the writer more than a write does
/// (its next store waits for the line the look pulled across), so a
/// pause has to cover many writes to pay (8-byte writes, medians of 8
/// runs: 6.7 M/s pausing 500 ns, 7.9 pausing 8 µs, 8.6 doubling).
const MAX_PAUSE_SCALE: u8 = 32;

/// What one look at the ring in `recv` came to.
enum Look {
    /// Bytes moved.
    Moved(usize),
    /// End of stream.
    End,
    /// Nothing moved: the errno (`EAGAIN` when nothing is there yet).
    Fail(libc::c_int),
    /// Not looked yet: the reader pauses first, this many times the
    /// configured batch.
    Pause(u8),
}

/// `recv`/`read`/`recvmsg` into the buffers of `iov`.
///
/// A reader that keeps finding a few bytes already waiting, with nothing
/// sent in between, is behind a peer streaming small writes: each of its
/// looks pulls the writer's line (`tail`) across, and the writer's next
/// write has to pull it back, so both go at one line transfer per write.
/// After [`BEHIND`] such reads in a row, a receive pauses
/// (`IPCD_BATCH_NS`) before it looks and then takes what the writer wrote
/// meanwhile in one go (8-byte writes: ~6.7 to ~9 M/s). While what it
/// then finds is still a few bytes, each pause is twice the last, up to
/// [`MAX_PAUSE_SCALE`] times the batch. A reader that waits for its data,
/// or that sends between its reads (every request and reply exchange),
/// never pauses, and the next pause after it is back to one batch.
///
/// # Safety
/// `iov` must describe writable memory.
pub(crate) unsafe fn recv(sock: &Socket, call: &Call<'_>, iov: &[libc::iovec], flags: Flags) -> IoResult {
    admitted(sock, &flags, false)?;
    let mut cur = IoCursor::new(iov);
    // A zero-length receive is an ordinary one that copies nothing: 0 with
    // data queued or at end of stream, EAGAIN or a wait on an empty socket
    // (tcp_recvmsg's loop runs once whatever the length; the differential
    // test found this).
    let total = cur.total();
    let deadline = deadline(sock.rcvtimeo());
    // As in `send`: a buffer faulted part way.
    let mut short = false;
    let batch = crate::sys::config::get().batch;
    // No wait so far: what a look finds was already there.
    let mut waited = false;
    // At most one pause per call; none for a peek, none with batching off.
    let mut paused = flags.peek || batch.is_zero();
    // This call paused, and the next look is the one after the pause.
    let mut paused_now = false;
    // The writer of our input last ran on our CPU (see `block`).
    let mut peer_here = false;
    let mut done = 0;
    loop {
        let looked = with_stream(sock, |s| {
            if !paused && s.behind >= BEHIND {
                return Look::Pause(s.pause_scale);
            }
            let ring = s.observe();
            match s.conn.recv(&ring, total - done) {
                // MSG_TRUNC: TCP drops (or with PEEK, counts) the bytes, no
                // buffer needed.
                Recv::Read(n) if flags.trunc => {
                    let moved = if flags.peek { Ok(false) } else { s.link.rx.consume(n).map(|t| t.wake_peer) };
                    Look::Moved(s.moved(moved, n))
                }
                Recv::Read(n) => {
                    let n = match cur.accessible(n, true) {
                        0 if n > 0 => return Look::Fail(libc::EFAULT),
                        k => {
                            short = k < n;
                            k
                        }
                    };
                    if !flags.peek {
                        s.note_read(!waited && n < total - done && n <= SMALL_READ, paused_now);
                    }
                    // SAFETY: the caller's iovecs are writable.
                    let moved = unsafe { cur.read_from(&mut s.link.rx, n, flags.peek) };
                    Look::Moved(s.moved(moved, n))
                }
                Recv::Eof => Look::End,
                Recv::WouldBlock => {
                    peer_here = s.note_empty();
                    Look::Fail(libc::EAGAIN)
                }
                Recv::Fail(e) => Look::Fail(errno(e)),
            }
        });
        // As in `send`: what was read before a close still counts.
        let step = match looked {
            Ok(l) => l,
            Err(e) => return moved_or(done, e),
        };
        match step {
            Look::Moved(n) => {
                done += n;
                // MSG_WAITALL waits for the whole buffer (not with PEEK, as Linux).
                if !flags.waitall || flags.peek || done >= total || short {
                    return Ok(done);
                }
            }
            Look::End => return Ok(done),
            Look::Fail(libc::EAGAIN) => {
                if flags.nonblock {
                    return moved_or(done, libc::EAGAIN);
                }
                if let Err(e) = block(sock, call, Dir::Recv { peer_here }, deadline) {
                    return moved_or(done, e);
                }
                waited = true;
            }
            Look::Fail(e) => return moved_or(done, e),
            Look::Pause(scale) => {
                wait::pause_for(batch.saturating_mul(u32::from(scale)));
                paused = true;
                paused_now = true;
            }
        }
    }
}

/// `shutdown(how)`.
pub(crate) fn shutdown(sock: &Socket, how: libc::c_int) -> Result<(), libc::c_int> {
    let how = How::from_raw(how).map_err(errno)?;
    let gave_up = with_stream(sock, |s| {
        if s.admission() != ipcd_ring::Admission::Waiting {
            return false;
        }
        // A connect still waiting is torn down, as Linux's in SYN_SENT:
        // POLLHUP|POLLERR and ECONNRESET. The reset rings tell the monitor
        // to drop it from the queue it waits for.
        s.shut_waiting = true;
        s.connect_error = libc::ECONNRESET;
        if s.link.tx.reset() | s.link.rx.close() {
            s.link.ring_peer();
        }
        s.link.ring_own();
        true
    })?;
    if gave_up {
        sock.admission_settled();
        return Ok(());
    }
    with_stream(sock, |s| {
        let ring = s.observe();
        let (res, fin) = s.conn.shutdown(&ring, how);
        s.settle(fin);
        // Wake our own blocked readers and writers: they return now, as on Linux.
        res.map(|()| s.link.ring_own())
    })?
    .map_err(errno)
}

/// The last fd of a stream closed in this process. If another process
/// (a fork) still holds the end, nothing goes out; otherwise FIN or reset
/// as Linux would. Returns the connection id, for the monitor.
fn close(stream: &mut Stream, linger_zero: bool) -> u64 {
    if !stream.link.release_holder() {
        return stream.link.conn;
    }
    stream.link.enter();
    let ring = stream.observe();
    let wake = match stream.conn.close(&ring, linger_zero) {
        CloseAction::Fin => stream.link.tx.close(),
        CloseAction::Reset => stream.link.tx.reset(),
        CloseAction::Quiet => false,
    } | stream.link.rx.close();
    if wake {
        stream.link.ring_peer();
    }
    // Our own doorbell is not rung: no call of ours is in progress on the
    // end (the close waits for them), and a poll elsewhere sleeps on as
    // Linux's does. Ringing it left a token that made the next connection
    // to reuse the segment wake for nothing.
    stream.link.leave();
    stream.link.conn
}

/// Lets go of this process's end for good (its last fd closed, or an
/// exec closed it). A shared end (a fork, an exec or a pass gave other
/// processes a hold on it) goes through the monitor (`Release`), which
/// gives this process's share of the holder count back and closes the end
/// if it was the last: each share is then given back exactly once, even if
/// this process dies before the monitor reads anything more of it (a share
/// given back here and again at its death closed the end under a holder
/// still writing: the tail of a fork-and-exec relay was lost). Otherwise,
/// or with no monitor to tell, the share goes here and the last closes the
/// end as Linux's last close does (as also when the monitor that knew the
/// end is gone); the monitor hears of it with `Close`
/// (`keep`: the segment stays mapped for reuse if `may_keep` and there is
/// room).
pub(crate) fn let_go(mut stream: Stream, linger_zero: bool, may_keep: bool) {
    let (conn, side) = (stream.info.conn, stream.info.side);
    // Only the monitor that knows the end (not a new one after a restart).
    let release = Request::Release { conn, side, abort: linger_zero };
    if stream.link.is_shared() && control::notify_monitor(stream.monitor, &release) {
        return;
    }
    close(&mut stream, linger_zero);
    if let Some(req) = crate::socket::held::let_go(&stream) {
        let _ = control::with(|c| c.notify(&req));
    }
    // Only the monitor that made it knows the connection, and may reuse
    // its segment.
    let known = stream.monitor == control::monitor();
    let monitor = stream.monitor;
    let Stream { link, info, listener, .. } = stream;
    // A renewable one (a standby's, not shared) tells nobody: the two
    // processes renew it for their next connection.
    // (Finishing moves the ticket on: only when it is to be renewed.)
    if let Some(state) = (known && may_keep).then(|| link.finish()).flatten() {
        let finished = link.into_finished(state);
        let _ = control::with(|c| {
            c.renewed(info, listener, finished);
            Ok(())
        });
        return;
    }
    let keep = may_keep && known && link.keep();
    if known {
        let _ = control::notify_monitor(monitor, &Request::Close { conn, side, keep });
    }
}

/// What changes when something new arrives from the peer: bytes ever
/// received, and the peer's state (FIN, reset). Edge-triggered readiness
/// reports an event each time it changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Edge {
    /// The writer's `tail` as last read.
    pub tail: u64,
    /// The writer's state as last read.
    pub state: ipcd_ring::PeerState,
    /// Sends that found no room so far ([`Stream::out_blocked`]).
    pub out: u64,
}

impl Default for Edge {
    fn default() -> Edge {
        Edge { tail: 0, state: ipcd_ring::PeerState::Open, out: 0 }
    }
}

/// The poll mask (`tcp_poll`'s answer) from the rings, and the edge.
pub(crate) fn poll(sock: &Socket) -> Result<(u32, Edge), libc::c_int> {
    with_stream(sock, Stream::poll)
}

impl Stream {
    /// The poll mask now and the edge (the caller holds the socket's lock
    /// and has entered the link).
    pub(crate) fn poll(&mut self) -> (u32, Edge) {
        let edge = |s: &Stream| Edge { tail: s.link.rx.tail_seen(), state: s.link.rx.peer_state(), out: s.out_blocked };
        match self.admission() {
            ipcd_ring::Admission::Established => {}
            // Still connecting, as a client whose SYN found a full queue.
            ipcd_ring::Admission::Waiting => return (0, edge(self)),
            // Linux's masks: given up by shutdown, or refused.
            ipcd_ring::Admission::Refused => {
                let hup = (libc::POLLOUT | libc::POLLERR | libc::POLLHUP) as u32;
                let mask = if self.shut_waiting { hup } else { hup | libc::POLLIN as u32 };
                return (mask, edge(self));
            }
        }
        let ring = self.observe();
        let mut mask = self.conn.poll(&ring).bits();
        if self.zerocopy.pending.is_some() {
            mask |= libc::POLLERR as u32;
        }
        (mask, Edge { tail: self.link.rx.tail_seen(), state: self.link.rx.peer_state(), out: self.out_blocked })
    }
}

/// `getsockopt(SO_ERROR)`: the pending error, cleared.
pub(crate) fn so_error(sock: &Socket) -> Result<libc::c_int, libc::c_int> {
    with_stream(sock, |s| {
        s.admission();
        if s.connect_error != 0 {
            return std::mem::take(&mut s.connect_error);
        }
        let ring = s.observe();
        s.conn.so_error(&ring).map_or(0, errno)
    })
}

/// Whether this stream connected and no byte has moved on it yet either
/// way: Linux's connecting end reports a smaller `TCP_MAXSEG` until then.
pub(crate) fn fresh_connector(sock: &Socket) -> Result<bool, libc::c_int> {
    with_stream(sock, |s| {
        s.info.side == ipcd_proto::message::Side::A && s.link.sent_total() == 0 && s.link.received_total() == 0
    })
}

/// Takes the pending `MSG_ZEROCOPY` completions (`recvmsg(MSG_ERRQUEUE)`).
pub(crate) fn take_zerocopy(sock: &Socket) -> Result<Option<(u32, u32)>, libc::c_int> {
    with_stream(sock, |s| s.zerocopy.pending.take())
}

/// The connection's TCP state now, from the rings: what `getpeername` and
/// the options whose answer depends on it go by (the kernel socket under
/// the fd never connects).
pub(crate) fn phase(sock: &Socket) -> Result<Phase, libc::c_int> {
    with_stream(sock, |s| {
        let ring = s.observe();
        s.conn.sync(&ring);
        s.conn.phase()
    })
}

/// What `TCP_INFO` reports of the connection (the kernel socket under it
/// never connected): Linux's state number, and its sequence-space counts:
/// bytes acknowledged (everything sent is in the peer's buffer; the
/// connector's SYN and our FIN count, as on Linux) and received (the
/// peer's FIN counts).
pub(crate) fn tcp_info(sock: &Socket) -> Result<(u8, u64, u64), libc::c_int> {
    with_stream(sock, |s| {
        let ring = s.observe();
        s.conn.sync(&ring);
        let syn = u64::from(s.info.side == ipcd_proto::Side::A);
        let acked = s.link.sent_total() + syn + u64::from(s.conn.fin_sent());
        let received = s.link.received_total() + u64::from(ring.peer_fin);
        (s.conn.tcp_state(), acked, received)
    })
}

/// `FIONREAD`: bytes readable now.
pub(crate) fn readable(sock: &Socket) -> Result<usize, libc::c_int> {
    with_stream(sock, |s| s.link.rx.readable().unwrap_or(0))
}

/// `SIOCOUTQ`: bytes sent and not yet read by the peer.
pub(crate) fn unread_by_peer(sock: &Socket) -> Result<usize, libc::c_int> {
    with_stream(sock, |s| s.link.tx.unread().unwrap_or(0))
}

/// SIGPIPE for the calling thread, as the kernel raises it.
fn raise_sigpipe() {
    // SAFETY: tgkill to ourselves with a valid signal.
    unsafe {
        let (pid, tid) = (libc::getpid(), libc::gettid());
        crate::sys::real::syscall(libc::SYS_tgkill, pid.into(), tid.into(), libc::SIGPIPE.into(), 0, 0, 0)
    };
}
