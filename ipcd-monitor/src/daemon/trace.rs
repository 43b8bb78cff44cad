//! `ipcd trace`: connections sent to a tracer, which maps their segments
//! read-only and writes what each side wrote as a pcap. Nothing here or
//! in the data path runs while no tracer is connected.

use std::os::fd::AsFd;

use ipcd_proto::message::{ErrorCode, Response};

use super::handle::From;
use super::{send_to, undeliverable, ConnRec, Daemon};

/// A client watching connections: those of process `pid` (0: any) with
/// port `port` at either end (0: any).
#[derive(Debug, Clone, Copy)]
pub(super) struct Tracer {
    token: u64,
    pid: u32,
    port: u16,
}

impl Daemon {
    /// `Trace`: the monitor's own user or root (the bytes are theirs to
    /// see, as `ipcd status` is), and every matching connection now.
    pub(super) fn trace(&mut self, from: From, pid: u32, port: u16) {
        let From { token, seq, uid, .. } = from;
        if uid != self.uid && uid != 0 {
            return self.fail(token, seq, ErrorCode::NotOwner);
        }
        self.tracers.push(Tracer { token, pid, port });
        // Renewed standbys would carry connections the monitor never sees:
        // those in use become connections of its books, the idle ones
        // go, and standbys are not renewable while a tracer is on.
        self.withdraw_standbys(|_| true);
        let mut conns: Vec<u64> = self.conns.keys().copied().collect();
        conns.sort_unstable();
        for conn in conns {
            self.show_tracers(conn);
        }
    }

    /// Sends `conn` to every tracer that wants it (after it was made).
    pub(super) fn show_tracers(&mut self, conn: u64) {
        if self.tracers.is_empty() {
            return;
        }
        self.tracers.retain(|t| self.clients.contains_key(&t.token));
        let Some(rec) = self.conns.get(&conn) else { return };
        let pids = self.holder_pids(rec);
        let addrs = [rec.info[0].local, rec.info[1].local];
        let event = Response::Traced { conn, pids, addrs, segment_len: rec.seg.len() as u64 };
        let mut failed = Vec::new();
        for t in &self.tracers {
            let pid_ok = t.pid == 0 || pids.contains(&t.pid);
            let port_ok = t.port == 0 || addrs.iter().any(|a| a.port() == t.port);
            if pid_ok && port_ok {
                if let Err(e) = send_to(&mut self.clients, &mut self.watch, t.token, 0, &event, &[rec.seg.fd().as_fd()])
                {
                    failed.push((t.token, undeliverable("cannot send a traced connection", &e)));
                }
            }
        }
        for (token, why) in failed {
            self.doom(token, why);
        }
    }

    /// The pids of the first holder of each side (0: none, or a relay).
    pub(super) fn holder_pids(&self, rec: &ConnRec) -> [u32; 2] {
        let pid_of = |t: Option<&u64>| t.and_then(|t| self.clients.get(t)).map_or(0, |c| c.pid);
        [pid_of(rec.holders[0].first()), pid_of(rec.holders[1].first())]
    }
}
