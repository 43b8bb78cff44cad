//! Renewed standbys: a pair's later connections set up without the
//! monitor, every round whole and addressed right whichever end closes
//! first, and what a death, a fork or a closing listener does to a round
//! in flight.

use ipcd_tests::net::{self, cvt};

use crate::checks::fork::{fork, in_child, set_timeout, wait_child};
use crate::*;

/// Connections in [`renewal_rounds`].
const ROUNDS: usize = 300;

/// One request of [`renewal_rounds`]: the round, the client's port, a
/// pattern of the round.
fn request(round: usize, port: u16) -> [u8; 64] {
    let mut m = [0u8; 64];
    m[..8].copy_from_slice(&(round as u64).to_le_bytes());
    m[8..10].copy_from_slice(&port.to_le_bytes());
    for (i, b) in m[10..].iter_mut().enumerate() {
        *b = (round * 7 + i) as u8;
    }
    m
}

/// Reads until the end of stream; error if bytes come instead.
fn expect_eof(fd: i32) -> Res {
    let mut b = [0u8; 8];
    let n = net::read_some(fd, &mut b).map_err(f)?;
    ensure!(n == 0, "{n} bytes where the end of stream was due");
    Ok(())
}

/// A listener here, and a forked child that closed its copy and runs
/// `client` against it: the listener and the child's pid.
pub(crate) fn forked_client(client: impl FnOnce(u16) -> Res) -> Result<(i32, i32), String> {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    set_timeout(l, 10)?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            net::close(l);
            client(port)
        });
    }
    Ok((l, pid))
}

/// A forked client makes `ROUNDS` connections one after another (every
/// 50th with a second one open beside it), each a 64-byte request and its
/// reversal; who closes first turns with the round (client, server, or
/// the client's `SHUT_WR` first). The server checks each request and that
/// its accept and `getpeername` name the client's own port.
pub(crate) fn renewal_rounds() -> Res {
    let (l, pid) = forked_client(|port| {
        let one = |round: usize| -> Result<i32, String> {
            let c = net::connect_loopback(false, port).map_err(f)?;
            set_timeout(c, 10)?;
            let m = request(round, net::local_port(c).map_err(f)?);
            net::send_all(c, &m).map_err(f)?;
            let mut back = [0u8; 64];
            net::read_exact(c, &mut back).map_err(f)?;
            back.reverse();
            ensure!(back == m, "round {round}: the reply is not the request reversed");
            Ok(c)
        };
        let mut round = 0;
        while round < ROUNDS {
            let mut open = vec![(one(round)?, round)];
            if round % 50 == 49 {
                round += 1;
                open.push((one(round)?, round));
            }
            for (c, round) in open {
                match round % 3 {
                    0 => {}
                    1 => expect_eof(c)?,
                    _ => {
                        // SAFETY: plain shutdown of our socket.
                        cvt("shutdown", unsafe { libc::shutdown(c, libc::SHUT_WR) }).map_err(f)?;
                        expect_eof(c)?;
                    }
                }
                net::close(c);
            }
            round += 1;
        }
        Ok(())
    })?;
    let serve = |s: i32| -> Result<usize, String> {
        set_timeout(s, 10)?;
        let mut m = [0u8; 64];
        net::read_exact(s, &mut m).map_err(f)?;
        let round = u64::from_le_bytes(m[..8].try_into().unwrap()) as usize;
        let client_port = u16::from_le_bytes([m[8], m[9]]);
        ensure!(m == request(round, client_port), "round {round}: request torn");
        ensure!(net::name(s, true).map_err(f)?.1 == client_port, "round {round}: getpeername is not the client");
        let mut back = m;
        back.reverse();
        net::send_all(s, &back).map_err(f)?;
        Ok(round)
    };
    let mut served = 0;
    while served < ROUNDS {
        let s = net::accept(l).map_err(f)?;
        let mut open = vec![(s, serve(s)?)];
        if served % 50 == 49 {
            let s = net::accept(l).map_err(f)?;
            open.push((s, serve(s)?));
        }
        served += open.len();
        for (s, round) in open {
            match round % 3 {
                // The client closes (or shuts down) first.
                0 | 2 => expect_eof(s)?,
                _ => {}
            }
            net::close(s);
        }
    }
    net::close(l);
    wait_child(pid)
}

