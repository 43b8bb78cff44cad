//! The `#[repr(C)]` structures that live in shared memory, and their offsets.
//!
//! A segment is: a [`SegmentHeader`] (two lines), two [`RingControl`] blocks (ring
//! 0 carries A→B, ring 1 carries B→A), then the two data areas. Every field is
//! an atomic, so a peer writing the header at any moment is a race on atomics,
//! never on plain memory.

use crate::sync::{AtomicU32, AtomicU64, Ordering};

/// `b"IPCDSEG1"` read as a little-endian `u64`: the first word of every segment.
pub const SEGMENT_MAGIC: u64 = u64::from_le_bytes(*b"IPCDSEG1");
/// Version of this layout. An attach to any other version fails.
pub const SEGMENT_VERSION: u32 = 11;
/// Padding unit: x86-64's adjacent-line prefetcher pulls 64-byte lines in
/// pairs, so two indices 64 bytes apart still share traffic (as crossbeam does).
pub const CACHE_LINE: usize = 128;
/// Alignment the segment's base address must have.
pub const SEGMENT_ALIGN: usize = CACHE_LINE;
/// Largest capacity of one ring (1 TiB): keeps every offset far from overflow.
pub const MAX_CAPACITY: u64 = 1 << 40;

/// Ring flag: this side has closed its end (writer: no more bytes; reader: no more reads).
pub const FLAG_CLOSED: u32 = 1 << 0;
/// Ring flag, writer side only: the writer aborted (close with unread data,
/// `SO_LINGER` 0, or its process died); the reader reports a reset.
pub const FLAG_RESET: u32 = 1 << 1;

/// Bytes of the writer's copy of its last bytes (see `recent`): four
/// words, so that with `tail`, the flags and the copy's bounds it stays
/// within the first 64 bytes of the writer's line (one transfer even where
/// lines move singly).
pub(crate) const RECENT: usize = 32;

/// `recent_end` while the writer rewrites the copy (and before any write).
pub(crate) const BUSY: u64 = u64::MAX;

// Ring positions and capacities are u64 in shared memory and index memory
// as usize: ipcd runs on 64-bit targets only, where the two are one size.
const _: () = assert!(usize::BITS == u64::BITS);

/// A ring quantity (bounded by a capacity, at most [`MAX_CAPACITY`]) as an
/// index. Exact: usize is 64 bits wide (asserted above).
#[inline(always)]
#[allow(clippy::cast_possible_truncation)]
pub(crate) const fn to_index(x: u64) -> usize {
    x as usize
}

/// Value wrapped so that it owns a whole padded cache line.
#[repr(C, align(128))]
pub(crate) struct Line<T>(pub(crate) T);

impl<T> core::ops::Deref for Line<T> {
    type Target = T;

