//! A real monitor process driven by test clients through ipcd-proto's
//! channel: brokering, address matching, ownership proofs, bad clients,
//! dying clients, other users and network namespaces.

mod common;

use ipcd_ring::ConnSegment;
use std::net::TcpListener;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipcd_proto::channel::Channel;
use ipcd_proto::message::{EndState, ErrorCode, Fallback, Request, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};
use ipcd_ring::PeerState;

use common::*;

#[test]
fn a_connect_is_brokered_with_a_working_segment_and_doorbells_by_id() {
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
    assert_eq!((cinfo.side, cinfo.peer, cfds.len()), (Side::A, addr, 1), "the segment alone");
    let (event, sfds) = next_event(&server);
    let Response::Incoming { listener: 7, info: sinfo, .. } = event else { panic!("expected Incoming, got {event:?}") };
    assert_eq!((sinfo.conn, sinfo.side, sinfo.local, sfds.len()), (cinfo.conn, Side::B, addr, 1));

    // Both ends map the same segment: bytes written by A arrive at B.
    let a = map(&cfds[0]);
    assert_eq!(a.seg.conn_id(), cinfo.conn);
    carries_a_to_b(&a, &map(&sfds[0]));
    // A doorbell the client registered is the one the server gets by its
    // id; an id nobody registered gets nothing.
    let (id, bell) = register_bell(&mut client);
    let (resp, got) = server.call(&Request::BellOf { id }, &[]).unwrap();
    assert_eq!((resp, got.len()), (Response::Bell { id }, 1));
    ipcd_monitor::segment::ring(got.into_vec()[0].as_fd());
    assert_eq!(bell_count(&bell), 1, "the server rang the client's doorbell");
    let (resp, got) = server.call(&Request::BellOf { id: id + 1_000_000 }, &[]).unwrap();
    assert_eq!((resp, got.len()), (Response::Error { code: ErrorCode::BadRequest }, 0));
    // Only its owner takes it back; then nobody gets it.
    server.notify(&Request::Unbell { id }).unwrap();
    assert_eq!(server.call(&Request::BellOf { id }, &[]).unwrap().0, Response::Bell { id });
    client.notify(&Request::Unbell { id }).unwrap();
    // A round trip on the client's channel orders its notification first.
    let _ = client.status().unwrap();
    assert!(matches!(server.call(&Request::BellOf { id }, &[]).unwrap().0, Response::Error { .. }));

    let report = client.status().unwrap();
    assert_eq!((report.status.connections, report.status.listeners, report.status.connects_total), (1, 1, 1));
    assert_eq!(report.listeners[0].pending, 1, "not yet accepted");
    assert_eq!(report.connections[0].states, [EndState::Open, EndState::Open]);
    // A FIN from A shows in the listing.
    // SAFETY: test: the handles of each ring side are used one at a time.
    let _ = unsafe { a.seg.producer(ipcd_ring::Side::A) }.unwrap().close();
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
    // The four sent to the kernel are counted by reason, and `ipcd status`
    // says so, with the listeners' process names.
    let report = client.status().unwrap();
    // The one other process (the asking one is not listed): its two
    // listeners and the accepting ends of the four connections.
    let p: Vec<_> = report.processes.iter().map(|p| (p.pid, p.listeners, p.connections)).collect();
    assert_eq!(p, [(std::process::id(), 2, 4)], "{report:?}");
    let st = report.status;
    let mut by_reason = [0; ipcd_proto::FALLBACK_KINDS];
    by_reason[Fallback::NoListener.index()] = 4;
    assert_eq!((st.fallbacks_total, st.fallbacks), (4, by_reason), "{st:?}");
    let out = Command::new(IPCD).args(["status", "--socket", &m.socket]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("to kernel by reason: no listener under ipcd 4\n"), "{text}");
    let me = format!("{}/{}", std::process::id(), std::fs::read_to_string("/proc/self/comm").unwrap().trim_end());
    assert!(text.lines().any(|l| l.starts_with(&me) && l.contains("127.0.0.2:")), "{me} not named:\n{text}");
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
    // A hello that claims another pid (as a process in a pid namespace of
    // its own does) is served as the process the kernel says it is.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let hello = Request::hello(1, uid, ipcd_proto::Caps::empty());
    raw.send_request(1, &hello, &[]).unwrap();
    match raw.recv_response().unwrap().1 {
        Response::Welcome { pid, .. } => assert_eq!(pid, std::process::id(), "the kernel's pid, not the claimed 1"),
        other => panic!("a hello claiming pid 1: {other:?}"),
    }
    // No common version.
    let raw = Channel::connect_abstract(m.socket.as_bytes()).unwrap();
    // SAFETY: getpid/getuid cannot fail.
    let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
    // Versions after every one this build speaks.
    let next = ipcd_proto::PROTOCOL_VERSIONS.end() + 1;
    let hello = Request::Hello { version_min: next, version_max: next + 3, pid, uid, caps: ipcd_proto::Caps::empty() };
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
    // The well-behaved client never noticed; the one in "another
    // namespace" is still served.
    let report = good.status().unwrap();
    assert_eq!((report.status.processes, report.status.listeners), (2, 0));
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
/// listener's owner. If the owner is gone by then (its channel closed,
/// not yet noticed), the connector is not left waiting on a connection
/// nobody will accept: it is told to use the kernel, whose listener is
/// gone too. The monitor is stopped while the owner goes, so it reads the
/// connect first.
#[test]
fn a_connect_to_an_acceptor_that_went_goes_to_the_kernel() {
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
    assert_eq!(resp, Response::UseKernel { reason: Fallback::NoListener });
    assert!(cfds.into_vec().is_empty());
    drop(lfd);
}

#[test]
fn a_dying_client_loses_its_listeners_and_its_peers_are_told() {
    let m = Monitor::start();
    let Brokered { server, mut client, addr, info, cfds, sfds, _lfd } = brokered(&m);
    let a = map(&cfds[0]);
    let bell = sleeper(&mut client, &a, ipcd_ring::Side::A);
    // The server had accepted it (claimed, as accept does) and written
    // something before it died, and read all it got.
    let b = map(&sfds[0]);
    assert!(b.seg.claim(std::process::id()), "the end was offered to the server");
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut stx = unsafe { b.seg.producer(ipcd_ring::Side::B) }.unwrap();
    assert_eq!(stx.write(b"bye").unwrap().len, 3);
    drop(server);
    drop(sfds);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::PeerGone { conn: info.conn });
    assert_eq!(bell_count(&bell), 1, "the client's sleeper was rung");
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { a.seg.consumer(ipcd_ring::Side::A) }.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 3, "bytes sent before death are still there");
    assert_eq!(rx.peer_state(), PeerState::Closed, "a clean death is a FIN");
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert!(unsafe { a.seg.producer(ipcd_ring::Side::A) }.unwrap().is_reader_closed());
    let report = client.status().unwrap();
    assert_eq!(report.status.listeners, 0);
    assert_eq!(report.connections[0].pids[1], 0, "side B shows as gone");
    assert_eq!(connect(&mut client, addr).0, Response::UseKernel { reason: Fallback::NoListener });
}

