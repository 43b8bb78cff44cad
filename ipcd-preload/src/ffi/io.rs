//! Interposed data calls: read, write and the send/recv family, sendfile
//! and splice. An fd that is not an ipcd stream goes straight to libc.

use libc::{c_int, c_uint, c_void, iovec, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t};

use super::{call, chk_fail, fail, iovs, one, ret};
use crate::socket::stream::{self, Flags, IoResult};
use crate::socket::TCP_INQ;
use crate::socket::{pass, table};
use crate::socket::{Call, Socket};
use crate::sys::{guarded, real, user};

/// The ipcd stream behind `fd`, if any. For every other fd this is one
/// bounds check and one atomic load.
#[inline(always)]
fn stream_of(fd: c_int) -> Option<table::Held> {
    table::held(fd).filter(|s| s.is_stream())
}

fn do_send(sock: &Socket, iov: &[iovec], flags: c_int) -> ssize_t {
    // SAFETY: the iovecs come from the program's call, which promises them readable.
    call(sock, |c| ret(unsafe { stream::send(sock, c, iov, Flags::new(sock, flags)) }))
}

fn do_recv(sock: &Socket, iov: &[iovec], flags: c_int) -> ssize_t {
    if flags & libc::MSG_ERRQUEUE != 0 {
        // recv/recvfrom of the error queue: with no control buffer the
        // completion is taken and its details lost, as on Linux.
        return match stream::take_zerocopy(sock) {
            Ok(Some(_)) => 0,
            Ok(None) => ret(Err(libc::EAGAIN)),
            Err(e) => ret(Err(e)),
        };
    }
    // Urgent data never exists on an ipcd connection: Linux's answer to
    // MSG_OOB with none waiting (tcp_recv_urg).
    if flags & libc::MSG_OOB != 0 {
        return ret(Err(libc::EINVAL));
    }
    // SAFETY: the iovecs come from the program's call, which promises them writable.
    call(sock, |c| ret(unsafe { stream::recv(sock, c, iov, Flags::new(sock, flags)) }))
}

/// Interposed `read(2)`.
///
/// # Safety
/// As for `read(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    match stream_of(fd) {
        Some(s) => do_recv(&s, &one(buf, n), 0),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::read(fd, buf, n) },
    }
}

/// Interposed `write(2)`.
///
/// # Safety
/// As for `write(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    match stream_of(fd) {
        Some(s) => do_send(&s, &one(buf, n), 0),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::write(fd, buf, n) },
    }
}

/// Interposed `readv(2)`.
///
/// # Safety
/// As for `readv(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    match stream_of(fd) {
        // SAFETY: the caller's iovec array.
        Some(s) => match unsafe { iovs(iov, cnt) } {
            Ok(v) => do_recv(&s, v, 0),
            Err(e) => ret(Err(e)),
        },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::readv(fd, iov, cnt) },
    }
}

/// Interposed `writev(2)`.
///
/// # Safety
/// As for `writev(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    match stream_of(fd) {
        // SAFETY: the caller's iovec array.
        Some(s) => match unsafe { iovs(iov, cnt) } {
            Ok(v) => do_send(&s, v, 0),
            Err(e) => ret(Err(e)),
        },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::writev(fd, iov, cnt) },
    }
}

/// Interposed `send(2)`.
///
/// # Safety
/// As for `send(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) => do_send(&s, &one(buf, n), flags),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::send(fd, buf, n, flags) },
    }
}

/// Interposed `recv(2)`.
///
/// # Safety
/// As for `recv(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) => do_recv(&s, &one(buf, n), flags),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::recv(fd, buf, n, flags) },
    }
}

/// Interposed `sendto(2)`. On a connected TCP socket Linux ignores the
/// address, and so do we.
///
/// # Safety
/// As for `sendto(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    len: socklen_t,
) -> ssize_t {
    match stream_of(fd) {
        Some(s) => do_send(&s, &one(buf, n), flags),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::sendto(fd, buf, n, flags, addr, len) },
    }
}

