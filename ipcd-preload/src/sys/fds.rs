//! Where the library keeps its own fds (control channel, doorbells): high
//! in the fd space and close-on-exec, away from the low numbers programs
//! assume are theirs (`dup2(x, 3)`, "close everything above 2"), and
//! marked, so that a program closing every fd it does not know of
//! (`close` in a loop, `close_range`, `closefrom`) leaves them alone: to the
//! program they do not exist, and closed under us their numbers could come
//! back as the program's files, which a doorbell ring would then write into.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::sys::real;

/// Highest floor we use among the program's numbers: the kernel grows a
/// process's fd table up to the number used, so a huge `RLIMIT_NOFILE`
/// must not make every table huge.
const MAX_FLOOR: libc::rlim_t = 4096;

/// Where our fds go for one move.
enum Place {
    /// From the program's soft limit up: numbers it can never be given, so
    /// our fds never bring it to its limit sooner than on the kernel. The
    /// soft limit is raised to `raised` for the move and put back after
    /// (the kernel keeps fds above a lowered limit working).
    Outside { limit: libc::rlimit, raised: libc::rlim_t },
    /// The hard limit leaves no room above the soft one (or the soft one is
    /// beyond the bitmap): ¾ of the soft limit, at most [`MAX_FLOOR`].
    Inside(libc::rlim_t),
}

/// Held while the soft limit is raised: two threads moving fds at once
/// would otherwise put back each other's limits at the wrong moment. Only
/// tried: a thread that finds it taken (or a forked child that inherited
/// it taken) moves its fds inside instead.
static RAISING: Mutex<()> = Mutex::new(());

impl Place {
    fn now() -> (Place, Option<MutexGuard<'static, ()>>) {
        let guard = RAISING.try_lock().ok();
        let mut limit = libc::rlimit { rlim_cur: 1024, rlim_max: 1024 };
        // SAFETY: getrlimit into a live struct.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
        let top = limit.rlim_max.min(TRACKED as libc::rlim_t);
        if guard.is_some() && limit.rlim_cur.saturating_add(ROOM) <= top {
            (Place::Outside { limit, raised: top }, guard)
        } else {
            (Place::Inside((limit.rlim_cur - limit.rlim_cur / 4).min(MAX_FLOOR)), None)
        }
    }
}

/// Runs `f` with the lowest number our fds may take now (see [`Place`]),
/// the soft limit raised around it when they go above it.
fn moving<R>(f: impl FnOnce(libc::c_int) -> R) -> R {
    let (place, _raising) = Place::now();
    match place {
        Place::Outside { limit, raised } => {
            let up = libc::rlimit { rlim_cur: raised, rlim_max: limit.rlim_max };
            // SAFETY: setrlimit from a live struct; only the soft limit
            // moves, within the hard one.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &up) };
            let r = f(limit.rlim_cur as libc::c_int);
            // SAFETY: setrlimit from a live struct: the values read before.
            unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
            r
        }
        Place::Inside(floor) => f(floor as libc::c_int),
    }
}

/// Numbers kept free above the soft limit for a move to succeed.
const ROOM: libc::rlim_t = 256;

/// Grows the process's fd table to hold our numbers, from the library's
/// constructor. Growing it later, once the program has threads, makes the
/// kernel wait for an RCU grace period (`expand_fdtable`): the first
/// connection of a threaded program took 14 ms more than the next ones.
/// Tables never shrink, so one dup up there now is enough.
pub(crate) fn reserve_table() {
    // SAFETY: plain eventfd creation; a throwaway fd to duplicate.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: `fd` is ours, and so is its copy; both are closed at once.
    let high = moving(|base| unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, (base + 64) as usize) });
    // SAFETY: as above.
    unsafe {
        if high >= 0 {
            real::close(high);
        }
        real::close(fd);
    }
}

/// Fds below this are marked when hidden (the floor is at most 4096, so
/// ours land far below it; one above is simply not protected).
const TRACKED: usize = 1 << 16;

/// One bit per hidden fd.
static HIDDEN: [AtomicU64; TRACKED / 64] = [const { AtomicU64::new(0) }; TRACKED / 64];

fn bit(fd: RawFd) -> Option<(&'static AtomicU64, u64)> {
    let fd = usize::try_from(fd).ok().filter(|&fd| fd < TRACKED)?;
    Some((&HIDDEN[fd / 64], 1 << (fd % 64)))
}

