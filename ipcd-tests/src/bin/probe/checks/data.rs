//! Data-path checks: echo, large and many transfers, non-blocking calls,
//! MSG_PEEK/WAITALL, truncation and zerocopy, half-close, timeouts, names,
//! options, vectored calls, sendfile, threads and small writes.

use std::time::{Duration, Instant};

use ipcd_monitor::bench::workload::set_nonblocking;
use ipcd_tests::data::Prng;
use ipcd_tests::net::{self, cvt, Fail};

use crate::*;

/// Echo of random sizes in both directions, checked by hash (a writer
/// thread and a reader on the client, an echo thread on the server side).
pub(crate) fn echo(v6: bool, rounds: usize, seed: u64) -> Res {
    let (c, s) = pair(v6)?;
    let server = std::thread::spawn(move || echo_loop(s));
    client_rounds(c, rounds, seed)?;
    net::close(c);
    server.join().map_err(|_| "echo thread panicked".to_string())?.map_err(f)
}

/// 1 GiB one way, byte-exact (generated and checked on the fly).
pub(crate) fn large() -> Res {
    const TOTAL: u64 = 1 << 30;
    let (c, s) = pair(false)?;
    let writer = std::thread::spawn(move || -> Result<(), Fail> {
        let mut rng = Prng::new(7);
        let mut buf = vec![0u8; 1 << 20];
        let mut left = TOTAL;
        while left > 0 {
            rng.fill(&mut buf);
            net::send_all(c, &buf)?;
            left -= buf.len() as u64;
        }
        net::close(c);
        Ok(())
    });
    let mut rng = Prng::new(7);
    let mut want = vec![0u8; 1 << 20];
    let mut wpos = want.len();
    let mut buf = vec![0u8; 300_007];
    let mut got: u64 = 0;
    loop {
        let n = net::read_some(s, &mut buf).map_err(f)?;
        if n == 0 {
            break;
        }
        for &b in &buf[..n] {
            if wpos == want.len() {
                rng.fill(&mut want);
                wpos = 0;
            }
            ensure!(b == want[wpos], "byte {} differs", got);
            wpos += 1;
            got += 1;
        }
    }
    writer.join().map_err(|_| "writer panicked".to_string())?.map_err(f)?;
    ensure!(got == TOTAL, "got {got} of {TOTAL} bytes");
    net::close(s);
    Ok(())
}

/// Many connections open at once, each echoing its own bytes.
pub(crate) fn many() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let clients: Vec<i32> = (0..64).map(|_| net::connect_loopback(false, port)).collect::<Result<_, _>>().map_err(f)?;
    let servers: Vec<i32> = (0..64).map(|_| net::accept(l)).collect::<Result<_, _>>().map_err(f)?;
    for (i, &c) in clients.iter().enumerate() {
        net::send_all(c, format!("client {i:03}").as_bytes()).map_err(f)?;
    }
    // Which server fd got which client is for accept order to say: check
    // each message arrives whole on exactly one, and echo it back.
    let mut seen = [false; 64];
    for &s in &servers {
        let mut buf = [0u8; 10];
        net::read_exact(s, &mut buf).map_err(f)?;
        let i: usize =
            std::str::from_utf8(&buf[7..]).map_err(|e| e.to_string())?.parse().map_err(|e| format!("{e:?}"))?;
        ensure!(!seen[i], "message {i} twice");
        seen[i] = true;
        net::send_all(s, &buf).map_err(f)?;
    }
    for (i, &c) in clients.iter().enumerate() {
        let mut buf = [0u8; 10];
        net::read_exact(c, &mut buf).map_err(f)?;
        ensure!(buf == *format!("client {i:03}").as_bytes(), "client {i} got another's echo");
    }
    for fd in clients.into_iter().chain(servers).chain([l]) {
        net::close(fd);
    }
    Ok(())
}

/// Non-blocking connect: EINPROGRESS, then SO_ERROR 0 and a usable socket;
/// the next connect says 0, a third EISCONN. Non-blocking reads say EAGAIN.
pub(crate) fn nonblock() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = net::tcp_socket(false).map_err(f)?;
    set_nonblocking(c, true)?;
    // SAFETY: F_GETFL on our fd.
    ensure!(unsafe { libc::fcntl(c, libc::F_GETFL) } & libc::O_NONBLOCK != 0, "O_NONBLOCK not reported");
    let (ss, len) = net::loopback(false, port);
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(c, (&raw const ss).cast(), len) };
    ensure!(r == -1 && errno() == libc::EINPROGRESS, "connect gave {r}/{}", errno());
    std::thread::sleep(Duration::from_millis(50));
    ensure!(int_opt(c, libc::SOL_SOCKET, libc::SO_ERROR)? == 0, "SO_ERROR after connect");
    // The connect that sees the completion says 0, every later one EISCONN.
    // SAFETY: as above.
    let r = unsafe { libc::connect(c, (&raw const ss).cast(), len) };
    ensure!(r == 0, "second connect gave {r}/{}", errno());
    // SAFETY: as above.
    let r = unsafe { libc::connect(c, (&raw const ss).cast(), len) };
    ensure!(r == -1 && errno() == libc::EISCONN, "third connect gave {r}/{}", errno());
    let s = net::accept(l).map_err(f)?;
    let mut buf = [0u8; 8];
    let r = recv(c, &mut buf, 0);
    ensure!(r == -1 && errno() == libc::EAGAIN, "empty non-blocking recv gave {r}/{}", errno());
    let r = recv(s, &mut buf, libc::MSG_DONTWAIT);
    ensure!(r == -1 && errno() == libc::EAGAIN, "MSG_DONTWAIT recv gave {r}/{}", errno());
    ensure!(send(c, b"ping", 0) == 4, "send");
    std::thread::sleep(Duration::from_millis(20));
    ensure!(recv(s, &mut buf, libc::MSG_DONTWAIT) == 4 && &buf[..4] == b"ping", "data after connect");
    // Fill the send side: a non-blocking send stops with EAGAIN, never blocks.
    let chunk = vec![7u8; 65536];
    let mut sent = 0usize;
    loop {
        let r = send(c, &chunk, 0);
        if r < 0 {
            ensure!(errno() == libc::EAGAIN, "full send gave {}", errno());
            break;
        }
        sent += r as usize;
        ensure!(sent < 1 << 30, "send never filled up");
    }
    for fd in [c, s, l] {
        net::close(fd);
    }
    Ok(())
}

