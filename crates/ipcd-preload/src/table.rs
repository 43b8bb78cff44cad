//! The fd table: fd number → socket object, for the fds that are ours.
//!
//! A lookup for an fd that is not ours (files, pipes, kernel sockets) is one
//! bounds check and one atomic load. Entries are swapped out by `close` and
//! freed through `crossbeam-epoch`, so a lookup racing a close in another
//! thread never reads freed memory; the lookup then holds an `Arc` of its
//! own, as a system call holds a reference to its file.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Atomic, Owned};

use crate::socket::Socket;

/// Fds at or above this are never accelerated (they stay kernel sockets).
pub const TABLE_LEN: usize = 1 << 16;

/// One table slot's content.
struct Entry(Arc<Socket>);

static TABLE: [Atomic<Entry>; TABLE_LEN] = [const { Atomic::null() }; TABLE_LEN];
/// Slots in use: a process with none (most forks of a shell) skips the
/// walk of the whole table at fork and exec.
static LIVE: AtomicUsize = AtomicUsize::new(0);

fn slot(fd: libc::c_int) -> Option<&'static Atomic<Entry>> {
    TABLE.get(usize::try_from(fd).ok()?)
}

/// The socket behind `fd`, if it is ours.
#[inline]
pub fn get(fd: libc::c_int) -> Option<Arc<Socket>> {
    let slot = slot(fd)?;
    // SAFETY: `unprotected` is only used for a null check; the pointer is not
    // dereferenced without the pinned guard below.
    if slot.load(std::sync::atomic::Ordering::Relaxed, unsafe { epoch::unprotected() }).is_null() {
        return None;
    }
    let guard = epoch::pin();
    let shared = slot.load(std::sync::atomic::Ordering::Acquire, &guard);
    // SAFETY: entries are only freed through `defer_destroy` after being
    // swapped out, so one loaded under a live guard is still allocated.
    unsafe { shared.as_ref() }.map(|e| Arc::clone(&e.0))
}

/// Makes `fd` refer to `sock`, returning what it referred to before.
pub fn install(fd: libc::c_int, sock: Arc<Socket>) -> Result<Option<Arc<Socket>>, Arc<Socket>> {
    let Some(slot) = slot(fd) else { return Err(sock) };
    sock.add_fd();
    let guard = epoch::pin();
    let old = slot.swap(Owned::new(Entry(sock)), std::sync::atomic::Ordering::AcqRel, &guard);
    if old.is_null() {
        LIVE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(retire(old, &guard))
}

/// Forgets `fd`, returning the socket it referred to.
pub fn remove(fd: libc::c_int) -> Option<Arc<Socket>> {
    let slot = slot(fd)?;
    // SAFETY: null check only, as in `get`.
    if slot.load(std::sync::atomic::Ordering::Relaxed, unsafe { epoch::unprotected() }).is_null() {
        return None;
    }
    let guard = epoch::pin();
    let old = slot.swap(epoch::Shared::null(), std::sync::atomic::Ordering::AcqRel, &guard);
    if !old.is_null() {
        LIVE.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    retire(old, &guard)
}

/// Takes an `Arc` out of a swapped-out entry and frees the entry once no
/// lookup can still read it.
fn retire(old: epoch::Shared<'_, Entry>, guard: &epoch::Guard) -> Option<Arc<Socket>> {
    // SAFETY: `old` was swapped out under `guard`, so it is allocated now and
    // no later lookup can find it.
    let entry = unsafe { old.as_ref() }?;
    let sock = Arc::clone(&entry.0);
    // SAFETY: nothing can load `old` again; pinned readers are waited for.
    unsafe { guard.defer_destroy(old) };
    Some(sock)
}

/// Calls `f` for every fd's socket (a socket with several fds, once per fd).
pub fn for_each(mut f: impl FnMut(&Arc<Socket>)) {
    for_each_fd(|_, s| f(s));
}

/// Calls `f` with every fd of ours and its socket.
pub fn for_each_fd(mut f: impl FnMut(libc::c_int, &Arc<Socket>)) {
    if LIVE.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        return;
    }
    let guard = epoch::pin();
    for (fd, slot) in TABLE.iter().enumerate() {
        // SAFETY: null check only, as in `get`.
        if slot.load(std::sync::atomic::Ordering::Relaxed, unsafe { epoch::unprotected() }).is_null() {
            continue;
        }
        // SAFETY: loaded under a live guard, as in `get`.
        if let Some(e) = unsafe { slot.load(std::sync::atomic::Ordering::Acquire, &guard).as_ref() } {
            f(fd as libc::c_int, &e.0);
        }
    }
}
