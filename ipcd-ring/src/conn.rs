//! ipcd's bookkeeping in a connection segment's header, apart from the
//! ring: the holders of each end and their names, the end locks of a
//! shared end, where the connection stands against its listener's
//! backlog, the offer of a queued connection to one acceptor, the
//! standby ticket, and closing the end of a process that died. An
//! embedder of the ring needs none of it (see `shm`); ipcd's monitor and
//! library bring it in with `use ipcd_ring::ConnSegment`.

use core::num::{NonZeroU32, NonZeroU64};

use crate::layout::{
    BUSY, FLAG_RESET, HOLDER_SLOTS, NO_CPU, OFFER_CLAIMED, TICKET_CANCELLED, TICKET_CONNECTED, TICKET_EXPECTED,
    TICKET_NONE, TICKET_WATCHED,
};
use crate::segment::{Admission, EndLock, Segment, Side, Ticket};
use crate::sync::{AtomicU64, Ordering};
use crate::wait::{close_reader, close_writer};

/// A segment's header words that only ipcd's connections use (see the
/// module's documentation).
pub trait ConnSegment {
    /// Makes the segment fresh again for connection `conn_id`: both rings
    /// empty and open, no waiters, one holder per end, no lock held, offered
    /// to nobody. The layout (magic, capacities) is kept. Unlike [`Segment::init`] it
    /// writes with atomic stores only, so it is sound on memory that other
    /// processes still map; they must no longer use it (both ends of the
    /// last connection closed), or they see their own connection torn.
    fn reuse(&mut self, conn_id: u64);

    /// Marks every handle of `side` gone at once, as when its last process
    /// died: its writing side is reset, its reading side closed. Returns
    /// whether the peer's doorbell must be rung. Works on a corrupted ring.
    fn mark_gone(&self, side: Side) -> bool;

    /// Closes `side` as the kernel closes the socket of a process that
    /// died: with a reset if bytes it never read were left (or `abort`),
    /// else with an end of stream both ways. Returns whether the peer's
    /// doorbell must be rung. Works on a corrupted ring.
    fn close_dead_end(&self, side: Side, abort: bool) -> bool;

    /// Names `id` (nonzero, opaque here: the caller's process id and
    /// namespace) among the holders of `side`, unless it is named
    /// already. False when every slot is taken: the side then has holders
    /// nobody can name, and [`ConnSegment::holders_named`] says so.
    fn name_holder(&self, side: Side, id: NonZeroU64) -> bool;

    /// Takes `id` off the holders of `side` (it let go of its share).
    fn unname_holder(&self, side: Side, id: NonZeroU64);

    /// The named holders of `side`, when they can account for every share
    /// of its holder count: `None` if some holder has no name (more than
    /// [`HOLDER_SLOTS`], a share passed but not yet received, a forked
    /// child not yet named) or none is named. Any name may be stale (its
    /// process died); read as published, never trusted beyond that.
    fn holders_named(&self, side: Side) -> Option<[u64; HOLDER_SLOTS]>;

    /// Whether `side` has done nothing its peer could see since the
    /// segment was made fresh: read nothing, written nothing, closed
    /// neither direction. Read as published, not validated: a hint for
    /// the monitor, never an index.
    fn untouched(&self, side: Side) -> bool;

    /// How many processes hold `side` ([`ConnSegment::add_holder`] and
    /// [`ConnSegment::release_holder`]). Read as published, not validated.
    fn holders(&self, side: Side) -> u32;

    /// Records one more process holding `side` (after fork). Returns the new count.
    fn add_holder(&self, side: Side) -> u32;

    /// Records that one process let go of `side`. Returns how many still hold
    /// it; 0 means the caller was the last and must close the end. Never
    /// underflows, whatever the peer wrote.
    fn release_holder(&self, side: Side) -> u32;

    /// Says where the connection stands against its listener's backlog
    /// (the monitor's to say; the connector reads it).
    fn set_admission(&self, a: Admission);

    /// Where the connection stands against its listener's backlog.
    fn admission(&self) -> Admission;

    /// Offers the accepting end, waiting in an accept queue, to process
    /// `pid` (0: to nobody): only it can [`ConnSegment::claim`] it now, and
    /// any earlier offer is void. For the monitor, before it tells `pid`.
    fn offer(&self, pid: u32);

    /// Takes back the offer to `pid` unless it has claimed the end; then
    /// nobody can claim it until the next [`ConnSegment::offer`]. True if the
    /// offer was taken back.
    fn withdraw(&self, pid: u32) -> bool;

    /// Process `pid` accepts the end offered to it. False if the offer
    /// was withdrawn or made to another process meanwhile: the end is
    /// no longer `pid`'s to take (nor to close).
    fn claim(&self, pid: u32) -> bool;

    /// Makes the segment connection `conn_id`'s ticket, expected: the
    /// acceptor may be told of it before its connector uses it. For the
    /// monitor, before it tells either.
    fn expect(&self, conn_id: u64);

