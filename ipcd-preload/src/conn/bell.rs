//! Doorbells: eventfds that wake one sleeper each — a thread's, an epoll
//! instance's, a listener's — and ringing the doorbells other processes
//! named.
//!
//! A thread (or epoll instance) that sleeps on a connection names its
//! doorbell in the ring's waiting line (`ipcd_ring::Waiters`) by the id
//! the monitor gave it when it was registered (`Request::Bell`); whoever
//! takes the waiting flag rings every doorbell named there. A doorbell of
//! another process is asked of the monitor once (`Request::BellOf`) and
//! kept, so a connection costs no fd for waking: a process holds one
//! doorbell per sleeping thread and one copy per peer thread it rang.
//!
//! Bells are hidden from the program (see `fds`) and closed through
//! libc's real `close`, so dropping one never goes through our interposed
//! calls (a thread's bell drops while the thread exits).

use std::collections::HashMap;
use std::os::fd::{AsFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use ipcd_proto::message::{Request, Response};

use crate::sys::{fds, real};

/// A non-blocking, close-on-exec eventfd, hidden from the program.
#[derive(Debug)]
pub(crate) struct Bell {
    fd: RawFd,
    /// The id the monitor registered it under, with that monitor's pid
    /// and the registering process (a forked child registers its own).
    registered: Mutex<Option<(u32, u32, u64)>>,
}

impl Bell {
    /// A new bell, or `None` if no eventfd can be made.
    pub(crate) fn new() -> Option<Bell> {
        // SAFETY: plain eventfd creation.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        // SAFETY: a fresh fd we own.
        let owned = (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })?;
        Some(Bell { fd: fds::hide(owned).into_raw_fd(), registered: Mutex::new(None) })
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

    /// Its id if it was registered (by this process), without registering.
    pub(crate) fn registered(&self) -> Option<u64> {
        let me = crate::sys::process::owner_id().get();
        lock(&self.registered).filter(|&(_, owner, _)| owner == me).map(|(_, _, id)| id)
    }

    /// The id other processes ring it by, registered with the current
    /// monitor at first use (again after a restart). `None` without a
    /// monitor: a sleeper then naps instead.
    pub(crate) fn id(self: &Arc<Bell>) -> Option<u64> {
        let me = crate::sys::process::owner_id().get();
        let known = *lock(&self.registered);
        if let Some((m, owner, id)) = known {
            if m == crate::control::monitor() && m != 0 && owner == me {
                return Some(id);
            }
        }
        flush_gone();
        let id = crate::control::with(|c| match c.call(&Request::Bell, &[self.as_fd()]) {
            Ok((Response::BellId { id }, _)) => Ok(Some(id)),
            Ok(_) => Ok(None),
            Err(e) => Err(e),
        })
        .flatten()?;
        *lock(&self.registered) = Some((crate::control::monitor(), me, id));
        lock(&OURS).put(id, Arc::downgrade(self));
        Some(id)
    }
}

impl Drop for Bell {
    fn drop(&mut self) {
        if let Some((_, _, id)) = *self.registered.get_mut().unwrap_or_else(|p| p.into_inner()) {
            lock(&OURS).del(&id);
            lock(&GONE).push(id);
        }
        fds::unhide(self.fd);
        // SAFETY: our own fd, closed once.
        unsafe { real::close(self.fd) };
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// This process's registered bells by id (rung directly, never asked for).
static OURS: Mutex<Option<HashMap<u64, std::sync::Weak<Bell>>>> = Mutex::new(None);
/// Other processes' bells by id, as the monitor gave them (`None`: it
/// would not, an id a peer made up or one gone): one fd each.
static PEERS: Mutex<Option<HashMap<u64, Option<OwnedFd>>>> = Mutex::new(None);
/// Ids of bells dropped since the monitor was last told (`Unbell`): a
/// thread's bell drops as the thread exits, no time to talk.
static GONE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Peers' bells kept at most; past it the table starts afresh (its fds
/// closed), and a peer still sleeping is asked for again.
const MAX_PEERS: usize = 1024;

trait Table<V> {
    fn put(&mut self, id: u64, v: V);
    fn del(&mut self, id: &u64);
}

impl<V> Table<V> for Option<HashMap<u64, V>> {
    fn put(&mut self, id: u64, v: V) {
        self.get_or_insert_with(HashMap::new).insert(id, v);
    }

    fn del(&mut self, id: &u64) {
        if let Some(m) = self.as_mut() {
            m.remove(id);
        }
    }
}

/// Tells the monitor of bells dropped since last time.
fn flush_gone() {
    let gone = std::mem::take(&mut *lock(&GONE));
    if !gone.is_empty() {
        let _ = crate::control::with(|c| gone.iter().try_for_each(|&id| c.notify(&Request::Unbell { id })));
    }
}

/// Rings every distinct doorbell among `ids` (0: a free slot): ours
/// directly, another process's through its copy (asked of the monitor the
/// first time). Locks are leaves: none is held while asking.
pub(crate) fn ring_ids(ids: impl IntoIterator<Item = u64>) {
    let mut done = [0u64; 8];
    for (k, id) in ids.into_iter().enumerate() {
        if id == 0 || done.contains(&id) {
            continue;
        }
        if let Some(slot) = done.get_mut(k) {
            *slot = id;
        }
        ring_one(id);
    }
}

fn ring_one(id: u64) {
    let own = lock(&OURS).as_ref().and_then(|m| m.get(&id)).and_then(std::sync::Weak::upgrade);
    if let Some(b) = own {
        b.ring();
        return;
    }
    if let Some(known) = lock(&PEERS).as_ref().and_then(|m| m.get(&id)) {
        if let Some(fd) = known {
            ring(std::os::fd::AsRawFd::as_raw_fd(fd));
        }
        return;
    }
    // `Some(None)`: the monitor has no such doorbell for us (kept as
    // such); `None`: no answer, or its fd could not be received (at the
    // fd limit), so asked again next time.
    let got = crate::control::with(|c| match c.call(&Request::BellOf { id }, &[]) {
        Ok((Response::Bell { id: got }, fds)) if got == id => Ok(fds.into_vec().pop().map(|fd| Some(fds::hide(fd)))),
        Ok(_) => Ok(Some(None)),
        Err(e) => Err(e),
    })
    .flatten();
    let Some(got) = got else { return };
    if let Some(fd) = &got {
        ring(std::os::fd::AsRawFd::as_raw_fd(fd));
    }
    let mut peers = lock(&PEERS);
    if peers.as_ref().is_some_and(|m| m.len() >= MAX_PEERS) {
        let old = peers.take();
        drop(peers);
        drop_peers(old);
        peers = lock(&PEERS);
    }
    // Another thread may have asked for the same one meanwhile: ours goes.
    if peers.as_ref().is_some_and(|m| m.contains_key(&id)) {
        drop(peers);
        drop_peers(Some(HashMap::from([(id, got)])));
        return;
    }
    peers.put(id, got);
}

/// Closes the fds of a peers' table through the real `close` (they are
/// hidden from the interposed one).
fn drop_peers(table: Option<HashMap<u64, Option<OwnedFd>>>) {
    for fd in table.into_iter().flat_map(HashMap::into_values).flatten() {
        let raw = fd.into_raw_fd();
        fds::unhide(raw);
        // SAFETY: our own fd, closed once.
        unsafe { real::close(raw) };
    }
}

/// The doorbell tables' locks, held across a fork (see `fork`): a child
/// keeps the peers' copies (the same eventfds).
pub(crate) struct ForkLock {
    _gone: MutexGuard<'static, Vec<u64>>,
    _peers: MutexGuard<'static, Option<HashMap<u64, Option<OwnedFd>>>>,
    _ours: MutexGuard<'static, Option<HashMap<u64, std::sync::Weak<Bell>>>>,
}

/// Takes the doorbell tables' locks for a fork.
pub(crate) fn lock_for_fork() -> ForkLock {
    let ours = lock(&OURS);
    let peers = lock(&PEERS);
    ForkLock { _gone: lock(&GONE), _peers: peers, _ours: ours }
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

/// This thread's bell: what its waits (blocked calls, poll) sleep on,
/// named in the rings they wait on. `None` if no eventfd can be made. A
/// forked child makes its own (the parent's thread keeps using the one
/// they would share).
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

/// A sleeper's bell and its id, for the waits that name it.
pub(crate) struct Sleeper {
    pub(crate) bell: Arc<Bell>,
    pub(crate) id: u64,
}

impl Sleeper {
    /// This thread's, registered; `None` without a bell or a monitor.
    pub(crate) fn this_thread() -> Option<Sleeper> {
        let bell = this_thread()?;
        let id = bell.id()?;
        Some(Sleeper { bell, id })
    }

    /// Sleeps on `me`'s bell until it rings, `until` (None: no limit), or
    /// a signal, and empties it; without a bell, only until `until`.
    pub(crate) fn sleep(me: Option<&Sleeper>, until: Option<std::time::Instant>) -> crate::conn::wait::Woken {
        crate::conn::wait::sleep_on(me.map_or(-1, |m| m.bell.fd()), until)
    }
}

impl AsFd for Bell {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // SAFETY: our own eventfd, open while `self` lives.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(self.fd) }
    }
}
