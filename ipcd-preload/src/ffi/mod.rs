//! The interposed entry points: each decodes its C arguments, finds the fd's
//! socket (one bounds check and one atomic load for an fd that is not ours)
//! and calls down into [`crate::socket`], [`crate::ready`] or
//! [`crate::close`]; every fd that is not ours goes to libc unchanged. The
//! helpers every entry point shares live here.

use libc::{c_int, c_void, iovec, size_t, ssize_t};

use crate::socket::stream::IoResult;
use crate::socket::{Call, Socket};
use crate::sys::{guarded, real};

mod io;
mod poll;
mod process;
mod signal;
mod socket;
mod spawn;
mod stdio;
mod uring;

pub(crate) use stdio::standard_streams;
mod syscall;

/// Sets `errno` to `e` and returns -1, as a failed libc call does.
fn fail(e: c_int) -> c_int {
    real::set_errno(e);
    -1
}

#[inline]
fn ret(r: IoResult) -> ssize_t {
    match r {
        Ok(n) => n as ssize_t,
        Err(e) => {
            real::set_errno(e);
            -1
        }
    }
}

/// An iovec array from C, checked as the kernel checks it.
///
/// # Safety
/// `iov` must point at `cnt` iovecs when `cnt` is in range.
unsafe fn iovs<'a>(iov: *const iovec, cnt: c_int) -> Result<&'a [iovec], c_int> {
    if !(0..=libc::UIO_MAXIOV).contains(&cnt) {
        return Err(libc::EINVAL);
    }
    if cnt == 0 {
        return Ok(&[]);
    }
    if !crate::sys::user::all_accessible(iov.cast(), cnt as usize * std::mem::size_of::<iovec>(), false) {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's array of `cnt` iovecs, readable.
    Ok(unsafe { std::slice::from_raw_parts(iov, cnt as usize) })
}

fn one(buf: *const c_void, n: size_t) -> [iovec; 1] {
    [iovec { iov_base: buf.cast_mut(), iov_len: n }]
}

/// Runs a data call on `sock`, counted as in progress once it waits (see
/// `socket::Call`).
#[inline]
fn call(sock: &Socket, f: impl FnOnce(&Call<'_>) -> ssize_t) -> ssize_t {
    let c = Call::new(sock);
    let r = guarded(-1, || f(&c));
    if c.end() {
        let e = real::errno();
        guarded((), || crate::close::close_now(sock));
        real::set_errno(e);
    }
    r
}

/// What glibc does on a fortify check failure.
fn chk_fail() -> ! {
    extern "C" {
        fn __chk_fail() -> !;
    }
    // SAFETY: glibc's own failure path; it does not return.
    unsafe { __chk_fail() }
}
