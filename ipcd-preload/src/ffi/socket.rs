//! Interposed socket life-cycle and option calls: socket, listen, accept,
//! connect, close, shutdown, the dup family, fcntl, ioctl, socket options
//! and names.

use std::sync::Arc;

use ipcd_proto::Phase;
use libc::{c_int, c_void, sockaddr, socklen_t};

use super::fail;
use crate::close::{forget, release, release_keeping};
use crate::socket::setup::{self, Connect};
use crate::socket::{options, reuse, stream, table};
use crate::socket::{Socket, State};
use crate::sys::{guarded, real, user};

/// Interposed `socket(2)`: TCP sockets of IPv4 and IPv6 become ours (still
/// real kernel sockets underneath, maybe one kept for reuse); everything
/// else is untouched.
///
/// # Safety
/// As for `socket(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let flags = ty & !0xf;
    let tcp = matches!(domain, libc::AF_INET | libc::AF_INET6)
        && ty & 0xf == libc::SOCK_STREAM
        && flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) == 0
        && (proto == 0 || proto == libc::IPPROTO_TCP);
    if !tcp || crate::sys::config::get().disabled {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::socket(domain, ty, proto) };
    }
    let err = real::errno();
    let made = guarded(None, || {
        let made = match reuse::socket(domain, flags) {
            Ok(m) => m,
            Err(e) => return Some(fail(e)),
        };
        let sock = Arc::new(Socket::new(domain, flags & libc::SOCK_NONBLOCK != 0, State::Fresh { bound: made.bound }));
        sock.set_clean();
        made.lend_to(&sock);
        let installed = Arc::clone(&sock);
        if table::install(made.fd, sock).is_err() && made.bound.is_some() {
            // An fd beyond the table stays a plain kernel socket, which
            // must not show a binding of ours: a new one instead.
            // SAFETY: the socket just made for the program.
            unsafe { real::close(made.fd) };
            // SAFETY: the caller's arguments, unchanged.
            return Some(unsafe { real::socket(domain, ty, proto) });
        }
        made.installed(&installed);
        real::set_errno(err);
        Some(made.fd)
    });
    // SAFETY: the caller's arguments, unchanged (only if ours failed).
    made.unwrap_or_else(|| unsafe { real::socket(domain, ty, proto) })
}

/// Interposed `bind(2)`: the program binds, so a kept socket's binding of
/// ours goes first, and the kernel socket is never reused.
///
/// # Safety
/// As for `bind(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    unbound(fd);
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::bind(fd, addr, len) }
}

/// Before a call on `fd` that would show where its kernel socket is bound
/// or share it: a kept socket's binding of ours goes, and the kernel socket
/// is never reused.
fn unbound(fd: c_int) {
    if let Some(s) = table::get(fd) {
        s.taint();
        unbind(fd, &s);
    }
}

/// A kept socket's binding of ours goes before `fd` gets a second number
/// (a later bind through either must see the same kernel socket).
fn unbind(fd: c_int, s: &Socket) {
    guarded((), || {
        reuse::unbind(fd, s, &mut s.lock());
    });
}

/// Interposed `listen(2)`: the kernel listens (and stays the authority on
/// ports); then the monitor learns of it.
///
/// # Safety
/// As for `listen(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    unbound(fd);
    // SAFETY: the caller's arguments, unchanged.
    let r = unsafe { real::listen(fd, backlog) };
    if r == 0 {
        if let Some(s) = table::get(fd) {
            let err = real::errno();
            if !guarded(false, || setup::listen(fd, &s, backlog)) {
                forget(fd);
            }
            real::set_errno(err);
        }
    }
    r
}

/// Interposed `accept(2)`.
///
/// # Safety
/// As for `accept(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: as the caller's contract.
    unsafe { accept4(fd, addr, len, 0) }
}

/// Interposed `accept4(2)`: an ipcd connection or a kernel one, whichever
/// comes first.
///
/// # Safety
/// As for `accept4(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    let listener = table::get(fd).and_then(|s| match *s.lock() {
        State::Listening { id, .. } => Some((Arc::clone(&s), id)),
        _ => None,
    });
    match listener {
        Some((s, id)) => {
            if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
                return fail(libc::EINVAL);
            }
            // SAFETY: the caller's address buffers.
            guarded(-1, || match unsafe { setup::accept(fd, &s, id, addr, len, flags) } {
                Ok(newfd) => newfd,
                Err(e) => fail(e),
            })
        }
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::accept4(fd, addr, len, flags) },
    }
}

