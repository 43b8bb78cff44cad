//! Standby connections: made ahead for a process's next connect to a
//! destination, used without the monitor, promoted to connections later.

use ipcd_proto::message::{ConnInfo, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};
use ipcd_ring::ConnSegment;
use std::os::fd::AsFd;

use super::{idx, port_zero, send_to, ConnRec, Daemon, Gone, NewConn, Standby, STANDBYS_PER_DEST};
use crate::log;
use crate::log::Level;
use crate::registry::Listener;
use ipcd_ring::Ticket;

impl Daemon {
    /// After a connect of `token` to `dest` reached `listener`: holds the
    /// next connection there ready for it (`Standby`), so that its next
    /// connect to `dest` needs no answer. For the listener's owner, or for
    /// a listener a fork shared for one of the processes that serve it
    /// (the one this connector holds fewest standbys for: each carries its
    /// connections to the process it was issued to, so they spread as the
    /// monitor's turns do). Not for a `SO_REUSEPORT` group (its own
    /// turns), nor for an acceptor whose bell the monitor lacks; up to
    /// `STANDBYS_PER_DEST` per destination, and not for a pair's first
    /// connection (`again` false), so a process that connects once does
    /// not cost a second segment.
    pub(super) fn issue_standby(&mut self, token: u64, listener: (u64, u64), dest: SockAddr, again: bool) {
        let held = self.standbys.values().filter(|s| s.client == token && s.dest == dest).count();
        if held >= STANDBYS_PER_DEST {
            return;
        }
        let Some(l) = self.registry.get(listener.0, listener.1).filter(|l| !l.flags.contains(ListenFlags::REUSEPORT))
        else {
            return;
        };
        let candidates = if l.is_shared() || l.handed_on { l.servers.clone() } else { vec![l.owner] };
        let mine = |a: u64| self.standbys.values().filter(|s| s.client == token && s.acceptor == a).count();
        // A new segment only for the first standby to an acceptor: more
        // would be made here while a busy pair's closing connections find
        // its pool full and unmap theirs (nginx + wrk with `Connection:
        // close`: ~13 % of the monitor's time went to making and unmapping
        // segments).
        let pooled = |a: u64| self.pools.get(&(token, a)).is_some_and(|p| !p.is_empty());
        let Some(acceptor) = candidates
            .into_iter()
            .filter(|&a| self.listener_bells.contains_key(&(a, listener.1)))
            .map(|a| (a, mine(a)))
            .filter(|&(a, n)| pooled(a) || (again && n == 0))
            .min_by_key(|&(_, n)| n)
            .map(|(a, _)| a)
        else {
            return;
        };
        let pair = (token, acceptor);
        let conn = self.next_conn;
        let Some((segment, seg, reused)) = self.take_segment(pair, conn) else { return };
        self.next_conn += 1;
        let info = ConnInfo {
            conn,
            side: Side::A,
            local: port_zero(dest),
            peer: dest,
            segment_len: seg.len() as u64,
            segment,
            reused,
        };
        let n = usize::from(!reused);
        // The acceptor first: once the connector has the standby it may
        // connect and ring the listener's bell, and the woken acceptor
        // must find the `Expect` on its channel.
        let to_pid = self.clients.get(&acceptor).map_or(0, |c| c.pid);
        // Renewed by the pair itself after each connection (see
        // `promote`), unless a tracer must see every connection.
        if self.tracers.is_empty() {
            seg.view().expect_renewable(conn);
        } else {
            seg.view().expect(conn);
        }
        seg.view().offer(to_pid);
        let info_b = ConnInfo { side: Side::B, local: dest, peer: port_zero(dest), ..info };
        let fds_b = [seg.fd()];
        let expect = Response::Expect { listener: listener.1, info: info_b };
        let told = send_to(&mut self.clients, &mut self.watch, acceptor, 0, &expect, &fds_b[..n]);
        if told.is_err() {
            // Not a reason to drop either: the connector has no standby.
            seg.view().cancel(conn);
            if reused {
                self.tell_forget(token, segment);
                self.tell_forget(acceptor, segment);
            }
            return;
        }
        // (The acceptor has a bell: checked on entry.)
        let bell_key = (acceptor, listener.1);
        let send_bell = self.clients.get(&token).is_some_and(|c| !c.bells.contains(&bell_key));
        self.uncork_before(acceptor, token, reused && !send_bell);
        let bell = self.listener_bells.get(&bell_key).map(|b| b.as_fd());
        let mut fds = vec![seg.fd()];
        fds.truncate(n);
        fds.extend(bell.filter(|_| send_bell));
        let standby = Response::Standby { dest, info, bell: send_bell, acceptor };
        let sent = send_to(&mut self.clients, &mut self.watch, token, 0, &standby, &fds);
        if sent.is_err() {
            // The acceptor was told: it drops the entry once it sees it
            // cancelled, and its mapping with `Forget`.
            seg.view().cancel(conn);
            self.tell_forget(acceptor, segment);
            if reused {
                self.tell_forget(token, segment);
            }
            return;
        }
        if let Some(c) = self.clients.get_mut(&token).filter(|_| send_bell) {
            c.bells.insert(bell_key);
        }
        log!(Level::Debug, "msg=\"standby issued\" conn={conn} client={token} dest={dest} reused={reused}");
        self.standbys.insert(conn, Standby { client: token, listener, acceptor, dest, info, seg, counted: 0 });
    }