/// MSG_PEEK leaves the bytes; MSG_WAITALL waits for the whole buffer.
/// `MSG_TRUNC` discards (or with `MSG_PEEK` counts) bytes without a buffer;
/// a null buffer otherwise faults and leaves the bytes queued; with
/// `SO_ZEROCOPY`, `MSG_ZEROCOPY` sends report their completion on the
/// error queue and `POLLERR` (the kernel's msg_zerocopy selftest).
pub(crate) fn trunc_zerocopy() -> Res {
    let (c, s) = pair(false)?;
    ensure!(send(c, b"0123456789", 0) == 10, "send");
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: a null buffer is what MSG_TRUNC allows.
    let peeked = unsafe { libc::recv(s, std::ptr::null_mut(), 4, libc::MSG_TRUNC | libc::MSG_PEEK) };
    ensure!(peeked == 4, "MSG_TRUNC|MSG_PEEK: {peeked} ({})", errno());
    // SAFETY: as above.
    let dropped = unsafe { libc::recv(s, std::ptr::null_mut(), 4, libc::MSG_TRUNC) };
    ensure!(dropped == 4, "MSG_TRUNC: {dropped} ({})", errno());
    // SAFETY: a null buffer: the kernel's copy faults.
    let r = unsafe { libc::recv(s, std::ptr::null_mut(), 3, 0) };
    ensure!(r == -1 && errno() == libc::EFAULT, "recv into null: {r} ({})", errno());
    let mut buf = [0u8; 16];
    ensure!(recv(s, &mut buf, 0) == 6 && &buf[..6] == b"456789", "after MSG_TRUNC: {:?}", &buf[..6]);
    // SAFETY: as above, for a send.
    let r = unsafe { libc::send(c, std::ptr::null(), 3, 0) };
    ensure!(r == -1 && errno() == libc::EFAULT, "send from null: {r} ({})", errno());

    let one: i32 = 1;
    // SAFETY: an int option.
    cvt("setsockopt", unsafe { libc::setsockopt(c, libc::SOL_SOCKET, libc::SO_ZEROCOPY, (&raw const one).cast(), 4) })
        .map_err(f)?;
    for _ in 0..3 {
        ensure!(send(c, b"zc", libc::MSG_ZEROCOPY) == 2, "MSG_ZEROCOPY send");
    }
    let mut got = [0u8; 6];
    net::read_exact(s, &mut got).map_err(f)?;
    // Completions may come in one range or several; all three, each copied.
    let mut done = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while done.len() < 3 && Instant::now() < deadline {
        let mut p = libc::pollfd { fd: c, events: 0, revents: 0 };
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut p, 1, 100) };
        if p.revents & libc::POLLERR == 0 {
            continue;
        }
        let mut cbuf = [0u64; 16];
        // SAFETY: a zeroed msghdr is valid; its control buffer is `cbuf`.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: the msghdr above.
        let r = unsafe { libc::recvmsg(c, &mut msg, libc::MSG_ERRQUEUE) };
        ensure!(r == 0 && msg.msg_flags & libc::MSG_ERRQUEUE != 0, "error queue read: {r} ({})", errno());
        // SAFETY: the control message the call wrote, if any.
        let cm = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        ensure!(!cm.is_null(), "no control message");
        // SAFETY: as above; its data is a sock_extended_err.
        let (level, ty, ee) = unsafe {
            ((*cm).cmsg_level, (*cm).cmsg_type, libc::CMSG_DATA(cm).cast::<libc::sock_extended_err>().read_unaligned())
        };
        ensure!((level, ty) == (libc::SOL_IP, libc::IP_RECVERR), "completion message {level}.{ty}");
        ensure!(ee.ee_errno == 0 && ee.ee_origin == 5 && ee.ee_code & 1 == 1, "completion {ee:?}");
        done.extend(ee.ee_info..=ee.ee_data);
    }
    ensure!(done == [0, 1, 2], "completions {done:?}");
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: an empty msghdr.
    let r = unsafe { libc::recvmsg(c, &mut msg, libc::MSG_ERRQUEUE) };
    ensure!(r == -1 && errno() == libc::EAGAIN, "empty error queue: {r} ({})", errno());
    net::close(c);
    net::close(s);
    Ok(())
}

pub(crate) fn peek_waitall() -> Res {
    let (c, s) = pair(false)?;
    ensure!(send(c, b"hello", 0) == 5, "send");
    let mut buf = [0u8; 16];
    let r = recv(s, &mut buf, libc::MSG_PEEK);
    ensure!(r == 5 && &buf[..5] == b"hello", "peek gave {r}");
    let r = recv(s, &mut buf[..3], 0);
    ensure!(r == 3 && &buf[..3] == b"hel", "read after peek gave {r}");
    let r = recv(s, &mut buf, 0);
    ensure!(r == 2 && &buf[..2] == b"lo", "rest gave {r}");
    let writer = std::thread::spawn(move || {
        for part in [&b"abcd"[..], b"efgh", b"ijkl"] {
            std::thread::sleep(Duration::from_millis(20));
            send(c, part, 0);
        }
    });
    let r = recv(s, &mut buf[..12], libc::MSG_WAITALL);
    writer.join().map_err(|_| "writer panicked")?;
    ensure!(r == 12 && &buf[..12] == b"abcdefghijkl", "WAITALL gave {r}");
    net::close(c);
    net::close(s);
    Ok(())
}

/// Half-close: after SHUT_WR the peer reads end of stream and may still
/// send; our writes fail with EPIPE.
pub(crate) fn half_close() -> Res {
    let (c, s) = pair(false)?;
    ensure!(send(c, b"last", 0) == 4, "send");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
    let mut buf = [0u8; 8];
    ensure!(recv(s, &mut buf, 0) == 4, "data before FIN");
    ensure!(recv(s, &mut buf, 0) == 0, "FIN reads as end of stream");
    ensure!(send(s, b"reply", 0) == 5, "the other way still works");
    ensure!(recv(c, &mut buf, 0) == 5 && &buf[..5] == b"reply", "reply after SHUT_WR");
    let r = send(c, b"x", libc::MSG_NOSIGNAL);
    ensure!(r == -1 && errno() == libc::EPIPE, "send after SHUT_WR gave {r}/{}", errno());
    // SAFETY: as above, with a bad `how`.
    let r = unsafe { libc::shutdown(c, 7) };
    ensure!(r == -1 && errno() == libc::EINVAL, "bad how gave {r}/{}", errno());
    net::close(s);
    ensure!(recv(c, &mut buf, 0) == 0, "peer close reads as end of stream");
    net::close(c);
    Ok(())
}

