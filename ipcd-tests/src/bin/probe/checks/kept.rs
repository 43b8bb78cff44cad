//! Sockets made after others closed look new, whatever the closed ones went
//! through (ipcd keeps closed sockets' kernel sockets for the next ones).

use ipcd_tests::net::{self, cvt};

use crate::*;

fn set_int(fd: i32, level: i32, name: i32, v: i32) -> Res {
    // SAFETY: an int of its size.
    cvt("setsockopt", unsafe { libc::setsockopt(fd, level, name, (&raw const v).cast(), 4) }).map_err(f)?;
    Ok(())
}

fn rcvtimeo(fd: i32) -> Result<(i64, i64), String> {
    let mut tv = libc::timeval { tv_sec: 0, tv_usec: 0 };
    let mut len = size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: a timeval and its size.
    cvt("getsockopt", unsafe {
        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw mut tv).cast(), &mut len)
    })
    .map_err(f)?;
    Ok((tv.tv_sec, tv.tv_usec))
}

/// The options a program commonly sets, all on.
fn set_common(fd: i32) -> Res {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    set_int(fd, libc::SOL_SOCKET, libc::SO_OOBINLINE, 1)?;
    set_timeout(fd, 5)
}

/// Every option of [`set_common`] at its default, and the flags as asked.
fn looks_new(fd: i32, nonblock: bool, cloexec: bool) -> Res {
    for (level, name, what) in [
        (libc::IPPROTO_TCP, libc::TCP_NODELAY, "TCP_NODELAY"),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, "SO_KEEPALIVE"),
        (libc::SOL_SOCKET, libc::SO_REUSEADDR, "SO_REUSEADDR"),
        (libc::SOL_SOCKET, libc::SO_OOBINLINE, "SO_OOBINLINE"),
    ] {
        ensure!(int_opt(fd, level, name)? == 0, "{what} of a new socket is on");
    }
    ensure!(rcvtimeo(fd)? == (0, 0), "SO_RCVTIMEO of a new socket is {:?}", rcvtimeo(fd)?);
    // SAFETY: flag queries.
    let (fl, fdfl) = unsafe { (libc::fcntl(fd, libc::F_GETFL), libc::fcntl(fd, libc::F_GETFD)) };
    ensure!((fl & libc::O_NONBLOCK != 0) == nonblock, "O_NONBLOCK {fl:#x}, wanted {nonblock}");
    ensure!((fdfl & libc::FD_CLOEXEC != 0) == cloexec, "FD_CLOEXEC {fdfl:#x}, wanted {cloexec}");
    Ok(())
}

/// Connections with options set, each closed from both sides.
fn churn(v6: bool, l: i32, port: u16) -> Res {
    for _ in 0..4 {
        let c = net::connect_loopback(v6, port).map_err(f)?;
        let s = net::accept(l).map_err(f)?;
        set_common(c)?;
        set_common(s)?;
        net::send_all(c, b"x").map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        net::read_exact(c, &mut b).map_err(f)?;
        net::close(c);
        net::close(s);
    }
    Ok(())
}

/// After connections closed: new sockets take the lowest free fd, are
/// unbound, carry default options and the flags asked for, bind, listen
/// and connect as new ones do; accepted ones carry defaults too.
pub(crate) fn kept_sockets() -> Res {
    for v6 in [false, true] {
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
        let (l, port) = net::listen_loopback(v6).map_err(f)?;
        churn(v6, l, port)?;
        // The number a new file would get.
        // SAFETY: opening and closing /dev/null.
        let lowest = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) };
        // SAFETY: closing what was just opened.
        unsafe { libc::close(lowest) };
        // SAFETY: plain socket creation.
        let a = cvt("socket", unsafe { libc::socket(family, libc::SOCK_STREAM, 0) }).map_err(f)?;
        ensure!(a == lowest, "socket() gave fd {a}, the lowest free is {lowest}");
        looks_new(a, false, false)?;
        let (ip, p) = net::name(a, false).map_err(f)?;
        ensure!(p == 0 && ip.iter().all(|&b| b == 0), "a new socket is bound: {ip:?} port {p}");
        // SAFETY: plain socket creation.
        let b = cvt("socket", unsafe {
            libc::socket(family, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::IPPROTO_TCP)
        })
        .map_err(f)?;
        looks_new(b, true, true)?;
        if v6 {
            // Refused on a bound socket: ours must not be.
            set_int(b, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
        }
        // A new socket binds where it is told, and listens there.
        let (ss, len) = net::loopback(v6, 0);
        // SAFETY: a sockaddr of `len` bytes.
        cvt("bind", unsafe { libc::bind(a, (&raw const ss).cast(), len) }).map_err(f)?;
        let (ip, p) = net::name(a, false).map_err(f)?;
        ensure!(p != 0 && ip.iter().any(|&b| b != 0), "bound to loopback: {ip:?} port {p}");
        // SAFETY: a bound socket.
        cvt("listen", unsafe { libc::listen(a, 8) }).map_err(f)?;
        // An unbound one listens on the wildcard address.
        // SAFETY: an unbound socket.
        cvt("listen", unsafe { libc::listen(b, 8) }).map_err(f)?;
        let (ip, p2) = net::name(b, false).map_err(f)?;
        ensure!(p2 != 0 && ip.iter().all(|&b| b == 0), "listened unbound: {ip:?} port {p2}");
        // Both listeners serve, and what they accept looks new too.
        for (lfd, lport) in [(a, p), (b, p2)] {
            let c = net::connect_loopback(v6, lport).map_err(f)?;
            // `b` is non-blocking: wait for the connection as a program
            // would (under ipcd it may reach the listener a moment after
            // connect returned).
            let mut pfd = libc::pollfd { fd: lfd, events: libc::POLLIN, revents: 0 };
            // SAFETY: one live pollfd.
            cvt("poll", unsafe { libc::poll(&mut pfd, 1, 10_000) }).map_err(f)?;
            let s = net::accept(lfd).map_err(f)?;
            looks_new(c, false, true)?;
            looks_new(s, false, true)?;
            net::send_all(c, b"y").map_err(f)?;
            let mut buf = [0u8; 1];
            net::read_exact(s, &mut buf).map_err(f)?;
            ensure!(&buf == b"y", "echo through a listener on a new socket");
            net::close(c);
            net::close(s);
        }
        for fd in [a, b, l] {
            net::close(fd);
        }
    }
    Ok(())
}