/// A few connections so that the pair's standby is renewed, then one more
/// from a process that dies holding it: the survivor reads the end of
/// stream. Then the other way round: a server that dies with a renewed
/// round open leaves its client the end of stream (or a reset).
pub(crate) fn renewal_death() -> Res {
    // Enough for the first connections' closes to reach the monitor (they
    // go held back, with a later request) and a standby to be renewed.
    const WARM: usize = 20;
    let echo = |s: i32| -> Res {
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        Ok(())
    };
    let ask = |c: i32| -> Res {
        net::send_all(c, b"r").map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(c, &mut b).map_err(f)
    };
    // The client dies.
    let (l, pid) = forked_client(|port| {
        for _ in 0..WARM {
            let c = net::connect_loopback(false, port).map_err(f)?;
            ask(c)?;
            net::close(c);
        }
        let c = net::connect_loopback(false, port).map_err(f)?;
        ask(c)?;
        // SAFETY: dies at once, as a crash would, holding `c`.
        unsafe { libc::raise(libc::SIGKILL) };
        Ok(())
    })?;
    for _ in 0..WARM {
        let s = net::accept(l).map_err(f)?;
        echo(s)?;
        net::close(s);
    }
    let s = net::accept(l).map_err(f)?;
    set_timeout(s, 10)?;
    echo(s)?;
    expect_eof(s).map_err(|e| format!("after the client died: {e}"))?;
    net::close(s);
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ensure!(libc::WIFSIGNALED(status), "the client did not die as planned ({status:#x})");
    net::close(l);

    // The server dies.
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    set_timeout(l, 10)?;
    let (ready_r, ready_w) = crate::checks::readiness::pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            // Serves the listener (a wait on it says so) before the
            // parent lets go of its copy: until then a connect finds no
            // process serving it and goes to the kernel.
            net::close(ready_r);
            let mut p = [crate::checks::readiness::pollfd(l, libc::POLLIN)];
            crate::checks::readiness::poll_n(&mut p, 0);
            crate::checks::lifecycle::pipe_byte(ready_w, true)?;
            for _ in 0..WARM {
                let s = net::accept(l).map_err(f)?;
                echo(s)?;
                net::close(s);
            }
            let s = net::accept(l).map_err(f)?;
            echo(s)?;
            // SAFETY: as above, holding `s` and the listener.
            unsafe { libc::raise(libc::SIGKILL) };
            Ok(())
        });
    }
    net::close(ready_w);
    crate::checks::lifecycle::pipe_byte(ready_r, false)?;
    net::close(ready_r);
    net::close(l);
    for _ in 0..WARM {
        let c = net::connect_loopback(false, port).map_err(f)?;
        ask(c)?;
        net::close(c);
    }
    let c = net::connect_loopback(false, port).map_err(f)?;
    set_timeout(c, 10)?;
    ask(c)?;
    let mut b = [0u8; 8];
    // SAFETY: a buffer of its length.
    let n = unsafe { libc::recv(c, b.as_mut_ptr().cast(), b.len(), 0) };
    ensure!(n == 0 || (n < 0 && errno() == libc::ECONNRESET), "after the server died: recv {n} (errno {})", errno());
    net::close(c);
    let mut status = 0;
    // SAFETY: our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    ensure!(libc::WIFSIGNALED(status), "the server did not die as planned ({status:#x})");
    Ok(())
}