/// SO_RCVTIMEO: a blocking recv gives up with EAGAIN after the timeout;
/// a signal handler without SA_RESTART interrupts a blocked recv (EINTR).
pub(crate) fn timeouts() -> Res {
    let (c, s) = pair(false)?;
    let tv = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    // SAFETY: a timeval of its size.
    cvt("setsockopt", unsafe {
        libc::setsockopt(
            c,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    })
    .map_err(f)?;
    let mut buf = [0u8; 8];
    let t = Instant::now();
    let r = recv(c, &mut buf, 0);
    let took = t.elapsed();
    ensure!(r == -1 && errno() == libc::EAGAIN, "timed-out recv gave {r}/{}", errno());
    ensure!(took >= Duration::from_millis(90), "gave up after {took:?}, before the timeout");
    handle(libc::SIGUSR1, false);
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let kicker = kick_then(me, libc::SIGUSR1, || {});
    let r = recv(s, &mut buf, 0);
    let e = errno();
    kicker.join().map_err(|_| "kicker panicked")?;
    ensure!(r == -1 && e == libc::EINTR, "interrupted recv gave {r}/{e}");
    net::close(c);
    net::close(s);
    Ok(())
}

/// Names: each end's local address is the other's peer; the client's port
/// is really reserved in the kernel; the fd is a socket of the right kind.
pub(crate) fn names(v6: bool) -> Res {
    let (c, s) = pair(v6)?;
    let (cl, sp) = (net::name(c, false).map_err(f)?, net::name(s, true).map_err(f)?);
    let (cp, sl) = (net::name(c, true).map_err(f)?, net::name(s, false).map_err(f)?);
    ensure!(cl == sp, "client local {cl:?} vs server's peer {sp:?}");
    ensure!(cp == sl, "client peer {cp:?} vs server local {sl:?}");
    ensure!(cl.1 != 0 && cl.1 != sl.1, "client port {}", cl.1);
    let other = net::tcp_socket(v6).map_err(f)?;
    let (ss, len) = net::loopback(v6, cl.1);
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::bind(other, (&raw const ss).cast(), len) };
    ensure!(r == -1 && errno() == libc::EADDRINUSE, "client port not reserved: bind gave {r}/{}", errno());
    net::close(other);
    ensure!(int_opt(c, libc::SOL_SOCKET, libc::SO_TYPE)? == libc::SOCK_STREAM, "SO_TYPE");
    let fam = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    ensure!(int_opt(s, libc::SOL_SOCKET, libc::SO_DOMAIN)? == fam, "SO_DOMAIN");
    ensure!(int_opt(s, libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? == 0, "SO_ACCEPTCONN on a connection");
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    cvt("fstat", unsafe { libc::fstat(s, &mut st) }).map_err(f)?;
    ensure!(st.st_mode & libc::S_IFMT == libc::S_IFSOCK, "fstat is not a socket");
    net::close(c);
    net::close(s);
    Ok(())
}

/// FIONREAD, SIOCOUTQ, TCP_NODELAY and SO_KEEPALIVE round trips, FIONBIO.
/// `TCP_INQ` and its control message type (`TCP_CM_INQ`); not in the libc crate.
pub(crate) const TCP_INQ: i32 = 36;

pub(crate) fn options() -> Res {
    let (c, s) = pair(false)?;
    ensure!(send(c, b"0123456789", 0) == 10, "send");
    std::thread::sleep(Duration::from_millis(20));
    let mut n: i32 = -1;
    // SAFETY: FIONREAD's int out pointer.
    cvt("ioctl", unsafe { libc::ioctl(s, libc::FIONREAD, &mut n) }).map_err(f)?;
    ensure!(n == 10, "FIONREAD {n}");
    for (level, opt) in [(libc::IPPROTO_TCP, libc::TCP_NODELAY), (libc::SOL_SOCKET, libc::SO_KEEPALIVE)] {
        let one: i32 = 1;
        // SAFETY: an int option.
        cvt("setsockopt", unsafe { libc::setsockopt(c, level, opt, (&raw const one).cast(), 4) }).map_err(f)?;
        ensure!(int_opt(c, level, opt)? == 1, "option {opt} did not stick");
    }
    // TCP_INQ: recvmsg tells how many bytes are left (the kernel's own
    // tcp_inq selftest checks this).
    let on: i32 = 1;
    // SAFETY: an int option.
    cvt("setsockopt", unsafe { libc::setsockopt(s, libc::IPPROTO_TCP, TCP_INQ, (&raw const on).cast(), 4) })
        .map_err(f)?;
    let mut four = [0u8; 4];
    let mut iov = libc::iovec { iov_base: four.as_mut_ptr().cast(), iov_len: 4 };
    let mut cbuf = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the fields set below point at live buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: the msghdr above.
    ensure!(unsafe { libc::recvmsg(s, &mut msg, 0) } == 4, "recvmsg with TCP_INQ");
    // SAFETY: CMSG_FIRSTHDR reads the msghdr the kernel (or ipcd) filled.
    let c0 = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    ensure!(!c0.is_null(), "no control message with TCP_INQ on (controllen {})", msg.msg_controllen);
    // SAFETY: a control message within `cbuf`, its data an int.
    let (level, ty, inq) =
        unsafe { ((*c0).cmsg_level, (*c0).cmsg_type, libc::CMSG_DATA(c0).cast::<i32>().read_unaligned()) };
    ensure!((level, ty, inq) == (libc::SOL_TCP, TCP_INQ, 6), "TCP_INQ message: level {level} type {ty} inq {inq}");
    // SAFETY: FIONBIO's int pointer.
    cvt("ioctl", unsafe { libc::ioctl(s, libc::FIONBIO, &on) }).map_err(f)?;
    let mut buf = [0u8; 16];
    ensure!(recv(s, &mut buf, 0) == 6, "read");
    let r = recv(s, &mut buf, 0);
    ensure!(r == -1 && errno() == libc::EAGAIN, "FIONBIO did not make it non-blocking: {r}/{}", errno());
    net::close(c);
    net::close(s);
    Ok(())
}

/// dup keeps the connection open until the last fd closes; readv/writev,
/// sendmsg/recvmsg and sendmmsg move the same bytes as read/write.
pub(crate) fn dup_vectored() -> Res {
    let (c, s) = pair(false)?;
    // SAFETY: dup of our fd.
    let c2 = cvt("dup", unsafe { libc::dup(c) }).map_err(f)?;
    net::close(c);
    let a = *b"vec";
    let b = *b"tored";
    let iov = [
        libc::iovec { iov_base: a.as_ptr() as *mut _, iov_len: 3 },
        libc::iovec { iov_base: b.as_ptr() as *mut _, iov_len: 5 },
    ];
    // SAFETY: two live iovecs.
    ensure!(unsafe { libc::writev(c2, iov.as_ptr(), 2) } == 8, "writev");
    let mut x = [0u8; 2];
    let mut y = [0u8; 6];
    let riov = [
        libc::iovec { iov_base: x.as_mut_ptr().cast(), iov_len: 2 },
        libc::iovec { iov_base: y.as_mut_ptr().cast(), iov_len: 6 },
    ];
    // SAFETY: a msghdr over two live iovecs.
    let r = unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = riov.as_ptr() as *mut _;
        m.msg_iovlen = 2;
        libc::recvmsg(s, &mut m, libc::MSG_WAITALL)
    };
    ensure!(r == 8 && &x == b"ve" && &y == b"ctored", "recvmsg gave {r}");
    // SAFETY: a zeroed mmsghdr array over live iovecs.
    let r = unsafe {
        let mut msgs: [libc::mmsghdr; 2] = std::mem::zeroed();
        msgs[0].msg_hdr.msg_iov = iov.as_ptr() as *mut _;
        msgs[0].msg_hdr.msg_iovlen = 1;
        msgs[1].msg_hdr.msg_iov = iov[1..].as_ptr() as *mut _;
        msgs[1].msg_hdr.msg_iovlen = 1;
        libc::sendmmsg(s, msgs.as_mut_ptr(), 2, 0)
    };
    ensure!(r == 2, "sendmmsg gave {r}");
    let mut buf = [0u8; 8];
    // SAFETY: a live iovec.
    let r = unsafe {
        let v = [libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: 8 }];
        libc::readv(c2, v.as_ptr(), 1)
    };
    ensure!(r > 0, "readv gave {r}");
    let mut got = r as usize;
    while got < 8 {
        got += net::read_some(c2, &mut buf[got..]).map_err(f)?;
    }
    ensure!(&buf == b"vectored", "readv bytes");
    net::close(c2);
    ensure!(recv(s, &mut buf, 0) == 0, "closing the last dup is the FIN");
    net::close(s);
    Ok(())
}

