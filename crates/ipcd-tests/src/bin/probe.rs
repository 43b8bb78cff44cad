//! A test program that uses only the ordinary socket API. The integration
//! tests run it under the kernel and under ipcd and expect the same
//! answers: each `check` scenario asserts exactly what Linux TCP does.
//!
//! Usage (`PROBE_CPU=N` pins the process to core N first):
//!   probe check NAME            one scenario, server and client in-process
//!   probe serve [N]             echo server on loopback; prints its port;
//!                               serves N connections (default: forever)
//!   probe client PORT ROUNDS SEED   echo rounds of random sizes, hashed
//!   probe hold PORT             connects, then waits for stdin to close
//!   probe epoll-serve N [edge]  epoll echo server; prints its port; exits
//!                               after N connections closed
//!   probe many-clients PORT N   N connections at once, echoes on each
//!   probe diff-trace SEED N     N seeded random call sequences on a pair;
//!                               prints every observable (compare runs)
//!   probe conn-serve N          N connections, one byte echoed on each
//!   probe conn-client PORT N T  N connections from T threads; prints ns
//!   probe epoll-load PORT C R   R rounds of an 8-byte request on each of C
//!                               connections; prints nanoseconds
//!   probe prefork-serve W       pre-fork echo server with W workers;
//!                               prints its port; stops when stdin closes
//!   probe prefork-clients PORT N  N connections in turn; prints how many
//!                               workers answered
//!   probe bench-server tcp|unix CPU         one benchmark connection; prints
//!                               its port or socket path (CPU `-`: unpinned)
//!   probe bench-client tcp|unix ADDR CPU MODE SIZE COUNT
//!                               MODE lat: COUNT round trips of SIZE bytes,
//!                               prints p50 p99 p99.9 in nanoseconds; MODE
//!                               rtt: COUNT round trips of SIZE bytes,
//!                               prints the nanoseconds taken; MODE rtt-for:
//!                               round trips for COUNT ms, prints how many
//!                               and the nanoseconds taken; MODE stream:
//!                               COUNT sends of SIZE bytes, prints the
//!                               nanoseconds taken

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipcd_tests::data::{Fnv, Prng};
use ipcd_tests::net::{self, cvt, Fail};

type Res = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!("{} (line {}): {}", stringify!($cond), line!(), format!($($msg)*)));
        }
    };
}

fn f(e: Fail) -> String {
    e.to_string()
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A connected pair through a fresh listener: (client, server).
fn pair(v6: bool) -> Result<(i32, i32), String> {
    let (l, port) = net::listen_loopback(v6).map_err(f)?;
    let c = net::connect_loopback(v6, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    net::close(l);
    Ok((c, s))
}

fn recv(fd: i32, buf: &mut [u8], flags: i32) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
}

fn send(fd: i32, buf: &[u8], flags: i32) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) }
}

fn int_opt(fd: i32, level: i32, name: i32) -> Result<i32, String> {
    let mut v: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: an int-sized out buffer.
    cvt("getsockopt", unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) }).map_err(f)?;
    Ok(v)
}

/// Echo of random sizes in both directions, checked by hash (a writer
/// thread and a reader on the client, an echo thread on the server side).
fn echo(v6: bool, rounds: usize, seed: u64) -> Res {
    let (c, s) = pair(v6)?;
    let server = std::thread::spawn(move || echo_loop(s));
    client_rounds(c, rounds, seed)?;
    net::close(c);
    server.join().map_err(|_| "echo thread panicked".to_string())?.map_err(f)
}

fn echo_loop(s: i32) -> Result<(), Fail> {
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = net::read_some(s, &mut buf)?;
        if n == 0 {
            net::close(s);
            return Ok(());
        }
        net::send_all(s, &buf[..n])?;
    }
}

fn client_rounds(c: i32, rounds: usize, seed: u64) -> Res {
    let mut rng = Prng::new(seed);
    let sizes: Vec<usize> = (0..rounds).map(|_| rng.range(1, 300_000)).collect();
    let total: usize = sizes.iter().sum();
    let writer = std::thread::spawn(move || -> Result<Fnv, Fail> {
        let mut rng = Prng::new(seed ^ 0x5eed);
        let mut h = Fnv::default();
        for n in sizes {
            let mut buf = vec![0u8; n];
            rng.fill(&mut buf);
            h.update(&buf);
            net::send_all(c, &buf)?;
        }
        Ok(h)
    });
    let mut h = Fnv::default();
    let mut got = 0;
    let mut buf = vec![0u8; 128 * 1024];
    while got < total {
        let n = net::read_some(c, &mut buf).map_err(f)?;
        ensure!(n > 0, "end of stream after {got} of {total} bytes");
        h.update(&buf[..n]);
        got += n;
    }
    let sent = writer.join().map_err(|_| "writer panicked".to_string())?.map_err(f)?;
    ensure!(sent == h, "hash of echoed bytes differs ({total} bytes)");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
    ensure!(net::read_some(c, &mut buf).map_err(f)? == 0, "no end of stream after the echo");
    Ok(())
}

/// 1 GiB one way, byte-exact (generated and checked on the fly).
fn large() -> Res {
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
fn many() -> Res {
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

fn set_nonblocking(fd: i32, on: bool) -> Res {
    // SAFETY: F_GETFL/F_SETFL on our fd.
    unsafe {
        let fl = cvt("fcntl", libc::fcntl(fd, libc::F_GETFL)).map_err(f)?;
        let fl = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
        cvt("fcntl", libc::fcntl(fd, libc::F_SETFL, fl)).map_err(f)?;
    }
    Ok(())
}

/// Non-blocking connect: EINPROGRESS, then SO_ERROR 0 and a usable socket;
/// the next connect says 0, a third EISCONN. Non-blocking reads say EAGAIN.
fn nonblock() -> Res {
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
fn trunc_zerocopy() -> Res {
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
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // SAFETY: an empty msghdr.
    let r = unsafe { libc::recvmsg(c, &mut msg, libc::MSG_ERRQUEUE) };
    ensure!(r == -1 && errno() == libc::EAGAIN, "empty error queue: {r} ({})", errno());
    net::close(c);
    net::close(s);
    Ok(())
}

fn peek_waitall() -> Res {
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

static SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn count_signal(_: i32) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

fn handle(sig: i32, restart: bool) {
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Sending to a closed peer: the first send is accepted (the peer answers
/// with a reset), then EPIPE — with SIGPIPE unless MSG_NOSIGNAL.
fn sigpipe() -> Res {
    handle(libc::SIGPIPE, true);
    let (c, s) = pair(false)?;
    net::close(s);
    std::thread::sleep(Duration::from_millis(20));
    ensure!(send(c, b"x", libc::MSG_NOSIGNAL) == 1, "first send after the peer closed");
    std::thread::sleep(Duration::from_millis(20));
    let r = send(c, b"x", libc::MSG_NOSIGNAL);
    ensure!(r == -1 && errno() == libc::EPIPE, "second send gave {r}/{}", errno());
    ensure!(SIGNALS.load(Ordering::Relaxed) == 0, "SIGPIPE despite MSG_NOSIGNAL");
    let r = send(c, b"x", 0);
    ensure!(r == -1 && errno() == libc::EPIPE, "third send gave {r}/{}", errno());
    ensure!(SIGNALS.load(Ordering::Relaxed) == 1, "no SIGPIPE without MSG_NOSIGNAL");
    // write(2) raises it too.
    // SAFETY: a live buffer.
    let r = unsafe { libc::write(c, b"x".as_ptr().cast(), 1) };
    ensure!(r == -1 && errno() == libc::EPIPE && SIGNALS.load(Ordering::Relaxed) == 2, "write gave {r}");
    net::close(c);
    Ok(())
}

/// Closing with unread data resets: the peer's next call says ECONNRESET.
fn reset() -> Res {
    let (c, s) = pair(false)?;
    ensure!(send(c, b"unread", 0) == 6, "send");
    std::thread::sleep(Duration::from_millis(20));
    net::close(s);
    std::thread::sleep(Duration::from_millis(20));
    let mut buf = [0u8; 8];
    let r = recv(c, &mut buf, 0);
    ensure!(r == -1 && errno() == libc::ECONNRESET, "recv after reset gave {r}/{}", errno());
    ensure!(recv(c, &mut buf, 0) == 0, "second recv after reset is end of stream");
    net::close(c);
    // SO_LINGER 0 resets too, even with nothing unread.
    let (c, s) = pair(false)?;
    let lg = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a linger struct of its size.
    cvt("setsockopt", unsafe {
        libc::setsockopt(
            s,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const lg).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    })
    .map_err(f)?;
    net::close(s);
    std::thread::sleep(Duration::from_millis(20));
    ensure!(int_opt(c, libc::SOL_SOCKET, libc::SO_ERROR)? == libc::ECONNRESET, "SO_ERROR after linger-0 close");
    ensure!(int_opt(c, libc::SOL_SOCKET, libc::SO_ERROR)? == 0, "SO_ERROR clears once read");
    net::close(c);
    Ok(())
}

/// Half-close: after SHUT_WR the peer reads end of stream and may still
/// send; our writes fail with EPIPE.
fn half_close() -> Res {
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
fn timeouts() -> Res {
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
fn names(v6: bool) -> Res {
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
const TCP_INQ: i32 = 36;

fn options() -> Res {
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
fn dup_vectored() -> Res {
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
fn sendfile() -> Res {
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

fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

fn poll_n(fds: &mut [libc::pollfd], timeout: i32) -> i32 {
    // SAFETY: a live array of pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) }
}

fn pipe() -> Result<(i32, i32), String> {
    let mut p = [0i32; 2];
    // SAFETY: a live array of two ints.
    cvt("pipe", unsafe { libc::pipe(p.as_mut_ptr()) }).map_err(f)?;
    Ok((p[0], p[1]))
}

/// poll over an ipcd socket, a pipe and a listener: timeouts, data,
/// writability, a waiting connection, the peer's FIN (POLLRDHUP), and a
/// sleeping poll woken by the peer.
fn poll_mixed() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = net::connect_loopback(false, port).map_err(f)?;
    let mut fds = [pollfd(l, libc::POLLIN)];
    ensure!(
        poll_n(&mut fds, 1000) == 1 && fds[0].revents == libc::POLLIN,
        "listener with a waiting connection: {}",
        fds[0].revents
    );
    let s = net::accept(l).map_err(f)?;
    let mut fds = [pollfd(l, libc::POLLIN)];
    ensure!(poll_n(&mut fds, 0) == 0, "listener after accept");
    let (pr, pw) = pipe()?;
    let in_rdhup = libc::POLLIN | libc::POLLRDHUP;
    let mut fds = [pollfd(s, in_rdhup), pollfd(pr, libc::POLLIN)];
    let t = Instant::now();
    ensure!(poll_n(&mut fds, 60) == 0, "nothing ready yet");
    ensure!(t.elapsed() >= Duration::from_millis(55), "poll returned early: {:?}", t.elapsed());
    // SAFETY: a live one-byte buffer.
    ensure!(unsafe { libc::write(pw, b"p".as_ptr().cast(), 1) } == 1, "pipe write");
    ensure!(poll_n(&mut fds, 1000) == 1 && fds[0].revents == 0 && fds[1].revents == libc::POLLIN, "pipe readable only");
    ensure!(send(c, b"data", 0) == 4, "send");
    let mut fds = [pollfd(s, in_rdhup), pollfd(pr, libc::POLLIN), pollfd(c, libc::POLLOUT)];
    ensure!(poll_n(&mut fds, 1000) == 3, "all three ready");
    ensure!(
        fds[0].revents == libc::POLLIN && fds[2].revents == libc::POLLOUT,
        "masks {} {}",
        fds[0].revents,
        fds[2].revents
    );
    let mut buf = [0u8; 8];
    ensure!(recv(s, &mut buf, 0) == 4, "read");
    // A poll that sleeps is woken by the peer.
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(80));
        send(c, b"late", 0)
    });
    let mut fds = [pollfd(s, libc::POLLIN)];
    let r = poll_n(&mut fds, 5000);
    ensure!(writer.join().map_err(|_| "writer panicked")? == 4, "late send");
    ensure!(r == 1 && fds[0].revents == libc::POLLIN, "sleeping poll: {r} {}", fds[0].revents);
    ensure!(recv(s, &mut buf, 0) == 4, "late read");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
    let mut fds = [pollfd(s, in_rdhup)];
    ensure!(poll_n(&mut fds, 1000) == 1 && fds[0].revents == in_rdhup, "FIN: {}", fds[0].revents);
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(s, libc::SHUT_WR) }).map_err(f)?;
    let mut fds = [pollfd(c, libc::POLLIN | libc::POLLOUT)];
    ensure!(poll_n(&mut fds, 1000) == 1, "both shut");
    let want = libc::POLLIN | libc::POLLOUT | libc::POLLHUP;
    ensure!(fds[0].revents == want, "both shut: {:#x} vs {want:#x}", fds[0].revents);
    for fd in [c, s, l, pr, pw] {
        net::close(fd);
    }
    Ok(())
}

/// select on an ipcd socket and a pipe: timeout (and the time left written
/// back), readable and writable sets.
fn select_mixed() -> Res {
    let (c, s) = pair(false)?;
    let (pr, pw) = pipe()?;
    let sel = |r: &[i32], w: &[i32], ms: i64| -> (i32, Vec<i32>, Vec<i32>, libc::timeval) {
        // SAFETY: zeroed fd_sets and FD_SET on fds below FD_SETSIZE.
        unsafe {
            let mut rs: libc::fd_set = std::mem::zeroed();
            let mut ws: libc::fd_set = std::mem::zeroed();
            let mut nfds = 0;
            for &fd in r {
                libc::FD_SET(fd, &mut rs);
                nfds = nfds.max(fd + 1);
            }
            for &fd in w {
                libc::FD_SET(fd, &mut ws);
                nfds = nfds.max(fd + 1);
            }
            let mut tv = libc::timeval { tv_sec: ms / 1000, tv_usec: (ms % 1000 * 1000) as libc::suseconds_t };
            let n = libc::select(nfds, &mut rs, &mut ws, std::ptr::null_mut(), &mut tv);
            let rr = r.iter().copied().filter(|&fd| libc::FD_ISSET(fd, &rs)).collect();
            let ww = w.iter().copied().filter(|&fd| libc::FD_ISSET(fd, &ws)).collect();
            (n, rr, ww, tv)
        }
    };
    let (n, rr, _, tv) = sel(&[s, pr], &[], 50);
    ensure!(n == 0 && rr.is_empty(), "nothing ready: {n}");
    ensure!(tv.tv_sec == 0 && tv.tv_usec == 0, "time left after a timeout");
    ensure!(send(c, b"x", 0) == 1, "send");
    let (n, rr, ww, tv) = sel(&[s, pr], &[c], 1000);
    ensure!(n == 2 && rr == [s] && ww == [c], "readable and writable: {n} {rr:?} {ww:?}");
    ensure!(tv.tv_sec == 0 && tv.tv_usec > 0, "time left written back");
    // SAFETY: a live one-byte buffer.
    ensure!(unsafe { libc::write(pw, b"p".as_ptr().cast(), 1) } == 1, "pipe write");
    let (n, rr, _, _) = sel(&[s, pr], &[], 1000);
    ensure!(n == 2 && rr == [s, pr], "both readable: {rr:?}");
    for fd in [c, s, pr, pw] {
        net::close(fd);
    }
    Ok(())
}

fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) -> Res {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map_err(f)?;
    Ok(())
}

fn epoll_mod(ep: i32, fd: i32, events: u32, data: u64) -> Res {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) }).map_err(f)?;
    Ok(())
}

/// (events, data) pairs from one epoll_wait, sorted by data.
fn epoll_get(ep: i32, timeout: i32) -> Result<Vec<(u32, u64)>, String> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    // SAFETY: a live event array.
    let n = cvt("epoll_wait", unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 16, timeout) }).map_err(f)?;
    let mut v: Vec<(u32, u64)> = evs[..n as usize].iter().map(|e| (e.events, e.u64)).collect();
    v.sort_by_key(|e| e.1);
    Ok(v)
}