/// A server forks (as redis does to save) while it holds a renewed round;
/// the child exits at once. The round goes on whole in the parent, its
/// close reaches the client, and the pair's later connections work.
/// Then the listener closes: a round connected but not accepted is reset
/// (Linux resets a closed listener's queue), an accepted one goes on, and
/// the next connect is refused.
pub(crate) fn renewal_fork_and_listener() -> Res {
    const WARM: usize = 20;
    let (go_r, go_w) = crate::checks::readiness::pipe()?;
    let (l, pid) = forked_client(|port| {
        net::close(go_w);
        for i in 0..2 * WARM + 1 {
            let c = net::connect_loopback(false, port).map_err(f)?;
            set_timeout(c, 10)?;
            let m = [i as u8; 32];
            for _ in 0..3 {
                net::send_all(c, &m).map_err(f)?;
                let mut back = [0u8; 32];
                net::read_exact(c, &mut back).map_err(f)?;
                ensure!(back == m, "connection {i}: echo differs");
            }
            net::close(c);
        }
        // One the server accepts, one it leaves queued; then it
        // closes its listener.
        let kept = net::connect_loopback(false, port).map_err(f)?;
        set_timeout(kept, 10)?;
        let mut b = [0u8; 1];
        net::send_all(kept, b"k").map_err(f)?;
        net::read_exact(kept, &mut b).map_err(f)?;
        let queued = net::connect_loopback(false, port).map_err(f)?;
        set_timeout(queued, 10)?;
        net::send_all(kept, b"q").map_err(f)?;
        // The server says its listener is closed.
        // SAFETY: a one-byte buffer.
        let n = unsafe { libc::read(go_r, b.as_mut_ptr().cast(), 1) };
        ensure!(n == 1, "the server did not say its listener closed ({n})");
        let mut buf = [0u8; 8];
        // SAFETY: a buffer of its length.
        let n = unsafe { libc::recv(queued, buf.as_mut_ptr().cast(), buf.len(), 0) };
        ensure!(
            n < 0 && errno() == libc::ECONNRESET,
            "a connection queued on a closed listener: recv {n} (errno {})",
            errno()
        );
        net::close(queued);
        net::send_all(kept, b"z").map_err(f)?;
        net::read_exact(kept, &mut b).map_err(f)?;
        ensure!(&b == b"z", "the accepted connection lost its echo");
        net::close(kept);
        let refused = net::connect_loopback(false, port);
        ensure!(refused.is_err(), "a connect after the listener closed went through");
        Ok(())
    })?;
    net::close(go_r);
    let echo3 = |s: i32| -> Res {
        for _ in 0..3 {
            let mut m = [0u8; 32];
            net::read_exact(s, &mut m).map_err(f)?;
            net::send_all(s, &m).map_err(f)?;
        }
        Ok(())
    };
    for i in 0..2 * WARM + 1 {
        let s = net::accept(l).map_err(f)?;
        set_timeout(s, 10)?;
        if i == WARM {
            // Mid-round: a child that exits at once, holding a copy.
            let mut m = [0u8; 32];
            net::read_exact(s, &mut m).map_err(f)?;
            let child = fork()?;
            if child == 0 {
                // SAFETY: leaves at once, as a save child that is done.
                unsafe { libc::_exit(0) };
            }
            wait_child(child)?;
            net::send_all(s, &m).map_err(f)?;
            for _ in 0..2 {
                net::read_exact(s, &mut m).map_err(f)?;
                net::send_all(s, &m).map_err(f)?;
            }
        } else {
            echo3(s)?;
        }
        expect_eof(s)?;
        net::close(s);
    }
    let kept = net::accept(l).map_err(f)?;
    set_timeout(kept, 10)?;
    let mut b = [0u8; 1];
    net::read_exact(kept, &mut b).map_err(f)?;
    ensure!(&b == b"k", "the first connection after the rounds is not the one accepted");
    net::send_all(kept, b"a").map_err(f)?;
    // The second is connected (queued here) once the client says so.
    net::read_exact(kept, &mut b).map_err(f)?;
    net::close(l);
    // SAFETY: one byte from a live buffer.
    cvt("write", unsafe { libc::write(go_w, b"g".as_ptr().cast(), 1) }).map_err(f)?;
    net::close(go_w);
    net::read_exact(kept, &mut b).map_err(f)?;
    net::send_all(kept, &b).map_err(f)?;
    expect_eof(kept)?;
    net::close(kept);
    wait_child(pid)
}

