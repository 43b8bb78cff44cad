//! A real monitor process driven by test clients through ipcd-proto's
//! channel: brokering, address matching, ownership proofs, bad clients,
//! dying clients, other users and network namespaces.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipcd_monitor::client::MonitorClient;
use ipcd_proto::channel::Channel;
use ipcd_proto::message::{ConnInfo, EndState, ErrorCode, Fallback, Request, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};
use ipcd_ring::{PeerState, Segment, Ticket};
use memmap2::MmapMut;

const IPCD: &str = env!("CARGO_BIN_EXE_ipcd");

/// A monitor on a socket name of its own, stopped on drop.
struct Monitor {
    child: Child,
    socket: String,
}

impl Monitor {
    fn start() -> Monitor {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!("ipcd-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        Monitor::start_with(Command::new(IPCD), socket)
    }

    /// A monitor in `--poll` mode (busy-polling instead of sleeping).
    fn start_polling() -> Monitor {
        let socket = format!("ipcd-test-poll-{}", std::process::id());
        let cmd = Command::new(IPCD);
        Monitor::start_with_args(cmd, socket, &["--poll"])
    }

    fn start_with(cmd: Command, socket: String) -> Monitor {
        Monitor::start_with_args(cmd, socket, &[])
    }

    fn start_with_args(mut cmd: Command, socket: String, extra: &[&str]) -> Monitor {
        // SAFETY: prctl in the child before exec: if the test process dies
        // (a crash skips Drop), the monitor goes with it instead of holding
        // the test runner's output pipes open.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .args(["daemon", "--socket", &socket, "--ring-bytes", "4096"])
            .args(extra)
            .env("IPCD_LOG", "warn")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn ipcd daemon");
        let m = Monitor { child, socket };
        m.wait_ready();
        m
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Channel::connect_abstract(self.socket.as_bytes()).is_err() {
            assert!(Instant::now() < deadline, "monitor did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn client(&self) -> MonitorClient {
        MonitorClient::connect(&self.socket).expect("register with the monitor")
    }

    /// Runs `f` while the monitor is stopped: what `f` sends waits in the
    /// channels, and the monitor reads them in the order they became
    /// readable once it goes on. (epoll puts a level-triggered channel
    /// it reported back on its ready list, ahead of later arrivals: the
    /// last request before the stop should come from the channel meant
    /// to be read first.)
    fn while_stopped(&self, f: impl FnOnce()) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals our own child.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
        // The stop takes effect asynchronously: wait until it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        let stat = format!("/proc/{pid}/stat");
        while std::fs::read_to_string(&stat).map_or(true, |s| s.rsplit(") ").next().is_none_or(|r| !r.starts_with('T')))
        {
            assert!(Instant::now() < deadline, "the monitor did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        f();
        // SAFETY: as above.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("the monitor ignored SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

fn sockaddr(a: SocketAddr) -> SockAddr {
    match a {
        SocketAddr::V4(a) => SockAddr::V4 { ip: a.ip().octets(), port: a.port() },
        SocketAddr::V6(a) => SockAddr::V6 { ip: a.ip().octets(), port: a.port(), flowinfo: 0, scope_id: 0 },
    }
}

/// A kernel listener with options, returned as an fd and its address.
fn tcp_listener(addr: &str, reuseport: bool) -> (OwnedFd, SockAddr) {
    let sa: SocketAddr = addr.parse().unwrap();
    let family = if sa.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket calls on a fresh fd with valid buffers.
    unsafe {
        let fd = OwnedFd::from_raw_fd(libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0));
        let one: libc::c_int = 1;
        let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if reuseport {
            libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, (&raw const one).cast(), len);
        }
        let (ss, slen) = sockaddr(sa).to_raw();
        assert_eq!(libc::bind(fd.as_raw_fd(), (&raw const ss).cast(), slen), 0, "bind {addr}");
        assert_eq!(libc::listen(fd.as_raw_fd(), 16), 0);
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut slen = std::mem::size_of_val(&ss) as libc::socklen_t;
        libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &mut slen);
        (fd, SockAddr::from_raw((&raw const ss).cast(), slen).unwrap())
    }
}

fn listen(c: &mut MonitorClient, id: u64, fd: &OwnedFd, addr: SockAddr, flags: ListenFlags) -> Response {
    c.call(&Request::Listen { listener: id, addr, backlog: 16, flags }, &[fd.as_fd()]).unwrap().0
}

fn connect(c: &mut MonitorClient, dest: SockAddr) -> (Response, Vec<OwnedFd>) {
    let (r, fds) = c.call(&Request::Connect { dest, source: None, nonblocking: false }, &[]).unwrap();
    (r, fds.into_vec())
}

/// The next event (seq 0) on a client's channel, waiting up to 5 s.
fn next_event(c: &MonitorClient) -> (Response, Vec<OwnedFd>) {
    let ch = c.channel();
    ch.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ch.recv_response() {
            Ok((0, r, fds)) => {
                ch.set_nonblocking(false).unwrap();
                return (r, fds.into_vec());
            }
            Ok(other) => panic!("unexpected reply {other:?}"),
            Err(e) if e.is_would_block() && Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => panic!("no event: {e}"),
        }
    }
}

/// A server listening (listener 1) and a client connected to it.
struct Brokered {
    server: MonitorClient,
    client: MonitorClient,
    /// The listener's kernel socket, kept open for the test.
    _lfd: OwnedFd,
    addr: SockAddr,
    info: ConnInfo,
    /// The client's and the server's fds: segment, own bell, peer's bell.
    cfds: Vec<OwnedFd>,
    sfds: Vec<OwnedFd>,
}

fn brokered(m: &Monitor) -> Brokered {
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 1, &lfd, addr, ListenFlags::empty()), Response::Ok);
    let (resp, cfds) = connect(&mut client, addr);
    let Response::Connected(info) = resp else { panic!("{resp:?}") };
    let (_, sfds) = next_event(&server);
    Brokered { server, client, _lfd: lfd, addr, info, cfds, sfds }
}

