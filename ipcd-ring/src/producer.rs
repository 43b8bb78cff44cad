//! The writing end of one ring.

use core::ptr::NonNull;

use crate::error::{Corruption, Error};
use crate::layout::{to_index, RingControl, FLAG_CLOSED, FLAG_RESET};
use crate::recent::Shadow;
use crate::span::DataArea;
use crate::sync::Ordering;
use crate::wait::{arm, close_writer, disarm, fence_then_take, Transfer, Wait};

/// Writing end of a ring. Owns the authoritative copy of `tail`; caches the
/// reader's `head` and rereads it only when the cache says the ring is full.
///
/// Obtained from [`crate::Segment::producer`] or [`crate::Segment::endpoint`].
///
/// ```
/// use core::ptr::NonNull;
/// use ipcd_ring::{Segment, Side};
///
/// #[repr(C, align(128))]
/// struct Region([u8; 2048]);
/// let mut region = Region([0; 2048]);
/// let base = NonNull::new(region.0.as_mut_ptr()).unwrap();
/// // SAFETY: `region` outlives the segment and every handle made from it.
/// let seg = unsafe { Segment::init(base, 2048, 7, [64, 64]) }.unwrap();
/// // SAFETY: one producer and one consumer per ring, in this one thread.
/// let (mut tx, _) = unsafe { seg.endpoint(Side::A) }.unwrap();
/// // SAFETY: as above.
/// let (_, mut rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
/// assert_eq!(tx.write(b"hello").unwrap().len, 5);
/// let mut buf = [0u8; 8];
/// assert_eq!(rx.read(&mut buf).unwrap().len, 5);
/// assert_eq!(&buf[..5], b"hello");
/// ```
pub struct Producer {
    ctrl: NonNull<RingControl>,
    data: DataArea,
    tail: u64,
    /// `tail` as the reader last saw it: bytes past it are written but held
    /// back ([`Producer::write_vectored_held`]).
    published: u64,
    head_cache: u64,
    /// The last bytes written, copied beside `tail` on every publish.
    recent: Shadow,
}

// SAFETY: the handle only holds pointers into a shared mapping whose validity
// the creator of the segment guaranteed (see `Segment::init`/`attach`); it has
// no thread affinity, and `&mut self` on every mutating call keeps one thread
// at a time on it.
unsafe impl Send for Producer {}

