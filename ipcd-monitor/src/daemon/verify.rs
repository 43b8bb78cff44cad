//! What the monitor checks with the kernel rather than believe a client:
//! a listening socket's address and state, a socket's inode, a pid's parent.

use ipcd_proto::SockAddr;
use std::os::fd::{AsRawFd, OwnedFd};

/// The parent pid of `pid`, from /proc.
pub(super) fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: skip past the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// The inode of socket `fd` (None if it is not a socket): the same number in every
/// process that holds the socket.
pub(super) fn socket_inode(fd: &OwnedFd) -> Option<u64> {
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a live fd and a writable stat.
    let ok = unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0;
    (ok && st.st_mode & libc::S_IFMT == libc::S_IFSOCK).then_some(st.st_ino)
}

/// Proves the passed fd is a listening TCP socket bound to `claimed`.
pub(super) fn verify_listening_socket(fd: &OwnedFd, claimed: &SockAddr) -> Result<(), &'static str> {
    let opt = |level, name| -> Result<libc::c_int, &'static str> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v`/`len` describe a writable int.
        let r = unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, (&raw mut v).cast(), &mut len) };
        if r < 0 {
            Err("not a socket")
        } else {
            Ok(v)
        }
    };
    if opt(libc::SOL_SOCKET, libc::SO_TYPE)? != libc::SOCK_STREAM
        || opt(libc::SOL_SOCKET, libc::SO_PROTOCOL)? != libc::IPPROTO_TCP
    {
        return Err("not a TCP socket");
    }
    if opt(libc::SOL_SOCKET, libc::SO_ACCEPTCONN)? != 1 {
        return Err("not listening");
    }
    // SAFETY: an all-zero sockaddr_storage is valid; getsockname fills it.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
    // SAFETY: `ss`/`len` describe a writable buffer.
    if unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut ss).cast(), &mut len) } < 0 {
        return Err("getsockname failed");
    }
    // SAFETY: the kernel wrote `len` bytes into `ss`.
    let bound = unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }.ok_or("not an inet socket")?;
    let same = match (bound, *claimed) {
        (SockAddr::V4 { ip: a, port: p }, SockAddr::V4 { ip: b, port: q }) => a == b && p == q,
        (SockAddr::V6 { ip: a, port: p, .. }, SockAddr::V6 { ip: b, port: q, .. }) => a == b && p == q,
        _ => false,
    };
    if same {
        Ok(())
    } else {
        Err("bound elsewhere")
    }
}

/// Whether `fd` is an eventfd: a bell a process passes that connectors
/// will write to, which must be one (a pipe or file there would take
/// their writes, or block them).
pub(super) fn is_eventfd(fd: &OwnedFd) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .is_ok_and(|t| t.as_os_str() == "anon_inode:[eventfd]")
}
