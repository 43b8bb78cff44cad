//! `TCP_DEFER_ACCEPT`: a connection to a listener that set it reaches the
//! acceptor (`Incoming`) only once the connector sent something (or shut
//! its side), or when the deferral's seconds are up, as Linux moves such a
//! connection to the accept queue only then.
//!
//! The connector is answered at once, as Linux's connect completes. The
//! monitor then waits as the acceptor would: it names its own doorbell
//! (registered like a thread's, watched in its epoll set) among the
//! sleepers of the ring the connector writes and arms its waiting flag,
//! so the connector's first write (or its FIN) rings it. No message, and
//! nothing in the connector's library, knows of the deferral.

use ipcd_ring::ConnSegment;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipcd_proto::message::{ConnInfo, Response, Side};
use ipcd_ring::{PeerState, Wait};

use super::{peer_closed, send_to, Daemon};
use crate::log;
use crate::log::Level;

/// Epoll token of the monitor's doorbell for deferred connections (client
/// tokens stay far below it).
pub(super) const DEFER_TAG: u64 = 1 << 63;

/// A connection not yet announced to its acceptor.
pub(super) struct Deferred {
    deadline: Instant,
}

/// The deferral a listening socket asks for (`TCP_DEFER_ACCEPT`, in
/// seconds as the kernel reads it back), 0 for none.
pub(super) fn defer_secs(listening: &OwnedFd) -> u32 {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: an int out buffer on a socket we hold.
    let r = unsafe {
        libc::getsockopt(
            listening.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&raw mut v).cast(),
            &mut len,
        )
    };
    if r == 0 {
        v.max(0) as u32
    } else {
        0
    }
}

impl Daemon {
    /// Connection `conn` (recorded, its connector answered) goes to its
    /// acceptor only when its connector writes or after `secs` seconds.
    pub(super) fn defer(&mut self, conn: u64, secs: u32) {
        let deadline = Instant::now() + Duration::from_secs(u64::from(secs));
        self.deferred.insert(conn, Deferred { deadline });
        if !self.arm_deferred(conn) {
            self.announce(conn);
        }
    }

    /// Sleeps on the acceptor's side of `conn` as a reader would, on the
    /// monitor's doorbell for deferrals; false if the connector already
    /// wrote or shut its side (or the connection is gone).
    fn arm_deferred(&mut self, conn: u64) -> bool {
        let Some(rec) = self.conns.get(&conn) else { return false };
        // The acceptor has not been told of the connection: no reader of
        // this ring is there to arm its flag but us.
        let [reader, _] = rec.seg.view().waiters_of(ipcd_ring::Side::B);
        reader.name(self.defer_bell.0);
        matches!(rec.seg.view().prepare_reader_wait(ipcd_ring::Side::B), Ok(Wait::Sleep))
    }

    /// The doorbell for deferrals rang: each deferred connection whose
    /// connector wrote or shut its side is announced; the others sleep on.
    pub(super) fn deferred_rang(&mut self) {
        crate::segment::take(std::os::fd::AsFd::as_fd(&*self.defer_bell.1));
        let conns: Vec<u64> = self.deferred.keys().copied().collect();
        for conn in conns {
            if !self.arm_deferred(conn) {
                self.announce(conn);
            }
        }
    }

    /// Announces deferred connections whose time is up.
    pub(super) fn expire_deferred(&mut self) {
        let now = Instant::now();
        let due: Vec<u64> = self.deferred.iter().filter(|(_, d)| d.deadline <= now).map(|(&c, _)| c).collect();
        for conn in due {
            self.announce(conn);
        }
    }

    /// How long the event loop may sleep before a deferral is due.
    pub(super) fn next_deferral(&self) -> Option<Duration> {
        self.deferred.values().map(|d| d.deadline.saturating_duration_since(Instant::now())).min()
    }

    /// Tells the acceptor of deferred `conn`.
    fn announce(&mut self, conn: u64) {
        if self.deferred.remove(&conn).is_some() {
            self.tell_acceptor(conn);
        }
    }