const IN: u32 = libc::EPOLLIN as u32;
const OUT: u32 = libc::EPOLLOUT as u32;
const ET: u32 = libc::EPOLLET as u32;

/// Level-triggered epoll over an ipcd socket, a pipe and a listener; user
/// data comes back unchanged; EPOLL_CTL_DEL; a sleeping wait is woken.
fn epoll_level() -> Res {
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(f)?;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    epoll_add(ep, l, IN, 0xdead_0001)?;
    let c = net::connect_loopback(false, port).map_err(f)?;
    ensure!(epoll_get(ep, 1000)? == [(IN, 0xdead_0001)], "listener readable");
    let s = net::accept(l).map_err(f)?;
    let (pr, pw) = pipe()?;
    epoll_add(ep, s, IN, 0xdead_0002)?;
    epoll_add(ep, pr, IN, 0xdead_0003)?;
    let t = Instant::now();
    ensure!(epoll_get(ep, 60)?.is_empty(), "nothing ready");
    ensure!(t.elapsed() >= Duration::from_millis(55), "epoll_wait returned early");
    ensure!(send(c, b"0123456789", 0) == 10, "send");
    // SAFETY: a live one-byte buffer.
    ensure!(unsafe { libc::write(pw, b"p".as_ptr().cast(), 1) } == 1, "pipe write");
    ensure!(epoll_get(ep, 1000)? == [(IN, 0xdead_0002), (IN, 0xdead_0003)], "socket and pipe");
    let mut buf = [0u8; 16];
    ensure!(recv(s, &mut buf[..4], 0) == 4, "partial read");
    // SAFETY: a live buffer.
    ensure!(unsafe { libc::read(pr, buf.as_mut_ptr().cast(), 1) } == 1, "pipe read");
    ensure!(epoll_get(ep, 1000)? == [(IN, 0xdead_0002)], "level-triggered: still readable");
    ensure!(recv(s, &mut buf, 0) == 6, "rest");
    ensure!(epoll_get(ep, 0)?.is_empty(), "drained");
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(80));
        send(c, b"late", 0)
    });
    let got = epoll_get(ep, 5000)?;
    ensure!(writer.join().map_err(|_| "writer panicked")? == 4, "late send");
    ensure!(got == [(IN, 0xdead_0002)], "sleeping wait woken: {got:?}");
    ensure!(recv(s, &mut buf, 0) == 4, "late read");
    let mut ev = libc::epoll_event { events: 0, u64: 0 };
    // SAFETY: a live event.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, s, &mut ev) }).map_err(f)?;
    // SAFETY: as above.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_DEL, s, &mut ev) };
    ensure!(r == -1 && errno() == libc::ENOENT, "second DEL: {r}/{}", errno());
    ensure!(send(c, b"more", 0) == 4, "send");
    ensure!(epoll_get(ep, 50)?.is_empty(), "deleted fd reported");
    epoll_add(ep, s, IN | OUT, 0xdead_0004)?;
    // SAFETY: as above.
    let r = unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, s, &mut ev) };
    ensure!(r == -1 && errno() == libc::EEXIST, "second ADD: {r}/{}", errno());
    ensure!(epoll_get(ep, 1000)? == [(IN | OUT, 0xdead_0004)], "readable and writable");
    for fd in [c, s, l, pr, pw, ep] {
        net::close(fd);
    }
    Ok(())
}

/// Edge-triggered and one-shot entries; a non-blocking connect watched
/// for EPOLLOUT; closing the fd (and the dup caveat).
fn epoll_edge() -> Res {
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
    let (c, s) = pair(false)?;
    epoll_add(ep, s, IN | ET, 1)?;
    ensure!(send(c, b"abc", 0) == 3, "send");
    ensure!(epoll_get(ep, 1000)? == [(IN, 1)], "edge");
    ensure!(epoll_get(ep, 30)?.is_empty(), "no second edge without new data");
    ensure!(send(c, b"def", 0) == 3, "send");
    ensure!(epoll_get(ep, 1000)? == [(IN, 1)], "new data is a new edge, even unread before");
    // Readiness already reported does not keep an edge-triggered wait
    // busy: 200 ms of waiting costs next to no CPU.
    let cpu = cpu_time();
    ensure!(epoll_get(ep, 200)?.is_empty(), "no new edge while the data sits unread");
    let used = cpu_time() - cpu;
    ensure!(used < Duration::from_millis(50), "an idle edge-triggered wait burnt {used:?} of CPU");
    let mut buf = [0u8; 16];
    ensure!(recv(s, &mut buf, 0) == 6, "drain");
    ensure!(epoll_get(ep, 30)?.is_empty(), "drained");
    epoll_mod(ep, s, IN | libc::EPOLLONESHOT as u32, 2)?;
    ensure!(send(c, b"g", 0) == 1, "send");
    ensure!(epoll_get(ep, 1000)? == [(IN, 2)], "one-shot fires");
    ensure!(send(c, b"h", 0) == 1, "send");
    ensure!(epoll_get(ep, 30)?.is_empty(), "one-shot is disarmed");
    epoll_mod(ep, s, IN | libc::EPOLLONESHOT as u32, 3)?;
    ensure!(epoll_get(ep, 1000)? == [(IN, 3)], "re-armed by MOD");
    // Non-blocking connect: EPOLLOUT once connected.
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let nc = net::tcp_socket(false).map_err(f)?;
    set_nonblocking(nc, true)?;
    epoll_add(ep, nc, OUT | ET, 4)?;
    let (ss, len) = net::loopback(false, port);
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::connect(nc, (&raw const ss).cast(), len) };
    ensure!(r == -1 && errno() == libc::EINPROGRESS, "connect: {r}/{}", errno());
    let got = epoll_get(ep, 1000)?;
    ensure!(got.contains(&(OUT, 4)), "connected socket writable: {got:?}");
    let a = net::accept(l).map_err(f)?;
    // Closing the only fd removes it from the set; with a dup it stays.
    epoll_mod(ep, s, IN, 5)?;
    // SAFETY: dup of our fd.
    let s2 = cvt("dup", unsafe { libc::dup(s) }).map_err(f)?;
    net::close(s);
    ensure!(epoll_get(ep, 1000)?.contains(&(IN, 5)), "the dup keeps the entry alive");
    net::close(s2);
    ensure!(!epoll_get(ep, 30)?.iter().any(|e| e.1 == 5), "closed fd still reported");
    // The peer's FIN is an edge of its own, without new bytes.
    let (c3, s3) = pair(false)?;
    epoll_add(ep, s3, IN | ET, 6)?;
    ensure!(send(c3, b"x", 0) == 1, "send");
    ensure!(epoll_get(ep, 1000)? == [(IN, 6)], "data edge");
    ensure!(recv(s3, &mut buf, 0) == 1, "read");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(c3, libc::SHUT_WR) }).map_err(f)?;
    ensure!(epoll_get(ep, 1000)? == [(IN, 6)], "FIN edge");
    ensure!(recv(s3, &mut buf, 0) == 0, "end of stream");
    ensure!(epoll_get(ep, 30)?.is_empty(), "FIN reported once");
    // A send that found no room makes the next room an EPOLLOUT edge, even
    // when the reader drained everything before the wait.
    let (c4, s4) = pair(false)?;
    set_nonblocking(c4, true)?;
    epoll_add(ep, c4, OUT | ET, 7)?;
    ensure!(epoll_get(ep, 1000)? == [(OUT, 7)], "first OUT edge");
    let chunk = vec![1u8; 65536];
    let mut queued = 0usize;
    while send(c4, &chunk, 0) > 0 {
        queued += 1;
        ensure!(queued < 1 << 14, "the send side never filled");
    }
    ensure!(errno() == libc::EAGAIN, "full send: {}", errno());
    set_nonblocking(s4, true)?;
    let mut sink = vec![0u8; 65536];
    loop {
        let r = recv(s4, &mut sink, 0);
        if r <= 0 {
            break;
        }
    }
    let got = epoll_get(ep, 1000)?;
    ensure!(got.contains(&(OUT, 7)), "room after EAGAIN is an edge: {got:?}");
    for fd in [c, nc, a, l, ep, c3, s3, c4, s4] {
        net::close(fd);
    }
    Ok(())
}

/// CPU time this process used so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage into a zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn raise_nofile() {
    // SAFETY: get/setrlimit on live structs.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        rl.rlim_cur = rl.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
    }
}

/// A single-threaded epoll echo server (non-blocking, level-triggered):
/// prints its port, then serves until `count` connections have closed.
fn epoll_serve(count: usize, edge: bool) -> Res {
    raise_nofile();
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    set_nonblocking(l, true)?;
    println!("{port}");
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
    epoll_add(ep, l, IN, u64::MAX)?;
    let mode = if edge { IN | ET } else { IN };
    let mut closed = 0;
    let mut buf = vec![0u8; 65536];
    let mut evs = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    while closed < count {
        // SAFETY: a live event array.
        let n = cvt("epoll_wait", unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 256, -1) }).map_err(f)?;
        for e in &evs[..n as usize] {
            let data = e.u64;
            if data == u64::MAX {
                loop {
                    // SAFETY: null address buffers are allowed.
                    let s =
                        unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_NONBLOCK) };
                    if s < 0 {
                        ensure!(errno() == libc::EAGAIN, "accept: {}", errno());
                        break;
                    }
                    epoll_add(ep, s, mode, s as u64)?;
                }
                continue;
            }
            let fd = data as i32;
            loop {
                let r = recv(fd, &mut buf, 0);
                if r > 0 {
                    net::send_all(fd, &buf[..r as usize]).map_err(f)?;
                    if !edge {
                        break;
                    }
                    continue;
                }
                if r == 0 {
                    net::close(fd);
                    closed += 1;
                } else {
                    ensure!(errno() == libc::EAGAIN, "recv: {}", errno());
                }
                break;
            }
        }
    }
    net::close(ep);
    net::close(l);
    Ok(())
}

/// Opens `n` connections at once, then echoes a distinct message on each.
fn many_clients(port: u16, n: usize) -> Res {
    raise_nofile();
    let fds: Vec<i32> = (0..n).map(|_| net::connect_loopback(false, port)).collect::<Result<_, _>>().map_err(f)?;
    for round in 0..3 {
        for (i, &c) in fds.iter().enumerate() {
            net::send_all(c, format!("{round}:{i:06}").as_bytes()).map_err(f)?;
        }
        for (i, &c) in fds.iter().enumerate() {
            let mut buf = [0u8; 8];
            net::read_exact(c, &mut buf).map_err(f)?;
            ensure!(buf == *format!("{round}:{i:06}").as_bytes(), "connection {i} got {buf:?}");
        }
    }
    for c in fds {
        net::close(c);
    }
    Ok(())
}

fn fork() -> Result<i32, String> {
    // SAFETY: the probe is single-threaded here; the child only uses
    // async-signal-safe calls or execs (and its own fresh allocations).
    cvt("fork", unsafe { libc::fork() }).map_err(f)
}

fn wait_child(pid: i32) -> Res {
    let mut status = 0;
    // SAFETY: waits for our own child.
    cvt("waitpid", unsafe { libc::waitpid(pid, &mut status, 0) }).map_err(f)?;
    ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    Ok(())
}

/// Runs `body` in a forked child and exits with its verdict.
fn in_child(body: impl FnOnce() -> Res) -> ! {
    let code = match body() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("child: {e}");
            1
        }
    };
    // SAFETY: leaves the child without running the parent's atexit work.
    unsafe { libc::_exit(code) }
}

fn set_timeout(fd: i32, secs: i64) -> Res {
    let tv = libc::timeval { tv_sec: secs, tv_usec: 0 };
    // SAFETY: a timeval of its size.
    cvt("setsockopt", unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    })
    .map_err(f)?;
    Ok(())
}

/// After fork both processes use one connection end in turn; the peer sees
/// the end of stream only when the last of them closed it (the child by
/// exiting without closing).
fn fork_share() -> Res {
    let (c, s) = pair(false)?;
    set_timeout(s, 10)?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            ensure!(send(c, b"from child ", 0) == 11, "child send");
            let mut buf = [0u8; 5];
            net::read_exact(c, &mut buf).map_err(f)?;
            ensure!(&buf == b"reply", "child got {buf:?}");
            Ok(())
        });
    }
    let mut buf = [0u8; 11];
    net::read_exact(s, &mut buf).map_err(f)?;
    ensure!(&buf == b"from child ", "parent got {buf:?}");
    ensure!(send(s, b"reply", 0) == 5, "reply");
    wait_child(pid)?;
    ensure!(send(c, b"from parent", 0) == 11, "parent send after the child");
    net::read_exact(s, &mut buf).map_err(f)?;
    ensure!(&buf == b"from parent", "second message {buf:?}");
    net::close(c);
    ensure!(recv(s, &mut buf, 0) == 0, "end of stream once the last holder closed: {}", errno());
    net::close(s);
    Ok(())
}

/// The eventfds this process holds (found through /proc/self/fd).
fn eventfds() -> Result<Vec<i32>, String> {
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|e| e.to_string())?;
    Ok(dir
        .filter_map(|e| e.ok())
        .filter(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().contains("eventfd")))
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect())
}

