//! `ipcd status`: the report of processes, listeners and connections.

use std::collections::BTreeMap;

use ipcd_proto::message::{ConnStatus, EndState, ListenerStatus, ProcessStatus, Response, Side, Status};
use ipcd_ring::{ConnSegment, PeerState};

use super::{end_state, idx, writer_end, Daemon, HeldEnd};

/// How many ends of earlier monitors' connections one process may report
/// (each costs the monitor a few dozen bytes until the process goes).
const MAX_HELD: usize = 1 << 16;

impl Daemon {
    /// The report goes as one `Status`, an entry per listener and per
    /// connection, then `Ok`; through the client's outbox, so any number of
    /// entries reaches a client that reads them (a client that asks again
    /// before it has read the last report is dropped).
    pub(super) fn status(&mut self, token: u64, seq: u32) {
        if self.clients.get(&token).is_some_and(|c| !c.outbox.is_empty()) {
            return self.doom(token, "asked for a report before reading the last".into());
        }
        self.count_renewed();
        let held = self.held_conns();
        // Connections both of whose ends are closed are over, whether or
        // not their holders' `Close` reached us yet (a process sends its
        // closes with its next request).
        let mut conns: Vec<_> = self.conns.iter().filter(|(_, rec)| !is_over(rec)).collect();
        conns.sort_by_key(|(id, _)| **id);
        let renewed = self.renewed_conns();
        let status = Status {
            monitor_pid: std::process::id(),
            processes: self.clients.values().filter(|c| c.hello).count() as u32,
            listeners: self.registry.len() as u32,
            connections: (conns.len() + renewed.len() + held.len()) as u32,
            segment_bytes: self.conns.values().map(|c| c.seg.len() as u64).sum::<u64>()
                + self.pools.values().flatten().map(|p| p.seg.len() as u64).sum::<u64>(),
            connects_total: self.connects_total,
            fallbacks_total: self.fallbacks_total,
            fallbacks: self.fallbacks,
            reused_total: self.reused_total,
            standby_total: self.standby_total,
            renewed_total: self.renewed_total,
            uptime_ms: self.started.elapsed().as_millis() as u64,
        };
        let mut out = vec![Response::Status(status)];
        // Every process but the one asking (`ipcd status` itself).
        let mut tokens: Vec<u64> =
            self.clients.iter().filter(|(&t, c)| c.hello && t != token).map(|(&t, _)| t).collect();
        tokens.sort_by_key(|t| self.clients.get(t).map_or(0, |c| c.pid));
        out.extend(tokens.into_iter().map(|t| Response::ProcessEntry(self.process_status(t, &renewed))));
        out.extend(self.registry.iter().map(|l| {
            Response::ListenerEntry(ListenerStatus {
                pid: l.pid,
                addr: l.addr,
                backlog: l.backlog,
                pending: l.pending,
                reuseport: l.flags.contains(ipcd_proto::ListenFlags::REUSEPORT),
            })
        }));
        out.extend(conns.into_iter().map(|(&conn, rec)| {
            Response::ConnEntry(ConnStatus {
                conn,
                pids: self.holder_pids(rec),
                addrs: [rec.info[0].local, rec.info[1].local],
                bytes: [rec.seg.view().written(ipcd_ring::Side::A), rec.seg.view().written(ipcd_ring::Side::B)],
                segment_len: rec.seg.len() as u64,
                states: [end_state(rec, Side::A), end_state(rec, Side::B)],
            })
        }));
        out.extend(renewed.into_iter().map(|(c, _)| Response::ConnEntry(c)));
        out.extend(held.into_values().map(Response::ConnEntry));
        out.push(Response::Ok);
        self.reply_all(token, seq, out);
    }

