//! Connects the library sends to the kernel by itself, which the monitor
//! never hears of (a destination not on this host, no monitor answering):
//! counted by reason and reported to the monitor in batches
//! (`Request::Fallbacks`), so that `ipcd status` says why a program's
//! connections are not accelerated.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use ipcd_proto::{Fallback, Request, FALLBACK_KINDS};

use crate::control;

/// Counts not reported yet, by `Fallback::index`.
static COUNTS: [AtomicU32; FALLBACK_KINDS] = [const { AtomicU32::new(0) }; FALLBACK_KINDS];

/// When (`conn::wait::now_ms`) they were last reported.
static REPORTED_MS: AtomicU64 = AtomicU64::new(0);

/// A report waits for this many connects, or for this long (ms).
const BATCH: u32 = 64;
const EVERY_MS: u64 = 1000;

/// A connect went to the kernel for `reason`.
pub(crate) fn count(reason: Fallback) {
    COUNTS[reason.index()].fetch_add(1, Ordering::Relaxed);
}

/// At a connect: reports what was counted, in one message, once `BATCH`
/// wait or `EVERY_MS` passed since the last report (a load per reason
/// otherwise). Kept for later when no monitor answers.
pub(crate) fn report() {
    let pending: u32 = COUNTS.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    if pending == 0 {
        return;
    }
    let now = crate::conn::wait::now_ms();
    if pending < BATCH && now.saturating_sub(REPORTED_MS.load(Ordering::Relaxed)) < EVERY_MS {
        return;
    }
    REPORTED_MS.store(now, Ordering::Relaxed);
    let counts: [u32; FALLBACK_KINDS] = std::array::from_fn(|i| COUNTS[i].swap(0, Ordering::Relaxed));
    if control::with(|c| c.notify(&Request::Fallbacks { counts })).is_none() {
        for (c, n) in COUNTS.iter().zip(counts) {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}