/// A connection shared with a forked child that keeps emptying every
/// eventfd it holds, as a waiter of its own on the same end would empty
/// the doorbell: the parent's blocked recv, poll and epoll_wait must
/// still see bytes that arrive while they sleep (before, each slept on
/// its emptied doorbell until its timeout). On the kernel there is no
/// doorbell to take, and the check passes the same way.
fn fork_wake() -> Res {
    let (c, s) = pair(false)?;
    set_timeout(s, 5)?;
    let (stop_r, stop_w) = pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            net::close(stop_w);
            let fds = eventfds()?;
            let mut stop = pollfd(stop_r, libc::POLLIN);
            // SAFETY: one live pollfd, no waiting.
            while unsafe { libc::poll(&mut stop, 1, 0) } == 0 {
                for &fd in &fds {
                    let mut v = 0u64;
                    // SAFETY: reads 8 bytes into a live u64 (the eventfds are non-blocking).
                    unsafe { libc::read(fd, (&raw mut v).cast(), 8) };
                }
            }
            Ok(())
        });
    }
    net::close(stop_r);
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(f)?;
    epoll_add(ep, s, IN, 7)?;
    for round in 0..30u8 {
        let later = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            send(c, &[round], 0)
        });
        // A poll or epoll_wait that missed its wake-up still finds the
        // byte when its timeout ends and it looks once more: that it
        // returned well before then is what shows it was woken.
        let t = Instant::now();
        match round % 3 {
            0 => {}
            1 => {
                let mut p = [pollfd(s, libc::POLLIN)];
                // SAFETY: one live pollfd.
                let n = unsafe { libc::poll(p.as_mut_ptr(), 1, 5000) };
                ensure!(n == 1, "round {round}: poll woke with {n} (errno {})", errno());
            }
            _ => ensure!(epoll_get(ep, 5000)? == [(IN, 7)], "round {round}: epoll_wait saw nothing"),
        }
        ensure!(t.elapsed() < Duration::from_secs(4), "round {round}: the wait was not woken, its timeout ended it");
        let mut b = [0u8; 1];
        let n = recv(s, &mut b, 0);
        ensure!(n == 1 && b[0] == round, "round {round}: recv gave {n} (errno {})", errno());
        ensure!(later.join().map_err(|_| "sender panicked")? == 1, "round {round}: send");
    }
    net::close(stop_w);
    wait_child(pid)?;
    net::close(ep);
    net::close(c);
    net::close(s);
    Ok(())
}

/// Accept-then-fork: the parent closes its copy at once (no FIN goes out),
/// the child serves the connection and exits.
fn fork_handoff() -> Res {
    let (c, s) = pair(false)?;
    set_timeout(c, 10)?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let mut buf = [0u8; 5];
            net::read_exact(s, &mut buf).map_err(f)?;
            ensure!(&buf == b"hello", "child got {buf:?}");
            ensure!(send(s, b"world", 0) == 5, "child reply");
            net::close(s);
            Ok(())
        });
    }
    net::close(s);
    ensure!(send(c, b"hello", 0) == 5, "send to the child");
    let mut buf = [0u8; 5];
    net::read_exact(c, &mut buf).map_err(f)?;
    ensure!(&buf == b"world", "parent got {buf:?}");
    wait_child(pid)?;
    ensure!(recv(c, &mut buf, 0) == 0, "end of stream after the child closed: {}", errno());
    net::close(c);
    Ok(())
}

fn clear_cloexec(fd: i32) -> Res {
    // SAFETY: F_SETFD on our fd.
    cvt("fcntl", unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map_err(f)?;
    Ok(())
}

/// inetd style: a forked child execs a new program with the connection on
/// an inherited fd; a close-on-exec connection closes at the exec.
fn exec_handoff() -> Res {
    let (c, s) = pair(false)?;
    let (c2, s2) = pair(false)?;
    clear_cloexec(s)?;
    set_timeout(c, 10)?;
    set_timeout(c2, 10)?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| exec_probe(&["exec-child", &s.to_string()]));
    }
    net::close(s);
    net::close(s2);
    let mut buf = [0u8; 4];
    ensure!(recv(c2, &mut buf, 0) == 0, "the close-on-exec connection ends at the exec: {}", errno());
    ensure!(send(c, b"ping", 0) == 4, "send to the exec'd child");
    net::read_exact(c, &mut buf).map_err(f)?;
    ensure!(&buf == b"pong", "parent got {buf:?}");
    wait_child(pid)?;
    ensure!(recv(c, &mut buf, 0) == 0, "end of stream after the exec'd child: {}", errno());
    net::close(c);
    net::close(c2);
    Ok(())
}

/// A server that execs itself with its listener open and a connection
/// queued: the new image accepts it, as from the kernel's queue.
fn exec_queued() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = connect_and_say(port, b'e')?;
    clear_cloexec(l)?;
    clear_cloexec(c)?;
    exec_probe(&["exec-accept", &l.to_string(), &c.to_string()])
}

/// A non-blocking listener kept across exec stays non-blocking in the new
/// image (under ipcd its kernel fd is always non-blocking, so the flag
/// must come from the old image's library).
fn exec_nonblocking() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    set_nonblocking(l, true)?;
    clear_cloexec(l)?;
    exec_probe(&["exec-listener-flag", &l.to_string(), &port.to_string(), "1"])
}

/// A blocking listener kept across an exec into an image that cannot
/// reach the monitor: it becomes a plain kernel listener, and a blocking
/// one, as the program left it (under ipcd its kernel fd was made
/// non-blocking, which the program must not see).
fn exec_unmonitored() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    clear_cloexec(l)?;
    // Only the new image reads it; this one's channel is open already.
    std::env::set_var("IPCD_SOCKET", "ipcd-probe-no-such-monitor");
    exec_probe(&["exec-listener-flag", &l.to_string(), &port.to_string(), "0"])
}

/// The new image of `exec_nonblocking` and `exec_unmonitored`: `l` reads
/// as non-blocking or not as the old image left it; non-blocking, an
/// accept with nothing queued fails at once with EAGAIN; either way, one
/// after a connect (once poll says so) takes it.
fn exec_listener_flag(l: i32, port: u16, nonblocking: bool) -> Res {
    // SAFETY: F_GETFL on an inherited fd.
    let fl = cvt("fcntl", unsafe { libc::fcntl(l, libc::F_GETFL) }).map_err(f)?;
    ensure!(
        (fl & libc::O_NONBLOCK != 0) == nonblocking,
        "the listener's O_NONBLOCK changed at the exec: flags {fl:#x}, want non-blocking {nonblocking}"
    );
    // A blocking accept would wait these 10 s and then fail with EAGAIN too;
    // the flag check above is what tells them apart.
    set_timeout(l, 10)?;
    if nonblocking {
        match net::accept(l) {
            Err(e) if e.errno == libc::EAGAIN => {}
            other => return Err(format!("accept on an empty non-blocking listener: {other:?}")),
        }
    }
    let c = connect_and_say(port, b'x')?;
    let mut p = [pollfd(l, libc::POLLIN)];
    ensure!(poll_n(&mut p, 10_000) == 1, "poll: the listener never became readable");
    let s = net::accept(l).map_err(f)?;
    expect_byte(s, b'x')?;
    [s, c, l].into_iter().for_each(net::close);
    Ok(())
}

/// Execs this program as `probe ARGS…`; returns only if that fails.
fn exec_probe(args: &[&str]) -> Res {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let args = std::iter::once("probe").chain(args.iter().copied());
    let args: Vec<std::ffi::CString> =
        args.map(|a| std::ffi::CString::new(a).map_err(|e| e.to_string())).collect::<Result<_, _>>()?;
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    // SAFETY: execv with NUL-terminated strings and a null-terminated argv.
    unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
    Err(format!("execv failed: {}", errno()))
}

/// The new image of `exec_queued`: accepts on `l`, echoes one byte,
/// reads it back on `c`.
fn exec_accept(l: i32, c: i32) -> Res {
    set_timeout(l, 10)?;
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
    expect_byte(c, b'e')?;
    [s, c, l].into_iter().for_each(net::close);
    Ok(())
}

/// Pre-fork workers that exec (Python's `spawn` start method, with a
/// socket the parent listened on): the parent listens and never accepts; two
/// children exec new images that inherit the listener and each accept
/// `EXEC_WORKER_CONNS` connections, answering with their index.
fn exec_workers() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    clear_cloexec(l)?;
    let (ready_r, ready_w) = pipe()?;
    let mut pids = Vec::new();
    for index in 0..2u8 {
        let pid = fork()?;
        if pid == 0 {
            in_child(|| {
                net::close(ready_r);
                clear_cloexec(ready_w)?;
                exec_probe(&["exec-worker", &l.to_string(), &ready_w.to_string(), &index.to_string()])
            });
        }
        pids.push(pid);
    }
    net::close(ready_w);
    prefork_wait(ready_r, 2)?;
    for k in 0..2 * EXEC_WORKER_CONNS {
        let c = connect_and_say(port, b'x')?;
        let mut b = [0u8; 1];
        ensure!(recv(c, &mut b, 0) == 1, "connection {k} was not served: {}", errno());
        ensure!(b[0] < 2, "connection {k} got {b:?}");
        net::close(c);
    }
    pids.into_iter().try_for_each(wait_child)?;
    [l, ready_r].into_iter().for_each(net::close);
    Ok(())
}

/// Connections each worker of `exec_workers` serves.
const EXEC_WORKER_CONNS: usize = 4;

/// An exec'd worker of `exec_workers`: says it accepts on `l` (see
/// `serving`) and that it is ready on `ready`, then serves its share.
fn exec_worker(l: i32, ready: i32, index: u8) -> Res {
    let (held, refused) = refused_port()?;
    set_timeout(l, 10)?;
    serving(l, refused)?;
    net::close(held);
    say(ready, b'r')?;
    net::close(ready);
    for _ in 0..EXEC_WORKER_CONNS {
        let s = net::accept(l).map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        ensure!(send(s, &[index], 0) == 1, "worker {index}: answer: {}", errno());
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// The exec'd side of `exec_handoff`.
fn exec_child(fd: i32) -> Res {
    let (_, port) = net::name(fd, true).map_err(f)?;
    ensure!(port != 0, "peer name");
    let mut buf = [0u8; 4];
    net::read_exact(fd, &mut buf).map_err(f)?;
    ensure!(&buf == b"ping", "exec'd child got {buf:?}");
    ensure!(send(fd, b"pong", 0) == 4, "pong");
    Ok(())
}

/// A thread-per-connection echo server and sixteen client threads; then
/// four threads sending on one socket at once, each send contiguous.
fn threads() -> Res {
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

/// close in one thread while another is blocked in recv on the same
/// socket: as on Linux, the recv keeps waiting and gets the next bytes; the
/// connection ends once that call is over.
fn close_race() -> Res {
    let (c, s) = pair(false)?;
    set_timeout(c, 10)?;
    set_timeout(s, 10)?;
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 8];
        let r = recv(s, &mut buf, 0);
        (r, buf[0])
    });
    std::thread::sleep(Duration::from_millis(50));
    net::close(s);
    std::thread::sleep(Duration::from_millis(50));
    ensure!(send(c, b"x", 0) == 1, "send to the closing socket");
    let (r, b) = reader.join().map_err(|_| "reader panicked")?;
    ensure!(r == 1 && b == b'x', "blocked recv across close gave {r}");
    let mut buf = [0u8; 8];
    ensure!(recv(c, &mut buf, 0) == 0, "end of stream after the call ended: {}", errno());
    net::close(c);
    Ok(())
}

/// A signal handler without SA_RESTART interrupts accept, poll and
/// epoll_wait with EINTR.
fn eintr() -> Res {
    handle(libc::SIGUSR2, false);
    let (l, _port) = net::listen_loopback(false).map_err(f)?;
    let (c, s) = pair(false)?;
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
    epoll_add(ep, s, IN, 1)?;
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let kick = || kick_then(me, libc::SIGUSR2, || {});
    let k = kick();
    // SAFETY: null address buffers are allowed.
    let r = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "accept gave {r}/{e}");
    let k = kick();
    let mut fds = [pollfd(s, libc::POLLIN)];
    let r = poll_n(&mut fds, 5000);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "poll gave {r}/{e}");
    let k = kick();
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live event array.
    let r = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 5000) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "epoll_wait gave {r}/{e}");
    for fd in [l, c, s, ep] {
        net::close(fd);
    }
    Ok(())
}

