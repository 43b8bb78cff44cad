//! ipcd's bookkeeping in a connection segment's header, apart from the
//! ring: the holders of each end and their names, the end locks of a
//! shared end, where the connection stands against its listener's
//! backlog, the offer of a queued connection to one acceptor, the
//! standby ticket, and closing the end of a process that died. An
//! embedder of the ring needs none of it (see `shm`); ipcd's monitor and
//! library bring it in with `use ipcd_ring::ConnSegment`.

use core::num::{NonZeroU32, NonZeroU64};

use crate::layout::{
    BUSY, FLAG_RESET, HOLDER_SLOTS, NO_CPU, OFFER_CLAIMED, TICKET_CANCELLED, TICKET_CONNECTED, TICKET_DONE_A,
    TICKET_DONE_B, TICKET_EXPECTED, TICKET_ID_SHIFT, TICKET_NONE, TICKET_PROMOTED, TICKET_RENEW, TICKET_RENEWING,
    TICKET_STATE, TICKET_WATCHED,
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

    /// The process that claimed the accepting end, if one did. Read as
    /// published.
    fn claimed_by(&self) -> Option<u32>;

    /// Makes the segment connection `conn_id`'s ticket, expected: the
    /// acceptor may be told of it before its connector uses it. For the
    /// monitor, before it tells either.
    fn expect(&self, conn_id: u64);

    /// [`ConnSegment::expect`] for a ticket its two processes renew
    /// themselves after each connection ([`ConnSegment::finish`],
    /// [`ConnSegment::renew`]) until the monitor promotes or cancels it.
    /// The renewed ids follow [`next_ticket_id`].
    fn expect_renewable(&self, conn_id: u64);

    /// Whether `conn_id`'s ticket is renewable and still its processes'
    /// (connected, not promoted).
    fn renewable(&self, conn_id: u64) -> bool;

    /// The only holder of `side` of renewable connection `conn_id` closed
    /// its end (in the ring) for good and keeps the segment for the next
    /// connection. See [`Finish`].
    fn finish(&self, conn_id: u64, side: Side) -> Finish;

    /// After [`Finish::Last`]: makes the segment fresh (as
    /// [`ConnSegment::reuse`], the acceptor's offer kept unclaimed) and
    /// its ticket expected again as `next` (from [`next_ticket_id`]).
    /// False if the monitor cancelled it meanwhile: nobody uses it again.
    fn renew(&self, conn_id: u64, next: u64) -> bool;

    /// Whether the renewal after connection `conn_id` is still to come:
    /// its ticket is renewable and connected (an end still open) or being
    /// renewed. False once renewed, promoted or cancelled.
    fn awaits_renewal(&self, conn_id: u64) -> bool;

    /// The monitor takes connected `conn_id` into its books: from now on
    /// its ends close through the monitor, and it is not renewed. `None`
    /// unless the ticket says connected (not promoted already).
    fn promote(&self, conn_id: u64) -> Option<Promoted>;

    /// How many times the segment's processes renewed its ticket (each a
    /// connection the monitor never saw). Read as published: a count for
    /// reports, any value is safe.
    fn rounds(&self) -> u64;

    /// The id the ticket word carries now (whatever its state), for the
    /// monitor to follow a renewed ticket. Read as published.
    fn ticket_id(&self) -> u64;

    /// The connector of `conn_id` connects through its ticket, from
    /// `addr` (stored first, for the acceptor). `None` if the ticket was
    /// cancelled or is another connection's: the connection was not made.
    /// Otherwise whether an acceptor was watching it ([`ConnSegment::watch`]):
    /// when it was, the acceptor sees the connection without being woken.
    fn connect(&self, conn_id: u64, addr: [u32; 8]) -> Option<bool>;

    /// Says when the connector connects (`at`, on a clock of the caller's),
    /// before its [`ConnSegment::connect`].
    fn set_connected_at(&self, at: u64);

    /// When the connector connected, as it said: for the acceptor, after
    /// it saw the ticket connected. Read as published: a hint.
    fn connected_at(&self) -> u64;

    /// The acceptor starts (`on`) or stops watching `conn_id`'s ticket:
    /// it watches while none of its threads sleeps on the listener, and
    /// stops before one does. Returns the ticket as it is after: stopping
    /// on a ticket that says connected means its connector may have found
    /// it watched and not woken anyone, so the caller takes the connection
    /// rather than sleep. Watching a ticket already watched is harmless.
    fn watch(&self, conn_id: u64, on: bool) -> Ticket;

    /// Cancels `conn_id`'s ticket unless its connector used it (a
    /// renewing one is cancelled too: its renewal then fails). Returns the
    /// ticket as it is now: [`Ticket::Cancelled`] (by this call or before),
    /// [`Ticket::Connected`], or [`Ticket::Other`] if the segment is no
    /// longer that connection's ticket.
    fn cancel(&self, conn_id: u64) -> Ticket;

    /// `conn_id`'s ticket as it is now (promoted reads as connected;
    /// renewing as [`Ticket::Other`]).
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
        let header = &self.control().header;
        header.offer.store(0, Ordering::Relaxed);
        header.ticket.store(TICKET_NONE, Ordering::Relaxed);
        header.rounds.store(0, Ordering::Relaxed);
        fresh(self, conn_id);
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
            // SeqCst, with `promote` and the loads after each: an acceptor
            // that claims a renewable end and a monitor that promotes it
            // cannot both miss the other (see `ConnSegment::claimed_by`).
            && offer.compare_exchange(pid, pid | OFFER_CLAIMED, Ordering::SeqCst, Ordering::Acquire).is_ok()
    }

    fn claimed_by(&self) -> Option<u32> {
        let offer = self.control().header.offer.load(Ordering::SeqCst);
        (offer & OFFER_CLAIMED != 0).then_some(offer & !OFFER_CLAIMED)
    }

    fn expect(&self, conn_id: u64) {
        self.control().header.ticket.store(ticket_word(conn_id, TICKET_EXPECTED), Ordering::Release);
    }

    fn expect_renewable(&self, conn_id: u64) {
        let word = ticket_word(conn_id, TICKET_EXPECTED | TICKET_RENEW);
        self.control().header.ticket.store(word, Ordering::Release);
    }

    fn renewable(&self, conn_id: u64) -> bool {
        renewable_connected(self.control().header.ticket.load(Ordering::SeqCst), conn_id)
    }

    fn finish(&self, conn_id: u64, side: Side) -> Finish {
        let ticket = &self.control().header.ticket;
        let (mine, theirs) = match side {
            Side::A => (TICKET_DONE_A, TICKET_DONE_B),
            Side::B => (TICKET_DONE_B, TICKET_DONE_A),
        };
        let mut w = ticket.load(Ordering::Acquire);
        loop {
            if !renewable_connected(w, conn_id) || w & mine != 0 {
                return Finish::Not;
            }
            // The second to finish takes the segment to renew it; AcqRel:
            // it sees everything the first did to the rings before.
            let (to, done) = match w & theirs {
                0 => (w | mine, Finish::First),
                _ => (renewing_word(conn_id), Finish::Last),
            };
            match ticket.compare_exchange(w, to, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return done,
                Err(now) => w = now,
            }
        }
    }

    fn renew(&self, conn_id: u64, next: u64) -> bool {
        let header = &self.control().header;
        let renewing = renewing_word(conn_id);
        if header.ticket.load(Ordering::Acquire) != renewing {
            return false;
        }
        // The acceptor's offer stays for its next accept (unclaimed).
        let offer = header.offer.load(Ordering::Relaxed) & !OFFER_CLAIMED;
        header.offer.store(offer, Ordering::Relaxed);
        fresh(self, next);
        header.rounds.fetch_add(1, Ordering::Relaxed);
        // Release: whoever sees the new ticket sees the fresh segment.
        let expected = ticket_word(next, TICKET_EXPECTED | TICKET_RENEW);
        header.ticket.compare_exchange(renewing, expected, Ordering::AcqRel, Ordering::Relaxed).is_ok()
    }

    fn awaits_renewal(&self, conn_id: u64) -> bool {
        let w = self.control().header.ticket.load(Ordering::Acquire);
        is_ticket(w, conn_id) && w & TICKET_RENEW != 0 && matches!(w & TICKET_STATE, TICKET_CONNECTED | TICKET_RENEWING)
    }

    fn promote(&self, conn_id: u64) -> Option<Promoted> {
        let header = &self.control().header;
        let ticket = &header.ticket;
        let mut w = ticket.load(Ordering::Acquire);
        while is_ticket(w, conn_id) && w & TICKET_STATE == TICKET_CONNECTED {
            let to = (w & !TICKET_STATE) | TICKET_PROMOTED;
            match ticket.compare_exchange(w, to, Ordering::SeqCst, Ordering::Acquire) {
                Ok(_) => {
                    return Some(Promoted {
                        addr: core::array::from_fn(|i| header.connector[i].load(Ordering::Relaxed)),
                        done: [w & TICKET_DONE_A != 0, w & TICKET_DONE_B != 0],
                    })
                }
                Err(now) => w = now,
            }
        }
        None
    }

    fn rounds(&self) -> u64 {
        self.control().header.rounds.load(Ordering::Relaxed)
    }

    fn ticket_id(&self) -> u64 {
        self.control().header.ticket.load(Ordering::Acquire) >> TICKET_ID_SHIFT
    }

    fn connect(&self, conn_id: u64, addr: [u32; 8]) -> Option<bool> {
        let header = &self.control().header;
        for (w, v) in header.connector.iter().zip(addr) {
            w.store(v, Ordering::Relaxed);
        }
        // Release: the address is seen by whoever sees the ticket connected.
        leave_expected(&header.ticket, conn_id, TICKET_CONNECTED).map(|was| was & TICKET_WATCHED != 0)
    }

    fn set_connected_at(&self, at: u64) {
        // Relaxed: published by the ticket's compare-exchange after it.
        self.control().header.connected_at.store(at, Ordering::Relaxed);
    }

    fn connected_at(&self) -> u64 {
        self.control().header.connected_at.load(Ordering::Relaxed)
    }

    fn watch(&self, conn_id: u64, on: bool) -> Ticket {
        let ticket = &self.control().header.ticket;
        let w = ticket.load(Ordering::Acquire);
        if !is_ticket(w, conn_id) || w & TICKET_STATE != TICKET_EXPECTED {
            return self.ticket(conn_id);
        }
        let to = if on { w | TICKET_WATCHED } else { w & !TICKET_WATCHED };
        match ticket.compare_exchange(w, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ticket::Expected,
            Err(_) => self.ticket(conn_id),
        }
    }

    fn cancel(&self, conn_id: u64) -> Ticket {
        let ticket = &self.control().header.ticket;
        if leave_expected(ticket, conn_id, TICKET_CANCELLED).is_some() {
            return Ticket::Cancelled;
        }
        let cancelled = ticket_word(conn_id, TICKET_CANCELLED | TICKET_RENEW);
        match ticket.compare_exchange(renewing_word(conn_id), cancelled, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Ticket::Cancelled,
            Err(_) => self.ticket(conn_id),
        }
    }

    fn ticket(&self, conn_id: u64) -> Ticket {
        let header = &self.control().header;
        let word = header.ticket.load(Ordering::Acquire);
        if !is_ticket(word, conn_id) {
            return Ticket::Other;
        }
        match word & TICKET_STATE {
            TICKET_EXPECTED => Ticket::Expected,
            TICKET_CONNECTED | TICKET_PROMOTED => {
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

fn ticket_word(conn_id: u64, state: u64) -> u64 {
    (conn_id << TICKET_ID_SHIFT) | state
}

/// Whether ticket word `w` is `conn_id`'s.
fn is_ticket(w: u64, conn_id: u64) -> bool {
    w >> TICKET_ID_SHIFT == conn_id & MAX_TICKET_ID
}

/// Whether ticket word `w` is renewable `conn_id`'s, connected and not
/// promoted (done bits aside).
fn renewable_connected(w: u64, conn_id: u64) -> bool {
    is_ticket(w, conn_id) && w & TICKET_RENEW != 0 && w & TICKET_STATE == TICKET_CONNECTED
}

/// Renewable `conn_id`'s ticket word while its last finisher renews it.
fn renewing_word(conn_id: u64) -> u64 {
    ticket_word(conn_id, TICKET_RENEWING | TICKET_RENEW)
}

/// Connection ids a ticket word holds whole: `conn_id & MAX_TICKET_ID`.
pub const MAX_TICKET_ID: u64 = u64::MAX >> TICKET_ID_SHIFT;

/// The bit every renewed ticket's id has, and no id the monitor gives
/// (its ids count up from its start time in microseconds, below 2^55
/// for centuries).
pub const RENEWED_ID: u64 = 1 << 55;

/// Rounds of one renewable ticket told apart by their ids (the round
/// count wraps; a round's connection is long gone when it comes back).
const ROUND_BITS: u32 = 15;

/// The id a renewable ticket `conn_id` is renewed as: [`RENEWED_ID`], the
/// low 40 bits of the monitor's first id (so ids of two tickets differ),
/// and a round count.
pub const fn next_ticket_id(conn_id: u64) -> u64 {
    let round_mask = (1 << ROUND_BITS) - 1;
    if conn_id & RENEWED_ID != 0 {
        (conn_id & !round_mask) | (conn_id.wrapping_add(1) & round_mask)
    } else {
        RENEWED_ID | ((conn_id & ((1 << 40) - 1)) << ROUND_BITS)
    }
}

/// Whether `id` is a round of the renewable ticket the monitor first
/// issued as `first` (itself, or one of its renewed ids): what the
/// monitor checks before it believes an id a segment's ticket names.
pub const fn is_round_of(first: u64, id: u64) -> bool {
    let round_mask = (1 << ROUND_BITS) - 1;
    id == first || (id & !round_mask) == (next_ticket_id(first) & !round_mask)
}

/// What [`ConnSegment::finish`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The other end finished already: the caller renews the segment
    /// ([`ConnSegment::renew`]).
    Last,
    /// The other end is still open: it renews the segment when it
    /// finishes.
    First,
    /// Not a renewable connection of its processes (promoted, or another
    /// connection's, or finished already): the caller closes its end as
    /// any other, through the monitor.
    Not,
}

/// What [`ConnSegment::promote`] took into the monitor's books.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promoted {
    /// The connector's address, as it connected.
    pub addr: [u32; 8],
    /// Which ends (A, B) had finished already: their processes keep the
    /// segment mapped and will send nothing more about the connection.
    pub done: [bool; 2],
}

/// Makes the segment's rings and holders fresh for connection `conn_id`
/// (holders, locks, admission, names, rings; not the ticket, the offer,
/// the round count nor the connect time), with atomic stores.
fn fresh(seg: &Segment, conn_id: u64) {
    let control = seg.control();
    let header = &control.header;
    for h in &header.holders {
        h.store(1, Ordering::Relaxed);
    }
    for l in &header.locks {
        l.store(0, Ordering::Relaxed);
    }
    header.admission.store(0, Ordering::Relaxed);
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
        // The new connection starts in the small area again.
        r.writer.grown.store(0, Ordering::Relaxed);
        r.writer.grown_at.store(0, Ordering::Relaxed);
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
}

/// Moves `conn_id`'s ticket from expected (watched or not) to `state`
/// by compare-exchange; the word it left, or `None` if it was not
/// `conn_id`'s or not expected.
fn leave_expected(ticket: &AtomicU64, conn_id: u64, state: u64) -> Option<u64> {
    let mut w = ticket.load(Ordering::Acquire);
    while is_ticket(w, conn_id) && w & TICKET_STATE == TICKET_EXPECTED {
        let to = ticket_word(conn_id, state | (w & TICKET_RENEW));
        match ticket.compare_exchange(w, to, Ordering::AcqRel, Ordering::Acquire) {
            Ok(was) => return Some(was),
            // Watched or unwatched meanwhile: try again with what it is.
            Err(now) => w = now,
        }
    }
    None
}