impl core::fmt::Debug for Producer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Producer")
            .field("tail", &self.tail)
            .field("head_cache", &self.head_cache)
            .field("capacity", &self.data.cap)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// # Safety
    /// `ctrl` and `data..data + cap` must stay valid for the handle's life.
    pub(crate) unsafe fn new(ctrl: NonNull<RingControl>, data: DataArea) -> Result<Self, Error> {
        let mut p = Producer { ctrl, data, tail: 0, published: 0, head_cache: 0, recent: Shadow::new() };
        p.resync()?;
        Ok(p)
    }

    #[inline]
    fn ctrl(&self) -> &RingControl {
        // SAFETY: valid for the handle's life (contract of `new`); every field is
        // an atomic, so shared references are sound while the peer writes.
        unsafe { self.ctrl.as_ref() }
    }

    /// Rereads this end's own `tail` and the reader's `head` from shared
    /// memory and validates them. Needed only when another holder of the same
    /// end (a forked process, another thread's handle) may have written since
    /// this handle last did, under the end's lock. Bytes held back and not
    /// published are dropped: publish them first.
    pub fn resync(&mut self) -> Result<(), Error> {
        let tail = self.ctrl().writer.tail.load(Ordering::Acquire);
        // Acquire pairs with the reader's Release store of head.
        let head = self.ctrl().reader.head.load(Ordering::Acquire);
        if tail.wrapping_sub(head) > self.data.cap {
            return Err(Error::Corrupt(Corruption::Tail { found: tail }));
        }
        // Whether an earlier holder of this end moved it to the bulk area.
        self.data.grown_at = crate::span::grown_at(&self.ctrl().writer, &self.data, head, tail)?;
        self.tail = tail;
        self.published = tail;
        self.head_cache = head;
        self.recent.reset();
        Ok(())
    }

    /// Capacity of the ring in bytes.
    pub fn capacity(&self) -> usize {
        to_index(self.data.cap)
    }

    /// Rereads `head`; it must lie in `[cached head, tail]`.
    #[inline]
    fn refresh_head(&mut self) -> Result<(), Error> {
        // Acquire pairs with the reader's Release store: the reader finished
        // copying out the bytes before `head`, so we may overwrite them.
        let head = self.ctrl().reader.head.load(Ordering::Acquire);
        if head.wrapping_sub(self.head_cache) > self.tail.wrapping_sub(self.head_cache) {
            return Err(Error::Corrupt(Corruption::Head { found: head }));
        }
        self.head_cache = head;
        Ok(())
    }

    #[inline]
    fn free(&self) -> u64 {
        // Never underflows: `tail - head_cache <= cap` is kept by every refresh.
        self.data.cap - self.tail.wrapping_sub(self.head_cache)
    }

    /// Bytes that can be written now without blocking.
    pub fn writable(&mut self) -> Result<usize, Error> {
        self.refresh_head()?;
        Ok(to_index(self.free()))
    }

    /// Like [`Producer::writable`], but rereads the reader's `head` only
    /// when the cached view shows no space: a lower bound that costs no
    /// cache miss while the reader is busy moving `head`.
    pub fn writable_cached(&mut self) -> Result<usize, Error> {
        if self.free() == 0 {
            self.refresh_head()?;
        }
        Ok(to_index(self.free()))
    }

    /// Bytes written but not yet read by the peer (`SIOCOUTQ`).
    pub fn unread(&mut self) -> Result<usize, Error> {
        self.refresh_head()?;
        Ok(to_index(self.tail.wrapping_sub(self.head_cache)))
    }

    /// Copies as much of `buf` as fits and publishes it. Returns the count
    /// (0 if the ring is full) and whether the reader must be woken.
    #[inline]
    pub fn write(&mut self, buf: &[u8]) -> Result<Transfer, Error> {
        self.write_vectored(&[buf])
    }

    /// Copies as much of `bufs`, in order, as fits and publishes it in one
    /// step, with any bytes held back before it.
    pub fn write_vectored(&mut self, bufs: &[&[u8]]) -> Result<Transfer, Error> {
        let len = self.copy_in(bufs)?;
        if len == 0 && self.held() == 0 {
            return Ok(Transfer::default());
        }
        Ok(Transfer { len, wake_peer: self.publish_all() })
    }

    /// Like [`Producer::write_vectored`], but holds the bytes back: the
    /// reader sees them only at the next publishing write or
    /// [`Producer::publish`] (TCP's cork). They count as unread.
    pub fn write_vectored_held(&mut self, bufs: &[&[u8]]) -> Result<Transfer, Error> {
        Ok(Transfer { len: self.copy_in(bufs)?, wake_peer: false })
    }

    /// Bytes written but held back from the reader.
    pub fn held(&self) -> usize {
        to_index(self.tail.wrapping_sub(self.published))
    }

    /// Shows the reader every byte held back; whether it must be woken.
    #[must_use = "the peer's doorbell must be rung when this is true"]
    pub fn publish(&mut self) -> bool {
        self.held() > 0 && self.publish_all()
    }

    /// Publishes `tail` (with the copy of the last bytes beside it);
    /// returns whether the reader must be woken.
    fn publish_all(&mut self) -> bool {
        let pos = self.tail;
        self.published = pos;
        // A reader that batches wants more than the copy holds. Skipping is
        // safe whatever the hint says: the copy left there is a consistent
        // one of earlier positions, and a position's byte never changes.
        if self.ctrl().reader_waiting.batching.load(Ordering::Relaxed) == 0 {
            self.recent.publish(&self.ctrl().writer);
        }
        // Release pairs with the reader's Acquire load of tail: the bytes are
        // in place before the index that exposes them.
        self.ctrl().writer.tail.store(pos, Ordering::Release);
        fence_then_take(&self.ctrl().reader_waiting.waiting)
    }

    /// Copies as much of `bufs`, in order, as fits, after `tail`, and moves
    /// `tail` past it without publishing. Returns the count.
    fn copy_in(&mut self, bufs: &[&[u8]]) -> Result<usize, Error> {
        let want: usize = bufs.iter().map(|b| b.len()).sum();
        if self.data.grown_at.is_none() && to_index(self.small_room()) < want {
            self.refresh_head()?;
            if to_index(self.small_room()) < want {
                self.grow();
            }
        }
        if to_index(self.free()) < want {
            self.refresh_head()?;
        }
        let mut room = to_index(self.free());
        let start = self.tail;
        let mut pos = start;
        for buf in bufs {
            if room == 0 {
                break;
            }
            let chunk = &buf[..buf.len().min(room)];
            // SAFETY: `chunk.len() <= room <= cap` and the bytes from `pos` on
            // are free (validated head), so only our own area is written; the
            // data area is valid by the contract of `new`.
            unsafe { self.data.copy_in(pos, chunk) };
            self.recent.append(pos, chunk);
            pos = pos.wrapping_add(chunk.len() as u64);
            room -= chunk.len();
        }
        self.tail = pos;
        Ok(to_index(pos.wrapping_sub(start)))
    }

    /// Room left in the small area while the ring is there: what is
    /// unread there never exceeds its capacity (every write before the
    /// switch fits, see [`Producer::grow`]).
    #[inline]
    fn small_room(&self) -> u64 {
        self.data.small.cap.saturating_sub(self.tail.wrapping_sub(self.head_cache))
    }

    /// Moves the ring to its bulk area from `tail` on, for good: a write
    /// did not fit in the small area. `grown_at` is stored before `grown`
    /// and both before any `tail` past the switch is published (Release),
    /// so a reader that sees such a tail sees where its bytes are.
    #[cold]
    fn grow(&mut self) {
        let at = self.tail;
        self.data.grown_at = Some(at);
        let w = &self.ctrl().writer;
        w.grown_at.store(at, Ordering::Relaxed);
        w.grown.store(1, Ordering::Release);
    }

    /// Says which CPU this end's writer runs on, as it starts to wait for
    /// input of its own: a reader waiting for it on the same CPU then
    /// yields at once instead of spinning first (see
    /// [`Consumer::writer_cpu`](crate::Consumer::writer_cpu)). Stores only
    /// on a change.
    pub fn note_cpu(&self, cpu: u32) {
        let word = &self.ctrl().writer.cpu;
        if word.load(Ordering::Relaxed) != cpu {
            word.store(cpu, Ordering::Relaxed);
        }
    }

    /// The reader's receive buffer as it last said it
    /// ([`Consumer::set_window`](crate::Consumer::set_window)); 0 if it
    /// said none. A hint from the peer: the caller bounds what it does with it.
    pub fn peer_window(&self) -> u64 {
        self.ctrl().reader.window.load(Ordering::Relaxed)
    }

    /// Whether the reader has closed its end (writes would hit `EPIPE`).
    pub fn is_reader_closed(&self) -> bool {
        self.ctrl().reader.flags.load(Ordering::Acquire) & FLAG_CLOSED != 0
    }

    /// Closes the writing side: the reader sees end-of-stream after the bytes
    /// already written (held ones published first). Returns whether the
    /// reader's doorbell must be rung.
    pub fn close(&mut self) -> bool {
        let woke = self.publish();
        close_writer(self.ctrl(), FLAG_CLOSED) || woke
    }

    /// Closes the writing side abortively: the reader reports a reset. Only
    /// the reset flag is set, so the reader can still tell whether a FIN
    /// ([`Producer::close`]) came first, which decides `EPIPE` against
    /// `ECONNRESET` on its side.
    pub fn reset(&mut self) -> bool {
        close_writer(self.ctrl(), FLAG_RESET)
    }

    /// Step 1 of the wait protocol for space: arms the writer's waiting flag
    /// and re-checks. `want` is capped at the capacity, so a large write waits
    /// for a full ring's worth at most.
    pub fn prepare_wait(&mut self, want: usize) -> Result<Wait, Error> {
        let want = (want as u64).clamp(1, self.data.cap);
        arm(&self.ctrl().writer_waiting.waiting);
        let ready = self.is_reader_closed() || {
            if let Err(e) = self.refresh_head() {
                self.cancel_wait();
                return Err(e);
            }
            self.free() >= want
        };
        if ready {
            // The flag stays: another sleeper may have armed it too (see
            // `wait`).
            return Ok(Wait::Ready);
        }
        Ok(Wait::Sleep)
    }

    /// [`crate::Consumer::cancel_wait_alone`] for the writer's line: true
    /// when the doorbells of [`Producer::waiters`] must be rung.
    pub fn cancel_wait_alone(&self) -> bool {
        crate::wait::disarm_alone(&self.ctrl().writer_waiting.waiting, &self.ctrl().writer_waiting.waiters)
    }

    /// This writer's sleepers: a thread names its doorbell here before it
    /// waits for room (see [`crate::Waiters`]).
    pub fn waiters(&self) -> crate::Waiters<'_> {
        crate::Waiters::of(&self.ctrl().writer_waiting.waiters)
    }

    /// The reader's sleepers: the doorbells to ring when a publish or a
    /// close says the reader must be woken.
    pub fn reader_waiters(&self) -> crate::Waiters<'_> {
        crate::Waiters::of(&self.ctrl().reader_waiting.waiters)
    }

    /// Clears the writer's waiting flag after a sleep that ended early,
    /// when no other sleeper can have armed it.
    pub fn cancel_wait(&self) {
        disarm(&self.ctrl().writer_waiting.waiting);
    }
}
