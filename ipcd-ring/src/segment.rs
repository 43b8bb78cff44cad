//! A connection segment: header, two rings, their data areas; created by the
//! monitor, attached by both ends, validated on every attach.

use core::ptr::NonNull;

use crate::consumer::Consumer;
use crate::error::Error;
use crate::layout::{
    Line, RingControl, SegmentControl, SegmentHeader, CACHE_LINE, DATA_START, MAX_CAPACITY, SEGMENT_ALIGN,
    SEGMENT_MAGIC, SEGMENT_VERSION, SMALL_AREA, TICKET_NONE,
};
use crate::producer::Producer;
use crate::span::{Area, DataArea};
use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// Where a connection stands against its listener's backlog, as the
/// connector sees it ([`ConnSegment::admission`](crate::ConnSegment::admission)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Admission {
    /// In the accept queue or accepted: usable (the default).
    Established = 0,
    /// The listener's queue was full: still connecting, as a client whose
    /// SYN the kernel dropped; nothing may be sent or read yet.
    Waiting = 1,
    /// The listener went before it had room: the connect is refused.
    Refused = 2,
}

/// One end of a connection. `A` is the connecting side, `B` the accepting
/// side; A writes ring 0 and reads ring 1, B the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The side that called `connect`.
    A,
    /// The side that `accept`ed.
    B,
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// Index of the ring this side writes.
    pub(crate) fn tx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    pub(crate) fn index(self) -> usize {
        self.tx()
    }
}

/// One of the four per-end locks, taken only when an end is shared between
/// threads or processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndLock {
    /// Serialises writers of this side.
    Send(Side),
    /// Serialises readers of this side.
    Recv(Side),
}

impl EndLock {
    pub(crate) fn index(self) -> usize {
        match self {
            EndLock::Send(s) => 2 * s.index(),
            EndLock::Recv(s) => 2 * s.index() + 1,
        }
    }
}

/// A validated view of a connection segment in memory this process maps.
///
/// The view copies the layout (capacities, offsets) out of the header once,
/// at [`Segment::init`] or [`Segment::attach`]; a peer that later rewrites
/// the header cannot move the rings under us.
#[derive(Debug, Clone, Copy)]
pub struct Segment {
    base: NonNull<u8>,
    len: usize,
    pub(crate) conn_id: u64,
    caps: [u64; 2],
    /// The data areas are mapped too (not a [`Segment::attach_control`] view).
    data: bool,
}

// SAFETY: the view holds a pointer to a mapping that the creator keeps valid
// (contract of `init`/`attach`) and touches it only through atomics.
unsafe impl Send for Segment {}
// SAFETY: as above; `&Segment` only performs atomic operations.
unsafe impl Sync for Segment {}

fn check_capacity(cap: u64) -> Result<(), Error> {
    if cap == 0 || !cap.is_power_of_two() || cap > MAX_CAPACITY {
        return Err(Error::BadCapacity(cap));
    }
    Ok(())
}

/// Capacity of the small area of a ring of capacity `cap` (see
/// `span::DataArea`): a power of two (or 0, for a one-byte ring, which
/// then grows at its first byte) below the ring's own.
fn small_cap(cap: u64) -> u64 {
    SMALL_AREA.min(cap / 2)
}

/// Where the data areas of a segment with capacities `caps` lie: the two
/// small areas right after the control area, then the two bulk areas.
#[derive(Debug, Clone, Copy)]
struct DataLayout {
    small: [usize; 2],
    bulk: [usize; 2],
    total: usize,
}

