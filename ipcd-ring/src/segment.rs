//! A connection segment: header, two rings, their data areas; created by the
//! monitor, attached by both ends, validated on every attach.

use core::num::{NonZeroU32, NonZeroU64};
use core::ptr::NonNull;

use crate::consumer::Consumer;
use crate::error::Error;
use crate::layout::BUSY;
use crate::layout::{
    Line, RingControl, SegmentControl, SegmentHeader, CACHE_LINE, DATA_START, FLAG_RESET, HOLDER_SLOTS, MAX_CAPACITY,
    NO_CPU, OFFER_CLAIMED, SEGMENT_ALIGN, SEGMENT_MAGIC, SEGMENT_VERSION, TICKET_CANCELLED, TICKET_CONNECTED,
    TICKET_EXPECTED, TICKET_NONE, TICKET_WATCHED,
};
use crate::producer::Producer;
use crate::span::DataArea;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use crate::wait::{close_reader, close_writer};

/// Where a connection stands against its listener's backlog, as the
/// connector sees it ([`Segment::admission`]).
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
    fn tx(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    fn index(self) -> usize {
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
    fn index(self) -> usize {
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
    conn_id: u64,
    caps: [u64; 2],
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

/// Offsets of the two data areas for capacities `caps`, and the total length.
fn data_layout(caps: [u64; 2]) -> Result<([usize; 2], usize), Error> {
    check_capacity(caps[0])?;
    check_capacity(caps[1])?;
    // Both capacities are at most 2^40, so nothing here can overflow a u64;
    // the try_from catches 32-bit targets.
    let line = CACHE_LINE as u64;
    let first = DATA_START as u64;
    let second = first + caps[0].div_ceil(line) * line;
    let total = second + caps[1];
    let conv = |v: u64| usize::try_from(v).map_err(|_| Error::BadCapacity(caps[0].max(caps[1])));
    Ok(([conv(first)?, conv(second)?], conv(total)?))
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

impl Segment {
    /// Bytes a segment with ring capacities `caps` (A→B, B→A) needs.
    ///
    /// ```
    /// let len = ipcd_ring::Segment::required_len([4096, 4096]).unwrap();
    /// assert!(len >= 8192);
    /// assert!(ipcd_ring::Segment::required_len([3, 4096]).is_err());
    /// ```
    pub fn required_len(caps: [u64; 2]) -> Result<usize, Error> {
        Ok(data_layout(caps)?.1)
    }

    /// Writes a fresh header and two empty rings into the region.
    ///
    /// # Safety
    /// `base..base + len` must be valid for reads and writes, aligned to
    /// [`SEGMENT_ALIGN`] (checked), not in use by anyone else during this
    /// call, and must stay mapped for as long as this view or any handle made
    /// from it exists.
    pub unsafe fn init(base: NonNull<u8>, len: usize, conn_id: u64, caps: [u64; 2]) -> Result<Segment, Error> {
        let (_, total) = data_layout(caps)?;
        check_region(base, len, total)?;
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
            }),
            rings: [RingControl::new(0), RingControl::new(0)],
        };
        // SAFETY: the region is valid, aligned and large enough (checked above,
        // validity by contract), and nobody else uses it during init.
        unsafe { base.cast::<SegmentControl>().as_ptr().write(control) };
        Ok(Segment { base, len, conn_id, caps })
    }

    /// Makes the segment fresh again for connection `conn_id`: both rings
    /// empty and open, no waiters, one holder per end, no lock held, offered
    /// to nobody. The layout (magic, capacities) is kept. Unlike [`Segment::init`] it
    /// writes with atomic stores only, so it is sound on memory that other
    /// processes still map; they must no longer use it (both ends of the
    /// last connection closed), or they see their own connection torn.
    pub fn reuse(&mut self, conn_id: u64) {
        let control = self.control();
        let header = &control.header;
        for h in &header.holders {
            h.store(1, Ordering::Relaxed);
        }
        for l in &header.locks {
            l.store(0, Ordering::Relaxed);
        }
        header.offer.store(0, Ordering::Relaxed);
        header.admission.store(0, Ordering::Relaxed);
        header.ticket.store(TICKET_NONE, Ordering::Relaxed);
        for id in header.holder_ids.iter().flatten() {
            id.store(0, Ordering::Relaxed);
        }
        for r in &control.rings {
            r.writer.tail.store(0, Ordering::Relaxed);
            r.writer.flags.store(0, Ordering::Relaxed);
            // The last connection's copy of its last bytes names positions
            // the new one will reach again.
            r.writer.recent_end.store(BUSY, Ordering::Relaxed);
            r.writer.recent_len.store(0, Ordering::Relaxed);
            r.writer.cpu.store(NO_CPU, Ordering::Relaxed);
            r.reader.head.store(0, Ordering::Relaxed);
            r.reader.flags.store(0, Ordering::Relaxed);
            r.reader_waiting.waiting.store(0, Ordering::Relaxed);
            r.reader_waiting.batching.store(0, Ordering::Relaxed);
            r.writer_waiting.store(0, Ordering::Relaxed);
        }
        // Release: whoever attaches after reading the new id sees the
        // fresh rings (hand-over between processes also goes through a
        // system call, which orders it anyway).
        header.conn_id.store(conn_id, Ordering::Release);
        self.conn_id = conn_id;
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
        let (_, total) = data_layout(caps)?;
        if header.total_len.load(Ordering::Relaxed) != total as u64 {
            return Err(Error::BadLayout);
        }
        check_region(base, len, total)?;
        let conn_id = header.conn_id.load(Ordering::Relaxed);
        Ok(Segment { base, len, conn_id, caps })
    }

    /// The connection id the monitor assigned.
    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// Length of the region the view was made over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a segment holds at least its control area.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Capacity of the ring `side` writes.
    pub fn capacity(&self, side: Side) -> u64 {
        self.caps[side.tx()]
    }

    fn control(&self) -> &SegmentControl {
        // SAFETY: validated to lie in the region, valid per the contract of
        // `init`/`attach`; all fields are atomics.
        unsafe { self.base.cast::<SegmentControl>().as_ref() }
    }

    fn ring(&self, ring: usize) -> (NonNull<RingControl>, DataArea) {
        let (offsets, _) = data_layout(self.caps).unwrap_or(([DATA_START, DATA_START], 0));
        let ctrl = NonNull::from(&self.control().rings[ring]);
        // SAFETY: `offsets[ring] + caps[ring] <= total <= len` was checked when
        // the view was made, so the pointer stays inside the region.
        let base = unsafe { self.base.add(offsets[ring]) };
        (ctrl, DataArea { base, cap: self.caps[ring] })
    }

    /// The writing handle of `side` (on the ring `side` writes).
    pub fn producer(&self, side: Side) -> Result<Producer, Error> {
        let (ctrl, data) = self.ring(side.tx());
        // SAFETY: both point into the region this view keeps valid by contract.
        unsafe { Producer::new(ctrl, data) }
    }

    /// The reading handle of `side` (on the ring the peer writes).
    pub fn consumer(&self, side: Side) -> Result<Consumer, Error> {
        let (ctrl, data) = self.ring(side.peer().tx());
        // SAFETY: as in `producer`.
        unsafe { Consumer::new(ctrl, data) }
    }

    /// Both handles of `side`.
    pub fn endpoint(&self, side: Side) -> Result<(Producer, Consumer), Error> {
        Ok((self.producer(side)?, self.consumer(side)?))
    }

    /// Marks every handle of `side` gone at once, as when its last process
    /// died: its writing side is reset, its reading side closed. Returns
    /// whether the peer's doorbell must be rung. Works on a corrupted ring.
    pub fn mark_gone(&self, side: Side) -> bool {
        let rings = &self.control().rings;
        let woke_reader = close_writer(&rings[side.tx()], FLAG_RESET);
        let woke_writer = close_reader(&rings[side.peer().tx()]);
        woke_reader | woke_writer
    }

    /// Closes `side` as the kernel closes the socket of a process that
    /// died: with a reset if bytes it never read were left (or `abort`),
    /// else with an end of stream both ways. Returns whether the peer's
    /// doorbell must be rung. Works on a corrupted ring.
    pub fn close_dead_end(&self, side: Side, abort: bool) -> bool {
        let unread = self.consumer(side).and_then(|mut c| c.readable()).map_or(true, |n| n > 0);
        if unread || abort {
            return self.mark_gone(side);
        }
        match self.endpoint(side) {
            Ok((mut p, mut c)) => {
                let _ = p.close();
                let _ = c.close();
                true
            }
            Err(_) => self.mark_gone(side),
        }
    }

    /// Names `id` (nonzero, opaque here: the caller's process id and
    /// namespace) among the holders of `side`, unless it is named
    /// already. False when every slot is taken: the side then has holders
    /// nobody can name, and [`Segment::holders_named`] says so.
    pub fn name_holder(&self, side: Side, id: NonZeroU64) -> bool {
        let slots = &self.control().header.holder_ids[side.index()];
        if slots.iter().any(|s| s.load(Ordering::Relaxed) == id.get()) {
            return true;
        }
        slots.iter().any(|s| s.compare_exchange(0, id.get(), Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    /// Takes `id` off the holders of `side` (it let go of its share).
    pub fn unname_holder(&self, side: Side, id: NonZeroU64) {
        let slots = &self.control().header.holder_ids[side.index()];
        if let Some(s) = slots.iter().find(|s| s.load(Ordering::Relaxed) == id.get()) {
            let _ = s.compare_exchange(id.get(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    /// The named holders of `side`, when they can account for every share
    /// of its holder count: `None` if some holder has no name (more than
    /// [`HOLDER_SLOTS`], a share passed but not yet received, a forked
    /// child not yet named) or none is named. Any name may be stale (its
    /// process died); read as published, never trusted beyond that.
    pub fn holders_named(&self, side: Side) -> Option<[u64; HOLDER_SLOTS]> {
        let header = &self.control().header;
        let ids: [u64; HOLDER_SLOTS] =
            core::array::from_fn(|i| header.holder_ids[side.index()][i].load(Ordering::Acquire));
        let named = ids.iter().filter(|&&id| id != 0).count();
        let count = header.holders[side.index()].load(Ordering::Acquire) as usize;
        (named > 0 && count <= named).then_some(ids)
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
        let (ctrl, data) = self.ring(side.tx());
        // SAFETY: points into the region this view keeps valid.
        let ctrl = unsafe { ctrl.as_ref() };
        let cap = data.cap;
        // Acquire pairs with the writer's Release store of its tail: the
        // bytes before it are visible.
        let tail = ctrl.writer.tail.load(Ordering::Acquire);
        let ahead = tail.wrapping_sub(from);
        if ahead == 0 || ahead > u64::MAX / 2 {
            return Tapped { lost: 0, len: 0 };
        }
        // What may be written over while we copy starts here.
        let oldest = |t: u64| t.saturating_add(max_unpublished.min(cap)).saturating_sub(cap);
        let start = from.max(oldest(tail));
        let len = usize::try_from(tail - start).unwrap_or(usize::MAX).min(buf.len());
        // SAFETY: `len <= cap` (start >= tail - cap), and the area is valid
        // for reads by the view's contract; the bytes are plain `u8`.
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

    /// Whether `side` has done nothing its peer could see since the
    /// segment was made fresh: read nothing, written nothing, closed
    /// neither direction. Read as published, not validated: a hint for
    /// the monitor, never an index.
    pub fn untouched(&self, side: Side) -> bool {
        let rings = &self.control().rings;
        let (tx, rx) = (&rings[side.tx()], &rings[side.peer().tx()]);
        tx.writer.tail.load(Ordering::Acquire) == 0
            && tx.writer.flags.load(Ordering::Acquire) == 0
            && rx.reader.head.load(Ordering::Acquire) == 0
            && rx.reader.flags.load(Ordering::Acquire) == 0
    }

    /// How many processes hold `side` ([`Segment::add_holder`] and
    /// [`Segment::release_holder`]). Read as published, not validated.
    pub fn holders(&self, side: Side) -> u32 {
        self.control().header.holders[side.index()].load(Ordering::Acquire)
    }

    /// Records one more process holding `side` (after fork). Returns the new count.
    pub fn add_holder(&self, side: Side) -> u32 {
        // Relaxed: the count decides only who closes last, published by the
        // AcqRel decrement below.
        self.control().header.holders[side.index()].fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Records that one process let go of `side`. Returns how many still hold
    /// it; 0 means the caller was the last and must close the end. Never
    /// underflows, whatever the peer wrote.
    pub fn release_holder(&self, side: Side) -> u32 {
        let holders = &self.control().header.holders[side.index()];
        // A compare-exchange loop (fetch_update is being renamed across
        // toolchains). AcqRel: the last releaser sees everything earlier
        // holders did.
        let mut n = holders.load(Ordering::Acquire);
        loop {
            let Some(left) = n.checked_sub(1) else { return 0 };
            match holders.compare_exchange_weak(n, left, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return left,
                Err(now) => n = now,
            }
        }
    }

    /// Says where the connection stands against its listener's backlog
    /// (the monitor's to say; the connector reads it).
    pub fn set_admission(&self, a: Admission) {
        // Release: the connector that sees `Established` sees the rings as
        // the monitor left them.
        self.control().header.admission.store(a as u32, Ordering::Release);
    }

    /// Where the connection stands against its listener's backlog.
    pub fn admission(&self) -> Admission {
        match self.control().header.admission.load(Ordering::Acquire) {
            1 => Admission::Waiting,
            2 => Admission::Refused,
            _ => Admission::Established,
        }
    }

    /// Offers the accepting end, waiting in an accept queue, to process
    /// `pid` (0: to nobody): only it can [`Segment::claim`] it now, and
    /// any earlier offer is void. For the monitor, before it tells `pid`.
    pub fn offer(&self, pid: u32) {
        // Release: the offer is seen with whatever was set up before it
        // (the message that tells `pid` orders it anyway).
        self.control().header.offer.store(pid & !OFFER_CLAIMED, Ordering::Release);
    }

    /// Takes back the offer to `pid` unless it has claimed the end; then
    /// nobody can claim it until the next [`Segment::offer`]. True if the
    /// offer was taken back.
    pub fn withdraw(&self, pid: u32) -> bool {
        let offer = &self.control().header.offer;
        pid & OFFER_CLAIMED == 0 && offer.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Process `pid` accepts the end offered to it. False if the offer
    /// was withdrawn or made to another process meanwhile: the end is
    /// no longer `pid`'s to take (nor to close).
    pub fn claim(&self, pid: u32) -> bool {
        let offer = &self.control().header.offer;
        pid != 0
            && pid & OFFER_CLAIMED == 0
            && offer.compare_exchange(pid, pid | OFFER_CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Makes the segment connection `conn_id`'s ticket, expected: the
    /// acceptor may be told of it before its connector uses it. For the
    /// monitor, before it tells either.
    pub fn expect(&self, conn_id: u64) {
        self.control().header.ticket.store(ticket_word(conn_id, TICKET_EXPECTED), Ordering::Release);
    }

    /// The connector of `conn_id` connects through its ticket, from
    /// `addr` (stored first, for the acceptor). `None` if the ticket was
    /// cancelled or is another connection's: the connection was not made.
    /// Otherwise whether an acceptor was watching it ([`Segment::watch`]):
    /// when it was, the acceptor sees the connection without being woken.
    pub fn connect(&self, conn_id: u64, addr: [u32; 8]) -> Option<bool> {
        let header = &self.control().header;
        for (w, v) in header.connector.iter().zip(addr) {
            w.store(v, Ordering::Relaxed);
        }
        // Release: the address is seen by whoever sees the ticket connected.
        leave_expected(&header.ticket, conn_id, TICKET_CONNECTED).map(|was| was & TICKET_WATCHED != 0)
    }

    /// An acceptor starts (`on`) or stops watching `conn_id`'s ticket
    /// while it spins rather than sleeps. Returns the ticket as it is
    /// after: stopping on a ticket that says connected means its
    /// connector may have found it watched and not woken anyone, so the
    /// caller takes the connection rather than sleep. Watching a ticket
    /// already watched (by another thread) is harmless; whichever stops
    /// first clears it, and its connector then wakes the others.
    pub fn watch(&self, conn_id: u64, on: bool) -> Ticket {
        let ticket = &self.control().header.ticket;
        let (plain, watched) =
            (ticket_word(conn_id, TICKET_EXPECTED), ticket_word(conn_id, TICKET_EXPECTED | TICKET_WATCHED));
        let (from, to) = if on { (plain, watched) } else { (watched, plain) };
        match ticket.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ticket::Expected,
            Err(_) => self.ticket(conn_id),
        }
    }

    /// Cancels `conn_id`'s ticket unless its connector used it. Returns the
    /// ticket as it is now: [`Ticket::Cancelled`] (by this call or before),
    /// [`Ticket::Connected`], or [`Ticket::Other`] if the segment is no
    /// longer that connection's ticket.
    pub fn cancel(&self, conn_id: u64) -> Ticket {
        match leave_expected(&self.control().header.ticket, conn_id, TICKET_CANCELLED) {
            Some(_) => Ticket::Cancelled,
            None => self.ticket(conn_id),
        }
    }

    /// `conn_id`'s ticket as it is now.
    pub fn ticket(&self, conn_id: u64) -> Ticket {
        let header = &self.control().header;
        let word = header.ticket.load(Ordering::Acquire);
        if word >> TICKET_ID_SHIFT != conn_id & (u64::MAX >> TICKET_ID_SHIFT) {
            return Ticket::Other;
        }
        match word & TICKET_STATE {
            TICKET_EXPECTED => Ticket::Expected,
            TICKET_CONNECTED => {
                Ticket::Connected(core::array::from_fn(|i| header.connector[i].load(Ordering::Relaxed)))
            }
            TICKET_CANCELLED => Ticket::Cancelled,
            _ => Ticket::Other,
        }
    }

    /// Tries to take `lock` for `owner` (a process-unique id such as a tid).
    /// On failure returns the current owner, so the caller can check whether
    /// it is still alive and [`Segment::break_lock`] if not.
    pub fn try_lock(&self, lock: EndLock, owner: NonZeroU32) -> Result<(), u32> {
        let word = &self.control().header.locks[lock.index()];
        // Acquire pairs with the Release in `unlock`: the previous holder's
        // writes (its resynced indices) are visible.
        word.compare_exchange(0, owner.get(), Ordering::Acquire, Ordering::Relaxed).map(|_| ())
    }

    /// Releases `lock` if `owner` holds it; returns whether it did.
    pub fn unlock(&self, lock: EndLock, owner: NonZeroU32) -> bool {
        let word = &self.control().header.locks[lock.index()];
        word.compare_exchange(owner.get(), 0, Ordering::Release, Ordering::Relaxed).is_ok()
    }

    /// Frees `lock` if it is still held by `dead_owner`; returns whether it did.
    pub fn break_lock(&self, lock: EndLock, dead_owner: u32) -> bool {
        let word = &self.control().header.locks[lock.index()];
        dead_owner != 0 && word.compare_exchange(dead_owner, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    /// Takes `lock` for `owner`, spinning; every 1024 tries it asks
    /// `dead(holder)` whether the holder is gone, and breaks its lock if so
    /// (a process that crashed holding an end's lock must not stall the
    /// others forever), or else calls `pause` (a yield of the CPU). The
    /// two are the caller's: this crate makes no system calls.
    pub fn lock(&self, lock: EndLock, owner: NonZeroU32, mut dead: impl FnMut(u32) -> bool, mut pause: impl FnMut()) {
        let mut spins = 0u32;
        while let Err(holder) = self.try_lock(lock, owner) {
            spins = spins.wrapping_add(1);
            if spins % 1024 != 0 {
                core::hint::spin_loop();
            } else if holder != 0 && dead(holder) {
                self.break_lock(lock, holder);
            } else {
                pause();
            }
        }
    }
}

/// A standby connection's ticket, as [`Segment::ticket`] reads it.
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

/// Bits of the ticket word below the connection id: the state and its flags.
const TICKET_ID_SHIFT: u32 = 3;
/// The state's bits (the rest below the id are flags).
const TICKET_STATE: u64 = 3;

fn ticket_word(conn_id: u64, state: u64) -> u64 {
    (conn_id << TICKET_ID_SHIFT) | state
}

/// Moves `conn_id`'s ticket from expected (watched or not) to `state`
/// by compare-exchange; the word it left, or `None` if it was not
/// `conn_id`'s or not expected.
fn leave_expected(ticket: &AtomicU64, conn_id: u64, state: u64) -> Option<u64> {
    let plain = ticket_word(conn_id, TICKET_EXPECTED);
    let mut w = ticket.load(Ordering::Acquire);
    while w & !TICKET_WATCHED == plain {
        match ticket.compare_exchange(w, ticket_word(conn_id, state), Ordering::AcqRel, Ordering::Acquire) {
            Ok(was) => return Some(was),
            // Watched or unwatched meanwhile: try again with what it is.
            Err(now) => w = now,
        }
    }
    None
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
