//! Life-cycle checks: reset, close races, refused connects, backlog,
//! relisten, close of every fd, reuse, the fd table, raw system calls.

use std::time::{Duration, Instant};

use ipcd_monitor::bench::workload::{epoll_add, set_nonblocking};
use ipcd_tests::data::Prng;
use ipcd_tests::net::{self, cvt};

use crate::*;

/// Closing with unread data resets: the peer's next call says ECONNRESET.
pub(crate) fn reset() -> Res {
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

/// close in one thread while another is blocked in recv on the same
/// socket: as on Linux, the recv keeps waiting and gets the next bytes; the
/// connection ends once that call is over.
pub(crate) fn close_race() -> Res {
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

/// Several connections in turn to one listener (under ipcd the later
/// ones take the standby connections the monitor holds ready), each
/// carrying its own byte both ways; once the listener is closed, a
/// connect is refused, as by the kernel, not handed a standby.
pub(crate) fn standby_refused() -> Res {
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
pub(crate) fn expect_byte(c: i32, want: u8) -> Res {
    let mut b = [0u8; 1];
    ensure!(recv(c, &mut b, 0) == 1, "the connection was not served: {}", errno());
    ensure!(b[0] == want, "got {b:?}, not {want}");
    Ok(())
}

/// Reading, writing, closing and duplicating through `syscall(2)`, as
/// libuv (Node) closes every fd: bytes written and read so travel the
/// connection, a dup made so carries it, the close ends it (the peer
/// reads the end of stream) and the number is then free for anything,
/// here a pipe, whose bytes must go to the pipe.
pub(crate) fn raw_syscalls() -> Res {
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

/// Accepted connections leave the backlog even while they stay open: a
/// listener with a backlog of 2 keeps taking connections from another
/// process, round after round (under ipcd, a count that forgot accepted
/// ones would send the later connects to the kernel, which `check` sees).
pub(crate) fn backlog_refills() -> Res {
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
pub(crate) fn relisten() -> Res {
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

extern "C" {
    /// glibc's (2.34+), which the libc crate does not declare for Linux.
    fn closefrom(lowfd: libc::c_int);
}

/// The fds open in this process, from /proc.
pub(crate) fn open_fds() -> Result<Vec<i32>, String> {
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

/// The size of this process's fd table (`FDSize` in /proc/self/status).
pub(crate) fn fd_table_size() -> Result<u64, String> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(|e| e.to_string())?;
    let line = status.lines().find_map(|l| l.strip_prefix("FDSize:")).ok_or("no FDSize in /proc/self/status")?;
    line.trim().parse().map_err(|e| format!("FDSize {line:?}: {e}"))
}

/// A threaded program's first connections do not grow its fd table: with
/// threads, the kernel waits for an RCU grace period to grow it (about
/// 14 ms here), which the library's fds, kept high, made every threaded
/// program pay on its first connection. Linux grows nothing for a process
/// with a handful of fds.
pub(crate) fn fd_table() -> Res {
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
// Long on purpose: one scenario, read top to bottom.
pub(crate) fn close_all() -> Res {
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
    // What is left is the library's: its control channel at least (and
    // the kernel sockets it keeps, a thread's doorbell once one slept).
    let preloaded = std::env::var_os("LD_PRELOAD").is_some();
    ensure!(!left.is_empty() || !preloaded, "the library's fds were closed: {left:?} left");
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
pub(crate) fn reuse() -> Res {
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

/// Lowers the soft `RLIMIT_NOFILE` to `soft`, the hard one kept; returns
/// the limits as they were.
pub(crate) fn lower_soft_nofile(soft: u64) -> Result<libc::rlimit, String> {
    // SAFETY: an all-zero rlimit is a valid out buffer.
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: get/setrlimit on live structs.
    cvt("getrlimit", unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }).map_err(f)?;
    let low = libc::rlimit { rlim_cur: soft, rlim_max: old.rlim_max };
    // SAFETY: as above.
    cvt("setrlimit", unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }).map_err(f)?;
    Ok(old)
}

/// At the fd limit (`RLIMIT_NOFILE` reached): an accept fails with EMFILE
/// and its connection stays queued, an established connection keeps
/// working, and once fds are free again the accept takes the queued
/// connection. (Under ipcd the monitor's message for that connection
/// arrived with its fds cut off, and the channel was dropped: the monitor
/// then took the process for dead and reset every connection it had.)
pub(crate) fn fd_limit() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c1 = net::connect_loopback(false, port).map_err(f)?;
    let s1 = net::accept(l).map_err(f)?;
    let (go_r, go_w) = pipe()?;
    let (done_r, done_w) = pipe()?;
    let client = fork()?;
    if client == 0 {
        in_child(|| {
            // Not a listener of this process: the parent alone owns it.
            // The pipes' other ends are the parent's: if it fails, the read
            // below ends instead of waiting for ever.
            for fd in [l, c1, s1, go_w, done_r] {
                net::close(fd);
            }
            pipe_byte(go_r, false)?;
            let c = net::connect_loopback(false, port).map_err(f)?;
            pipe_byte(done_w, true)?;
            net::send_all(c, b"late").map_err(f)?;
            let mut buf = [0u8; 4];
            net::read_exact(c, &mut buf).map_err(f)?;
            ensure!(&buf == b"LATE", "the late client got {buf:?}");
            net::close(c);
            Ok(())
        });
    }
    net::close(go_r);
    net::close(done_w);
    // The limit lowered and every fd below it taken.
    let old = lower_soft_nofile(256)?;
    let mut fillers = Vec::new();
    loop {
        // SAFETY: a NUL-terminated path.
        let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            ensure!(errno() == libc::EMFILE, "open: {}", errno());
            break;
        }
        fillers.push(fd);
    }
    pipe_byte(go_w, true)?;
    pipe_byte(done_r, false)?;
    // SAFETY: null address buffers are allowed.
    let r = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let accept_errno = errno();
    // The established connection is untouched.
    net::send_all(c1, b"ping").map_err(f)?;
    let mut buf = [0u8; 4];
    net::read_exact(s1, &mut buf).map_err(f)?;
    net::send_all(s1, b"pong").map_err(f)?;
    net::read_exact(c1, &mut buf).map_err(f)?;
    for fd in fillers {
        net::close(fd);
    }
    // SAFETY: as above.
    cvt("setrlimit", unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &old) }).map_err(f)?;
    ensure!(r < 0 && accept_errno == libc::EMFILE, "accept at the limit: {r}, errno {accept_errno}");
    ensure!(&buf == b"pong", "the established connection answered {buf:?}");
    let s = net::accept(l).map_err(f)?;
    net::read_exact(s, &mut buf).map_err(f)?;
    ensure!(&buf == b"late", "the queued connection sent {buf:?}");
    net::send_all(s, b"LATE").map_err(f)?;
    wait_child(client)?;
    for fd in [c1, s1, s, l, go_w, done_r] {
        net::close(fd);
    }
    Ok(())
}

/// Writes (`write`) or reads one byte on a pipe.
pub(crate) fn pipe_byte(fd: i32, write: bool) -> Res {
    let mut b = [b'x'; 1];
    // SAFETY: one byte from or into a live buffer.
    let n = unsafe {
        if write {
            libc::write(fd, b.as_ptr().cast(), 1)
        } else {
            libc::read(fd, b.as_mut_ptr().cast(), 1)
        }
    };
    ensure!(n == 1, "pipe: {n}, errno {}", errno());
    Ok(())
}

/// Run where every ephemeral port is taken by connections to another
/// destination (the integration test arranges it in a network namespace
/// of its own: a range of two ports, both used towards port 39001): a bind
/// to port 0 fails, and a connect to a listener on port 39002 still
/// succeeds, as the kernel's connect shares a port across destinations,
/// with a port of the range that both ends agree on.
pub(crate) fn ports_scarce() -> Res {
    let at = |port: u16| -> Result<i32, String> {
        let fd = net::tcp_socket(false).map_err(f)?;
        let (ss, len) = net::loopback(false, port);
        // SAFETY: a sockaddr of its length.
        cvt("bind", unsafe { libc::bind(fd, (&raw const ss).cast(), len) }).map_err(f)?;
        Ok(fd)
    };
    let l = at(39002)?;
    // SAFETY: a bound socket.
    cvt("listen", unsafe { libc::listen(l, 8) }).map_err(f)?;
    let probe = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: as above.
    let r = unsafe { libc::bind(probe, (&raw const ss).cast(), len) };
    ensure!(r < 0 && errno() == libc::EADDRINUSE, "bind to port 0 should find none free: {r} {}", errno());
    net::close(probe);
    let c = net::connect_loopback(false, 39002).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    let local = net::name(c, false).map_err(f)?;
    let peer = net::name(s, true).map_err(f)?;
    ensure!((40000..=40001).contains(&local.1), "the connection's port {} is not of the range", local.1);
    ensure!(local == peer, "the two ends disagree: {local:?} against {peer:?}");
    net::send_all(c, b"p").map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    for fd in [c, s, l] {
        net::close(fd);
    }
    Ok(())
}

/// A connection's state answers for it: `TCP_WINDOW_CLAMP` 0 is refused
/// (EINVAL) while it is open; after the peer's reset `getpeername` fails
/// with ENOTCONN, `getsockname` still names the socket, and the clamp of 0
/// is taken.
pub(crate) fn closed_names() -> Res {
    let (c, s) = pair(false)?;
    let clamp0 = |fd: i32| {
        let zero: libc::c_int = 0;
        // SAFETY: an int option.
        unsafe { libc::setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, (&raw const zero).cast(), 4) }
    };
    ensure!(clamp0(s) == -1 && errno() == libc::EINVAL, "clamp 0 on an open connection: errno {}", errno());
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let size = std::mem::size_of::<libc::linger>() as libc::socklen_t;
    // SAFETY: a linger of its size.
    cvt("setsockopt", unsafe {
        libc::setsockopt(c, libc::SOL_SOCKET, libc::SO_LINGER, (&raw const linger).cast(), size)
    })
    .map_err(f)?;
    net::close(c);
    let mut p = [pollfd(s, libc::POLLIN)];
    ensure!(poll_n(&mut p, 5000) == 1, "no event after the peer's reset");
    // SAFETY: an all-zero sockaddr_storage is a valid out buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and its length.
    let r = unsafe { libc::getpeername(s, (&raw mut ss).cast(), &mut len) };
    ensure!(r == -1 && errno() == libc::ENOTCONN, "getpeername after a reset: {r}, errno {}", errno());
    ensure!(net::name(s, false).map_err(f)?.1 != 0, "getsockname after a reset names no port");
    ensure!(clamp0(s) == 0, "clamp 0 after a reset: errno {}", errno());
    net::close(s);
    Ok(())
}

/// A burst of connects to a listener with a deep backlog that accepts only
/// once they are all made: each waits in the backlog and is then accepted
/// with its bytes (under ipcd none may go to the kernel, which the
/// integration test checks: the acceptor's channel filling up with them
/// once sent a fifth there).
pub(crate) fn burst() -> Res {
    ipcd_monitor::limits::raise_nofile();
    // SAFETY: an all-zero rlimit is a valid out buffer.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt("getrlimit", unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }).map_err(f)?;
    // Fewer than the backlog, so the kernel never makes a connect wait;
    // far more than an acceptor's channel to the monitor holds at once.
    let n: usize = 1500;
    ensure!(lim.rlim_cur >= (4 * n + 64) as u64, "an fd limit of {} is too small for {n} connections", lim.rlim_cur);
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes, then a bound socket.
    unsafe {
        cvt("bind", libc::bind(l, (&raw const ss).cast(), len)).map_err(f)?;
        cvt("listen", libc::listen(l, 4096)).map_err(f)?;
    }
    let port = net::local_port(l).map_err(f)?;
    let (made_r, made_w) = pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            net::close(l);
            net::close(made_r);
            let conns: Vec<i32> =
                (0..n).map(|_| net::connect_loopback(false, port)).collect::<Result<_, _>>().map_err(f)?;
            for (i, &c) in conns.iter().enumerate() {
                net::send_all(c, &(i as u32).to_le_bytes()).map_err(f)?;
            }
            pipe_byte(made_w, true)?;
            for (i, &c) in conns.iter().enumerate() {
                let mut b = [0u8; 4];
                net::read_exact(c, &mut b).map_err(f)?;
                ensure!(u32::from_le_bytes(b) == i as u32, "connection {i} got {b:?}");
                net::close(c);
            }
            Ok(())
        });
    }
    net::close(made_w);
    pipe_byte(made_r, false)?;
    let mut accepted = Vec::with_capacity(n);
    for _ in 0..n {
        accepted.push(net::accept(l).map_err(f)?);
    }
    for &s in &accepted {
        let mut b = [0u8; 4];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
    }
    wait_child(pid)?;
    for s in accepted.into_iter().chain([l, made_r]) {
        net::close(s);
    }
    Ok(())
}