/// The data layout for capacities `caps`.
fn data_layout(caps: [u64; 2]) -> Result<DataLayout, Error> {
    check_capacity(caps[0])?;
    check_capacity(caps[1])?;
    // Both capacities are at most 2^40, so nothing here can overflow a u64;
    // the try_from catches 32-bit targets.
    let line = CACHE_LINE as u64;
    let small0 = DATA_START as u64;
    let small1 = small0 + small_cap(caps[0]);
    let first = (small1 + small_cap(caps[1])).div_ceil(line) * line;
    let second = first + caps[0].div_ceil(line) * line;
    let total = second + caps[1];
    let conv = |v: u64| usize::try_from(v).map_err(|_| Error::BadCapacity(caps[0].max(caps[1])));
    Ok(DataLayout { small: [conv(small0)?, conv(small1)?], bulk: [conv(first)?, conv(second)?], total: conv(total)? })
}

fn check_region(base: NonNull<u8>, len: usize, need: usize) -> Result<(), Error> {
    if base.as_ptr() as usize % SEGMENT_ALIGN != 0 {
        return Err(Error::Misaligned);
    }
    if len < need {
        return Err(Error::RegionTooSmall { need, have: len });
    }
    Ok(())
}

/// Writes a fresh header and two empty rings' controls for a segment of
/// `total` bytes.
///
/// # Safety
/// `base` must be valid for writes of the control area, aligned, and not in
/// use by anyone else during this call.
unsafe fn write_control(base: NonNull<u8>, conn_id: u64, caps: [u64; 2], total: usize) {
    let control = SegmentControl {
        header: Line(SegmentHeader {
            magic: AtomicU64::new(SEGMENT_MAGIC),
            version: AtomicU32::new(SEGMENT_VERSION),
            // A few hundred bytes (asserted where DATA_START is defined).
            #[allow(clippy::cast_possible_truncation)]
            data_start: AtomicU32::new(DATA_START as u32),
            conn_id: AtomicU64::new(conn_id),
            total_len: AtomicU64::new(total as u64),
            capacity: [AtomicU64::new(caps[0]), AtomicU64::new(caps[1])],
            holders: [AtomicU32::new(1), AtomicU32::new(1)],
            locks: [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)],
            offer: AtomicU32::new(0),
            admission: AtomicU32::new(0),
            ticket: AtomicU64::new(TICKET_NONE),
            connector: core::array::from_fn(|_| AtomicU32::new(0)),
            holder_ids: core::array::from_fn(|_| core::array::from_fn(|_| AtomicU64::new(0))),
            rounds: AtomicU64::new(0),
            connected_at: AtomicU64::new(0),
        }),
        rings: [RingControl::new(0), RingControl::new(0)],
    };
    // SAFETY: the caller's contract.
    unsafe { base.cast::<SegmentControl>().as_ptr().write(control) };
}

impl Segment {
    /// Bytes of the header and the two rings' controls, at the start of
    /// every segment (the data areas follow): what a
    /// [`Segment::attach_control`] region must hold.
    pub const CONTROL_LEN: usize = DATA_START;

    /// Bytes a segment with ring capacities `caps` (A→B, B→A) needs.
    ///
    /// ```
    /// let len = ipcd_ring::Segment::required_len([4096, 4096]).unwrap();
    /// assert!(len >= 8192);
    /// assert!(ipcd_ring::Segment::required_len([3, 4096]).is_err());
    /// ```
    pub fn required_len(caps: [u64; 2]) -> Result<usize, Error> {
        Ok(data_layout(caps)?.total)
    }

    /// Writes a fresh header and two empty rings into the region.
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, aligned to
    /// [`SEGMENT_ALIGN`] (checked), not in use by anyone else during this
    /// call, and must stay mapped for as long as this view or any handle made
    /// from it exists.
    pub unsafe fn init(base: NonNull<u8>, len: usize, conn_id: u64, caps: [u64; 2]) -> Result<Segment, Error> {
        let total = data_layout(caps)?.total;
        check_region(base, len, total)?;
        // SAFETY: the region is valid, aligned and large enough (checked
        // above, validity by contract), and nobody else uses it now.
        unsafe { write_control(base, conn_id, caps, total) };
        Ok(Segment { base, len, conn_id, caps, data: true })
    }