/// Moves `fd` out of the program's way, to a close-on-exec number above
/// its fd limit (or high below it, see [`Place`]; where it is if there is
/// no room) and marks it ours. Whoever owns the result calls [`unhide`]
/// before dropping it.
pub(crate) fn hide(fd: OwnedFd) -> OwnedFd {
    let [fd] = hide_all([fd]);
    fd
}

/// [`hide`] for several fds at once (one change of the limit for all).
pub(crate) fn hide_all<const N: usize>(fds: [OwnedFd; N]) -> [OwnedFd; N] {
    moving(|base| {
        fds.map(|fd| {
            let fd = moved(fd, base);
            mark(fd.as_raw_fd());
            fd
        })
    })
}

/// A hidden copy of `fd` (see [`hide`]), or `None` if there is no room out
/// of the program's way.
pub(crate) fn hidden_copy(fd: RawFd) -> Option<OwnedFd> {
    // SAFETY: duplicates an fd the caller holds open.
    let copy = moving(|base| unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, base as usize) });
    if copy < 0 {
        return None;
    }
    mark(copy);
    // SAFETY: a fresh fd that only we hold.
    Some(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Marks `fd` ours.
fn mark(fd: RawFd) {
    if let Some((w, b)) = bit(fd) {
        w.fetch_or(b, Ordering::Relaxed);
    }
}

fn moved(fd: OwnedFd, base: libc::c_int) -> OwnedFd {
    if fd.as_raw_fd() >= base {
        return fd;
    }
    // SAFETY: duplicates an fd we own; the original closes when `fd` drops.
    let high = unsafe { real::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, base as usize) };
    if high < 0 {
        return fd;
    }
    // SAFETY: `high` is a fresh fd that only we hold.
    unsafe { OwnedFd::from_raw_fd(high) }
}

/// We are about to close hidden `fd` ourselves: the interposed `close`
/// must let it through.
pub(crate) fn unhide(fd: RawFd) {
    if let Some((w, b)) = bit(fd) {
        w.fetch_and(!b, Ordering::Relaxed);
    }
}

/// Whether `fd` is one of ours that the program must not close.
#[inline]
pub(crate) fn is_hidden(fd: RawFd) -> bool {
    bit(fd).is_some_and(|(w, b)| w.load(Ordering::Relaxed) & b != 0)
}

/// Calls `f` on each piece of `first..=last` that holds none of our fds,
/// in order, until it returns `false`; returns whether any piece was seen
/// (no allocation: this runs in forked children too).
pub(crate) fn each_gap(first: u32, last: u32, mut f: impl FnMut(u32, u32) -> bool) -> bool {
    let mut any = false;
    let mut from = first;
    let top = last.min(TRACKED as u32 - 1);
    for fd in first..=top {
        if is_hidden(fd as RawFd) {
            if fd > from {
                any = true;
                if !f(from, fd - 1) {
                    return true;
                }
            }
            from = fd + 1;
        }
    }
    // `from` passed `last` only if `last` itself is ours.
    if from <= last {
        any = true;
        f(from, last);
    }
    any
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(first: u32, last: u32) -> (bool, Vec<(u32, u32)>) {
        let mut out = Vec::new();
        let any = each_gap(first, last, |a, b| {
            out.push((a, b));
            true
        });
        (any, out)
    }

    #[test]
    fn close_ranges_go_around_hidden_fds() {
        // Numbers no test process has open: only the bitmap is exercised.
        for fd in [60_000, 60_002] {
            let (w, b) = bit(fd).unwrap();
            w.fetch_or(b, Ordering::Relaxed);
        }
        assert!(is_hidden(60_000) && !is_hidden(60_001));
        assert_eq!(gaps(59_990, 60_010), (true, vec![(59_990, 59_999), (60_001, 60_001), (60_003, 60_010)]));
        assert_eq!(gaps(60_000, 60_000), (false, vec![]));
        assert_eq!(gaps(60_002, u32::MAX), (true, vec![(60_003, u32::MAX)]));
        assert_eq!(gaps(3, 10), (true, vec![(3, 10)]));
        // Above the bitmap nothing is ours.
        assert_eq!(gaps(70_000, 70_001), (true, vec![(70_000, 70_001)]));
        unhide(60_000);
        unhide(60_002);
        assert_eq!(gaps(59_999, 60_003), (true, vec![(59_999, 60_003)]));
    }
}