/// sendfile from a file to the socket, then a plain read of the rest.
pub(crate) fn sendfile() -> Res {
    let (c, s) = pair(false)?;
    let path = std::env::temp_dir().join(format!("ipcd-probe-{}", std::process::id()));
    let mut data = vec![0u8; 200_000];
    Prng::new(3).fill(&mut data);
    std::fs::write(&path, &data).map_err(|e| e.to_string())?;
    let file = std::fs::File::open(&path).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    use std::os::fd::AsRawFd;
    let mut off: libc::off_t = 1000;
    let reader = std::thread::spawn(move || -> Result<Vec<u8>, Fail> {
        let mut out = vec![0u8; 199_000];
        net::read_exact(s, &mut out)?;
        net::close(s);
        Ok(out)
    });
    // SAFETY: a live offset; the file and the socket are open.
    let r = unsafe { libc::sendfile(c, file.as_raw_fd(), &mut off, 199_000) };
    ensure!(r == 199_000 && off == 200_000, "sendfile gave {r}, offset {off}");
    let out = reader.join().map_err(|_| "reader panicked")?.map_err(f)?;
    ensure!(out == data[1000..], "sendfile bytes differ");
    net::close(c);
    Ok(())
}

/// A thread-per-connection echo server and sixteen client threads; then
/// four threads sending on one socket at once, each send contiguous.
pub(crate) fn threads() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let server = std::thread::spawn(move || -> Result<(), Fail> {
        let mut workers = Vec::new();
        for _ in 0..16 {
            let s = net::accept(l)?;
            workers.push(std::thread::spawn(move || echo_loop(s)));
        }
        for w in workers {
            w.join().expect("echo thread")?;
        }
        Ok(())
    });
    let clients: Vec<_> = (0..16u64)
        .map(|i| {
            std::thread::spawn(move || -> Res {
                let c = net::connect_loopback(false, port).map_err(f)?;
                let r = client_rounds(c, 10, 100 + i);
                net::close(c);
                r
            })
        })
        .collect();
    for c in clients {
        c.join().map_err(|_| "client thread panicked")??;
    }
    server.join().map_err(|_| "server panicked")?.map_err(f)?;
    net::close(l);

    let (c, s) = pair(false)?;
    let big: i32 = 1 << 20;
    // SAFETY: an int option; a large kernel buffer keeps Linux's sends whole too.
    unsafe { libc::setsockopt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, (&raw const big).cast(), 4) };
    const MSG: usize = 512;
    const EACH: usize = 100;
    let senders: Vec<_> = (0..4u8)
        .map(|t| {
            std::thread::spawn(move || {
                let msg = [b'a' + t; MSG];
                (0..EACH).all(|_| send(c, &msg, 0) == MSG as isize)
            })
        })
        .collect();
    let mut buf = vec![0u8; MSG * EACH * 4];
    net::read_exact(s, &mut buf).map_err(f)?;
    for t in senders {
        ensure!(t.join().map_err(|_| "sender panicked")?, "a send failed");
    }
    for (i, chunk) in buf.chunks(MSG).enumerate() {
        ensure!(chunk.iter().all(|&b| b == chunk[0]), "message {i} is interleaved with another");
    }
    net::close(c);
    net::close(s);
    Ok(())
}

/// A writer of small writes (1 to 64 bytes) and a reader with a large
/// buffer that falls behind it, its reads a mix of blocking, non-blocking,
/// `MSG_PEEK` and `MSG_WAITALL`: every byte arrives once and in order, and
/// the end of stream after the last. (Such a reader pauses between its
/// looks under ipcd: see `stream::recv`.)
pub(crate) fn small_writes() -> Res {
    const TOTAL: usize = 4 << 20;
    let pattern = |at: usize| (at % 251) as u8;
    let (c, s) = pair(false)?;
    let writer = std::thread::spawn(move || -> Res {
        let mut rng = Prng::new(7);
        let mut buf = [0u8; 64];
        let mut sent = 0;
        let mut res = Ok(());
        while sent < TOTAL && res.is_ok() {
            let n = rng.range(1, 64).min(TOTAL - sent);
            for (i, b) in buf[..n].iter_mut().enumerate() {
                *b = pattern(sent + i);
            }
            res = net::send_all(c, &buf[..n]).map_err(f);
            sent += n;
        }
        // Even after a failure: the reader must not wait forever.
        // SAFETY: shutdown of our socket.
        cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
        res
    });
    let mut rng = Prng::new(11);
    let mut buf = vec![0u8; 1 << 16];
    let mut got = 0;
    loop {
        let flags = [libc::MSG_DONTWAIT, libc::MSG_PEEK, libc::MSG_WAITALL, 0, 0, 0][rng.range(0, 5)];
        let room = if flags == libc::MSG_WAITALL { rng.range(1, 200) } else { buf.len() };
        let n = recv(s, &mut buf[..room], flags);
        if n < 0 {
            ensure!(flags == libc::MSG_DONTWAIT && errno() == libc::EAGAIN, "recv (flags {flags:#x}): {}", errno());
            continue;
        }
        if n == 0 {
            break;
        }
        let n = n as usize;
        if let Some(i) = (0..n).find(|&i| buf[i] != pattern(got + i)) {
            return Err(format!("byte {} is {}, not {}", got + i, buf[i], pattern(got + i)));
        }
        if flags != libc::MSG_PEEK {
            got += n;
        }
    }
    ensure!(got == TOTAL, "end of stream after {got} of {TOTAL} bytes");
    writer.join().map_err(|_| "writer panicked")??;
    net::close(c);
    net::close(s);
    Ok(())
}

