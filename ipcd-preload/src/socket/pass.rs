//! ipcd connection ends passed to another process over a Unix socket
//! (`SCM_RIGHTS`), as Node's `cluster` primary passes every connection it
//! accepts to a worker. The kernel passes only the unconnected socket
//! under our fd; the connection itself goes through the monitor:
//!
//! - the sender, before its `sendmsg`, adds a holder to the end in the
//!   segment (as before a fork), marks the end shared, and tells the
//!   monitor (`Pass`, answered before the fd leaves, so a claim cannot
//!   overtake it), sending it that kernel socket;
//! - the receiver, after its `recvmsg`, asks the monitor about each
//!   unconnected TCP socket it received (`Claim`, sending the socket
//!   itself: holding it is the proof) and maps the end it gets as a
//!   shared one, as an exec'd image does.
//!
//! The sender usually closes its fd at once; the end lives on in the
//! receiver, and its FIN goes when the last holder closes.
//!
//! A listener of ours passed so becomes the kernel's in both processes
//! (see [`setup::pass_listener`]).

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Arc;

use ipcd_proto::message::{Request, Response};

use crate::control;
use crate::socket::{reuse, setup, table};
use crate::socket::{Socket, State};
use crate::sys::log::{log, Level};
use crate::sys::real;
use ipcd_proto::channel::scm_rights;

/// Before a `sendmsg` on a socket that is not ours: every stream end of
/// ours among the fds it passes is handed to the monitor for the receiver;
/// every listener of ours becomes the kernel's.
///
/// # Safety
/// `msg` is the caller's valid msghdr.
pub(crate) unsafe fn before_send(msg: &libc::msghdr) {
    if msg.msg_controllen == 0 || msg.msg_control.is_null() {
        return;
    }
    // SAFETY: as the caller promises.
    for fd in unsafe { scm_rights(msg) } {
        if let Some(sock) = table::get(fd) {
            hand_over(fd, &sock);
        }
    }
}

/// Our socket `sock` at `fd` is about to be held by another process too:
/// a stream end is handed to the monitor for that process to claim, a
/// listener becomes the kernel's. True if there is an end to claim.
pub(crate) fn hand_over(fd: RawFd, sock: &Socket) -> bool {
    // The receiver holds the kernel socket too: never reused, and a kept
    // one's binding of ours goes.
    sock.taint();
    reuse::unbind(fd, sock, &mut sock.lock());
    if setup::pass_listener(fd, sock) {
        return false;
    }
    let mut state = sock.lock();
    let State::Stream(st) = &mut *state else { return false };
    let (conn, side) = (st.info.conn, st.info.side);
    st.link.add_holder();
    st.link.set_shared();
    // SAFETY: the program's fd, open for the length of this call (it is
    // about to be sent or inherited).
    let kernel = unsafe { BorrowedFd::borrow_raw(fd) };
    match control::with(|c| c.call(&Request::Pass { conn, side }, &[kernel])) {
        Some((Response::Ok, _)) => true,
        other => {
            // No receiver will hold it: take the holder back.
            st.link.release_holder();
            log!(Level::Warn, "connection {conn} (fd {fd}) passed without the monitor: {other:?}");
            false
        }
    }
}

/// After a `recvmsg` on a socket that is not ours: each unconnected TCP
/// socket received may carry an ipcd connection end; the monitor says.
///
/// # Safety
/// `msg` is the caller's valid msghdr, just filled by the kernel.
pub(crate) unsafe fn after_recv(msg: &libc::msghdr) {
    if msg.msg_controllen == 0 || msg.msg_control.is_null() {
        return;
    }
    // SAFETY: as the caller promises.
    for fd in unsafe { scm_rights(msg) } {
        if table::get(fd).is_none() && unconnected_tcp(fd) {
            claim(fd);
        }
    }
}

/// Asks the monitor for the end passed with the kernel socket at `fd`
/// (holding it is the proof) and makes `fd` that end, shared.
pub(crate) fn claim(fd: RawFd) -> Option<Arc<Socket>> {
    // SAFETY: an fd this process holds, open for this call.
    let received = unsafe { BorrowedFd::borrow_raw(fd) };
    let answer = control::with(|c| c.call(&Request::Claim, &[received]));
    let Some((Response::Reopened(info), fds)) = answer else { return None };
    setup::adopt(fd, setup::stream_from(info, fds.into_vec(), true)?)
}

/// A TCP socket that is neither listening nor connected: what the kernel
/// keeps under an fd of ours.
fn unconnected_tcp(fd: RawFd) -> bool {
    let stream_ip =
        matches!(real::int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN), Some(libc::AF_INET | libc::AF_INET6))
            && real::int_opt(fd, libc::SOL_SOCKET, libc::SO_TYPE) == Some(libc::SOCK_STREAM)
            && real::int_opt(fd, libc::SOL_SOCKET, libc::SO_ACCEPTCONN) == Some(0);
    if !stream_ip {
        return false;
    }
    // SAFETY: an all-zero sockaddr_storage is a valid out buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and its length.
    let r = unsafe { real::getpeername(fd, (&raw mut ss).cast(), &mut len) };
    r != 0 && real::errno() == libc::ENOTCONN
}