/// A connection still in a dead acceptor's queue (no accept claimed it)
/// is reset, as Linux resets a dead listener's queue.
#[test]
fn a_dying_acceptor_resets_what_it_never_accepted() {
    let m = Monitor::start();
    let Brokered { server, mut client, info, cfds, sfds, _lfd, .. } = brokered(&m);
    let a = map(&cfds[0]);
    let _bell = sleeper(&mut client, &a, ipcd_ring::Side::A);
    drop(server);
    drop(sfds);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::PeerGone { conn: info.conn });
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { a.seg.consumer(ipcd_ring::Side::A) }.unwrap();
    assert_eq!(rx.peer_state(), PeerState::Reset, "a queued connection of a dead listener is reset");
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
    let nobody = NobodyIpcd::new();
    let out = NobodyIpcd::output(&mut nobody.command(&["debug-connect", "--socket", &m.socket, &addr.to_string()]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("UseKernel { reason: OtherUser }"), "{text}");
    // Nor may it read who runs what on the monitor's user's ports.
    let out = NobodyIpcd::output(&mut nobody.command(&["status", "--socket", &m.socket]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("another user"), "{err}");
    // The same request from our own user is brokered.
    let out = Command::new(IPCD).args(["debug-connect", "--socket", &m.socket, &addr.to_string()]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("Connected"));
}

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

#[test]
fn a_connector_that_dies_after_connecting_through_its_ticket_is_closed_for_the_acceptor() {
    let m = Monitor::start();
    let WithStandby { server: _server, client, sb, cfds, sfds, .. } = with_standby(&m);
    let a = map(&cfds[0]);
    let b = map(&sfds[0]);
    assert!(a.seg.connect(sb.conn, SockAddr::V4 { ip: [127, 0, 0, 1], port: 7 }.to_words()).is_some());
    drop(client);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { b.seg.consumer(ipcd_ring::Side::B) }.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while rx.peer_state() == PeerState::Open {
        assert!(Instant::now() < deadline, "the dead connector's end stayed open");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `ipcd status` lists every connection however many there are: the report
/// goes through the client's outbox as it reads (an entry a packet; the
/// monitor dropped the client once its queue filled, at a few hundred).
#[test]
fn a_status_report_lists_every_connection() {
    const N: usize = 1500;
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 1, &lfd, addr, ListenFlags::empty()), Response::Ok);
    for _ in 0..N {
        // The fds go at once: the test keeps none of the segments.
        let (resp, _fds) = connect(&mut client, addr);
        let Response::Connected(info) = resp else { panic!("{resp:?}") };
        let _ = next_event(&server);
        // Accepted: out of the listener's backlog.
        server.notify(&Request::Accepted { conn: info.conn }).unwrap();
    }
    let report = m.client().status().expect("status with many connections");
    assert_eq!(report.status.connections as usize, N);
    assert_eq!(report.connections.len(), N, "every connection listed");
    assert_eq!(report.listeners.len(), 1);
}

/// `ipcd status --watch SECS --count N` prints a header and N lines of
/// rates; the connects brokered between two samples show in the rate;
/// a malformed interval is refused.
#[test]
fn status_watch_prints_rates() {
    let m = Monitor::start();
    let mut server = m.client();
    let mut client = m.client();
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    assert_eq!(listen(&mut server, 1, &lfd, addr, ListenFlags::empty()), Response::Ok);
    let mut watch = Command::new(IPCD)
        .args(["status", "--socket", &m.socket, "--watch", "0.5", "--count", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The header follows the first sample: the connects come after it.
    let mut out = std::io::BufReader::new(watch.stdout.take().unwrap());
    let mut header = String::new();
    std::io::BufRead::read_line(&mut out, &mut header).unwrap();
    assert!(header.contains("brokered/s"), "{header}");
    for _ in 0..20 {
        let (resp, _fds) = connect(&mut client, addr);
        let Response::Connected(info) = resp else { panic!("{resp:?}") };
        let _ = next_event(&server);
        server.notify(&Request::Accepted { conn: info.conn }).unwrap();
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut out, &mut text).unwrap();
    assert!(watch.wait().unwrap().success());
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(lines.iter().all(|l| l.split_whitespace().count() == 6), "{text}");
    let rates: Vec<f64> = lines.iter().map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap()).collect();
    assert!(rates.iter().sum::<f64>() > 0.0, "20 connects brokered in the two intervals: {text}");
    let bad = Command::new(IPCD).args(["status", "--socket", &m.socket, "--watch", "0"]).output().unwrap();
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("not an interval"));
}

/// A report of 100 000 connections reaches its reader whole. This host's
/// fd limit cannot hold 100 000 real ones (three monitor fds each), so
/// two processes report ends an earlier monitor made (`Held`, which need
/// no segment and list the same way), 50 000 each, one end of each of
/// 100 000 connections; both go, and the report is empty again.
#[test]
fn a_status_report_of_a_hundred_thousand_connections_is_read_whole() {
    const PER: u64 = 50_000;
    let m = Monitor::start();
    let mut holders = [m.client(), m.client()];
    let a = SockAddr::V4 { ip: [127, 0, 0, 1], port: 7000 };
    for (i, h) in holders.iter_mut().enumerate() {
        for k in 0..PER {
            let conn = i as u64 * PER + k + 1;
            let port = 10_000 + (conn % 50_000) as u16;
            let peer = SockAddr::V4 { ip: [127, 0, 0, 1], port };
            h.notify(&Request::Held { conn, side: Side::B, local: a, peer, open: true }).unwrap();
        }
        // A round trip: the monitor read every report of this channel.
        let _ = h.status().unwrap();
    }
    let report = m.client().status().expect("status with 100 000 connections");
    assert_eq!(report.status.connections, 100_000);
    assert_eq!(report.connections.len(), 100_000, "every connection listed");
    assert!(report.connections.iter().all(|c| c.states == [EndState::Unknown, EndState::Open]));
    drop(holders);
    let deadline = Instant::now() + Duration::from_secs(10);
    while m.client().status().unwrap().status.connections != 0 {
        assert!(Instant::now() < deadline, "the reports outlived their processes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A connector that could not map its end (its fds never came: it was at
/// its fd limit) lets it go with `Release { abort }`: the monitor resets
/// the end for it and rings the acceptor, who would otherwise wait for
/// ever on a connection nobody holds. (A `Close` says the holder closed
/// the ring itself, which it never mapped.)
#[test]
fn an_end_never_mapped_is_reset_for_its_holder() {
    let m = Monitor::start();
    let Brokered { server: mut srv, mut client, info, cfds, sfds, _lfd, .. } = brokered(&m);
    let b = map(&sfds[0]);
    let bell = sleeper(&mut srv, &b, ipcd_ring::Side::B);
    drop(cfds);
    client.notify(&Request::Release { conn: info.conn, side: info.side, abort: true }).unwrap();
    client.status().unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { b.seg.consumer(ipcd_ring::Side::B) }.unwrap();
    assert_eq!(rx.peer_state(), PeerState::Reset, "the acceptor sees the connector's end reset");
    assert_eq!(bell_count(&bell), 1, "the acceptor's sleeper was rung");
}
