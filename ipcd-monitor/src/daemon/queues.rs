//! Request queues (`--queues per-process|shared`): each process gets a
//! ring in shared memory for its requests that carry no fds and wait for
//! no reply, which the polling loop reads instead of a channel message.
//! In the shared mode all processes also map one index queue, where a
//! process writes its number when its ring's reader (us) asked to be
//! told; the loop then polls that queue alone, and every ring now and
//! then in case a number was lost (a full queue, or a process that wrote
//! the shared words). What a ring holds is the process's own word:
//! anything malformed ends its registration, as a bad channel message does.

use std::fs::File;
use std::time::{Duration, Instant};

use ipcd_proto::channel::Fds;
use ipcd_proto::message::Response;
use ipcd_ring::{IndexQueue, Pop};
use memmap2::MmapMut;
use std::os::fd::AsFd;

use super::Daemon;
use crate::config::Queues;
use crate::log;
use crate::log::Level;
use crate::segment::{sealed_memfd, SharedSegment};

/// Each ring of a process's request queue: ~140 frames.
const RING_BYTES: u64 = 16 << 10;
/// Entries in the shared index queue.
const INDEX_SLOTS: usize = 4096;
/// Requests taken from one process's ring before the next process's turn.
const TURN: usize = 64;
/// How often every ring is looked at in the shared mode.
const SWEEP: Duration = Duration::from_millis(1);
/// Looks at a reserved but unwritten index entry before it is skipped.
const PENDING_LOOKS: u32 = 1000;

/// A process's request ring, read here.
pub(super) struct ClientQueue {
    /// Declared before the segment it points into.
    rx: ipcd_ring::Consumer,
    seg: SharedSegment,
    /// Its number in the index queue.
    index: u32,
}

/// The shared index queue and who each number is.
struct Shared {
    /// Declared before the mapping it points into.
    queue: IndexQueue,
    file: File,
    _map: MmapMut,
}

/// The daemon's request queues.
#[derive(Default)]
pub(super) struct RequestQueues {
    shared: Option<Shared>,
    /// Client tokens by index-queue number (0: free).
    by_index: Vec<u64>,
    /// Tokens of clients with a ring, in the order they are polled.
    polled: Vec<u64>,
    last_sweep: Option<Instant>,
    /// Clients whose turn ended with requests left (shared mode).
    busy: Vec<u64>,
    /// Where the index queue is read next: kept here, since the shared
    /// word may be anyone's (see `ipcd_ring::Popper`).
    head: u64,
}

impl Daemon {
    /// At `Hello` in a queue mode: makes the process's ring (and the
    /// shared queue at the first) and sends them before the `Welcome`.
    /// A failure leaves the process on its channel alone.
    pub(super) fn give_queue(&mut self, token: u64) {
        if self.cfg.queues == Queues::Channel {
            return;
        }
        let shared = self.cfg.queues == Queues::Shared;
        if shared && self.queues.shared.is_none() {
            match make_index_queue() {
                Ok(s) => self.queues.shared = Some(s),
                Err(e) => {
                    log!(Level::Warn, "msg=\"no shared request queue\" err=\"{e}\"");
                    return;
                }
            }
        }
        let seg = match SharedSegment::create_whole(0, RING_BYTES) {
            Ok(s) => s,
            Err(e) => {
                log!(Level::Warn, "msg=\"no request queue\" client={token} err=\"{e}\"");
                return;
            }
        };
        // SAFETY: the monitor is the ring's one reader (the process writes).
        let Ok(rx) = (unsafe { seg.view().consumer(ipcd_ring::Side::B) }) else { return };
        let index = match self.queues.by_index.iter().position(|&t| t == 0) {
            Some(i) => i,
            None => {
                self.queues.by_index.push(0);
                self.queues.by_index.len() - 1
            }
        };
        let Ok(number) = u32::try_from(index) else { return };
        let resp = Response::Queue { index: number, shared };
        let mut fds = vec![seg.fd()];
        fds.extend(self.queues.shared.as_ref().filter(|_| shared).map(|s| s.file.as_fd()));
        if super::send_to(&mut self.clients, &mut self.watch, token, 0, &resp, &fds).is_err() {
            return;
        }
        let mut q = ClientQueue { rx, seg, index: number };
        if shared {
            // Told through the index queue from the first request on.
            let _ = q.rx.prepare_wait();
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.queue = Some(q);
            self.queues.by_index[index] = token;
            self.queues.polled.push(token);
        }
    }

