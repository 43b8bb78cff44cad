//! The SEQPACKET channel: messages with their fds, credentials, and every
//! malformed arrival turned into an error without leaking an fd.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use ipcd_proto::channel::{Channel, ChannelError, Listener};
use ipcd_proto::message::*;
use ipcd_proto::{DecodeError, SockAddr};

/// A pipe: (read end, write end), read end non-blocking.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) }, 0);
    // SAFETY: pipe2 succeeded; both fds are ours.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// Reads one byte: Some(byte), None at EOF; panics on EAGAIN.
fn read_byte(fd: &OwnedFd) -> Option<u8> {
    let mut b = 0u8;
    // SAFETY: one writable byte.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut b).cast(), 1) };
    assert!(n >= 0, "read: {}", std::io::Error::last_os_error());
    (n == 1).then_some(b)
}

fn write_byte(fd: &OwnedFd, b: u8) {
    // SAFETY: one readable byte.
    assert_eq!(unsafe { libc::write(fd.as_raw_fd(), (&raw const b).cast(), 1) }, 1);
}

fn is_cloexec(fd: &OwnedFd) -> bool {
    // SAFETY: F_GETFD on an open fd.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) & libc::FD_CLOEXEC != 0 }
}

const LOCAL: SockAddr = SockAddr::V4 { ip: [127, 0, 0, 1], port: 8080 };

#[test]
fn a_listen_request_carries_its_socket() {
    let (a, b) = Channel::pair().unwrap();
    let (r, w) = pipe();
    let req = Request::Listen { listener: 9, addr: LOCAL, backlog: 128, flags: ListenFlags::REUSEPORT };
    a.send_request(5, &req, &[w.as_fd()]).unwrap();
    drop(w);
    let (seq, got, fds) = b.recv_request().unwrap();
    assert_eq!((seq, got), (5, req));
    let fds = fds.into_vec();
    assert_eq!(fds.len(), 1);
    assert!(is_cloexec(&fds[0]), "received fds are close-on-exec");
    write_byte(&fds[0], 42);
    assert_eq!(read_byte(&r), Some(42), "the received fd is the same pipe");
}

#[test]
fn a_standby_carries_its_segment_then_the_listeners_bell_in_order() {
    let (a, b) = Channel::pair().unwrap();
    let pipes: Vec<_> = (0..2).map(|_| pipe()).collect();
    let info = ConnInfo {
        conn: 77,
        side: Side::A,
        local: LOCAL,
        peer: LOCAL,
        segment_len: 1 << 20,
        segment: 5,
        reused: false,
    };
    let standby = Response::Standby { dest: LOCAL, info, bell: true, acceptor: 7 };
    assert_eq!(Response::Connected(info).fd_count(), 1, "a connection carries its segment alone");
    assert_eq!(standby.fd_count(), 2);
    let ws: Vec<_> = pipes.iter().map(|(_, w)| w.as_fd()).collect();
    b.send_response(0, &standby, &ws).unwrap();
    let (_, resp, fds) = a.recv_response().unwrap();
    assert_eq!(resp, standby);
    for (i, fd) in fds.into_vec().iter().enumerate() {
        write_byte(fd, i as u8);
        assert_eq!(read_byte(&pipes[i].0), Some(i as u8));
    }
}

#[test]
fn a_reused_segment_travels_without_fds() {
    let (a, b) = Channel::pair().unwrap();
    let info =
        ConnInfo { conn: 78, side: Side::B, local: LOCAL, peer: LOCAL, segment_len: 1 << 20, segment: 5, reused: true };
    let resp = Response::Incoming { listener: 1, info, at: 5 };
    assert_eq!(resp.fd_count(), 0);
    b.send_response(0, &resp, &[]).unwrap();
    let (_, got, fds) = a.recv_response().unwrap();
    assert_eq!(got, resp);
    assert!(fds.into_vec().is_empty());
    let (_, w) = pipe();
    assert!(b.send_response(0, &resp, &[w.as_fd()]).is_err(), "fds with a reused segment are refused");
}