/// A mapped segment received from the monitor.
struct Mapped {
    map: MmapMut,
    seg: Segment,
}

impl Mapped {
    fn seg_base(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_ptr().cast_mut()).unwrap()
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

fn map(fd: &OwnedFd) -> Mapped {
    let file = std::fs::File::from(fd.try_clone().unwrap());
    // SAFETY: a sealed memfd the monitor made; mapped shared.
    let mut map = unsafe { MmapMut::map_mut(&file).unwrap() };
    let base = NonNull::new(map.as_mut_ptr()).unwrap();
    // SAFETY: the mapping lives in `Mapped` with the view.
    let seg = unsafe { Segment::attach(base, map.len()) }.unwrap();
    Mapped { map, seg }
}

/// Bytes written by side A's mapping arrive at side B's.
fn carries_a_to_b(a: &Mapped, b: &Mapped) {
    let mut tx = a.seg.producer(ipcd_ring::Side::A).unwrap();
    let mut rx = b.seg.consumer(ipcd_ring::Side::B).unwrap();
    assert_eq!(tx.write(b"hello").unwrap().len, 5);
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 5);
    assert_eq!(&buf[..5], b"hello");
}

fn bell_count(fd: &OwnedFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes from a non-blocking eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

#[test]
fn a_connect_is_brokered_with_a_working_segment_and_doorbells() {
    brokering_works(Monitor::start());
}

#[test]
fn the_busy_polling_monitor_brokers_too() {
    brokering_works(Monitor::start_polling());
}

fn brokering_works(m: Monitor) {
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 7, &lfd, addr, ListenFlags::empty()), Response::Ok);

    let (resp, cfds) = connect(&mut client, addr);
    let Response::Connected(cinfo) = resp else { panic!("expected Connected, got {resp:?}") };
    assert_eq!((cinfo.side, cinfo.peer, cfds.len()), (Side::A, addr, 3));
    let (event, sfds) = next_event(&server);
    let Response::Incoming { listener: 7, info: sinfo } = event else { panic!("expected Incoming, got {event:?}") };
    assert_eq!((sinfo.conn, sinfo.side, sinfo.local, sfds.len()), (cinfo.conn, Side::B, addr, 3));

    // Both ends map the same segment: bytes written by A arrive at B.
    let a = map(&cfds[0]);
    assert_eq!(a.seg.conn_id(), cinfo.conn);
    carries_a_to_b(&a, &map(&sfds[0]));
    // A's "peer doorbell" is B's "own doorbell".
    ipcd_monitor::segment::ring(cfds[2].as_fd());
    assert_eq!(bell_count(&sfds[1]), 1);
    ipcd_monitor::segment::ring(sfds[2].as_fd());
    assert_eq!(bell_count(&cfds[1]), 1);

    let report = client.status().unwrap();
    assert_eq!((report.status.connections, report.status.listeners, report.status.connects_total), (1, 1, 1));
    assert_eq!(report.listeners[0].pending, 1, "not yet accepted");
    assert_eq!(report.connections[0].states, [EndState::Open, EndState::Open]);
    // A FIN from A shows in the listing.
    let _ = a.seg.producer(ipcd_ring::Side::A).unwrap().close();
    assert_eq!(client.status().unwrap().connections[0].states, [EndState::Fin, EndState::Open]);
    server.notify(&Request::Accepted { conn: cinfo.conn }).unwrap();
    client.notify(&Request::Close { conn: cinfo.conn, side: Side::A, keep: false }).unwrap();
    server.notify(&Request::Close { conn: cinfo.conn, side: Side::B, keep: false }).unwrap();
    // Notifications have no reply; a round trip on each channel orders them
    // before the check (the monitor serves each channel in order).
    let _ = server.status().unwrap();
    let report = client.status().unwrap();
    assert_eq!((report.status.connections, report.listeners[0].pending), (0, 0), "freed once both ends closed");
    assert_eq!(report.status.segment_bytes, 0, "nobody kept it: nothing is pooled");
}

/// Closes both ends of `conn`, B from `server` then A from `client`,
/// saying whether each keeps the segment. With `sync`, waits until the
/// monitor has seen both (a round trip, which skips events).
fn close_both(client: &mut MonitorClient, server: &mut MonitorClient, conn: u64, keep: [bool; 2], sync: bool) {
    server.notify(&Request::Accepted { conn }).unwrap();
    server.notify(&Request::Close { conn, side: Side::B, keep: keep[1] }).unwrap();
    let _ = server.status().unwrap();
    client.notify(&Request::Close { conn, side: Side::A, keep: keep[0] }).unwrap();
    if sync {
        let _ = client.status().unwrap();
    }
}

