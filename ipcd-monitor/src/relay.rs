//! Relays: a connection end served over kernel TCP for a program that
//! cannot map it (one without the library: a static binary, an image
//! whose environment lost `LD_PRELOAD`, a receiver of `SCM_RIGHTS` not
//! under ipcd).
//!
//! The kernel socket under the end's fd, unconnected until now, is
//! connected to a loopback listener of the monitor's ([`Junction`]); a
//! thread then copies between the connection the monitor accepted and
//! the end's two rings, as one more holder of the end (it takes the end's
//! locks, as every holder of a shared end does). The peer stays on its
//! ring and sees nothing change but speed: bytes in order, a FIN for a
//! FIN, a reset for a reset, either way.

use ipcd_ring::ConnSegment;
use std::io;
use std::num::NonZeroU32;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use ipcd_proto::SockAddr;
use ipcd_ring::{Consumer, EndLock, PeerState, Producer, Side, Wait};

use crate::segment::{cvt, ring, take, SharedSegment};

/// How long connecting a kernel socket to the junction may take (it is
/// loopback: microseconds, unless the host is starved).
const CONNECT_LIMIT: Duration = Duration::from_secs(2);

/// A relay sleeps at most this long between looks: a wake-up another
/// holder of a shared end took is noticed by then.
const NAP_MS: libc::c_int = 250;

/// Bytes copied per step each way.
const CHUNK: usize = 64 * 1024;

/// The monitor's loopback listeners that demoted sockets connect to, one
/// per address family, made at the first demotion of that family.
#[derive(Debug, Default)]
pub struct Junction {
    v4: Option<(OwnedFd, SockAddr)>,
    v6: Option<(OwnedFd, SockAddr)>,
}

impl Junction {
    /// Connects `kernel` (an unconnected TCP socket a process holds) to a
    /// listener of ours and returns the other end of that connection.
    pub fn connect(&mut self, kernel: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        let family = int_opt(kernel.as_raw_fd(), libc::SO_DOMAIN)?;
        let (listener, addr) = self.listener(family)?;
        let (listener, addr) = (listener.as_raw_fd(), *addr);
        let (ss, len) = addr.to_raw();
        // SAFETY: a sockaddr of `len` bytes for the socket's family.
        let r = unsafe { libc::connect(kernel.as_raw_fd(), (&raw const ss).cast(), len) };
        if r != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINPROGRESS) {
                return Err(e);
            }
        }
        // The connection to take is the one from the kernel socket's own
        // address: anyone may connect to the listener, and is turned away.
        let want = local_addr(kernel.as_raw_fd())?;
        let deadline = Instant::now() + CONNECT_LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut));
            }
            let mut p = libc::pollfd { fd: listener, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            cvt(unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as libc::c_int) })?;
            // SAFETY: accept4 with no address wanted.
            let fd = unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            if fd < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            // SAFETY: a fresh fd accept4 gave us.
            let conn = unsafe { OwnedFd::from_raw_fd(fd) };
            if peer_addr(fd).ok() == Some(want) {
                return Ok(conn);
            }
        }
    }

    /// The listener for `family`, made if needed.
    fn listener(&mut self, family: libc::c_int) -> io::Result<&(OwnedFd, SockAddr)> {
        let (slot, addr) = match family {
            libc::AF_INET => (&mut self.v4, SockAddr::V4 { ip: [127, 0, 0, 1], port: 0 }),
            libc::AF_INET6 => {
                let mut ip = [0; 16];
                ip[15] = 1;
                (&mut self.v6, SockAddr::V6 { ip, port: 0, flowinfo: 0, scope_id: 0 })
            }
            _ => return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT)),
        };
        if slot.is_none() {
            *slot = Some(listen_on(family, addr)?);
        }
        slot.as_ref().ok_or_else(|| io::Error::other("no listener"))
    }
}

/// A non-blocking loopback listener at `addr` (port 0: any) and where it is.
fn listen_on(family: libc::c_int, addr: SockAddr) -> io::Result<(OwnedFd, SockAddr)> {
    // SAFETY: plain socket creation.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let (ss, len) = addr.to_raw();
    // SAFETY: a sockaddr of `len` bytes for the family.
    cvt(unsafe { libc::bind(fd, (&raw const ss).cast(), len) })?;
    // SAFETY: listen on our socket.
    cvt(unsafe { libc::listen(fd, 64) })?;
    let at = local_addr(fd)?;
    Ok((sock, at))
}

fn int_opt(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int-sized out buffer and its length.
    cvt(unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut v).cast(), &mut len) })?;
    Ok(v)
}

fn local_addr(fd: RawFd) -> io::Result<SockAddr> {
    name(fd, libc::getsockname)
}

fn peer_addr(fd: RawFd) -> io::Result<SockAddr> {
    name(fd, libc::getpeername)
}

fn name(
    fd: RawFd,
    call: unsafe extern "C" fn(libc::c_int, *mut libc::sockaddr, *mut libc::socklen_t) -> libc::c_int,
) -> io::Result<SockAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid out buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and its length.
    cvt(unsafe { call(fd, (&raw mut ss).cast(), &mut len) })?;
    // SAFETY: the kernel filled `len` bytes of it.
    unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }.ok_or_else(|| io::Error::other("not an IP address"))
}