/// Connections come out of accept in the order they were made, as from
/// Linux's accept queue, also when several renewed standbys of one pair
/// (renewed in another order than their connector takes them) carry them.
pub(crate) fn renewal_accept_order() -> Res {
    const BURSTS: usize = 30;
    const AT_ONCE: usize = 4;
    let (l, pid) = forked_client(|port| {
        for burst in 0..BURSTS {
            let mut open = Vec::new();
            for i in 0..AT_ONCE {
                let c = net::connect_loopback(false, port).map_err(f)?;
                net::send_all(c, &[i as u8]).map_err(f)?;
                open.push(c);
            }
            // Closed in turns of order, so the standbys are renewed
            // in another order each burst.
            let rot = burst % AT_ONCE;
            open.rotate_left(rot);
            for c in open {
                net::close(c);
            }
        }
        Ok(())
    })?;
    for burst in 0..BURSTS {
        let mut open = Vec::new();
        for i in 0..AT_ONCE {
            let s = net::accept(l).map_err(f)?;
            set_timeout(s, 10)?;
            let mut b = [0u8; 1];
            net::read_exact(s, &mut b).map_err(f)?;
            ensure!(b[0] as usize == i, "burst {burst}: accept {i} gave the connection made {}th", b[0]);
            open.push(s);
        }
        for s in open {
            expect_eof(s)?;
            net::close(s);
        }
    }
    net::close(l);
    wait_child(pid)
}

/// A listener's backlog counts the connections made through renewed
/// standbys as Linux counts any: after a pair's warm-up (its standby
/// renewed round after round), `listen(fd, 1)` still holds two, the rest
/// wait; a connect closed while it waits makes no room, an accept does.
pub(crate) fn renewal_backlog() -> Res {
    use crate::checks::lifecycle::{connects_in_progress, events, expect_byte};
    let l = net::tcp_socket(false).map_err(f)?;
    let (ss, len) = net::loopback(false, 0);
    // SAFETY: a sockaddr of `len` bytes; then a bound socket.
    unsafe {
        net::cvt("bind", libc::bind(l, (&raw const ss).cast(), len)).map_err(f)?;
        net::cvt("listen", libc::listen(l, 1)).map_err(f)?;
    }
    let port = net::local_port(l).map_err(f)?;
    set_timeout(l, 10)?;
    for i in 0..20u8 {
        let c = net::connect_loopback(false, port).map_err(f)?;
        let s = net::accept(l).map_err(f)?;
        net::send_all(c, &[i]).map_err(f)?;
        expect_byte(s, i)?;
        net::close(c);
        net::close(s);
    }
    let cs = connects_in_progress(port, 4)?;
    std::thread::sleep(std::time::Duration::from_millis(200));
    let out = libc::POLLOUT;
    let ev = events(&cs);
    ensure!(ev[0] & out != 0 && ev[1] & out != 0, "the queue's two connections: {ev:?}");
    ensure!(ev[2] == 0 && ev[3] == 0, "connects beyond the backlog completed: {ev:?}");
    // Closed, and another connect (which carries the close to the
    // monitor at once).
    net::close(cs[3]);
    let late = connects_in_progress(port, 1)?[0];
    // Past the monitor's idle tick (1 s), when room wrongly made would
    // admit one.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let ev = events(&[cs[2], late]);
    ensure!(ev == [0, 0], "a connect closed while waiting made room for another: {ev:?}");
    // Two accepts make room for both (the kernel admits them at their
    // next SYN, in either order).
    let mut accepted = vec![net::accept(l).map_err(f)?, net::accept(l).map_err(f)?];
    let waited = [cs[2], late];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while events(&waited).iter().any(|e| e & out == 0) {
        ensure!(std::time::Instant::now() < deadline, "accepts made no room for the waiting ones");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let senders = [cs[0], cs[1], cs[2], late];
    for (i, &c) in senders.iter().enumerate() {
        net::send_all(c, &[100 + i as u8]).map_err(f)?;
    }
    accepted.push(net::accept(l).map_err(f)?);
    accepted.push(net::accept(l).map_err(f)?);
    let mut got = Vec::new();
    for s in accepted {
        set_timeout(s, 10)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        got.push(b[0]);
        net::close(s);
    }
    got.sort_unstable();
    ensure!(got == [100, 101, 102, 103], "the accepted connections carried {got:?}");
    cs[..3].iter().copied().chain([late, l]).for_each(net::close);
    Ok(())
}

/// Rounds of a renewed standby, one of which both ends hold open until
/// a line comes on stdin (after printing `held`), for a report to find
/// it; more rounds after it. Each round: one byte each way, the client
/// closes first, and connects again only once the server closed too
/// (told through a pipe), so that every round after the pair's first two
/// can go through the renewed standby.
pub(crate) fn renewal_held() -> Res {
    const ROUNDS: usize = 20;
    let (step_r, step_w) = crate::checks::readiness::pipe()?;
    let (l, pid) = forked_client(|port| {
        net::close(step_w);
        let round = |hold: bool| -> Res {
            let c = net::connect_loopback(false, port).map_err(f)?;
            set_timeout(c, 10)?;
            net::send_all(c, b"r").map_err(f)?;
            let mut b = [0u8; 1];
            net::read_exact(c, &mut b).map_err(f)?;
            if hold {
                use std::io::{BufRead, Write};
                println!("held");
                std::io::stdout().flush().map_err(|e| e.to_string())?;
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())?;
            }
            net::close(c);
            // SAFETY: a one-byte read into a live buffer.
            let n = unsafe { libc::read(step_r, b.as_mut_ptr().cast(), 1) };
            ensure!(n == 1, "the server did not say it closed ({n})");
            Ok(())
        };
        (0..ROUNDS).try_for_each(|_| round(false))?;
        round(true)?;
        (0..ROUNDS).try_for_each(|_| round(false))
    })?;
    net::close(step_r);
    for _ in 0..2 * ROUNDS + 1 {
        let s = net::accept(l).map_err(f)?;
        set_timeout(s, 30)?;
        let mut b = [0u8; 1];
        net::read_exact(s, &mut b).map_err(f)?;
        net::send_all(s, &b).map_err(f)?;
        expect_eof(s)?;
        net::close(s);
        // SAFETY: one byte from a live buffer.
        cvt("write", unsafe { libc::write(step_w, b.as_ptr().cast(), 1) }).map_err(f)?;
    }
    net::close(step_w);
    net::close(l);
    wait_child(pid)
}

