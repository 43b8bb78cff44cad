//! Process and connection life cycle: an end released (closed or its
//! holder dead), a fork's child registered, an exec's new image adopting
//! what its old one held, and clients dropped.

use ipcd_proto::message::{EndState, ErrorCode, Response, Side};
use ipcd_ring::ConnSegment;
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use super::{
    end_gone, end_state, idx, left_queue, other, parent_of, ring_side, send_to, ConnRec, Daemon, Gone, Orphan, Pooled,
    CLOSED, EXECED, POOL_PER_PAIR,
};
use crate::log;
use crate::log::Level;

impl Daemon {
    /// `token` lets go of its hold on `side` of `conn`. When the last holder
    /// of a side goes without closing (`died`), the monitor closes the end
    /// in the ring the way the kernel closes a dead process's socket, and
    /// tells the peer.
    pub(super) fn release(&mut self, token: u64, conn: u64, side: Side, died: bool) {
        self.let_go(token, conn, side, if died { Gone::Died } else { Gone::Closed });
    }

    /// `release` for every way a holding ends (see [`Gone`]).
    pub(super) fn let_go(&mut self, token: u64, conn: u64, side: Side, how: Gone) {
        let Some(rec) = self.conns.get_mut(&conn) else { return };
        let i = idx(side);
        // The monitor gives back the share in the segment's holder count
        // (the holder did not) and closes the end if it was the last.
        let ours = how != Gone::Closed;
        let abort = how == Gone::Released { abort: true };
        // A process that died may have left the segment in any state; it is
        // not handed to anyone again.
        rec.recyclable &= how == Gone::Closed;
        // One holding at a time: a process that was passed its own end
        // holds it twice, and lets go of it once per close.
        if let Some(pos) = rec.holders[i].iter().position(|&t| t == token) {
            rec.holders[i].remove(pos);
        }
        if !rec.holders[i].is_empty() || rec.gone[i] {
            // A holder that dies never closes: give back its share of the
            // segment's holder count, so the survivor's last close is seen
            // as the last. If that leaves none, the survivors have closed
            // already (their `Close` is still on its way), each seeing this
            // one's share and so sending nothing: close the end for them,
            // as the last close would have (a forked child's exit read
            // before its parent's `Close` left the peer waiting for a FIN).
            if ours
                && !rec.gone[i]
                && rec.seg.view().release_holder(ring_side(side)) == 0
                && end_state(rec, side) == EndState::Open
            {
                end_gone(&rec.seg, side, abort);
                self.bells.ring_side(rec.seg.view(), ring_side(other(side)));
            }
            return;
        }
        let open = end_state(rec, side) == EndState::Open;
        rec.gone[i] = true;
        // A connection still in a dead acceptor's queue (never claimed by
        // an accept) is reset, as Linux resets the queue of a listener
        // whose process dies.
        let abort = abort || (how == Gone::Died && queued_unclaimed(rec, side));
        if side == Side::B {
            left_queue(rec, &mut self.registry);
        }
        // A dead holder's end is closed as the kernel closes a dead
        // socket's whatever it last did; a released one only if still open.
        if how == Gone::Died || (ours && open) {
            end_gone(&rec.seg, side, abort);
            self.bells.ring_side(rec.seg.view(), ring_side(other(side)));
        }
        if how == Gone::Died {
            let peers = rec.holders[idx(other(side))].clone();
            for p in peers {
                // Best effort: a client that cannot take it is being dropped.
                let _ = send_to(&mut self.clients, &mut self.watch, p, 0, &Response::PeerGone { conn }, &[]);
            }
        }
        if rec.gone == [true, true] {
            if let Some(rec) = self.conns.remove(&conn) {
                self.retire(rec);
            }
            log!(Level::Debug, "msg=\"connection freed\" conn={conn}");
        }
    }

    /// Both ends of a connection are closed: its segment goes back to the
    /// pair's pool when both ends kept it mapped; otherwise whoever kept
    /// it is told to unmap it.
    pub(super) fn retire(&mut self, rec: ConnRec) {
        let segment = rec.info[0].segment;
        let (a, b) = rec.pair;
        let live = self.clients.contains_key(&a) && self.clients.contains_key(&b);
        let room = self.pools.get(&rec.pair).map_or(0, Vec::len) < POOL_PER_PAIR;
        if rec.recyclable && rec.kept == [true, true] && live && room {
            rec.seg.trim();
            self.pools.entry(rec.pair).or_default().push(Pooled { id: segment, seg: rec.seg });
            // Its connector used a standby and may use more before it
            // says so (it says nothing): the stock is topped up here.
            if let Some((listener, dest)) = rec.refill {
                self.issue_standby(a, listener, dest, true);
            }
            return;
        }
        for (token, kept) in [(a, rec.kept[0]), (b, rec.kept[1])] {
            if kept {
                self.tell_forget(token, segment);
            }
        }
    }

