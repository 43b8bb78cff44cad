//! A program under a tight fd limit holds as many connections as on the
//! kernel: an ipcd connection costs its socket's fd and nothing more
//! (its sleepers are woken through doorbells per thread, not per
//! connection).

use ipcd_tests::net::{self, cvt};

use crate::*;

/// Fds the process may still open under the limit it is given.
const ROOM: u64 = 64;
/// Fds ipcd may take beside the connections' own: its channel to the
/// monitor, this thread's doorbell, the copy of the server's.
const OURS: usize = 3;

/// A server process accepts and echoes one byte on each connection; this
/// one lowers its fd limit (soft and hard, as `ulimit -n` does) to what
/// it has open plus [`ROOM`], then connects until `socket` or `connect`
/// fails with EMFILE. It must hold at least `ROOM - OURS` connections (the
/// kernel holds `ROOM`), each of which still echoes.
pub(crate) fn fd_count() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let (stop_r, stop_w) = pipe()?;
    let server = fork()?;
    if server == 0 {
        in_child(|| {
            net::close(stop_w);
            serve_until(l, stop_r)
        });
    }
    net::close(l);
    net::close(stop_r);
    let held = connect_until_emfile(port);
    net::close(stop_w);
    wait_child(server)?;
    let n = held?;
    ensure!(n + OURS >= ROOM as usize, "held {n} connections under a limit that leaves room for {ROOM}");
    Ok(())
}

/// Lowers the limit, connects until EMFILE, checks every connection
/// echoes, closes them; how many it held.
fn connect_until_emfile(port: u16) -> Result<usize, String> {
    let open = std::fs::read_dir("/proc/self/fd").map_err(|e| e.to_string())?.count() as u64;
    let low = libc::rlimit { rlim_cur: open + ROOM, rlim_max: open + ROOM };
    // SAFETY: a live rlimit; lowering both limits needs no privilege.
    cvt("setrlimit", unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }).map_err(f)?;
    let mut held = Vec::new();
    let failed = loop {
        match net::connect_loopback(false, port) {
            Ok(c) => held.push(c),
            Err(e) => break e,
        }
        ensure!(held.len() <= 2 * ROOM as usize, "no limit reached after {} connections", held.len());
    };
    ensure!(failed.errno == libc::EMFILE, "connection {} failed: {failed}, not EMFILE", held.len());
    for (i, &c) in held.iter().enumerate() {
        net::send_all(c, &[i as u8]).map_err(f)?;
        let mut b = [0u8; 1];
        net::read_exact(c, &mut b).map_err(f)?;
        ensure!(b[0] == i as u8, "connection {i} echoed {}", b[0]);
    }
    for &c in &held {
        net::close(c);
    }
    Ok(held.len())
}

/// Accepts connections and echoes one byte on each, keeping them all,
/// until `stop` ends.
fn serve_until(l: i32, stop: i32) -> Res {
    let mut conns: Vec<i32> = Vec::new();
    loop {
        let mut fds = vec![libc::pollfd { fd: l, events: libc::POLLIN, revents: 0 }];
        fds.push(libc::pollfd { fd: stop, events: libc::POLLIN, revents: 0 });
        fds.extend(conns.iter().map(|&c| libc::pollfd { fd: c, events: libc::POLLIN, revents: 0 }));
        // SAFETY: live pollfds.
        cvt("poll", unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10_000) } as i32).map_err(f)?;
        if fds[1].revents != 0 {
            break;
        }
        if fds[0].revents != 0 {
            conns.push(net::accept(l).map_err(f)?);
        }
        for p in &fds[2..] {
            if p.revents & libc::POLLIN != 0 {
                let mut b = [0u8; 1];
                if recv(p.fd, &mut b, 0) == 1 {
                    net::send_all(p.fd, &b).map_err(f)?;
                }
            }
        }
    }
    for c in conns {
        net::close(c);
    }
    Ok(())
}
