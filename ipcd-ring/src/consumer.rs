//! The reading end of one ring.

use core::ptr::NonNull;

use crate::error::{Corruption, Error};
use crate::layout::RECENT;
use crate::layout::{to_index, RingControl, FLAG_CLOSED, FLAG_RESET};
use crate::recent::Snapshot;
use crate::span::DataArea;
use crate::sync::Ordering;
use crate::wait::{arm, close_reader, disarm, fence_then_take, Transfer, Wait};

/// What the reader knows of the writer's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerState {
    /// The writer may still send.
    Open,
    /// The writer closed: end-of-stream after the remaining bytes.
    Closed,
    /// The writer aborted: the connection was reset.
    Reset,
}

/// Reading end of a ring. Owns the authoritative copy of `head`; caches the
/// writer's `tail` and rereads it only when the cache says the ring is empty.
///
/// ```
/// use core::ptr::NonNull;
/// use ipcd_ring::{PeerState, Segment, Side};
///
/// #[repr(C, align(128))]
/// struct Region([u8; 2048]);
/// let mut region = Region([0; 2048]);
/// let base = NonNull::new(region.0.as_mut_ptr()).unwrap();
/// // SAFETY: `region` outlives the segment and every handle made from it.
/// let seg = unsafe { Segment::init(base, 2048, 1, [64, 64]) }.unwrap();
/// // SAFETY: one producer and one consumer per ring, in this one thread.
/// let (mut tx, _) = unsafe { seg.endpoint(Side::A) }.unwrap();
/// // SAFETY: as above.
/// let (_, mut rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
/// let _ = tx.write(b"bye").unwrap();
/// let _ = tx.close();
/// let mut buf = [0u8; 2];
/// assert_eq!(rx.peek(1, &mut buf).unwrap(), 2);
/// assert_eq!(&buf, b"ye");
/// assert!(!rx.at_eof().unwrap());
/// assert_eq!(rx.read(&mut [0u8; 8]).unwrap().len, 3);
/// assert!(rx.at_eof().unwrap());
/// assert_eq!(rx.peer_state(), PeerState::Closed);
/// ```
pub struct Consumer {
    ctrl: NonNull<RingControl>,
    data: DataArea,
    head: u64,
    tail_cache: u64,
    /// The writer's copy of its last bytes, as last taken.
    recent: Snapshot,
}

// SAFETY: as for `Producer`: pointers into a mapping kept valid by the segment's
// creator, no thread affinity, `&mut self` on every mutating call.
unsafe impl Send for Consumer {}

impl core::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Consumer")
            .field("head", &self.head)
            .field("tail_cache", &self.tail_cache)
            .field("capacity", &self.data.cap)
            .finish_non_exhaustive()
    }
}

impl Consumer {
    /// # Safety
    /// `ctrl` and `data..data + cap` must stay valid for the handle's life.
    pub(crate) unsafe fn new(ctrl: NonNull<RingControl>, data: DataArea) -> Result<Self, Error> {
        let mut c = Consumer { ctrl, data, head: 0, tail_cache: 0, recent: Snapshot::new() };
        c.resync()?;
        Ok(c)
    }

    #[inline]
    fn ctrl(&self) -> &RingControl {
        // SAFETY: valid for the handle's life (contract of `new`); all fields atomic.
        unsafe { self.ctrl.as_ref() }
    }

    /// Rereads this end's own `head` and the writer's `tail` and validates
    /// them (see [`crate::Producer::resync`]).
    pub fn resync(&mut self) -> Result<(), Error> {
        let head = self.ctrl().reader.head.load(Ordering::Acquire);
        let tail = self.ctrl().writer.tail.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.data.cap {
            return Err(Error::Corrupt(Corruption::Tail { found: tail }));
        }
        self.data.grown_at = crate::span::grown_at(&self.ctrl().writer, &self.data, head, tail)?;
        self.head = head;
        self.tail_cache = tail;
        Ok(())
    }