#[test]
fn a_segment_both_ends_kept_is_reused_by_the_same_pair_only() {
    let m = Monitor::start();
    let (mut server, mut client, mut stranger) = (m.client(), m.client(), m.client());
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 7, &lfd, addr, ListenFlags::empty()), Response::Ok);

    let (Response::Connected(first), cfds) = connect(&mut client, addr) else { panic!("not brokered") };
    assert!(!first.reused);
    let (_, sfds) = next_event(&server);
    let (a, b) = (map(&cfds[0]), map(&sfds[0]));
    let mut tx = a.seg.producer(ipcd_ring::Side::A).unwrap();
    let mut rx = b.seg.consumer(ipcd_ring::Side::B).unwrap();
    // A bulk connection: 300 KiB through the 4 KiB ring touches every page.
    let mut sink = [0u8; 4096];
    for _ in 0..75 {
        assert_eq!(tx.write(&[7u8; 4096]).unwrap().len, 4096);
        assert_eq!(rx.read(&mut sink).unwrap().len, 4096);
    }
    assert_eq!(tx.write(b"old").unwrap().len, 3);
    let _ = tx.close();
    let blocks = |fd: &OwnedFd| {
        // SAFETY: fstat of a live fd into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
        st.st_blocks
    };
    let touched = blocks(&cfds[0]);
    close_both(&mut client, &mut server, first.conn, [true, true], true);
    assert!(client.status().unwrap().status.segment_bytes > 0, "the pooled segment is reported");
    assert!(blocks(&cfds[0]) < touched, "the pages a bulk connection touched are given back");

    // Another process gets a fresh segment, never the pair's.
    let (Response::Connected(other), ofds) = connect(&mut stranger, addr) else { panic!("not brokered") };
    assert!(!other.reused && other.segment != first.segment && ofds.len() == 3);
    let _ = next_event(&server);

    // The same pair: the same segment, no fds, reset for the new connection.
    let (Response::Connected(again), fds) = connect(&mut client, addr) else { panic!("not brokered") };
    assert_eq!((again.reused, again.segment, fds.len()), (true, first.segment, 0));
    assert_ne!(again.conn, first.conn);
    let (event, fds) = next_event(&server);
    let Response::Incoming { info, .. } = event else { panic!("expected Incoming, got {event:?}") };
    assert_eq!((info.reused, info.segment, info.conn, fds.len()), (true, first.segment, again.conn, 0));
    // SAFETY: the mappings made above are still live.
    let (a2, b2) = unsafe { (Segment::attach(a.seg_base(), a.len()), Segment::attach(b.seg_base(), b.len())) };
    let (a2, b2) = (a2.unwrap(), b2.unwrap());
    assert_eq!((a2.conn_id(), b2.conn_id()), (again.conn, again.conn));
    let mut rx = b2.consumer(ipcd_ring::Side::B).unwrap();
    assert_eq!(rx.readable().unwrap(), 0, "the old connection's bytes are gone");
    assert_eq!(rx.peer_state(), PeerState::Open);
    assert_eq!(client.status().unwrap().status.reused_total, 1);

    // One end not keeping it: the other is told to forget it.
    close_both(&mut client, &mut server, again.conn, [true, false], false);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Forget { segment: first.segment });
    let (Response::Connected(fresh), fds) = connect(&mut client, addr) else { panic!("not brokered") };
    assert!(!fresh.reused && fresh.segment != first.segment && fds.len() == 3);
    let _ = next_event(&server);

    // A process that goes away takes its pools with it: its partner forgets.
    close_both(&mut client, &mut server, fresh.conn, [true, true], true);
    drop(client);
    let (event, _) = next_event(&server);
    assert_eq!(event, Response::Forget { segment: fresh.segment });
}

#[test]
fn addresses_match_as_the_kernel_would() {
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (wild, waddr) = tcp_listener("0.0.0.0:0", false);
    assert_eq!(listen(&mut server, 1, &wild, waddr, ListenFlags::empty()), Response::Ok);
    let port = waddr.port();
    let v4 = |ip: [u8; 4]| SockAddr::V4 { ip, port };
    for dest in [v4([127, 0, 0, 1]), v4([127, 9, 9, 9]), v4([0, 0, 0, 0])] {
        assert!(matches!(connect(&mut client, dest).0, Response::Connected(_)), "{dest} reaches 0.0.0.0");
        let _ = next_event(&server);
    }
    // Not this host, another port, or IPv6 to an IPv4 listener: the kernel decides.
    let mut loop6 = [0u8; 16];
    loop6[15] = 1;
    for dest in [
        v4([192, 0, 2, 1]),
        SockAddr::V4 { ip: [127, 0, 0, 1], port: port.wrapping_add(1) },
        SockAddr::V6 { ip: loop6, port, flowinfo: 0, scope_id: 0 },
    ] {
        assert_eq!(connect(&mut client, dest).0, Response::UseKernel { reason: Fallback::NoListener }, "{dest}");
    }
    // A specific listener takes only its own address.
    let (one, oaddr) = tcp_listener("127.0.0.2:0", false);
    assert_eq!(listen(&mut server, 2, &one, oaddr, ListenFlags::empty()), Response::Ok);
    let other = SockAddr::V4 { ip: [127, 0, 0, 3], port: oaddr.port() };
    assert_eq!(connect(&mut client, other).0, Response::UseKernel { reason: Fallback::NoListener });
    // IPv4-mapped IPv6 reaches the IPv4 listener.
    let mut mapped = [0u8; 16];
    mapped[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 2]);
    let dest = SockAddr::V6 { ip: mapped, port: oaddr.port(), flowinfo: 0, scope_id: 0 };
    assert!(matches!(connect(&mut client, dest).0, Response::Connected(_)));
}