/// A server whose forked child closed its copy of the listener (as a
/// child that execs does with a close-on-exec one) has the listener to
/// itself again: its clients are served through ipcd again, where while a
/// child holds the socket they go to the kernel (the check's harness
/// fails any connect that went to the kernel).
fn fork_listener() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    for round in 0..3 {
        let pid = fork()?;
        if pid == 0 {
            in_child(|| {
                net::close(l);
                Ok(())
            });
        }
        wait_child(pid)?;
        let c = net::connect_loopback(false, port).map_err(f)?;
        let s = net::accept(l).map_err(f)?;
        ensure!(send(c, b"r", 0) == 1, "send after fork {round}: {}", errno());
        let mut b = [0u8; 1];
        ensure!(recv(s, &mut b, 0) == 1 && b[0] == b'r', "recv after fork {round}");
        net::close(c);
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// A port nothing listens on: held by a socket that is bound and never
/// listens, so that no other process can take it while `fd` is open (a
/// port bound once and closed was at times taken by a concurrent test
/// before the connect that must be refused).
fn refused_port() -> Result<(i32, u16), String> {
    let fd = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes.
    cvt("bind", unsafe { libc::bind(fd, (&raw const ss).cast(), len) }).map_err(f)?;
    Ok((fd, net::local_port(fd).map_err(f)?))
}

/// In a pre-fork child: says it accepts on `l` (a poll that looks without
/// waiting), then makes one round trip through the monitor (a connect to
/// `refused`, which fails). The monitor reads each process's channel in
/// order, so once the child has told its parent, the monitor knows it
/// serves `l`.
fn serving(l: i32, refused: u16) -> Res {
    let mut p = [pollfd(l, libc::POLLIN)];
    // SAFETY: one live pollfd, no waiting.
    ensure!(unsafe { libc::poll(p.as_mut_ptr(), 1, 0) } >= 0, "poll of the listener: {}", errno());
    ensure!(net::connect_loopback(false, refused).is_err(), "nothing listens on port {refused}");
    Ok(())
}

/// Writes one byte to the pipe `w`.
fn say(w: i32, b: u8) -> Res {
    // SAFETY: one byte from a live buffer.
    ensure!(unsafe { libc::write(w, [b].as_ptr().cast(), 1) } == 1, "write to a pipe: {}", errno());
    Ok(())
}

/// Waits for one byte from each of `n` children on `ready`.
fn prefork_wait(ready: i32, n: usize) -> Res {
    for _ in 0..n {
        let mut b = [0u8; 1];
        net::read_exact(ready, &mut b).map_err(f)?;
    }
    Ok(())
}

/// Forks the `n` children of a pre-fork check: each gives up after 10 s
/// without a connection (the check then fails instead of hanging), says
/// it accepts on `l` (`serving`), then runs `body(index, ready)`.
/// Returns their pids and the read end of the pipe they said ready on,
/// once all have.
fn prefork_children(l: i32, n: u8, body: impl Fn(u8, i32) -> Res) -> Result<(Vec<i32>, i32), String> {
    let (held, refused) = refused_port()?;
    let (ready_r, ready_w) = pipe()?;
    let mut pids = Vec::new();
    for index in 0..n {
        let pid = fork()?;
        if pid == 0 {
            in_child(|| {
                net::close(ready_r);
                set_timeout(l, 10)?;
                serving(l, refused)?;
                say(ready_w, b'r')?;
                body(index, ready_w)
            });
        }
        pids.push(pid);
    }
    net::close(ready_w);
    prefork_wait(ready_r, n.into())?;
    net::close(held);
    Ok((pids, ready_r))
}

/// A pre-fork server (nginx's master and workers): the parent listens and
/// never accepts; two children accept on the copy they inherited, one in
/// blocking accepts, one through epoll. Every connection is served by one
/// of them; a connection saying `q` makes the child that takes it close
/// its copy and leave, so the other then takes all that come.
fn prefork() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (pids, ready_r) = prefork_children(l, 2, |index, _| {
        // SAFETY: plain epoll creation.
        let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
        epoll_add(ep, l, IN, 1)?;
        loop {
            if index == 1 {
                ensure!(epoll_get(ep, 10_000)? == [(IN, 1)], "child 1: the listener never became readable");
            }
            let s = net::accept(l).map_err(f)?;
            let mut b = [0u8; 1];
            net::read_exact(s, &mut b).map_err(f)?;
            if b[0] == b'q' {
                // Its copy goes before the answer: the parent's next
                // connect must find the other child.
                net::close(l);
                ensure!(send(s, &[index], 0) == 1, "child {index}: answer: {}", errno());
                net::close(s);
                return Ok(());
            }
            ensure!(send(s, &[index], 0) == 1, "child {index}: answer: {}", errno());
            net::close(s);
        }
    })?;
    let ask = |what: u8| -> Result<u8, String> {
        let c = net::connect_loopback(false, port).map_err(f)?;
        ensure!(send(c, &[what], 0) == 1, "send {}: {}", what as char, errno());
        let mut b = [0u8; 1];
        net::read_exact(c, &mut b).map_err(f)?;
        net::close(c);
        ensure!(b[0] < 2, "answer {}", b[0]);
        Ok(b[0])
    };
    for _ in 0..20 {
        ask(b'x')?;
    }
    let first = ask(b'q')?;
    for _ in 0..5 {
        ensure!(ask(b'x')? != first, "child {first} left, yet answered");
    }
    ensure!(ask(b'q')? != first, "child {first} left, yet answered the last q");
    for pid in pids {
        wait_child(pid)?;
    }
    net::close(l);
    net::close(ready_r);
    Ok(())
}

/// One pipe per pre-fork child: (read end, write end).
type Gates = [(i32, i32); 2];

/// `prefork_children` whose children, once ready, each wait for a byte
/// on their own pipe (`say(go[index].1, …)`) before `body`. Returns the
/// pipes too.
fn gated_children(l: i32, body: impl Fn(u8, i32) -> Res) -> Result<(Vec<i32>, i32, Gates), String> {
    let go = [pipe()?, pipe()?];
    let (pids, ready_r) = prefork_children(l, 2, |index, ready_w| {
        let mut b = [0u8; 1];
        net::read_exact(go[index as usize].0, &mut b).map_err(f)?;
        body(index, ready_w)
    })?;
    Ok((pids, ready_r, go))
}

/// A pre-fork child that closes its copy of the listener while a
/// connection waits in its queue: the connection is the other child's to
/// accept, as it would be in the kernel's shared queue, not reset.
fn prefork_decline() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (pids, ready_r, go) = gated_children(l, |index, ready_w| {
        let mut b = [0u8; 1];
        if index == 0 {
            // Leaves without accepting what waits for it.
            net::close(l);
            return say(ready_w, b'c');
        }
        for _ in 0..2 {
            let s = net::accept(l).map_err(f)?;
            net::read_exact(s, &mut b).map_err(f)?;
            ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
            net::close(s);
        }
        Ok(())
    })?;
    // One connection waits in each child's queue (or both in the kernel's).
    let conns = [connect_and_say(port, b'a')?, connect_and_say(port, b'b')?];
    // Child 0 first: it closes its copy and says so.
    say(go[0].1, b'g')?;
    prefork_wait(ready_r, 1)?;
    say(go[1].1, b'g')?;
    for (k, &c) in conns.iter().enumerate() {
        let mut b = [0u8; 1];
        ensure!(recv(c, &mut b, 0) == 1, "connection {k} was not served: {}", errno());
        ensure!(b[0] == b'a' + k as u8, "connection {k} got {b:?}");
        net::close(c);
    }
    for pid in pids {
        wait_child(pid)?;
    }
    net::close(l);
    net::close(ready_r);
    go.iter().for_each(|&(r, w)| [r, w].into_iter().for_each(net::close));
    Ok(())
}

/// A pre-fork child killed with connections in its queue: those it had
/// not touched are the other child's to accept, as they would be in the
/// kernel's shared queue, not reset; the one it had answered ends as a
/// dead process's connection does (end of stream) and is never served
/// again.
fn prefork_kill() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (pids, ready_r, go) = gated_children(l, |index, ready_w| {
        let mut b = [0u8; 1];
        if index == 0 {
            let s = net::accept(l).map_err(f)?;
            net::read_exact(s, &mut b).map_err(f)?;
            ensure!(send(s, b"0", 0) == 1, "child 0: answer: {}", errno());
            say(ready_w, b'k')?;
            // Killed while it waits here.
            // SAFETY: waits for a signal; no memory involved.
            unsafe { libc::pause() };
            return Err("child 0 lived on".into());
        }
        for _ in 0..3 {
            let s = net::accept(l).map_err(f)?;
            net::read_exact(s, &mut b).map_err(f)?;
            ensure!(send(s, b"1", 0) == 1, "child 1: answer: {}", errno());
            net::close(s);
        }
        Ok(())
    })?;
    let connect = || connect_and_say(port, b'x');
    // One connection waits in each child's queue (or both in the
    // kernel's), and child 0 answers one; then one more waits in each.
    let mut conns = vec![connect()?, connect()?];
    say(go[0].1, b'g')?;
    prefork_wait(ready_r, 1)?;
    conns.extend([connect()?, connect()?]);
    // SAFETY: kills our own child.
    ensure!(unsafe { libc::kill(pids[0], libc::SIGKILL) } == 0, "kill: {}", errno());
    let mut status = 0;
    // SAFETY: waits for our own child.
    cvt("waitpid", unsafe { libc::waitpid(pids[0], &mut status, 0) }).map_err(f)?;
    say(go[1].1, b'g')?;
    let mut answers = Vec::new();
    for (k, &c) in conns.iter().enumerate() {
        let mut got = Vec::new();
        let mut b = [0u8; 4];
        loop {
            match recv(c, &mut b, 0) {
                0 => break,
                n if n > 0 => got.extend_from_slice(&b[..n as usize]),
                _ => return Err(format!("connection {k}: {} after {got:?}", errno())),
            }
        }
        ensure!(got == b"0" || got == b"1", "connection {k} got {got:?}");
        answers.push(got[0]);
        net::close(c);
    }
    answers.sort_unstable();
    ensure!(answers == b"0111", "answers {answers:?}");
    wait_child(pids[1])?;
    net::close(l);
    net::close(ready_r);
    go.iter().for_each(|&(r, w)| [r, w].into_iter().for_each(net::close));
    Ok(())
}

/// Connects to `port` and sends `b`; the connection gives up reading
/// after 10 s.
fn connect_and_say(port: u16, b: u8) -> Result<i32, String> {
    let c = net::connect_loopback(false, port).map_err(f)?;
    set_timeout(c, 10)?;
    ensure!(send(c, &[b], 0) == 1, "send: {}", errno());
    Ok(c)
}

/// Several connections in turn to one listener (under ipcd the later
/// ones take the standby connections the monitor holds ready), each
/// carrying its own byte both ways; once the listener is closed, a
/// connect is refused, as by the kernel, not handed a standby.
fn standby_refused() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    for i in 0..6u8 {
        let c = connect_and_say(port, i)?;
        let s = net::accept(l).map_err(f)?;
        set_timeout(s, 10)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        ensure!(b[0] == i, "connection {i} carried {}", b[0]);
        ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
        expect_byte(c, i)?;
        net::close(c);
        net::close(s);
    }
    net::close(l);
    match net::connect_loopback(false, port) {
        Err(e) => ensure!(e.errno == libc::ECONNREFUSED, "connect after close: errno {}", e.errno),
        Ok(fd) => return Err(format!("a connect to the closed listener succeeded (fd {fd})")),
    }
    Ok(())
}

/// Reads one byte from `c` and checks it is `want`.
fn expect_byte(c: i32, want: u8) -> Res {
    let mut b = [0u8; 1];
    ensure!(recv(c, &mut b, 0) == 1, "the connection was not served: {}", errno());
    ensure!(b[0] == want, "got {b:?}, not {want}");
    Ok(())
}

/// A connection waits in a listener's queue when its process forks; the
/// parent closes its copy without accepting it: the child accepts it,
/// as it would from the kernel's shared queue (the child never saw it
/// queued, so it must not count as holding it).
fn fork_queued() -> Res {
    queued_at_fork(false)
}

/// nginx's start: a connection comes between the master's `listen` and
/// the fork of its worker; the master keeps its copy open and never
/// accepts. The worker accepts it, as it would from the kernel's shared
/// queue.
fn master_queued() -> Res {
    queued_at_fork(true)
}

/// A connection waits in the parent's queue when it forks a child that
/// accepts; the parent closes its copy of the listener at once, or
/// (`keep`) only once the child has served the connection.
fn queued_at_fork(keep: bool) -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = connect_and_say(port, b'q')?;
    let (pids, ready_r) = prefork_children(l, 1, |_, _| echo_one(l))?;
    if !keep {
        net::close(l);
    }
    expect_byte(c, b'q')?;
    net::close(c);
    pids.into_iter().try_for_each(wait_child)?;
    if keep {
        net::close(l);
    }
    net::close(ready_r);
    Ok(())
}

/// A server that daemonizes with a connection in its queue: the process
/// that listened forks a child and exits before the child accepts. The
/// connection waits for the child, as in the kernel's queue, instead of
/// going with the process that listened.
fn daemon_queued() -> Res {
    let (port_r, port_w) = pipe()?;
    let (go_r, go_w) = pipe()?;
    let daemon = fork()?;
    if daemon == 0 {
        in_child(|| {
            net::close(port_r);
            net::close(go_w);
            let (l, port) = net::listen_loopback(false).map_err(f)?;
            port.to_le_bytes().into_iter().try_for_each(|b| say(port_w, b))?;
            let mut b = [0u8; 1];
            // The client has connected.
            net::read_exact(go_r, &mut b).map_err(f)?;
            let (gone_r, gone_w) = pipe()?;
            if fork()? == 0 {
                in_child(|| {
                    net::close(gone_w);
                    // Accepts once the process that listened is gone.
                    ensure!(net::read_some(gone_r, &mut b).map_err(f)? == 0, "read from a pipe nobody writes");
                    set_timeout(l, 10)?;
                    let s = net::accept(l).map_err(f)?;
                    net::read_exact(s, &mut b).map_err(f)?;
                    ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
                    net::close(s);
                    Ok(())
                });
            }
            Ok(())
        });
    }
    // A child that fails ends our reads instead of leaving them waiting.
    net::close(port_w);
    net::close(go_r);
    let mut port = [0u8; 2];
    net::read_exact(port_r, &mut port).map_err(f)?;
    let c = connect_and_say(u16::from_le_bytes(port), b'd')?;
    say(go_w, b'g')?;
    wait_child(daemon)?;
    expect_byte(c, b'd')?;
    net::close(c);
    [port_r, go_w].into_iter().for_each(net::close);
    Ok(())
}

/// A one-byte message over `byte`, with `space` for its control data.
fn one_byte_msg(byte: &mut [u8; 1], iov: &mut libc::iovec, space: &mut [u64; 4]) -> libc::msghdr {
    *iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov;
    m.msg_iovlen = 1;
    m.msg_control = space.as_mut_ptr().cast();
    m.msg_controllen = size_of_val(space);
    m
}

/// Sends `fd` over the Unix socket `u` (`SCM_RIGHTS`, one byte of data).
fn send_fd(u: i32, fd: i32) -> Res {
    let (mut byte, mut space) = (*b"f", [0u64; 4]);
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut m = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: the CMSG macros stay within `space`, which outlives `m`.
    unsafe {
        m.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        ensure!(libc::sendmsg(u, &m, 0) == 1, "sendmsg with SCM_RIGHTS: {}", errno());
    }
    Ok(())
}

/// Accepts one connection on `l`, echoes its one byte and closes it.
fn echo_one(l: i32) -> Res {
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
    net::close(s);
    Ok(())
}

/// A connected pair of Unix stream sockets, to pass fds over.
fn unix_pair() -> Result<[i32; 2], String> {
    let mut u = [0i32; 2];
    // SAFETY: a two-int array.
    ensure!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, u.as_mut_ptr()) } == 0, "socketpair");
    Ok(u)
}

/// Receives one fd sent by `send_fd` over `u`.
fn recv_fd(u: i32) -> Result<i32, String> {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 4]);
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut m = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: buffers that outlive `m`; the CMSG macros stay within `space`.
    unsafe {
        ensure!(libc::recvmsg(u, &mut m, 0) == 1, "recvmsg with SCM_RIGHTS: {}", errno());
        let c = libc::CMSG_FIRSTHDR(&m);
        ensure!(!c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS, "no fd received");
        Ok(libc::CMSG_DATA(c).cast::<i32>().read_unaligned())
    }
}