    /// Standby `conn`, if its connector connected through it (its ticket
    /// says so), becomes a connection in the records: the connector does
    /// not report it, so this runs whenever something may concern it.
    /// `conn` may be a later round of a renewed standby (its two
    /// processes renew it after each connection, telling nobody): the
    /// ticket then names it, and the standby it came from is found by
    /// its ticket (rare: only what is not routine names such a round).
    pub(super) fn promote(&mut self, conn: u64) {
        let Some(key) = self.standby_key(conn) else { return };
        let Some(sb) = self.standbys.get(&key) else { return };
        let now = sb.seg.view().ticket_id();
        // (A round of another ticket is a peer's scribble: its own loss.)
        if !ipcd_ring::is_round_of(key, now) {
            return;
        }
        let Some(promoted) = sb.seg.view().promote(now) else { return };
        let token = sb.client;
        self.use_standby(token, key, now, promoted);
    }

    /// The standby `conn` is a round of: itself, or the renewed one whose
    /// ticket names it now.
    fn standby_key(&self, conn: u64) -> Option<u64> {
        if self.standbys.contains_key(&conn) {
            return Some(conn);
        }
        if conn & ipcd_ring::RENEWED_ID == 0 || self.conns.contains_key(&conn) {
            return None;
        }
        let id = conn & ipcd_ring::MAX_TICKET_ID;
        // Only a round of the standby's own ticket: an id its processes
        // wrote there that names another's connection is not believed.
        let ours = |key: u64, s: &Standby| s.seg.view().ticket_id() == id && ipcd_ring::is_round_of(key, id);
        self.standbys.iter().find(|(&key, s)| ours(key, s)).map(|(&key, _)| key)
    }

    /// Whether `l`'s accept queue is full (Linux's holds one more than
    /// the backlog): the connections the monitor made and its acceptor
    /// has not reported, and those its connectors made through standbys
    /// without the monitor (a used ticket no acceptor claimed yet), which
    /// the monitor reads from their segments. Without the second, every
    /// renewed chain of a listener that stopped accepting was a
    /// connection beyond its backlog.
    pub(super) fn queue_full(&self, l: &Listener) -> bool {
        if l.pending > l.backlog {
            return true;
        }
        let room = l.backlog - l.pending;
        if self.standbys.len() as u64 <= u64::from(room) {
            return false;
        }
        let key = (l.owner, l.id);
        let queued = |s: &&Standby| {
            let v = s.seg.view();
            matches!(v.ticket(v.ticket_id()), Ticket::Connected(_)) && v.claimed_by().is_none()
        };
        self.standbys.values().filter(|s| s.listener == key).filter(queued).count() as u64 > u64::from(room)
    }

    /// [`Daemon::promote`] for every standby `pred` picks.
    pub(super) fn promote_where(&mut self, pred: impl Fn(&Standby) -> bool) {
        let picked: Vec<u64> = self.standbys.iter().filter(|(_, s)| pred(s)).map(|(&c, _)| c).collect();
        for conn in picked {
            self.promote(conn);
        }
    }