/// Whether the TCP socket `fd` is neither connected nor listening: one
/// the monitor may connect for a relay.
pub fn unconnected(fd: BorrowedFd<'_>) -> bool {
    let fd = fd.as_raw_fd();
    let tcp = int_opt(fd, libc::SO_TYPE).ok() == Some(libc::SOCK_STREAM)
        && matches!(int_opt(fd, libc::SO_DOMAIN), Ok(libc::AF_INET | libc::AF_INET6))
        && int_opt(fd, libc::SO_ACCEPTCONN).ok() == Some(0);
    tcp && matches!(peer_addr(fd), Err(e) if e.raw_os_error() == Some(libc::ENOTCONN))
}

/// What a relay needs: its own mapping of the segment, the end it serves,
/// a doorbell of its own (registered; it names it in the end's waiting
/// lines and sleeps on it), the registered doorbells (to ring the peer's
/// sleepers), and the kernel connection the program's socket is the
/// other end of.
#[derive(Debug)]
pub struct RelayEnd {
    /// The monitor's connection id.
    pub conn: u64,
    /// The segment, mapped for the relay alone.
    pub seg: SharedSegment,
    /// The end served.
    pub side: Side,
    /// The relay's doorbell: its id and eventfd.
    pub bell: (u64, std::sync::Arc<OwnedFd>),
    /// Every registered doorbell.
    pub bells: std::sync::Arc<crate::bells::Bells>,
    /// The monitor's end of the kernel connection.
    pub sock: OwnedFd,
}

/// How a relay ended, for the monitor's books: it then gives back the
/// relay's share of the end (closing the end if it was the last).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// The connection.
    pub conn: u64,
    /// The relay's holder token.
    pub holder: u64,
    /// The end.
    pub side: Side,
}

/// Starts the relay for `end` as holder `holder`; when it ends it sends
/// [`Finished`] on `done` and rings `wake` (the monitor's loop watches it).
pub fn spawn(end: RelayEnd, holder: u64, done: Sender<Finished>, wake: OwnedFd) -> io::Result<()> {
    let (conn, side) = (end.conn, end.side);
    std::thread::Builder::new().name(format!("relay-{conn}")).spawn(move || {
        run(end);
        let _ = done.send(Finished { conn, holder, side });
        ring(wake.as_fd());
    })?;
    Ok(())
}

/// Where each direction stands.
#[derive(Debug, Default)]
struct Flow {
    /// The ring's writer finished (FIN) and the kernel connection was
    /// shut for writing after its last byte.
    out_done: bool,
    /// The program's side finished (EOF read) and a FIN went on the ring.
    in_done: bool,
    /// Bytes from the ring wait for room in the kernel socket.
    out_blocked: bool,
    /// The ring has no room for what the kernel socket holds.
    in_blocked: bool,
}

/// The relay's loop: copies both ways until both directions ended or
/// either side reset.
fn run(end: RelayEnd) {
    let view = end.seg.view();
    // SAFETY: the relay is one more holder of a shared end: it takes the
    // end's locks and resyncs like every holder before moving anything.
    let Ok((mut tx, mut rx)) = (unsafe { view.endpoint(end.side) }) else { return };
    // SAFETY: gettid cannot fail.
    let me = NonZeroU32::new(unsafe { libc::gettid() } as u32).unwrap_or(NonZeroU32::MIN);
    let sock = end.sock.as_raw_fd();
    let mut buf = vec![0u8; CHUNK];
    let mut flow = Flow::default();
    loop {
        lock(view, end.side, me);
        let step = if tx.resync().is_err() || rx.resync().is_err() {
            Step::Reset
        } else {
            let a = to_kernel(&mut rx, sock, &mut buf, &mut flow, &end);
            let b = if a == Step::Reset { a } else { from_kernel(&mut tx, sock, &mut buf, &mut flow, &end) };
            a.max(b)
        };
        match step {
            Step::Moved => {
                unlock(view, end.side, me);
                continue;
            }
            Step::Reset => {
                // Whichever side reset, the other learns it: the program's
                // socket by an RST (linger 0), the peer by the ring's flag.
                if tx.reset() {
                    end.ring_peer();
                }
                if rx.close() {
                    end.ring_peer();
                }
                unlock(view, end.side, me);
                abort(sock);
                return;
            }
            Step::Idle if flow.out_done && flow.in_done => {
                if rx.close() {
                    end.ring_peer();
                }
                unlock(view, end.side, me);
                return;
            }
            Step::Idle => {}
        }
        // Name our doorbell and arm the ring's waiting flags before
        // sleeping, so that the peer's next write or read rings it.
        let mut ready = false;
        if !flow.out_done && !flow.out_blocked {
            rx.waiters().name(end.bell.0);
            ready |= matches!(rx.prepare_wait(), Ok(Wait::Ready) | Err(_));
        }
        if !flow.in_done && flow.in_blocked {
            tx.waiters().name(end.bell.0);
            ready |= matches!(tx.prepare_wait(1), Ok(Wait::Ready) | Err(_));
        }
        unlock(view, end.side, me);
        if !ready {
            let mut events = 0;
            if !flow.in_done && !flow.in_blocked {
                events |= libc::POLLIN;
            }
            if flow.out_blocked {
                events |= libc::POLLOUT;
            }
            let mut fds = [
                libc::pollfd { fd: sock, events, revents: 0 },
                libc::pollfd { fd: end.bell.1.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            ];
            // SAFETY: two live pollfds.
            unsafe { libc::poll(fds.as_mut_ptr(), 2, NAP_MS) };
            take(end.bell.1.as_fd());
        }
        // Flags stay armed (another holder may rely on them); names go.
        rx.waiters().unname(end.bell.0);
        tx.waiters().unname(end.bell.0);
    }
}

impl RelayEnd {
    /// Rings the peer's sleepers (a publish or a close said to).
    fn ring_peer(&self) {
        self.bells.ring_side(self.seg.view(), self.side.peer());
    }
}

/// What one pass of the loop did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    /// Nothing could move.
    Idle,
    /// Bytes or a FIN moved.
    Moved,
    /// The connection is reset.
    Reset,
}