    /// [`Segment::init`] through a mapping of the segment's first
    /// [`Segment::CONTROL_LEN`] bytes alone: writes the header and two
    /// empty rings' controls and returns a control view (see
    /// [`Segment::attach_control`]). The data areas, which a fresh segment
    /// holds as zeroes, are not touched.
    ///
    /// # Safety
    /// As for [`Segment::init`], for `base..base + len`, which must be the
    /// start of a segment of [`Segment::required_len`]`(caps)` bytes that
    /// others map whole.
    pub unsafe fn init_control(base: NonNull<u8>, len: usize, conn_id: u64, caps: [u64; 2]) -> Result<Segment, Error> {
        let total = data_layout(caps)?.total;
        check_region(base, len, DATA_START)?;
        // SAFETY: as in `init`, for the control area.
        unsafe { write_control(base, conn_id, caps, total) };
        Ok(Segment { base, len, conn_id, caps, data: false })
    }

    /// Validates a segment another process initialised and returns a view.
    /// Magic, version, offsets and capacities are checked against `len`; the
    /// content is otherwise untrusted and every later index read is validated.
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, aligned to
    /// [`SEGMENT_ALIGN`] (checked), hold a value written by [`Segment::init`]
    /// (in any state a peer may have left it: all bit patterns are accepted
    /// or rejected, never trusted) and stay mapped while the view or any
    /// handle made from it exists.
    pub unsafe fn attach(base: NonNull<u8>, len: usize) -> Result<Segment, Error> {
        // SAFETY: the caller's contract, which covers the control area.
        let mut seg = unsafe { Segment::attach_control(base, len) }?;
        let total = data_layout(seg.caps)?.total;
        check_region(base, len, total)?;
        seg.data = true;
        Ok(seg)
    }

    /// A view of a segment's header and ring controls alone, over a
    /// region that holds at least [`Segment::CONTROL_LEN`] bytes (a mapping
    /// of the segment's first page): validated as by [`Segment::attach`]
    /// except for the data areas, which it never touches. For a process
    /// that watches and steers connections without moving their bytes
    /// (ipcd's monitor): such mappings lie side by side and share page
    /// tables, where a whole segment, megabytes wide, needs its own.
    /// [`Segment::producer`], [`Segment::consumer`] and
    /// [`Segment::endpoint`] refuse it (`RegionTooSmall`); the header and
    /// control operations work as on a whole view.
    ///
    /// ```
    /// # use std::ptr::NonNull;
    /// use ipcd_ring::{ConnSegment, Error, Segment, Side};
    /// let len = Segment::required_len([4096, 4096]).unwrap();
    /// let layout = std::alloc::Layout::from_size_align(len, ipcd_ring::SEGMENT_ALIGN).unwrap();
    /// // SAFETY: a non-zero size; freed below.
    /// let base = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
    /// // SAFETY: a fresh region of `len` bytes, aligned, ours alone.
    /// let whole = unsafe { Segment::init(base, len, 7, [4096, 4096]) }.unwrap();
    /// // SAFETY: the segment `init` wrote, outliving the view.
    /// let ctrl = unsafe { Segment::attach_control(base, Segment::CONTROL_LEN) }.unwrap();
    /// ctrl.expect(9);
    /// assert_eq!(whole.ticket(9), ipcd_ring::Ticket::Expected);
    /// // SAFETY: refused before any handle exists.
    /// assert!(matches!(unsafe { ctrl.consumer(Side::B) }, Err(Error::RegionTooSmall { .. })));
    /// // SAFETY: allocated above with this layout; the views are not used again.
    /// unsafe { std::alloc::dealloc(base.as_ptr(), layout) };
    /// ```
    ///
    /// # Safety
    /// As for [`Segment::attach`], for `base..base + len`.
    pub unsafe fn attach_control(base: NonNull<u8>, len: usize) -> Result<Segment, Error> {
        check_region(base, len, DATA_START)?;
        // SAFETY: the control area lies within the region (checked), every
        // field is an atomic integer for which any bit pattern is valid.
        let header = unsafe { &base.cast::<SegmentControl>().as_ref().header };
        let magic = header.magic.load(Ordering::Acquire);
        if magic != SEGMENT_MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let version = header.version.load(Ordering::Relaxed);
        if version != SEGMENT_VERSION {
            return Err(Error::BadVersion(version));
        }
        if header.data_start.load(Ordering::Relaxed) as usize != DATA_START {
            return Err(Error::BadLayout);
        }
        let caps = [header.capacity[0].load(Ordering::Relaxed), header.capacity[1].load(Ordering::Relaxed)];
        let total = data_layout(caps)?.total;
        if header.total_len.load(Ordering::Relaxed) != total as u64 {
            return Err(Error::BadLayout);
        }
        let conn_id = header.conn_id.load(Ordering::Relaxed);
        Ok(Segment { base, len, conn_id, caps, data: false })
    }