    pub(super) fn tell_forget(&mut self, token: u64, segment: u64) {
        // Best effort: a client that cannot take it is being dropped.
        let _ = self.send(token, 0, &Response::Forget { segment }, &[]);
    }

    /// A client is gone: the pools it shared are emptied, its partners
    /// told to unmap their copies.
    pub(super) fn drop_pools(&mut self, token: u64) {
        let pairs: Vec<(u64, u64)> = self.pools.keys().filter(|(a, b)| *a == token || *b == token).copied().collect();
        for pair in pairs {
            let other = if pair.0 == token { pair.1 } else { pair.0 };
            for p in self.pools.remove(&pair).unwrap_or_default() {
                self.tell_forget(other, p.id);
            }
        }
    }

    pub(super) fn forked(&mut self, token: u64, seq: u32, pid: u32, uid: u32, claimed_parent: u32) {
        // The parent as the monitor sees it: the child names its own
        // namespace's number, the same only when the two share one.
        let Some(parent_pid) = parent_of(pid) else {
            self.fail(token, seq, ErrorCode::NotOwner);
            return;
        };
        if parent_pid != claimed_parent {
            log!(
                Level::Debug,
                "msg=\"fork in another namespace\" client={token} claims={claimed_parent} parent={parent_pid}"
            );
        }
        let is_parent = |t: u64, c: &super::Client| t != token && c.pid == parent_pid && c.uid == uid;
        // The child shares the parent's ends of renewed standbys (and its
        // listeners' queued rounds): they become connections first, as
        // the ones it holds. Nobody else's: their renewal goes on.
        let parents: Vec<u64> = self.clients.iter().filter(|(&t, c)| is_parent(t, c)).map(|(&t, _)| t).collect();
        self.promote_where(|s| parents.contains(&s.client) || parents.contains(&s.acceptor));
        let parent = self.clients.iter().find(|(&t, c)| is_parent(t, c)).map(|(_, c)| c.holdings.clone());
        let Some(holdings) = parent else {
            self.fail(token, seq, ErrorCode::NotOwner);
            return;
        };
        // The parent counted a share for the child in each end it had in
        // its fd table before it forked (and waits for this message); an
        // end still waiting in its accept queue got none, and the child
        // never sees it: holding it there left it waiting for the child
        // (a `Decline` refused, a reset when the parent exited).
        let holdings: Vec<_> = holdings
            .into_iter()
            .filter(|&(conn, side)| {
                self.conns
                    .get(&conn)
                    .is_some_and(|rec| rec.seg.view().holders(ring_side(side)) as usize > rec.holders[idx(side)].len())
            })
            .collect();
        for &(conn, side) in &holdings {
            if let Some(rec) = self.conns.get_mut(&conn) {
                rec.holders[idx(side)].push(token);
                rec.recyclable = false;
            }
        }
        if let Some((&parent_token, _)) =
            self.clients.iter().find(|(&t, c)| t != token && c.pid == parent_pid && c.uid == uid)
        {
            self.registry.mark_forked(parent_token, token);
            // Its listeners are shared now: connects take turns among
            // the processes that serve them, which a standby issued to it
            // would skip (it may be a master that never accepts again).
            self.withdraw_standbys(|s| s.acceptor == parent_token);
        }
        if let Some(c) = self.clients.get_mut(&token) {
            c.holdings.extend(holdings);
        }
        self.reply(token, seq, &Response::Ok, &[]);
    }

    pub(super) fn adopt_orphans(&mut self, token: u64, pid: u32, uid: u32) {
        let (mine, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.orphans).into_iter().partition(|o| o.pid == pid && o.uid == uid);
        self.orphans = rest;
        for o in mine {
            for &(conn, side) in &o.holdings {
                if let Some(rec) = self.conns.get_mut(&conn) {
                    for h in rec.holders[idx(side)].iter_mut().filter(|h| **h == o.token) {
                        *h = token;
                    }
                    // The old image's mapping died with it.
                    rec.recyclable = false;
                }
            }
            log!(Level::Info, "msg=\"exec'd process re-registered\" pid={pid} connections={}", o.holdings.len());
            if let Some(c) = self.clients.get_mut(&token) {
                c.holdings.extend(o.holdings);
            }
        }
    }

