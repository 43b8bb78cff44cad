//! The monitor's books of who holds what, driven by test clients: segments
//! reused by a pair, standby connections and their tickets, passed ends,
//! shares given back, listener bells.

mod common;

use ipcd_ring::ConnSegment;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use ipcd_proto::message::{ErrorCode, Fallback, Request, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};
use ipcd_ring::{PeerState, Segment, Ticket};

use common::*;

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
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { a.seg.producer(ipcd_ring::Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { b.seg.consumer(ipcd_ring::Side::B) }.unwrap();
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
    assert!(!other.reused && other.segment != first.segment && ofds.len() == 1);
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
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { b2.consumer(ipcd_ring::Side::B) }.unwrap();
    assert_eq!(rx.readable().unwrap(), 0, "the old connection's bytes are gone");
    assert_eq!(rx.peer_state(), PeerState::Open);
    assert_eq!(client.status().unwrap().status.reused_total, 1);

    // One end not keeping it: the other is told to forget it.
    close_both(&mut client, &mut server, again.conn, [true, false], false);
    let (event, _) = next_event(&client);
    assert_eq!(event, Response::Forget { segment: first.segment });
    let (Response::Connected(fresh), fds) = connect(&mut client, addr) else { panic!("not brokered") };
    assert!(!fresh.reused && fresh.segment != first.segment && fds.len() == 1);
    let _ = next_event(&server);

    // A process that goes away takes its pools with it: its partner forgets.
    close_both(&mut client, &mut server, fresh.conn, [true, true], true);
    drop(client);
    let (event, _) = next_event(&server);
    assert_eq!(event, Response::Forget { segment: fresh.segment });
}

/// An end passed over `SCM_RIGHTS` (`Pass`, with the kernel socket that
/// travels) goes to whoever claims it with that socket, and outlives its
/// sender's close; one nobody claims closes, as a dead holder's end does,
/// after the grace (10 s).
#[test]
fn a_passed_end_goes_to_its_claimer_or_closes_unclaimed() {
    let m = Monitor::start();
    let Brokered { mut server, client: _client, info, cfds, sfds, _lfd, .. } = brokered(&m);
    // Accepted (claimed, as accept does) before it is passed on.
    assert!(map(&sfds[0]).seg.claim(std::process::id()), "the end was offered to the server");
    let mut worker = m.client();
    let refused = Response::Error { code: ErrorCode::NoSuchConnection };
    let pass = Request::Pass { conn: info.conn, side: Side::B };
    let (sent, other, again) = (tcp_socket(), tcp_socket(), tcp_socket());
    assert_eq!(worker.call(&pass, &[sent.as_fd()]).unwrap().0, refused, "passed by a process that does not hold it");
    assert_eq!(worker.call(&Request::Claim, &[sent.as_fd()]).unwrap().0, refused, "nothing passed yet");

    assert_eq!(server.call(&pass, &[sent.as_fd()]).unwrap().0, Response::Ok);
    server.notify(&Request::Close { conn: info.conn, side: Side::B, keep: false }).unwrap();
    assert_eq!(worker.call(&Request::Claim, &[other.as_fd()]).unwrap().0, refused, "claimed with another socket");
    let (resp, wfds) = worker.call(&Request::Claim, &[sent.as_fd()]).unwrap();
    let Response::Reopened(got) = resp else { panic!("{resp:?}") };
    assert_eq!((got.conn, got.side, wfds.len()), (info.conn, Side::B, 1));
    assert_eq!(worker.call(&Request::Claim, &[sent.as_fd()]).unwrap().0, refused, "claimed twice");
    // The claimer reads what the client writes: the same segment.
    let a = map(&cfds[0]);
    let w = map(&wfds.into_vec()[0]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert_eq!(unsafe { a.seg.producer(ipcd_ring::Side::A) }.unwrap().write(b"hi").unwrap().len, 2);
    let mut buf = [0u8; 4];
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert_eq!(unsafe { w.seg.consumer(ipcd_ring::Side::B) }.unwrap().read(&mut buf).unwrap().len, 2);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { a.seg.consumer(ipcd_ring::Side::A) }.unwrap();
    assert_eq!(rx.peer_state(), PeerState::Open, "the sender's close did not end it");

    // Passed on again, never claimed: the end closes after the grace.
    assert_eq!(worker.call(&pass, &[again.as_fd()]).unwrap().0, Response::Ok);
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
    let sock = tcp_socket();
    let pass = Request::Pass { conn: info.conn, side: Side::A };
    assert_eq!(client.call(&pass, &[sock.as_fd()]).unwrap().0, Response::Ok);
    assert_eq!(a.seg.add_holder(ipcd_ring::Side::A), 2);
    // The client closes its copy as the library does: its share goes,
    // another is left, so no FIN; its `Close` is not sent yet.
    assert_eq!(a.seg.release_holder(ipcd_ring::Side::A), 1);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { a.seg.consumer(ipcd_ring::Side::B) }.unwrap();
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
    assert_eq!(unsafe { libc::write(cfds[1].as_raw_fd(), (&1u64 as *const u64).cast(), 8) }, 8);
    assert_eq!(bell_count(&lbell), 1);
    let Ticket::Connected(words) = b.seg.ticket(sb.conn) else { panic!("not connected") };
    assert_eq!(SockAddr::from_words(words), Some(source));
    carries_a_to_b(&a, &b);
    // Nobody said so: the monitor finds it when something names it (here
    // the acceptor's report), holds the next standby ready, and shows the
    // connection with the connector's address.
    server.notify(&Request::Accepted { conn: sb.conn }).unwrap();
    let (event, fds) = next_event(&client);
    let Response::Standby { dest, info: next, bell, .. } = event else { panic!("expected a standby, got {event:?}") };
    assert!(dest == addr && next.conn != sb.conn && !bell && fds.len() == 1, "{next:?}");
    let report = client.status().unwrap();
    let conn = report.connections.iter().find(|c| c.conn == sb.conn).expect("the used standby is a connection");
    assert_eq!(conn.addrs[0], source, "{conn:?}");
}

#[test]
fn each_standby_reaches_its_acceptor_before_its_connector() {
    let m = Monitor::start();
    let WithStandby { mut server, mut client, addr, sb, cfds, .. } = with_standby(&m);
    // Standbys come when one is used and when a closed one's segment goes
    // back to the pair's pool; each is checked as it is read.
    let mut segments = std::collections::HashMap::from([(sb.segment, map(&cfds[0]))]);
    let mut standbys = std::collections::VecDeque::from([sb]);
    let mut expected = std::collections::HashSet::from([sb.conn]);
    let mut reused = 0;
    for _ in 0..12 {
        while standbys.is_empty() {
            let (event, fds) = next_event(&client);
            let Response::Standby { info, .. } = event else { continue };
            // Its `Expect` already waits on the acceptor's channel, whether
            // the two went at once (a pooled segment: no fds) or not.
            for e in drain_events(&server) {
                if let Response::Expect { info, .. } = e {
                    expected.insert(info.conn);
                }
            }
            assert!(expected.contains(&info.conn), "standby {} came before its Expect", info.conn);
            if info.reused {
                reused += 1;
                assert!(fds.is_empty() && segments.contains_key(&info.segment));
            } else {
                segments.insert(info.segment, map(&fds[0]));
            }
            standbys.push_back(info);
        }
        let sb = standbys.pop_front().unwrap();
        // Connect through it, as the library does, and close both ends
        // keeping the segment: it goes back to the pair's pool.
        assert!(segments[&sb.segment].seg.connect(sb.conn, addr.to_words()).is_some());
        // (Not `close_both`: its round trip would read past the Expects.)
        server.notify(&Request::Accepted { conn: sb.conn }).unwrap();
        server.notify(&Request::Close { conn: sb.conn, side: Side::B, keep: true }).unwrap();
        client.notify(&Request::Close { conn: sb.conn, side: Side::A, keep: true }).unwrap();
    }
    assert!(reused > 0, "pooled segments served standbys");
}

/// Every event waiting on `c`'s channel now (none waited for).
fn drain_events(c: &ipcd_monitor::client::MonitorClient) -> Vec<Response> {
    let ch = c.channel();
    ch.set_nonblocking(true).unwrap();
    let mut got = Vec::new();
    while let Ok((_, r, _)) = ch.recv_response() {
        got.push(r);
    }
    ch.set_nonblocking(false).unwrap();
    got
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
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { a.seg.consumer(ipcd_ring::Side::A) }.unwrap();
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

/// A connection in flight between two processes cannot be taken by a third
/// (the attack: a process of another user said `Claim` for inode numbers
/// counting down from its own socket's and got a root process's segment).
/// A claim proves possession by sending the socket itself, a pass files
/// its end under the socket it sends, and a claimer of another user is
/// refused; the receiver the end was meant for still gets it.
#[test]
fn a_passed_end_is_claimed_only_with_its_socket_and_by_its_user() {
    let m = Monitor::start();
    let Brokered { mut server, client: _client, info, _lfd, .. } = brokered(&m);
    let mut thief = m.client();
    let sent = tcp_socket();
    let pass = Request::Pass { conn: info.conn, side: Side::B };
    assert_eq!(server.call(&pass, &[sent.as_fd()]).unwrap().0, Response::Ok);
    // Sockets of its own, however many, name nothing it was not passed.
    for _ in 0..64 {
        let mine = tcp_socket();
        let refused = Response::Error { code: ErrorCode::NoSuchConnection };
        assert_eq!(thief.call(&Request::Claim, &[mine.as_fd()]).unwrap().0, refused);
    }
    // Something that is not a socket is no proof at all.
    let (r, _w) = pipe();
    let bad = Response::Error { code: ErrorCode::BadRequest };
    assert_eq!(thief.call(&Request::Claim, &[r.as_fd()]).unwrap().0, bad);
    assert_eq!(server.call(&pass, &[r.as_fd()]).unwrap().0, bad, "a pass files its end under a socket");
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } == 0 {
        // Another user that really received the socket is still refused.
        let out = as_nobody(&m, &sent);
        assert!(out.contains("NotOwner"), "{out}");
    }
    let mut receiver = m.client();
    let (resp, fds) = receiver.call(&Request::Claim, &[sent.as_fd()]).unwrap();
    assert!(matches!(resp, Response::Reopened(got) if got.conn == info.conn), "{resp:?}");
    assert_eq!(fds.len(), 1);
}

/// A TCP socket of this process, as the kernel socket under an ipcd fd.
fn tcp_socket() -> OwnedFd {
    // SAFETY: plain socket creation; the fd is owned from here.
    unsafe { OwnedFd::from_raw_fd(libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0)) }
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut p = [-1; 2];
    // SAFETY: a pipe into a live array.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both fds are ours from here.
    unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) }
}

