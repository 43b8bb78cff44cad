//! TCP through plain libc calls, exactly as an unmodified C program makes
//! them (under the preload library these are the interposed symbols).

use std::io;

/// A failed call: its name and errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fail {
    /// The call.
    pub call: &'static str,
    /// errno.
    pub errno: i32,
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} failed: {}", self.call, io::Error::from_raw_os_error(self.errno))
    }
}

/// Checks a libc return value (negative: failure with errno).
pub fn cvt<T: Copy + PartialOrd + Default>(call: &'static str, r: T) -> Result<T, Fail> {
    if r < T::default() {
        Err(Fail { call, errno: io::Error::last_os_error().raw_os_error().unwrap_or(0) })
    } else {
        Ok(r)
    }
}

/// The loopback address of a family as a sockaddr, with `port`.
pub fn loopback(v6: bool, port: u16) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    if v6 {
        let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
        // SAFETY: storage is large and aligned enough for sockaddr_in6.
        unsafe {
            (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
            (*sin6).sin6_port = port.to_be();
            (*sin6).sin6_addr.s6_addr[15] = 1;
        }
        (ss, std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t)
    } else {
        let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
        // SAFETY: storage is large and aligned enough for sockaddr_in.
        unsafe {
            (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
            (*sin).sin_port = port.to_be();
            (*sin).sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        }
        (ss, std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t)
    }
}

/// A TCP socket of the loopback family.
pub fn tcp_socket(v6: bool) -> Result<i32, Fail> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: plain socket creation.
    cvt("socket", unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
}

/// Listens on loopback with a kernel-chosen port; returns (fd, port).
pub fn listen_loopback(v6: bool) -> Result<(i32, u16), Fail> {
    let fd = tcp_socket(v6)?;
    let (ss, len) = loopback(v6, 0);
    // SAFETY: a sockaddr of `len` bytes.
    cvt("bind", unsafe { libc::bind(fd, (&raw const ss).cast(), len) })?;
    // SAFETY: a bound socket.
    cvt("listen", unsafe { libc::listen(fd, 1024) })?;
    let port = local_port(fd)?;
    Ok((fd, port))
}

/// `getsockname`'s port.
pub fn local_port(fd: i32) -> Result<u16, Fail> {
    Ok(name(fd, false)?.1)
}

/// `getsockname` (`peer` false) or `getpeername` as (ip bytes, port).
pub fn name(fd: i32, peer: bool) -> Result<(Vec<u8>, u16), Fail> {
    // SAFETY: zeroed out-storage and its size.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, (&raw mut ss).cast(), &mut len)
        } else {
            libc::getsockname(fd, (&raw mut ss).cast(), &mut len)
        }
    };
    cvt(if peer { "getpeername" } else { "getsockname" }, r)?;
    Ok(match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the kernel (or ipcd) wrote a sockaddr_in.
            let sin = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in>() };
            (sin.sin_addr.s_addr.to_ne_bytes().to_vec(), u16::from_be(sin.sin_port))
        }
        _ => {
            // SAFETY: the kernel (or ipcd) wrote a sockaddr_in6.
            let sin6 = unsafe { &*(&raw const ss).cast::<libc::sockaddr_in6>() };
            (sin6.sin6_addr.s6_addr.to_vec(), u16::from_be(sin6.sin6_port))
        }
    })
}

/// Connects a new socket to loopback `port`.
pub fn connect_loopback(v6: bool, port: u16) -> Result<i32, Fail> {
    let fd = tcp_socket(v6)?;
    let (ss, len) = loopback(v6, port);
    // SAFETY: a sockaddr of `len` bytes.
    cvt("connect", unsafe { libc::connect(fd, (&raw const ss).cast(), len) })?;
    Ok(fd)
}

/// Accepts one connection.
pub fn accept(lfd: i32) -> Result<i32, Fail> {
    // SAFETY: null address buffers are allowed.
    cvt("accept", unsafe { libc::accept4(lfd, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) })
}

/// Writes all of `buf` (with `send`, so a gone peer fails instead of killing us).
pub fn send_all(fd: i32, mut buf: &[u8]) -> Result<(), Fail> {
    while !buf.is_empty() {
        // SAFETY: a live buffer.
        let n = cvt("send", unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })?;
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Reads up to `buf.len()` bytes with `read`.
pub fn read_some(fd: i32, buf: &mut [u8]) -> Result<usize, Fail> {
    // SAFETY: a live buffer.
    Ok(cvt("read", unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) })? as usize)
}

/// Reads exactly `buf.len()` bytes; an early end of stream is an error.
pub fn read_exact(fd: i32, buf: &mut [u8]) -> Result<(), Fail> {
    let mut got = 0;
    while got < buf.len() {
        let n = read_some(fd, &mut buf[got..])?;
        if n == 0 {
            return Err(Fail { call: "read (early end of stream)", errno: 0 });
        }
        got += n;
    }
    Ok(())
}

/// Closes an fd.
pub fn close(fd: i32) {
    // SAFETY: closes an fd the caller owns.
    unsafe { libc::close(fd) };
}