/// A server whose two threads both block in accept on one listener (a
/// thread pool's acceptors), a forked client whose two threads each make
/// connections one after another (so that standbys are renewed under
/// both): each connection is served once, by either thread. Then one
/// `q` per acceptor, each acknowledged before the next is made: the
/// second must wake the thread still asleep (its listener's timeout turns
/// a lost wake-up into an error).
pub(crate) fn acceptor_threads() -> Res {
    const EACH: usize = 150;
    let (l, pid) = forked_client(|port| {
        let one = |what: u8| -> Res {
            let c = net::connect_loopback(false, port).map_err(f)?;
            set_timeout(c, 10)?;
            net::send_all(c, &[what]).map_err(f)?;
            let mut b = [0u8; 1];
            net::read_exact(c, &mut b).map_err(f)?;
            ensure!(b[0] == what.to_ascii_uppercase(), "{:?} answered {:?}", what as char, b[0] as char);
            net::close(c);
            Ok(())
        };
        std::thread::scope(|s| {
            let workers: Vec<_> =
                (0..2u8).map(|t| s.spawn(move || (0..EACH).try_for_each(|_| one(b'a' + t)))).collect();
            workers.into_iter().try_for_each(|w| w.join().map_err(|_| "client thread panicked".to_string())?)
        })?;
        one(b'q')?;
        one(b'q')
    })?;
    let acceptor = move || -> Result<usize, String> {
        let mut served = 0;
        loop {
            let s = net::accept(l).map_err(f)?;
            set_timeout(s, 10)?;
            let mut b = [0u8; 1];
            net::read_exact(s, &mut b).map_err(f)?;
            net::send_all(s, &[b[0].to_ascii_uppercase()]).map_err(f)?;
            net::close(s);
            if b[0] == b'q' {
                return Ok(served);
            }
            served += 1;
        }
    };
    let served = std::thread::scope(|s| {
        let threads: Vec<_> = (0..2).map(|_| s.spawn(acceptor)).collect();
        threads
            .into_iter()
            .map(|t| t.join().map_err(|_| "acceptor panicked".to_string())?)
            .sum::<Result<usize, String>>()
    })?;
    ensure!(served == 2 * EACH, "{served} connections served of {}", 2 * EACH);
    net::close(l);
    wait_child(pid)
}

