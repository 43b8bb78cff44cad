//! Servers and clients the integration tests run as separate processes:
//! echo servers (plain, epoll, pre-fork, daemon) and their clients.

use std::time::Duration;

use ipcd_monitor::bench::workload::{raise_nofile, set_nonblocking};
use ipcd_tests::data::{Fnv, Prng};
use ipcd_tests::net::{self, cvt, Fail};

use crate::*;

pub(crate) fn echo_loop(s: i32) -> Result<(), Fail> {
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

pub(crate) fn client_rounds(c: i32, rounds: usize, seed: u64) -> Res {
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

/// CPU time this process used so far.
pub(crate) fn cpu_time() -> Duration {
    // SAFETY: getrusage into a zeroed struct.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Opens `n` connections at once, then echoes a distinct message on each.
pub(crate) fn many_clients(port: u16, n: usize) -> Res {
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

/// Accepts one connection on `l` and answers its 4 bytes with our pid
/// (10 characters) and the same 4 bytes.
pub(crate) fn echo_one_with_pid(l: i32) -> Res {
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
pub(crate) fn prefork_serve(workers: usize) -> Res {
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
pub(crate) fn daemon_serve(n: usize) -> Res {
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
pub(crate) fn prefork_clients(port: u16, n: usize) -> Res {
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

pub(crate) fn serve(count: Option<usize>) -> Res {
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

/// Accepts one connection and forks a child that echoes on it; the
/// parent keeps its copy, prints the child's pid and waits until killed.
pub(crate) fn fork_serve() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    let s = net::accept(l).map_err(f)?;
    // SAFETY: fork in a single-threaded program; the child only echoes.
    match unsafe { libc::fork() } {
        -1 => Err(format!("fork: errno {}", errno())),
        0 => {
            let r = echo_loop(s).map_err(f);
            std::process::exit(i32::from(r.is_err()));
        }
        child => {
            use std::io::Write;
            println!("{child}");
            let _ = std::io::stdout().flush();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
}

/// `n` non-blocking connects to a documentation address (192.0.2.1, not
/// this host), each closed at once, whatever it answered.
pub(crate) fn remote_connects(n: u64) -> Res {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 9u16.to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes([192, 0, 2, 1]) },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    for _ in 0..n {
        let fd = net::tcp_socket(false).map_err(f)?;
        set_nonblocking(fd, true).map_err(|e| e.to_string())?;
        // SAFETY: a sockaddr_in of `len` bytes.
        let _ = unsafe { libc::connect(fd, (&raw const sin).cast(), len) };
        net::close(fd);
    }
    Ok(())
}

/// A server that waits for its one connection in `poll` with no timeout:
/// prints its port, accepts one connection, exits.
pub(crate) fn poll_accept() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    let mut p = libc::pollfd { fd: l, events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, -1) };
        if n > 0 {
            break;
        }
        ensure!(n == 0 || errno() == libc::EINTR, "poll: {}", errno());
    }
    let s = net::accept(l).map_err(f)?;
    net::close(s);
    net::close(l);
    Ok(())
}

/// The client of the fault-injection test: streams `total` bytes of a
/// seeded sequence to an echo server on `port` from one thread while
/// another checks every echoed byte against the same sequence. Prints
/// `connected` once connected, then one line: `whole N` (every byte
/// back, then end of stream), or `cut N ERR`
/// (the stream ended early with EOF, ECONNRESET or EPIPE after N correct
/// bytes: a peer killed). Exits 3 if a byte differs, 4 if a wait went past
/// its 10 s timeout (a hang).
pub(crate) fn fault_client(port: u16, seed: u64, total: usize) -> Res {
    let c = net::connect_loopback(false, port).map_err(f)?;
    set_timeout(c, 10)?;
    // Line-buffered: the driver sees it even if it kills us right after.
    println!("connected");
    let writer = std::thread::spawn(move || {
        let mut buf = vec![0u8; 16 * 1024];
        let mut sent = 0;
        while sent < total {
            let n = buf.len().min(total - sent);
            stream_bytes(seed, sent, &mut buf[..n]);
            // A send that fails ends the writer: the reader reports.
            if net::send_all(c, &buf[..n]).is_err() {
                return;
            }
            sent += n;
        }
        // SAFETY: shutdown of our socket.
        unsafe { libc::shutdown(c, libc::SHUT_WR) };
    });
    let mut want = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let mut good = 0usize;
    let outcome = loop {
        // SAFETY: a live buffer.
        let r = unsafe { libc::recv(c, got.as_mut_ptr().cast(), got.len(), 0) };
        if r < 0 {
            let e = errno();
            if e == libc::EAGAIN {
                println!("hang {good}");
                std::process::exit(4);
            }
            if e == libc::EINTR {
                continue;
            }
            break format!("cut {good} errno{e}");
        }
        if r == 0 {
            break if good == total { format!("whole {good}") } else { format!("cut {good} eof") };
        }
        let n = r as usize;
        stream_bytes(seed, good, &mut want[..n]);
        if want[..n] != got[..n] {
            println!("corrupt at {good}");
            std::process::exit(3);
        }
        good += n;
    };
    let _ = writer.join();
    println!("{outcome}");
    net::close(c);
    Ok(())
}

/// Bytes `at..at + buf.len()` of the seeded stream: each a function of its
/// position alone, so that writer and reader agree however the stream is
/// cut into calls.
fn stream_bytes(seed: u64, at: usize, buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let pos = (at + i) as u64;
        // splitmix64 of the seed and the position's word.
        let mut z = seed ^ (pos / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        *b = (z >> ((pos % 8) * 8)) as u8;
    }
}

/// A process that uses io_uring, set up through libc's `syscall`
/// (`how` = `syscall`, after a listener of its own was registered) or an
/// inline system call (`inline`, before anything else: only its fd shows
/// it): then `n` connects to its own listener, each accepted, a byte each
/// way, closed. Under ipcd all of them use the kernel.
pub(crate) fn uring_connects(how: &str, n: u64) -> Res {
    let mut params = [0u8; 120];
    let setup = |inline: bool, params: &mut [u8; 120]| -> Result<i32, String> {
        let fd: i64;
        if inline {
            // SAFETY: io_uring_setup(4, params) as a raw system call; the
            // kernel writes the 120-byte params it is given.
            unsafe {
                core::arch::asm!("syscall", inlateout("rax") libc::SYS_io_uring_setup => fd,
                    in("rdi") 4, in("rsi") params.as_mut_ptr(), lateout("rcx") _, lateout("r11") _);
            }
        } else {
            // SAFETY: as above, through libc.
            fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) };
        }
        ensure!(fd >= 0, "io_uring_setup: {fd} (errno {})", errno());
        Ok(fd as i32)
    };
    let ring = if how == "inline" { Some(setup(true, &mut params)?) } else { None };
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let ring = match ring {
        Some(r) => r,
        None => setup(false, &mut params)?,
    };
    for i in 0..n {
        let c = net::connect_loopback(false, port).map_err(f)?;
        let s = net::accept(l).map_err(f)?;
        net::send_all(c, &[i as u8]).map_err(f)?;
        net::send_all(s, &[i as u8]).map_err(f)?;
        let (mut a, mut b) = ([0u8; 1], [0u8; 1]);
        net::read_exact(s, &mut a).map_err(f)?;
        net::read_exact(c, &mut b).map_err(f)?;
        ensure!(a[0] == i as u8 && b[0] == i as u8, "connection {i}: {a:?} {b:?}");
        net::close(c);
        net::close(s);
    }
    net::close(l);
    net::close(ring);
    Ok(())
}

/// `pattern-client`: `n` bytes of [`ipcd_tests::data::pattern`] to an echo
/// server at `port` on loopback (a writer thread, so neither side waits
/// on a full ring), the echo read back and compared, then a close.
pub(crate) fn pattern_client(port: u16, n: usize) -> Res {
    let c = net::connect_loopback(false, port).map_err(f)?;
    set_timeout(c, 20)?;
    let data = ipcd_tests::data::pattern(n);
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || net::send_all(c, &data).map_err(f))
    };
    let mut got = vec![0u8; n];
    net::read_exact(c, &mut got).map_err(f)?;
    writer.join().map_err(|_| "writer panicked".to_string())??;
    ensure!(got == data, "the echo differs");
    net::close(c);
    Ok(())
}
