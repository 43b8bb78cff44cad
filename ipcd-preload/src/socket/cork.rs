//! `TCP_CORK` and `MSG_MORE`: partial data held back, as Linux holds it.
//!
//! A corked send (or one with `MSG_MORE`) copies its bytes into the ring
//! without publishing them (`Producer::write_vectored_held`): the reader
//! sees nothing, as Linux's peer sees no partial segment. They go when
//! Linux's would: the next send that is neither, `TCP_CORK` turned off, a
//! full segment's worth held ([`SEGMENT`]), a close or `SHUT_WR`, or
//! [`CEILING`] after they were first held. For the ceiling, every wait of
//! the library caps its sleep at the earliest such moment ([`cap`]) and
//! publishes what is due on waking; a process that sleeps elsewhere (not
//! in a call of ours) publishes when it next waits or sends. A shared end
//! (after fork) never holds: another holder's resync would drop the bytes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::conn::wait::now_ms;
use crate::socket::{table, State};

/// Linux's ceiling on corked data (`TCP_CORK` in tcp(7); `MSG_MORE` alike).
pub(crate) const CEILING: Duration = Duration::from_millis(200);

/// A full segment on loopback (its MTU of 65 536 less headers): held data
/// of this size goes at once.
pub(crate) const SEGMENT: usize = 65_483;

/// The earliest moment (`now_ms`) some end's held bytes are due; `NONE`
/// when nothing is held. One load per wait when nothing is.
static DUE_MS: AtomicU64 = AtomicU64::new(NONE);
const NONE: u64 = u64::MAX;

/// One thread at a time walks the sockets for what is due.
static WALK: Mutex<()> = Mutex::new(());

/// An end just held bytes for the first time since it last published
/// (`since`: `now_ms` then).
pub(crate) fn note_held(since: u64) {
    DUE_MS.fetch_min(since.saturating_add(CEILING.as_millis() as u64), Ordering::AcqRel);
}

/// The deadline a wait should sleep to: `deadline`, or sooner if held bytes
/// fall due before it. Publishes whatever is due now.
pub(crate) fn cap(deadline: Option<Instant>) -> Option<Instant> {
    let due = DUE_MS.load(Ordering::Acquire);
    if due == NONE {
        return deadline;
    }
    let now = now_ms();
    let due = if now >= due { publish_due(now) } else { due };
    if due == NONE {
        return deadline;
    }
    let at = Instant::now() + Duration::from_millis(due.saturating_sub(now));
    Some(deadline.map_or(at, |d| d.min(at)))
}

/// Publishes every end whose held bytes are due at `now`; returns the
/// next moment some are.
fn publish_due(now: u64) -> u64 {
    let Ok(_walking) = WALK.try_lock() else { return now.saturating_add(1) };
    // Reset first: an end that holds from here on lowers it again itself,
    // and every end found still holding below does too.
    DUE_MS.store(NONE, Ordering::Release);
    for sock in table::sockets() {
        let mut state = sock.lock();
        let State::Stream(s) = &mut *state else { continue };
        if s.link.tx.held() == 0 {
            continue;
        }
        if now >= s.held_since.saturating_add(CEILING.as_millis() as u64) {
            s.publish_held();
        } else {
            note_held(s.held_since);
        }
    }
    DUE_MS.load(Ordering::Acquire)
}
