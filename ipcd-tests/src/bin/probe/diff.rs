//! The differential trace: seeded random call sequences on a connected pair,
//! every observable printed so that a kernel run and an ipcd run compare.

use ipcd_tests::data::{Fnv, Prng};
use ipcd_tests::net::{self};

use crate::*;

/// One seeded random sequence of socket calls on a connected pair, every
/// observable written to `out`: return values, errno, bytes (hashed), poll
/// masks, FIONREAD, SO_ERROR, `TCP_INFO`'s state and bytes received,
/// options set and read back (valid and not), `recvmmsg` with good and
/// malformed timeouts, and SIGPIPE. Only non-blocking calls, and at most
/// 16 KiB unread each way, so kernel TCP and ipcd both answer at once.
/// (`SO_SNDBUF` is left out: ipcd's cap is not the kernel's amount.)
// Long on purpose: one match arm per random operation, read as a table.
pub(crate) fn diff_trace(seed: u64, out: &mut String) -> Res {
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
    // A page nobody may touch, for the bad-pointer calls.
    // SAFETY: a fresh anonymous mapping, never unmapped (the trace is short-lived).
    let unmapped = unsafe {
        libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
    };
    ensure!(unmapped != libc::MAP_FAILED, "mmap: errno {}", errno());
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
        let op = rng.range(0, 13);
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
            9 => {
                let mut b = [0u8; 136];
                let mut len = b.len() as libc::socklen_t;
                // SAFETY: an out buffer of `len` bytes.
                let r =
                    unsafe { libc::getsockopt(fd, libc::IPPROTO_TCP, libc::TCP_INFO, b.as_mut_ptr().cast(), &mut len) };
                // bytes_acked waits for the kernel's (maybe delayed) ACK,
                // and so do the states that wait for one: FIN_WAIT1 (4)
                // becomes FIN_WAIT2 (5), LAST_ACK (9) and CLOSING (11)
                // become CLOSE (7), as in ipcd where the ACK is at once.
                // bytes_received is counted at delivery, as ipcd's.
                let received = u64::from_ne_bytes(b[128..136].try_into().unwrap_or([0; 8]));
                let state = match b[0] {
                    4 => 5,
                    9 | 11 => 7,
                    s => s,
                };
                format!("tcp_info -> {r} state {state} received {received}")
            }
            10 => {
                // An option set (some values refused) and read back.
                let (level, name, v) = match rng.range(0, 5) {
                    // On only: with Nagle the kernel holds small sends back.
                    0 => (libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
                    1 => (libc::SOL_SOCKET, libc::SO_KEEPALIVE, rng.range(0, 1) as i32),
                    // Read back, a connection's clamp is its negotiated
                    // window; a small one would slow the kernel's delivery
                    // (not ipcd's, whose window is its ring).
                    2 => (libc::IPPROTO_TCP, libc::TCP_WINDOW_CLAMP, [0, 70_000][rng.range(0, 1)]),
                    3 => (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, [-1, 0, 5000][rng.range(0, 2)]),
                    _ => (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, [0, 30, 100_000][rng.range(0, 2)]),
                };
                // SAFETY: an int option.
                let r = unsafe { libc::setsockopt(fd, level, name, (&raw const v).cast(), 4) };
                let e = if r < 0 { errno() } else { 0 };
                let reads = if name == libc::TCP_WINDOW_CLAMP { 0 } else { int_opt(fd, level, name)? };
                format!("setsockopt {level}/{name}={v} -> {r} {e}, reads {reads}")
            }
            11 => {
                // recvmmsg of up to 3 messages, its timeout good or not.
                let vlen = rng.range(1, 3);
                let mut bufs = vec![[0u8; 512]; vlen];
                let mut iovs: Vec<libc::iovec> = bufs
                    .iter_mut()
                    .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
                    .collect();
                let mut msgs: Vec<libc::mmsghdr> = iovs
                    .iter_mut()
                    .map(|iov| {
                        // SAFETY: an all-zero mmsghdr is valid; it gets its live iovec.
                        let mut m: libc::mmsghdr = unsafe { std::mem::zeroed() };
                        m.msg_hdr.msg_iov = iov;
                        m.msg_hdr.msg_iovlen = 1;
                        m
                    })
                    .collect();
                let mut t = [
                    libc::timespec { tv_sec: 1, tv_nsec: 0 },
                    libc::timespec { tv_sec: 0, tv_nsec: 2_000_000_000 },
                    libc::timespec { tv_sec: -1, tv_nsec: 0 },
                ][rng.range(0, 2)];
                let tp = if rng.range(0, 3) == 0 { std::ptr::null_mut() } else { &raw mut t };
                // SAFETY: `vlen` live mmsghdrs; the timeout live or null.
                let r = unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), vlen as u32, libc::MSG_DONTWAIT, tp) };
                let mut h = Fnv::default();
                for (m, b) in msgs.iter().zip(&bufs).take(r.max(0) as usize) {
                    h.update(&b[..m.msg_len as usize]);
                    unread[1 - e] = unread[1 - e].saturating_sub(m.msg_len as usize);
                }
                format!("recvmmsg {vlen} -> {r} {} {:x}", if r < 0 { errno() } else { 0 }, h.0)
            }
            12 => {
                // A bad pointer: EFAULT where something would be copied,
                // and the other answers (EAGAIN, EPIPE, EOF, MSG_TRUNC's
                // count) where nothing is.
                let n = rng.range(0, 3000);
                let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
                // SAFETY: calls given the unmapped page on purpose; they
                // must fail or copy nothing.
                let (what, r) = unsafe {
                    match rng.range(0, 3) {
                        0 => ("send", libc::send(fd, unmapped.cast(), n, flags)),
                        1 => ("recv", libc::recv(fd, unmapped.cast(), n, libc::MSG_DONTWAIT)),
                        2 => ("recv-trunc", libc::recv(fd, unmapped.cast(), n, libc::MSG_DONTWAIT | libc::MSG_TRUNC)),
                        _ => ("fionread", libc::ioctl(fd, libc::FIONREAD, unmapped) as isize),
                    }
                };
                if r > 0 && what.starts_with("recv") {
                    unread[1 - e] = unread[1 - e].saturating_sub(r as usize);
                }
                format!("bad-pointer {what} {n} -> {r} {}", if r < 0 { errno() } else { 0 })
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

pub(crate) fn diff_traces(first: u64, count: u64) -> Res {
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
