//! Interposed readiness calls: poll, ppoll, select, pselect and epoll.
//! Calls that involve none of our fds go straight to libc after one table
//! lookup per fd (epoll: one atomic load when no epoll set has our fds).

use std::time::{Duration, Instant};

use libc::{c_int, epoll_event, nfds_t, pollfd};

use super::{chk_fail, fail};
use crate::ready::poll::{self, SelectSets};
use crate::ready::{epoll, readiness};
use crate::socket::table;
use crate::sys::{guarded, real};

fn after(d: Duration) -> Option<Instant> {
    Instant::now().checked_add(d)
}

fn deadline_ms(ms: c_int) -> Option<Instant> {
    if ms < 0 {
        None
    } else {
        after(Duration::from_millis(ms as u64))
    }
}

/// A `timespec` deadline; `Err(EINVAL)` for a malformed one.
///
/// # Safety
/// `ts` null or valid.
unsafe fn deadline_ts(ts: *const libc::timespec) -> Result<Option<Instant>, c_int> {
    if ts.is_null() {
        return Ok(None);
    }
    // SAFETY: the caller's timespec.
    let t = unsafe { *ts };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(libc::EINVAL);
    }
    Ok(after(Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}

/// Our poll over the caller's array, if any of its fds is ours.
///
/// # Safety
/// `fds` points at `n` pollfds (when `n > 0`); `mask` null or valid.
unsafe fn our_poll(
    fds: *mut pollfd,
    n: nfds_t,
    deadline: impl FnOnce() -> Result<Option<Instant>, c_int>,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    if n == 0 || fds.is_null() || n > table::TABLE_LEN as nfds_t {
        return None;
    }
    // SAFETY: the caller's array of `n` pollfds.
    let slice = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    if !slice.iter().any(|p| table::get(p.fd).is_some()) {
        return None;
    }
    Some(guarded(-1, || {
        let ours = readiness::ours(slice.iter().map(|p| p.fd));
        let d = match deadline() {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        // SAFETY: the caller's sigset, if any.
        let m = unsafe { mask.as_ref() };
        match poll::poll(slice, &ours, d, m) {
            Ok(k) => k,
            Err(e) => fail(e),
        }
    }))
}

/// Interposed `poll(2)`.
///
/// # Safety
/// As for `poll(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the caller's array.
    match unsafe { our_poll(fds, n, || Ok(deadline_ms(timeout)), std::ptr::null()) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::poll(fds, n, timeout) },
    }
}

/// Interposed `ppoll(2)`.
///
/// # Safety
/// As for `ppoll(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's array, timespec and mask.
    match unsafe { our_poll(fds, n, || deadline_ts(ts), mask) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::ppoll(fds, n, ts, mask) },
    }
}

/// `__poll_chk`, the fortified `poll`.
///
/// # Safety
/// As for `poll(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: usize) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        chk_fail();
    }
    // SAFETY: as the caller's contract.
    unsafe { poll(fds, n, timeout) }
}

/// `__ppoll_chk`, the fortified `ppoll`.
///
/// # Safety
/// As for `ppoll(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
    fdslen: usize,
) -> c_int {
    if fdslen / std::mem::size_of::<pollfd>() < n as usize {
        chk_fail();
    }
    // SAFETY: as the caller's contract.
    unsafe { ppoll(fds, n, ts, mask) }
}

/// Whether any fd below `nfds` in the three sets is ours.
///
/// # Safety
/// Each set null or valid.
unsafe fn sets_have_ours(nfds: c_int, sets: [*mut libc::fd_set; 3]) -> bool {
    (0..nfds.clamp(0, libc::FD_SETSIZE as c_int)).any(|fd| {
        // SAFETY: valid sets (caller), fd below FD_SETSIZE.
        sets.iter().any(|s| !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) }) && table::get(fd).is_some()
    })
}

/// select/pselect through our poll.
///
/// # Safety
/// Sets null or valid; `mask` null or valid.
unsafe fn our_select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    deadline: Option<Instant>,
    mask: *const libc::sigset_t,
) -> c_int {
    guarded(-1, || {
        // SAFETY: the caller's sets.
        let mut sets = unsafe { SelectSets::new(nfds, r, w, e) };
        let ours = readiness::ours(sets.fds.iter().map(|p| p.fd));
        // SAFETY: the caller's mask.
        let m = unsafe { mask.as_ref() };
        if let Err(err) = poll::poll(&mut sets.fds, &ours, deadline, m) {
            return fail(err);
        }
        // SAFETY: the caller's sets.
        match unsafe { sets.finish(r, w, e) } {
            Ok(n) => n,
            Err(err) => fail(err),
        }
    })
}