    /// The connector of `conn_id` connects through its ticket, from
    /// `addr` (stored first, for the acceptor). `None` if the ticket was
    /// cancelled or is another connection's: the connection was not made.
    /// Otherwise whether an acceptor was watching it ([`ConnSegment::watch`]):
    /// when it was, the acceptor sees the connection without being woken.
    fn connect(&self, conn_id: u64, addr: [u32; 8]) -> Option<bool>;

    /// The acceptor starts (`on`) or stops watching `conn_id`'s ticket:
    /// it watches while none of its threads sleeps on the listener, and
    /// stops before one does. Returns the ticket as it is after: stopping
    /// on a ticket that says connected means its connector may have found
    /// it watched and not woken anyone, so the caller takes the connection
    /// rather than sleep. Watching a ticket already watched is harmless.
    fn watch(&self, conn_id: u64, on: bool) -> Ticket;

    /// Cancels `conn_id`'s ticket unless its connector used it. Returns the
    /// ticket as it is now: [`Ticket::Cancelled`] (by this call or before),
    /// [`Ticket::Connected`], or [`Ticket::Other`] if the segment is no
    /// longer that connection's ticket.
    fn cancel(&self, conn_id: u64) -> Ticket;

    /// `conn_id`'s ticket as it is now.
    fn ticket(&self, conn_id: u64) -> Ticket;

    /// Tries to take `lock` for `owner` (a process-unique id such as a tid).
    /// On failure returns the current owner, so the caller can check whether
    /// it is still alive and [`ConnSegment::break_lock`] if not.
    fn try_lock(&self, lock: EndLock, owner: NonZeroU32) -> Result<(), u32>;

    /// Releases `lock` if `owner` holds it; returns whether it did.
    fn unlock(&self, lock: EndLock, owner: NonZeroU32) -> bool;

    /// Frees `lock` if it is still held by `dead_owner`; returns whether it did.
    fn break_lock(&self, lock: EndLock, dead_owner: u32) -> bool;

    /// Takes `lock` for `owner`, spinning; every 1024 tries it asks
    /// `dead(holder)` whether the holder is gone, and breaks its lock if so
    /// (a process that crashed holding an end's lock must not stall the
    /// others forever), or else calls `pause` (a yield of the CPU). The
    /// two are the caller's: this crate makes no system calls.
    fn lock(&self, lock: EndLock, owner: NonZeroU32, dead: impl FnMut(u32) -> bool, pause: impl FnMut());
}

