//! Hand-offs between processes that share a listener: a connection one
//! declines or cannot take goes, untouched, to another that accepts.

use ipcd_proto::message::{Response, Side};
use ipcd_ring::ConnSegment;

use super::{ring_side, send_to, undeliverable, Daemon};
use crate::log;
use crate::log::Level;
use crate::registry::Listener;

impl Daemon {
    /// `old` let go of listeners that forked children still hold, and
    /// each went to one of them (`handed`: id, new owner): the entries
    /// show the new owner's pid, and connections waiting in their queues
    /// count against them.
    pub(super) fn handed_on(&mut self, old: u64, handed: &[(u64, u64)]) {
        for &(id, owner) in handed {
            let pid = self.clients.get(&owner).map_or(0, |c| c.pid);
            if let Some(l) = self.registry.get_mut(owner, id) {
                l.pid = pid;
            }
            for rec in self.conns.values_mut().filter(|r| r.pending_in == Some((old, id))) {
                rec.pending_in = Some((owner, id));
            }
            // Standbys issued to its servers go on under its new key.
            for sb in self.standbys.values_mut().filter(|s| s.listener == (old, id)) {
                sb.listener = (owner, id);
            }
            log!(Level::Info, "msg=\"listener handed on\" listener={id} from={old} to={owner} pid={pid}");
        }
    }

    /// `token` closed its copy of a shared listener with `conn` still in
    /// its accept queue: the connection goes to another process that
    /// serves the listener, as the kernel's shared queue would have left
    /// it to the others, or waits parked for one to say it accepts.
    pub(super) fn decline(&mut self, token: u64, conn: u64) {
        if !self.conns.get(&conn).is_some_and(|rec| rec.pending_in.is_some() && rec.holders[1] == [token]) {
            // Also one taken from it for a server (`take_from_idle`) while
            // the message that offered it was still on its way.
            log!(Level::Debug, "msg=\"decline of a connection not waiting here\" client={token} conn={conn}");
            return;
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.retain(|h| *h != (conn, Side::B));
        }
        // Nobody else to take it: reset, as Linux resets what waits in
        // the queue of a listener whose last copy closes (a dead
        // acceptor's close would end it with a FIN).
        if !self.hand_on(token, conn) {
            self.let_go(token, conn, Side::B, super::Gone::Released { abort: true });
        }
    }

    /// Whether `conn` waits for `token` alone in a listener's accept queue
    /// and `token` has done nothing on it its peer could see: then the
    /// connector cannot tell it from one still queued for another acceptor.
    pub(super) fn waits_untouched(&self, token: u64, conn: u64) -> bool {
        self.conns.get(&conn).is_some_and(|rec| {
            rec.pending_in.is_some()
                && rec.holders[1] == [token]
                && !rec.gone[1]
                && rec.seg.view().untouched(ring_side(Side::B))
        })
    }

    /// Gives `conn`, waiting for `from` in a listener's accept queue, to
    /// another process that serves the listener, trying each in turn
    /// until one takes it. With none, a listener other processes hold
    /// keeps it parked in its queue, held by nobody (see
    /// [`Daemon::rehome_parked`]), as the kernel's shared queue would.
    /// False when it was neither handed on nor parked.
    pub(super) fn hand_on(&mut self, from: u64, conn: u64) -> bool {
        let Some(rec) = self.conns.get_mut(&conn) else { return false };
        let Some((owner, id)) = rec.pending_in else { return false };
        // The next acceptor has not mapped it, and three processes have.
        rec.recyclable = false;
        let (info, fds) = rec.fresh_end(Side::B);
        let tries = self.registry.get_mut(owner, id).map_or(0, |l| l.servers.len().max(1));
        let mut sent = None;
        for _ in 0..tries {
            let Some(t) = self.registry.get_mut(owner, id).and_then(Listener::acceptor) else { break };
            if t == from || self.doomed.iter().any(|(d, _)| *d == t) {
                continue;
            }
            let Some(c) = self.clients.get(&t) else { continue };
            // Only `t` may take it now: the one it waited for may still
            // read the old offer (see `take_from_idle`).
            rec.seg.view().offer(c.pid);
            match send_to(
                &mut self.clients,
                &mut self.watch,
                t,
                0,
                &Response::Incoming { listener: id, info, at: super::monotonic_ns() },
                &fds,
            ) {
                Ok(()) => {
                    sent = Some(t);
                    break;
                }
                Err(e) if !e.is_would_block() => self.doomed.push((t, undeliverable("cannot deliver", &e))),
                Err(_) => {}
            }
        }
        let Some(t) = sent else {
            rec.seg.view().offer(0);
            // Only a listener that others hold waits for one of them to
            // accept; its owner's alone has no one else to wait for.
            let park = self.registry.get_mut(owner, id).is_some_and(|l| l.is_shared() || l.handed_on);
            if park {
                rec.holders[1].clear();
                log!(Level::Debug, "msg=\"waiting connection parked\" conn={conn} from={from} listener={id}");
            }
            return park;
        };
        rec.holders[1] = vec![t];
        rec.pair.1 = t;
        if let Some(c) = self.clients.get_mut(&t) {
            c.holdings.push((conn, Side::B));
        }
        log!(Level::Debug, "msg=\"waiting connection handed on\" conn={conn} from={from} to={t}");
        true
    }

    /// `server` has said it accepts on `listener`: connections waiting
    /// for a process that holds the listener but never said so (nginx's
    /// master, for connections that came between its `listen` and the
    /// fork of its workers) are handed on to the servers, as the kernel's
    /// shared queue would let the workers take them. Each is first
    /// withdrawn in its segment, which fails if that process accepted it
    /// meanwhile (it reports accepts lazily); then it stays.
    pub(super) fn take_from_idle(&mut self, server: u64, listener: u64) {
        let registry = &self.registry;
        let idle: Vec<(u64, u64)> = self
            .conns
            .iter()
            .filter_map(|(&conn, rec)| {
                let (owner, id) = rec.pending_in.filter(|&(_, id)| id == listener)?;
                let &[from] = rec.holders[1].as_slice() else { return None };
                let l = registry.get(owner, id)?;
                let held_by_server = l.owner == server || l.sharers.contains(&server);
                (held_by_server && from != server && !l.servers.contains(&from) && !rec.gone[1]).then_some((conn, from))
            })
            .collect();
        for (conn, from) in idle {
            let Some(pid) = self.clients.get(&from).map(|c| c.pid) else { continue };
            if !self.conns.get(&conn).is_some_and(|rec| rec.seg.view().withdraw(pid)) {
                continue;
            }
            if let Some(c) = self.clients.get_mut(&from) {
                c.holdings.retain(|h| *h != (conn, Side::B));
            }
            if !self.hand_on(from, conn) {
                // No one else can take it after all: it waits where it was.
                if let Some(rec) = self.conns.get(&conn) {
                    rec.seg.view().offer(pid);
                }
                if let Some(c) = self.clients.get_mut(&from) {
                    c.holdings.push((conn, Side::B));
                }
            }
        }
    }

    /// Connections parked in a listener's queue: each goes to a process
    /// that accepts on it now (one said `Serve`, or the listener is its
    /// owner's alone again), or, with the listener gone, is closed as a
    /// dead acceptor's would be. Run when who accepts may have changed.
    pub(super) fn rehome_parked(&mut self) {
        let parked: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, r)| r.pending_in.is_some() && r.holders[1].is_empty() && !r.gone[1])
            .map(|(&c, _)| c)
            .collect();
        for conn in parked {
            if !self.hand_on(0, conn) {
                self.release(0, conn, Side::B, true);
            }
        }
    }
}
