//! Fork checks: connections and listeners shared by fork, pre-fork
//! servers, hand-off of queued connections, daemon(), forks under load.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ipcd_monitor::bench::workload::epoll_add;
use ipcd_tests::net::{self, cvt};

use crate::*;

pub(crate) fn fork() -> Result<i32, String> {
    // SAFETY: the probe is single-threaded here; the child only uses
    // async-signal-safe calls or execs (and its own fresh allocations).
    cvt("fork", unsafe { libc::fork() }).map_err(f)
}

pub(crate) fn wait_child(pid: i32) -> Res {
    let mut status = 0;
    // SAFETY: waits for our own child.
    cvt("waitpid", unsafe { libc::waitpid(pid, &mut status, 0) }).map_err(f)?;
    ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child status {status:#x}");
    Ok(())
}

/// Runs `body` in a forked child and exits with its verdict.
pub(crate) fn in_child(body: impl FnOnce() -> Res) -> ! {
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

pub(crate) fn set_timeout(fd: i32, secs: i64) -> Res {
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
pub(crate) fn fork_share() -> Res {
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
pub(crate) fn eventfds() -> Result<Vec<i32>, String> {
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
pub(crate) fn fork_wake() -> Res {
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
pub(crate) fn fork_handoff() -> Res {
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

/// A server whose forked child closed its copy of the listener (as a
/// child that execs does with a close-on-exec one) has the listener to
/// itself again: its clients are served through ipcd again, where while a
/// child holds the socket they go to the kernel (the check's harness
/// fails any connect that went to the kernel).
pub(crate) fn fork_listener() -> Res {
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
pub(crate) fn refused_port() -> Result<(i32, u16), String> {
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
pub(crate) fn serving(l: i32, refused: u16) -> Res {
    let mut p = [pollfd(l, libc::POLLIN)];
    // SAFETY: one live pollfd, no waiting.
    ensure!(unsafe { libc::poll(p.as_mut_ptr(), 1, 0) } >= 0, "poll of the listener: {}", errno());
    ensure!(net::connect_loopback(false, refused).is_err(), "nothing listens on port {refused}");
    Ok(())
}

/// Writes one byte to the pipe `w`.
pub(crate) fn say(w: i32, b: u8) -> Res {
    // SAFETY: one byte from a live buffer.
    ensure!(unsafe { libc::write(w, [b].as_ptr().cast(), 1) } == 1, "write to a pipe: {}", errno());
    Ok(())
}

/// Waits for one byte from each of `n` children on `ready`.
pub(crate) fn prefork_wait(ready: i32, n: usize) -> Res {
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
pub(crate) fn prefork_children(l: i32, n: u8, body: impl Fn(u8, i32) -> Res) -> Result<(Vec<i32>, i32), String> {
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
pub(crate) fn prefork() -> Res {
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
pub(crate) type Gates = [(i32, i32); 2];

/// `prefork_children` whose children, once ready, each wait for a byte
/// on their own pipe (`say(go[index].1, …)`) before `body`. Returns the
/// pipes too.
pub(crate) fn gated_children(l: i32, body: impl Fn(u8, i32) -> Res) -> Result<(Vec<i32>, i32, Gates), String> {
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
pub(crate) fn prefork_decline() -> Res {
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
pub(crate) fn prefork_kill() -> Res {
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
pub(crate) fn connect_and_say(port: u16, b: u8) -> Result<i32, String> {
    let c = net::connect_loopback(false, port).map_err(f)?;
    set_timeout(c, 10)?;
    ensure!(send(c, &[b], 0) == 1, "send: {}", errno());
    Ok(c)
}

/// A connection waits in a listener's queue when its process forks; the
/// parent closes its copy without accepting it: the child accepts it,
/// as it would from the kernel's shared queue (the child never saw it
/// queued, so it must not count as holding it).
pub(crate) fn fork_queued() -> Res {
    queued_at_fork(false)
}

/// nginx's start: a connection comes between the master's `listen` and
/// the fork of its worker; the master keeps its copy open and never
/// accepts. The worker accepts it, as it would from the kernel's shared
/// queue.
pub(crate) fn master_queued() -> Res {
    queued_at_fork(true)
}

/// A connection waits in the parent's queue when it forks a child that
/// accepts; the parent closes its copy of the listener at once, or
/// (`keep`) only once the child has served the connection.
pub(crate) fn queued_at_fork(keep: bool) -> Res {
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
pub(crate) fn daemon_queued() -> Res {
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

/// fork while other threads use connections: the child never inherits a
/// lock of ours that a thread which does not exist in it was holding (it
/// would hang in fork, or at its first use of that socket or of the
/// monitor). Another thread streams on one connection and opens and
/// closes connections (the monitor's channel, kept segments) while this
/// one forks; each child sends on the streaming connection (now shared
/// with its parent) and makes a connection of its own, then exits.
pub(crate) fn fork_busy() -> Res {
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

/// A server that sleeps for each connection — in accept, in poll, then in
/// epoll_wait — and a forked client that connects only once it sleeps
/// (2 ms after the last one): under ipcd most of these connect through
/// standbys, whose connectors ring the listener only while a thread of
/// the server sleeps on it, so each must still wake the server.
pub(crate) fn sleeping_acceptor_wakes() -> Res {
    const EACH: usize = 20;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            net::close(l);
            for _ in 0..3 * EACH {
                std::thread::sleep(Duration::from_millis(2));
                let c = net::connect_loopback(false, port).map_err(f)?;
                net::send_all(c, b"w").map_err(f)?;
                let mut b = [0u8; 1];
                net::read_exact(c, &mut b).map_err(f)?;
                net::close(c);
            }
            Ok(())
        });
    }
    let serve = |s: i32| -> Res {
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        net::close(s);
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // A lost wake-up fails the accept (EAGAIN) rather than hang.
    set_timeout(l, 10)?;
    // Blocking accept.
    for _ in 0..EACH {
        serve(net::accept(l).map_err(f)?)?;
    }
    // poll, then accept.
    for _ in 0..EACH {
        let mut p = libc::pollfd { fd: l, events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        let n = unsafe { libc::poll(&mut p, 1, 10_000) };
        ensure!(n == 1 && p.revents & libc::POLLIN != 0, "poll on the listener gave {n} ({:#x})", p.revents);
        serve(net::accept(l).map_err(f)?)?;
    }
    // epoll_wait, then accept.
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
    epoll_add(ep, l, libc::EPOLLIN as u32, 1)?;
    for _ in 0..EACH {
        let mut ev = [libc::epoll_event { events: 0, u64: 0 }; 1];
        // SAFETY: room for one event.
        let n = unsafe { libc::epoll_wait(ep, ev.as_mut_ptr(), 1, 10_000) };
        ensure!(n == 1, "epoll_wait on the listener gave {n}");
        serve(net::accept(l).map_err(f)?)?;
    }
    net::close(ep);
    net::close(l);
    ensure!(Instant::now() < deadline, "the connections took longer than 20 s");
    wait_child(pid)
}