/// Interposed `connect(2)`: through the monitor to an ipcd listener on this
/// host, else the kernel.
///
/// # Safety
/// As for `connect(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if let Some(s) = table::get(fd) {
        if let Some(dest) = setup::read_addr(addr, len) {
            let err = real::errno();
            match guarded(Connect::Kernel, || setup::connect(fd, &s, dest)) {
                Connect::Done(Ok(())) => return 0,
                Connect::Done(Err(e)) => return fail(e),
                Connect::Wait => {
                    return match guarded(Err(libc::EIO), || stream::wait_connected(&s)) {
                        Ok(()) => 0,
                        Err(e) => fail(e),
                    }
                }
                Connect::Kernel => {
                    if s.is_stream() {
                        return fail(libc::EISCONN);
                    }
                    unbound(fd);
                    forget(fd);
                    real::set_errno(err);
                }
            }
        }
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::connect(fd, addr, len) }
}

/// Interposed `close(2)`.
///
/// # Safety
/// As for `close(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn close(fd: c_int) -> c_int {
    if crate::sys::fds::is_hidden(fd) {
        // One of ours (a doorbell, the control channel): to the program it
        // is not open, as if it had never been.
        return fail(libc::EBADF);
    }
    release_keeping(fd);
    crate::ready::epoll::forget(fd);
    // SAFETY: the caller's fd.
    let r = unsafe { real::close(fd) };
    // Linux closes the fd whatever close returns.
    crate::socket::reuse::commit_kept();
    r
}

/// Interposed `close_range(2)`: our bookkeeping for every fd of ours in
/// the range, then the kernel's close of the range around our hidden fds.
///
/// # Safety
/// As for `close_range(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn close_range(first: libc::c_uint, last: libc::c_uint, flags: c_int) -> c_int {
    // Bad arguments and close-on-exec marking close nothing: the kernel
    // answers alone (ours are close-on-exec already).
    if first > last || flags & !(libc::CLOSE_RANGE_UNSHARE as c_int) != 0 {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::close_range(first, last, flags) };
    }
    guarded((), || {
        let top = last.min(table::TABLE_LEN as libc::c_uint - 1);
        for fd in first..=top {
            release(fd as c_int);
            crate::ready::epoll::forget(fd as c_int);
        }
    });
    let mut r = 0;
    let any = crate::sys::fds::each_gap(first, last, |a, b| {
        // SAFETY: a piece of the caller's range without our fds.
        r = unsafe { real::close_range(a, b, flags) };
        r == 0
    });
    if !any {
        // Only ours in the range: nothing of the program's to close (an
        // unshare request still gets its unshare: no fd is that high).
        // SAFETY: a range of one number no process can have open.
        r = unsafe { real::close_range(libc::c_uint::MAX, libc::c_uint::MAX, flags) };
    }
    r
}

/// Interposed `closefrom(3)`: as `close_range(lowfd, ~0, 0)`, which is
/// what glibc's does (without going through the interposable symbol).
///
/// # Safety
/// As for `closefrom(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn closefrom(lowfd: c_int) {
    // SAFETY: the caller's argument; negative means from 0, as glibc's.
    unsafe { close_range(lowfd.max(0) as libc::c_uint, libc::c_uint::MAX, 0) };
}

/// Interposed `shutdown(2)`.
///
/// # Safety
/// As for `shutdown(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    match table::get(fd) {
        Some(s) if s.is_stream() => guarded(-1, || match stream::shutdown(&s, how) {
            Ok(()) => 0,
            Err(e) => fail(e),
        }),
        // SAFETY: the caller's arguments, unchanged.
        Some(s) => guarded(None, || setup::shutdown_listener(fd, &s, how))
            .unwrap_or_else(|| unsafe { real::shutdown(fd, how) }),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::shutdown(fd, how) },
    }
}

/// After the kernel made `new` a copy of `old`: `new` refers to our object too.
fn copied(old: &Arc<Socket>, new: c_int) {
    let _ = table::install(new, Arc::clone(old));
}

/// After the kernel made `new` a copy of `fd`, whatever `fd` is.
fn copied_fd(fd: c_int, new: c_int) {
    if let Some(s) = table::get(fd) {
        copied(&s, new);
    }
    crate::ready::epoll::copied(fd, new);
}

