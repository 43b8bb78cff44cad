//! Exec checks: connections and listeners handed to a new image, inetd-
//! style stdio, fds renamed across exec.

use ipcd_monitor::bench::workload::set_nonblocking;
use ipcd_tests::data::Prng;
use ipcd_tests::net::{self, cvt};

use crate::*;

pub(crate) fn clear_cloexec(fd: i32) -> Res {
    // SAFETY: F_SETFD on our fd.
    cvt("fcntl", unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }).map_err(f)?;
    Ok(())
}

/// inetd style: a forked child execs a new program with the connection on
/// an inherited fd; a close-on-exec connection closes at the exec.
pub(crate) fn exec_handoff() -> Res {
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
pub(crate) fn exec_queued() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let c = connect_and_say(port, b'e')?;
    clear_cloexec(l)?;
    clear_cloexec(c)?;
    exec_probe(&["exec-accept", &l.to_string(), &c.to_string()])
}

/// A non-blocking listener kept across exec stays non-blocking in the new
/// image (under ipcd its kernel fd is always non-blocking, so the flag
/// must come from the old image's library).
pub(crate) fn exec_nonblocking() -> Res {
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    set_nonblocking(l, true)?;
    clear_cloexec(l)?;
    exec_probe(&["exec-listener-flag", &l.to_string(), &port.to_string(), "1"])
}