    #[inline(always)]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// The writer's line: written only by the writer.
#[repr(C)]
pub(crate) struct WriterLine {
    /// Bytes ever written (published with Release).
    pub(crate) tail: AtomicU64,
    /// [`FLAG_CLOSED`] | [`FLAG_RESET`].
    pub(crate) flags: AtomicU32,
    /// How many of the bytes before `recent_end` the copy holds (see `recent`).
    pub(crate) recent_len: AtomicU32,
    /// Stream position just past the copied bytes; [`BUSY`] while the
    /// writer rewrites the copy.
    pub(crate) recent_end: AtomicU64,
    /// The last bytes written, the one at stream position `p` in byte
    /// `p % RECENT` (little-endian words).
    pub(crate) recent: [AtomicU64; RECENT / 8],
    /// The CPU the writer said it ran on when it last waited for its own
    /// input ([`NO_CPU`] before): a reader on the same CPU yields rather
    /// than spins for it. A hint: any value is safe.
    pub(crate) cpu: AtomicU32,
    /// Nonzero once the writer moved the ring to its bulk area (see
    /// `span::DataArea`); set after `grown_at`, before any `tail` past it
    /// is published, and never cleared within a connection.
    pub(crate) grown: AtomicU32,
    /// The switch position: bytes from here on live in the bulk area.
    /// Meaningful once `grown` is set; validated by the reader.
    pub(crate) grown_at: AtomicU64,
}

/// The writer's CPU hint (see [`crate::Producer::note_cpu`]) when the writer has not said.
pub const NO_CPU: u32 = u32::MAX;

impl WriterLine {
    /// Open, `tail` at `start`, no copy of recent bytes published.
    pub(crate) fn new(start: u64) -> Self {
        WriterLine {
            tail: AtomicU64::new(start),
            flags: AtomicU32::new(0),
            recent_len: AtomicU32::new(0),
            recent_end: AtomicU64::new(BUSY),
            recent: core::array::from_fn(|_| AtomicU64::new(0)),
            cpu: AtomicU32::new(NO_CPU),
            grown: AtomicU32::new(0),
            grown_at: AtomicU64::new(0),
        }
    }
}

/// The reader's line: written only by the reader.
#[repr(C)]
pub(crate) struct ReaderLine {
    /// Bytes ever read (published with Release).
    pub(crate) head: AtomicU64,
    /// [`FLAG_CLOSED`].
    pub(crate) flags: AtomicU32,
    /// The reader's receive buffer in bytes (0: not said), which a writer
    /// with a send buffer of its own may hold unread on top of it (see
    /// [`crate::Producer::peer_window`]). On the `head` line, which the
    /// writer loads anyway when it looks for room. A hint: any value is safe.
    pub(crate) window: AtomicU64,
}

/// The line the writer loads after every publish: written by the reader
/// only when it goes to sleep or changes how it reads, so the load hits.
#[repr(C)]
pub(crate) struct ReaderWaitLine {
    /// Set by the reader before it sleeps for data; cleared by whoever wakes it.
    pub(crate) waiting: AtomicU32,
    /// Nonzero while the reader takes a stream of small writes in batches:
    /// it then wants more than the last bytes, so the writer leaves the
    /// copy beside `tail` unpublished (see `recent`). A hint: any value is
    /// safe, the copy only ever names bytes the data area holds too.
    pub(crate) batching: AtomicU32,
    /// Who sleeps for data: the doorbells of the reader's waiting threads
    /// (see [`crate::Waiters`]).
    pub(crate) waiters: [AtomicU64; WAITER_SLOTS],
}

/// The line the reader loads when it takes the writer's flag: written by
/// the writer only when it goes to sleep for room.
#[repr(C)]
pub(crate) struct WriterWaitLine {
    /// Set by the writer before it sleeps for space; cleared by whoever wakes it.
    pub(crate) waiting: AtomicU32,
    /// Who sleeps for room (see [`crate::Waiters`]).
    pub(crate) waiters: [AtomicU64; WAITER_SLOTS],
}

/// How many sleepers one waiting line can name (see [`crate::Waiters`]).
pub const WAITER_SLOTS: usize = 4;

/// Control block of one byte ring.
///
/// The two waiting flags sit on lines of their own: the writer loads
/// `reader_waiting` after every publish, and keeping it off the reader's
/// `head` line means that load hits a line that is only written when the
/// reader actually goes to sleep.
#[repr(C)]
pub struct RingControl {
    pub(crate) writer: Line<WriterLine>,
    pub(crate) reader: Line<ReaderLine>,
    pub(crate) reader_waiting: Line<ReaderWaitLine>,
    pub(crate) writer_waiting: Line<WriterWaitLine>,
}

impl core::fmt::Debug for RingControl {
    /// A snapshot of the indices and flags (Relaxed loads: for diagnostics only).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingControl")
            .field("tail", &self.writer.tail.load(Ordering::Relaxed))
            .field("head", &self.reader.head.load(Ordering::Relaxed))
            .field("writer_flags", &self.writer.flags.load(Ordering::Relaxed))
            .field("reader_flags", &self.reader.flags.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl RingControl {
    pub(crate) fn new(start: u64) -> Self {
        RingControl {
            writer: Line(WriterLine::new(start)),
            reader: Line(ReaderLine {
                head: AtomicU64::new(start),
                flags: AtomicU32::new(0),
                window: AtomicU64::new(0),
            }),
            reader_waiting: Line(ReaderWaitLine {
                waiting: AtomicU32::new(0),
                batching: AtomicU32::new(0),
                waiters: core::array::from_fn(|_| AtomicU64::new(0)),
            }),
            writer_waiting: Line(WriterWaitLine {
                waiting: AtomicU32::new(0),
                waiters: core::array::from_fn(|_| AtomicU64::new(0)),
            }),
        }
    }
}

impl core::fmt::Debug for SegmentHeader {
    /// A snapshot of the identifying fields (Relaxed loads: for diagnostics only).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SegmentHeader")
            .field("version", &self.version.load(Ordering::Relaxed))
            .field("conn_id", &self.conn_id.load(Ordering::Relaxed))
            .field("total_len", &self.total_len.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// First two lines of a segment. Written by the monitor before the segment is
/// shared; afterwards only the holder counts and locks change.
#[repr(C)]
pub struct SegmentHeader {
    pub(crate) magic: AtomicU64,
    pub(crate) version: AtomicU32,
    /// Offset of the first data area (= size of header plus both control blocks).
    pub(crate) data_start: AtomicU32,
    pub(crate) conn_id: AtomicU64,
    /// Length of the whole segment in bytes.
    pub(crate) total_len: AtomicU64,
    /// Capacity of ring 0 (A→B) and ring 1 (B→A).
    pub(crate) capacity: [AtomicU64; 2],
    /// Number of processes holding side A and side B (fork shares an end).
    pub(crate) holders: [AtomicU32; 2],
    /// Owner words of the per-end locks: A send, A recv, B send, B recv.
    /// Zero is free; otherwise the holder's id, so a survivor can break the
    /// lock of a holder that died.
    pub(crate) locks: [AtomicU32; 4],
    /// The process (pid) the accepting end is offered to while it waits
    /// in an accept queue, [`OFFER_CLAIMED`] set once that process took
    /// it; 0 while nobody may. Written by the monitor (offer, withdraw)
    /// and the acceptor (claim), each a compare-exchange but the offer.
    pub(crate) offer: AtomicU32,
    /// Where the connection stands against its listener's backlog (see
    /// [`crate::Admission`]). Written by the monitor, read by the
    /// connector; any value is safe to read (unknown ones mean admitted).
    pub(crate) admission: AtomicU32,
    /// A standby connection's ticket: `(connection id << 8) | flags |
    /// state`, the state one of [`TICKET_NONE`], [`TICKET_EXPECTED`],
    /// [`TICKET_CONNECTED`], [`TICKET_CANCELLED`], [`TICKET_PROMOTED`],
    /// [`TICKET_RENEWING`]. The connector moves it from expected to
    /// connected, the acceptor or the monitor from expected to cancelled,
    /// each by compare-exchange: whoever wins decides. [`TICKET_WATCHED`],
    /// beside expected, says the acceptor will look at it without being
    /// woken (none of its threads sleeps on the listener): its connector
    /// need not wake it. A renewable ticket ([`TICKET_RENEW`]) is made
    /// expected again by the two processes themselves once both ends
    /// closed ([`TICKET_DONE_A`], [`TICKET_DONE_B`], then renewing), unless
    /// the monitor promoted it to a connection of its books first.
    pub(crate) ticket: AtomicU64,
    /// The connector's address, written before its ticket says connected
    /// (opaque words to this crate).
    pub(crate) connector: [AtomicU32; 8],
    /// Who holds each side: up to [`HOLDER_SLOTS`] opaque nonzero ids
    /// (to this crate) of holding processes, 0 for a free slot. Written by
    /// each holder for itself and by the monitor; read by a survivor that
    /// must judge, with no monitor left, whether its peer died.
    pub(crate) holder_ids: [[AtomicU64; HOLDER_SLOTS]; 2],
    /// Rounds of a renewable ticket renewed so far (its processes count
    /// them for the monitor's totals; a count, never an index).
    pub(crate) rounds: AtomicU64,
    /// When the connector connected through the ticket (its clock,
    /// opaque here), written before the ticket says connected: the
    /// acceptor takes connections in that order, as Linux's accept queue
    /// gives them. A hint: any value only reorders accepts.
    pub(crate) connected_at: AtomicU64,
}

/// How many holders of one side a segment can name (see `ConnSegment::name_holder`).
pub const HOLDER_SLOTS: usize = 4;

/// Ticket state: not a standby connection.
pub(crate) const TICKET_NONE: u64 = 0;
/// Ticket state: issued; the acceptor knows of it, the connector has not used it.
pub(crate) const TICKET_EXPECTED: u64 = 1;
/// Ticket state: the connector connected through it.
pub(crate) const TICKET_CONNECTED: u64 = 2;
/// Ticket state: withdrawn before the connector used it.
pub(crate) const TICKET_CANCELLED: u64 = 3;
/// Ticket state: the monitor took the connection into its books (it
/// is connected, and is no longer renewed by its processes).
pub(crate) const TICKET_PROMOTED: u64 = 4;
/// Ticket state: both ends closed; the last to close makes the segment
/// fresh and the ticket expected again, under the next id.
pub(crate) const TICKET_RENEWING: u64 = 5;
/// The state's bits of the ticket word.
pub(crate) const TICKET_STATE: u64 = 7;
/// Ticket flag, beside [`TICKET_EXPECTED`] only: the acceptor will look
/// at the ticket without being woken (it is awake), so the connector that
/// uses it need not wake it (the acceptor clears the flag before it
/// sleeps, by compare-exchange, and so sees a connect that found the flag).
pub(crate) const TICKET_WATCHED: u64 = 8;
/// Ticket flag, kept through every state: the two processes renew the
/// ticket themselves after each connection (the monitor's choice).
pub(crate) const TICKET_RENEW: u64 = 16;
/// Ticket flag, beside connected or promoted: side A's end was closed
/// by its only holder, who keeps the segment for the next connection.
pub(crate) const TICKET_DONE_A: u64 = 32;
/// [`TICKET_DONE_A`] for side B.
pub(crate) const TICKET_DONE_B: u64 = 64;
/// Bits of the ticket word below the connection id.
pub(crate) const TICKET_ID_SHIFT: u32 = 8;

/// Bit of the offer word: the process it names has accepted the end.
pub const OFFER_CLAIMED: u32 = 1 << 31;

/// The full control area at the start of a segment.
#[repr(C)]
pub(crate) struct SegmentControl {
    pub(crate) header: Line<SegmentHeader>,
    pub(crate) rings: [RingControl; 2],
}

/// Byte offsets of the shared layout (as built without loom), for tools that
/// inspect a segment or corrupt one on purpose (tests, fuzzing).
pub mod offsets {
    use super::CACHE_LINE;
    /// Header: magic (`u64`).
    pub const MAGIC: usize = 0;
    /// Header: version (`u32`).
    pub const VERSION: usize = 8;
    /// Header: offset of the first data area (`u32`).
    pub const DATA_START: usize = 12;
    /// Header: connection id (`u64`).
    pub const CONN_ID: usize = 16;
    /// Header: total length (`u64`).
    pub const TOTAL_LEN: usize = 24;
    /// Header: capacities of ring 0 and ring 1 (`[u64; 2]`).
    pub const CAPACITY: usize = 32;
    /// Header: holder counts of side A and side B (`[u32; 2]`).
    pub const HOLDERS: usize = 48;
    /// Header: lock words (`[u32; 4]`).
    pub const LOCKS: usize = 56;
    /// Header: the accepting end's offer word (`u32`).
    pub const OFFER: usize = 72;
    /// Header: the ticket word (`u64`).
    pub const TICKET: usize = 80;
    /// Header: the connector's address (`[u32; 8]`).
    pub const CONNECTOR: usize = 88;
    /// Header: the holders' ids, side A's slots then side B's (`[[u64; 4]; 2]`).
    pub const HOLDER_IDS: usize = 120;
    /// Header: rounds a renewable ticket was renewed (`u64`).
    pub const ROUNDS: usize = 184;
    /// Header: when the connector connected through the ticket (`u64`).
    pub const CONNECTED_AT: usize = 192;
    /// Start of ring `i`'s control block.
    pub const fn ring(i: usize) -> usize {
        2 * CACHE_LINE + i * 4 * CACHE_LINE
    }
    /// Within a ring control block: `tail` (`u64`).
    pub const TAIL: usize = 0;
    /// Within a ring control block: writer flags (`u32`).
    pub const WRITER_FLAGS: usize = 8;
    /// Within a ring control block: length of the copy of the last bytes written (`u32`).
    pub const RECENT_LEN: usize = 12;
    /// Within a ring control block: stream position past that copy (`u64`).
    pub const RECENT_END: usize = 16;
    /// Within a ring control block: the copy itself (`[u64; 4]`).
    pub const RECENT: usize = 24;
    /// Within a ring control block: the writer's CPU hint (`u32`).
    pub const WRITER_CPU: usize = 56;
    /// Within a ring control block: the writer's grown flag (`u32`).
    pub const GROWN: usize = 60;
    /// Within a ring control block: the writer's switch position (`u64`).
    pub const GROWN_AT: usize = 64;
    /// Within a ring control block: `head` (`u64`).
    pub const HEAD: usize = CACHE_LINE;
    /// Within a ring control block: reader flags (`u32`).
    pub const READER_FLAGS: usize = CACHE_LINE + 8;
    /// Within a ring control block: the reader's waiting flag (`u32`).
    pub const READER_WAITING: usize = 2 * CACHE_LINE;
    /// Within a ring control block: the reader's batching hint (`u32`).
    pub const READER_BATCHING: usize = 2 * CACHE_LINE + 4;
    /// Within a ring control block: the reader's waiting threads' doorbells (`[u64; 4]`).
    pub const READER_WAITERS: usize = 2 * CACHE_LINE + 8;
    /// Within a ring control block: the writer's waiting flag (`u32`).
    pub const WRITER_WAITING: usize = 3 * CACHE_LINE;
    /// Within a ring control block: the writer's waiting threads' doorbells (`[u64; 4]`).
    pub const WRITER_WAITERS: usize = 3 * CACHE_LINE + 8;
}

/// Offset of the first data byte: data areas start right after the control
/// area, the two rings' small areas first, then their bulk areas.
pub(crate) const DATA_START: usize = core::mem::size_of::<SegmentControl>();

/// The most bytes a ring's small area holds (see `span::DataArea`): two
/// of them fit beside the control area in a segment's first page. A
/// ring of capacity `cap` has a small area of `min(SMALL_AREA, cap / 2)`.
pub const SMALL_AREA: u64 = 1024;

// The layout is an ABI between processes built from possibly different
// builds: pin it. (Loom's atomics are larger, so the checks hold for real builds.)
#[cfg(not(loom))]
const _: () = {
    use core::mem::{align_of, offset_of, size_of};
    assert!(size_of::<Line<WriterLine>>() == CACHE_LINE);
    assert!(offset_of!(RingControl, writer) == 0);
    assert!(offset_of!(RingControl, reader) == CACHE_LINE);
    assert!(offset_of!(RingControl, reader_waiting) == 2 * CACHE_LINE);
    assert!(offset_of!(RingControl, writer_waiting) == 3 * CACHE_LINE);
    assert!(size_of::<RingControl>() == 4 * CACHE_LINE);
    assert!(offset_of!(SegmentHeader, magic) == 0);
    assert!(offset_of!(SegmentHeader, version) == 8);
    assert!(offset_of!(SegmentHeader, data_start) == 12);
    assert!(offset_of!(SegmentHeader, conn_id) == 16);
    assert!(offset_of!(SegmentHeader, total_len) == 24);
    assert!(offset_of!(SegmentHeader, capacity) == 32);
    assert!(offset_of!(SegmentHeader, holders) == 48);
    assert!(offset_of!(SegmentHeader, locks) == 56);
    assert!(offset_of!(SegmentHeader, offer) == offsets::OFFER);
    assert!(offset_of!(SegmentHeader, ticket) == offsets::TICKET);
    assert!(offset_of!(SegmentHeader, connector) == offsets::CONNECTOR);
    assert!(offset_of!(SegmentHeader, holder_ids) == offsets::HOLDER_IDS);
    assert!(offset_of!(SegmentHeader, rounds) == offsets::ROUNDS);
    assert!(offset_of!(SegmentHeader, connected_at) == offsets::CONNECTED_AT);
    assert!(size_of::<SegmentHeader>() <= 2 * CACHE_LINE);
    assert!(offset_of!(SegmentControl, rings) == 2 * CACHE_LINE);
    assert!(DATA_START == 10 * CACHE_LINE);
    assert!(align_of::<SegmentControl>() == SEGMENT_ALIGN);
    assert!(offset_of!(WriterLine, tail) == 0);
    assert!(offset_of!(WriterLine, flags) == offsets::WRITER_FLAGS);
    assert!(offset_of!(WriterLine, recent_len) == offsets::RECENT_LEN);
    assert!(offset_of!(WriterLine, recent_end) == offsets::RECENT_END);
    assert!(offset_of!(WriterLine, recent) == offsets::RECENT);
    assert!(offset_of!(WriterLine, cpu) == offsets::WRITER_CPU);
    // One 64-byte line carries tail and the copy together.
    assert!(offset_of!(WriterLine, grown) + 4 <= 64);
    assert!(offset_of!(WriterLine, grown) == offsets::GROWN);
    assert!(offset_of!(WriterLine, grown_at) == offsets::GROWN_AT);
    assert!(size_of::<WriterLine>() <= CACHE_LINE);
    // The small areas fit in the first page beside the control area.
    assert!(DATA_START as u64 + 2 * SMALL_AREA <= 4096);
    assert!(offset_of!(ReaderLine, head) == 0);
    assert!(offset_of!(ReaderLine, flags) == offsets::READER_FLAGS - CACHE_LINE);
    assert!(offset_of!(SegmentHeader, locks) == offsets::LOCKS);
    assert!(offset_of!(SegmentHeader, capacity) == offsets::CAPACITY);
    assert!(offset_of!(SegmentHeader, holders) == offsets::HOLDERS);
    assert!(offset_of!(SegmentHeader, total_len) == offsets::TOTAL_LEN);
    assert!(offset_of!(SegmentHeader, conn_id) == offsets::CONN_ID);
    assert!(offset_of!(SegmentHeader, data_start) == offsets::DATA_START);
    assert!(offset_of!(SegmentHeader, version) == offsets::VERSION);
    assert!(offset_of!(SegmentHeader, magic) == offsets::MAGIC);
    assert!(offset_of!(RingControl, reader_waiting) == offsets::READER_WAITING);
    assert!(offset_of!(ReaderWaitLine, waiting) == 0);
    assert!(offset_of!(ReaderWaitLine, batching) == offsets::READER_BATCHING - offsets::READER_WAITING);
    assert!(offset_of!(RingControl, writer_waiting) == offsets::WRITER_WAITING);
    assert!(offset_of!(ReaderWaitLine, waiters) == offsets::READER_WAITERS - offsets::READER_WAITING);
    assert!(offset_of!(WriterWaitLine, waiting) == 0);
    assert!(offset_of!(WriterWaitLine, waiters) == offsets::WRITER_WAITERS - offsets::WRITER_WAITING);
    assert!(offset_of!(RingControl, reader) == offsets::HEAD);
    assert!(offset_of!(SegmentControl, rings) + size_of::<RingControl>() == offsets::ring(1));
};