/// `shutdown(SHUT_RDWR)` of a listener disconnects it as Linux does: a
/// connection waiting in its queue is reset (poll reports `POLLHUP` and
/// `POLLERR` within the wait, a read `ECONNRESET`), `accept` fails with
/// EINVAL, a new connect is refused, the port stays taken (a bind to it
/// fails with EADDRINUSE, the program having bound it), and the socket
/// can listen again and serve. `SHUT_WR` alone changes nothing.
pub(crate) fn listener_shutdown() -> Res {
    // A port of our choosing (one the kernel picks is given back at the
    // shutdown): the one a first listener got, closed at once.
    let (first, port) = net::listen_loopback(false).map_err(f)?;
    net::close(first);
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, port);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    cvt("bind", unsafe { libc::bind(l, (&raw const ss).cast(), len) }).map_err(f)?;
    // SAFETY: a bound socket.
    cvt("listen", unsafe { libc::listen(l, 8) }).map_err(f)?;
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(l, libc::SHUT_WR) }).map_err(f)?;
    let queued = net::connect_loopback(false, port).map_err(f)?;
    // The connection is queued (the kernel's handshake, or the monitor's
    // Incoming) before the listener shows it readable.
    ensure!(poll_n(&mut [pollfd(l, libc::POLLIN)], 10_000) == 1, "the queued connection never showed");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(l, libc::SHUT_RDWR) }).map_err(f)?;
    let mut p = [pollfd(queued, libc::POLLIN)];
    ensure!(poll_n(&mut p, 10_000) == 1, "the queued connection was not told");
    let hup_err = libc::POLLHUP | libc::POLLERR;
    ensure!(p[0].revents & hup_err == hup_err, "queued connection's poll: {:#x}", p[0].revents);
    let mut b = [0u8; 1];
    ensure!(recv(queued, &mut b, 0) == -1 && errno() == libc::ECONNRESET, "queued read: errno {}", errno());
    // SAFETY: accept on our socket, no address wanted.
    let r = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    ensure!(r == -1 && errno() == libc::EINVAL, "accept after shutdown: {r}, errno {}", errno());
    match net::connect_loopback(false, port) {
        Err(_) => ensure!(errno() == libc::ECONNREFUSED, "connect after shutdown: errno {}", errno()),
        Ok(c) => return Err(format!("a connect after shutdown succeeded (fd {c})")),
    }
    let other = net::tcp_socket(false).map_err(f)?;
    // SAFETY: a sockaddr of `len` bytes.
    let r = unsafe { libc::bind(other, (&raw const ss).cast(), len) };
    ensure!(r == -1 && errno() == libc::EADDRINUSE, "bind to the shut listener's port: {r}, errno {}", errno());
    net::close(other);
    // SAFETY: our socket, still bound.
    cvt("listen", unsafe { libc::listen(l, 8) }).map_err(f)?;
    let c = net::connect_loopback(false, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    ensure!(send(c, b"k", 0) == 1 && recv(s, &mut b, 0) == 1 && b[0] == b'k', "a connection after listening again");
    for fd in [c, s, queued, l] {
        net::close(fd);
    }
    Ok(())
}