/// A pre-fork server (a master that never accepts, two workers sharing
/// its listener: one in blocking accepts, one through epoll) and a client
/// in a process of its own: 200 connections one after another, then 200
/// from four threads at once, each answered with its round and the
/// worker's number. Then the master closes its copy (the listener goes on
/// in the workers), and a connection tells the worker that takes it to
/// close its copy and leave: the next 100 must all be the other's, and
/// the last tells that one to leave. Under ipcd most of these go through
/// standbys issued to either worker.
pub(crate) fn prefork_standbys() -> Res {
    const QUIT: u64 = u64::MAX;
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (workers, ready_r) = crate::checks::fork::prefork_children(l, 2, |index, _| {
        use crate::checks::readiness::{epoll_get, IN};
        // SAFETY: plain epoll creation.
        let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
        ipcd_monitor::bench::workload::epoll_add(ep, l, IN, 1)?;
        loop {
            if index == 1 {
                ensure!(epoll_get(ep, 10_000)? == [(IN, 1)], "worker 1: the listener never became readable");
            }
            let s = net::accept(l).map_err(f)?;
            set_timeout(s, 10)?;
            let mut m = [0u8; 8];
            net::read_exact(s, &mut m).map_err(f)?;
            let quit = u64::from_le_bytes(m) == QUIT;
            if quit {
                // Its copy goes before the answer: the client's next
                // connect must find the other worker.
                net::close(l);
            }
            net::send_all(s, &[&m[..], &[index]].concat()).map_err(f)?;
            net::close(s);
            if quit {
                return Ok(());
            }
        }
    })?;
    net::close(ready_r);
    let (step_r, step_w) = crate::checks::readiness::pipe()?;
    let (done_r, done_w) = crate::checks::readiness::pipe()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            net::close(l);
            net::close(step_r);
            net::close(done_w);
            let ask = |round: u64| -> Result<u8, String> {
                let c = net::connect_loopback(false, port).map_err(f)?;
                set_timeout(c, 10)?;
                net::send_all(c, &round.to_le_bytes()).map_err(f)?;
                let mut back = [0u8; 9];
                net::read_exact(c, &mut back).map_err(f)?;
                net::close(c);
                ensure!(back[..8] == round.to_le_bytes() && back[8] < 2, "round {round}: answered {back:?}");
                Ok(back[8])
            };
            (0..200).try_for_each(|r| ask(r).map(drop))?;
            std::thread::scope(|s| {
                let threads: Vec<_> = (0..4u64)
                    .map(|t| s.spawn(move || (0..50).try_for_each(|r| ask(1000 * (t + 1) + r).map(drop))))
                    .collect();
                threads.into_iter().try_for_each(|t| t.join().map_err(|_| "client thread panicked".to_string())?)
            })?;
            crate::checks::fork::say(step_w, b's')?;
            let mut b = [0u8; 1];
            net::read_exact(done_r, &mut b).map_err(f)?;
            let left = ask(QUIT)?;
            for r in 0..100 {
                ensure!(ask(10_000 + r)? != left, "worker {left} left, yet answered round {r} after");
            }
            ensure!(ask(QUIT)? != left, "worker {left} left, yet answered the last quit");
            Ok(())
        });
    }
    net::close(step_w);
    net::close(done_r);
    let mut b = [0u8; 1];
    net::read_exact(step_r, &mut b).map_err(f)?;
    net::close(l);
    crate::checks::fork::say(done_w, b'd')?;
    wait_child(pid)?;
    workers.into_iter().try_for_each(wait_child)?;
    [step_r, done_w].into_iter().for_each(net::close);
    Ok(())
}
