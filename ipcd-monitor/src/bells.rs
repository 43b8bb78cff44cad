//! The doorbells processes registered (`Request::Bell`): each the eventfd
//! one thread or one epoll set of theirs sleeps on, named by its id in the
//! waiting lines of the rings it waits on (`ipcd_ring::Waiters`). The
//! monitor hands a doorbell to a process that must ring it (`BellOf`) and
//! rings the named ones itself when it changes a connection under its
//! sleepers (a dead peer's end closed, a waiting connect admitted). Its
//! own sleepers (relay threads, deferred accepts) register here too.
//! Shared with the relay threads, hence the lock.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::segment::ring;

/// Owner of the monitor's own doorbells.
pub const MONITOR: u64 = 0;

struct Entry {
    /// The registering client's token, or [`MONITOR`].
    owner: u64,
    /// Its user: another may ring it only with `--cross-uid`.
    uid: u32,
    fd: Arc<OwnedFd>,
}

/// Every registered doorbell by id.
#[derive(Default)]
pub struct Bells {
    inner: Mutex<Table>,
}

impl std::fmt::Debug for Bells {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bells").field("registered", &self.len()).finish()
    }
}

struct Table {
    next: u64,
    by_id: HashMap<u64, Entry>,
}

impl Default for Table {
    /// Ids start from the clock's microseconds: another monitor run's ids
    /// (named in rings kept across a restart, cached by peers) must not
    /// match ours.
    fn default() -> Table {
        let base = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_micros());
        Table { next: base as u64, by_id: HashMap::new() }
    }
}

impl Bells {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `fd` for `owner` (of user `uid`); its id, never 0.
    pub fn add(&self, owner: u64, uid: u32, fd: OwnedFd) -> u64 {
        let mut t = self.lock();
        t.next += 1;
        let id = t.next;
        t.by_id.insert(id, Entry { owner, uid, fd: Arc::new(fd) });
        id
    }

    /// Doorbell `id` and its owner's user.
    pub fn get(&self, id: u64) -> Option<(u32, Arc<OwnedFd>)> {
        self.lock().by_id.get(&id).map(|e| (e.uid, Arc::clone(&e.fd)))
    }

    /// `owner` no longer sleeps on doorbell `id` (only its owner may say).
    pub fn remove(&self, owner: u64, id: u64) {
        let mut t = self.lock();
        if t.by_id.get(&id).is_some_and(|e| e.owner == owner) {
            t.by_id.remove(&id);
        }
    }

    /// Drops every doorbell of `owner` (its client went).
    pub fn drop_owner(&self, owner: u64) {
        self.lock().by_id.retain(|_, e| e.owner != owner);
    }

    /// How many are registered (for `ipcd status`'s books and tests).
    pub fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Whether none is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rings each distinct doorbell among `ids` (0 and unknown ids, which
    /// a hostile peer may write, are skipped).
    pub fn ring_ids(&self, ids: impl IntoIterator<Item = u64>) {
        let mut rung: Vec<u64> = Vec::new();
        let fds: Vec<Arc<OwnedFd>> = {
            let t = self.lock();
            ids.into_iter()
                .filter(|id| {
                    *id != 0 && !rung.contains(id) && {
                        rung.push(*id);
                        true
                    }
                })
                .filter_map(|id| t.by_id.get(&id).map(|e| Arc::clone(&e.fd)))
                .collect()
        };
        for fd in fds {
            ring(fd.as_fd());
        }
    }

    /// Rings every sleeper `side` of `seg` named (waiting for data or
    /// room): after the monitor changed what they wait on.
    pub fn ring_side(&self, seg: &ipcd_ring::Segment, side: ipcd_ring::Side) {
        self.ring_ids(seg.waiters_of(side).iter().flat_map(|w| w.ids()));
    }
}
