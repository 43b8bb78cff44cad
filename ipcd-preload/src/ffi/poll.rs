//! Interposed readiness calls: poll, ppoll, select, pselect and epoll.
//! Calls that involve none of our fds go straight to libc after one table
//! lookup per fd (epoll: one atomic load when no epoll set has our fds).

use std::time::{Duration, Instant};

use libc::{c_int, epoll_event, nfds_t, pollfd};

use super::{chk_fail, fail};
use crate::ready::poll::{self, SelectSets};
use crate::ready::{epoll, readiness};
use crate::socket::table;
use crate::sys::{guarded, real, user};

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
    // SAFETY: a timespec is plain data.
    let t = unsafe { user::read(ts) }.ok_or(libc::EFAULT)?;
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
    // An array we cannot read and write back: the kernel answers EFAULT.
    if !user::all_accessible(fds.cast(), n as usize * std::mem::size_of::<pollfd>(), true) {
        return None;
    }
    // SAFETY: the caller's array of `n` pollfds, readable and writable.
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
        let m = match sigmask(mask) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        match poll::poll(slice, &ours, d, m.as_ref()) {
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

/// The program's signal mask for a wait, copied: `EFAULT` if unreadable.
fn sigmask(mask: *const libc::sigset_t) -> Result<Option<libc::sigset_t>, c_int> {
    if mask.is_null() {
        return Ok(None);
    }
    // SAFETY: a sigset_t is plain data.
    unsafe { user::read(mask) }.map(Some).ok_or(libc::EFAULT)
}

/// Whether any fd below `nfds` in the three sets is ours. Nothing of the
/// sets is read unless some fd below `nfds` is ours, and sets that cannot
/// be read and written back leave the call to the kernel (`EFAULT`).
///
/// # Safety
/// Each set null or a pointer from the program.
unsafe fn sets_have_ours(nfds: c_int, sets: [*mut libc::fd_set; 3]) -> bool {
    let n = nfds.clamp(0, libc::FD_SETSIZE as c_int);
    if !(0..n).any(|fd| table::get(fd).is_some()) {
        return false;
    }
    // The kernel's size of a set of `nfds` bits: whole longs.
    let bytes = (n as usize).div_ceil(64) * 8;
    if sets.iter().any(|s| !s.is_null() && !user::all_accessible(s.cast(), bytes, true)) {
        return false;
    }
    (0..n).any(|fd| {
        // SAFETY: accessible sets (above), fd below their size.
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
        let m = match sigmask(mask) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        if let Err(err) = poll::poll(&mut sets.fds, &ours, deadline, m.as_ref()) {
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
        // SAFETY: a timeval is plain data.
        let Some(tv) = (unsafe { user::read(timeout) }) else { return fail(libc::EFAULT) };
        if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
            return fail(libc::EINVAL);
        }
        after(Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec as u64))
    };
    // SAFETY: the caller's sets.
    let n = unsafe { our_select(nfds, r, w, e, deadline, std::ptr::null()) };
    if let (false, Some(d)) = (timeout.is_null(), deadline) {
        let left = d.saturating_duration_since(Instant::now());
        let tv = libc::timeval {
            tv_sec: left.as_secs() as libc::time_t,
            tv_usec: left.subsec_micros() as libc::suseconds_t,
        };
        // Linux ignores a timeout it cannot write back.
        user::write(timeout, tv);
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
        Some(s) => guarded(-1, || {
            // SAFETY: an epoll_event is plain data.
            let ev = if ev.is_null() { None } else { Some(unsafe { user::read(ev) }) };
            let ev = match ev {
                // A delete ignores the event; the others need one.
                Some(None) if op != libc::EPOLL_CTL_DEL => return fail(libc::EFAULT),
                Some(e) => e,
                None => None,
            };
            match epoll::ctl(epfd, op, fd, s, ev.as_ref()) {
                Ok(()) => 0,
                Err(e) => fail(e),
            }
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
        if n <= 0 {
            return fail(libc::EINVAL);
        }
        if !user::all_accessible(evs.cast(), n as usize * std::mem::size_of::<epoll_event>(), true) {
            return fail(libc::EFAULT);
        }
        let d = match deadline() {
            Ok(d) => d,
            Err(e) => return fail(e),
        };
        let m = match sigmask(mask) {
            Ok(m) => m,
            Err(e) => return fail(e),
        };
        // SAFETY: the caller's array of `n` events, writable (above).
        let out = unsafe { std::slice::from_raw_parts_mut(evs, n as usize) };
        match epoll::wait(epfd, &set, out, d, m.as_ref()) {
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