    /// A client is gone: its number and its place in the polling order.
    pub(super) fn drop_queue(&mut self, token: u64, q: Option<ClientQueue>) {
        let Some(q) = q else { return };
        if let Some(slot) = self.queues.by_index.get_mut(q.index as usize) {
            *slot = 0;
        }
        self.queues.polled.retain(|&t| t != token);
        self.queues.busy.retain(|&t| t != token);
        drop(q.seg);
    }

    /// Handles what a client's ring holds, up to `max` requests. Called
    /// before each read of its channel and before its death is handled,
    /// so its requests keep the order it sent them in. True when it
    /// stopped at `max` with more there (in the shared mode nobody will
    /// say so: the ring is only told to tell us once it is empty).
    pub(super) fn take_queued(&mut self, token: u64, max: usize) -> bool {
        let shared = self.cfg.queues == Queues::Shared;
        for _ in 0..max {
            let Some(q) = self.clients.get_mut(&token).and_then(|c| c.queue.as_mut()) else { return false };
            match ipcd_proto::queue::pop(&mut q.rx) {
                Ok(Some(req)) => {
                    log!(Level::Debug, "msg=request client={token} queued=true req=\"{req:?}\"");
                    self.handle(token, 0, req, Fds::default());
                    if self.doomed.iter().any(|(t, _)| *t == token) {
                        return false;
                    }
                }
                Ok(None) => {
                    // Shared mode: ask to be told of the next one; a
                    // request that came meanwhile is taken now.
                    if !shared || q.rx.prepare_wait() == Ok(ipcd_ring::Wait::Sleep) {
                        return false;
                    }
                }
                Err(e) => {
                    self.doom(token, format!("bad request queue: {e}"));
                    return false;
                }
            }
        }
        true
    }

    /// One look at the queues from the polling loop.
    pub(super) fn poll_queues(&mut self) {
        match self.cfg.queues {
            Queues::Channel => {}
            Queues::PerProcess => self.sweep_queues(),
            Queues::Shared => {
                self.pop_index_queue();
                let now = Instant::now();
                if self.queues.last_sweep.is_none_or(|t| now.duration_since(t) >= SWEEP) {
                    self.queues.last_sweep = Some(now);
                    self.sweep_queues();
                }
            }
        }
    }

    fn sweep_queues(&mut self) {
        for i in 0..self.queues.polled.len() {
            let Some(&token) = self.queues.polled.get(i) else { break };
            let _ = self.take_queued(token, TURN);
        }
        self.drop_doomed();
    }

    /// Serves the processes whose numbers the index queue holds.
    fn pop_index_queue(&mut self) {
        let Some(shared) = &self.queues.shared else { return };
        let mut popper = shared.queue.popper_at(self.queues.head);
        let mut tokens = std::mem::take(&mut self.queues.busy);
        let mut looks = 0;
        loop {
            match popper.pop() {
                Pop::Empty => break,
                Pop::Number(n) => {
                    // Any number may be there: only a live client's counts.
                    match self.queues.by_index.get(n as usize) {
                        Some(&t) if t != 0 && !tokens.contains(&t) => tokens.push(t),
                        _ => {}
                    }
                    looks = 0;
                }
                Pop::Pending if looks < PENDING_LOOKS => {
                    looks += 1;
                    std::hint::spin_loop();
                }
                Pop::Pending => {
                    popper.skip();
                    self.queues.last_sweep = None;
                }
                Pop::Lost => self.queues.last_sweep = None,
            }
            if tokens.len() >= TURN {
                break;
            }
        }
        self.queues.head = popper.position();
        for t in tokens {
            if self.take_queued(t, TURN) {
                self.queues.busy.push(t);
            }
        }
        self.drop_doomed();
    }
}

fn make_index_queue() -> std::io::Result<Shared> {
    let len = IndexQueue::required_len(INDEX_SLOTS);
    let mut queue = None;
    let (file, map) = sealed_memfd(c"ipcd-queue", len, |base| {
        // SAFETY: a fresh page-aligned mapping of `len` bytes, ours alone
        // now, kept in `Shared` beside the view.
        queue = Some(unsafe { IndexQueue::init(base, len, INDEX_SLOTS) }?);
        Ok(())
    })?;
    let queue = queue.ok_or_else(|| std::io::Error::other("index queue not made"))?;
    Ok(Shared { queue, file, _map: map })
}
