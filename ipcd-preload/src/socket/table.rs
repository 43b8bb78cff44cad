//! The fd table: fd number → socket object, for the fds that are ours.
//!
//! A lookup for an fd that is not ours (files, pipes, kernel sockets) is one
//! bounds check and one atomic load. Entries are swapped out by `close` and
//! freed through `crossbeam-epoch`, so a lookup racing a close in another
//! thread never reads freed memory; the lookup then holds an `Arc` of its
//! own, as a system call holds a reference to its file.
//!
//! The data calls look up the same fds again and again; for them [`held`]
//! keeps, per thread, the sockets of the last fds used (one per fd modulo
//! [`CACHED`]) with each fd's generation (bumped by every install and
//! remove): while the generation is unchanged, the fd still names that
//! socket, and the lookup costs no locked instruction (an epoch pin, an
//! `Arc` clone and its drop cost three, a tenth of a call).

use std::cell::{Cell, UnsafeCell};
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Atomic, Owned};

use crate::socket::Socket;

/// Fds at or above this are never accelerated (they stay kernel sockets).
pub(crate) const TABLE_LEN: usize = 1 << 16;

/// One table slot's content.
struct Entry(Arc<Socket>);

static TABLE: [Atomic<Entry>; TABLE_LEN] = [const { Atomic::null() }; TABLE_LEN];
/// Slots in use: a process with none (most forks of a shell) skips the
/// walk of the whole table at fork and exec.
static LIVE: AtomicUsize = AtomicUsize::new(0);
/// Per fd: how many times its slot changed (see [`held`]).
static GENERATION: [AtomicU64; TABLE_LEN] = [const { AtomicU64::new(0) }; TABLE_LEN];

/// Entries of a thread's cache of lookups: a server thread serving many
/// connections (redis, nginx) finds most of them here.
const CACHED: usize = 64;

/// A socket a thread looked up through [`held`], and the fd's generation
/// then. Holding its `Arc` keeps a closed socket's memory (not its
/// connection, which close released) until another fd takes the entry,
/// or the thread exits.
struct Last {
    fd: libc::c_int,
    generation: u64,
    sock: Option<Arc<Socket>>,
}

/// A thread's cache of lookups: one thread-local access per lookup (each
/// is a call into the dynamic linker from a preloaded library).
struct Cache {
    /// A [`Held`] borrows `entries`: a lookup meanwhile (a signal
    /// handler's call, a second fd of splice) takes the uncached way.
    borrowed: Cell<bool>,
    entries: UnsafeCell<[Last; CACHED]>,
}

thread_local! {
    static CACHE: Cache = const {
        Cache {
            borrowed: Cell::new(false),
            entries: UnsafeCell::new([const { Last { fd: -1, generation: 0, sock: None } }; CACHED]),
        }
    };
}

/// A socket found by [`held`]: borrowed from the thread's cache, or owned.
pub(crate) enum Held {
    /// A socket of the thread's cache, and the cache's `borrowed` flag,
    /// set until this drops so that the entry cannot change meanwhile.
    Cached(NonNull<Socket>, NonNull<Cell<bool>>),
    /// Found the uncached way.
    Owned(Arc<Socket>),
}

impl Deref for Held {
    type Target = Socket;

    fn deref(&self) -> &Socket {
        match self {
            // SAFETY: the thread's cache holds an `Arc` of it and neither
            // replaces nor drops it while `borrowed` is set, which this
            // value does until it drops (it is `!Send`: the thread's own).
            Held::Cached(p, _) => unsafe { p.as_ref() },
            Held::Owned(a) => a,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Held::Cached(_, borrowed) = self {
            // SAFETY: the flag of this thread's cache, which lives until the
            // thread exits, after every call of the thread has returned.
            unsafe { borrowed.as_ref() }.set(false);
        }
    }
}

/// [`get`] for the data calls, through the thread's cache of the sockets
/// it used last (see the module). For an fd that is not ours it is the
/// same one bounds check and one atomic load.
///
/// Always inlined: returned from a call, the `Option<Held>` went through
/// the stack as two 8-byte stores read back as one 16-byte load, which
/// cannot be forwarded from the store buffer (perf put 44 % of the
/// interposed `send`'s samples on it; 8-byte sends 14.6 -> 17.8 M/s).
#[inline(always)]
pub(crate) fn held(fd: libc::c_int) -> Option<Held> {
    occupied(fd)?;
    // Read before the entry (on a miss): a change in between then shows as
    // a new generation at the next lookup, never as a stale hit.
    let generation = GENERATION[fd as usize].load(Ordering::Acquire);
    // `None`: the cache cannot be used now; `Some(None)`: the fd is empty.
    let found = CACHE.try_with(|cache| {
        if cache.borrowed.replace(true) {
            return None;
        }
        // SAFETY: `borrowed` was ours to set, so nothing else on this
        // thread touches the entries until it is cleared (a signal
        // handler's lookup sees it set and goes the uncached way).
        let last = unsafe { &mut (*cache.entries.get())[fd as usize % CACHED] };
        if last.fd != fd || last.generation != generation || last.sock.is_none() {
            last.sock = get(fd);
            (last.fd, last.generation) = (fd, generation);
        }
        let found = last.sock.as_deref().map(|s| (NonNull::from(s), NonNull::from(&cache.borrowed)));
        if found.is_none() {
            cache.borrowed.set(false);
        }
        Some(found)
    });
    match found {
        Ok(Some(Some((sock, borrowed)))) => Some(Held::Cached(sock, borrowed)),
        // Closed meanwhile: the lookup just made says so.
        Ok(Some(None)) => None,
        // Borrowed already, or the thread is exiting.
        _ => get(fd).map(Held::Owned),
    }
}

fn slot(fd: libc::c_int) -> Option<&'static Atomic<Entry>> {
    TABLE.get(usize::try_from(fd).ok()?)
}