/// Interposed `recvfrom(2)`. TCP reports no source address: the length
/// comes back 0, as from the kernel.
///
/// # Safety
/// As for `recvfrom(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    match stream_of(fd) {
        Some(s) => {
            let r = do_recv(&s, &one(buf, n), flags);
            if r >= 0 && !addr.is_null() {
                // Linux checks the length as it copies the address out,
                // after the bytes were taken (move_addr_to_user).
                // SAFETY: a socklen_t is plain data.
                match unsafe { user::read(len) } {
                    None => return ret(Err(libc::EFAULT)),
                    Some(l) if (l as c_int) < 0 => return ret(Err(libc::EINVAL)),
                    Some(_) if !user::write(len, 0) => return ret(Err(libc::EFAULT)),
                    Some(_) => {}
                }
            }
            r
        }
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::recvfrom(fd, buf, n, flags, addr, len) },
    }
}

/// Interposed `sendmsg(2)`. Ancillary data has no meaning on TCP; it is
/// ignored, as the kernel ignores it.
///
/// # Safety
/// As for `sendmsg(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) => {
            // SAFETY: a msghdr is plain data.
            let Some(m) = (unsafe { user::read(msg) }) else { return ret(Err(libc::EFAULT)) };
            // The kernel copies the control data in (and TCP ignores it).
            if !user::all_accessible(m.msg_control.cast(), m.msg_controllen, false) {
                return ret(Err(libc::EFAULT));
            }
            // SAFETY: the caller's iovecs.
            match unsafe { iovs(m.msg_iov, m.msg_iovlen as c_int) } {
                Ok(v) => do_send(&s, v, flags),
                Err(e) => ret(Err(e)),
            }
        }
        None => {
            // The caller's msghdr, if readable (our own channel's messages
            // carry no ends of ours); with a bad control buffer the kernel
            // answers EFAULT, and we read nothing of it.
            // SAFETY: a msghdr is plain data.
            let m = unsafe { user::read(msg) }.filter(|m| {
                m.msg_controllen != 0
                    && !crate::sys::fds::is_hidden(fd)
                    && user::all_accessible(m.msg_control.cast(), m.msg_controllen, false)
            });
            if let Some(m) = m {
                // SAFETY: the caller's control buffer, readable.
                guarded((), || unsafe { pass::before_send(fd, &m) });
            }
            // SAFETY: the caller's arguments, unchanged.
            unsafe { real::sendmsg(fd, msg, flags) }
        }
    }
}

/// Interposed `recvmsg(2)`: no address, no control data, no flags out.
///
/// # Safety
/// As for `recvmsg(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    match stream_of(fd) {
        Some(s) => {
            // Worked on as a copy, written back whole: a msghdr we cannot
            // read or write back fails before anything is received.
            // SAFETY: a msghdr is plain data.
            let Some(mut m) = (unsafe { user::read(msg) }) else { return ret(Err(libc::EFAULT)) };
            if !user::all_accessible(msg.cast(), std::mem::size_of::<msghdr>(), true) {
                return ret(Err(libc::EFAULT));
            }
            // A negative name length is refused before anything is
            // received (copy_msghdr_from_user).
            if (m.msg_namelen as c_int) < 0 {
                return ret(Err(libc::EINVAL));
            }
            if flags & libc::MSG_ERRQUEUE != 0 {
                // SAFETY: the caller's control buffer, as described.
                let r = unsafe { recv_errqueue(&s, &mut m) };
                user::write(msg, m);
                return r;
            }
            // SAFETY: the caller's iovecs.
            let r = match unsafe { iovs(m.msg_iov, m.msg_iovlen as c_int) } {
                Ok(v) => do_recv(&s, v, flags),
                Err(e) => ret(Err(e)),
            };
            if r >= 0 {
                m.msg_namelen = 0;
                m.msg_flags = 0;
                let inq = s.inq().then(|| stream::readable(&s).unwrap_or(0));
                // Linux stamps the bytes a read took (none: no stamp).
                let stamp = Some(s.timestamp()).filter(|&t| t != 0 && r > 0);
                // SAFETY: the caller's control buffer, as described.
                unsafe { put_control(&mut m, stamp, inq) };
                user::write(msg, m);
            }
            r
        }
        None => {
            // SAFETY: the caller's arguments, unchanged.
            let r = unsafe { real::recvmsg(fd, msg, flags) };
            // SAFETY: the caller's msghdr, if any, just filled.
            let m = unsafe { msg.as_ref() };
            if let Some(m) = m.filter(|m| r >= 0 && m.msg_controllen != 0 && !crate::sys::fds::is_hidden(fd)) {
                let e = real::errno();
                // SAFETY: the caller's msghdr and control buffer.
                guarded((), || unsafe { pass::after_recv(m) });
                real::set_errno(e);
            }
            r
        }
    }
}