    /// `token`, a new image after exec, listens again on `listener`, a
    /// socket it kept across the exec: connections that waited in the
    /// old image's queue went with its channel, so each is offered again,
    /// as the kernel's queue would have kept them for the new image. One
    /// the old image had accepted (claimed) is its to reopen instead.
    pub(super) fn requeue_after_exec(&mut self, token: u64, listener: u64) {
        let Some(pid) = self.clients.get(&token).map(|c| c.pid) else { return };
        let registry = &self.registry;
        let left: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, r)| {
                r.holders[1] == [token] && !r.gone[1] && r.pending_in.is_some_and(|(o, i)| registry.get(o, i).is_none())
            })
            .map(|(&c, _)| c)
            .collect();
        for conn in left {
            let Some(dest) = self.conns.get(&conn).map(|r| r.info[1].local) else { continue };
            if self.listener_for(&dest).map(|l| (l.owner, l.id)) != Some((token, listener)) {
                continue;
            }
            if !self.clients.contains_key(&token) {
                continue;
            }
            let Some(rec) = self.conns.get_mut(&conn) else { continue };
            let seg = rec.seg.view();
            if !seg.withdraw(pid) {
                continue;
            }
            seg.offer(pid);
            let (info, fds) = rec.fresh_end(Side::B);
            let sent = send_to(
                &mut self.clients,
                &mut self.watch,
                token,
                0,
                &Response::Incoming { listener, info, at: super::monotonic_ns() },
                &fds,
            );
            if let Err(e) = sent {
                // It stays held, and is reset as a dead acceptor's when
                // this client goes.
                log!(Level::Warn, "msg=\"cannot requeue after exec\" conn={conn} pid={pid} err=\"{e}\"");
                continue;
            }
            rec.pending_in = Some((token, listener));
            if let Some(l) = self.registry.get_mut(token, listener) {
                l.pending += 1;
            }
            log!(Level::Debug, "msg=\"requeued after exec\" conn={conn} pid={pid}");
        }
    }

    pub(super) fn expire_orphans(&mut self) {
        let now = Instant::now();
        let (expired, rest): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.orphans).into_iter().partition(|o| o.deadline <= now);
        self.orphans = rest;
        for o in expired {
            log!(Level::Info, "msg=\"exec'd process did not come back\" pid={}", o.pid);
            for (conn, side) in o.holdings {
                self.release(o.token, conn, side, true);
            }
        }
    }

    pub(super) fn drop_doomed(&mut self) {
        while let Some((token, why)) = self.doomed.pop() {
            if why == CLOSED && self.clients.get(&token).is_some_and(|c| !c.exec_pending) {
                // What it sent before it closed is still to be read: a
                // send that found its channel closed gets here before a
                // read reached its `ExecPrepare`.
                self.serve(token, 64);
            }
            self.promote_where(|s| s.client == token || s.acceptor == token);
            let Some(mut client) = self.clients.remove(&token) else { continue };
            self.drop_queue(token, client.queue.take());
            self.withdraw_standbys(|s| s.client == token || s.acceptor == token);
            // Its listeners' bells go with it (an exec'd image registers
            // its own), and other clients' note of having them.
            self.listener_bells.retain(|&(owner, _), _| owner != token);
            for c in self.clients.values_mut() {
                c.bells.retain(|&(acceptor, _)| acceptor != token);
            }
            // So do its threads' doorbells (a peer's copy of one stays
            // open, rung for nobody).
            self.bells.drop_owner(token);
            self.drop_pools(token);
            // SAFETY: removes an fd we added; a null event is allowed for DEL.
            unsafe {
                libc::epoll_ctl(
                    self.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    client.chan.as_fd().as_raw_fd(),
                    std::ptr::null_mut(),
                )
            };
            let (listeners, handed) = self.registry.remove_owner(token);
            self.handed_on(token, &handed);
            let level = if why == CLOSED || why == EXECED { Level::Debug } else { Level::Warn };
            log!(
                level,
                "msg=\"client dropped\" client={token} pid={} why=\"{why}\" listeners={listeners} connections={}",
                client.pid,
                client.holdings.len()
            );
            if client.exec_pending && (why == CLOSED || why == EXECED) {
                self.orphans.push(Orphan {
                    token,
                    pid: client.pid,
                    uid: client.uid,
                    holdings: client.holdings,
                    deadline: Instant::now() + Duration::from_secs(self.cfg.exec_grace_secs),
                });
                continue;
            }
            for (conn, side) in client.holdings {
                // Connections that waited for it untouched go to another
                // process serving the listener, as they would have stayed
                // in the kernel's shared queue for the others (a pre-fork
                // worker killed with its queue full reset them all).
                if side == Side::B && self.waits_untouched(token, conn) && self.hand_on(token, conn) {
                    continue;
                }
                self.release(token, conn, side, true);
            }
            self.rehome_parked();
        }
    }
}

/// Whether `side` is the accepting end of a connection still waiting in
/// its listener's queue: no accept claimed it (accepts are reported
/// lazily; the claim in the segment is at once).
fn queued_unclaimed(rec: &ConnRec, side: Side) -> bool {
    side == Side::B && rec.pending_in.is_some() && rec.seg.view().claimed_by().is_none()
}