/// `TCP_DEFER_ACCEPT` (set after `listen`, as nginx does): the listener
/// turns readable, and accept returns, for a connection whose connector
/// wrote, with its bytes there; a bare connection comes after the
/// deferral's second, without data, and works.
pub(crate) fn defer_accept() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    super::data::set_opt(l, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, &1i32)?;
    let t0 = Instant::now();
    let bare = net::connect_loopback(false, port).map_err(f)?;
    ensure!(poll_n(&mut [pollfd(l, libc::POLLIN)], 300) == 0, "a bare connection made the listener readable");
    let talker = net::connect_loopback(false, port).map_err(f)?;
    net::send_all(talker, b"x").map_err(f)?;
    ensure!(poll_n(&mut [pollfd(l, libc::POLLIN)], 5000) == 1, "the connection with data never came");
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    ensure!(recv(s, &mut b, libc::MSG_DONTWAIT) == 1 && b[0] == b'x', "accepted without its byte (errno {})", errno());
    ensure!(poll_n(&mut [pollfd(l, libc::POLLIN)], 10_000) == 1, "the bare connection never came");
    let waited = t0.elapsed();
    ensure!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "the bare connection came after {waited:?}, not after the deferral"
    );
    let s1 = net::accept(l).map_err(f)?;
    ensure!(recv(s1, &mut b, libc::MSG_DONTWAIT) == -1 && errno() == libc::EAGAIN, "the bare connection had data");
    net::send_all(bare, b"y").map_err(f)?;
    set_timeout(s1, 10)?;
    net::read_exact(s1, &mut b).map_err(f)?;
    ensure!(b[0] == b'y', "the bare connection carried {b:?}");
    for fd in [bare, talker, s, s1, l] {
        net::close(fd);
    }
    Ok(())
}