    /// The connection id the monitor assigned.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Length of the region the view was made over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Length of the whole segment (its header's `total_len`, as
    /// validated): what a mapping of it takes, whatever this view maps.
    pub fn segment_len(&self) -> usize {
        data_layout(self.caps).map_or(self.len, |l| l.total)
    }

    /// Always false: a segment holds at least its control area.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Capacity of the ring `side` writes.
    pub fn capacity(&self, side: Side) -> u64 {
        self.caps[side.tx()]
    }

    pub(crate) fn control(&self) -> &SegmentControl {
        // SAFETY: validated to lie in the region, valid per the contract of
        // `init`/`attach`; all fields are atomics.
        unsafe { self.base.cast::<SegmentControl>().as_ref() }
    }

    pub(crate) fn ring(&self, ring: usize) -> (NonNull<RingControl>, DataArea) {
        let ctrl = NonNull::from(&self.control().rings[ring]);
        let cap = self.caps[ring];
        let area = |at: usize, cap: u64| {
            let base = if self.data {
                // SAFETY: every area ends within `total <= len`, checked
                // when the view was made, so the pointer stays inside the
                // region.
                unsafe { self.base.add(at) }
            } else {
                // A control view: no data area is mapped, and its handles
                // (`producer_of`, `consumer_of`) never touch one.
                self.base
            };
            Area { base, cap }
        };
        // The capacities were validated when the view was made.
        let at = data_layout(self.caps).map_or(([DATA_START; 2], [DATA_START; 2]), |l| (l.small, l.bulk));
        (ctrl, DataArea::new(area(at.0[ring], small_cap(cap)), area(at.1[ring], cap)))
    }

    /// The writing handle of `side` (on the ring `side` writes).
    ///
    /// # Safety
    /// A ring has one writer: while this handle is used, no other
    /// producer of `side`'s ring (from this view, another view or another
    /// process) may write, or the two overwrite each other's bytes and
    /// `tail`. Either it is the only one, or its users serialize all of
    /// them and [`Producer::resync`] before each use (ipcd's ends shared
    /// across fork, exec or a pass, under the end locks). For one handle
    /// per side, enforced, use the `shm` module (feature `std`).
    pub unsafe fn producer(&self, side: Side) -> Result<Producer, Error> {
        self.whole()?;
        // SAFETY: a view with its data mapped.
        unsafe { self.producer_of(side) }
    }

    /// [`Segment::producer`] without the check that the data is mapped.
    ///
    /// # Safety
    /// As for [`Segment::producer`]; on an [`Segment::attach_control`] view
    /// only control operations may be used (close, reset, waits, states),
    /// never a write.
    pub(crate) unsafe fn producer_of(&self, side: Side) -> Result<Producer, Error> {
        let (ctrl, data) = self.ring(side.tx());
        // SAFETY: `ctrl` points into the region this view keeps valid; `data`
        // too when the data is mapped, else the caller touches none of it.
        unsafe { Producer::new(ctrl, data) }
    }