/// A blocking listener kept across an exec into an image that cannot
/// reach the monitor: it becomes a plain kernel listener, and a blocking
/// one, as the program left it (under ipcd its kernel fd was made
/// non-blocking, which the program must not see).
pub(crate) fn exec_unmonitored() -> Res {
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
pub(crate) fn exec_listener_flag(l: i32, port: u16, nonblocking: bool) -> Res {
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
pub(crate) fn exec_probe(args: &[&str]) -> Res {
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
pub(crate) fn exec_accept(l: i32, c: i32) -> Res {
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
pub(crate) fn exec_workers() -> Res {
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
pub(crate) const EXEC_WORKER_CONNS: usize = 4;

/// An exec'd worker of `exec_workers`: says it accepts on `l` (see
/// `serving`) and that it is ready on `ready`, then serves its share.
pub(crate) fn exec_worker(l: i32, ready: i32, index: u8) -> Res {
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
pub(crate) fn exec_child(fd: i32) -> Res {
    let (_, port) = net::name(fd, true).map_err(f)?;
    ensure!(port != 0, "peer name");
    let mut buf = [0u8; 4];
    net::read_exact(fd, &mut buf).map_err(f)?;
    ensure!(&buf == b"ping", "exec'd child got {buf:?}");
    ensure!(send(fd, b"pong", 0) == 4, "pong");
    Ok(())
}

/// stdio streams on a connection (`fdopen`), as C programs use them:
/// lines written with `fputs` and read back with `fgets` through the
/// streams' buffers (lines longer than a buffer too), `fileno` answering
/// each stream's fd, and `fclose` closing the connection (the peer's
/// `fgets` meets end of stream).
pub(crate) fn stdio() -> Res {
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
pub(crate) fn fd_renamed() -> Res {
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

/// A fork-per-connection relay that execs a helper (socat's `fork` with
/// `EXEC:`), each piece in its own process: a server accepts, forks the
/// relay and closes its copy; the relay forks a helper whose new image has
/// the connection close-on-exec (so it lets go of its share at once) and
/// exits; the relay then answers the client's requests, one chunk each.
/// The client must get every chunk, then end of stream (a share given
/// back twice, by the helper's image and again at its death, ended the
/// connection under the relay: the tail was lost).
pub(crate) fn exec_relay() -> Res {
    const CHUNKS: usize = 64;
    const CHUNK: usize = 16 * 1024;
    let byte = |k: usize, i: usize| (k * 31 + i * 7 + i / 4096) as u8;
    // The server listens itself (a listener a fork left shared takes no
    // ipcd connect until its holder accepts) and says its port.
    let (port_r, port_w) = pipe()?;
    let server = fork()?;
    if server == 0 {
        in_child(|| {
            net::close(port_r);
            let (l, port) = net::listen_loopback(false).map_err(f)?;
            // SAFETY: two bytes from a live buffer into our pipe.
            ensure!(unsafe { libc::write(port_w, port.to_le_bytes().as_ptr().cast(), 2) } == 2, "port");
            let s = net::accept(l).map_err(f)?;
            net::close(l);
            // The server closes its copy once the helper is forked, as
            // socat's parent may: then all three held the connection.
            let (forked_r, forked_w) = pipe()?;
            let relay = fork()?;
            if relay == 0 {
                in_child(|| {
                    net::close(forked_r);
                    // SAFETY: F_SETFD on our fd.
                    cvt("fcntl", unsafe { libc::fcntl(s, libc::F_SETFD, libc::FD_CLOEXEC) }).map_err(f)?;
                    let helper = fork()?;
                    if helper == 0 {
                        in_child(|| exec_probe(&["exec-exit"]));
                    }
                    pipe_byte(forked_w, true)?;
                    wait_child(helper)?;
                    let mut ask = [0u8; 1];
                    for k in 0..CHUNKS {
                        net::read_exact(s, &mut ask).map_err(f)?;
                        let chunk: Vec<u8> = (0..CHUNK).map(|i| byte(k, i)).collect();
                        net::send_all(s, &chunk).map_err(f)?;
                    }
                    net::close(s);
                    Ok(())
                });
            }
            // The relay's end alone: a relay that fails ends this read.
            net::close(forked_w);
            pipe_byte(forked_r, false)?;
            net::close(s);
            wait_child(relay)
        });
    }
    net::close(port_w);
    let mut p = [0u8; 2];
    // SAFETY: two bytes into a live buffer from our pipe.
    ensure!(unsafe { libc::read(port_r, p.as_mut_ptr().cast(), 2) } == 2, "the server's port: {}", errno());
    net::close(port_r);
    let c = net::connect_loopback(false, u16::from_le_bytes(p)).map_err(f)?;
    set_timeout(c, 10)?;
    let mut buf = vec![0u8; CHUNK];
    for k in 0..CHUNKS {
        net::send_all(c, b"?").map_err(f)?;
        let got = net::read_exact(c, &mut buf);
        ensure!(got.is_ok(), "chunk {k} of {CHUNKS}: {got:?}");
        ensure!(buf.iter().enumerate().all(|(i, &b)| b == byte(k, i)), "chunk {k} differs");
    }
    ensure!(net::read_some(c, &mut buf).map_err(f)? == 0, "no end of stream after the last chunk");
    wait_child(server)?;
    net::close(c);
    Ok(())
}

/// The new image of `spawn_paths`: reads one line from stdin and writes
/// it back to stdout, both the inherited connection.
pub(crate) fn echo_line() -> Res {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while line.last() != Some(&b'\n') {
        // SAFETY: a one-byte read into a live buffer.
        let n = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
        ensure!(n == 1, "stdin ended after {line:?} ({n}, errno {})", errno());
        line.push(b[0]);
    }
    // SAFETY: a write of a live buffer.
    let n = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    ensure!(n == line.len() as isize, "stdout took {n} (errno {})", errno());
    Ok(())
}

/// How `spawn_paths` starts the new program.
#[derive(Clone, Copy, Debug)]
enum Path {
    PosixSpawn,
    PosixSpawnp,
    Execl,
    Execlp,
    Execle,
    SyscallExecve,
}

/// Starts `probe echo-line` with `s` as its stdin and stdout through
/// `path`; returns the child's pid.
fn start_echo(path: Path, s: i32) -> Result<i32, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let exe = std::ffi::CString::new(exe.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
    let (arg0, arg1) = (c"probe", c"echo-line");
    let argv = [arg0.as_ptr().cast_mut(), arg1.as_ptr().cast_mut(), std::ptr::null_mut()];
    extern "C" {
        static environ: *const *mut libc::c_char;
    }
    match path {
        Path::PosixSpawn | Path::PosixSpawnp => {
            // As Rust's Command passes a socket as stdio: the socket is
            // close-on-exec, the file actions put it on 0 and 1.
            // SAFETY: F_SETFD on our fd.
            cvt("fcntl", unsafe { libc::fcntl(s, libc::F_SETFD, libc::FD_CLOEXEC) }).map_err(f)?;
            // SAFETY: file actions made, used and destroyed here; NUL-terminated
            // strings and null-terminated arrays.
            unsafe {
                let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
                cvt("init", libc::posix_spawn_file_actions_init(&mut fa)).map_err(f)?;
                cvt("adddup2", libc::posix_spawn_file_actions_adddup2(&mut fa, s, 0)).map_err(f)?;
                cvt("adddup2", libc::posix_spawn_file_actions_adddup2(&mut fa, s, 1)).map_err(f)?;
                let mut pid = 0;
                let spawn = if matches!(path, Path::PosixSpawn) { libc::posix_spawn } else { libc::posix_spawnp };
                let r = spawn(&mut pid, exe.as_ptr(), &fa, std::ptr::null(), argv.as_ptr(), environ);
                libc::posix_spawn_file_actions_destroy(&mut fa);
                ensure!(r == 0, "{path:?}: error {r}");
                Ok(pid)
            }
        }
        _ => {
            let pid = fork()?;
            if pid == 0 {
                in_child(|| {
                    // SAFETY: dup2 of our fd, then the exec call with
                    // NUL-terminated strings and null-terminated arrays.
                    unsafe {
                        cvt("dup2", libc::dup2(s, 0)).map_err(f)?;
                        cvt("dup2", libc::dup2(s, 1)).map_err(f)?;
                        let null = std::ptr::null::<libc::c_char>();
                        match path {
                            Path::Execl => libc::execl(exe.as_ptr(), arg0.as_ptr(), arg1.as_ptr(), null),
                            Path::Execlp => libc::execlp(exe.as_ptr(), arg0.as_ptr(), arg1.as_ptr(), null),
                            Path::Execle => libc::execle(exe.as_ptr(), arg0.as_ptr(), arg1.as_ptr(), null, environ),
                            _ => libc::syscall(libc::SYS_execve, exe.as_ptr(), argv.as_ptr(), environ) as i32,
                        };
                    }
                    Err(format!("{path:?} failed: errno {}", errno()))
                });
            }
            Ok(pid)
        }
    }
}

/// Every exec path keeps a connection, inetd style: `posix_spawn`,
/// `posix_spawnp` (the socket close-on-exec, put on the child's stdin and
/// stdout by file actions, as Rust's `Command` does), and a forked child's
/// `execl`, `execlp`, `execle` and raw `syscall(SYS_execve)`. The new
/// program echoes a line sent before it started; the parent then still
/// uses the connection both ways, and its close ends it for the peer once
/// the child is gone.
pub(crate) fn spawn_paths() -> Res {
    let paths = [Path::PosixSpawn, Path::PosixSpawnp, Path::Execl, Path::Execlp, Path::Execle, Path::SyscallExecve];
    for path in paths {
        let (c, s) = pair(false)?;
        set_timeout(c, 10)?;
        set_timeout(s, 10)?;
        let line = format!("through {path:?}\n");
        net::send_all(c, line.as_bytes()).map_err(f)?;
        let pid = start_echo(path, s)?;
        let mut got = vec![0u8; line.len()];
        net::read_exact(c, &mut got).map_err(|e| format!("{path:?}: the echo: {e:?}"))?;
        ensure!(got == line.as_bytes(), "{path:?}: echoed {:?}", String::from_utf8_lossy(&got));
        wait_child(pid).map_err(|e| format!("{path:?}: {e}"))?;
        net::send_all(s, b"parent").map_err(f)?;
        net::send_all(c, b"peer").map_err(f)?;
        let (mut a, mut b) = ([0u8; 6], [0u8; 4]);
        net::read_exact(c, &mut a).map_err(|e| format!("{path:?}: after the child: {e:?}"))?;
        net::read_exact(s, &mut b).map_err(|e| format!("{path:?}: after the child: {e:?}"))?;
        ensure!(&a == b"parent" && &b == b"peer", "{path:?}: after the child: {a:?} {b:?}");
        net::close(s);
        let mut end = [0u8; 1];
        let n = recv(c, &mut end, 0);
        ensure!(n == 0, "{path:?}: the peer read {n} (errno {}) after the last close, not EOF", errno());
        net::close(c);
    }
    Ok(())
}