#[test]
fn a_dual_stack_listener_takes_ipv4_too() {
    if TcpListener::bind("[::1]:0").is_err() {
        println!("skipped: no IPv6 loopback here");
        return;
    }
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (fd, addr) = tcp_listener("[::]:0", false);
    assert_eq!(listen(&mut server, 1, &fd, addr, ListenFlags::empty()), Response::Ok);
    let mut loop6 = [0u8; 16];
    loop6[15] = 1;
    for dest in [
        SockAddr::V4 { ip: [127, 0, 0, 1], port: addr.port() },
        SockAddr::V6 { ip: loop6, port: addr.port(), flowinfo: 0, scope_id: 0 },
    ] {
        assert!(matches!(connect(&mut client, dest).0, Response::Connected(_)), "{dest}");
    }
}

#[test]
fn a_reuseport_group_shares_new_connections() {
    let m = Monitor::start();
    let mut servers = [m.client(), m.client()];
    let mut client = m.client();
    let (fd0, addr) = tcp_listener("127.0.0.1:0", true);
    let (fd1, addr1) = tcp_listener(&format!("127.0.0.1:{}", addr.port()), true);
    assert_eq!(addr, addr1);
    assert_eq!(listen(&mut servers[0], 1, &fd0, addr, ListenFlags::REUSEPORT), Response::Ok);
    assert_eq!(listen(&mut servers[1], 1, &fd1, addr, ListenFlags::REUSEPORT), Response::Ok);
    for _ in 0..4 {
        assert!(matches!(connect(&mut client, addr).0, Response::Connected(_)));
    }
    for s in &servers {
        for _ in 0..2 {
            assert!(matches!(next_event(s).0, Response::Incoming { .. }), "each member gets two");
        }
    }
}

#[test]
fn ownership_must_be_proven_with_the_listening_socket() {
    let m = Monitor::start();
    let mut c = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    let (_, elsewhere) = tcp_listener("127.0.0.1:0", false);
    // The right socket but a claimed address it is not bound to.
    assert_eq!(listen(&mut c, 1, &lfd, elsewhere, ListenFlags::empty()), Response::Error { code: ErrorCode::NotOwner });
    // A socket that is bound but not listening.
    let bound = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let uaddr = sockaddr(bound.local_addr().unwrap());
    let ufd = OwnedFd::from(bound);
    assert_eq!(listen(&mut c, 2, &ufd, uaddr, ListenFlags::empty()), Response::Error { code: ErrorCode::NotOwner });
    // Not a socket at all.
    let file = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
    assert_eq!(listen(&mut c, 3, &file, addr, ListenFlags::empty()), Response::Error { code: ErrorCode::NotOwner });
    // Nothing was registered, and the client is still served.
    assert_eq!(c.status().unwrap().status.listeners, 0);
    assert_eq!(listen(&mut c, 4, &lfd, addr, ListenFlags::empty()), Response::Ok);
}

#[test]
fn bad_clients_are_dropped_alone() {
    let m = Monitor::start();
    let mut good = m.client();
    // Garbage bytes.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    raw.send_packet(&[0xde, 0xad, 0xbe, 0xef], &[]).unwrap();
    assert!(raw.recv_response().is_err(), "the monitor closes a client that sends garbage");
    // A request before hello.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    raw.send_request(1, &Request::Status, &[]).unwrap();
    assert_eq!(raw.recv_response().unwrap().1, Response::Error { code: ErrorCode::NotRegistered });
    assert!(raw.recv_response().is_err());
    // A hello that lies about its pid.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    // SAFETY: getuid cannot fail.
    let hello = Request::Hello {
        version_min: 1,
        version_max: 1,
        pid: 1,
        uid: unsafe { libc::getuid() },
        caps: ipcd_proto::Caps::empty(),
    };
    raw.send_request(1, &hello, &[]).unwrap();
    assert_eq!(raw.recv_response().unwrap().1, Response::Error { code: ErrorCode::BadRequest });
    // No common version.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    // SAFETY: getpid/getuid cannot fail.
    let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
    let hello = Request::Hello { version_min: 9, version_max: 12, pid, uid, caps: ipcd_proto::Caps::empty() };
    raw.send_request(1, &hello, &[]).unwrap();
    assert_eq!(raw.recv_response().unwrap().1, Response::Error { code: ErrorCode::VersionMismatch });
    // A listen request with extra fds.
    let c = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    let mut buf = [0u8; 1024];
    let req = Request::Listen { listener: 1, addr, backlog: 1, flags: ListenFlags::empty() };
    let n = req.encode(5, &mut buf).unwrap();
    c.channel().send_packet(&buf[..n], &[lfd.as_fd(), lfd.as_fd()]).unwrap();
    assert!(c.channel().recv_response().is_err(), "dropped for the wrong fd count");
    // The well-behaved client never noticed.
    let report = good.status().unwrap();
    assert_eq!((report.status.processes, report.status.listeners), (1, 0));
}