/// `recvmsg(MSG_ERRQUEUE)` on an ipcd stream: the pending `MSG_ZEROCOPY`
/// completions as one `IP_RECVERR` (`IPV6_RECVERR`) message, as Linux
/// reports them; EAGAIN when there are none.
///
/// # Safety
/// `msg`'s control pointer and length describe the caller's buffer.
unsafe fn recv_errqueue(s: &Socket, msg: &mut msghdr) -> ssize_t {
    let (lo, hi) = match stream::take_zerocopy(s) {
        Ok(Some(range)) => range,
        Ok(None) => return ret(Err(libc::EAGAIN)),
        Err(e) => return ret(Err(e)),
    };
    /// `SO_EE_ORIGIN_ZEROCOPY` and `SO_EE_CODE_ZEROCOPY_COPIED` (linux/errqueue.h).
    const ORIGIN_ZEROCOPY: u8 = 5;
    const CODE_COPIED: u8 = 1;
    let ee = libc::sock_extended_err {
        ee_errno: 0,
        ee_origin: ORIGIN_ZEROCOPY,
        ee_type: 0,
        ee_code: CODE_COPIED,
        ee_pad: 0,
        ee_info: lo,
        ee_data: hi,
    };
    // The error header is the extended error and the offender's address,
    // which a zerocopy notification leaves zeroed.
    let (level, ty, offender) = if s.family == libc::AF_INET6 {
        (libc::SOL_IPV6, libc::IPV6_RECVERR, std::mem::size_of::<libc::sockaddr_in6>())
    } else {
        (libc::SOL_IP, libc::IP_RECVERR, std::mem::size_of::<libc::sockaddr_in>())
    };
    let mut header = [0u8; std::mem::size_of::<libc::sock_extended_err>() + std::mem::size_of::<libc::sockaddr_in6>()];
    // SAFETY: the array is longer than a sock_extended_err.
    unsafe { header.as_mut_ptr().cast::<libc::sock_extended_err>().write_unaligned(ee) };
    msg.msg_namelen = 0;
    msg.msg_flags = libc::MSG_ERRQUEUE;
    let len = std::mem::size_of::<libc::sock_extended_err>() + offender;
    let mut used = 0;
    // SAFETY: the caller's control buffer (contract of this function).
    unsafe { put_cmsg(msg, &mut used, level, ty, &header[..len]) };
    msg.msg_controllen = used;
    0
}

/// Puts one control message into `msg`'s buffer at `*used` bytes in, as
/// Linux's `put_cmsg`: or, if it does not fit in what is left, none and
/// `MSG_CTRUNC`. Advances `*used`; the caller sets `msg_controllen` to it.
///
/// # Safety
/// `msg`'s control pointer and length describe the caller's buffer.
unsafe fn put_cmsg(msg: &mut msghdr, used: &mut usize, level: c_int, ty: c_int, data: &[u8]) {
    let size = data.len() as u32;
    // SAFETY: CMSG_LEN/CMSG_SPACE are arithmetic.
    let (need, space) = unsafe { (libc::CMSG_LEN(size) as usize, libc::CMSG_SPACE(size) as usize) };
    let room = msg.msg_controllen.saturating_sub(*used);
    if msg.msg_control.is_null() || room < need {
        msg.msg_flags |= libc::MSG_CTRUNC;
        return;
    }
    // Built here, copied out in one go: a buffer that faults takes no
    // message (Linux's put_cmsg fails, and TCP goes on without it).
    let mut out = [0u8; 128];
    let Some(buf) = out.get_mut(..need) else { return };
    let c = buf.as_mut_ptr().cast::<libc::cmsghdr>();
    // SAFETY: `buf` holds CMSG_LEN(data) bytes (checked above).
    unsafe {
        c.write_unaligned(libc::cmsghdr { cmsg_len: need, cmsg_level: level, cmsg_type: ty });
        std::ptr::copy_nonoverlapping(data.as_ptr(), libc::CMSG_DATA(c), data.len());
    }
    // SAFETY: `buf` is ours; the destination is the program's, checked by the copy.
    if unsafe { user::copy_out(msg.msg_control.cast::<u8>().wrapping_add(*used), buf.as_ptr(), need) } {
        *used += space.min(room);
    }
}

