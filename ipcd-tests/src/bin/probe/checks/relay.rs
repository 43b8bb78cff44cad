//! Receivers that cannot run ipcd: a live connection handed mid-stream to
//! a static program, to one started without `LD_PRELOAD`, or over a Unix
//! socket to a process not under ipcd, echoes byte-exact both ways and
//! ends as Linux ends it. The echo program is `relay_echo` (C; its paths
//! come in `IPCD_TEST_ECHO_STATIC` and `IPCD_TEST_ECHO_DYNAMIC`). Under
//! ipcd, the monitor's report shows the connection relayed meanwhile.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};

use ipcd_tests::data::Prng;
use ipcd_tests::net;

use super::exec::clear_cloexec;
use super::pass::send_fd;
use crate::*;

/// What the client sends after the hand-over, beyond what waits unread.
const STREAM_BYTES: usize = 3 << 20;

fn helper(var: &str) -> Result<String, String> {
    std::env::var(var).map_err(|_| format!("{var} is not set (the path of relay_echo)"))
}

/// The environment without `LD_PRELOAD`, as `env -u LD_PRELOAD` leaves it.
fn env_without_preload() -> Vec<CString> {
    std::env::vars_os()
        .filter(|(k, _)| k != "LD_PRELOAD")
        .filter_map(|(k, v)| {
            let mut kv = k.into_encoded_bytes();
            kv.push(b'=');
            kv.extend(v.into_encoded_bytes());
            CString::new(kv).ok()
        })
        .collect()
}

/// A connection with bytes in flight both ways: the server end `s` has
/// `pending` unread from the client `c` when it is handed over.
fn mid_stream() -> Result<(i32, i32, Vec<u8>), String> {
    let (c, s) = pair(false)?;
    set_timeout(c, 20)?;
    net::send_all(c, b"hello").map_err(f)?;
    let mut got = [0u8; 5];
    net::read_exact(s, &mut got).map_err(f)?;
    net::send_all(s, b"world").map_err(f)?;
    net::read_exact(c, &mut got).map_err(f)?;
    ensure!(&got == b"world", "before the hand-over: {got:?}");
    let pending: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    net::send_all(c, &pending).map_err(f)?;
    Ok((c, s, pending))
}

/// The client's side once the echo program holds the server end: streams
/// seeded bytes while reading the echo (the unread bytes first), checks
/// every byte, asks the monitor whether it relays the connection (under
/// ipcd), then half-closes and expects the echo program's FIN.
fn echo_through(c: i32, pending: &[u8], what: &str) -> Res {
    let mut data = vec![0u8; STREAM_BYTES];
    Prng::new(0x5eed).fill(&mut data);
    let writer = {
        let data = data.clone();
        std::thread::spawn(move || net::send_all(c, &data).map_err(f))
    };
    let mut want = pending.to_vec();
    want.extend_from_slice(&data);
    let mut got = vec![0u8; want.len()];
    net::read_exact(c, &mut got).map_err(|e| format!("{what}: the echo: {e:?}"))?;
    writer.join().map_err(|_| "writer panicked".to_string())??;
    if let Some(at) = got.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(format!("{what}: the echo differs at byte {at} of {}", want.len()));
    }
    relayed_in_report(what)?;
    // SAFETY: shutdown of our own socket.
    ensure!(unsafe { libc::shutdown(c, libc::SHUT_WR) } == 0, "shutdown: {}", errno());
    let mut end = [0u8; 1];
    let n = recv(c, &mut end, 0);
    ensure!(n == 0, "{what}: after the half-close, read {n} (errno {}), not the echo program's FIN", errno());
    net::close(c);
    Ok(())
}

/// Under ipcd (`IPCD_SOCKET` set): the monitor lists a relayed end.
fn relayed_in_report(what: &str) -> Res {
    let Ok(socket) = std::env::var("IPCD_SOCKET") else { return Ok(()) };
    let report = ipcd_monitor::client::MonitorClient::connect(&socket)
        .and_then(|mut m| m.status())
        .map_err(|e| format!("{what}: ipcd status: {e}"))?;
    let relayed = report.connections.iter().any(|c| c.states.contains(&ipcd_proto::EndState::Relayed));
    ensure!(relayed, "{what}: no connection is shown relayed: {:?}", report.connections);
    Ok(())
}