/// Non-blocking connects to 127.0.0.1:`port`, left in progress.
pub(crate) fn connects_in_progress(port: u16, n: usize) -> Result<Vec<i32>, String> {
    let (ss, len) = net::loopback(false, port);
    (0..n)
        .map(|_| {
            let c = net::tcp_socket(false).map_err(f)?;
            set_nonblocking(c, true).map_err(|e| e.to_string())?;
            // SAFETY: a sockaddr of `len` bytes.
            let r = unsafe { libc::connect(c, (&raw const ss).cast(), len) };
            ensure!(r == 0 || errno() == libc::EINPROGRESS, "connect: {r}, errno {}", errno());
            Ok(c)
        })
        .collect()
}

/// Each socket's poll events now (POLLIN and POLLOUT asked).
pub(crate) fn events(fds: &[i32]) -> Vec<i16> {
    fds.iter()
        .map(|&fd| {
            let mut p = [pollfd(fd, libc::POLLIN | libc::POLLOUT)];
            poll_n(&mut p, 0);
            p[0].revents
        })
        .collect()
}

/// A listener's backlog as Linux's: `listen(fd, 1)` holds two connections;
/// more stay connecting (no POLLOUT) until an accept makes room, then
/// complete. A waiting connect shut down reports POLLHUP|POLLERR and
/// ECONNRESET; one whose listener closes before it had room is refused
/// (ECONNREFUSED), where a queued one is reset (ECONNRESET).
pub(crate) fn backlog_wait() -> Res {
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    unsafe {
        cvt("bind", libc::bind(l, (&raw const ss).cast(), len)).map_err(f)?;
        cvt("listen", libc::listen(l, 1)).map_err(f)?;
    }
    let port = net::local_port(l).map_err(f)?;
    let cs = connects_in_progress(port, 4)?;
    std::thread::sleep(Duration::from_millis(200));
    let ev = events(&cs);
    let out = libc::POLLOUT;
    ensure!(ev[0] & out != 0 && ev[1] & out != 0, "the queue's two connections: {ev:?}");
    ensure!(ev[2] == 0 && ev[3] == 0, "connects beyond the backlog completed: {ev:?}");
    // SAFETY: shutdown of our socket.
    cvt("shutdown", unsafe { libc::shutdown(cs[3], libc::SHUT_RDWR) }).map_err(f)?;
    let hup_err = libc::POLLHUP | libc::POLLERR;
    let ev = events(&cs[3..]);
    ensure!(ev[0] & hup_err == hup_err, "a waiting connect shut down: {:#x}", ev[0]);
    let e = int_opt(cs[3], libc::SOL_SOCKET, libc::SO_ERROR)?;
    ensure!(e == libc::ECONNRESET, "a waiting connect shut down: SO_ERROR {e}");
    let s = net::accept(l).map_err(f)?;
    let mut p = [pollfd(cs[2], libc::POLLOUT)];
    ensure!(poll_n(&mut p, 10_000) == 1 && p[0].revents & out != 0, "an accept made no room for the waiting one");
    ensure!(int_opt(cs[2], libc::SOL_SOCKET, libc::SO_ERROR)? == 0, "the admitted connect has an error");
    // Data goes both ways once it is accepted.
    let s1 = net::accept(l).map_err(f)?;
    let s2 = net::accept(l).map_err(f)?;
    ensure!(send(cs[2], b"w", 0) == 1, "send on the admitted connection: errno {}", errno());
    set_timeout(s2, 10)?;
    let mut b = [0u8; 1];
    net::read_exact(s2, &mut b).map_err(f)?;
    ensure!(b[0] == b'w', "the admitted connection carried {b:?}");
    for fd in cs.iter().copied().chain([s, s1, s2, l]) {
        net::close(fd);
    }
    // listen(0) holds one; the listener closes with one queued and two waiting.
    let (l2, port2) = net::listen_loopback(false).map_err(f)?;
    // SAFETY: listen again on our listening socket.
    cvt("listen", unsafe { libc::listen(l2, 0) }).map_err(f)?;
    let a = connects_in_progress(port2, 3)?;
    std::thread::sleep(Duration::from_millis(200));
    let ev = events(&a);
    ensure!(ev[0] & out != 0 && ev[1] == 0 && ev[2] == 0, "listen(0) queue: {ev:?}");
    net::close(l2);
    let mut p = [pollfd(a[2], libc::POLLOUT)];
    ensure!(poll_n(&mut p, 10_000) == 1, "a waiting connect was not told its listener closed");
    let ev = events(&a);
    ensure!(ev.iter().all(|e| e & hup_err == hup_err), "after the listener closed: {ev:?}");
    let e0 = int_opt(a[0], libc::SOL_SOCKET, libc::SO_ERROR)?;
    ensure!(e0 == libc::ECONNRESET, "the queued connection: SO_ERROR {e0}");
    let mut p = [pollfd(a[1], libc::POLLOUT)];
    ensure!(poll_n(&mut p, 10_000) == 1, "the second waiting connect was not told");
    let e1 = int_opt(a[1], libc::SOL_SOCKET, libc::SO_ERROR)?;
    ensure!(e1 == libc::ECONNREFUSED, "a waiting connect: SO_ERROR {e1}");
    ensure!(
        recv(a[2], &mut b, 0) == -1 && errno() == libc::ECONNREFUSED,
        "a waiting connect's read: errno {}",
        errno()
    );
    a.into_iter().for_each(net::close);
    Ok(())
}