/// Interposed `dup(2)`.
///
/// # Safety
/// As for `dup(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn dup(fd: c_int) -> c_int {
    if let Some(s) = table::get(fd) {
        unbind(fd, &s);
    }
    // SAFETY: the caller's fd.
    let r = unsafe { real::dup(fd) };
    if r >= 0 {
        copied_fd(fd, r);
    }
    r
}

/// Interposed `dup2(2)`.
///
/// # Safety
/// As for `dup2(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    // SAFETY: as dup3, which differs only for fd == new.
    unsafe { dup_onto(fd, new, None) }
}

/// Interposed `dup3(2)`.
///
/// # Safety
/// As for `dup3(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    // SAFETY: as the caller's contract.
    unsafe { dup_onto(fd, new, Some(flags)) }
}

/// dup2 (`flags` None) or dup3.
unsafe fn dup_onto(fd: c_int, new: c_int, flags: Option<c_int>) -> c_int {
    let src = table::get(fd);
    if src.is_none()
        && table::get(new).is_none()
        && !crate::ready::epoll::is_epoll(fd)
        && !crate::ready::epoll::is_epoll(new)
    {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe {
            match flags {
                None => real::dup2(fd, new),
                Some(f) => real::dup3(fd, new, f),
            }
        };
    }
    if let Some(s) = &src {
        unbind(fd, s);
    }
    // SAFETY: the caller's arguments, unchanged.
    let r = unsafe {
        match flags {
            None => real::dup2(fd, new),
            Some(f) => real::dup3(fd, new, f),
        }
    };
    if r >= 0 && fd != new {
        // The kernel closed whatever `new` was: so do we.
        release(new);
        crate::ready::epoll::forget(new);
        if let Some(s) = src {
            copied(&s, new);
        }
        crate::ready::epoll::copied(fd, new);
    }
    r
}

/// Interposed `fcntl(2)`. Variadic in C; every command takes at most one
/// integer or pointer argument, which the x86-64 and AArch64 Linux calling
/// conventions pass in the same register either way.
///
/// # Safety
/// As for `fcntl(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let Some(s) = table::get(fd) else {
        // SAFETY: the caller's arguments, unchanged.
        let r = unsafe { real::fcntl(fd, cmd, arg) };
        if r >= 0 && matches!(cmd, libc::F_DUPFD | libc::F_DUPFD_CLOEXEC) {
            crate::ready::epoll::copied(fd, r);
        }
        return r;
    };
    match cmd {
        libc::F_GETFL => {
            // SAFETY: F_GETFL takes no argument.
            let r = unsafe { real::fcntl(fd, cmd, 0) };
            if r < 0 {
                return r;
            }
            (r & !libc::O_NONBLOCK) | if s.nonblocking() { libc::O_NONBLOCK } else { 0 }
        }
        libc::F_SETFL => {
            let mut flags = arg as c_int;
            if flags & !(libc::O_NONBLOCK | libc::O_ACCMODE) != 0 {
                // O_ASYNC and the like stay on the kernel socket.
                s.taint();
            }
            if s.lock().keeps_kernel_nonblocking() {
                flags |= libc::O_NONBLOCK;
            }
            // SAFETY: F_SETFL with an int argument.
            let r = unsafe { real::fcntl(fd, cmd, flags as usize) };
            if r == 0 {
                s.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0);
            }
            r
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            unbind(fd, &s);
            // SAFETY: the caller's arguments, unchanged.
            let r = unsafe { real::fcntl(fd, cmd, arg) };
            if r >= 0 {
                copied(&s, r);
            }
            r
        }
        libc::F_GETFD | libc::F_SETFD | libc::F_GETOWN => {
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::fcntl(fd, cmd, arg) }
        }
        _ => {
            // Owners, signals, leases, locks: on the kernel socket for good.
            s.taint();
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::fcntl(fd, cmd, arg) }
        }
    }
}

/// Interposed `fcntl64` (glibc's name for `fcntl` with large-file offsets).
///
/// # Safety
/// As for `fcntl(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    // SAFETY: the same call.
    unsafe { fcntl(fd, cmd, arg) }
}