/// A connection's end passed to another process over a Unix socket, as
/// Node's cluster primary passes what it accepts to a worker: the sender
/// closes its fd at once, the receiver serves the connection, and its
/// close is the one the peer sees.
fn pass_fd() -> Res {
    let u = unix_pair()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let s = recv_fd(u[1])?;
            let mut buf = [0u8; 16];
            let n = recv(s, &mut buf, 0);
            ensure!(n == 4 && &buf[..4] == b"ping", "the passed end read {n}");
            ensure!(send(s, b"pong", 0) == 4, "send on the passed end: {}", errno());
            net::close(s);
            Ok(())
        });
    }
    // Made after the fork: only the receiver gets the end, through the socket.
    let (c, s) = pair(false)?;
    send_fd(u[0], s)?;
    net::close(s);
    ensure!(send(c, b"ping", 0) == 4, "send to the passed end: {}", errno());
    let mut buf = [0u8; 16];
    let n = recv(c, &mut buf, 0);
    ensure!(n == 4 && &buf[..4] == b"pong", "the answer from the passed end: {n}");
    wait_child(pid)?;
    let mut fds = [pollfd(c, libc::POLLIN)];
    ensure!(poll_n(&mut fds, 5000) == 1, "no end of stream after the receiver closed");
    ensure!(recv(c, &mut buf, 0) == 0, "recv after the receiver closed: {}", errno());
    for fd in [c, u[0], u[1]] {
        net::close(fd);
    }
    Ok(())
}

/// The `O_NONBLOCK` of `fd` as `fcntl` reports it.
fn nonblocking(fd: i32) -> Result<bool, String> {
    // SAFETY: F_GETFL takes no argument.
    let fl = cvt("fcntl(F_GETFL)", unsafe { libc::fcntl(fd, libc::F_GETFL) }).map_err(f)?;
    Ok(fl & libc::O_NONBLOCK != 0)
}

/// A blocking listener passed to another process over a Unix socket, as
/// Python's forkserver hands a worker the socket its parent listened on:
/// the sender keeps its copy and never accepts, the receiver accepts in
/// blocking calls and must find its copy blocking, and every connect from
/// the sender must be served by it. A connection made before the pass is
/// the sender's to accept after it (the receiver starts only when told).
/// A child that ended before the pass had forked the sender first
/// (Python's forkserver is such a child), so the listener has been
/// shared once.
fn pass_listener() -> Res {
    const CONNECTS: u8 = 5;
    let u = unix_pair()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let l = recv_fd(u[1])?;
            ensure!(!nonblocking(l)?, "the received listener is non-blocking");
            let mut go = [0u8; 1];
            net::read_exact(u[1], &mut go).map_err(f)?;
            // Accepts that never come fail the check instead of hanging it.
            set_timeout(l, 10)?;
            (0..CONNECTS).try_for_each(|_| echo_one(l))
        });
    }
    // Made after the fork: the receiver gets it through the socket only.
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let gone = fork()?;
    if gone == 0 {
        in_child(|| Ok(()));
    }
    wait_child(gone)?;
    let early = connect_and_say(port, b'e')?;
    send_fd(u[0], l)?;
    ensure!(!nonblocking(l)?, "the sender's listener became non-blocking");
    set_timeout(l, 10)?;
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    ensure!(b == *b"e" && send(s, b"E", 0) == 1, "the early connection: got {b:?}, echo: {}", errno());
    ensure!(recv(early, &mut b, 0) == 1 && b == *b"E", "the early connection's answer: {b:?}");
    for fd in [s, early] {
        net::close(fd);
    }
    say(u[0], b'g')?;
    for k in 0..CONNECTS {
        let c = connect_and_say(port, b'a' + k)?;
        let mut b = [0u8; 1];
        ensure!(recv(c, &mut b, 0) == 1, "connection {k} was not served: {}", errno());
        ensure!(b[0] == b'a' + k, "connection {k} got {b:?}");
        net::close(c);
    }
    wait_child(pid)?;
    for fd in [l, u[0], u[1]] {
        net::close(fd);
    }
    Ok(())
}

/// Reading, writing, closing and duplicating through `syscall(2)`, as
/// libuv (Node) closes every fd: bytes written and read so travel the
/// connection, a dup made so carries it, the close ends it (the peer
/// reads the end of stream) and the number is then free for anything,
/// here a pipe, whose bytes must go to the pipe.
fn raw_syscalls() -> Res {
    let (c, s) = pair(false)?;
    let mut buf = [0u8; 16];
    // Bytes through the raw calls, both ways.
    // SAFETY: live buffers of the lengths given, our fds.
    let (w, r) = unsafe {
        (libc::syscall(libc::SYS_write, c, b"raw".as_ptr(), 3), libc::syscall(libc::SYS_read, s, buf.as_mut_ptr(), 16))
    };
    ensure!(w == 3 && r == 3 && &buf[..3] == b"raw", "raw write/read gave {w}/{r}: {}", errno());
    let null = std::ptr::null::<u8>();
    // SAFETY: as above; no addresses.
    let (w, r) = unsafe {
        (
            libc::syscall(libc::SYS_sendto, s, b"back".as_ptr(), 4, 0, null, 0),
            libc::syscall(libc::SYS_recvfrom, c, buf.as_mut_ptr(), 16, 0, null, null),
        )
    };
    ensure!(w == 4 && r == 4 && &buf[..4] == b"back", "raw sendto/recvfrom gave {w}/{r}: {}", errno());
    // SAFETY: dup of our open fd through the raw call.
    let d = unsafe { libc::syscall(libc::SYS_dup, s) } as i32;
    ensure!(d >= 0, "syscall(SYS_dup): {}", errno());
    ensure!(send(d, b"via dup", 0) == 7, "send on the raw dup: {}", errno());
    ensure!(recv(c, &mut buf, 0) == 7 && &buf[..7] == b"via dup", "the raw dup's bytes did not arrive");
    for fd in [d, s] {
        // SAFETY: closes our own fds through the raw call.
        let r = unsafe { libc::syscall(libc::SYS_close, fd) };
        ensure!(r == 0, "syscall(SYS_close, {fd}): {}", errno());
    }
    let mut fds = [pollfd(c, libc::POLLIN)];
    ensure!(poll_n(&mut fds, 5000) == 1, "no end of stream after the raw close");
    ensure!(recv(c, &mut buf, 0) == 0, "recv after the peer's raw close: {}", errno());
    let mut p = [0i32; 2];
    // SAFETY: a two-int array.
    ensure!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) } == 0, "pipe: {}", errno());
    ensure!(p.contains(&s), "the pipe did not get the closed number {s}: {p:?}");
    // SAFETY: writes to the pipe's write end, reads from its read end.
    let (w, r) =
        unsafe { (libc::write(p[1], b"pipe".as_ptr().cast(), 4), libc::read(p[0], buf.as_mut_ptr().cast(), 16)) };
    ensure!(w == 4 && r == 4 && &buf[..4] == b"pipe", "the pipe on a reused number gave write {w}, read {r}");
    for fd in [p[0], p[1], c] {
        net::close(fd);
    }
    Ok(())
}

/// Signals `thread` (waiting in a call) after 50 ms, then runs `then` 50 ms
/// later; join it before the thread can be gone.
fn kick_then(thread: libc::pthread_t, sig: i32, then: impl FnOnce() + Send + 'static) -> std::thread::JoinHandle<()> {
    let thread = thread as usize;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: signals the waiting thread, which outlives this one.
        unsafe { libc::pthread_kill(thread as libc::pthread_t, sig) };
        std::thread::sleep(Duration::from_millis(50));
        then();
    })
}

/// A handler installed with SA_RESTART does not interrupt a blocked recv
/// or accept: the call goes on and returns what came after the signal.
/// With a receive timeout on the socket it does (EINTR), and poll is never
/// restarted.
fn sa_restart() -> Res {
    handle(libc::SIGUSR1, true);
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let ran = || SIGNALS.load(Ordering::Relaxed);
    let (c, s) = pair(false)?;
    let before = ran();
    let k = kick_then(me, libc::SIGUSR1, move || {
        send(s, b"x", 0);
    });
    let mut buf = [0u8; 8];
    let r = recv(c, &mut buf, 0);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(ran() > before, "the handler did not run");
    ensure!(r == 1 && buf[0] == b'x', "recv across an SA_RESTART handler gave {r}/{e}");

    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let k = kick_then(me, libc::SIGUSR1, move || {
        if let Ok(fd) = net::connect_loopback(false, port) {
            net::close(fd);
        }
    });
    // SAFETY: null address buffers are allowed.
    let a = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(a >= 0, "accept across an SA_RESTART handler gave {a}/{e}");
    net::close(a);
    net::close(l);

    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: a timeval of its size.
    let set = unsafe {
        libc::setsockopt(
            c,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    ensure!(set == 0, "SO_RCVTIMEO: {}", errno());
    let k = kick_then(me, libc::SIGUSR1, || {});
    let r = recv(c, &mut buf, 0);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "recv with a timeout across an SA_RESTART handler gave {r}/{e}");

    let k = kick_then(me, libc::SIGUSR1, || {});
    let mut fds = [pollfd(c, libc::POLLIN)];
    let r = poll_n(&mut fds, 5000);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "poll across an SA_RESTART handler gave {r}/{e}");
    net::close(c);
    net::close(s);
    Ok(())
}

/// Accepts one connection on `l` and answers its 4 bytes with our pid
/// (10 characters) and the same 4 bytes.
fn echo_one_with_pid(l: i32) -> Res {
    let s = net::accept(l).map_err(f)?;
    let mut buf = [0u8; 4];
    net::read_exact(s, &mut buf).map_err(f)?;
    // SAFETY: getpid cannot fail.
    let me = unsafe { libc::getpid() };
    net::send_all(s, format!("{me:>10}").as_bytes()).map_err(f)?;
    net::send_all(s, &buf).map_err(f)?;
    net::close(s);
    Ok(())
}

/// A pre-fork server: the parent listens, `workers` children accept and
/// echo (each reply starts with the worker's pid); prints its port; runs
/// until killed.
fn prefork_serve(workers: usize) -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let mut pids = Vec::new();
    for _ in 0..workers {
        let pid = fork()?;
        if pid == 0 {
            in_child(|| loop {
                echo_one_with_pid(l)?;
            });
        }
        pids.push(pid);
    }
    println!("{port}");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    for pid in pids {
        // SAFETY: ends our own children.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut st = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    Ok(())
}

/// A server that daemonizes after it listens: the parent listens, forks
/// and exits; the child says it accepts (see `serving`), prints
/// `ready PID`, and echoes `n` connections as `prefork_serve` does.
/// Prints the port first.
fn daemon_serve(n: usize) -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (held, refused) = refused_port()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            serving(l, refused)?;
            net::close(held);
            set_timeout(l, 10)?;
            // SAFETY: getpid cannot fail.
            println!("ready {}", unsafe { libc::getpid() });
            (0..n).try_for_each(|_| echo_one_with_pid(l))
        });
    }
    println!("{port}");
    Ok(())
}

/// `n` connections to a pre-fork server, one after another; prints how
/// many distinct workers answered.
fn prefork_clients(port: u16, n: usize) -> Res {
    let mut pids = std::collections::HashSet::new();
    for i in 0..n {
        let c = net::connect_loopback(false, port).map_err(f)?;
        let msg = format!("{:04}", i % 10000);
        net::send_all(c, msg.as_bytes()).map_err(f)?;
        let mut buf = [0u8; 14];
        net::read_exact(c, &mut buf).map_err(f)?;
        ensure!(&buf[10..] == msg.as_bytes(), "echo {i} differs");
        pids.insert(String::from_utf8_lossy(&buf[..10]).trim().to_string());
        net::close(c);
    }
    println!("{}", pids.len());
    Ok(())
}

/// Load on an epoll echo server: `conns` connections, `rounds` rounds of
/// one 8-byte request on each, all replies read before the next round.
/// Prints the nanoseconds taken.
fn epoll_load(port: u16, conns: usize, rounds: usize) -> Res {
    raise_nofile();
    let fds: Vec<i32> = (0..conns).map(|_| net::connect_loopback(false, port)).collect::<Result<_, _>>().map_err(f)?;
    for &c in &fds {
        let one: i32 = 1;
        // SAFETY: an int option; requests must not wait for Nagle.
        unsafe { libc::setsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw const one).cast(), 4) };
    }
    let start = Instant::now();
    let mut buf = [0u8; 8];
    for _ in 0..rounds {
        for &c in &fds {
            net::send_all(c, b"request!").map_err(f)?;
        }
        for &c in &fds {
            net::read_exact(c, &mut buf).map_err(f)?;
        }
    }
    println!("{}", start.elapsed().as_nanos());
    for c in fds {
        net::close(c);
    }
    Ok(())
}

/// Connection set-up server: `count` connections, each one byte echoed,
/// then closed. Prints its port.
fn conn_serve(count: usize) -> Res {
    raise_nofile();
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    for _ in 0..count {
        let s = net::accept(l).map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        let _ = recv(s, &mut b, 0);
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// `count` connections (connect, one byte each way, close) from `threads`
/// threads; prints the nanoseconds taken.
fn conn_client(port: u16, count: usize, threads: usize) -> Res {
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let n = count / threads + usize::from(t < count % threads);
            std::thread::spawn(move || -> Res {
                for _ in 0..n {
                    let c = net::connect_loopback(false, port).map_err(f)?;
                    net::send_all(c, b"c").map_err(f)?;
                    let mut b = [0u8; 1];
                    net::read_exact(c, &mut b).map_err(f)?;
                    net::close(c);
                }
                Ok(())
            })
        })
        .collect();
    for w in workers {
        w.join().map_err(|_| "client thread panicked")??;
    }
    println!("{}", start.elapsed().as_nanos());
    Ok(())
}