/// A listener a fork left shared (the forked client closed its copy)
/// closing with a connection queued that the monitor made: the connection
/// is reset, as Linux resets the queue of a listener whose last copy
/// closes (it was ended with a FIN).
pub(crate) fn shared_listener_close() -> Res {
    use crate::checks::fork::{set_timeout, wait_child};
    use crate::checks::readiness::{poll_n, pollfd};
    let (go_r, go_w) = crate::checks::readiness::pipe()?;
    let (l, pid) = crate::checks::renewal::forked_client(|port| {
        net::close(go_w);
        let c = net::connect_loopback(false, port).map_err(f)?;
        set_timeout(c, 10)?;
        let mut b = [0u8; 8];
        // SAFETY: a one-byte read into a live buffer.
        let n = unsafe { libc::read(go_r, b.as_mut_ptr().cast(), 1) };
        ensure!(n == 1, "the server did not say its listener closed ({n})");
        // SAFETY: a buffer of its length.
        let n = unsafe { libc::recv(c, b.as_mut_ptr().cast(), b.len(), 0) };
        ensure!(n < 0 && errno() == libc::ECONNRESET, "queued on a closed listener: recv {n} (errno {})", errno());
        net::close(c);
        Ok(())
    })?;
    net::close(go_r);
    let mut p = [pollfd(l, libc::POLLIN)];
    ensure!(poll_n(&mut p, 10_000) == 1, "the connection never reached the listener's queue");
    net::close(l);
    // SAFETY: one byte from a live buffer.
    cvt("write", unsafe { libc::write(go_w, b"g".as_ptr().cast(), 1) }).map_err(f)?;
    net::close(go_w);
    wait_child(pid)
}