/// `ipcd debug-claim` as user 65534 with `sock` as its fd 3: the monitor's
/// answer, as printed.
fn as_nobody(m: &Monitor, sock: &OwnedFd) -> String {
    let nobody = NobodyIpcd::new();
    let raw = sock.as_raw_fd();
    let mut cmd = nobody.command(&["debug-claim", "--socket", &m.socket, "--fd", "3"]);
    // SAFETY: dup2 in the child before exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = NobodyIpcd::output(&mut cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A listener two processes share (the same socket under the same id,
/// as an exec'd child registers it), only the second serving it, with a
/// bell of its own: the pair's standby is issued to that process, rings
/// its bell, and goes on when the owner closes its copy (the listener is
/// handed on): a connect through it still reaches that process.
#[test]
fn a_shared_listeners_standby_goes_to_its_server_and_outlives_the_owner() {
    let m = Monitor::start();
    let (mut owner, mut worker, mut client) = (m.client(), m.client(), m.client());
    let (lfd, addr) = tcp_listener("127.0.0.1:0", false);
    let obell = eventfd();
    let req = Request::Listen { listener: 1, addr, backlog: 16, flags: ListenFlags::BELL };
    assert_eq!(owner.call(&req, &[lfd.as_fd(), obell.as_fd()]).unwrap().0, Response::Ok);
    let copy = lfd.try_clone().unwrap();
    let req = Request::Listen { listener: 1, addr, backlog: 16, flags: ListenFlags::empty() };
    assert_eq!(worker.call(&req, &[copy.as_fd()]).unwrap().0, Response::Ok);
    let wbell = eventfd();
    worker.channel().send_request(100, &Request::Serve { listener: 1, bell: true }, &[wbell.as_fd()]).unwrap();

    let (Response::Connected(first), _) = connect(&mut client, addr) else { panic!("not brokered") };
    let (event, _) = next_event(&worker);
    assert!(matches!(event, Response::Incoming { info, .. } if info.conn == first.conn), "{event:?}");
    close_both(&mut client, &mut worker, first.conn, [true, true], true);
    client.notify(&Request::Connect { dest: addr, source: None, nonblocking: false }).unwrap();
    let (event, cfds) = next_event(&client);
    let Response::Standby { info: sb, bell, .. } = event else { panic!("expected a standby, got {event:?}") };
    let (Response::Connected(again), _) = client.wait_reply().unwrap() else { panic!("not brokered") };
    assert!(bell && cfds.len() == 2, "the segment and the worker's bell");
    // SAFETY: writes 8 bytes to an eventfd.
    assert_eq!(unsafe { libc::write(cfds[1].as_raw_fd(), (&1u64 as *const u64).cast(), 8) }, 8);
    assert_eq!((bell_count(&wbell), bell_count(&obell)), (1, 0), "the bell is the worker's own");
    let (event, _) = next_event(&worker);
    assert!(matches!(event, Response::Expect { listener: 1, info } if info.conn == sb.conn), "{event:?}");
    let (event, _) = next_event(&worker);
    assert!(matches!(event, Response::Incoming { info, .. } if info.conn == again.conn), "{event:?}");

    // The owner closes its copy: the listener is the worker's now.
    assert_eq!(owner.call(&Request::Unlisten { listener: 1 }, &[]).unwrap().0, Response::Ok);
    let a = map(&cfds[0]);
    assert!(a.seg.connect(sb.conn, addr.to_words()).is_some(), "the standby outlived the owner's copy");
    // Told (the worker has its `Expect`), the monitor takes it into its
    // books as the worker's connection, not one whose listener went.
    client.notify(&Request::Use { conn: sb.conn, source: None }).unwrap();
    let report = client.status().unwrap();
    assert!(
        !drain_events(&client).contains(&Response::PeerGone { conn: sb.conn }),
        "the connection was reset as if its listener had gone"
    );
    let conn = report.connections.iter().find(|c| c.conn == sb.conn).expect("the used standby is a connection");
    assert_eq!(conn.states, [ipcd_proto::EndState::Open; 2], "{conn:?}");
}