/// Interposed `ioctl(2)`: `FIONBIO`, `FIONREAD` and `SIOCOUTQ` on ipcd
/// sockets; everything else reaches the kernel socket.
///
/// # Safety
/// As for `ioctl(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    let Some(s) = table::get(fd) else {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::ioctl(fd, req, arg) };
    };
    let out = arg as *mut c_int;
    match req {
        libc::FIONBIO => {
            // SAFETY: FIONBIO's argument is an int pointer; an int is plain data.
            let Some(on) = (unsafe { user::read(out) }).map(|v| v != 0) else { return fail(libc::EFAULT) };
            if !s.lock().keeps_kernel_nonblocking() {
                // SAFETY: as the caller's contract.
                let r = unsafe { real::ioctl(fd, req, arg) };
                if r != 0 {
                    return r;
                }
            }
            s.set_nonblocking(on);
            0
        }
        libc::FIONREAD | libc::TIOCOUTQ if s.is_stream() => {
            let n = match if req == libc::FIONREAD { stream::readable(&s) } else { stream::unread_by_peer(&s) } {
                Ok(n) => n,
                Err(e) => return fail(e),
            };
            // These requests' argument is an int pointer.
            if !user::write(out, n.min(c_int::MAX as usize) as c_int) {
                return fail(libc::EFAULT);
            }
            0
        }
        // Questions leave nothing behind.
        libc::FIONREAD | libc::TIOCOUTQ | libc::SIOCOUTQNSD | SIOCATMARK => {
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::ioctl(fd, req, arg) }
        }
        _ => {
            // Whatever it does may stay on the kernel socket.
            s.taint();
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::ioctl(fd, req, arg) }
        }
    }
}

/// `SIOCATMARK`, which the libc crate does not name for Linux.
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Interposed `getsockopt(2)`: `SO_ERROR` of an ipcd stream comes from the
/// connection, `TCP_INFO` from the kernel socket with the connection's
/// state and counts written over it; every other option from the kernel
/// socket, where `setsockopt` put it.
///
/// # Safety
/// As for `getsockopt(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    if level == libc::IPPROTO_TCP && name == libc::TCP_INFO {
        if let Some(s) = table::get(fd).filter(|s| s.is_stream()) {
            // SAFETY: the caller's arguments: the kernel checks them and
            // fills in what its idle socket has.
            let r = unsafe { real::getsockopt(fd, level, name, val, len) };
            if r == 0 {
                if let Ok(info) = stream::tcp_info(&s) {
                    // SAFETY: the kernel just wrote `*len` bytes at `val`.
                    unsafe { patch_tcp_info(val.cast::<u8>(), *len as usize, info) };
                }
            }
            return r;
        }
    }
    if level == libc::SOL_SOCKET && name == libc::SO_ERROR {
        if let Some(s) = table::get(fd).filter(|s| s.is_stream()) {
            return answer_int(val, len, || stream::so_error(&s).unwrap_or(0));
        }
    }
    // The segment size of an established connection, which the idle
    // kernel socket underneath (536, its default) does not know: the
    // kernel's own for a loopback connection in this state, within what
    // the program set.
    if level == libc::IPPROTO_TCP && name == libc::TCP_MAXSEG {
        if let Some(s) = table::get(fd).filter(|s| s.is_stream()) {
            if let Some(mss) = stream::fresh_connector(&s).ok().and_then(|f| options::loopback_mss(s.family, f)) {
                let set = real::int_opt(fd, level, name).filter(|&v| v != DEFAULT_MSS).unwrap_or(c_int::MAX);
                return answer_int(val, len, || mss.min(set));
            }
        }
    }
    // SAFETY: the caller's arguments, unchanged.
    unsafe { real::getsockopt(fd, level, name, val, len) }
}

/// The `TCP_MAXSEG` of a socket that never connected and was not set.
const DEFAULT_MSS: c_int = 536;

/// Answers an int option as the kernel does: `EFAULT` for bad pointers,
/// `EINVAL` for a negative length, at most the caller's length copied.
fn answer_int(val: *mut c_void, len: *mut socklen_t, v: impl FnOnce() -> c_int) -> c_int {
    if val.is_null() || len.is_null() {
        return fail(libc::EFAULT);
    }
    // SAFETY: a socklen_t is plain data.
    let Some(l) = (unsafe { user::read(len) }) else { return fail(libc::EFAULT) };
    if (l as i32) < 0 {
        return fail(libc::EINVAL);
    }
    let v = v();
    let n = (l as usize).min(std::mem::size_of::<c_int>());
    // SAFETY: copies at most the caller's length from a live int, to the
    // program's memory through `user`.
    if !unsafe { user::copy_out(val.cast(), (&raw const v).cast(), n) } || !user::write(len, n as socklen_t) {
        return fail(libc::EFAULT);
    }
    0
}