#[test]
fn both_ends_see_each_others_credentials() {
    let name = format!("ipcd-test-{}-{:?}", std::process::id(), std::thread::current().id());
    let listener = Listener::bind_abstract(name.as_bytes()).unwrap();
    let client = Channel::connect_abstract(name.as_bytes()).unwrap();
    let server = listener.accept(false).unwrap();
    // SAFETY: getpid/getuid cannot fail.
    let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
    for ch in [&client, &server] {
        let cred = ch.peer_cred().unwrap();
        assert_eq!((cred.pid, cred.uid), (pid, uid));
    }
    let hello = Request::Hello { version_min: 1, version_max: 1, pid, uid, caps: Caps::FORK | Caps::EXEC };
    client.send_request(1, &hello, &[]).unwrap();
    assert_eq!(server.recv_request().unwrap().1, hello);
    // A second listener on the same name is refused by the kernel.
    assert!(Listener::bind_abstract(name.as_bytes()).is_err());
}

#[test]
fn extra_fds_are_closed_not_leaked() {
    let (a, b) = Channel::pair().unwrap();
    let (r, w) = pipe();
    let mut buf = [0u8; MAX_FRAME];
    let n = Request::Status.encode(3, &mut buf).unwrap();
    // Status carries no fds: send it with two copies of the pipe's write end.
    a.send_packet(&buf[..n], &[w.as_fd(), w.as_fd()]).unwrap();
    drop(w);
    match b.recv_request() {
        Err(ChannelError::Decode(DecodeError::FdCount { expected: 0, got: 2 })) => {}
        other => panic!("expected an fd-count error, got {other:?}"),
    }
    assert_eq!(read_byte(&r), None, "every copy of the write end was closed");
}

#[test]
fn too_many_fds_are_refused_and_all_closed() {
    let (a, b) = Channel::pair().unwrap();
    let (r, w) = pipe();
    let mut buf = [0u8; MAX_FRAME];
    let n = Request::Status.encode(3, &mut buf).unwrap();
    let many: Vec<_> = (0..40).map(|_| w.as_fd()).collect();
    a.send_packet(&buf[..n], &many).unwrap();
    drop(w);
    assert!(matches!(b.recv_request(), Err(ChannelError::ControlTruncated)));
    assert_eq!(read_byte(&r), None, "no copy of the write end survived");
}

#[test]
fn oversized_packets_and_wrong_fd_counts_are_errors() {
    let (a, b) = Channel::pair().unwrap();
    a.send_packet(&[0u8; MAX_FRAME + 100], &[]).unwrap();
    assert!(matches!(b.recv_request(), Err(ChannelError::Truncated)));
    // Garbage of legal size is a decode error, and the channel still works after it.
    a.send_packet(&[0xffu8; 40], &[]).unwrap();
    assert!(matches!(b.recv_request(), Err(ChannelError::Decode(DecodeError::BadMagic(_)))));
    let (_, w) = pipe();
    let err = a.send_request(1, &Request::Status, &[w.as_fd()]).unwrap_err();
    assert!(matches!(err, ChannelError::FdCount { expected: 0, got: 1 }));
    a.send_request(2, &Request::Status, &[]).unwrap();
    assert_eq!(b.recv_request().unwrap().1, Request::Status);
}

#[test]
fn nonblocking_and_closed_channels() {
    let (a, b) = Channel::pair().unwrap();
    b.set_nonblocking(true).unwrap();
    assert!(b.recv_response().unwrap_err().is_would_block());
    a.send_response(4, &Response::Ok, &[]).unwrap();
    assert_eq!(b.recv_response().unwrap().0, 4);
    let mut bufs = [[0u8; MAX_FRAME + 1]; 2];
    assert!(b.recv_packets(&mut bufs, |_, _| panic!("nothing waits")).unwrap_err().is_would_block());
    drop(a);
    assert!(matches!(b.recv_response(), Err(ChannelError::Closed)));
    // The close comes as an error, or as a packet that is one.
    let mut closed = false;
    match b.recv_packets(&mut bufs, |_, r| closed |= matches!(r, Err(ChannelError::Closed))) {
        Ok(_) => assert!(closed, "a closed channel reads as closed"),
        Err(e) => assert!(matches!(e, ChannelError::Closed), "{e}"),
    }
}