/// Fills `msg`'s control buffer as Linux's `recvmsg` on a TCP socket does,
/// in its order: the receive time if a `SO_TIMESTAMP` kind is on
/// (`stamp`: the control message type, whose number is the option's),
/// then with `TCP_INQ` on the bytes left to read; each left out, with
/// `MSG_CTRUNC`, if the buffer cannot hold it.
///
/// # Safety
/// `msg`'s control pointer and length describe the caller's buffer.
unsafe fn put_control(msg: &mut msghdr, stamp: Option<c_int>, inq: Option<usize>) {
    let mut used = 0;
    if let Some(ty) = stamp {
        // SAFETY: clock_gettime into a zeroed timespec (vDSO).
        let mut now: libc::timespec = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) };
        // Microseconds for SO_TIMESTAMP (old and new), nanoseconds for
        // SO_TIMESTAMPNS: two 64-bit words either way on this target.
        let sub = if matches!(ty, SO_TIMESTAMP_OLD | SO_TIMESTAMP_NEW) { now.tv_nsec / 1000 } else { now.tv_nsec };
        let mut data = [0u8; 16];
        data[..8].copy_from_slice(&(now.tv_sec as i64).to_ne_bytes());
        data[8..].copy_from_slice(&(sub as i64).to_ne_bytes());
        // SAFETY: the caller's control buffer (contract of this function).
        unsafe { put_cmsg(msg, &mut used, libc::SOL_SOCKET, ty, &data) };
    }
    if let Some(inq) = inq {
        let val = inq.min(c_int::MAX as usize) as c_int;
        // SAFETY: the caller's control buffer (contract of this function).
        unsafe { put_cmsg(msg, &mut used, libc::SOL_TCP, TCP_INQ, &val.to_ne_bytes()) };
    }
    msg.msg_controllen = used;
}

/// `SO_TIMESTAMP` as glibc's 64-bit headers name it, and its y2038-safe
/// twin (the control messages carry the option's number).
const SO_TIMESTAMP_OLD: c_int = 29;
const SO_TIMESTAMP_NEW: c_int = 63;

/// Interposed `sendmmsg(2)`: each message in turn, stopping at the first
/// that fails (reported only if none went).
///
/// # Safety
/// As for `sendmmsg(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int {
    if stream_of(fd).is_none() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::sendmmsg(fd, msgs, n, flags) };
    }
    let n = n.min(libc::UIO_MAXIOV as c_uint);
    let mut done = 0;
    while done < n {
        let (hdr, len) = mmsg_fields(msgs, done);
        // SAFETY: the caller's msghdr, read through `user`.
        let r = unsafe { sendmsg(fd, hdr, flags) };
        if r < 0 {
            return if done > 0 { done as c_int } else { -1 };
        }
        if !user::write(len, r as c_uint) {
            return if done > 0 { done as c_int } else { fail(libc::EFAULT) };
        }
        done += 1;
    }
    done as c_int
}

/// Where entry `i` of the program's `mmsghdr` array keeps its message and
/// its length: addresses only, each read or written through `user`.
fn mmsg_fields(msgs: *mut mmsghdr, i: c_uint) -> (*mut msghdr, *mut c_uint) {
    let entry = msgs.wrapping_add(i as usize).cast::<u8>();
    let hdr = entry.wrapping_add(std::mem::offset_of!(mmsghdr, msg_hdr)).cast();
    (hdr, entry.wrapping_add(std::mem::offset_of!(mmsghdr, msg_len)).cast())
}