/// Bad arguments get Linux's errors: `MSG_OOB` with no urgent data is
/// EINVAL (the bytes stay), `recvmsg` with a negative name length is
/// EINVAL before anything is taken, `recvfrom` with a negative address
/// length takes the bytes and then fails with EINVAL, `recvmmsg` with a
/// malformed timeout is EINVAL before anything else, and a negative
/// `SO_RCVTIMEO` makes a receive on an empty socket fail with EAGAIN at
/// once.
pub(crate) fn bad_args() -> Res {
    let (c, s) = pair(false)?;
    let mut b = [0u8; 4];
    let arrived = |s: i32| -> Res {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD into a live int.
            cvt("ioctl", unsafe { libc::ioctl(s, libc::FIONREAD, &mut n) }).map_err(f)?;
            if n >= 4 {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "4 bytes never arrived");
            poll_n(&mut [pollfd(s, libc::POLLIN)], 100);
        }
    };
    net::send_all(c, b"abcd").map_err(f)?;
    arrived(s)?;
    ensure!(recv(s, &mut b, libc::MSG_OOB) == -1 && errno() == libc::EINVAL, "MSG_OOB: errno {}", errno());
    let mut iov = libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: 4 };
    // SAFETY: all-zero structs are valid.
    let (mut name, mut m): (libc::sockaddr_storage, libc::msghdr) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
    m.msg_name = (&raw mut name).cast();
    m.msg_namelen = libc::socklen_t::MAX;
    m.msg_iov = &raw mut iov;
    m.msg_iovlen = 1;
    // SAFETY: a msghdr over live buffers (its name length is the bad argument).
    let r = unsafe { libc::recvmsg(s, &mut m, 0) };
    ensure!(r == -1 && errno() == libc::EINVAL, "recvmsg, name length -1: {r}, errno {}", errno());
    ensure!(recv(s, &mut b, libc::MSG_PEEK) == 4, "recvmsg took bytes it refused");
    let mut from_len = libc::socklen_t::MAX;
    // SAFETY: live buffers; the address length is the bad argument.
    let r = unsafe { libc::recvfrom(s, b.as_mut_ptr().cast(), 4, 0, (&raw mut name).cast(), &mut from_len) };
    ensure!(r == -1 && errno() == libc::EINVAL, "recvfrom, address length -1: {r}, errno {}", errno());
    ensure!(recv(s, &mut b, libc::MSG_DONTWAIT) == -1 && errno() == libc::EAGAIN, "recvfrom left its bytes");
    for bad in [libc::timespec { tv_sec: 0, tv_nsec: 1_000_000_000 }, libc::timespec { tv_sec: -1, tv_nsec: 0 }] {
        let mut bad = bad;
        // SAFETY: an all-zero mmsghdr is valid; its one iovec is live.
        let mut mm: libc::mmsghdr = unsafe { std::mem::zeroed() };
        mm.msg_hdr.msg_iov = &raw mut iov;
        mm.msg_hdr.msg_iovlen = 1;
        // SAFETY: one live mmsghdr and a timespec (the bad argument).
        let r = unsafe { libc::recvmmsg(s, &mut mm, 1, libc::MSG_DONTWAIT, &mut bad) };
        ensure!(
            r == -1 && errno() == libc::EINVAL,
            "recvmmsg, timeout {}.{}: {r}, errno {}",
            bad.tv_sec,
            bad.tv_nsec,
            errno()
        );
    }
    let tv = libc::timeval { tv_sec: -1, tv_usec: 0 };
    let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: a timeval of its size.
    let r = unsafe { libc::setsockopt(s, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), tv_len) };
    cvt("setsockopt", r).map_err(f)?;
    let t = Instant::now();
    ensure!(recv(s, &mut b, 0) == -1 && errno() == libc::EAGAIN, "negative SO_RCVTIMEO: errno {}", errno());
    ensure!(t.elapsed() < Duration::from_secs(2), "a negative SO_RCVTIMEO waited {:?}", t.elapsed());
    net::close(c);
    net::close(s);
    Ok(())
}

/// Sets option `level`/`name` to the bytes of `val` on `fd`.
pub(crate) fn set_opt<T>(fd: i32, level: i32, name: i32, val: &T) -> Res {
    let len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `val` is a live value of `len` bytes.
    cvt("setsockopt", unsafe { libc::setsockopt(fd, level, name, (val as *const T).cast(), len) }).map_err(f)?;
    Ok(())
}

/// Reads option `level`/`name` of `fd` as `N` bytes.
fn opt_bytes<const N: usize>(fd: i32, level: i32, name: i32) -> Result<[u8; N], String> {
    let mut v = [0u8; N];
    let mut len = N as libc::socklen_t;
    // SAFETY: an out buffer of `len` bytes.
    cvt("getsockopt", unsafe { libc::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) }).map_err(f)?;
    Ok(v)
}

/// An accepted socket is a copy of its listener, options and all:
/// timeouts, keepalive and its timers, linger, `TCP_NODELAY`,
/// `TCP_USER_TIMEOUT`, `SO_OOBINLINE` read back the same, the receive
/// timeout ends a `recv` with `EAGAIN`, and a zero linger makes its close
/// a reset.
pub(crate) fn inherited_options() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let rcv = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
    let snd = libc::timeval { tv_sec: 1, tv_usec: 500_000 };
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    set_opt(l, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &rcv)?;
    set_opt(l, libc::SOL_SOCKET, libc::SO_SNDTIMEO, &snd)?;
    set_opt(l, libc::SOL_SOCKET, libc::SO_LINGER, &linger)?;
    let ints = [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::SOL_SOCKET, libc::SO_OOBINLINE, 1),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, 4321),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 77),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 4),
    ];
    for (level, name, v) in ints {
        set_opt(l, level, name, &v)?;
    }
    let c = net::connect_loopback(false, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    for (level, name, v) in ints {
        ensure!(int_opt(s, level, name)? == v, "option {level}/{name} not inherited");
    }
    let tv = |t: libc::timeval| (t.tv_sec, t.tv_usec);
    for (name, want) in [(libc::SO_RCVTIMEO, rcv), (libc::SO_SNDTIMEO, snd)] {
        let got: [u8; 16] = opt_bytes(s, libc::SOL_SOCKET, name)?;
        // SAFETY: 16 bytes read as the timeval they are.
        let got: libc::timeval = unsafe { std::ptr::read_unaligned(got.as_ptr().cast()) };
        ensure!(tv(got) == tv(want), "timeout {name} is {:?}", tv(got));
    }
    let got: [u8; 8] = opt_bytes(s, libc::SOL_SOCKET, libc::SO_LINGER)?;
    ensure!(got == [1, 0, 0, 0, 0, 0, 0, 0], "SO_LINGER {got:?}");
    // The timeout works: nothing comes, the read gives up. Should it not,
    // a byte sent after 5 s ends the read (and the check fails).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let done = std::sync::Arc::clone(&done);
        std::thread::spawn(move || {
            for _ in 0..50 {
                std::thread::sleep(Duration::from_millis(100));
                if done.load(std::sync::atomic::Ordering::Relaxed) {
                    return;
                }
            }
            send(c, b"x", libc::MSG_NOSIGNAL);
        })
    };
    let started = Instant::now();
    let mut buf = [0u8; 4];
    let r = recv(s, &mut buf, 0);
    let e = errno();
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watchdog.join();
    ensure!(r == -1 && e == libc::EAGAIN, "recv on an idle accepted socket: {r} errno {e}");
    ensure!(started.elapsed() >= Duration::from_millis(150), "the receive timeout ended early");
    // A zero linger, inherited: the close resets the connection.
    net::close(s);
    let r = recv(c, &mut buf, 0);
    let e = errno();
    ensure!(r == -1 && e == libc::ECONNRESET, "after the accepted end closed with zero linger: {r} errno {e}");
    net::close(c);
    net::close(l);
    Ok(())
}

