//! SCM_RIGHTS checks: a connection or a listener passed to another process.

use ipcd_tests::net::{self, cvt};

use crate::*;

/// A one-byte message over `byte`, with `space` for its control data.
pub(crate) fn one_byte_msg(byte: &mut [u8; 1], iov: &mut libc::iovec, space: &mut [u64; 4]) -> libc::msghdr {
    *iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
    // SAFETY: an all-zero msghdr is a valid empty one.
    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
    m.msg_iov = iov;
    m.msg_iovlen = 1;
    m.msg_control = space.as_mut_ptr().cast();
    m.msg_controllen = size_of_val(space);
    m
}

/// Sends `fd` over the Unix socket `u` (`SCM_RIGHTS`, one byte of data).
pub(crate) fn send_fd(u: i32, fd: i32) -> Res {
    let (mut byte, mut space) = (*b"f", [0u64; 4]);
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut m = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: the CMSG macros stay within `space`, which outlives `m`.
    unsafe {
        m.msg_controllen = libc::CMSG_SPACE(size_of::<i32>() as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(size_of::<i32>() as u32) as usize;
        libc::CMSG_DATA(c).cast::<i32>().write_unaligned(fd);
        ensure!(libc::sendmsg(u, &m, 0) == 1, "sendmsg with SCM_RIGHTS: {}", errno());
    }
    Ok(())
}

/// Accepts one connection on `l`, echoes its one byte and closes it.
pub(crate) fn echo_one(l: i32) -> Res {
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    ensure!(send(s, &b, 0) == 1, "echo: {}", errno());
    net::close(s);
    Ok(())
}

/// A connected pair of Unix stream sockets, to pass fds over.
pub(crate) fn unix_pair() -> Result<[i32; 2], String> {
    let mut u = [0i32; 2];
    // SAFETY: a two-int array.
    ensure!(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_STREAM, 0, u.as_mut_ptr()) } == 0, "socketpair");
    Ok(u)
}

/// Receives one fd sent by `send_fd` over `u`.
pub(crate) fn recv_fd(u: i32) -> Result<i32, String> {
    let (mut byte, mut space) = ([0u8; 1], [0u64; 4]);
    let mut iov = libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 };
    let mut m = one_byte_msg(&mut byte, &mut iov, &mut space);
    // SAFETY: buffers that outlive `m`; the CMSG macros stay within `space`.
    unsafe {
        ensure!(libc::recvmsg(u, &mut m, 0) == 1, "recvmsg with SCM_RIGHTS: {}", errno());
        let c = libc::CMSG_FIRSTHDR(&m);
        ensure!(!c.is_null() && (*c).cmsg_type == libc::SCM_RIGHTS, "no fd received");
        Ok(libc::CMSG_DATA(c).cast::<i32>().read_unaligned())
    }
}

/// A connection's end passed to another process over a Unix socket, as
/// Node's cluster primary passes what it accepts to a worker: the sender
/// closes its fd at once, the receiver serves the connection, and its
/// close is the one the peer sees.
pub(crate) fn pass_fd() -> Res {
    let u = unix_pair()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let s = recv_fd(u[1])?;
            let mut buf = [0u8; 16];
            let n = recv(s, &mut buf, 0);
            ensure!(n == 4 && &buf[..4] == b"ping", "the passed end read {n}");
            ensure!(send(s, b"pong", 0) == 4, "send on the passed end: {}", errno());
            net::close(s);
            Ok(())
        });
    }
    // Made after the fork: only the receiver gets the end, through the socket.
    let (c, s) = pair(false)?;
    send_fd(u[0], s)?;
    net::close(s);
    ensure!(send(c, b"ping", 0) == 4, "send to the passed end: {}", errno());
    let mut buf = [0u8; 16];
    let n = recv(c, &mut buf, 0);
    ensure!(n == 4 && &buf[..4] == b"pong", "the answer from the passed end: {n}");
    wait_child(pid)?;
    let mut fds = [pollfd(c, libc::POLLIN)];
    ensure!(poll_n(&mut fds, 5000) == 1, "no end of stream after the receiver closed");
    ensure!(recv(c, &mut buf, 0) == 0, "recv after the receiver closed: {}", errno());
    for fd in [c, u[0], u[1]] {
        net::close(fd);
    }
    Ok(())
}

/// The `O_NONBLOCK` of `fd` as `fcntl` reports it.
pub(crate) fn nonblocking(fd: i32) -> Result<bool, String> {
    // SAFETY: F_GETFL takes no argument.
    let fl = cvt("fcntl(F_GETFL)", unsafe { libc::fcntl(fd, libc::F_GETFL) }).map_err(f)?;
    Ok(fl & libc::O_NONBLOCK != 0)
}

/// A blocking listener passed to another process over a Unix socket, as
/// Python's forkserver hands a worker the socket its parent listened on:
/// the sender keeps its copy and never accepts, the receiver accepts in
/// blocking calls and must find its copy blocking, and every connect from
/// the sender must be served by it. A connection made before the pass is
/// the sender's to accept after it (the receiver starts only when told).
/// A child that ended before the pass had forked the sender first
/// (Python's forkserver is such a child), so the listener has been
/// shared once.
pub(crate) fn pass_listener() -> Res {
    const CONNECTS: u8 = 5;
    let u = unix_pair()?;
    let pid = fork()?;
    if pid == 0 {
        in_child(|| {
            let l = recv_fd(u[1])?;
            ensure!(!nonblocking(l)?, "the received listener is non-blocking");
            let mut go = [0u8; 1];
            net::read_exact(u[1], &mut go).map_err(f)?;
            // Accepts that never come fail the check instead of hanging it.
            set_timeout(l, 10)?;
            (0..CONNECTS).try_for_each(|_| echo_one(l))
        });
    }
    // Made after the fork: the receiver gets it through the socket only.
    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let gone = fork()?;
    if gone == 0 {
        in_child(|| Ok(()));
    }
    wait_child(gone)?;
    let early = connect_and_say(port, b'e')?;
    send_fd(u[0], l)?;
    ensure!(!nonblocking(l)?, "the sender's listener became non-blocking");
    set_timeout(l, 10)?;
    let s = net::accept(l).map_err(f)?;
    let mut b = [0u8; 1];
    net::read_exact(s, &mut b).map_err(f)?;
    ensure!(b == *b"e" && send(s, b"E", 0) == 1, "the early connection: got {b:?}, echo: {}", errno());
    ensure!(recv(early, &mut b, 0) == 1 && b == *b"E", "the early connection's answer: {b:?}");
    for fd in [s, early] {
        net::close(fd);
    }
    say(u[0], b'g')?;
    for k in 0..CONNECTS {
        let c = connect_and_say(port, b'a' + k)?;
        let mut b = [0u8; 1];
        ensure!(recv(c, &mut b, 0) == 1, "connection {k} was not served: {}", errno());
        ensure!(b[0] == b'a' + k, "connection {k} got {b:?}");
        net::close(c);
    }
    wait_child(pid)?;
    for fd in [l, u[0], u[1]] {
        net::close(fd);
    }
    Ok(())
}
