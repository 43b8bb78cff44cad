//! Eventfds: ringing and emptying them (a connection's doorbells too), and
//! ours that wake one waiter each: a thread's, an epoll instance's, a
//! listener's. Hidden from the program (see `fds`) and
//! closed through libc's real `close`, so dropping one never goes through
//! our interposed calls (a thread's bell drops while the thread exits).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::sys::{fds, real};

/// A non-blocking, close-on-exec eventfd, hidden from the program.
#[derive(Debug)]
pub(crate) struct Bell {
    fd: RawFd,
}

impl Bell {
    /// A new bell, or `None` if no eventfd can be made.
    pub(crate) fn new() -> Option<Bell> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: a fresh fd we own.
        let owned = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })?;
        Some(Bell { fd: fds::hide(owned).into_raw_fd() })
    }

    /// The eventfd, to sleep on.
    pub(crate) fn fd(&self) -> RawFd {
        self.fd
    }

    /// Rings it.
    pub(crate) fn ring(&self) {
        ring(self.fd);
    }

    /// Empties it; true if it had been rung.
    pub(crate) fn take(&self) -> bool {
        take(self.fd)
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        fds::unhide(self.fd);
        // SAFETY: our own fd, closed once.
        unsafe { real::close(self.fd) };
    }
}

/// Adds one to eventfd `fd` (a full counter is as good as rung).
pub(crate) fn ring(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    let _ = unsafe { real::write(fd, (&raw const one).cast(), 8) };
}

/// Empties eventfd `fd`; true if it had been rung (false: empty, or another
/// waiter emptied it first).
pub(crate) fn take(fd: RawFd) -> bool {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    unsafe { real::read(fd, (&raw mut v).cast(), 8) == 8 }
}

/// This thread's bell: what its waits (blocked calls, poll) sleep on beside
/// a connection's doorbell, so that whichever waiter empties that doorbell
/// can wake this one (see `Sleepers::fan_out`). `None` if no eventfd can be
/// made. A forked child makes its own (the parent's thread keeps using the
/// one they would share).
pub(crate) fn this_thread() -> Option<Arc<Bell>> {
    thread_local! {
        static MINE: std::cell::RefCell<Option<(u32, Arc<Bell>)>> = const { std::cell::RefCell::new(None) };
    }
    let pid = crate::sys::process::owner_id().get();
    MINE.try_with(|m| {
        let mut m = m.borrow_mut();
        match &*m {
            Some((p, b)) if *p == pid => Some(Arc::clone(b)),
            _ => {
                let b = Arc::new(Bell::new()?);
                *m = Some((pid, Arc::clone(&b)));
                Some(b)
            }
        }
    })
    .ok()
    .flatten()
}