impl ConnSegment for Segment {
    fn reuse(&mut self, conn_id: u64) {
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
            r.writer_waiting.waiting.store(0, Ordering::Relaxed);
            crate::Waiters::of(&r.reader_waiting.waiters).clear();
            crate::Waiters::of(&r.writer_waiting.waiters).clear();
        }
        // Release: whoever attaches after reading the new id sees the
        // fresh rings (hand-over between processes also goes through a
        // system call, which orders it anyway).
        header.conn_id.store(conn_id, Ordering::Release);
        self.conn_id = conn_id;
    }

    fn mark_gone(&self, side: Side) -> bool {
        let rings = &self.control().rings;
        let woke_reader = close_writer(&rings[side.tx()], FLAG_RESET);
        let woke_writer = close_reader(&rings[side.peer().tx()]);
        woke_reader | woke_writer
    }

    fn close_dead_end(&self, side: Side, abort: bool) -> bool {
        // SAFETY: the end is dead (its holders are gone): this handle only
        // counts what it left unread and moves nothing.
        // (Control operations only: a control view serves.)
        let unread = unsafe { self.consumer_of(side) }.and_then(|mut c| c.readable()).map_or(true, |n| n > 0);
        if unread || abort {
            return self.mark_gone(side);
        }
        // SAFETY: the end is dead: nobody else writes or reads its side now;
        // closing touches controls only.
        match unsafe { self.producer_of(side) }.and_then(|p| Ok((p, unsafe { self.consumer_of(side) }?))) {
            Ok((mut p, mut c)) => {
                let _ = p.close();
                let _ = c.close();
                true
            }
            Err(_) => self.mark_gone(side),
        }
    }

    fn name_holder(&self, side: Side, id: NonZeroU64) -> bool {
        let slots = &self.control().header.holder_ids[side.index()];
        if slots.iter().any(|s| s.load(Ordering::Relaxed) == id.get()) {
            return true;
        }
        slots.iter().any(|s| s.compare_exchange(0, id.get(), Ordering::AcqRel, Ordering::Relaxed).is_ok())
    }

    fn unname_holder(&self, side: Side, id: NonZeroU64) {
        let slots = &self.control().header.holder_ids[side.index()];
        if let Some(s) = slots.iter().find(|s| s.load(Ordering::Relaxed) == id.get()) {
            let _ = s.compare_exchange(id.get(), 0, Ordering::AcqRel, Ordering::Relaxed);
        }
    }

    fn holders_named(&self, side: Side) -> Option<[u64; HOLDER_SLOTS]> {
        let header = &self.control().header;
        let ids: [u64; HOLDER_SLOTS] =
            core::array::from_fn(|i| header.holder_ids[side.index()][i].load(Ordering::Acquire));
        let named = ids.iter().filter(|&&id| id != 0).count();
        let count = header.holders[side.index()].load(Ordering::Acquire) as usize;
        (named > 0 && count <= named).then_some(ids)
    }

    fn untouched(&self, side: Side) -> bool {
        let rings = &self.control().rings;
        let (tx, rx) = (&rings[side.tx()], &rings[side.peer().tx()]);
        tx.writer.tail.load(Ordering::Acquire) == 0
            && tx.writer.flags.load(Ordering::Acquire) == 0
            && rx.reader.head.load(Ordering::Acquire) == 0
            && rx.reader.flags.load(Ordering::Acquire) == 0
    }

    fn holders(&self, side: Side) -> u32 {
        self.control().header.holders[side.index()].load(Ordering::Acquire)
    }

    fn add_holder(&self, side: Side) -> u32 {
        // Relaxed: the count decides only who closes last, published by the
        // AcqRel decrement below.
        self.control().header.holders[side.index()].fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    fn release_holder(&self, side: Side) -> u32 {
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

    fn set_admission(&self, a: Admission) {
        // Release: the connector that sees `Established` sees the rings as
        // the monitor left them.
        self.control().header.admission.store(a as u32, Ordering::Release);
    }

    fn admission(&self) -> Admission {
        match self.control().header.admission.load(Ordering::Acquire) {
            1 => Admission::Waiting,
            2 => Admission::Refused,
            _ => Admission::Established,
        }
    }

    fn offer(&self, pid: u32) {
        // Release: the offer is seen with whatever was set up before it
        // (the message that tells `pid` orders it anyway).
        self.control().header.offer.store(pid & !OFFER_CLAIMED, Ordering::Release);
    }

    fn withdraw(&self, pid: u32) -> bool {
        let offer = &self.control().header.offer;
        pid & OFFER_CLAIMED == 0 && offer.compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn claim(&self, pid: u32) -> bool {
        let offer = &self.control().header.offer;
        pid != 0
            && pid & OFFER_CLAIMED == 0
            && offer.compare_exchange(pid, pid | OFFER_CLAIMED, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    fn expect(&self, conn_id: u64) {
        self.control().header.ticket.store(ticket_word(conn_id, TICKET_EXPECTED), Ordering::Release);
    }

    fn connect(&self, conn_id: u64, addr: [u32; 8]) -> Option<bool> {
        let header = &self.control().header;
        for (w, v) in header.connector.iter().zip(addr) {
            w.store(v, Ordering::Relaxed);
        }
        // Release: the address is seen by whoever sees the ticket connected.
        leave_expected(&header.ticket, conn_id, TICKET_CONNECTED).map(|was| was & TICKET_WATCHED != 0)
    }

    fn watch(&self, conn_id: u64, on: bool) -> Ticket {
        let ticket = &self.control().header.ticket;
        let (plain, watched) =
            (ticket_word(conn_id, TICKET_EXPECTED), ticket_word(conn_id, TICKET_EXPECTED | TICKET_WATCHED));
        let (from, to) = if on { (plain, watched) } else { (watched, plain) };
        match ticket.compare_exchange(from, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ticket::Expected,
            Err(_) => self.ticket(conn_id),
        }
    }

    fn cancel(&self, conn_id: u64) -> Ticket {
        match leave_expected(&self.control().header.ticket, conn_id, TICKET_CANCELLED) {
            Some(_) => Ticket::Cancelled,
            None => self.ticket(conn_id),
        }
    }

    fn ticket(&self, conn_id: u64) -> Ticket {
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

    fn try_lock(&self, lock: EndLock, owner: NonZeroU32) -> Result<(), u32> {
        let word = &self.control().header.locks[lock.index()];
        // Acquire pairs with the Release in `unlock`: the previous holder's
        // writes (its resynced indices) are visible.
        word.compare_exchange(0, owner.get(), Ordering::Acquire, Ordering::Relaxed).map(|_| ())
    }

    fn unlock(&self, lock: EndLock, owner: NonZeroU32) -> bool {
        let word = &self.control().header.locks[lock.index()];
        word.compare_exchange(owner.get(), 0, Ordering::Release, Ordering::Relaxed).is_ok()
    }

    fn break_lock(&self, lock: EndLock, dead_owner: u32) -> bool {
        let word = &self.control().header.locks[lock.index()];
        dead_owner != 0 && word.compare_exchange(dead_owner, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    fn lock(&self, lock: EndLock, owner: NonZeroU32, mut dead: impl FnMut(u32) -> bool, mut pause: impl FnMut()) {
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