/// One seeded random sequence of socket calls on a connected pair, every
/// observable written to `out`: return values, errno, bytes (hashed), poll
/// masks, FIONREAD, SO_ERROR and SIGPIPE. Only non-blocking calls, and at
/// most 16 KiB unread each way, so kernel TCP and ipcd both answer at once.
fn diff_trace(seed: u64, out: &mut String) -> Res {
    use std::fmt::Write as _;
    let (a, b) = pair(false)?;
    // Without Nagle, the kernel hands each send to the peer at once (ipcd
    // always does): the two can then be compared call by call.
    for fd in [a, b] {
        let one: i32 = 1;
        // SAFETY: an int option.
        unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw const one).cast(), 4) };
    }
    let mut fds = [Some(a), Some(b)];
    let mut unread = [0usize; 2]; // bytes sent by end i not yet read by the other
    let mut rng = Prng::new(seed);
    let mut data = vec![0u8; 8192];
    let sig_pending = || {
        // SAFETY: sigpending/sigtimedwait on live sets; SIGPIPE is blocked.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigpending(&mut set);
            if libc::sigismember(&set, libc::SIGPIPE) == 1 {
                let mut only: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut only);
                libc::sigaddset(&mut only, libc::SIGPIPE);
                let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                libc::sigtimedwait(&only, std::ptr::null_mut(), &zero);
                true
            } else {
                false
            }
        }
    };
    for step in 0..80 {
        let e = rng.range(0, 1);
        let Some(fd) = fds[e] else { continue };
        let op = rng.range(0, 9);
        let _ = write!(out, "{seed}.{step} end{e} ");
        let r: String = match op {
            0 | 1 => {
                let room = 16384usize.saturating_sub(unread[e]);
                let n = rng.range(0, 4000).min(room);
                rng.fill(&mut data[..n]);
                let flags = libc::MSG_DONTWAIT | if rng.range(0, 3) == 0 { 0 } else { libc::MSG_NOSIGNAL };
                let r = send(fd, &data[..n], flags);
                if r > 0 {
                    unread[e] += r as usize;
                }
                format!("send {n} -> {r} {}", if r < 0 { errno() } else { 0 })
            }
            2 | 3 => {
                let n = rng.range(0, 5000);
                let peek = rng.range(0, 3) == 0;
                // MSG_TRUNC: TCP discards (or with PEEK, counts) instead of copying.
                let trunc = rng.range(0, 5) == 0;
                let flags = libc::MSG_DONTWAIT
                    | if peek { libc::MSG_PEEK } else { 0 }
                    | if trunc { libc::MSG_TRUNC } else { 0 };
                let mut buf = vec![0u8; n];
                let r = recv(fd, &mut buf, flags);
                let mut h = Fnv::default();
                if r > 0 {
                    if !trunc {
                        h.update(&buf[..r as usize]);
                    }
                    if !peek {
                        unread[1 - e] = unread[1 - e].saturating_sub(r as usize);
                    }
                }
                format!("recv {n} peek={peek} trunc={trunc} -> {r} {} {:x}", if r < 0 { errno() } else { 0 }, h.0)
            }
            4 => {
                let how = rng.range(0, 3) as i32;
                // SAFETY: shutdown of our socket (3 is invalid on purpose).
                let r = unsafe { libc::shutdown(fd, how) };
                format!("shutdown {how} -> {r} {}", if r < 0 { errno() } else { 0 })
            }
            5 if rng.range(0, 3) == 0 => {
                net::close(fd);
                fds[e] = None;
                "close".to_string()
            }
            5 | 6 => {
                let mut p = [pollfd(fd, libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP)];
                let r = poll_n(&mut p, 0);
                format!("poll -> {r} {:#x}", p[0].revents)
            }
            7 => {
                let mut n: i32 = -1;
                // SAFETY: FIONREAD's int out pointer.
                let r = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
                format!("fionread -> {r} {n}")
            }
            _ => format!("so_error -> {}", int_opt(fd, libc::SOL_SOCKET, libc::SO_ERROR)?),
        };
        let _ = writeln!(out, "{r}{}", if sig_pending() { " SIGPIPE" } else { "" });
    }
    for fd in fds.into_iter().flatten() {
        net::close(fd);
    }
    Ok(())
}

fn diff_traces(first: u64, count: u64) -> Res {
    // SIGPIPE is blocked and collected, so it shows in the trace.
    // SAFETY: blocks one signal for this process.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
    let mut out = String::new();
    for seed in first..first + count {
        diff_trace(seed, &mut out)?;
    }
    print!("{out}");
    Ok(())
}

/// One socket in two epoll sets; a set used from two threads; a set
/// inherited across fork, waited on in the child.
fn epoll_shared() -> Res {
    let (c, s) = pair(false)?;
    // SAFETY: plain epoll creation.
    let (e1, e2) = unsafe { (libc::epoll_create1(0), libc::epoll_create1(0)) };
    ensure!(e1 >= 0 && e2 >= 0, "epoll_create1");
    // A dup names the same set, even one made before any member was added
    // (mio adds through a dup and waits through the original).
    // SAFETY: dup of an epoll fd.
    let e1dup = cvt("fcntl", unsafe { libc::fcntl(e1, libc::F_DUPFD_CLOEXEC, 3) }).map_err(f)?;
    epoll_add(e1dup, s, IN, 11)?;
    epoll_add(e2, s, IN, 22)?;
    ensure!(send(c, b"x", 0) == 1, "send");
    ensure!(epoll_get(e1, 1000)? == [(IN, 11)], "the set added to through its dup");
    ensure!(epoll_get(e2, 1000)? == [(IN, 22)], "both sets see it");
    net::close(e1dup);
    ensure!(epoll_get(e1, 1000)? == [(IN, 11)], "the set after its dup closed");
    let mut b = [0u8; 1];
    ensure!(recv(s, &mut b, 0) == 1, "read");
    // Two threads wait on one set; one wake-up is enough for one of them.
    let waiters: Vec<_> = (0..2).map(|_| std::thread::spawn(move || epoll_get(e1, 2000))).collect();
    std::thread::sleep(Duration::from_millis(50));
    ensure!(send(c, b"y", 0) == 1, "send");
    let mut woken = 0;
    for w in waiters {
        if !w.join().map_err(|_| "waiter panicked")??.is_empty() {
            woken += 1;
        }
    }
    ensure!(woken >= 1, "no waiter of the shared set woke");
    // The child inherits the set and its members.
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            ensure!(epoll_get(e2, 1000)? == [(IN, 22)], "inherited set in the child");
            Ok(())
        });
    }
    wait_child(pid)?;
    for fd in [c, s, e1, e2] {
        net::close(fd);
    }
    Ok(())
}

/// Accepted connections leave the backlog even while they stay open: a
/// listener with a backlog of 2 keeps taking connections from another
/// process, round after round (under ipcd, a count that forgot accepted
/// ones would send the later connects to the kernel, which `check` sees).
fn backlog_refills() -> Res {
    let (to_child, from_parent) = {
        let (r, w) = pipe()?;
        (w, r)
    };
    let (from_child, to_parent) = pipe()?;
    let byte = |fd: i32| -> Result<u8, String> {
        let mut b = [0u8; 1];
        // SAFETY: a live one-byte buffer.
        ensure!(unsafe { libc::read(fd, b.as_mut_ptr().cast(), 1) } == 1, "pipe read");
        Ok(b[0])
    };
    let put = |fd: i32, v: u8| {
        // SAFETY: a live one-byte buffer.
        unsafe { libc::write(fd, [v].as_ptr().cast(), 1) };
    };
    const ROUNDS: usize = 5;
    // The clients are another process, forked before the listener exists
    // (a forked listener is the kernel's alone).
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let port = u16::from(byte(from_parent)?) << 8 | u16::from(byte(from_parent)?);
            let mut open = Vec::new();
            for _ in 0..ROUNDS {
                for _ in 0..2 {
                    open.push(net::connect_loopback(false, port).map_err(f)?);
                }
                put(to_parent, 1);
                byte(from_parent)?;
            }
            open.into_iter().for_each(net::close);
            Ok(())
        });
    }
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    cvt("bind", unsafe { libc::bind(l, (&raw const ss).cast(), len) }).map_err(f)?;
    // SAFETY: a bound socket.
    cvt("listen", unsafe { libc::listen(l, 2) }).map_err(f)?;
    let port = net::local_port(l).map_err(f)?;
    put(to_child, (port >> 8) as u8);
    put(to_child, port as u8);
    set_nonblocking(l, true)?;
    let mut open = Vec::new();
    for round in 0..ROUNDS {
        byte(from_child)?;
        for _ in 0..2 {
            let mut fds = [pollfd(l, libc::POLLIN)];
            ensure!(poll_n(&mut fds, 5000) == 1, "round {round}: no connection to accept");
            // SAFETY: no address wanted.
            let s = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
            ensure!(s >= 0, "round {round}: accept: {}", errno());
            open.push(s);
        }
        // SAFETY: as above.
        let r = unsafe { libc::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), 0) };
        ensure!(r == -1 && errno() == libc::EAGAIN, "round {round}: queue not empty: {r}/{}", errno());
        put(to_child, 1);
    }
    wait_child(pid)?;
    open.into_iter().for_each(net::close);
    for fd in [l, to_child, from_parent, from_child, to_parent] {
        net::close(fd);
    }
    Ok(())
}

/// `listen` again on a listening socket changes its backlog, as on Linux:
/// connections beyond the first backlog wait in the queue (through ipcd:
/// none may fall back to the kernel for a full queue).
fn relisten() -> Res {
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    cvt("bind", unsafe { libc::bind(l, (&raw const ss).cast(), len) }).map_err(f)?;
    for backlog in [1, 16] {
        // SAFETY: a bound, then listening, socket.
        cvt("listen", unsafe { libc::listen(l, backlog) }).map_err(f)?;
    }
    let port = net::local_port(l).map_err(f)?;
    let clients = (0..6).map(|_| net::connect_loopback(false, port)).collect::<Result<Vec<_>, _>>().map_err(f)?;
    for (i, &c) in clients.iter().enumerate() {
        ensure!(send(c, &[i as u8], 0) == 1, "send from client {i}");
    }
    let mut seen = Vec::new();
    for _ in &clients {
        let s = net::accept(l).map_err(f)?;
        let mut b = [0u8; 1];
        ensure!(recv(s, &mut b, 0) == 1, "recv on an accepted connection");
        seen.push(b[0]);
        net::close(s);
    }
    seen.sort_unstable();
    ensure!(seen == [0, 1, 2, 3, 4, 5], "accepted {seen:?}");
    clients.into_iter().for_each(net::close);
    net::close(l);
    Ok(())
}