#[test]
fn batches_go_in_order_and_a_bad_packet_among_them_closes_its_fds() {
    let (a, b) = Channel::pair().unwrap();
    // More than one packet holds, more than one call sends.
    let reqs: Vec<(u32, Request)> =
        (0..700u32).map(|i| (i + 1, Request::Close { conn: u64::from(i), side: Side::A, keep: false })).collect();
    let with_fd = [(1, Request::Listen { listener: 1, addr: LOCAL, backlog: 1, flags: ListenFlags::empty() })];
    assert!(matches!(a.send_requests(&with_fd), Err(ChannelError::FdCount { expected: 0, .. })));
    let mut sent = 0;
    let mut calls = 0;
    while sent < reqs.len() {
        sent += a.send_requests(&reqs[sent..]).unwrap();
        calls += 1;
    }
    assert_eq!(calls, 2, "up to 16 packets of whole frames per call");
    // A bad packet with an fd, then a good one.
    let (r, w2) = pipe();
    a.send_packet(&[0xffu8; 40], &[w2.as_fd()]).unwrap();
    drop(w2);
    a.send_request(99, &Request::Status, &[]).unwrap();

    let mut bufs = vec![[0u8; MAX_FRAME + 1]; 32];
    let mut got = Vec::new();
    let mut bad = 0;
    let mut packets = 0;
    loop {
        let read = b.recv_packets(&mut bufs, |bytes, fds| {
            let n = fds.map(|f| f.len()).unwrap();
            for r in Request::decode_packet(bytes, n) {
                match r {
                    Ok(req) => got.push(req),
                    Err(DecodeError::BadMagic(_)) => bad += 1,
                    other => panic!("unexpected {other:?}"),
                }
            }
        });
        match read {
            Ok(n) => packets += n,
            Err(e) if e.is_would_block() => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(packets < 40, "{packets} packets for 702 requests");
    assert_eq!(bad, 1);
    assert_eq!(got.len(), 701);
    assert_eq!(&got[..700], &reqs[..], "in order");
    assert_eq!(got[700], (99, Request::Status));
    assert_eq!(read_byte(&r), None, "the bad packet's fd was closed");
}

#[test]
fn events_batch_in_order_and_refuse_fds() {
    let (a, b) = Channel::pair().unwrap();
    let events: Vec<(u32, Response)> = (0..20u64).map(|conn| (0, Response::Withdraw { conn })).collect();
    let with_fd = [(0, Response::Bell { id: 1 })];
    assert!(matches!(a.send_responses(&with_fd), Err(ChannelError::FdCount { expected: 0, .. })));
    assert_eq!(a.send_responses(&[]).unwrap(), 0);
    let mut sent = 0;
    let mut calls = 0;
    while sent < events.len() {
        let n = a.send_responses(&events[sent..]).unwrap();
        assert!(n > 0 && n <= ipcd_proto::channel::BATCH, "{n} packets in one call");
        sent += n;
        calls += 1;
    }
    assert_eq!(calls, 2, "20 packets in two calls of at most 16");
    let got: Vec<(u32, Response)> = (0..20).map(|_| b.recv_response().map(|(seq, r, _)| (seq, r)).unwrap()).collect();
    assert_eq!(got, events, "one packet each, in order");
    let mut bufs = [[0u8; MAX_FRAME + 1]; 2];
    assert!(b.recv_packets(&mut bufs, |_, _| panic!("nothing more")).unwrap_err().is_would_block());
}

#[test]
fn socket_addresses_convert_both_ways() {
    let v6 = SockAddr::V6 { ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], port: 443, flowinfo: 0, scope_id: 0 };
    for a in [LOCAL, v6] {
        let (ss, len) = a.to_raw();
        // SAFETY: `ss` holds `len` bytes.
        assert_eq!(unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }, Some(a));
        // SAFETY: as above; a short length is refused.
        assert_eq!(unsafe { SockAddr::from_raw((&raw const ss).cast(), len - 1) }, None);
    }
    // The kernel agrees: bind a real socket and read it back.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname fills it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    // SAFETY: `ss` and `len` describe a writable buffer.
    assert_eq!(unsafe { libc::getsockname(l.as_raw_fd(), (&raw mut ss).cast(), &mut len) }, 0);
    // SAFETY: the kernel wrote `len` bytes.
    let got = unsafe { SockAddr::from_raw((&raw const ss).cast(), len) };
    assert_eq!(got, Some(SockAddr::V4 { ip: [127, 0, 0, 1], port }));
    assert_eq!(got.unwrap().to_string(), format!("127.0.0.1:{port}"));
}