/// Ring to program: what the peer wrote goes to the kernel socket; its
/// FIN becomes a `shutdown(SHUT_WR)`, its reset a reset.
fn to_kernel(rx: &mut Consumer, sock: RawFd, buf: &mut [u8], flow: &mut Flow, end: &RelayEnd) -> Step {
    if flow.out_done {
        return Step::Idle;
    }
    flow.out_blocked = false;
    let Ok(n) = rx.readable() else { return Step::Reset };
    if n == 0 {
        return match rx.peer_state() {
            PeerState::Open => Step::Idle,
            PeerState::Reset => Step::Reset,
            PeerState::Closed => {
                // SAFETY: shutdown of our own socket.
                unsafe { libc::shutdown(sock, libc::SHUT_WR) };
                flow.out_done = true;
                Step::Moved
            }
        };
    }
    let Ok(got) = rx.peek(0, &mut buf[..n.min(CHUNK)]) else { return Step::Reset };
    // SAFETY: `got` initialised bytes of `buf`.
    let sent = unsafe { libc::send(sock, buf.as_ptr().cast(), got, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
    if sent < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            flow.out_blocked = true;
            return Step::Idle;
        }
        // The program's socket is gone (reset, or closed and then sent to).
        return Step::Reset;
    }
    match rx.consume(sent as usize) {
        Ok(t) => {
            if t.wake_peer {
                end.ring_peer();
            }
            Step::Moved
        }
        Err(_) => Step::Reset,
    }
}

/// Program to ring: what the program wrote goes into the ring; its EOF
/// becomes a FIN, a reset a reset.
fn from_kernel(tx: &mut Producer, sock: RawFd, buf: &mut [u8], flow: &mut Flow, end: &RelayEnd) -> Step {
    if flow.in_done {
        return Step::Idle;
    }
    flow.in_blocked = false;
    if tx.is_reader_closed() {
        // The peer closed: what the program sends now is answered with a
        // reset, as Linux answers data sent to a closed socket.
        return if readable_now(sock) { Step::Reset } else { Step::Idle };
    }
    let Ok(room) = tx.writable() else { return Step::Reset };
    if room == 0 {
        flow.in_blocked = true;
        return Step::Idle;
    }
    let want = room.min(CHUNK);
    // SAFETY: `want` bytes of room in `buf`.
    let got = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
    if got < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::Interrupted {
            return Step::Idle;
        }
        return Step::Reset;
    }
    if got == 0 {
        flow.in_done = true;
        if tx.close() {
            end.ring_peer();
        }
        return Step::Moved;
    }
    match tx.write(&buf[..got as usize]) {
        Ok(t) => {
            if t.wake_peer {
                end.ring_peer();
            }
            Step::Moved
        }
        Err(_) => Step::Reset,
    }
}

/// Whether `sock` has bytes (or an EOF or error) to read now.
fn readable_now(sock: RawFd) -> bool {
    let mut p = libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Takes both of the end's locks, as every holder of a shared end does
/// (breaking one a dead process left).
fn lock(view: &ipcd_ring::Segment, side: Side, me: NonZeroU32) {
    let dead = |pid: u32| {
        // SAFETY: signal 0 only asks whether the process exists.
        let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
        r != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    };
    for l in [EndLock::Send(side), EndLock::Recv(side)] {
        view.lock(l, me, dead, std::thread::yield_now);
    }
}

fn unlock(view: &ipcd_ring::Segment, side: Side, me: NonZeroU32) {
    for l in [EndLock::Recv(side), EndLock::Send(side)] {
        view.unlock(l, me);
    }
}

/// Closes the monitor's end of the kernel connection with a reset (the
/// fd itself closes when the relay's `OwnedFd` drops).
fn abort(sock: RawFd) {
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a linger struct and its size, on our own socket.
    unsafe {
        libc::setsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const lg).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
}