/// `TCP_INFO`'s state, round trip, bytes acknowledged and received, as a
/// connection goes: the counts in sequence space (the connector's SYN and
/// each FIN count; a byte sent is acknowledged once its peer's stack has
/// it), `FIN_WAIT2` and `CLOSE_WAIT` after a shutdown, `TCP_CLOSE` after
/// both.
pub(crate) fn tcp_info() -> Res {
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    struct Info {
        state: u8,
        rtt_set: bool,
        acked: u64,
        received: u64,
    }
    let info = |fd: i32| -> Result<Info, String> {
        let b: [u8; 136] = opt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO)?;
        let u64_at = |at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]));
        let rtt = u32::from_ne_bytes(b[68..72].try_into().unwrap_or([0; 4]));
        Ok(Info { state: b[0], rtt_set: rtt > 0, acked: u64_at(120), received: u64_at(128) })
    };
    // Polls `fd`'s info until `want` (the kernel acknowledges asynchronously).
    let wait_for = |fd: i32, want: Info| -> Res {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = info(fd)?;
            if got == want {
                return Ok(());
            }
            ensure!(Instant::now() < deadline, "TCP_INFO of fd {fd}: {got:?}, expected {want:?}");
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let (c, s) = pair(false)?;
    wait_for(c, Info { state: 1, rtt_set: true, acked: 1, received: 0 })?;
    wait_for(s, Info { state: 1, rtt_set: true, acked: 0, received: 0 })?;
    // TCP_MAXSEG of an established connection is the loopback's segment
    // size (tens of kilobytes), not an unconnected socket's default 536.
    let unconnected = net::tcp_socket(false).map_err(f)?;
    let default = int_opt(unconnected, libc::IPPROTO_TCP, libc::TCP_MAXSEG)?;
    net::close(unconnected);
    for fd in [c, s] {
        let mss = int_opt(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG)?;
        ensure!(mss > 4 * default, "TCP_MAXSEG of an established connection: {mss} (unconnected: {default})");
    }
    net::send_all(c, &[7u8; 1000]).map_err(f)?;
    let mut buf = [0u8; 1000];
    net::read_exact(s, &mut buf).map_err(f)?;
    net::send_all(s, &[9u8; 300]).map_err(f)?;
    net::read_exact(c, &mut buf[..300]).map_err(f)?;
    wait_for(c, Info { state: 1, rtt_set: true, acked: 1001, received: 300 })?;
    wait_for(s, Info { state: 1, rtt_set: true, acked: 300, received: 1000 })?;
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
    wait_for(c, Info { state: 5, rtt_set: true, acked: 1002, received: 300 })?;
    wait_for(s, Info { state: 8, rtt_set: true, acked: 300, received: 1001 })?;
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(s, libc::SHUT_WR) }).map_err(f)?;
    wait_for(c, Info { state: 7, rtt_set: true, acked: 1002, received: 301 })?;
    wait_for(s, Info { state: 7, rtt_set: true, acked: 301, received: 1001 })?;
    net::close(c);
    net::close(s);
    Ok(())
}

/// `SO_TIMESTAMP` and `SO_TIMESTAMPNS` stamp what a `recvmsg` reads, in
/// Linux's order with `TCP_INQ`: the stamp (a `timeval`, then a
/// `timespec`, near the time of the call) first, the bytes left second;
/// a read with the stamps off carries `TCP_INQ` alone.
pub(crate) fn timestamps() -> Res {
    let (c, s) = pair(false)?;
    set_opt(s, libc::IPPROTO_TCP, TCP_INQ, &1i32)?;
    // (option, control message type, sub-second unit per second)
    for (opt, ty, per_sec) in [(libc::SO_TIMESTAMP, libc::SCM_TIMESTAMP, 1_000_000i64), (35, 35, 1_000_000_000)] {
        set_opt(s, libc::SOL_SOCKET, opt, &1i32)?;
        // Linux turns receive stamping on through a static key it flips
        // from a work queue: bytes that arrive first may carry no stamp.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            net::send_all(c, b"?").map_err(f)?;
            let (_, cmsgs) = recv_with_control(s)?;
            if cmsgs.iter().any(|m| m.1 == ty) {
                break;
            }
            ensure!(Instant::now() < deadline, "no read carried a stamp in 5 s");
            std::thread::sleep(Duration::from_millis(10));
        }
        net::send_all(c, b"stamped").map_err(f)?;
        let (got, cmsgs) = recv_with_control(s)?;
        ensure!(got == 7, "read {got} bytes");
        ensure!(cmsgs.len() == 2, "control messages {cmsgs:?}");
        let (level, t, data) = &cmsgs[0];
        ensure!((*level, *t) == (libc::SOL_SOCKET, ty), "first control message {level}/{t}, expected the stamp");
        let sec = i64::from_ne_bytes(data[..8].try_into().unwrap_or([0; 8]));
        let sub = i64::from_ne_bytes(data[8..16].try_into().unwrap_or([0; 8]));
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_err(|e| e.to_string())?;
        ensure!((0..per_sec).contains(&sub), "stamp's fraction {sub} of {per_sec}");
        ensure!((now.as_secs() as i64 - sec).abs() <= 5, "stamp {sec} s, now {:?}", now);
        ensure!((cmsgs[1].0, cmsgs[1].1) == (libc::SOL_TCP, TCP_INQ), "second control message {:?}", cmsgs[1]);
    }
    set_opt(s, libc::SOL_SOCKET, libc::SO_TIMESTAMP, &0i32)?;
    net::send_all(c, b"plain").map_err(f)?;
    let (got, cmsgs) = recv_with_control(s)?;
    ensure!(got == 5 && cmsgs.len() == 1 && cmsgs[0].1 == TCP_INQ, "with the stamps off: {got} bytes, {cmsgs:?}");
    net::close(c);
    net::close(s);
    Ok(())
}

/// A control message: level, type, data.
type Cmsg = (i32, i32, Vec<u8>);