/// `fd`'s slot if it holds a socket: the one bounds check and one relaxed
/// load that every lookup of an fd that is not ours costs.
#[inline]
fn occupied(fd: libc::c_int) -> Option<&'static Atomic<Entry>> {
    slot(fd).filter(|s| is_set(s))
}

#[inline]
fn is_set(slot: &Atomic<Entry>) -> bool {
    // SAFETY: `unprotected` is only used for a null check; the pointer is
    // not dereferenced without a pinned guard.
    !slot.load(Ordering::Relaxed, unsafe { epoch::unprotected() }).is_null()
}

/// Whether `fd` is ours now (the lookup every fd costs).
#[inline]
pub(crate) fn is_ours(fd: libc::c_int) -> bool {
    occupied(fd).is_some()
}

/// The socket behind `fd`, if it is ours.
#[inline]
pub(crate) fn get(fd: libc::c_int) -> Option<Arc<Socket>> {
    let slot = occupied(fd)?;
    let guard = epoch::pin();
    let shared = slot.load(Ordering::Acquire, &guard);
    // SAFETY: entries are only freed through `defer_destroy` after being
    // swapped out, so one loaded under a live guard is still allocated.
    unsafe { shared.as_ref() }.map(|e| Arc::clone(&e.0))
}

/// Makes `fd` refer to `sock`, returning what it referred to before.
pub(crate) fn install(fd: libc::c_int, sock: Arc<Socket>) -> Result<Option<Arc<Socket>>, Arc<Socket>> {
    let Some(slot) = slot(fd) else { return Err(sock) };
    sock.add_fd();
    let guard = epoch::pin();
    let old = slot.swap(Owned::new(Entry(sock)), Ordering::AcqRel, &guard);
    bump(fd);
    if old.is_null() {
        LIVE.fetch_add(1, Ordering::Relaxed);
    }
    Ok(retire(old, &guard))
}

/// Forgets `fd`, returning the socket it referred to.
pub(crate) fn remove(fd: libc::c_int) -> Option<Arc<Socket>> {
    let slot = occupied(fd)?;
    let guard = epoch::pin();
    let old = slot.swap(epoch::Shared::null(), Ordering::AcqRel, &guard);
    bump(fd);
    if !old.is_null() {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
    retire(old, &guard)
}

/// After `fd`'s slot changed: cached lookups of it miss from now on.
fn bump(fd: libc::c_int) {
    // Release pairs with `held`'s Acquire: a lookup that sees the new
    // generation sees the new slot.
    GENERATION[fd as usize].fetch_add(1, Ordering::Release);
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

/// Whether no fd is ours (a load).
pub(crate) fn is_empty() -> bool {
    LIVE.load(Ordering::Relaxed) == 0
}

/// Every distinct socket in the table (one however many fds it has).
pub(crate) fn sockets() -> Vec<Arc<Socket>> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for_each(|s| {
        if seen.insert(Arc::as_ptr(s) as usize) {
            out.push(Arc::clone(s));
        }
    });
    out
}

/// Calls `f` for every fd's socket (a socket with several fds, once per fd).
pub(crate) fn for_each(mut f: impl FnMut(&Arc<Socket>)) {
    for_each_fd(|_, s| f(s));
}

/// Calls `f` with every fd of ours and its socket.
pub(crate) fn for_each_fd(mut f: impl FnMut(libc::c_int, &Arc<Socket>)) {
    if is_empty() {
        return;
    }
    let guard = epoch::pin();
    for (fd, slot) in TABLE.iter().enumerate() {
        if !is_set(slot) {
            continue;
        }
        // SAFETY: loaded under a live guard, as in `get`.
        if let Some(e) = unsafe { slot.load(Ordering::Acquire, &guard).as_ref() } {
            f(fd as libc::c_int, &e.0);
        }
    }
}