/// Writes the connection's own values over a `struct tcp_info` of `len`
/// bytes at `p` (as far as it reaches): the state, a round trip of 1 µs
/// (shared memory's is below that), nothing unacknowledged, and the byte
/// counts (see `stream::tcp_info`).
///
/// # Safety
/// `p` is valid for writes of `len` bytes.
unsafe fn patch_tcp_info(p: *mut u8, len: usize, (state, acked, received): (u8, u64, u64)) {
    // Offsets in Linux's `struct tcp_info` (include/uapi/linux/tcp.h).
    const STATE: usize = 0;
    const UNACKED: usize = 24;
    const RTT: usize = 68;
    const BYTES_ACKED: usize = 120;
    const BYTES_RECEIVED: usize = 128;
    let put = |at: usize, bytes: &[u8]| {
        if at + bytes.len() <= len {
            // SAFETY: within the caller's `len` bytes (checked above).
            unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p.add(at), bytes.len()) };
        }
    };
    put(STATE, &[state]);
    put(UNACKED, &0u32.to_ne_bytes());
    put(RTT, &1u32.to_ne_bytes());
    put(BYTES_ACKED, &acked.to_ne_bytes());
    put(BYTES_RECEIVED, &received.to_ne_bytes());
}

/// Interposed `setsockopt(2)`: the kernel socket validates and keeps every
/// option; we also note the ones that change what ipcd does, and what a
/// listener's accepted connections inherit (see `socket::options`).
///
/// # Safety
/// As for `setsockopt(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    if level == libc::IPPROTO_TCP && name == libc::TCP_WINDOW_CLAMP && clears_clamp_of_open(fd, val, len) {
        return fail(libc::EINVAL);
    }
    let sock = table::get(fd);
    if let Some(s) = &sock {
        guarded((), || options::before_set(fd, s, level, name));
    }
    // SAFETY: the caller's arguments, unchanged.
    let r = unsafe { real::setsockopt(fd, level, name, val, len) };
    if let (0, Some(s)) = (r, &sock) {
        // SAFETY: the kernel read `len` bytes at `val`.
        guarded((), || unsafe { options::after_set(fd, s, level, name, val, len) });
    }
    r
}

/// Which name `getsockname`/`getpeername` asks for.
#[derive(Clone, Copy)]
enum Name {
    Local,
    Peer,
}

unsafe fn name_of(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, which: Name) -> Option<c_int> {
    let s = table::get(fd).filter(|s| s.is_stream())?;
    if addr.is_null() || len.is_null() {
        return Some(fail(libc::EFAULT));
    }
    // Linux has no peer for a connection that reached TCP_CLOSE (a reset,
    // or both FINs): ENOTCONN.
    if matches!(which, Name::Peer) && stream::phase(&s) == Ok(Phase::Closed) {
        return Some(fail(libc::ENOTCONN));
    }
    let a = match &*s.lock() {
        State::Stream(st) => match which {
            Name::Local => st.info.local,
            Name::Peer => st.info.peer,
        },
        _ => return Some(fail(libc::EBADF)),
    };
    if !setup::write_addr(setup::for_family(a, s.family), addr, len) {
        return Some(fail(libc::EFAULT));
    }
    Some(0)
}

/// Interposed `getsockname(2)`.
///
/// # Safety
/// As for `getsockname(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's buffers.
    match unsafe { name_of(fd, addr, len, Name::Local) } {
        Some(r) => r,
        None => {
            // A kept socket is unbound to the program: the kernel says so
            // once our binding is gone.
            if let Some(s) = table::get(fd) {
                unbind(fd, &s);
            }
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::getsockname(fd, addr, len) }
        }
    }
}

/// Interposed `getpeername(2)`.
///
/// # Safety
/// As for `getpeername(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the caller's buffers.
    match unsafe { name_of(fd, addr, len, Name::Peer) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::getpeername(fd, addr, len) },
    }
}

/// `TCP_WINDOW_CLAMP` 0 on an ipcd connection that is not closed: Linux
/// refuses it (tcp_set_window_clamp), where the idle kernel socket under
/// the fd would take it.
fn clears_clamp_of_open(fd: c_int, val: *const c_void, len: socklen_t) -> bool {
    if val.is_null() || (len as usize) < std::mem::size_of::<c_int>() {
        return false;
    }
    let Some(s) = table::get(fd).filter(|s| s.is_stream()) else { return false };
    // SAFETY: at least an int, as checked; the caller's buffer.
    let v = unsafe { val.cast::<c_int>().read_unaligned() };
    v == 0 && stream::phase(&s).is_ok_and(|p| p != Phase::Closed)
}