/// fork while other threads use connections: the child never inherits a
/// lock of ours that a thread which does not exist in it was holding (it
/// would hang in fork, or at its first use of that socket or of the
/// monitor). Another thread streams on one connection and opens and
/// closes connections (the monitor's channel, kept segments) while this
/// one forks; each child sends on the streaming connection (now shared
/// with its parent) and makes a connection of its own, then exits.
fn fork_busy() -> Res {
    let (c, s) = pair(false)?;
    // The children's connections: accepted here after each child. (A
    // listener a child inherits goes through the kernel from then on, by
    // design, so the busy thread makes a fresh one for each of its own.)
    let (l2, port2) = net::listen_loopback(false).map_err(f)?;
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let made = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let busy = {
        let (stop, made) = (stop.clone(), made.clone());
        std::thread::spawn(move || -> Res {
            let msg = [7u8; 64];
            let mut buf = [0u8; 4096];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                ensure!(send(c, &msg, libc::MSG_DONTWAIT) >= 0 || errno() == libc::EAGAIN, "send: {}", errno());
                // SAFETY: a live buffer.
                let _ = unsafe { libc::recv(s, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
                // A bounded number: each leaves a kernel port in TIME_WAIT.
                if made.load(std::sync::atomic::Ordering::Relaxed) < 2000 {
                    let (x, y) = pair(false)?;
                    net::close(x);
                    net::close(y);
                    made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            Ok(())
        })
    };
    while made.load(std::sync::atomic::Ordering::Relaxed) < 50 {
        std::thread::sleep(Duration::from_millis(1));
    }
    for round in 0..40 {
        // SAFETY: the child only makes calls and exits.
        let pid = unsafe { libc::fork() };
        ensure!(pid >= 0, "fork: {}", errno());
        if pid == 0 {
            let r = send(c, &[1u8; 8], libc::MSG_DONTWAIT);
            let sent = r == 8 || (r < 0 && errno() == libc::EAGAIN);
            let connected = net::connect_loopback(false, port2).map(net::close).is_ok();
            // SAFETY: leaves the child at once.
            unsafe { libc::_exit(if sent && connected { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: our child.
        ensure!(unsafe { libc::waitpid(pid, &mut status, 0) } == pid, "waitpid: {}", errno());
        ensure!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "child of round {round}: status {status:#x}"
        );
        net::close(net::accept(l2).map_err(f)?);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    busy.join().map_err(|_| "busy thread")??;
    net::close(c);
    net::close(s);
    net::close(l2);
    Ok(())
}

extern "C" {
    /// glibc's (2.34+), which the libc crate does not declare for Linux.
    fn closefrom(lowfd: libc::c_int);
}

/// The fds open in this process, from /proc.
fn open_fds() -> Result<Vec<i32>, String> {
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    // The listing's own fd is closed by now.
    // SAFETY: F_GETFD only reads the fd's flags.
    fds.retain(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0);
    fds.sort_unstable();
    Ok(fds)
}

/// A thread asleep in `accept` gets its connection even when another
/// thread of the process, waiting on another listener, read the news of
/// it from the monitor in a poll or an epoll_wait: each listener has a bell
/// of its own, rung for connections another thread read and left queued.
fn accept_wake() -> Res {
    let (busy, _) = net::listen_loopback(false).map_err(f)?;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    // SAFETY: plain epoll calls on our fds.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(f)?;
    let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 1 };
    // SAFETY: a live event for a live fd.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, busy, &mut ev) }).map_err(f)?;
    for round in 0..40 {
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let flag = std::sync::Arc::clone(&done);
        let acceptor = std::thread::spawn(move || {
            let s = net::accept(l);
            flag.store(true, Ordering::SeqCst);
            s
        });
        // Give the acceptor time to fall asleep, then connect while this
        // thread waits on the other listener: either may read the news.
        std::thread::sleep(Duration::from_millis(2));
        let c = net::connect_loopback(false, port).map_err(f)?;
        let until = Instant::now() + Duration::from_secs(10);
        while !done.load(Ordering::SeqCst) {
            ensure!(Instant::now() < until, "round {round}: the accepting thread never woke");
            // Poll in even rounds, epoll in odd ones: both read the monitor.
            let n = if round % 2 == 0 {
                let mut p = libc::pollfd { fd: busy, events: libc::POLLIN, revents: 0 };
                // SAFETY: one live pollfd.
                unsafe { libc::poll(&mut p, 1, 1) }
            } else {
                let mut out = [libc::epoll_event { events: 0, u64: 0 }; 4];
                // SAFETY: a live output array of its length.
                unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 4, 1) }
            };
            ensure!(n == 0, "round {round}: a wait on the idle listener gave {n}");
        }
        let s = acceptor.join().map_err(|_| "acceptor panicked")?.map_err(f)?;
        ensure!(send(c, b"k", 0) == 1, "send: {}", errno());
        let mut b = [0u8; 1];
        ensure!(recv(s, &mut b, 0) == 1 && b == *b"k", "recv: {}", errno());
        net::close(c);
        net::close(s);
    }
    net::close(ep);
    net::close(l);
    net::close(busy);
    Ok(())
}

/// Joins `t`, which a wake-up should end: an error if it has not ended
/// within 10 s (it slept through its wake-up).
fn join_woken<T>(t: std::thread::JoinHandle<T>, what: &str) -> Result<T, String> {
    let until = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        ensure!(Instant::now() < until, "{what} never woke");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.join().map_err(|_| format!("{what} panicked"))
}

/// A writer of small writes (1 to 64 bytes) and a reader with a large
/// buffer that falls behind it, its reads a mix of blocking, non-blocking,
/// `MSG_PEEK` and `MSG_WAITALL`: every byte arrives once and in order, and
/// the end of stream after the last. (Such a reader pauses between its
/// looks under ipcd: see `stream::recv`.)
fn small_writes() -> Res {
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

/// Two threads wait on one connection, one for input and one for room
/// (poll, epoll or a blocked call, in turn): the peer's read that makes
/// room wakes the writer, whichever thread the wake-up reaches first. They
/// share the end's doorbell; the reader wakes too, finds nothing for it,
/// and must not take the writer's wake-up with it.
fn wait_both_ways() -> Res {
    let (c, s) = pair(false)?;
    set_nonblocking(c, true)?;
    let chunk = vec![7u8; 1 << 16];
    let mut sink = vec![0u8; 1 << 16];
    // A thread that waits once for `events` on `c` (no timeout) by `how`.
    let wait = move |how: u32, events: libc::c_short| {
        std::thread::spawn(move || -> Result<i16, String> {
            match how {
                0 => {
                    let mut p = libc::pollfd { fd: c, events, revents: 0 };
                    // SAFETY: one live pollfd.
                    let n = unsafe { libc::poll(&mut p, 1, -1) };
                    ensure!(n == 1, "poll gave {n}: {}", errno());
                    Ok(p.revents)
                }
                1 => {
                    // SAFETY: plain epoll calls on fds we own.
                    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
                    let mut ev = libc::epoll_event { events: events as u32, u64: 9 };
                    // SAFETY: as above.
                    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, c, &mut ev) }).map_err(f)?;
                    let mut out = [libc::epoll_event { events: 0, u64: 0 }; 2];
                    // SAFETY: a live output array of its length.
                    let n = unsafe { libc::epoll_wait(ep, out.as_mut_ptr(), 2, -1) };
                    net::close(ep);
                    ensure!(n == 1 && out[0].u64 == 9, "epoll_wait gave {n}: {}", errno());
                    Ok(out[0].events as i16)
                }
                _ => {
                    // A blocked call: a read for input (the round made `c`
                    // blocking for it).
                    ensure!(events == libc::POLLIN, "only input waits as a call");
                    let mut b = [0u8; 1];
                    // SAFETY: a live buffer.
                    let n = unsafe { libc::recv(c, b.as_mut_ptr().cast(), 1, 0) };
                    ensure!(n == 1, "recv gave {n}: {}", errno());
                    Ok(libc::POLLIN)
                }
            }
        })
    };
    for round in 0..24u32 {
        // Fill our side until the ring (or the kernel's buffers) say no.
        while send(c, &chunk, 0) > 0 {}
        ensure!(errno() == libc::EAGAIN, "round {round}: filling gave {}", errno());
        // Waits by poll, epoll and (for input) a blocked call, in turn.
        let how_in = round % 3;
        if how_in == 2 {
            set_nonblocking(c, false)?;
        }
        let reader = wait(how_in, libc::POLLIN);
        let writer = wait(round / 3 % 2, libc::POLLOUT);
        // Both asleep, then the peer reads everything: room for the writer.
        std::thread::sleep(Duration::from_millis(20));
        loop {
            let n = recv(s, &mut sink, libc::MSG_DONTWAIT);
            if n <= 0 {
                break;
            }
        }
        let rev = join_woken(writer, &format!("round {round}: the writer"))??;
        ensure!(rev & libc::POLLOUT != 0, "round {round}: the writer woke with {rev:#x}");
        ensure!(send(s, b"r", 0) == 1, "send: {}", errno());
        let rev = join_woken(reader, &format!("round {round}: the reader"))??;
        ensure!(rev & libc::POLLIN != 0, "round {round}: the reader woke with {rev:#x}");
        if how_in == 2 {
            set_nonblocking(c, true)?;
        } else {
            let mut b = [0u8; 1];
            ensure!(recv(c, &mut b, 0) == 1, "recv: {}", errno());
        }
    }
    net::close(c);
    net::close(s);
    Ok(())
}

/// stdio streams on a connection (`fdopen`), as C programs use them:
/// lines written with `fputs` and read back with `fgets` through the
/// streams' buffers (lines longer than a buffer too), `fileno` answering
/// each stream's fd, and `fclose` closing the connection (the peer's
/// `fgets` meets end of stream).
fn stdio() -> Res {
    let (c, s) = pair(false)?;
    let open = |fd: i32, mode: &std::ffi::CStr| -> Result<*mut libc::FILE, String> {
        // SAFETY: an fd of ours and a NUL-terminated mode.
        let f = unsafe { libc::fdopen(fd, mode.as_ptr()) };
        ensure!(!f.is_null(), "fdopen({fd}): {}", errno());
        // SAFETY: a stream fdopen just made.
        let back = unsafe { libc::fileno(f) };
        ensure!(back == fd, "fileno gave {back} for fd {fd}");
        Ok(f)
    };
    // SAFETY: dup of our fds.
    let (c2, s2) = unsafe { (libc::dup(c), libc::dup(s)) };
    let (cw, cr, sr, sw) = (open(c, c"w")?, open(c2, c"r")?, open(s, c"r")?, open(s2, c"w")?);
    let mut prng = Prng::new(11);
    let mut line = vec![0u8; 20_000];
    let mut got = vec![0u8; 20_000];
    for i in 0..200 {
        let n = prng.range(1, if i % 10 == 0 { 19_000 } else { 300 });
        for b in &mut line[..n] {
            *b = b'a' + prng.range(0, 25) as u8;
        }
        line[n] = b'\n';
        line[n + 1] = 0;
        // SAFETY: NUL-terminated lines in live buffers, streams we opened.
        unsafe {
            ensure!(libc::fputs(line.as_ptr().cast(), cw) >= 0 && libc::fflush(cw) == 0, "client fputs: {}", errno());
            ensure!(!libc::fgets(got.as_mut_ptr().cast(), got.len() as i32, sr).is_null(), "server fgets: {}", errno());
            ensure!(got[..=n] == line[..=n], "line {i} arrived changed");
            got[..n].make_ascii_uppercase();
            ensure!(libc::fputs(got.as_ptr().cast(), sw) >= 0 && libc::fflush(sw) == 0, "server fputs: {}", errno());
            ensure!(!libc::fgets(got.as_mut_ptr().cast(), got.len() as i32, cr).is_null(), "client fgets: {}", errno());
        }
        line[..n].make_ascii_uppercase();
        ensure!(got[..=n] == line[..=n], "line {i} came back changed");
    }
    // SAFETY: closing the streams we opened (and with them their fds).
    unsafe {
        ensure!(libc::fclose(cw) == 0 && libc::fclose(cr) == 0, "client fclose: {}", errno());
        ensure!(libc::fgets(got.as_mut_ptr().cast(), got.len() as i32, sr).is_null(), "server read past the close");
        ensure!(libc::feof(sr) != 0, "no end of stream after the client's fclose");
        ensure!(libc::fclose(sr) == 0 && libc::fclose(sw) == 0, "server fclose: {}", errno());
        ensure!(libc::fcntl(c, libc::F_GETFD) < 0 && libc::fcntl(s2, libc::F_GETFD) < 0, "fclose left an fd open");
    }
    Ok(())
}

/// A data call finds the socket an fd names *now*: the library keeps, per
/// thread, the sockets of the fds it used last, and every rename of an fd
/// (dup2 onto it from another thread, dup2 of a kernel fd, close and reuse
/// of the number) must send the next call to the new socket.
fn fd_renamed() -> Res {
    let (c1, s1) = pair(false)?;
    let (c2, s2) = pair(false)?;
    let mut buf = [0u8; 16];
    let expect = |fd: i32, want: &[u8], what: &str| -> Res {
        let mut got = [0u8; 16];
        let r = recv(fd, &mut got, 0);
        ensure!(
            r == want.len() as isize && &got[..want.len()] == want,
            "{what}: got {r} {:?}",
            &got[..r.max(0) as usize]
        );
        Ok(())
    };
    ensure!(send(c1, b"one", 0) == 3, "send one: {}", errno());
    expect(s1, b"one", "first connection")?;
    // Another thread points c1 at the second connection.
    let renamed = std::thread::spawn(move || {
        // SAFETY: fds of this process.
        unsafe { libc::dup2(c2, c1) }
    })
    .join()
    .map_err(|_| "dup2 thread panicked")?;
    ensure!(renamed == c1, "dup2: {}", errno());
    ensure!(send(c1, b"two", 0) == 3, "send two: {}", errno());
    expect(s2, b"two", "after dup2 from another thread")?;
    // The first connection lost its client fd: its server reads the end.
    ensure!(recv(s1, &mut buf, 0) == 0, "first connection did not end: {}", errno());
    // A kernel pipe over the same number.
    let mut p = [0i32; 2];
    // SAFETY: a two-int array; fds of this process.
    unsafe {
        ensure!(libc::pipe(p.as_mut_ptr()) == 0, "pipe: {}", errno());
        ensure!(libc::dup2(p[1], c1) == c1, "dup2 of the pipe: {}", errno());
        ensure!(libc::write(c1, b"three".as_ptr().cast(), 5) == 5, "write to the pipe: {}", errno());
        ensure!(libc::read(p[0], buf.as_mut_ptr().cast(), buf.len()) == 5 && &buf[..5] == b"three", "pipe read");
        ensure!(
            recv(s2, &mut buf, libc::MSG_DONTWAIT) == -1 && errno() == libc::EAGAIN,
            "the pipe's bytes went to a socket"
        );
        for fd in [c1, c2, p[0], p[1]] {
            libc::close(fd);
        }
    }
    ensure!(recv(s2, &mut buf, 0) == 0, "second connection did not end: {}", errno());
    // Close and reuse of the number by a new connection.
    let (c3, s3) = pair(false)?;
    ensure!(send(c3, b"four", 0) == 4, "send four: {}", errno());
    expect(s3, b"four", "a new connection on a reused number")?;
    for fd in [s1, s2, c3, s3] {
        net::close(fd);
    }
    Ok(())
}

/// The size of this process's fd table (`FDSize` in /proc/self/status).
fn fd_table_size() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let line = status.lines().find_map(|l| l.strip_prefix("FDSize:")).ok_or("no FDSize in /proc/self/status")?;
    line.trim().parse().map_err(|e| format!("FDSize {line:?}: {e}"))
}

/// A threaded program's first connections do not grow its fd table: with
/// threads, the kernel waits for an RCU grace period to grow it (about
/// 14 ms here), which the library's fds, kept high, made every threaded
/// program pay on its first connection. Linux grows nothing for a process
/// with a handful of fds.
fn fd_table() -> Res {
    let before = fd_table_size()?;
    let (stop, parked) = std::sync::mpsc::channel::<()>();
    let other = std::thread::spawn(move || parked.recv());
    let (c, s) = pair(false)?;
    ensure!(send(c, b"x", 0) == 1, "send: {}", errno());
    let mut b = [0u8; 1];
    ensure!(recv(s, &mut b, 0) == 1, "recv: {}", errno());
    let after = fd_table_size()?;
    net::close(c);
    net::close(s);
    drop(stop);
    let _ = other.join();
    ensure!(before == after, "the fd table grew from {before} to {after} slots once the program had threads");
    Ok(())
}

/// A program that closes every fd it did not open (a loop of `close`,
/// `close_range`, `closefrom`, as daemons do) keeps its connections: the
/// library's own fds are not the program's to close, and close reports
/// them not open. A connection closed by `close_range` is closed for ipcd
/// too: the peer reads end of stream, and a file that gets the number is
/// the file, not the old connection.
fn close_all() -> Res {
    let (c0, s0) = pair(false)?;
    ensure!(send(c0, b"warm", 0) == 4, "send before");
    let mut buf = [0u8; 8];
    ensure!(recv(s0, &mut buf, 0) == 4, "recv before");
    // Other numbers than the ones the connection was made on.
    // SAFETY: dup of our fds.
    let (c, s) = unsafe { (libc::dup(c0), libc::dup(s0)) };
    ensure!(c >= 0 && s >= 0, "dup: {}", errno());
    let ours = |fd: i32| fd <= 2 || fd == c || fd == s;
    // Plain close of everything else, up to the limit as daemons do (the
    // library keeps its fds high, near the limit).
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(1024, 65536) as i32;
    for fd in 3..max {
        if !ours(fd) {
            // SAFETY: closing numbers that are not the connection's.
            unsafe { libc::close(fd) };
        }
    }
    let left: Vec<i32> = open_fds()?.into_iter().filter(|&fd| !ours(fd)).collect();
    // What is left is the library's: its control channel, event bell and
    // the doorbells of the connection (two ends, two each).
    let preloaded = std::env::var_os("LD_PRELOAD").is_some();
    ensure!(left.len() >= 5 || !preloaded, "the library's fds were closed: {left:?} left");
    ensure!(left.is_empty() || preloaded, "fds left open without the library: {left:?}");
    for &fd in &left {
        // SAFETY: close of a number this program never opened.
        let r = unsafe { libc::close(fd) };
        ensure!(r == -1 && errno() == libc::EBADF, "close({fd}) of a hidden fd gave {r}/{}", errno());
    }
    let (lo, hi) = (c.min(s) as u32, c.max(s) as u32);
    // close_range around the connection, then closefrom above it.
    for (a, b) in [(3, lo.saturating_sub(1)), (lo + 1, hi - 1)] {
        if a <= b {
            // SAFETY: a range without the connection's fds.
            ensure!(unsafe { libc::close_range(a, b, 0) } == 0, "close_range({a}, {b}): {}", errno());
        }
    }
    // SAFETY: closes everything above the connection.
    unsafe { closefrom(hi as i32 + 1) };
    ensure!(
        open_fds()?.into_iter().filter(|&fd| !ours(fd)).count() == left.len(),
        "closefrom closed the library's fds"
    );
    // A receive that sleeps (the send comes long after the spin) is woken
    // through a doorbell that survived all of it.
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(30));
        send(s, b"late", 0)
    });
    ensure!(recv(c, &mut buf, 0) == 4 && &buf[..4] == b"late", "recv after the closing: {}", errno());
    ensure!(sender.join().map_err(|_| "sender")? == 4, "send after the closing");
    // close_range of the connection's server end: the peer sees end of
    // stream (within a bound: a connection left open would hang the check).
    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: a timeval of its size.
    cvt("setsockopt", unsafe {
        libc::setsockopt(c, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const tv).cast(), size_of_val(&tv) as u32)
    })
    .map_err(f)?;
    // SAFETY: closes our own fd.
    ensure!(unsafe { libc::close_range(s as u32, s as u32, 0) } == 0, "close_range(s): {}", errno());
    ensure!(recv(c, &mut buf, 0) == 0, "end of stream after close_range");
    let path = std::env::temp_dir().join(format!("ipcd-close-all-{}", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&path);
    // SAFETY: duplicates our file onto the lowest free number from `s` on.
    let fd = unsafe { libc::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), libc::F_DUPFD, s) };
    ensure!(fd == s, "the file got fd {fd}, not the closed {s}");
    // SAFETY: a live buffer, our file.
    ensure!(unsafe { libc::write(fd, b"file".as_ptr().cast(), 4) } == 4, "write to the file: {}", errno());
    // SAFETY: as above.
    ensure!(unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), 8, 0) } == 4, "pread of the file: {}", errno());
    ensure!(&buf[..4] == b"file", "the file holds what was written to its fd");
    net::close(fd);
    net::close(c);
    Ok(())
}