/// Interposed `recvmmsg(2)`. As on Linux, the timeout is checked only
/// between messages, and `MSG_WAITFORONE` turns on `MSG_DONTWAIT` after
/// the first.
///
/// # Safety
/// As for `recvmmsg(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut mmsghdr,
    n: c_uint,
    flags: c_int,
    timeout: *mut libc::timespec,
) -> c_int {
    let Some(s) = stream_of(fd) else {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::recvmmsg(fd, msgs, n, flags, timeout) };
    };
    // Linux checks the timeout first (EINVAL for a malformed one), and
    // looks at it only after each message taken: it never shortens a wait.
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: a timespec is plain data.
        let Some(t) = (unsafe { user::read(timeout) }) else { return fail(libc::EFAULT) };
        if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
            return fail(libc::EINVAL);
        }
        Some(std::time::Instant::now() + std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    };
    // Then it reports (and clears) a pending socket error, even with
    // bytes waiting.
    if flags & libc::MSG_ERRQUEUE == 0 {
        match guarded(Ok(0), || stream::so_error(&s)) {
            Ok(0) => {}
            Ok(e) | Err(e) => return fail(e),
        }
    }
    drop(s);
    let n = n.min(libc::UIO_MAXIOV as c_uint);
    let mut flags = flags;
    let mut done = 0;
    while done < n {
        let (hdr, len) = mmsg_fields(msgs, done);
        // SAFETY: the caller's msghdr, read through `user`.
        let r = unsafe { recvmsg(fd, hdr, flags & !libc::MSG_WAITFORONE) };
        if r < 0 || !user::write(len, r as c_uint) {
            if done == 0 {
                return if r < 0 { -1 } else { fail(libc::EFAULT) };
            }
            break;
        }
        done += 1;
        if flags & libc::MSG_WAITFORONE != 0 {
            flags |= libc::MSG_DONTWAIT;
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
    }
    done as c_int
}

/// `__read_chk`, which `_FORTIFY_SOURCE` builds call for `read`.
///
/// # Safety
/// As for `read(2)` with a buffer of `buflen` bytes.
#[no_mangle]
pub(super) unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: as the caller's contract.
    unsafe { read(fd, buf, n) }
}

/// `__recv_chk`, the fortified `recv`.
///
/// # Safety
/// As for `recv(2)` with a buffer of `buflen` bytes.
#[no_mangle]
pub(super) unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: as the caller's contract.
    unsafe { recv(fd, buf, n, flags) }
}

/// `__recvfrom_chk`, the fortified `recvfrom`.
///
/// # Safety
/// As for `recvfrom(2)` with a buffer of `buflen` bytes.
#[no_mangle]
pub(super) unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: as the caller's contract.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

/// Bytes copied per round by the sendfile and splice fallbacks.
const COPY_CHUNK: usize = 64 * 1024;

/// Interposed `sendfile(2)`: from a file to an ipcd socket by copying (the
/// kernel cannot splice into a ring it does not know).
///
/// # Safety
/// As for `sendfile(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sendfile(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> ssize_t {
    match stream_of(out_fd) {
        // SAFETY: the caller's offset pointer.
        Some(s) => call(&s, |c| ret(unsafe { copy_file_to(&s, c, in_fd, offset, count) })),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::sendfile(out_fd, in_fd, offset, count) },
    }
}

/// Interposed `sendfile64` (the same call with a 64-bit offset).
///
/// # Safety
/// As for `sendfile(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn sendfile64(
    out_fd: c_int,
    in_fd: c_int,
    offset: *mut libc::off64_t,
    count: size_t,
) -> ssize_t {
    match stream_of(out_fd) {
        // SAFETY: off_t is off64_t on the 64-bit targets we build for.
        Some(s) => call(&s, |c| ret(unsafe { copy_file_to(&s, c, in_fd, offset.cast(), count) })),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::sendfile64(out_fd, in_fd, offset, count) },
    }
}

