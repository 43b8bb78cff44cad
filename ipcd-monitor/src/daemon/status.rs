//! `ipcd status`: the report of processes, listeners and connections.

use ipcd_proto::message::{ConnStatus, ListenerStatus, Response, Side, Status};

use super::{end_state, Daemon};

impl Daemon {
    /// The report goes as one `Status`, an entry per listener and per
    /// connection, then `Ok`; through the client's outbox, so any number of
    /// entries reaches a client that reads them (a client that asks again
    /// before it has read the last report is dropped).
    pub(super) fn status(&mut self, token: u64, seq: u32) {
        if self.clients.get(&token).is_some_and(|c| !c.outbox.is_empty()) {
            return self.doom(token, "asked for a report before reading the last".into());
        }
        let status = Status {
            monitor_pid: std::process::id(),
            processes: self.clients.values().filter(|c| c.hello).count() as u32,
            listeners: self.registry.len() as u32,
            connections: self.conns.len() as u32,
            segment_bytes: self.conns.values().map(|c| c.seg.len() as u64).sum::<u64>()
                + self.pools.values().flatten().map(|p| p.seg.len() as u64).sum::<u64>(),
            connects_total: self.connects_total,
            fallbacks_total: self.fallbacks_total,
            reused_total: self.reused_total,
            standby_total: self.standby_total,
            uptime_ms: self.started.elapsed().as_millis() as u64,
        };
        let mut out = vec![Response::Status(status)];
        out.extend(self.registry.iter().map(|l| {
            Response::ListenerEntry(ListenerStatus {
                pid: l.pid,
                addr: l.addr,
                backlog: l.backlog,
                pending: l.pending,
                reuseport: l.flags.contains(ipcd_proto::ListenFlags::REUSEPORT),
            })
        }));
        let pid_of = |t: Option<&u64>| t.and_then(|t| self.clients.get(t)).map_or(0, |c| c.pid);
        let mut conns: Vec<_> = self.conns.iter().collect();
        conns.sort_by_key(|(id, _)| **id);
        out.extend(conns.into_iter().map(|(&conn, rec)| {
            Response::ConnEntry(ConnStatus {
                conn,
                pids: [pid_of(rec.holders[0].first()), pid_of(rec.holders[1].first())],
                addrs: [rec.info[0].local, rec.info[1].local],
                bytes: [rec.seg.view().written(ipcd_ring::Side::A), rec.seg.view().written(ipcd_ring::Side::B)],
                segment_len: rec.seg.len() as u64,
                states: [end_state(rec, Side::A), end_state(rec, Side::B)],
            })
        }));
        out.push(Response::Ok);
        self.reply_all(token, seq, out);
    }
}