    /// Tells the acceptor of `conn` (`Incoming`), as `deliver` would have
    /// at once, if its listener is still there (else the connection is
    /// reset).
    pub(super) fn tell_acceptor(&mut self, conn: u64) {
        let Some(rec) = self.conns.get(&conn) else { return };
        // The acceptor sleeps there from now on, not the monitor.
        rec.seg.view().waiters_of(ipcd_ring::Side::B)[0].unname(self.defer_bell.0);
        // Its listener and acceptor now: a listener handed on from an
        // owner that left names its new one.
        let (Some((owner, id)), Some(&acceptor)) = (rec.pending_in, rec.holders[1].first()) else { return };
        if self.registry.get(owner, id).is_none() {
            // The listener closed before the connection was queued: the
            // half-open connection is reset (Linux's answers the next
            // segment the connector sends with one).
            self.let_go(acceptor, conn, Side::B, super::Gone::Released { abort: true });
            return;
        }
        let to_pid = self.clients.get(&acceptor).map_or(0, |c| c.pid);
        rec.seg.view().offer(to_pid);
        let info: ConnInfo = rec.info[1];
        let (fresh, fds) = rec.fresh_end(Side::B);
        let n = if info.reused { 0 } else { fds.len() };
        let incoming = Response::Incoming {
            listener: id,
            info: ConnInfo { reused: info.reused, ..fresh },
            at: super::monotonic_ns(),
        };
        let sent = send_to(&mut self.clients, &mut self.watch, acceptor, 0, &incoming, &fds[..n]);
        log!(Level::Debug, "msg=\"deferred connection announced\" conn={conn} to_pid={to_pid}");
        if let Err(e) = sent {
            log!(Level::Warn, "msg=\"listener cannot take a deferred connection\" pid={to_pid} err=\"{e}\"");
            let held = peer_closed(&e) && self.clients.contains_key(&acceptor);
            if !held && !self.hand_on(acceptor, conn) {
                self.release(acceptor, conn, Side::B, true);
            }
        }
    }
}

impl Daemon {
    /// Connections waiting for room in a full queue: each admitted, in
    /// order, once its listener has room (its connector's doorbell rung,
    /// its acceptor told, or deferred); refused if its listener went;
    /// dropped if its connector gave up (closed, died, or shut it down).
    pub(super) fn admit_waiting(&mut self) {
        let mut still = std::collections::VecDeque::new();
        while let Some(conn) = self.waiting.pop_front() {
            let Some(rec) = self.conns.get(&conn) else { continue };
            let (Some((owner, id)), Some(&acceptor)) = (rec.pending_in, rec.holders[1].first()) else { continue };
            let given_up = rec.holders[0].is_empty()
                || rec.gone[0]
                || rec.seg.view().writer_state(ipcd_ring::Side::A) != PeerState::Open;
            if given_up {
                self.let_go(acceptor, conn, Side::B, super::Gone::Released { abort: true });
                continue;
            }
            let Some(l) = self.registry.get(owner, id) else {
                // Its listener went first: the connect is refused, as the
                // kernel answers the next SYN with a reset.
                rec.seg.view().set_admission(ipcd_ring::Admission::Refused);
                self.bells.ring_side(rec.seg.view(), ipcd_ring::Side::A);
                self.let_go(acceptor, conn, Side::B, super::Gone::Released { abort: true });
                continue;
            };
            if self.queue_full(l) {
                still.push_back(conn);
                continue;
            }
            let defer = l.defer_secs;
            rec.seg.view().set_admission(ipcd_ring::Admission::Established);
            self.bells.ring_side(rec.seg.view(), ipcd_ring::Side::A);
            if let Some(l) = self.registry.get_mut(owner, id) {
                l.pending += 1;
            }
            if let Some(rec) = self.conns.get_mut(&conn) {
                rec.waits = false;
            }
            log!(Level::Debug, "msg=\"admitted from a full queue\" conn={conn}");
            if defer > 0 {
                self.defer(conn, defer);
            } else {
                self.tell_acceptor(conn);
            }
        }
        self.waiting = still;
    }
}
