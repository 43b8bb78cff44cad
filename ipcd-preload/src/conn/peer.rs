//! Whether the peer of an end died while no monitor could tell us.
//!
//! The monitor closes a dead process's ends and wakes their peers. If it
//! dies first (killed, restarted) before it did so, or a peer dies while
//! the monitor that made the connection is gone, nobody would: the
//! survivor waited for ever where Linux gives it an end of stream or a
//! reset. So an end whose monitor is gone judges for itself, from the
//! holders its segment names (`ipcd_ring::Segment::holders_named`): when
//! every holder of the peer's side is named and no named process lives,
//! the peer died, and the survivor closes the peer's side as the monitor
//! would have. Waits look at least every [`LOOK_NAP`] (see
//! `wait::nap_until`). A judgment errs only towards "alive": a name from
//! another pid namespace, a process we may not signal, a reused pid all
//! count as alive (the wait then goes on, as it did before).

use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use ipcd_proto::holder;

/// Longest sleep of any wait on an end, so that it looks at whether its
/// monitor and peer still live: a wake-up a second per sleeping thread.
pub(crate) const LOOK_NAP: Duration = Duration::from_secs(1);

/// How often one end looks at most (ms): its waits between looks sleep
/// without one.
pub(crate) const LOOK_EVERY_MS: u64 = 250;

/// How long a "the monitor lives" answer is trusted: one `kill(pid, 0)`
/// per process per interval, however many ends wait.
const MONITOR_CHECK_MS: u64 = 250;

/// The monitor last checked, whether it lived, and when (ms).
static CHECKED_PID: AtomicU32 = AtomicU32::new(0);
static CHECKED_ALIVE: AtomicU32 = AtomicU32::new(0);
static CHECKED_AT_MS: AtomicU64 = AtomicU64::new(0);

/// This process's pid namespace inode, 0 until read (again after fork:
/// a child may be in a new namespace).
static PID_NS: AtomicU64 = AtomicU64::new(0);

/// The inode of our pid namespace (0 if it cannot be read).
fn pid_namespace() -> u64 {
    let ns = PID_NS.load(Ordering::Relaxed);
    if ns != 0 {
        return ns;
    }
    // SAFETY: stat of a fixed path into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a valid out pointer.
    let ns = if unsafe { libc::stat(c"/proc/self/ns/pid".as_ptr(), &mut st) } == 0 { st.st_ino } else { 0 };
    PID_NS.store(ns, Ordering::Relaxed);
    ns
}

/// In a forked child: read the namespace again.
pub(crate) fn forked() {
    PID_NS.store(0, Ordering::Relaxed);
}

/// How this process is named among a side's holders.
pub(crate) fn my_id() -> Option<NonZeroU64> {
    holder::holder_id(pid_namespace(), crate::sys::process::owner_id().get())
}

/// Whether process `pid` of our namespace lives. A zombie (exited, not yet
/// reaped: its sockets are closed) does not; a process whose first thread
/// ended while others run does. Anything we cannot tell counts as alive.
fn lives(pid: u32) -> bool {
    let Ok(p) = libc::pid_t::try_from(pid) else { return true };
    // SAFETY: pidfd_open takes a pid and flags; the fd is ours to close.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, p, 0) };
    if fd < 0 {
        return crate::sys::real::errno() != libc::ESRCH;
    }
    let fd = fd as libc::c_int;
    // A pidfd turns readable when its whole process has exited.
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd, no waiting; then our own fd closed.
    let exited = unsafe {
        let n = crate::sys::real::poll(&mut pfd, 1, 0);
        crate::sys::real::close(fd);
        n == 1 && pfd.revents & libc::POLLIN != 0
    };
    !exited
}

/// Whether the monitor `pid` (the one that made an end) still lives;
/// checked at most every [`MONITOR_CHECK_MS`].
pub(crate) fn monitor_lives(pid: u32) -> bool {
    let now = crate::conn::wait::now_ms();
    if CHECKED_PID.load(Ordering::Relaxed) == pid
        && now.saturating_sub(CHECKED_AT_MS.load(Ordering::Relaxed)) < MONITOR_CHECK_MS
    {
        return CHECKED_ALIVE.load(Ordering::Relaxed) != 0;
    }
    // Pid 0 is no monitor we know of: it cannot close anything for us.
    let alive = pid != 0 && lives(pid);
    CHECKED_PID.store(pid, Ordering::Relaxed);
    CHECKED_ALIVE.store(u32::from(alive), Ordering::Relaxed);
    CHECKED_AT_MS.store(now, Ordering::Relaxed);
    alive
}

/// Whether the holders `ids` (from `holders_named`) are all dead: each a
/// process of our namespace that has exited.
pub(crate) fn all_dead(ids: &[u64]) -> bool {
    let ns = pid_namespace();
    ns != 0 && ids.iter().filter(|&&id| id != 0).all(|&id| holder::holder_pid(id, ns).is_some_and(|pid| !lives(pid)))
}
