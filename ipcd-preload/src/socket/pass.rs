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

/// Before a `sendmsg` on `unix`, a socket that is not ours: every stream
/// end of ours among the fds it passes is handed to the monitor for the
/// receiver; every listener of ours becomes the kernel's.
///
/// # Safety
/// `msg` is the caller's valid msghdr.
pub(crate) unsafe fn before_send(unix: RawFd, msg: &libc::msghdr) {
    if msg.msg_controllen == 0 || msg.msg_control.is_null() {
        return;
    }
    // SAFETY: as the caller promises.
    for fd in unsafe { scm_rights(msg) } {
        if let Some(sock) = table::get(fd) {
            hand_over(fd, &sock, To::Over(unix));
        }
    }
}

/// Who an end handed over goes to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum To {
    /// Whoever is at the other end of this Unix socket: the monitor looks
    /// whether it can claim the end, and relays the end if not.
    Over(RawFd),
    /// A program this process starts, which runs the library.
    Spawned,
}

/// Our socket `sock` at `fd` is about to be held by another process too:
/// a stream end is handed to the monitor for that process to claim (or
/// relayed, if it cannot), a listener becomes the kernel's. True if there
/// is an end to claim.
pub(crate) fn hand_over(fd: RawFd, sock: &Socket, to: To) -> bool {
    let Some((conn, side)) = leaving(fd, sock) else { return false };
    // SAFETY: the program's fd, open for the length of this call (it is
    // about to be sent or inherited).
    let kernel = unsafe { BorrowedFd::borrow_raw(fd) };
    let answer = match to {
        To::Spawned => control::with(|c| c.call(&Request::Pass { conn, side }, &[kernel])),
        To::Over(unix) => {
            // SAFETY: the caller's Unix socket, open for this call.
            let unix = unsafe { BorrowedFd::borrow_raw(unix) };
            control::with(|c| c.call(&Request::PassOver { conn, side }, &[kernel, unix]))
        }
    };
    match answer {
        Some((Response::Ok, _)) => true,
        Some((Response::Relayed, _)) => {
            to_kernel(fd, sock);
            false
        }
        other => {
            give_back(sock);
            log!(Level::Warn, "connection {conn} (fd {fd}) passed without the monitor: {other:?}");
            false
        }
    }
}

/// Our socket `sock` at `fd` is about to be held by a program that cannot
/// map our ends (see `heir`): a stream end is relayed by the monitor over
/// the kernel socket under it, which every fd of it in this process is
/// from then on, as in the program; a listener becomes the kernel's.
pub(crate) fn demote(fd: RawFd, sock: &Socket) {
    if !connected_tcp(fd) {
        let Some((conn, side)) = leaving(fd, sock) else { return };
        // SAFETY: the program's fd, open for this call.
        let kernel = unsafe { BorrowedFd::borrow_raw(fd) };
        match control::with(|c| c.call(&Request::Demote { conn, side }, &[kernel])) {
            Some((Response::Relayed, _)) => {}
            other => {
                give_back(sock);
                log!(Level::Warn, "connection {conn} (fd {fd}) not relayed for a program without ipcd: {other:?}");
                return;
            }
        }
    }
    // Relayed now, or already by another holder's demotion (the kernel
    // socket is connected): the kernel's here too.
    to_kernel(fd, sock);
}

/// Before a stream end leaves: the receiver holds the kernel socket too,
/// so it is never reused, and a kept one's binding of ours goes; a
/// listener becomes the kernel's (`None`); for a stream, one more holder
/// in the segment for the receiver, and the end shared from now on. The
/// connection and side to tell the monitor.
fn leaving(fd: RawFd, sock: &Socket) -> Option<(u64, ipcd_proto::message::Side)> {
    sock.taint();
    reuse::unbind(fd, sock, &mut sock.lock());
    if setup::pass_listener(fd, sock) {
        return None;
    }
    let mut state = sock.lock();
    let State::Stream(st) = &mut *state else { return None };
    st.link.add_holder();
    st.link.set_shared();
    Some((st.info.conn, st.info.side))
}

/// The monitor took no holder for the receiver: the one `leaving` added
/// goes.
fn give_back(sock: &Socket) {
    if let State::Stream(st) = &mut *sock.lock() {
        st.link.release_holder();
    }
}

/// The end under `sock` is relayed: this process lets go of its share
/// (to the monitor, as a shared end's holder does) and every fd of it
/// here is the plain kernel socket from now on, connected to the relay.
fn to_kernel(fd: RawFd, sock: &Socket) {
    let stream = {
        let mut state = sock.lock();
        match std::mem::replace(&mut *state, State::Closed) {
            State::Stream(st) => st,
            other => {
                *state = other;
                return;
            }
        }
    };
    // No longer a holder here: a survivor judging the end after the
    // monitor's death must not wait for this process.
    stream.link.unname_self();
    crate::socket::stream::let_go(*stream, false, false);
    let mut fds = Vec::new();
    table::for_each_fd(|f, s| {
        if std::ptr::eq(Arc::as_ptr(s), sock) {
            fds.push(f);
        }
    });
    for f in fds {
        if let Some(s) = table::remove(f) {
            s.drop_fd();
        }
    }
    real::set_kernel_nonblocking(fd, sock.nonblocking());
    log!(Level::Debug, "fd {fd}: relayed by the monitor, a kernel socket from now on");
}

/// A TCP socket connected in the kernel: under an fd of ours, one whose
/// end another holder had relayed already.
fn connected_tcp(fd: RawFd) -> bool {
    peer_errno(fd) == 0
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
    peer_errno(fd) == libc::ENOTCONN
}

/// What `getpeername` says of `fd`: 0 if it has a peer, else the errno.
fn peer_errno(fd: RawFd) -> libc::c_int {
    // SAFETY: an all-zero sockaddr_storage is a valid out buffer.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the buffer and its length.
    match unsafe { real::getpeername(fd, (&raw mut ss).cast(), &mut len) } {
        0 => 0,
        _ => real::errno(),
    }
}