    /// [`Segment::consumer`] without the check: as [`Segment::producer_of`].
    ///
    /// # Safety
    /// As for [`Segment::producer_of`], never a read of bytes.
    pub(crate) unsafe fn consumer_of(&self, side: Side) -> Result<Consumer, Error> {
        let (ctrl, data) = self.ring(side.peer().tx());
        // SAFETY: as in `producer_of`.
        unsafe { Consumer::new(ctrl, data) }
    }

    /// Refuses a view without its data areas.
    fn whole(&self) -> Result<(), Error> {
        if self.data {
            return Ok(());
        }
        Err(Error::RegionTooSmall { need: self.segment_len(), have: self.len })
    }

    /// The reading handle of `side` (on the ring the peer writes).
    ///
    /// # Safety
    /// As for [`Segment::producer`], for the ring's one reader
    /// ([`Consumer::resync`] before each use when several are serialized).
    pub unsafe fn consumer(&self, side: Side) -> Result<Consumer, Error> {
        self.whole()?;
        // SAFETY: a view with its data mapped.
        unsafe { self.consumer_of(side) }
    }

    /// Step 1 of the wait protocol for data on behalf of `side`'s reader,
    /// by a watcher that reads no bytes (ipcd's monitor, holding a
    /// connection back from its acceptor): arms the reader's waiting flag
    /// and re-checks the ring and the writer's flags, as
    /// [`Consumer::prepare_wait`]. Works on control views.
    pub fn prepare_reader_wait(&self, side: Side) -> Result<crate::Wait, Error> {
        // SAFETY: only the wait protocol's control operations are used.
        unsafe { self.consumer_of(side) }?.prepare_wait()
    }

    /// The sleepers of `side`: those waiting for data (on the ring it
    /// reads), then those waiting for room (on the ring it writes). The
    /// monitor rings them when it closes the other side or admits or
    /// refuses a waiting connect; a control view serves.
    pub fn waiters_of(&self, side: Side) -> [crate::Waiters<'_>; 2] {
        let rings = &self.control().rings;
        [
            crate::Waiters::of(&rings[side.peer().tx()].reader_waiting.waiters),
            crate::Waiters::of(&rings[side.tx()].writer_waiting.waiters),
        ]
    }

    /// Both handles of `side`.
    ///
    /// # Safety
    /// Those of [`Segment::producer`] and [`Segment::consumer`].
    pub unsafe fn endpoint(&self, side: Side) -> Result<(Producer, Consumer), Error> {
        // SAFETY: the caller's contract, passed on.
        Ok((unsafe { self.producer(side) }?, unsafe { self.consumer(side) }?))
    }

    /// Bytes `side` has written so far (its ring's `tail`), for reports.
    /// Read as published, not validated: never use it to index.
    pub fn written(&self, side: Side) -> u64 {
        self.control().rings[side.tx()].writer.tail.load(Ordering::Relaxed)
    }

