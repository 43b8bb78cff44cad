//! Whose work a spinner's yield gave its core to.
//!
//! A spinner yields its core between looks (see `wait`), so that a peer
//! waiting for that core runs. When the core goes to threads of ours, they
//! yield it back within microseconds or do our work meanwhile. When it
//! goes to a busy program that never yields, the spinner gets it back only
//! at the scheduler's tick (4 ms here), and the answer it waits for,
//! written to shared memory, wakes nobody: with two busy loops on this
//! 2-core machine, one client thread made 0.3 k connections/s against the
//! kernel's 5 k/s. Both kinds of slow yield are common (several pairs of
//! ours on two cores: one yield in twenty takes over a millisecond), so
//! the length of a yield does not tell them apart; who else yielded on
//! that core meanwhile does. Every ipcd process of a user counts its
//! yields per CPU in one shared page, `/dev/shm/ipcd-yields-v1-<uid>` (16
//! KiB, kept for the next processes; the layout's version is in the name,
//! as a file shrunk under a mapping would fault its readers). The counts
//! steer spinning only: a page another process scribbles on misleads the
//! choice between spinning and sleeping, nothing else.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

use crate::sys::real;

/// CPUs counted apart; beyond, CPUs share counters (a shared counter
/// can only make a yield look like ours).
const CPUS: usize = 256;

/// One CPU's count, alone on its cache line.
#[repr(C, align(64))]
struct Count(AtomicU64);

type Page = [Count; CPUS];

const PAGE_LEN: usize = std::mem::size_of::<Page>();

static PAGE: AtomicPtr<Page> = AtomicPtr::new(std::ptr::null_mut());
static TRIED: AtomicBool = AtomicBool::new(false);

/// The shared page, mapped at the first call; `None` if it cannot be.
fn page() -> Option<&'static Page> {
    let p = PAGE.load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: set once below to a live shared mapping of PAGE_LEN bytes,
        // never unmapped; every bit pattern is a valid `AtomicU64`.
        return Some(unsafe { &*p });
    }
    if TRIED.swap(true, Ordering::Relaxed) {
        return None;
    }
    let p = map()?;
    PAGE.store(p, Ordering::Release);
    // SAFETY: as above.
    Some(unsafe { &*p })
}

/// `/dev/shm/ipcd-yields-v1-<uid>`, NUL-terminated, built without allocating
/// (a blocked call may run in a signal handler).
fn path(uid: libc::uid_t, buf: &mut [u8; 48]) -> &[u8] {
    const PREFIX: &[u8] = b"/dev/shm/ipcd-yields-v1-";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 10];
    let (mut n, mut k) = (uid, digits.len());
    loop {
        k -= 1;
        digits[k] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let end = PREFIX.len() + digits.len() - k;
    buf[PREFIX.len()..end].copy_from_slice(&digits[k..]);
    buf[end] = 0;
    &buf[..=end]
}

fn map() -> Option<*mut Page> {
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    let mut buf = [0u8; 48];
    let path = path(uid, &mut buf);
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr().cast(), flags, 0o600) };
    if fd < 0 {
        return None;
    }
    // SAFETY: an all-zero stat is a valid out buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our fd and a live stat.
    let ours = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_uid == uid
        && st.st_mode & libc::S_IFMT == libc::S_IFREG
        // SAFETY: our fd; growing a file others map only adds zeros.
        && (st.st_size >= PAGE_LEN as libc::off_t || unsafe { libc::ftruncate(fd, PAGE_LEN as libc::off_t) } == 0);
    let p = if ours {
        // SAFETY: a fresh shared mapping of the file's first PAGE_LEN bytes,
        // which it has.
        unsafe {
            libc::mmap(std::ptr::null_mut(), PAGE_LEN, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        }
    } else {
        libc::MAP_FAILED
    };
    // SAFETY: our fd; the mapping outlives it.
    unsafe { real::close(fd) };
    (p != libc::MAP_FAILED).then_some(p.cast())
}

/// A yield about to begin: the count of the CPU it gives up, and its
/// value with this yield.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    count: &'static AtomicU64,
    value: u64,
}

/// Counts a yield about to begin on this CPU.
pub(crate) fn before() -> Option<Mark> {
    let page = page()?;
    // SAFETY: no arguments.
    let cpu = usize::try_from(unsafe { libc::sched_getcpu() }).ok()? % CPUS;
    let count = &page[cpu].0;
    let value = count.fetch_add(1, Ordering::Relaxed) + 1;
    Some(Mark { count, value })
}

/// After a slow yield: whether a thread of ours yielded on that CPU
/// meanwhile, so the core went to our work. Without the page, no.
pub(crate) fn others_ran(mark: Option<Mark>) -> bool {
    mark.is_some_and(|m| m.count.load(Ordering::Relaxed) != m.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins the calling thread to the CPU it runs on, so that two counts
    /// in a row fall on one CPU.
    fn pin_here() {
        // SAFETY: no arguments.
        let cpu = unsafe { libc::sched_getcpu() };
        assert!(cpu >= 0, "sched_getcpu");
        // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET stays
        // within it for a CPU the kernel reported.
        let ok = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
        };
        assert!(ok, "sched_setaffinity");
    }

    #[test]
    fn the_page_is_named_by_uid() {
        let mut buf = [0u8; 48];
        assert_eq!(path(0, &mut buf), b"/dev/shm/ipcd-yields-v1-0\0");
        assert_eq!(path(4_294_967_295, &mut buf), b"/dev/shm/ipcd-yields-v1-4294967295\0");
        assert_eq!(path(1000, &mut buf), b"/dev/shm/ipcd-yields-v1-1000\0");
    }

    #[test]
    fn a_yield_counted_on_the_same_cpu_after_a_mark_is_seen() {
        pin_here();
        let first = before().expect("the shared page maps");
        // Other processes of this user can only add to the count.
        let _second = before();
        assert!(others_ran(Some(first)));
    }
}