/// An accept frees its place in the backlog for a connect made after it,
/// even when the monitor reads the connect first: the accepting process
/// reports on its own channel, so the monitor may find a connect that came
/// later (told by a pipe, say) before that report. The monitor is stopped
/// while both are sent, and the connector's channel made ready first.
#[test]
fn a_connect_after_an_accept_finds_the_room_it_made() {
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    let req = Request::Listen { listener: 1, addr, backlog: 1, flags: ListenFlags::empty() };
    assert_eq!(server.call(&req, &[lfd.as_fd()]).unwrap().0, Response::Ok);
    let (resp, _first) = connect(&mut client, addr);
    let Response::Connected(first) = resp else { panic!("{resp:?}") };
    let _ = next_event(&server);
    client.status().unwrap();
    m.while_stopped(|| {
        // The monitor reads one request per channel each time epoll
        // reports it: both channels come up with a status request first,
        // the connector's first, so the connect is read ahead of the
        // accept report sent before it.
        client.notify(&Request::Status).unwrap();
        server.notify(&Request::Status).unwrap();
        server.notify(&Request::Accepted { conn: first.conn }).unwrap();
        client.notify(&Request::Connect { dest: addr, source: None, nonblocking: false }).unwrap();
    });
    let resp = client.wait_reply().unwrap().0;
    assert!(matches!(resp, Response::Connected(_)), "the second connect got {resp:?}");
}

/// The monitor answers a connect before it hands the connection to the
/// listener's owner when the owner's channel has room. If the owner is
/// gone by then (its channel closed, not yet noticed), the connector is
/// not left waiting on a connection nobody will accept: it is told
/// `PeerGone`, and its ring shows the acceptor's end closed. The monitor
/// is stopped while the owner goes, so it reads the connect first.
#[test]
fn a_connection_answered_before_its_acceptor_went_is_closed() {
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 1, &lfd, addr, ListenFlags::empty()), Response::Ok);
    client.status().unwrap();
    m.while_stopped(|| {
        client.notify(&Request::Connect { dest: addr, source: None, nonblocking: false }).unwrap();
        drop(server);
    });
    let (resp, cfds) = client.wait_reply().unwrap();
    let Response::Connected(info) = resp else { panic!("the connect got {resp:?}") };
    let cfds = cfds.into_vec();
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::PeerGone { conn: info.conn });
    let a = map(&cfds[0]);
    let rx = a.seg.consumer(ipcd_ring::Side::A).unwrap();
    assert_ne!(rx.peer_state(), PeerState::Open, "the acceptor's end is closed");
    drop(lfd);
}

#[test]
fn a_dying_client_loses_its_listeners_and_its_peers_are_told() {
    let m = Monitor::start();
    let Brokered { server, mut client, addr, info, cfds, sfds, _lfd } = brokered(&m);
    let a = map(&cfds[0]);
    // The server had written something before it died, and read all it got.
    let b = map(&sfds[0]);
    let mut stx = b.seg.producer(ipcd_ring::Side::B).unwrap();
    assert_eq!(stx.write(b"bye").unwrap().len, 3);
    drop(server);
    drop(sfds);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::PeerGone { conn: info.conn });
    assert_eq!(bell_count(&cfds[1]), 1, "the client's doorbell was rung");
    let mut rx = a.seg.consumer(ipcd_ring::Side::A).unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 3, "bytes sent before death are still there");
    assert_eq!(rx.peer_state(), PeerState::Closed, "a clean death is a FIN");
    assert!(a.seg.producer(ipcd_ring::Side::A).unwrap().is_reader_closed());
    let report = client.status().unwrap();
    assert_eq!(report.status.listeners, 0);
    assert_eq!(report.connections[0].pids[1], 0, "side B shows as gone");
    assert_eq!(connect(&mut client, addr).0, Response::UseKernel { reason: Fallback::NoListener });
}