    /// Copies what `side` wrote from stream position `from` on into `buf`,
    /// for an observer that consumes nothing (`ipcd trace`): only reads,
    /// so a read-only mapping serves. Bytes the writer may have written
    /// over since (the ring wrapped past them) are not copied but counted
    /// in [`Tapped::lost`]; `max_unpublished` is how far past its
    /// published tail the writer may be copying at any moment (its
    /// largest single copy), which the check allows for. Positions are
    /// validated against the capacity only: a writer that breaks the
    /// protocol yields wrong bytes here, never a bad access.
    pub fn copy_written(&self, side: Side, from: u64, buf: &mut [u8], max_unpublished: u64) -> Tapped {
        if self.whole().is_err() {
            return Tapped { lost: 0, len: 0 };
        }
        let (ctrl, mut data) = self.ring(side.tx());
        // SAFETY: points into the region this view keeps valid.
        let ctrl = unsafe { ctrl.as_ref() };
        let (cap, small) = (data.cap, data.small.cap);
        // Acquire pairs with the writer's Release store of its tail: the
        // bytes before it are visible, and where they lie (`grown_at`).
        let tail = ctrl.writer.tail.load(Ordering::Acquire);
        let ahead = tail.wrapping_sub(from);
        if ahead == 0 || ahead > u64::MAX / 2 {
            return Tapped { lost: 0, len: 0 };
        }
        // Unvalidated, and memory-safe at any value (`DataArea::split`).
        if ctrl.writer.grown.load(Ordering::Acquire) != 0 {
            data.grown_at = Some(ctrl.writer.grown_at.load(Ordering::Relaxed));
        }
        // What may be written over while we copy starts here: in the
        // small area while the ring is there; once it grew, in the bulk
        // area, the small one keeping the last bytes before the switch.
        let oldest = |t: u64| {
            let last = |c: u64| t.saturating_add(max_unpublished.min(c)).saturating_sub(c);
            match data.grown_at {
                None => last(small),
                Some(at) if last(cap) <= at => at.saturating_sub(small),
                Some(_) => last(cap),
            }
        };
        // At most `tail`: a false `grown_at` cannot move it past.
        let start = from.max(oldest(tail)).min(tail);
        let len = usize::try_from(tail - start).unwrap_or(usize::MAX).min(buf.len());
        // SAFETY: `len <= cap`, and at most the small area's capacity
        // while the ring is there (start >= tail - that capacity), and the
        // areas are valid for reads by the view's contract; the bytes are
        // plain `u8`.
        unsafe { data.copy_out(start, &mut buf[..len]) };
        // Whatever the writer got to meanwhile may have been overwritten.
        let after = oldest(ctrl.writer.tail.load(Ordering::Acquire));
        let bad = usize::try_from(after.saturating_sub(start)).unwrap_or(usize::MAX).min(len);
        buf.copy_within(bad..len, 0);
        Tapped { lost: (start - from) + bad as u64, len: len - bad }
    }

    /// Whether `side` closed its reading direction (as a socket's last
    /// close does; `shutdown` of writing alone does not). Only reads.
    pub fn reader_closed(&self, side: Side) -> bool {
        let (ctrl, _) = self.ring(side.peer().tx());
        // SAFETY: points into the region this view keeps valid.
        unsafe { ctrl.as_ref() }.reader.flags.load(Ordering::Acquire) & crate::layout::FLAG_CLOSED != 0
    }

    /// How `side`'s writing stands: open, closed in order (FIN) or reset.
    /// Only reads (see [`Segment::copy_written`]).
    pub fn writer_state(&self, side: Side) -> crate::PeerState {
        let (ctrl, _) = self.ring(side.tx());
        // SAFETY: points into the region this view keeps valid.
        let flags = unsafe { ctrl.as_ref() }.writer.flags.load(Ordering::Acquire);
        if flags & crate::layout::FLAG_RESET != 0 {
            crate::PeerState::Reset
        } else if flags & crate::layout::FLAG_CLOSED != 0 {
            crate::PeerState::Closed
        } else {
            crate::PeerState::Open
        }
    }
}

/// A standby connection's ticket, as [`ConnSegment::ticket`](crate::ConnSegment::ticket) reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Issued; its connector has not used it.
    Expected,
    /// Its connector connected through it, from this address.
    Connected([u32; 8]),
    /// Withdrawn before its connector used it.
    Cancelled,
    /// The segment is not (or no longer) this connection's ticket.
    Other,
}

/// What [`Segment::copy_written`] copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tapped {
    /// Bytes from the asked position on that the ring no longer holds
    /// (skipped; the copied ones follow them in the stream).
    pub lost: u64,
    /// Bytes copied to the start of the buffer.
    pub len: usize,
}