/// Interposed `select(2)`; like Linux, it leaves the time not slept in `timeout`.
///
/// # Safety
/// As for `select(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    timeout: *mut libc::timeval,
) -> c_int {
    // SAFETY: the caller's sets.
    if nfds < 0 || !unsafe { sets_have_ours(nfds, [r, w, e]) } {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::select(nfds, r, w, e, timeout) };
    }
    let deadline = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller's timeval.
        let tv = unsafe { *timeout };
        if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
            return fail(libc::EINVAL);
        }
        after(Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64))
    };
    // SAFETY: the caller's sets.
    let n = unsafe { our_select(nfds, r, w, e, deadline, std::ptr::null()) };
    if let (false, Some(d)) = (timeout.is_null(), deadline) {
        let left = d.saturating_duration_since(Instant::now());
        // SAFETY: the caller's timeval.
        unsafe {
            (*timeout).tv_sec = left.as_secs() as libc::time_t;
            (*timeout).tv_usec = left.subsec_micros() as libc::suseconds_t;
        }
    }
    n
}

/// Interposed `pselect(2)`.
///
/// # Safety
/// As for `pselect(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    e: *mut libc::fd_set,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's sets.
    if nfds < 0 || !unsafe { sets_have_ours(nfds, [r, w, e]) } {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::pselect(nfds, r, w, e, ts, mask) };
    }
    // SAFETY: the caller's timespec.
    match unsafe { deadline_ts(ts) } {
        // SAFETY: the caller's sets and mask.
        Ok(d) => unsafe { our_select(nfds, r, w, e, d, mask) },
        Err(err) => fail(err),
    }
}

/// Interposed `epoll_create(2)`: we learn the instance's fd, so a dup of
/// it names the same instance.
///
/// # Safety
/// As for `epoll_create(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    // SAFETY: the caller's argument, unchanged.
    created(unsafe { real::epoll_create(size) })
}

/// Interposed `epoll_create1(2)`, as `epoll_create`.
///
/// # Safety
/// As for `epoll_create1(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    // SAFETY: the caller's argument, unchanged.
    created(unsafe { real::epoll_create1(flags) })
}

fn created(epfd: c_int) -> c_int {
    if epfd >= 0 {
        guarded((), || epoll::created(epfd));
    }
    epfd
}

/// Interposed `epoll_ctl(2)`: our fds are kept beside the kernel set.
///
/// # Safety
/// As for `epoll_ctl(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    match table::get(fd) {
        // SAFETY: the caller's event, if any.
        Some(s) => guarded(-1, || match epoll::ctl(epfd, op, fd, s, unsafe { ev.as_ref() }) {
            Ok(()) => 0,
            Err(e) => fail(e),
        }),
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::epoll_ctl(epfd, op, fd, ev) },
    }
}

/// Our epoll_wait, if `epfd` has members of ours.
///
/// # Safety
/// `evs` holds `n` events when `n > 0`; `mask` null or valid.
unsafe fn our_wait(
    epfd: c_int,
    evs: *mut epoll_event,
    n: c_int,
    deadline: impl FnOnce() -> Result<Option<Instant>, c_int>,
    mask: *const libc::sigset_t,
) -> Option<c_int> {
    let set = epoll::get(epfd)?;
    Some(guarded(-1, || {
        if n <= 0 || evs.is_null() {
            return fail(libc::EINVAL);
        }
        let d = match deadline() {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        // SAFETY: the caller's array of `n` events and sigset.
        let (out, m) = unsafe { (std::slice::from_raw_parts_mut(evs, n as usize), mask.as_ref()) };
        match epoll::wait(epfd, &set, out, d, m) {
            Ok(k) => k,
            Err(e) => fail(e),
        }
    }))
}

/// Interposed `epoll_wait(2)`.
///
/// # Safety
/// As for `epoll_wait(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_wait(epfd: c_int, evs: *mut epoll_event, n: c_int, timeout: c_int) -> c_int {
    // SAFETY: the caller's buffer.
    match unsafe { our_wait(epfd, evs, n, || Ok(deadline_ms(timeout)), std::ptr::null()) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::epoll_wait(epfd, evs, n, timeout) },
    }
}

/// Interposed `epoll_pwait(2)`.
///
/// # Safety
/// As for `epoll_pwait(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    evs: *mut epoll_event,
    n: c_int,
    timeout: c_int,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's buffer and mask.
    match unsafe { our_wait(epfd, evs, n, || Ok(deadline_ms(timeout)), mask) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::epoll_pwait(epfd, evs, n, timeout, mask) },
    }
}

/// Interposed `epoll_pwait2(2)`.
///
/// # Safety
/// As for `epoll_pwait2(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn epoll_pwait2(
    epfd: c_int,
    evs: *mut epoll_event,
    n: c_int,
    ts: *const libc::timespec,
    mask: *const libc::sigset_t,
) -> c_int {
    // SAFETY: the caller's buffer, timespec and mask.
    match unsafe { our_wait(epfd, evs, n, || deadline_ts(ts), mask) } {
        Some(r) => r,
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::epoll_pwait2(epfd, evs, n, ts, mask) },
    }
}