/// One `recvmsg` into a 64-byte buffer with room for control messages:
/// bytes read and the control messages.
fn recv_with_control(s: i32) -> Result<(isize, Vec<Cmsg>), String> {
    let mut buf = [0u8; 64];
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = [0u64; 32];
    // SAFETY: a zeroed msghdr is valid; the fields set point at live buffers.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = &raw mut iov;
    m.msg_iovlen = 1;
    m.msg_control = cbuf.as_mut_ptr().cast();
    m.msg_controllen = std::mem::size_of_val(&cbuf);
    // SAFETY: the msghdr above.
    let got = unsafe { libc::recvmsg(s, &mut m, 0) };
    ensure!(got >= 0, "recvmsg: errno {}", errno());
    let mut out = Vec::new();
    // SAFETY: walking the control messages recvmsg wrote into `cbuf`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&m);
        while !c.is_null() {
            let len = (*c).cmsg_len - libc::CMSG_LEN(0) as usize;
            let data = std::slice::from_raw_parts(libc::CMSG_DATA(c), len).to_vec();
            out.push(((*c).cmsg_level, (*c).cmsg_type, data));
            c = libc::CMSG_NXTHDR(&m, c);
        }
    }
    Ok((got, out))
}

/// `SO_SNDBUF` limits what a connection holds, as on Linux: a
/// non-blocking write of three times the send buffer is partial; once the
/// connection is full a blocking send waits, and raising the buffer lets
/// it go on; every byte then arrives, in order.
pub(crate) fn sndbuf() -> Res {
    let (c, s) = pair(false)?;
    set_opt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, &8192i32)?;
    let eff = int_opt(c, libc::SOL_SOCKET, libc::SO_SNDBUF)? as usize;
    let chunk = vec![0x5au8; 3 * eff];
    let n = send(c, &chunk, libc::MSG_DONTWAIT);
    ensure!(n > 0 && (n as usize) < chunk.len(), "a non-blocking write of 3 x {eff} took {n} (errno {})", errno());
    let mut total = n as usize + fill(c, &chunk)?;
    let sender = std::thread::spawn(move || send(c, &[0x5a; 1000], 0));
    std::thread::sleep(Duration::from_millis(200));
    ensure!(!sender.is_finished(), "a send to a full connection did not wait");
    set_opt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, &(1i32 << 20))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sender.is_finished() {
        ensure!(Instant::now() < deadline, "the blocked send did not go on once the buffer was raised");
        std::thread::sleep(Duration::from_millis(5));
    }
    let n = sender.join().map_err(|_| "sender panicked".to_string())?;
    ensure!(n == 1000, "the blocked send took {n}");
    total += 1000;
    let mut got = vec![0u8; total];
    net::read_exact(s, &mut got).map_err(f)?;
    ensure!(got.iter().all(|&b| b == 0x5a), "a byte changed");
    net::close(c);
    net::close(s);
    Ok(())
}

/// A mapping of `len` bytes with protection `prot`, never unmapped (the
/// check's process ends soon).
fn mapping(len: usize, prot: i32) -> Result<*mut u8, String> {
    // SAFETY: a fresh anonymous mapping.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0) };
    ensure!(p != libc::MAP_FAILED, "mmap: errno {}", errno());
    Ok(p.cast())
}

/// Waits until `n` bytes are queued on `s`.
fn queued(s: i32, n: i32) -> Res {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut k: libc::c_int = 0;
        // SAFETY: FIONREAD into a live int.
        cvt("ioctl", unsafe { libc::ioctl(s, libc::FIONREAD, &mut k) }).map_err(f)?;
        if k >= n {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{n} bytes never arrived (FIONREAD {k})");
        poll_n(&mut [pollfd(s, libc::POLLIN)], 100);
    }
}

/// A bad pointer gives `EFAULT`, never a crash, and refused bytes stay
/// queued: unreadable and unwritable buffers, iovec arrays, a msghdr and
/// its control buffer, an fd_set, pollfd and epoll arrays, name and
/// length pointers. A buffer that faults part way moves at most the bytes
/// before the fault.
pub(crate) fn bad_pointers() -> Res {
    let (c, s) = pair(false)?;
    let none = mapping(8192, libc::PROT_NONE)?;
    let ro = mapping(4096, libc::PROT_READ)?;
    let efault = |what: &str, r: isize| -> Res {
        ensure!(r == -1 && errno() == libc::EFAULT, "{what}: {r}, errno {}", errno());
        Ok(())
    };
    // SAFETY: each call below passes one bad pointer on purpose (`none`,
    // `ro`) and live buffers otherwise; the call must fail, not touch it.
    unsafe {
        efault("send from an unmapped buffer", libc::send(c, none.cast(), 16, 0))?;
        efault("write from an unmapped buffer", libc::write(c, none.cast(), 16))?;
        net::send_all(c, b"abcd").map_err(f)?;
        queued(s, 4)?;
        efault("recv into an unmapped buffer", libc::recv(s, none.cast(), 4, 0))?;
        efault("read into a read-only buffer", libc::read(s, ro.cast(), 4))?;
        let bad_iov = libc::iovec { iov_base: none.cast(), iov_len: 4 };
        efault("readv into an unmapped buffer", libc::readv(s, &bad_iov, 1))?;
        efault("writev from an unmapped iovec array", libc::writev(c, none.cast(), 1) as isize)?;
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = none.cast();
        m.msg_iovlen = 1;
        efault("recvmsg with an unmapped msg_iov", libc::recvmsg(s, &mut m, 0))?;
        efault("sendmsg with an unmapped msg_iov", libc::sendmsg(c, &m, 0))?;
        efault("recvmsg with an unmapped msghdr", libc::recvmsg(s, none.cast(), 0))?;
        efault("sendmsg with an unmapped msghdr", libc::sendmsg(c, none.cast(), 0))?;
        m.msg_iov = &raw mut iov;
        m.msg_control = none.cast();
        m.msg_controllen = 64;
        efault("sendmsg with an unmapped msg_control", libc::sendmsg(c, &m, 0))?;
        // Nothing of the refused sends arrived; the four bytes are still there.
        let mut four = [0u8; 8];
        ensure!(recv(s, &mut four, libc::MSG_PEEK) == 4 && &four[..4] == b"abcd", "the queue changed: {four:?}");
        let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
        let r = libc::select(s + 1, none.cast(), std::ptr::null_mut(), std::ptr::null_mut(), &mut tv);
        efault("select with an unmapped fd_set", r as isize)?;
        efault("poll of an unmapped array", libc::poll(none.cast(), 1, 0) as isize)?;
        let ep = cvt("epoll_create1", libc::epoll_create1(libc::EPOLL_CLOEXEC)).map_err(f)?;
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
        cvt("epoll_ctl", libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut ev)).map_err(f)?;
        efault("epoll_ctl with an unmapped event", libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, s, none.cast()) as isize)?;
        efault("epoll_wait into an unmapped array", libc::epoll_wait(ep, none.cast(), 4, 1000) as isize)?;
        net::close(ep);
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        efault("getsockname into an unmapped address", libc::getsockname(s, none.cast(), &mut len) as isize)?;
        let mut name: libc::sockaddr_storage = std::mem::zeroed();
        efault(
            "getpeername with an unmapped length",
            libc::getpeername(s, (&raw mut name).cast(), none.cast()) as isize,
        )?;
        efault("FIONREAD into an unmapped int", libc::ioctl(s, libc::FIONREAD, none) as isize)?;
        let opt = libc::getsockopt(s, libc::SOL_SOCKET, libc::SO_ERROR, none.cast(), &mut len);
        efault("SO_ERROR into an unmapped int", opt as isize)?;
        ensure!(recv(s, &mut four, 0) == 4 && &four[..4] == b"abcd", "after the faults: {four:?}");
        // A buffer whose second page is unmapped: at most the first page
        // goes, and what goes arrives intact.
        let half = mapping(8192, libc::PROT_READ | libc::PROT_WRITE)?;
        cvt("mprotect", libc::mprotect(half.add(4096).cast(), 4096, libc::PROT_NONE)).map_err(f)?;
        for i in 0..4096 {
            *half.add(i) = (i % 251) as u8;
        }
        let r = libc::send(c, half.cast(), 8192, 0);
        ensure!(
            (r == -1 && errno() == libc::EFAULT) || (1..=4096).contains(&r),
            "send across a hole: {r}, errno {}",
            errno()
        );
        if r > 0 {
            let mut got = vec![0u8; r as usize];
            net::read_exact(s, &mut got).map_err(f)?;
            ensure!(got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8), "the bytes before the hole changed");
        }
    }
    net::close(c);
    net::close(s);
    Ok(())
}