/// Forks a child that execs `path MODE` with `s` as its fds 0 and 1, with
/// `envp` (or this environment); the parent closes its copy.
fn exec_echo(s: i32, path: &str, mode: &std::ffi::CStr, envp: Option<Vec<CString>>) -> Result<i32, String> {
    clear_cloexec(s)?;
    let prog = CString::new(path).map_err(|e| e.to_string())?;
    let args = [prog.clone(), mode.to_owned()];
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let envp = envp.unwrap_or_else(|| {
        let mut all = env_without_preload();
        if let Ok(p) = std::env::var("LD_PRELOAD") {
            all.extend(CString::new(format!("LD_PRELOAD={p}")));
        }
        all
    });
    let mut env: Vec<*const libc::c_char> = envp.iter().map(|e| e.as_ptr()).collect();
    env.push(std::ptr::null());
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            // SAFETY: dup2 onto stdin and stdout, then execve with
            // null-terminated arrays that outlive the call.
            unsafe {
                libc::dup2(s, 0);
                libc::dup2(s, 1);
                libc::execve(prog.as_ptr(), argv.as_ptr(), env.as_ptr());
            }
            Err(format!("execve {path}: {}", errno()))
        });
    }
    net::close(s);
    Ok(pid)
}

/// A static program exec'd (inetd style) with the connection on stdio.
pub(crate) fn relay_exec_static() -> Res {
    let path = helper("IPCD_TEST_ECHO_STATIC")?;
    let (c, s, pending) = mid_stream()?;
    let pid = exec_echo(s, &path, c"stdio", None)?;
    echo_through(c, &pending, "static exec")?;
    wait_child(pid)
}

/// A dynamic program exec'd with `LD_PRELOAD` gone from its environment.
pub(crate) fn relay_exec_env() -> Res {
    let path = helper("IPCD_TEST_ECHO_DYNAMIC")?;
    let (c, s, pending) = mid_stream()?;
    let pid = exec_echo(s, &path, c"stdio", Some(env_without_preload()))?;
    echo_through(c, &pending, "exec without LD_PRELOAD")?;
    wait_child(pid)
}

/// `std::process::Command` (posix_spawn) with a cleared environment, the
/// connection as the child's stdin and stdout.
pub(crate) fn relay_spawn_env() -> Res {
    let path = helper("IPCD_TEST_ECHO_DYNAMIC")?;
    let (c, s, pending) = mid_stream()?;
    // SAFETY: a dup of our socket, owned by the Stdio that closes it
    // after the spawn (the other is `s` itself).
    let (i, o) = unsafe { (OwnedFd::from_raw_fd(libc::dup(s)), OwnedFd::from_raw_fd(s)) };
    let mut child = Command::new(&path)
        .arg("stdio")
        .env_clear()
        .stdin(Stdio::from(i))
        .stdout(Stdio::from(o))
        .spawn()
        .map_err(|e| format!("spawn {path}: {e}"))?;
    echo_through(c, &pending, "spawn with a cleared environment")?;
    let st = child.wait().map_err(|e| e.to_string())?;
    ensure!(st.success(), "the echo program: {st}");
    Ok(())
}

/// Passed over a Unix socket to a process not under ipcd.
pub(crate) fn relay_pass() -> Res {
    let path = helper("IPCD_TEST_ECHO_DYNAMIC")?;
    let dir = std::env::temp_dir().join(format!("ipcd-relay-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let listener = std::os::unix::net::UnixListener::bind(&dir).map_err(|e| e.to_string())?;
    let (c, s, pending) = mid_stream()?;
    let mut child = Command::new(&path)
        .arg("recv")
        .arg(&dir)
        .env_remove("LD_PRELOAD")
        .spawn()
        .map_err(|e| format!("spawn {path}: {e}"))?;
    let (u, _) = listener.accept().map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&dir);
    send_fd(std::os::fd::AsRawFd::as_raw_fd(&u), s)?;
    net::close(s);
    drop(u);
    echo_through(c, &pending, "passed to a process without ipcd")?;
    let st = child.wait().map_err(|e| e.to_string())?;
    ensure!(st.success(), "the echo program: {st}");
    Ok(())
}

/// The static program reads one byte and exits with the rest unread: the
/// kernel resets its connection, and the peer reads `ECONNRESET`, through
/// the relay as on Linux.
pub(crate) fn relay_reset() -> Res {
    let path = helper("IPCD_TEST_ECHO_STATIC")?;
    let (c, s, _pending) = mid_stream()?;
    let pid = exec_echo(s, &path, c"reset", None)?;
    wait_child(pid)?;
    let mut buf = [0u8; 4096];
    let n = recv(c, &mut buf, 0);
    ensure!(n < 0 && errno() == libc::ECONNRESET, "read {n} (errno {}), not ECONNRESET", errno());
    net::close(c);
    Ok(())
}