    /// Capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        to_index(self.data.cap)
    }

    /// Rereads `tail`; it must lie in `[cached tail, head + cap]`.
    #[inline]
    fn refresh_tail(&mut self) -> Result<(), Error> {
        // Acquire pairs with the writer's Release store: the bytes before
        // `tail` are in place.
        let tail = self.ctrl().writer.tail.load(Ordering::Acquire);
        let limit = self.head.wrapping_add(self.data.cap);
        if tail.wrapping_sub(self.tail_cache) > limit.wrapping_sub(self.tail_cache) {
            return Err(Error::Corrupt(Corruption::Tail { found: tail }));
        }
        // Until the writer switched to the bulk area (once per connection),
        // look for the switch: on the line just loaded.
        if self.data.grown_at.is_none() {
            self.data.grown_at = crate::span::grown_at(&self.ctrl().writer, &self.data, self.head, tail)?;
        }
        // New bytes, few enough to be in the writer's copy: the line holding
        // `tail` is in our cache now, and the copy with it.
        if tail != self.tail_cache && tail.wrapping_sub(self.head) <= RECENT as u64 {
            // SAFETY: as in `ctrl()` (split from `self` to borrow `recent` mutably).
            let writer = unsafe { &self.ctrl.as_ref().writer };
            self.recent.take(writer);
        }
        self.tail_cache = tail;
        Ok(())
    }

    #[inline]
    fn cached_readable(&self) -> usize {
        to_index(self.tail_cache.wrapping_sub(self.head))
    }

    /// The writer's `tail` as this handle last read it: bytes ever written.
    /// It only grows, so a change means new bytes arrived (edge-triggered
    /// readiness is built on that).
    pub fn tail_seen(&self) -> u64 {
        self.tail_cache
    }

    /// Bytes that can be read now (`FIONREAD`).
    pub fn readable(&mut self) -> Result<usize, Error> {
        self.refresh_tail()?;
        Ok(self.cached_readable())
    }

    /// Copies up to `buf.len()` bytes out and frees their space. Returns the
    /// count (0 if the ring is empty) and whether the writer must be woken.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> Result<Transfer, Error> {
        self.read_vectored(&mut [buf])
    }

    /// Fills `bufs` in order from the ring and frees the space in one step.
    pub fn read_vectored(&mut self, bufs: &mut [&mut [u8]]) -> Result<Transfer, Error> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        let n = self.copy_out(0, want, bufs)?;
        self.advance(n)
    }

    /// Copies up to `buf.len()` bytes starting `offset` bytes past the head,
    /// without consuming them (`MSG_PEEK`, and `SO_PEEK_OFF`).
    pub fn peek(&mut self, offset: usize, buf: &mut [u8]) -> Result<usize, Error> {
        self.copy_out(offset, buf.len(), &mut [buf])
    }

    /// Discards up to `n` readable bytes without copying them.
    pub fn consume(&mut self, n: usize) -> Result<Transfer, Error> {
        if self.cached_readable() < n {
            self.refresh_tail()?;
        }
        self.advance(n.min(self.cached_readable()))
    }

    /// Copies up to `want` bytes from `offset` past the head into `bufs`.
    fn copy_out(&mut self, offset: usize, want: usize, bufs: &mut [&mut [u8]]) -> Result<usize, Error> {
        if self.cached_readable() < offset.saturating_add(want) {
            self.refresh_tail()?;
        }
        let avail = self.cached_readable().saturating_sub(offset);
        let mut left = avail.min(want);
        let mut pos = self.head.wrapping_add(offset as u64);
        let mut done = 0;
        for buf in bufs.iter_mut() {
            if left == 0 {
                break;
            }
            let take = buf.len().min(left);
            if !self.recent.copy(pos, &mut buf[..take]) {
                // SAFETY: `pos..pos + take` lies within `[head, tail)` as
                // validated by `refresh_tail`, so at most `cap` bytes of our
                // own readable area are read; the data area is valid by the
                // contract of `new`.
                unsafe { self.data.copy_out(pos, &mut buf[..take]) };
            }
            pos = pos.wrapping_add(take as u64);
            left -= take;
            done += take;
        }
        Ok(done)
    }

    fn advance(&mut self, n: usize) -> Result<Transfer, Error> {
        if n == 0 {
            return Ok(Transfer::default());
        }
        self.head = self.head.wrapping_add(n as u64);
        // Release pairs with the writer's Acquire load of head: our copies out
        // are done before the writer may reuse the space.
        self.ctrl().reader.head.store(self.head, Ordering::Release);
        let wake_peer = fence_then_take(&self.ctrl().writer_waiting.waiting);
        Ok(Transfer { len: n, wake_peer })
    }

    /// The writer's side as last published.
    pub fn peer_state(&self) -> PeerState {
        // Acquire pairs with the writer's Release fetch_or: every byte written
        // before the close is visible once the flag is.
        let flags = self.ctrl().writer.flags.load(Ordering::Acquire);
        if flags & FLAG_RESET != 0 {
            PeerState::Reset
        } else if flags & FLAG_CLOSED != 0 {
            PeerState::Closed
        } else {
            PeerState::Open
        }
    }

    /// Whether the writer closed its side in order (a FIN), whatever
    /// happened after: a reset alone leaves this false.
    pub fn peer_fin(&self) -> bool {
        // Acquire as in `peer_state`.
        self.ctrl().writer.flags.load(Ordering::Acquire) & FLAG_CLOSED != 0
    }

    /// True when the writer has closed (or reset) and every byte it wrote has
    /// been read: a read now returns end-of-stream.
    pub fn at_eof(&mut self) -> Result<bool, Error> {
        // Flag first, then tail: once the close is seen, the final tail is too.
        if self.peer_state() == PeerState::Open {
            return Ok(false);
        }
        Ok(self.readable()? == 0)
    }

    /// Closes the reading side (the writer's next write fails with `EPIPE`).
    /// Returns whether the writer's doorbell must be rung.
    pub fn close(&mut self) -> bool {
        close_reader(self.ctrl())
    }

    /// Step 1 of the wait protocol for data: arms the reader's waiting flag
    /// and re-checks the ring and the writer's flags.
    pub fn prepare_wait(&mut self) -> Result<Wait, Error> {
        arm(&self.ctrl().reader_waiting.waiting);
        let ready = self.peer_state() != PeerState::Open || {
            if let Err(e) = self.refresh_tail() {
                self.cancel_wait();
                return Err(e);
            }
            self.cached_readable() > 0
        };
        if ready {
            // The flag stays: another sleeper may have armed it too (see
            // `wait`).
            return Ok(Wait::Ready);
        }
        Ok(Wait::Sleep)
    }

    /// Step 1 of the wait protocol for *new* events (edge-triggered
    /// waiting): arms the reader's waiting flag and re-checks whether the
    /// writer published past `seen_tail` or changed its state from
    /// `seen_state` (both as the caller last saw them). Bytes already
    /// readable do not make it ready.
    pub fn prepare_wait_past(&mut self, seen_tail: u64, seen_state: PeerState) -> Result<Wait, Error> {
        arm(&self.ctrl().reader_waiting.waiting);
        if let Err(e) = self.refresh_tail() {
            self.cancel_wait();
            return Err(e);
        }
        if self.tail_cache != seen_tail || self.peer_state() != seen_state {
            return Ok(Wait::Ready);
        }
        Ok(Wait::Sleep)
    }

    /// After a wait that no longer sleeps (it found the ring ready, or
    /// woke), once its doorbell's name is taken back: clears the waiting
    /// flag unless another sleeper is named, so the writer's next publish
    /// finds nothing to ring. True when a sleeper named itself meanwhile:
    /// ring the doorbells of [`Consumer::waiters`].
    pub fn cancel_wait_alone(&self) -> bool {
        crate::wait::disarm_alone(&self.ctrl().reader_waiting.waiting, &self.ctrl().reader_waiting.waiters)
    }

    /// This reader's sleepers: a thread names its doorbell here before it
    /// waits for data (see [`crate::Waiters`]).
    pub fn waiters(&self) -> crate::Waiters<'_> {
        crate::Waiters::of(&self.ctrl().reader_waiting.waiters)
    }

    /// The writer's sleepers: the doorbells to ring when a read or a close
    /// says the writer must be woken.
    pub fn writer_waiters(&self) -> crate::Waiters<'_> {
        crate::Waiters::of(&self.ctrl().writer_waiting.waiters)
    }

    /// Clears the reader's waiting flag after a sleep that ended early,
    /// when no other sleeper can have armed it.
    pub fn cancel_wait(&self) {
        disarm(&self.ctrl().reader_waiting.waiting);
    }

    /// The CPU the writer last said it ran on ([`Producer::note_cpu`]),
    /// or [`NO_CPU`](crate::NO_CPU). A hint from the peer: any value may be there.
    ///
    /// [`Producer::note_cpu`]: crate::Producer::note_cpu
    pub fn writer_cpu(&self) -> u32 {
        self.ctrl().writer.cpu.load(Ordering::Relaxed)
    }

    /// Tells the writer whether this reader takes a stream of small writes
    /// in batches (it pauses, then reads what came meanwhile): the writer
    /// then skips the copy of its last bytes beside `tail`, which such a
    /// reader never uses, and its writes store to one word of that line
    /// instead of seven. Stores only on a change, so a reader that stays
    /// in one mode leaves the line shared in both caches.
    pub fn set_batching(&self, on: bool) {
        let word = &self.ctrl().reader_waiting.batching;
        if (word.load(Ordering::Relaxed) != 0) != on {
            word.store(u32::from(on), Ordering::Relaxed);
        }
    }

    /// Tells the writer this reader's receive buffer, `bytes` (0: none
    /// said): what a writer that limits itself may hold unread on top of
    /// its own send buffer, as TCP's receive window adds to it.
    pub fn set_window(&self, bytes: u64) {
        self.ctrl().reader.window.store(bytes, Ordering::Relaxed);
    }
}