/// A listener's process killed with a connection in its queue: the
/// connection is reset, as Linux resets the queue of a listener its
/// process's death closes (it was ended with a FIN).
pub(crate) fn dead_listener_close() -> Res {
    use crate::checks::fork::{fork, in_child, set_timeout};
    let (port_r, port_w) = crate::checks::readiness::pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let (_l, port) = net::listen_loopback(false).map_err(f)?;
            // SAFETY: two bytes from a live buffer.
            cvt("write", unsafe { libc::write(port_w, port.to_le_bytes().as_ptr().cast(), 2) }).map_err(f)?;
            loop {
                std::thread::sleep(std::time::Duration::from_secs(60));
            }
        });
    }
    net::close(port_w);
    let mut p = [0u8; 2];
    // SAFETY: a two-byte read into a live buffer.
    let n = unsafe { libc::read(port_r, p.as_mut_ptr().cast(), 2) };
    net::close(port_r);
    ensure!(n == 2, "the listener's process sent no port ({n})");
    let c = net::connect_loopback(false, u16::from_le_bytes(p)).map_err(f)?;
    set_timeout(c, 10)?;
    // SAFETY: our own child.
    cvt("kill", unsafe { libc::kill(pid, libc::SIGKILL) }).map_err(f)?;
    let mut status = 0;
    // SAFETY: waits for our own child.
    cvt("waitpid", unsafe { libc::waitpid(pid, &mut status, 0) }).map_err(f)?;
    let mut b = [0u8; 8];
    // SAFETY: a buffer of its length.
    let n = unsafe { libc::recv(c, b.as_mut_ptr().cast(), b.len(), 0) };
    ensure!(n < 0 && errno() == libc::ECONNRESET, "queued on a dead listener: recv {n} (errno {})", errno());
    net::close(c);
    Ok(())
}
