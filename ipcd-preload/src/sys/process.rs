//! Who this process is, for locks in shared memory and for the monitor:
//! its pid (refreshed after a fork), the parent a forked child names once,
//! and [`Pinned`], which keeps a value alive across a fork.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// This process's id, refreshed in the child (used as lock owner).
static PID: AtomicU32 = AtomicU32::new(0);
/// The parent's pid in a forked child that has not registered yet.
static PARENT: AtomicU32 = AtomicU32::new(0);
/// This process's id as a lock owner.
pub(crate) fn owner_id() -> NonZeroU32 {
    let mut pid = PID.load(Ordering::Relaxed);
    if pid == 0 {
        // SAFETY: getpid cannot fail.
        pid = unsafe { libc::getpid() } as u32;
        PID.store(pid, Ordering::Relaxed);
    }
    NonZeroU32::new(pid).unwrap_or(NonZeroU32::MIN)
}

/// The parent to name in `Forked`, once (the first channel of a child).
pub(crate) fn take_parent() -> Option<u32> {
    Some(PARENT.swap(0, Ordering::Relaxed)).filter(|&p| p != 0)
}

/// In a forked child: forget the parent's pid (re-read on next use).
pub(crate) fn forked() {
    PID.store(0, Ordering::Relaxed);
}

/// In a forked child that holds something of ours: the parent to name
/// when it registers.
pub(crate) fn set_parent(parent: u32) {
    PARENT.store(parent, Ordering::Relaxed);
}

/// An `Arc`'s value kept alive with a `'static` borrow, for guards held
/// across a fork (their owner must outlive them): the `Arc` is turned into
/// a raw pointer and back on drop. Declare it after the guards borrowing
/// from it, so that they drop first.
pub(crate) struct Pinned<T>(*const T);

impl<T> Pinned<T> {
    pub(crate) fn new(a: &Arc<T>) -> (Pinned<T>, &'static T) {
        let p = Arc::into_raw(Arc::clone(a));
        // SAFETY: the Arc leaked just above keeps the value alive until the
        // `Pinned` drops, after every borrow made from it (field order).
        (Pinned(p), unsafe { &*p })
    }

    /// The value's address (an identity, as `Arc::as_ptr`).
    pub(crate) fn addr(&self) -> usize {
        self.0 as usize
    }

    pub(crate) fn get(&self) -> &T {
        // SAFETY: live while `self` is (see `new`).
        unsafe { &*self.0 }
    }
}

impl<T> Drop for Pinned<T> {
    fn drop(&mut self) {
        // SAFETY: made by `Arc::into_raw` in `new`, given back once.
        drop(unsafe { Arc::from_raw(self.0) });
    }
}