    /// Rounds of renewed standbys in progress, with the clients of their
    /// two ends: connections the monitor has no record of, shown as they
    /// are (taking them into its books for the report, as before, ended
    /// every pair's renewal at each `ipcd status` or metrics scrape).
    fn renewed_conns(&self) -> Vec<(ConnStatus, [u64; 2])> {
        let pid = |t: u64| self.clients.get(&t).map_or(0, |c| c.pid);
        let mut out = Vec::new();
        for sb in self.standbys.values() {
            let v = sb.seg.view();
            let id = v.ticket_id();
            let ipcd_ring::Ticket::Connected(words) = v.ticket(id) else { continue };
            let sides = [ipcd_ring::Side::A, ipcd_ring::Side::B];
            // Promoted ones are in the records; finished ones are over.
            if !v.renewable(id) || sides.iter().all(|&s| ended(v, s)) {
                continue;
            }
            let states = sides.map(|s| writer_end(v, s));
            let entry = ConnStatus {
                conn: id,
                pids: [pid(sb.client), pid(sb.acceptor)],
                addrs: [ipcd_proto::SockAddr::from_words(words).unwrap_or(sb.info.local), sb.dest],
                bytes: sides.map(|s| v.written(s)),
                segment_len: sb.seg.len() as u64,
                states,
            };
            out.push((entry, [sb.client, sb.acceptor]));
        }
        out.sort_by_key(|(c, _)| c.conn);
        out
    }

    /// What client `token` holds, for the report: its ends (and bytes each
    /// way on them, with its ends of `renewed` rounds) and its listeners.
    fn process_status(&self, token: u64, renewed: &[(ConnStatus, [u64; 2])]) -> ProcessStatus {
        let Some(c) = self.clients.get(&token) else {
            return ProcessStatus { pid: 0, uid: 0, connections: 0, listeners: 0, sent: 0, received: 0, to_kernel: 0 };
        };
        let (mut sent, mut received, mut in_renewed) = (0, 0, 0);
        for (r, clients) in renewed {
            for (i, _) in clients.iter().enumerate().filter(|(_, &t)| t == token) {
                sent += r.bytes[i];
                received += r.bytes[1 - i];
                in_renewed += 1;
            }
        }
        for &(conn, side) in &c.holdings {
            if let Some(rec) = self.conns.get(&conn) {
                let v = rec.seg.view();
                sent += v.written(super::ring_side(side));
                received += v.written(super::ring_side(super::other(side)));
            }
        }
        ProcessStatus {
            pid: c.pid,
            uid: c.uid,
            connections: (c
                .holdings
                .iter()
                .filter(|(conn, _)| self.conns.get(conn).is_some_and(|r| !is_over(r)))
                .count()
                + in_renewed
                + c.held.len()) as u32,
            listeners: self.registry.iter().filter(|l| l.owner == token).count() as u32,
            sent,
            received,
            to_kernel: c.to_kernel,
        }
    }

    /// `token` holds (`open`) or let go of `end`, an end of a connection
    /// an earlier monitor made. Believed as said: it only shows in the
    /// report, bounded per process, and goes with the process.
    pub(super) fn held(&mut self, token: u64, end: HeldEnd, open: bool) {
        let Some(c) = self.clients.get_mut(&token) else { return };
        let at = c.held.iter().position(|h| h.conn == end.conn && h.side == end.side);
        match (at, open) {
            (None, true) if c.held.len() < MAX_HELD => c.held.push(end),
            (Some(i), false) => {
                c.held.swap_remove(i);
            }
            _ => {}
        }
    }

    /// The connections earlier monitors made that processes reported, by
    /// id: each reported end with its process, the other end unknown until
    /// its holder reports it (no bytes or segment: this monitor has none).
    fn held_conns(&self) -> BTreeMap<u64, ConnStatus> {
        let mut out = BTreeMap::new();
        for c in self.clients.values() {
            for h in &c.held {
                let i = idx(h.side);
                let e = out.entry(h.conn).or_insert_with(|| ConnStatus {
                    conn: h.conn,
                    pids: [0; 2],
                    addrs: if i == 0 { [h.local, h.peer] } else { [h.peer, h.local] },
                    bytes: [0; 2],
                    segment_len: 0,
                    states: [EndState::Unknown; 2],
                });
                e.pids[i] = c.pid;
                e.states[i] = EndState::Open;
            }
        }
        out
    }
}

/// Whether both ends of a connection are closed: gone from the books, or
/// their writing and reading directions both closed (a socket's last
/// close; a half-closed end still reads).
fn is_over(rec: &super::ConnRec) -> bool {
    [Side::A, Side::B].into_iter().all(|side| rec.gone[idx(side)] || ended(rec.seg.view(), super::ring_side(side)))
}

/// `side`'s end closed both ways in the rings: it wrote its last and
/// reads no more.
fn ended(seg: &ipcd_ring::Segment, side: ipcd_ring::Side) -> bool {
    seg.writer_state(side) != PeerState::Open && seg.reader_closed(side)
}