    /// `token` connected through its standby `key`, whose current round
    /// is `conn`, as `promoted` says: the connection goes to the listener
    /// it was held for, or to its acceptor if that took it already; if
    /// the listener went before, the connector's end is closed as a dead
    /// acceptor's would be (as a kernel connection queued on a listener
    /// that closes). Ends that finished (closed, segment kept) are closed
    /// in the records as their `Close` would have.
    pub(super) fn use_standby(&mut self, token: u64, key: u64, conn: u64, promoted: ipcd_ring::Promoted) {
        let Some(sb) = self.take_standby(token, key) else {
            log!(Level::Warn, "msg=\"use of an unknown standby\" client={token} conn={conn}");
            return;
        };
        let Standby { listener, acceptor, dest, mut info, seg, .. } = sb;
        info.conn = conn;
        // A renewed round's segment is mapped at both ends already.
        info.reused |= conn != key;
        let source = SockAddr::from_words(promoted.addr);
        info.local = source.unwrap_or(info.local);
        let claimed = seg.view().claimed_by().is_some();
        let live =
            claimed || (self.registry.get(listener.0, listener.1).is_some() && self.clients.contains_key(&acceptor));
        let new = NewConn { token, acceptor, listener, seg, info_a: info, defer: 0, waiting: false };
        if live {
            // The next one first: the listener, woken by its `Incoming`,
            // often runs before the rest of this, and may answer the
            // connector before its next standby was sent.
            self.issue_standby(token, listener, dest, true);
            self.deliver(new, None);
            if claimed {
                self.accepted(acceptor, conn);
            }
            for (side, holder) in [(Side::A, token), (Side::B, acceptor)] {
                if promoted.done[idx(side)] {
                    self.close(holder, conn, side, true);
                }
            }
            return;
        }
        // Recorded as delivered to an acceptor that went at once.
        log!(Level::Debug, "msg=\"standby used after its listener went\" conn={conn}");
        let info_b = ConnInfo { side: Side::B, local: info.peer, peer: info.local, ..info };
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.push((conn, Side::A));
        }
        let rec = ConnRec {
            seg: new.seg,
            info: [info, info_b],
            holders: [vec![token], vec![acceptor]],
            gone: [false; 2],
            pending_in: None,
            waits: false,
            pair: (token, acceptor),
            // A pooled segment is in the acceptor's cache: told to unmap it.
            kept: [false, info.reused],
            recyclable: false,
            relays: [0; 2],
            refill: None,
        };
        self.conns.insert(conn, rec);
        self.show_tracers(conn);
        if promoted.done[0] {
            self.close(token, conn, Side::A, true);
        }
        // Reset, as Linux resets what waits in a closed listener's queue
        // (a dead acceptor's close would end it with a FIN); the
        // connector is told as of a dead peer.
        self.let_go(acceptor, conn, Side::B, Gone::Released { abort: true });
        // Best effort: a client that cannot take it is being dropped.
        let _ = send_to(&mut self.clients, &mut self.watch, token, 0, &Response::PeerGone { conn }, &[]);
    }

    /// Standby `conn`, if it is `token`'s.
    pub(super) fn take_standby(&mut self, token: u64, conn: u64) -> Option<Standby> {
        if self.standbys.get(&conn)?.client != token {
            return None;
        }
        let sb = self.standbys.remove(&conn)?;
        self.count_rounds(&sb);
        Some(sb)
    }

    /// Connections made through renewed standbys (each renewal ends one;
    /// their processes count them in the segment) go into the totals, as
    /// if brokered. Before a report, and as a standby goes.
    pub(super) fn count_renewed(&mut self) {
        let mut new = 0;
        for sb in self.standbys.values_mut() {
            let rounds = sb.seg.view().rounds();
            new += rounds.saturating_sub(sb.counted);
            sb.counted = sb.counted.max(rounds);
        }
        self.add_renewed(new);
    }

    fn count_rounds(&mut self, sb: &Standby) {
        self.add_renewed(sb.seg.view().rounds().saturating_sub(sb.counted));
    }

    fn add_renewed(&mut self, n: u64) {
        // A count its processes keep: a wild one only inflates reports.
        let n = n.min(u64::from(u32::MAX));
        self.connects_total += n;
        self.reused_total += n;
        self.standby_total += n;
        self.renewed_total += n;
    }

    /// Standby `conn` will not be used: its connector gave it back, or its
    /// acceptor could not map it (`token` is one of the two).
    pub(super) fn unused_standby(&mut self, token: u64, conn: u64) {
        let Some(key) = self.standby_key(conn) else { return };
        if self.standbys.get(&key).is_some_and(|s| s.client == token || s.acceptor == token) {
            self.cancel_standby(key);
        }
    }

    /// Cancels standby `conn` (its ticket), unless its connector used it
    /// first: then it becomes a connection like any used one. A cancelled
    /// one is unmapped by both, who map it (the connector as it came, the
    /// acceptor at its `Expect`); the connector is told to drop it.
    pub(super) fn cancel_standby(&mut self, conn: u64) {
        let Some(sb) = self.standbys.get(&conn) else { return };
        // The round it is in (renewed ones are their processes' to count).
        let now = sb.seg.view().ticket_id();
        if let Ticket::Connected(_) = sb.seg.view().cancel(now) {
            self.promote(conn);
            return;
        }
        let Some(sb) = self.standbys.remove(&conn) else { return };
        self.count_rounds(&sb);
        let _ = self.send(sb.client, 0, &Response::Withdraw { conn: now }, &[]);
        self.tell_forget(sb.client, sb.info.segment);
        self.tell_forget(sb.acceptor, sb.info.segment);
    }

    /// Withdraws the standbys `pred` picks (their listener closed, became
    /// shared or went, or their connector went): see `cancel_standby`.
    pub(super) fn withdraw_standbys(&mut self, pred: impl Fn(&Standby) -> bool) {
        let picked: Vec<u64> = self.standbys.iter().filter(|(_, s)| pred(s)).map(|(&c, _)| c).collect();
        for conn in picked {
            self.cancel_standby(conn);
        }
    }
}
