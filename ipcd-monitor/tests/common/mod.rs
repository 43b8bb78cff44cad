//! What the daemon tests share: a real monitor process, listening sockets
//! proven to it, brokered connections mapped and checked end to end.
// Each test file uses only some of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipcd_monitor::client::MonitorClient;
use ipcd_proto::channel::Channel;
use ipcd_proto::message::{ConnInfo, Request, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};
use ipcd_ring::Segment;
use memmap2::MmapMut;

pub(crate) const IPCD: &str = env!("CARGO_BIN_EXE_ipcd");

/// A monitor on a socket name of its own, stopped on drop.
pub(crate) struct Monitor {
    pub(crate) child: Child,
    pub(crate) socket: String,
}

impl Monitor {
    pub(crate) fn start() -> Monitor {
        static N: AtomicU32 = AtomicU32::new(0);
        let socket = format!("ipcd-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        Monitor::start_with(Command::new(IPCD), socket)
    }

    /// A monitor in `--poll` mode (busy-polling instead of sleeping).
    pub(crate) fn start_polling() -> Monitor {
        let socket = format!("ipcd-test-poll-{}", std::process::id());
        let cmd = Command::new(IPCD);
        Monitor::start_with_args(cmd, socket, &["--poll"])
    }

    pub(crate) fn start_with(cmd: Command, socket: String) -> Monitor {
        Monitor::start_with_args(cmd, socket, &[])
    }

    pub(crate) fn start_with_args(mut cmd: Command, socket: String, extra: &[&str]) -> Monitor {
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

    pub(crate) fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Channel::connect_abstract(self.socket.as_bytes()).is_err() {
            assert!(Instant::now() < deadline, "monitor did not come up");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub(crate) fn client(&self) -> MonitorClient {
        MonitorClient::connect(&self.socket).expect("register with the monitor")
    }

    /// Runs `f` while the monitor is stopped: what `f` sends waits in the
    /// channels, and the monitor reads them in the order they became
    /// readable once it goes on. (epoll puts a level-triggered channel
    /// it reported back on its ready list, ahead of later arrivals: the
    /// last request before the stop should come from the channel meant
    /// to be read first.)
    pub(crate) fn while_stopped(&self, f: impl FnOnce()) {
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

pub(crate) fn sockaddr(a: SocketAddr) -> SockAddr {
    match a {
        SocketAddr::V4(a) => SockAddr::V4 { ip: a.ip().octets(), port: a.port() },
        SocketAddr::V6(a) => SockAddr::V6 { ip: a.ip().octets(), port: a.port(), flowinfo: 0, scope_id: 0 },
    }
}

/// A kernel listener with options, returned as an fd and its address.
pub(crate) fn tcp_listener(addr: &str, reuseport: bool) -> (OwnedFd, SockAddr) {
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

pub(crate) fn listen(c: &mut MonitorClient, id: u64, fd: &OwnedFd, addr: SockAddr, flags: ListenFlags) -> Response {
    c.call(&Request::Listen { listener: id, addr, backlog: 16, flags }, &[fd.as_fd()]).unwrap().0
}

pub(crate) fn connect(c: &mut MonitorClient, dest: SockAddr) -> (Response, Vec<OwnedFd>) {
    let (r, fds) = c.call(&Request::Connect { dest, source: None, nonblocking: false }, &[]).unwrap();
    (r, fds.into_vec())
}

/// The next event (seq 0) on a client's channel, waiting up to 5 s.
pub(crate) fn next_event(c: &MonitorClient) -> (Response, Vec<OwnedFd>) {
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
pub(crate) struct Brokered {
    pub(crate) server: MonitorClient,
    pub(crate) client: MonitorClient,
    /// The listener's kernel socket, kept open for the test.
    pub(crate) _lfd: OwnedFd,
    pub(crate) addr: SockAddr,
    pub(crate) info: ConnInfo,
    /// The client's and the server's fds: segment, own bell, peer's bell.
    pub(crate) cfds: Vec<OwnedFd>,
    pub(crate) sfds: Vec<OwnedFd>,
}

pub(crate) fn brokered(m: &Monitor) -> Brokered {
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
pub(crate) struct Mapped {
    pub(crate) map: MmapMut,
    pub(crate) seg: Segment,
}

impl Mapped {
    pub(crate) fn seg_base(&self) -> NonNull<u8> {
        NonNull::new(self.map.as_ptr().cast_mut()).unwrap()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

pub(crate) fn map(fd: &OwnedFd) -> Mapped {
    let file = std::fs::File::from(fd.try_clone().unwrap());
    // SAFETY: a sealed memfd the monitor made; mapped shared.
    let mut map = unsafe { MmapMut::map_mut(&file).unwrap() };
    let base = NonNull::new(map.as_mut_ptr()).unwrap();
    // SAFETY: the mapping lives in `Mapped` with the view.
    let seg = unsafe { Segment::attach(base, map.len()) }.unwrap();
    Mapped { map, seg }
}

/// Bytes written by side A's mapping arrive at side B's.
pub(crate) fn carries_a_to_b(a: &Mapped, b: &Mapped) {
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { a.seg.producer(ipcd_ring::Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { b.seg.consumer(ipcd_ring::Side::B) }.unwrap();
    assert_eq!(tx.write(b"hello").unwrap().len, 5);
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 5);
    assert_eq!(&buf[..5], b"hello");
}

/// A doorbell `c` registers with the monitor (`Bell`): its id and eventfd.
pub(crate) fn register_bell(c: &mut MonitorClient) -> (u64, OwnedFd) {
    let bell = eventfd();
    let (resp, _) = c.call(&Request::Bell, &[bell.as_fd()]).unwrap();
    let Response::BellId { id } = resp else { panic!("expected BellId, got {resp:?}") };
    (id, bell)
}

/// A doorbell `c` registers and names as a sleeper of both of `side`'s
/// waiting lines in `seg`, as a blocked thread does.
pub(crate) fn sleeper(c: &mut MonitorClient, seg: &Mapped, side: ipcd_ring::Side) -> OwnedFd {
    let (id, bell) = register_bell(c);
    for w in seg.seg.waiters_of(side) {
        assert!(w.name(id));
    }
    bell
}

pub(crate) fn bell_count(fd: &OwnedFd) -> u64 {
    let mut v = 0u64;
    // SAFETY: reads 8 bytes from a non-blocking eventfd.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut v).cast(), 8) };
    if n == 8 {
        v
    } else {
        0
    }
}

/// Closes both ends of `conn`, B from `server` then A from `client`,
/// saying whether each keeps the segment. With `sync`, waits until the
/// monitor has seen both (a round trip, which skips events).
pub(crate) fn close_both(
    client: &mut MonitorClient,
    server: &mut MonitorClient,
    conn: u64,
    keep: [bool; 2],
    sync: bool,
) {
    server.notify(&Request::Accepted { conn }).unwrap();
    server.notify(&Request::Close { conn, side: Side::B, keep: keep[1] }).unwrap();
    let _ = server.status().unwrap();
    client.notify(&Request::Close { conn, side: Side::A, keep: keep[0] }).unwrap();
    if sync {
        let _ = client.status().unwrap();
    }
}

/// A pair that connected twice, and the standby the second connect left.
pub(crate) struct WithStandby {
    pub(crate) server: MonitorClient,
    pub(crate) client: MonitorClient,
    pub(crate) _lfd: OwnedFd,
    pub(crate) addr: SockAddr,
    /// The standby as the client has it (side A), and its fds: segment,
    /// own bell, peer bell, the listener's bell.
    pub(crate) sb: ConnInfo,
    pub(crate) cfds: Vec<OwnedFd>,
    /// The fds of the standby as the server expects it (side B).
    pub(crate) sfds: Vec<OwnedFd>,
    /// The bell the server registered with `Listen`.
    pub(crate) lbell: OwnedFd,
}

pub(crate) fn eventfd() -> OwnedFd {
    // SAFETY: a fresh eventfd, owned by the result.
    unsafe { OwnedFd::from_raw_fd(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)) }
}

pub(crate) fn with_standby(m: &Monitor) -> WithStandby {
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
    let Response::Standby { dest, info: sb, bell, .. } = event else { panic!("expected a standby, got {event:?}") };
    let (Response::Connected(again), _) = client.wait_reply().unwrap() else { panic!("not brokered") };
    assert_eq!(dest, addr);
    assert_eq!((again.reused, again.segment), (true, first.segment), "the connect itself takes the pooled segment");
    assert!(sb.conn != again.conn && sb.side == Side::A && sb.peer == addr);
    assert!(bell, "the listener's bell comes with the pair's first standby");
    assert_eq!((sb.reused, cfds.len()), (false, 2), "a new segment, sent with the standby, and the bell");
    let (event, sfds) = next_event(&server);
    let Response::Expect { listener: 1, info: expected } = event else { panic!("expected Expect, got {event:?}") };
    assert_eq!((expected.conn, expected.side, expected.local, sfds.len()), (sb.conn, Side::B, addr, 1));
    let (event, _) = next_event(&server);
    assert!(matches!(event, Response::Incoming { info, .. } if info.conn == again.conn), "{event:?}");
    WithStandby { server, client, _lfd: lfd, addr, sb, cfds, sfds, lbell }
}

/// Open fds of the monitor process.
pub(crate) fn monitor_fds(m: &Monitor) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", m.child.id())).unwrap().count()
}

/// A copy of `ipcd` that user 65534 can run, wherever the checkout lives
/// (it may be under a home directory that user cannot enter); removed on
/// drop.
pub(crate) struct NobodyIpcd {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl NobodyIpcd {
    pub(crate) fn new() -> NobodyIpcd {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("ipcd-nobody-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join("ipcd");
        std::fs::copy(IPCD, &exe).unwrap();
        for p in [&dir, &exe] {
            std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        }
        NobodyIpcd { dir, exe }
    }

    /// `ipcd ARGS…` to run as user and group 65534.
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.exe);
        cmd.args(args).uid(65534).gid(65534);
        cmd
    }

    /// Runs `cmd` (one of [`NobodyIpcd::command`]) to its end. The copy was
    /// written by this process, whose other test threads fork children:
    /// one forked while the copy was open for writing holds that fd until
    /// it execs, and an exec of the copy meanwhile fails with `ETXTBSY`
    /// (as a CI run once did). That passes within moments; so is the
    /// exec retried.
    pub(crate) fn output(cmd: &mut Command) -> std::process::Output {
        for _ in 0..200 {
            match cmd.output() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) => std::thread::sleep(Duration::from_millis(10)),
                out => return out.expect("run ipcd as nobody"),
            }
        }
        panic!("the copy of ipcd stayed busy for 2 s")
    }
}

impl Drop for NobodyIpcd {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