/// Many connections between the same two ends, one after another (under
/// ipcd each reuses an earlier one's segment): each sees exactly its own
/// bytes, end of stream and reset; an epoll set that held an earlier
/// connection reports nothing for it and steals no later one's wake-up.
fn reuse() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }).map_err(f)?;
    let mut rng = Prng::new(7);
    for round in 0..120u64 {
        let c = net::connect_loopback(false, port).map_err(f)?;
        let s = net::accept(l).map_err(f)?;
        let mut buf = [0u8; 16];
        match round % 4 {
            0 => {
                // Bulk, past the pages a small connection touches.
                let mut data = vec![0u8; rng.range(1, 300 << 10)];
                rng.fill(&mut data);
                let expect = data.clone();
                let writer = std::thread::spawn(move || {
                    let r = net::send_all(c, &data);
                    net::close(c);
                    r
                });
                let mut got = vec![0u8; expect.len()];
                net::read_exact(s, &mut got).map_err(f)?;
                writer.join().map_err(|_| "writer panicked")?.map_err(f)?;
                ensure!(got == expect, "round {round}: bytes differ");
                ensure!(recv(s, &mut buf, 0) == 0, "round {round}: end of stream");
            }
            1 => {
                ensure!(send(c, b"unread", 0) == 6, "send");
                net::close(s);
                std::thread::sleep(Duration::from_millis(5));
                let r = recv(c, &mut buf, 0);
                ensure!(r == -1 && errno() == libc::ECONNRESET, "round {round}: recv after reset {r}/{}", errno());
                net::close(c);
                continue;
            }
            2 => {
                // Waited for (so its wake-up source is in the kernel's
                // set), then closed while still in the long-lived set.
                epoll_add(ep, s, IN, round)?;
                let writer = std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(20));
                    send(c, b"e", 0)
                });
                ensure!(epoll_get(ep, 1000)? == [(IN, round)], "round {round}: epoll");
                ensure!(writer.join().map_err(|_| "writer panicked")? == 1, "send");
                ensure!(recv(s, &mut buf, 0) == 1, "recv");
            }
            _ => {
                // A recv asleep while another thread waits on that set.
                set_timeout(s, 5)?;
                let reader = std::thread::spawn(move || {
                    let mut b = [0u8; 4];
                    (recv(s, &mut b, 0), errno())
                });
                let waiter = std::thread::spawn(move || epoll_get(ep, 80));
                std::thread::sleep(Duration::from_millis(30));
                ensure!(send(c, b"w", 0) == 1, "send");
                let (r, e) = reader.join().map_err(|_| "reader panicked")?;
                ensure!(r == 1, "round {round}: the sleeping recv gave {r}/{e}");
                let seen = waiter.join().map_err(|_| "waiter panicked")??;
                ensure!(seen.is_empty(), "round {round}: the set reported {seen:?}");
            }
        }
        net::close(c);
        net::close(s);
        // The kernel drops a closed fd from the set; nothing of ours (a
        // doorbell kept for reuse) may stay registered either.
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{ep}")).map_err(|e| e.to_string())?;
        ensure!(!info.contains("tfd:"), "round {round}: the set still watches something:\n{info}");
    }
    net::close(ep);
    net::close(l);
    Ok(())
}

fn check(name: &str) -> Res {
    match name {
        "echo" => echo(false, 200, 1),
        "echo6" => echo(true, 50, 2),
        "large" => large(),
        "many" => many(),
        "nonblock" => nonblock(),
        "standby-refused" => standby_refused(),
        "peek-waitall" => peek_waitall(),
        "trunc-zerocopy" => trunc_zerocopy(),
        "sigpipe" => sigpipe(),
        "reset" => reset(),
        "half-close" => half_close(),
        "timeouts" => timeouts(),
        "names" => names(false),
        "names6" => names(true),
        "options" => options(),
        "dup-vectored" => dup_vectored(),
        "sendfile" => sendfile(),
        "poll" => poll_mixed(),
        "select" => select_mixed(),
        "epoll-level" => epoll_level(),
        "epoll-edge" => epoll_edge(),
        "epoll-shared" => epoll_shared(),
        "fork-share" => fork_share(),
        "fork-wake" => fork_wake(),
        "threads" => threads(),
        "close-race" => close_race(),
        "eintr" => eintr(),
        "fork-handoff" => fork_handoff(),
        "exec-handoff" => exec_handoff(),
        "reuse" => reuse(),
        "backlog" => backlog_refills(),
        "close-all" => close_all(),
        "relisten" => relisten(),
        "fork-busy" => fork_busy(),
        "fd-table" => fd_table(),
        "sa-restart" => sa_restart(),
        "raw-syscalls" => raw_syscalls(),
        "pass-fd" => pass_fd(),
        "pass-listener" => pass_listener(),
        "fork-listener" => fork_listener(),
        "prefork" => prefork(),
        "prefork-decline" => prefork_decline(),
        "prefork-kill" => prefork_kill(),
        "fork-queued" => fork_queued(),
        "master-queued" => master_queued(),
        "exec-queued" => exec_queued(),
        "exec-nonblocking" => exec_nonblocking(),
        "exec-unmonitored" => exec_unmonitored(),
        "exec-workers" => exec_workers(),
        "daemon-queued" => daemon_queued(),
        "accept-wake" => accept_wake(),
        "wait-both-ways" => wait_both_ways(),
        "stdio" => stdio(),
        "fd-renamed" => fd_renamed(),
        "small-writes" => small_writes(),
        other => Err(format!("unknown check {other}")),
    }
}

fn serve(count: Option<usize>) -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    let mut threads = Vec::new();
    let mut served = 0;
    while count.is_none_or(|n| served < n) {
        let s = net::accept(l).map_err(f)?;
        threads.push(std::thread::spawn(move || echo_loop(s)));
        served += 1;
    }
    for t in threads {
        t.join().map_err(|_| "echo thread panicked")?.map_err(f)?;
    }
    Ok(())
}

fn pin(cpu: u64) {
    // SAFETY: a zeroed cpu_set_t with one bit set, applied to this process.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn unix_addr(path: &str) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_un is valid.
    let mut a: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in a.sun_path.iter_mut().zip(path.bytes()) {
        *d = s as libc::c_char;
    }
    (a, std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t)
}

/// The benchmark server: one connection; the client's first byte says the
/// mode ('r': echo fixed-size messages, 's': sink until end of stream).
fn bench_server(kind: &str, cpu: Option<u64>) -> Res {
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    let mut unix_path = None;
    let l = if kind == "unix" {
        let path = std::env::temp_dir().join(format!("ipcd-bench-{}.sock", std::process::id()));
        let path = path.to_string_lossy().into_owned();
        unix_path = Some(path.clone());
        let _ = std::fs::remove_file(&path);
        // SAFETY: plain socket creation.
        let l = cvt("socket", unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) }).map_err(f)?;
        let (a, len) = unix_addr(&path);
        // SAFETY: a sockaddr_un of its size.
        cvt("bind", unsafe { libc::bind(l, (&raw const a).cast(), len) }).map_err(f)?;
        // SAFETY: a bound socket.
        cvt("listen", unsafe { libc::listen(l, 1) }).map_err(f)?;
        println!("{path}");
        l
    } else {
        let (l, port) = net::listen_loopback(false).map_err(f)?;
        println!("{port}");
        l
    };
    let s = net::accept(l).map_err(f)?;
    if let Some(path) = unix_path {
        // One connection per run: the name is not needed any more (runs
        // once left a socket file in /tmp each).
        let _ = std::fs::remove_file(path);
    }
    let mut hdr = [0u8; 9];
    net::read_exact(s, &mut hdr).map_err(f)?;
    let size = u64::from_le_bytes(hdr[1..].try_into().map_err(|_| "header")?) as usize;
    let mut buf = vec![0u8; size.max(1 << 16)];
    if hdr[0] == b'r' {
        // Until the client's end of stream.
        while net::read_exact(s, &mut buf[..size]).is_ok() {
            net::send_all(s, &buf[..size]).map_err(f)?;
        }
    } else {
        let mut total = 0u64;
        loop {
            let n = net::read_some(s, &mut buf).map_err(f)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
        net::send_all(s, &total.to_le_bytes()).map_err(f)?;
    }
    net::close(s);
    net::close(l);
    Ok(())
}

/// `cpu`: the core to run on, or `None` to let the scheduler place it.
/// Modes: `lat` (each round trip timed; prints p50 p99 p99.9 in ns), `rtt`
/// and `stream` (`count` round trips or writes; prints the ns taken),
/// `rtt-for` (round trips for `count` ms; prints how many and the ns).
fn bench_client(kind: &str, addr: &str, cpu: Option<u64>, mode: &str, size: usize, count: u64) -> Res {
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    let c = if kind == "unix" {
        // SAFETY: plain socket creation.
        let c = cvt("socket", unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) }).map_err(f)?;
        let (a, len) = unix_addr(addr);
        // SAFETY: a sockaddr_un of its size.
        cvt("connect", unsafe { libc::connect(c, (&raw const a).cast(), len) }).map_err(f)?;
        c
    } else {
        let c = net::connect_loopback(false, addr.parse().map_err(|_| "port")?).map_err(f)?;
        let one: i32 = 1;
        // SAFETY: an int option; small messages must not wait for Nagle.
        unsafe { libc::setsockopt(c, libc::IPPROTO_TCP, libc::TCP_NODELAY, (&raw const one).cast(), 4) };
        c
    };
    let mut hdr = vec![if mode == "stream" { b's' } else { b'r' }];
    hdr.extend_from_slice(&(size as u64).to_le_bytes());
    net::send_all(c, &hdr).map_err(f)?;
    let mut buf = vec![0u8; size];
    let start = Instant::now();
    if mode == "lat" {
        // Each round trip timed: prints p50 p99 p99.9 in nanoseconds.
        let mut lat = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let t = Instant::now();
            net::send_all(c, &buf).map_err(f)?;
            net::read_exact(c, &mut buf).map_err(f)?;
            lat.push(t.elapsed().as_nanos() as u64);
        }
        lat.sort_unstable();
        let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
        println!("{} {} {}", q(0.5), q(0.99), q(0.999));
        net::close(c);
        return Ok(());
    } else if mode == "rtt" {
        for _ in 0..count {
            net::send_all(c, &buf).map_err(f)?;
            net::read_exact(c, &mut buf).map_err(f)?;
        }
    } else if mode == "rtt-for" {
        let until = Duration::from_millis(count);
        let mut n = 0u64;
        while n % 64 != 0 || start.elapsed() < until {
            net::send_all(c, &buf).map_err(f)?;
            net::read_exact(c, &mut buf).map_err(f)?;
            n += 1;
        }
        println!("{n} {}", start.elapsed().as_nanos());
        net::close(c);
        return Ok(());
    } else {
        for _ in 0..count {
            net::send_all(c, &buf).map_err(f)?;
        }
        // SAFETY: shutdown of our socket.
        cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
        let mut total = [0u8; 8];
        net::read_exact(c, &mut total).map_err(f)?;
        ensure!(u64::from_le_bytes(total) == size as u64 * count, "sink counted {total:?}");
    }
    println!("{}", start.elapsed().as_nanos());
    net::close(c);
    Ok(())
}

fn main() {
    // Benchmarks place servers and clients on cores of their choosing.
    if let Some(cpu) = std::env::var("PROBE_CPU").ok().and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| panic!("argument {i} must be a number"));
    let res = match arg(0).as_str() {
        "check" => check(&arg(1)),
        "serve" => serve(args.get(1).map(|_| num(1) as usize)),
        "client" => net::connect_loopback(false, num(1) as u16).map_err(f).and_then(|c| {
            let r = client_rounds(c, num(2) as usize, num(3));
            net::close(c);
            r
        }),
        "hold" => net::connect_loopback(false, num(1) as u16).map_err(f).map(|c| {
            let _ = send(c, b"!", 0);
            // Read the echo: closing with it unread would reset the server.
            let _ = recv(c, &mut [0u8; 1], libc::MSG_WAITALL);
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            net::close(c);
        }),
        "prefork-serve" => prefork_serve(num(1) as usize),
        "daemon-serve" => daemon_serve(num(1) as usize),
        "prefork-clients" => prefork_clients(num(1) as u16, num(2) as usize),
        "exec-child" => exec_child(num(1) as i32),
        "exec-accept" => exec_accept(num(1) as i32, num(2) as i32),
        "exec-listener-flag" => exec_listener_flag(num(1) as i32, num(2) as u16, num(3) == 1),
        "exec-worker" => exec_worker(num(1) as i32, num(2) as i32, num(3) as u8),
        "epoll-serve" => epoll_serve(num(1) as usize, arg(2) == "edge"),
        "epoll-load" => epoll_load(num(1) as u16, num(2) as usize, num(3) as usize),
        "conn-serve" => conn_serve(num(1) as usize),
        "conn-client" => conn_client(num(1) as u16, num(2) as usize, num(3) as usize),
        "diff-trace" => diff_traces(num(1), num(2)),
        "many-clients" => many_clients(num(1) as u16, num(2) as usize),
        "bench-server" => bench_server(&arg(1), arg(2).parse().ok()),
        "bench-client" => bench_client(&arg(1), &arg(2), arg(3).parse().ok(), &arg(4), num(5) as usize, num(6)),
        other => Err(format!("unknown command {other:?}; see the module docs")),
    };
    if let Err(e) = res {
        eprintln!("probe {}: {e}", args.join(" "));
        std::process::exit(1);
    }
}