/// Prints `same` if the kernel socket under a new socket is one that a
/// closed connection's end had (same inode), else `new`: the integration test
/// expects `same` under ipcd and `new` on the kernel.
pub(crate) fn kept_inode() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = net::connect_loopback(false, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    let inode = |fd: i32| -> Result<u64, String> {
        // SAFETY: fstat into a zeroed stat.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        cvt("fstat", unsafe { libc::fstat(fd, &mut st) }).map_err(f)?;
        Ok(st.st_ino)
    };
    let old = [inode(c)?, inode(s)?];
    net::close(c);
    net::close(s);
    let n = net::tcp_socket(false).map_err(f)?;
    println!("{}", if old.contains(&inode(n)?) { "same" } else { "new" });
    net::close(n);
    net::close(l);
    Ok(())
}

/// With the soft fd limit lowered to `soft` (the hard one kept), makes
/// connections to a listener of its own, both ends in this process, until
/// a call fails; prints how many it held. The integration test compares
/// the count under ipcd with the kernel's: ipcd's own fds must not make a
/// program reach its limit sooner.
pub(crate) fn fd_capacity(soft: u64) -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    lower_soft_nofile(soft)?;
    let mut held = Vec::new();
    while let Ok(c) = net::connect_loopback(false, port) {
        let Ok(s) = net::accept(l) else {
            net::close(c);
            break;
        };
        held.push((c, s));
    }
    ensure!(errno() == libc::EMFILE, "the call that failed said {}", errno());
    // Every connection held still carries bytes both ways.
    for &(c, s) in &held {
        net::send_all(c, b"?").map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, b"!").map_err(f)?;
        net::read_exact(c, &mut b).map_err(f)?;
        ensure!(&b == b"!", "echo on a held connection");
    }
    println!("{}", held.len());
    for (c, s) in held {
        net::close(c);
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// After connections closed, new sockets (under ipcd, kept kernel
/// sockets, bound by the library or not, whose hidden copies the library
/// holds while the program uses them) connected to a program without
/// ipcd carry bytes, and each one's close reaches that peer as FIN at
/// once: nothing of ours keeps a kernel socket open past the program's
/// close.
pub(crate) fn kept_kernel_peer() -> Res {
    use std::io::BufRead;
    // More than the kept sockets of a family, accepted (unbound) and
    // connected (bound where the library bound them) alike.
    const CONNS: usize = 10;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    churn(false, l, port)?;
    net::close(l);
    // Sockets closed unused: under ipcd, kept unbound.
    let fresh: Vec<i32> = (0..6).map(|_| net::tcp_socket(false)).collect::<Result<_, _>>().map_err(f)?;
    for fd in fresh {
        net::close(fd);
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut sink = std::process::Command::new(exe)
        .args(["kernel-sink", &CONNS.to_string()])
        .env("IPCD_DISABLE", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("probe kernel-sink: {e}"))?;
    let mut lines = std::io::BufReader::new(sink.stdout.take().ok_or("no stdout")?).lines();
    let sink_port: u16 = lines.next().and_then(Result::ok).and_then(|l| l.parse().ok()).ok_or("no port")?;
    for i in 0..CONNS {
        let c = net::connect_loopback(false, sink_port).map_err(f)?;
        net::send_all(c, b"kept").map_err(f)?;
        net::close(c);
        let said = lines.next().and_then(Result::ok).unwrap_or_default();
        ensure!(said == "4", "connection {i}: the peer without ipcd read {said:?} (4 bytes, then the end within 5 s)");
    }
    let status = sink.wait().map_err(|e| e.to_string())?;
    ensure!(status.success(), "kernel-sink: {status}");
    Ok(())
}

/// The peer of [`kept_kernel_peer`], run without ipcd: prints its port,
/// then takes `count` connections one after another, printing for each
/// how many bytes came before its end, or `no end` if none came within
/// 5 s.
pub(crate) fn kernel_sink(count: u64) -> Res {
    use std::io::Write;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    for _ in 0..count {
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        let s = net::accept(l).map_err(f)?;
        set_timeout(s, 5)?;
        let mut n = 0;
        let mut buf = [0u8; 64];
        loop {
            match recv(s, &mut buf, 0) {
                0 => break,
                r if r > 0 => n += r,
                _ => {
                    println!("no end");
                    return Ok(());
                }
            }
        }
        println!("{n}");
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// The kernel socket under `fd` (its inode).
fn socket_inode(fd: i32) -> Result<u64, String> {
    // SAFETY: fstat into a zeroed stat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt("fstat", unsafe { libc::fstat(fd, &mut st) }).map_err(f)?;
    Ok(st.st_ino)
}

/// Forks while another thread makes and closes sockets (the closed ones'
/// kernel sockets are kept for the next under ipcd): a socket the parent
/// makes after a fork never has a kernel socket the child holds too. A
/// socket made or closed while the fork was under way is in the child
/// as well, and reused, the parent's next connection would sit on a
/// kernel socket another process holds open.
pub(crate) fn fork_while_sockets_recycle() -> Res {
    // A connection first: its two closed ends' kernel sockets are kept too.
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = net::connect_loopback(false, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    net::send_all(c, b"k").map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    for fd in [c, s, l] {
        net::close(fd);
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || -> Res {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let s = net::tcp_socket(false).map_err(f)?;
                net::close(s);
            }
            Ok(())
        })
    };
    let mut verdict = Ok(());
    for round in 0..40 {
        verdict = fork_and_compare(round);
        if verdict.is_err() {
            break;
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    churn.join().map_err(|_| "the socket thread panicked".to_string())??;
    verdict
}

/// One fork: the child sends the inodes of the sockets it holds and waits;
/// the parent's next sockets must have none of them.
fn fork_and_compare(round: usize) -> Res {
    let (inodes_r, inodes_w) = pipe()?;
    let (exit_r, exit_w) = pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            // SAFETY: our copies of the parent's ends.
            unsafe {
                libc::close(inodes_r);
                libc::close(exit_w);
            }
            let mut out = Vec::new();
            for e in std::fs::read_dir("/proc/self/fd").map_err(|e| e.to_string())? {
                let link = std::fs::read_link(e.map_err(|e| e.to_string())?.path()).unwrap_or_default();
                let link = link.to_string_lossy();
                if let Some(n) = link.strip_prefix("socket:[").and_then(|l| l.strip_suffix(']')) {
                    out.extend_from_slice(&n.parse::<u64>().map_err(|e| e.to_string())?.to_le_bytes());
                }
            }
            // At most a few kB: a pipe takes it whole.
            // SAFETY: a live buffer of its length.
            let n = unsafe { libc::write(inodes_w, out.as_ptr().cast(), out.len()) };
            ensure!(n == out.len() as isize, "the inodes went short: {n}");
            net::close(inodes_w);
            // Held until the parent has looked.
            let mut b = [0u8; 1];
            // SAFETY: one byte into a live buffer; EOF ends it.
            unsafe { libc::read(exit_r, b.as_mut_ptr().cast(), 1) };
            Ok(())
        });
    }
    net::close(inodes_w);
    net::close(exit_r);
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: a live buffer of its size.
        let n = unsafe { libc::read(inodes_r, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        bytes.extend_from_slice(&buf[..n as usize]);
    }
    net::close(inodes_r);
    let child: Vec<u64> = bytes.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or_default())).collect();
    let mut made = Vec::new();
    let mut verdict = Ok(());
    for _ in 0..16 {
        let s = net::tcp_socket(false).map_err(f)?;
        made.push(s);
        let ino = socket_inode(s)?;
        if child.contains(&ino) {
            verdict = Err(format!("fork {round}: a new socket's kernel socket (inode {ino}) is held by the child too"));
            break;
        }
    }
    for s in made {
        net::close(s);
    }
    net::close(exit_w);
    wait_child(pid)?;
    verdict
}