#[test]
fn a_process_of_another_user_gets_the_kernel() {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        println!("skipped: needs root to run a client as another user");
        return;
    }
    let m = Monitor::start();
    let mut server = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 1, &lfd, addr, ListenFlags::empty()), Response::Ok);
    // A copy nobody can run, wherever the checkout lives (it may be under a
    // home directory that user 65534 cannot enter).
    let dir = std::env::temp_dir().join(format!("ipcd-uid-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = dir.join("ipcd");
    std::fs::copy(IPCD, &exe).unwrap();
    for p in [&dir, &exe] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let out = std::process::Command::new(&exe)
        .args(["debug-connect", "--socket", &m.socket, &addr.to_string()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("UseKernel { reason: OtherUser }"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    // The same request from our own user is brokered.
    let out = Command::new(IPCD).args(["debug-connect", "--socket", &m.socket, &addr.to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Connected"));
}

use std::os::unix::process::CommandExt;

#[test]
fn each_network_namespace_has_its_own_monitor() {
    if !Command::new("unshare").args(["-n", "true"]).status().is_ok_and(|s| s.success()) {
        println!("skipped: unshare -n is not permitted here");
        return;
    }
    let root = Monitor::start();
    // A monitor with the same name in a new namespace starts: the names do
    // not collide, because abstract sockets are scoped by namespace. The
    // child enters its namespace itself, so its pid is the monitor's.
    let mut cmd = Command::new(IPCD);
    cmd.args(["daemon", "--socket", &root.socket]).env("IPCD_LOG", "warn").stdin(Stdio::null());
    // SAFETY: unshare and prctl in the child before exec; both are plain
    // system calls.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if libc::unshare(libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut inner = cmd.spawn().unwrap();
    let outer_pid = root.client().status().unwrap().status.monitor_pid;
    assert_eq!(outer_pid, root.child.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    let inner_pid = loop {
        let out = Command::new("nsenter")
            .args(["-t", &inner.id().to_string(), "-n", IPCD, "status", "--json", "--socket", &root.socket])
            .output()
            .unwrap();
        if out.status.success() {
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            let pid = text.split("\"monitor_pid\":").nth(1).unwrap().split(',').next().unwrap().parse::<u32>().unwrap();
            // Until the child has entered its namespace, nsenter lands in ours.
            if pid != outer_pid {
                break pid;
            }
        }
        assert!(Instant::now() < deadline, "inner monitor did not come up: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(root.client().status().unwrap().status.monitor_pid, outer_pid, "no cross-talk between namespaces");
    assert_eq!(inner_pid, inner.id());
    // SAFETY: signals our own child.
    unsafe { libc::kill(inner.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while inner.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let stopped = inner.try_wait().ok().flatten().is_some();
    let _ = inner.kill();
    let _ = inner.wait();
    assert!(stopped, "the namespaced monitor did not stop on SIGTERM");
}

#[test]
fn a_second_monitor_on_the_same_name_refuses_to_start() {
    let m = Monitor::start();
    let out = Command::new(IPCD).args(["daemon", "--socket", &m.socket]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already answers"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An end passed over `SCM_RIGHTS` (`Pass`, named by the kernel socket's
/// inode) goes to whoever claims that inode, and outlives its sender's
/// close; one nobody claims closes, as a dead holder's end does, after the
/// grace (10 s).
#[test]
fn a_passed_end_goes_to_its_claimer_or_closes_unclaimed() {
    let m = Monitor::start();
    let Brokered { mut server, client: _client, info, cfds, _lfd, .. } = brokered(&m);
    let mut worker = m.client();
    let refused = Response::Error { code: ErrorCode::NoSuchConnection };
    let pass = |inode| Request::Pass { conn: info.conn, side: Side::B, inode };
    assert_eq!(worker.call(&pass(7), &[]).unwrap().0, refused, "passed by a process that does not hold it");
    assert_eq!(worker.call(&Request::Claim { inode: 7 }, &[]).unwrap().0, refused, "nothing passed with 7");

    assert_eq!(server.call(&pass(42), &[]).unwrap().0, Response::Ok);
    server.notify(&Request::Close { conn: info.conn, side: Side::B, keep: false }).unwrap();
    let (resp, wfds) = worker.call(&Request::Claim { inode: 42 }, &[]).unwrap();
    let Response::Reopened(got) = resp else { panic!("{resp:?}") };
    assert_eq!((got.conn, got.side, wfds.len()), (info.conn, Side::B, 3));
    assert_eq!(worker.call(&Request::Claim { inode: 42 }, &[]).unwrap().0, refused, "claimed twice");
    // The claimer reads what the client writes: the same segment.
    let a = map(&cfds[0]);
    let w = map(&wfds.into_vec()[0]);
    assert_eq!(a.seg.producer(ipcd_ring::Side::A).unwrap().write(b"hi").unwrap().len, 2);
    let mut buf = [0u8; 4];
    assert_eq!(w.seg.consumer(ipcd_ring::Side::B).unwrap().read(&mut buf).unwrap().len, 2);
    let rx = a.seg.consumer(ipcd_ring::Side::A).unwrap();
    assert_eq!(rx.peer_state(), PeerState::Open, "the sender's close did not end it");

    // Passed on again, never claimed: the end closes after the grace.
    assert_eq!(worker.call(&pass(43), &[]).unwrap().0, Response::Ok);
    worker.notify(&Request::Close { conn: info.conn, side: Side::B, keep: false }).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.peer_state() == PeerState::Open {
        assert!(Instant::now() < deadline, "an unclaimed end stayed open");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rx.peer_state(), PeerState::Closed, "nothing unread: a FIN");
}

/// A holder that goes without closing (a forked child's exit, a passed end
/// nobody claimed) after the survivors have closed their copies, but
/// before their `Close` arrives: each survivor saw that holder's share and
/// sent no FIN, so the monitor closes the end when it gives the share
/// back. (The preload's `fork-share` check lost its FIN this way under
/// load: the peer waited for end of stream until its timeout.)
#[test]
fn the_last_share_given_back_closes_an_end_its_survivors_left() {
    let m = Monitor::start();
    let Brokered { server: _server, mut client, info, cfds, _lfd, .. } = brokered(&m);
    let a = map(&cfds[0]);
    // Side A held twice: the client and an end passed on (which the
    // receiver would count itself in the segment when it maps it).
    assert_eq!(client.call(&Request::Pass { conn: info.conn, side: Side::A, inode: 77 }, &[]).unwrap().0, Response::Ok);
    assert_eq!(a.seg.add_holder(ipcd_ring::Side::A), 2);
    // The client closes its copy as the library does: its share goes,
    // another is left, so no FIN; its `Close` is not sent yet.
    assert_eq!(a.seg.release_holder(ipcd_ring::Side::A), 1);
    let rx = a.seg.consumer(ipcd_ring::Side::B).unwrap();
    assert_eq!(rx.peer_state(), PeerState::Open);
    // The passed end is never claimed: after the grace its share is given
    // back, the last one, and the end closes.
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.peer_state() == PeerState::Open {
        assert!(Instant::now() < deadline, "the end stayed open after its last share went");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rx.peer_state(), PeerState::Closed, "nothing unread: a FIN");
    client.notify(&Request::Close { conn: info.conn, side: Side::A, keep: false }).unwrap();
    assert!(client.call(&Request::Status, &[]).is_ok(), "the monitor kept going");
}

/// A pair that connected twice, and the standby the second connect left.
struct WithStandby {
    server: MonitorClient,
    client: MonitorClient,
    _lfd: OwnedFd,
    addr: SockAddr,
    /// The standby as the client has it (side A), and its fds: segment,
    /// own bell, peer bell, the listener's bell.
    sb: ConnInfo,
    cfds: Vec<OwnedFd>,
    /// The fds of the standby as the server expects it (side B).
    sfds: Vec<OwnedFd>,
    /// The bell the server registered with `Listen`.
    lbell: OwnedFd,
}

fn eventfd() -> OwnedFd {
    // SAFETY: a fresh eventfd, owned by the result.
    unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }
}

fn with_standby(m: &Monitor) -> WithStandby {
    let (mut server, mut client) = (m.client(), m.client());
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    let lbell = eventfd();
    let req = Request::Listen { listener: 1, addr, backlog: 16, flags: ListenFlags::BELL };
    assert_eq!(server.call(&req, &[lfd.as_fd(), lbell.as_fd()]).unwrap().0, Response::Ok);
    let (Response::Connected(first), _cfds) = connect(&mut client, addr) else { panic!("not brokered") };
    let _ = next_event(&server);
    close_both(&mut client, &mut server, first.conn, [true, true], true);
    // The pair's second connection: the standby comes before its answer,
    // and the listener is told of it first.
    client.notify(&Request::Connect { dest: addr, source: None, nonblocking: false }).unwrap();
    let (event, cfds) = next_event(&client);
    let Response::Standby { dest, info: sb, bell } = event else { panic!("expected a standby, got {event:?}") };
    let (Response::Connected(again), _) = client.wait_reply().unwrap() else { panic!("not brokered") };
    assert_eq!(dest, addr);
    assert_eq!((again.reused, again.segment), (true, first.segment), "the connect itself takes the pooled segment");
    assert!(sb.conn != again.conn && sb.side == Side::A && sb.peer == addr);
    assert!(bell, "the listener's bell comes with the pair's first standby");
    assert_eq!((sb.reused, cfds.len()), (false, 4), "a new segment, sent with the standby, and the bell");
    let (event, sfds) = next_event(&server);
    let Response::Expect { listener: 1, info: expected } = event else { panic!("expected Expect, got {event:?}") };
    assert_eq!((expected.conn, expected.side, expected.local, sfds.len()), (sb.conn, Side::B, addr, 3));
    let (event, _) = next_event(&server);
    assert!(matches!(event, Response::Incoming { info, .. } if info.conn == again.conn), "{event:?}");
    WithStandby { server, client, _lfd: lfd, addr, sb, cfds, sfds, lbell }
}

#[test]
fn a_standby_connects_through_its_ticket_and_becomes_a_connection_when_needed() {
    let m = Monitor::start();
    let WithStandby { mut server, mut client, addr, sb, cfds, sfds, lbell, .. } = with_standby(&m);
    let (a, b) = (map(&cfds[0]), map(&sfds[0]));
    assert_eq!(b.seg.ticket(sb.conn), Ticket::Expected, "the acceptor waits for its connector");
    let source = SockAddr::V4 { ip: [127, 0, 0, 1], port: 5555 };
    assert!(a.seg.connect(sb.conn, source.to_words()).is_some());
    // The bell the client was given is the listener's own.
    // SAFETY: writes 8 bytes to an eventfd.
    assert_eq!(unsafe { libc::write(cfds[3].as_raw_fd(), (&1u64 as *const u64).cast(), 8) }, 8);
    assert_eq!(bell_count(&lbell), 1);
    let Ticket::Connected(words) = b.seg.ticket(sb.conn) else { panic!("not connected") };
    assert_eq!(SockAddr::from_words(words), Some(source));
    carries_a_to_b(&a, &b);
    // Nobody said so: the monitor finds it when something names it (here
    // the acceptor's report), holds the next standby ready, and shows the
    // connection with the connector's address.
    server.notify(&Request::Accepted { conn: sb.conn }).unwrap();
    let (event, fds) = next_event(&client);
    let Response::Standby { dest, info: next, bell } = event else { panic!("expected a standby, got {event:?}") };
    assert!(dest == addr && next.conn != sb.conn && !bell && fds.len() == 3, "{next:?}");
    let report = client.status().unwrap();
    let conn = report.connections.iter().find(|c| c.conn == sb.conn).expect("the used standby is a connection");
    assert_eq!(conn.addrs[0], source, "{conn:?}");
}

#[test]
fn a_standby_is_cancelled_when_its_listener_closes() {
    let m = Monitor::start();
    let WithStandby { mut server, mut client, addr, sb, cfds, sfds, .. } = with_standby(&m);
    // (The acceptor's `Forget` comes before this answer, which `call` reads past.)
    assert_eq!(server.call(&Request::Unlisten { listener: 1 }, &[]).unwrap().0, Response::Ok);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Withdraw { conn: sb.conn });
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Forget { segment: sb.segment });
    // A connect that took it before it read the withdrawal finds it cancelled.
    let a = map(&cfds[0]);
    assert!(a.seg.connect(sb.conn, addr.to_words()).is_none());
    assert_eq!(map(&sfds[0]).seg.ticket(sb.conn), Ticket::Cancelled);
    // The next connect asks, and is sent to the kernel.
    let (resp, _) = connect(&mut client, addr);
    assert_eq!(resp, Response::UseKernel { reason: Fallback::NoListener });
}

#[test]
fn a_standby_used_as_its_listener_closes_is_reset_as_a_queued_connection() {
    let m = Monitor::start();
    let WithStandby { mut server, mut client, addr, sb, cfds, .. } = with_standby(&m);
    let a = map(&cfds[0]);
    assert!(a.seg.connect(sb.conn, addr.to_words()).is_some(), "connected before the listener closed");
    assert_eq!(server.call(&Request::Unlisten { listener: 1 }, &[]).unwrap().0, Response::Ok);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::PeerGone { conn: sb.conn });
    let rx = a.seg.consumer(ipcd_ring::Side::A).unwrap();
    assert_ne!(rx.peer_state(), PeerState::Open, "the acceptor's end is closed");
    let _ = client.status().unwrap();
}

#[test]
fn a_standby_given_back_cannot_be_used() {
    let m = Monitor::start();
    let WithStandby { server, mut client, addr, sb, cfds, .. } = with_standby(&m);
    client.notify(&Request::Unused { conn: sb.conn }).unwrap();
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Withdraw { conn: sb.conn });
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Forget { segment: sb.segment });
    let (event, _) = next_event(&server);
    assert_eq!(event, Response::Forget { segment: sb.segment });
    assert!(map(&cfds[0]).seg.connect(sb.conn, addr.to_words()).is_none());
    let report = client.status().unwrap();
    assert!(!report.connections.iter().any(|c| c.conn == sb.conn));
    // The listener hears of the next connect, never of the one given back.
    let (Response::Connected(next), _) = connect(&mut client, addr) else { panic!("not brokered") };
    loop {
        let (event, _) = next_event(&server);
        match event {
            Response::Expect { info, .. } => assert_ne!(info.conn, sb.conn),
            Response::Incoming { info, .. } => break assert_eq!(info.conn, next.conn),
            other => panic!("{other:?}"),
        }
    }
}

/// Open fds of the monitor process.
fn monitor_fds(m: &Monitor) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", m.child.id())).unwrap().count()
}

#[test]
fn a_listener_bell_goes_with_the_process_that_registered_it() {
    let m = Monitor::start();
    let mut probe = m.client();
    let _ = probe.status().unwrap();
    let before = monitor_fds(&m);
    for _ in 0..3 {
        let mut server = m.client();
        let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
        let bell = eventfd();
        let req = Request::Listen { listener: 1, addr, backlog: 16, flags: ListenFlags::BELL };
        assert_eq!(server.call(&req, &[lfd.as_fd(), bell.as_fd()]).unwrap().0, Response::Ok);
        // The process ends without unregistering, as most do.
        drop(server);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let _ = probe.status().unwrap();
        let now = monitor_fds(&m);
        if now <= before {
            break;
        }
        assert!(Instant::now() < deadline, "the monitor kept {} fds more than before", now - before);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connector_that_dies_after_connecting_through_its_ticket_is_closed_for_the_acceptor() {
    let m = Monitor::start();
    let WithStandby { server: _server, client, sb, cfds, sfds, .. } = with_standby(&m);
    let a = map(&cfds[0]);
    let b = map(&sfds[0]);
    assert!(a.seg.connect(sb.conn, SockAddr::V4 { ip: [127, 0, 0, 1], port: 7 }.to_words()).is_some());
    drop(client);
    let rx = b.seg.consumer(ipcd_ring::Side::B).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.peer_state() == PeerState::Open {
        assert!(Instant::now() < deadline, "the dead connector's end stayed open");
        std::thread::sleep(Duration::from_millis(10));
    }
}
