//! systemd's readiness protocol (`sd_notify(3)`): when the service manager
//! set `NOTIFY_SOCKET`, one datagram `READY=1` to it once the monitor
//! answers, so `Type=notify` units start what depends on them only then.
//! By hand: the protocol is one `sendto`, not worth a dependency.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (e.g. `READY=1`) to the service manager. `Ok(false)` when
/// not run by one (no `NOTIFY_SOCKET`).
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return Ok(false) };
    let bytes = path.as_encoded_bytes();
    // `@name` is an abstract socket (the leading NUL written as '@').
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddr::from_abstract_name(name)?,
        None => SocketAddr::from_pathname(&path)?,
    };
    UnixDatagram::unbound()?.send_to_addr(state.as_bytes(), &addr)?;
    Ok(true)
}
