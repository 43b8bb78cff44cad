//! Readiness checks: poll and select over ipcd and kernel fds, level-
//! and edge-triggered epoll, epoll sets shared across fork, accept wake-ups
//! and waits in both directions.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ipcd_monitor::bench::workload::{epoll_add, set_nonblocking};
use ipcd_tests::net::{self, cvt};

use crate::*;

pub(crate) fn pollfd(fd: i32, events: i16) -> libc::pollfd {
    libc::pollfd { fd, events, revents: 0 }
}

pub(crate) fn poll_n(fds: &mut [libc::pollfd], timeout: i32) -> i32 {
    // SAFETY: a live array of pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) }
}

pub(crate) fn pipe() -> Result<(i32, i32), String> {
    let mut p = [0i32; 2];
    // SAFETY: a live array of two ints.
    cvt("pipe", unsafe { libc::pipe(p.as_mut_ptr()) }).map_err(f)?;
    Ok((p[0], p[1]))
}

/// poll over an ipcd socket, a pipe and a listener: timeouts, data,
/// writability, a waiting connection, the peer's FIN (POLLRDHUP), and a
/// sleeping poll woken by the peer.
pub(crate) fn poll_mixed() -> Res {
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
pub(crate) fn select_mixed() -> Res {
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

pub(crate) fn epoll_mod(ep: i32, fd: i32, events: u32, data: u64) -> Res {
    let mut ev = libc::epoll_event { events, u64: data };
    // SAFETY: a live event.
    cvt("epoll_ctl", unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_MOD, fd, &mut ev) }).map_err(f)?;
    Ok(())
}

/// (events, data) pairs from one epoll_wait, sorted by data.
pub(crate) fn epoll_get(ep: i32, timeout: i32) -> Result<Vec<(u32, u64)>, String> {
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 16];
    // SAFETY: a live event array.
    let n = cvt("epoll_wait", unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 16, timeout) }).map_err(f)?;
    let mut v: Vec<(u32, u64)> = evs[..n as usize].iter().map(|e| (e.events, e.u64)).collect();
    v.sort_by_key(|e| e.1);
    Ok(v)
}

pub(crate) const IN: u32 = libc::EPOLLIN as u32;

pub(crate) const OUT: u32 = libc::EPOLLOUT as u32;

pub(crate) const ET: u32 = libc::EPOLLET as u32;

/// Level-triggered epoll over an ipcd socket, a pipe and a listener; user
/// data comes back unchanged; EPOLL_CTL_DEL; a sleeping wait is woken.
pub(crate) fn epoll_level() -> Res {
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
// Long on purpose: one scenario, read top to bottom.
pub(crate) fn epoll_edge() -> Res {
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

/// One socket in two epoll sets; a set used from two threads; a set
/// inherited across fork, waited on in the child.
pub(crate) fn epoll_shared() -> Res {
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

/// A thread asleep in `accept` gets its connection even when another
/// thread of the process, waiting on another listener, read the news of
/// it from the monitor in a poll or an epoll_wait: each listener has a bell
/// of its own, rung for connections another thread read and left queued.
pub(crate) fn accept_wake() -> Res {
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
pub(crate) fn join_woken<T>(t: std::thread::JoinHandle<T>, what: &str) -> Result<T, String> {
    let until = Instant::now() + Duration::from_secs(10);
    while !t.is_finished() {
        ensure!(Instant::now() < until, "{what} never woke");
        std::thread::sleep(Duration::from_millis(1));
    }
    t.join().map_err(|_| format!("{what} panicked"))
}

/// Two threads wait on one connection, one for input and one for room
/// (poll, epoll or a blocked call, in turn): the peer's read that makes
/// room wakes the writer, whichever thread the wake-up reaches first. They
/// share the end's doorbell; the reader wakes too, finds nothing for it,
/// and must not take the writer's wake-up with it.
pub(crate) fn wait_both_ways() -> Res {
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
