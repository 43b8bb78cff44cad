//! The programs `ipcd bench` runs over kernel TCP, a Unix socket and ipcd
//! (`ipcd workload NAME ARGS…`, the same binary, so nothing outside the
//! installed `ipcd` is needed). Each uses only the ordinary socket API
//! through libc, as an unmodified program does:
//!
//! ```text
//! bench-server tcp|unix CPU      one connection; prints its port or path
//! bench-client tcp|unix ADDR CPU MODE SIZE COUNT
//! conn-serve N                   N connections, one byte echoed on each
//! conn-client PORT N T           N connections from T threads; prints ns
//! epoll-serve N [edge]           epoll echo server; prints its port; ends
//!                                after N connections closed
//! epoll-load PORT C R            R rounds of an 8-byte request on each of
//!                                C connections; prints ns
//! idle-serve N                   accepts N connections, echoes a byte on
//!                                each and holds them until stdin ends;
//!                                prints its port
//! idle-client PORT N STEP        prints 0, then per line read on stdin
//!                                STEP more connections (a byte each way),
//!                                printing how many it holds; at N it
//!                                holds them until stdin ends
//! ```
//!
//! `IPCD_WORKLOAD_CPU=N` pins the process to core N first.

use std::time::{Duration, Instant};

use super::net::{self, cvt, Fail};

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

fn recv(fd: i32, buf: &mut [u8], flags: i32) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
}

/// `EPOLLIN` as the event mask's type.
const IN: u32 = libc::EPOLLIN as u32;
/// `EPOLLET` as the event mask's type.
const ET: u32 = libc::EPOLLET as u32;

/// Runs the workload `args[0]` names with the rest as its arguments;
/// `None` if `args[0]` names none.
pub fn run(args: &[String]) -> Option<Result<(), String>> {
    if let Some(cpu) = std::env::var("IPCD_WORKLOAD_CPU").ok().and_then(|c| c.parse().ok()) {
        pin(cpu);
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().map_err(|_| format!("argument {i} must be a number"));
    let run = || -> Option<Res> {
        let r = match arg(0).as_str() {
            "epoll-serve" => num(1).and_then(|n| epoll_serve(n as usize, arg(2) == "edge")),
            "epoll-load" => (|| epoll_load(num(1)? as u16, num(2)? as usize, num(3)? as usize))(),
            "conn-serve" => num(1).and_then(|n| conn_serve(n as usize)),
            "conn-client" => (|| conn_client(num(1)? as u16, num(2)? as usize, num(3)? as usize))(),
            "bench-server" => bench_server(&arg(1), arg(2).parse().ok()),
            "bench-client" => {
                (|| bench_client(&arg(1), &arg(2), arg(3).parse().ok(), &arg(4), num(5)? as usize, num(6)?))()
            }
            "monitor-client" => num(2).and_then(|n| super::queues::client(&arg(1), n)),
            "idle-serve" => num(1).and_then(|n| idle_serve(n as usize)),
            "idle-client" => (|| idle_client(num(1)? as u16, num(2)? as usize, num(3)? as usize))(),
            _ => return None,
        };
        Some(r)
    };
    run()
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

/// Idle-connection server: accepts `count` connections, echoes one byte
/// on each and holds them all until its stdin ends. Prints its port.
fn idle_serve(count: usize) -> Res {
    raise_nofile();
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    println!("{port}");
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        let s = net::accept(l).map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        held.push(s);
    }
    until_stdin_ends();
    for s in held {
        net::close(s);
    }
    net::close(l);
    Ok(())
}

/// Idle-connection client: `count` connections in steps of `step`, one
/// step per line read on stdin, printing how many it holds before each
/// (0 first); holds them until stdin ends.
fn idle_client(port: u16, count: usize, step: usize) -> Res {
    use std::io::{BufRead, Write};
    ensure!(step > 0, "a step of 0 connections");
    raise_nofile();
    let mut held = Vec::with_capacity(count);
    let mut lines = std::io::stdin().lock().lines();
    loop {
        println!("{}", held.len());
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        if held.len() >= count || lines.next().is_none() {
            break;
        }
        for _ in 0..step.min(count - held.len()) {
            let c = net::connect_loopback(false, port).map_err(f)?;
            net::send_all(c, b"i").map_err(f)?;
            let mut b = [0u8; 1];
            net::read_exact(c, &mut b).map_err(f)?;
            held.push(c);
        }
    }
    drop(lines);
    until_stdin_ends();
    for c in held {
        net::close(c);
    }
    Ok(())
}

/// Blocks until stdin reaches its end (the benchmark closed it).
fn until_stdin_ends() {
    let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
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

/// Pins this process to core `cpu`.
pub fn pin(cpu: u64) {
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

/// Sends `buf` as four equal pieces in one `writev`, the rest (after a
/// short write) with plain sends.
fn writev_all(c: i32, buf: &[u8]) -> Result<(), net::Fail> {
    let q = buf.len() / 4;
    let iov: Vec<libc::iovec> = (0..4)
        .map(|i| {
            let end = if i == 3 { buf.len() } else { (i + 1) * q };
            libc::iovec { iov_base: buf[i * q..end].as_ptr().cast_mut().cast(), iov_len: end - i * q }
        })
        .collect();
    // SAFETY: four iovecs over `buf`, which outlives the call.
    let n = cvt("writev", unsafe { libc::writev(c, iov.as_ptr(), 4) })?;
    net::send_all(c, &buf[n as usize..])
}

/// The benchmark client. `cpu`: the core to run on, or `None` to let the
/// scheduler place it. Modes: `lat` (each round trip timed; prints p50 p99
/// p99.9 in ns), `rtt` and `stream` (`count` round trips or writes; prints
/// the ns taken), `writev` (as `stream`, each write four pieces in one
/// `writev`), `rtt-for` (round trips for `count` ms; prints how many and
/// the ns).
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
    let mut hdr = vec![if mode == "stream" || mode == "writev" { b's' } else { b'r' }];
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
            if mode == "writev" {
                writev_all(c, &buf).map_err(f)?;
            } else {
                net::send_all(c, &buf).map_err(f)?;
            }
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

/// Raises the soft fd limit to the hard one (servers of many connections).
pub use crate::limits::raise_nofile;

/// Adds `fd` to epoll set `ep` with `events` and `data`.
pub fn epoll_add(ep: i32, fd: i32, events: u32, data: u64) -> Res {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) }).map_err(f)?;
    Ok(())
}

/// Turns `O_NONBLOCK` on or off.
pub fn set_nonblocking(fd: i32, on: bool) -> Res {
    // SAFETY: F_GETFL/F_SETFL on our fd.
    unsafe {
        let fl = cvt("fcntl", libc::fcntl(fd, libc::F_GETFL)).map_err(f)?;
        let fl = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
        cvt("fcntl", libc::fcntl(fd, libc::F_SETFL, fl)).map_err(f)?;
    }
    Ok(())
}