/// Copies up to `count` bytes of `in_fd` (at `*offset`, or its file
/// position) into the stream. Bytes read but not sent are given back to the
/// file position, so nothing is lost on a short send.
///
/// # Safety
/// `offset` null or valid.
unsafe fn copy_file_to(
    sock: &Socket,
    call: &Call<'_>,
    in_fd: c_int,
    offset: *mut libc::off_t,
    count: size_t,
) -> IoResult {
    let mut buf = vec![0u8; COPY_CHUNK.min(count.max(1))];
    let mut done = 0usize;
    let flags = Flags::new(sock, 0);
    while done < count {
        let want = buf.len().min(count - done);
        // SAFETY: reads into our own buffer; `offset` checked non-null.
        let got = unsafe {
            if offset.is_null() {
                real::read(in_fd, buf.as_mut_ptr().cast(), want)
            } else {
                libc::pread(in_fd, buf.as_mut_ptr().cast(), want, *offset)
            }
        };
        if got < 0 {
            return stream::moved_or(done, real::errno());
        }
        if got == 0 {
            break;
        }
        let got = got as usize;
        // SAFETY: our own buffer, `got` bytes filled.
        let sent = match unsafe { stream::send(sock, call, &one(buf.as_ptr().cast(), got), flags) } {
            Ok(n) => n,
            Err(e) => {
                if offset.is_null() {
                    // SAFETY: rewinds the file position by what was not sent.
                    unsafe { libc::lseek(in_fd, -(got as libc::off_t), libc::SEEK_CUR) };
                }
                return stream::moved_or(done, e);
            }
        };
        if offset.is_null() {
            if sent < got {
                // SAFETY: as above.
                unsafe { libc::lseek(in_fd, -((got - sent) as libc::off_t), libc::SEEK_CUR) };
            }
        } else {
            // SAFETY: the caller's offset.
            unsafe { *offset += sent as libc::off_t };
        }
        done += sent;
        if sent < got {
            break;
        }
    }
    Ok(done)
}

/// Interposed `splice(2)`: when one end is an ipcd socket, a copy through
/// a buffer. From a socket, bytes are peeked, written, then consumed, so a
/// short write to the pipe loses nothing.
///
/// # Safety
/// As for `splice(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn splice(
    fd_in: c_int,
    off_in: *mut libc::loff_t,
    fd_out: c_int,
    off_out: *mut libc::loff_t,
    len: size_t,
    flags: c_uint,
) -> ssize_t {
    let (sin, sout) = (stream_of(fd_in), stream_of(fd_out));
    if sin.is_none() && sout.is_none() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::splice(fd_in, off_in, fd_out, off_out, len, flags) };
    }
    let nonblock = if flags & libc::SPLICE_F_NONBLOCK != 0 { libc::MSG_DONTWAIT } else { 0 };
    guarded(-1, || {
        let mut buf = vec![0u8; COPY_CHUNK.min(len.max(1))];
        let want = buf.len().min(len);
        if let Some(s) = sin {
            if !off_in.is_null() || !off_out.is_null() && sout.is_some() {
                return ret(Err(libc::ESPIPE));
            }
            return call(&s, |c| {
                let iov = one(buf.as_mut_ptr().cast(), want);
                // SAFETY: our own buffer.
                let got = match unsafe { stream::recv(&s, c, &iov, Flags::new(&s, libc::MSG_PEEK | nonblock)) } {
                    Ok(0) => return 0,
                    Ok(n) => n,
                    Err(e) => return ret(Err(e)),
                };
                // SAFETY: our buffer's first `got` bytes; the caller's out offset.
                let put = unsafe {
                    if off_out.is_null() {
                        write(fd_out, buf.as_ptr().cast(), got)
                    } else {
                        let r = libc::pwrite(fd_out, buf.as_ptr().cast(), got, *off_out);
                        if r > 0 {
                            *off_out += r as libc::loff_t;
                        }
                        r
                    }
                };
                if put <= 0 {
                    return put;
                }
                let take = one(buf.as_mut_ptr().cast(), put as usize);
                // SAFETY: consumes exactly what was written out, already readable.
                ret(unsafe { stream::recv(&s, c, &take, Flags::new(&s, libc::MSG_DONTWAIT)) })
            });
        }
        let s = sout.expect("one end is ours");
        if !off_out.is_null() {
            return ret(Err(libc::ESPIPE));
        }
        // SAFETY: reads into our own buffer; the caller's in offset.
        let got = unsafe {
            if off_in.is_null() {
                real::read(fd_in, buf.as_mut_ptr().cast(), want)
            } else {
                let r = libc::pread(fd_in, buf.as_mut_ptr().cast(), want, *off_in);
                if r > 0 {
                    *off_in += r as libc::loff_t;
                }
                r
            }
        };
        if got <= 0 {
            return got;
        }
        // Blocking: the bytes are already out of the pipe and must all go.
        let _ = nonblock;
        call(&s, |c| {
            let flags = Flags { nonblock: false, ..Flags::new(&s, 0) };
            // SAFETY: our buffer's first `got` bytes.
            ret(unsafe { stream::send(&s, c, &one(buf.as_ptr().cast(), got as usize), flags) })
        })
    })
}