/// Sends `chunk` non-blocking on `c` until the connection is full; returns
/// the bytes it took. Full: Linux's receive queue takes a share too, as
/// acknowledgements free the send buffer, so full is when three writes in
/// a row, 50 ms apart, still find no room.
fn fill(c: i32, chunk: &[u8]) -> Result<usize, String> {
    let (mut total, mut refused) = (0usize, 0);
    while refused < 3 {
        let n = send(c, chunk, libc::MSG_DONTWAIT);
        if n < 0 {
            ensure!(errno() == libc::EAGAIN, "filling: errno {}", errno());
            refused += 1;
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        refused = 0;
        total += n as usize;
        ensure!(total < 64 << 20, "the connection took 64 MiB without filling");
    }
    Ok(total)
}

/// Fills a connection whose sender set an 8 KiB send buffer and whose
/// listener set receive buffer `rcv` (accepted sockets inherit it):
/// non-blocking writes until three in a row, 50 ms apart, find no room.
/// Returns how many bytes it took; every one is then read back intact.
fn fill_with_rcvbuf(rcv: i32) -> Result<usize, String> {
    let l = net::tcp_socket(false).map_err(f)?;
    set_opt(l, libc::SOL_SOCKET, libc::SO_RCVBUF, &rcv)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    unsafe {
        cvt("bind", libc::bind(l, (&raw const ss).cast(), len)).map_err(f)?;
        cvt("listen", libc::listen(l, 8)).map_err(f)?;
    }
    let c = net::connect_loopback(false, net::local_port(l).map_err(f)?).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    set_opt(c, libc::SOL_SOCKET, libc::SO_SNDBUF, &8192i32)?;
    let total = fill(c, &[0xa5u8; 4096])?;
    let mut got = vec![0u8; total];
    net::read_exact(s, &mut got).map_err(f)?;
    ensure!(got.iter().all(|&b| b == 0xa5), "a byte changed");
    for fd in [c, s, l] {
        net::close(fd);
    }
    Ok(total)
}

/// `SO_RCVBUF` adds to what a connection holds, as Linux's receive queue
/// does to its send queue: with the sender's buffer small, a receiver
/// with a large receive buffer lets more unread bytes in than one with a
/// small one (on this machine's kernel 20 KiB against 2 MiB; under ipcd
/// 24 KiB against the ring).
pub(crate) fn rcvbuf() -> Res {
    let small = fill_with_rcvbuf(4096)?;
    let large = fill_with_rcvbuf(1 << 20)?;
    ensure!(large > small, "a large receive buffer held {large} bytes, a small one {small}");
    Ok(())
}

/// `TCP_CORK` and `MSG_MORE` hold partial data back as Linux does: a
/// reader with `MSG_DONTWAIT` finds nothing until the cork comes off, a
/// send without `MSG_MORE` follows, or the 200 ms ceiling passes (here
/// while the writer's process waits in poll), and then every byte.
pub(crate) fn cork() -> Res {
    let (c, s) = pair(false)?;
    let nothing = |what: &str| -> Res {
        std::thread::sleep(Duration::from_millis(20));
        let mut b = [0u8; 64];
        let r = recv(s, &mut b, libc::MSG_DONTWAIT);
        ensure!(r == -1 && errno() == libc::EAGAIN, "{what}: the reader got {r} (errno {})", errno());
        Ok(())
    };
    let take = |n: usize, what: &str| -> Res {
        let mut got = vec![0u8; n];
        net::read_exact(s, &mut got).map_err(|e| format!("{what}: {e:?}"))?;
        ensure!(got.iter().all(|&b| b == b'k'), "{what}: a byte changed");
        Ok(())
    };
    set_timeout(s, 10)?;
    set_opt(c, libc::IPPROTO_TCP, libc::TCP_CORK, &1i32)?;
    ensure!(send(c, &[b'k'; 100], 0) == 100, "corked send: errno {}", errno());
    nothing("corked")?;
    set_opt(c, libc::IPPROTO_TCP, libc::TCP_CORK, &0i32)?;
    take(100, "uncorked")?;
    ensure!(send(c, &[b'k'; 10], libc::MSG_MORE) == 10, "MSG_MORE send: errno {}", errno());
    nothing("MSG_MORE")?;
    ensure!(send(c, &[b'k'; 5], 0) == 5, "plain send: errno {}", errno());
    take(15, "after a plain send")?;
    for more in [false, true] {
        let what = if more { "MSG_MORE" } else { "TCP_CORK" };
        if !more {
            set_opt(c, libc::IPPROTO_TCP, libc::TCP_CORK, &1i32)?;
        }
        ensure!(send(c, &[b'k'; 10], if more { libc::MSG_MORE } else { 0 }) == 10, "{what} send: errno {}", errno());
        let t = Instant::now();
        ensure!(poll_n(&mut [pollfd(s, libc::POLLIN)], 5000) == 1, "{what}: held bytes never went");
        let waited = t.elapsed();
        ensure!(
            waited >= Duration::from_millis(100) && waited < Duration::from_secs(2),
            "{what}: held bytes went after {waited:?}, not at the 200 ms ceiling"
        );
        take(10, what)?;
        if !more {
            set_opt(c, libc::IPPROTO_TCP, libc::TCP_CORK, &0i32)?;
        }
    }
    net::close(c);
    net::close(s);
    Ok(())
}
