//! Passing a connection end with `SCM_RIGHTS`: the sender's `Pass` makes
//! the end wait for its receiver's `Claim`.

use ipcd_proto::channel::Fds;
use ipcd_proto::message::{ErrorCode, Response, Side};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::handle::From;
use super::{idx, send_to, socket_inode, undeliverable, Daemon, Passed};
use crate::log;
use crate::log::Level;

impl Daemon {
    /// `Pass`: the end gains a holder (a token of no client) that waits
    /// for the receiver's `Claim`. The end is found again by the inode of
    /// the kernel socket that came with the request, read from the socket
    /// itself: a sender cannot file its end under a socket it does not
    /// hold (and so slip it to a receiver of another pass).
    pub(super) fn pass(&mut self, from: From, conn: u64, side: Side, kernel: OwnedFd) {
        let From { token, seq, uid, .. } = from;
        if !self.holds(token, conn, side) {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        }
        let Some(inode) = socket_inode(&kernel) else {
            return self.fail(token, seq, ErrorCode::BadRequest);
        };
        let Some(rec) = self.conns.get_mut(&conn) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let holder = self.next_token;
        self.next_token += 1;
        rec.holders[idx(side)].push(holder);
        // A third process maps it: never reused by the pair.
        rec.recyclable = false;
        let deadline = Instant::now() + Duration::from_secs(self.cfg.exec_grace_secs);
        self.passes.entry(inode).or_default().push(Passed { conn, side, holder, deadline, uid });
        self.reply(token, seq, &Response::Ok, &[]);
    }

    /// `Claim`: the end passed with the socket that came with the request
    /// becomes the claimer's, as `Reopen` gives an exec'd image its own.
    /// Holding the socket is the proof (a claim names nothing by number),
    /// and the claimer must be the passer's user unless `--cross-uid`.
    pub(super) fn claim(&mut self, from: From, fds: Fds) {
        let From { token, seq, pid, uid } = from;
        let Some(inode) = fds.into_vec().first().and_then(socket_inode) else {
            return self.fail(token, seq, ErrorCode::BadRequest);
        };
        // No list is left empty in `passes`.
        let Some(list) = self.passes.get_mut(&inode) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let cross = self.cfg.cross_uid;
        let Some(at) = list.iter().position(|p| cross || p.uid == uid) else {
            log!(Level::Warn, "msg=\"claim of another user's connection refused\" client={token} pid={pid} uid={uid}");
            return self.fail(token, seq, ErrorCode::NotOwner);
        };
        let p = list.remove(at);
        if list.is_empty() {
            self.passes.remove(&inode);
        }
        let Some(rec) = self.conns.get_mut(&p.conn) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let i = idx(p.side);
        for h in rec.holders[i].iter_mut().filter(|h| **h == p.holder) {
            *h = token;
        }
        let (info, fds) = rec.fresh_end(p.side);
        let resp = Response::Reopened(info);
        let Some(client) = self.clients.get_mut(&token) else { return };
        client.holdings.push((p.conn, p.side));
        if let Err(e) = send_to(&mut self.clients, &mut self.watch, token, seq, &resp, &fds) {
            self.doom(token, undeliverable("cannot reply", &e));
        }
    }

    /// Passed ends nobody claimed in time: given back as a dead holder's
    /// are (the last one's going closes the end).
    pub(super) fn expire_passes(&mut self) {
        let now = Instant::now();
        let mut expired = Vec::new();
        for list in self.passes.values_mut() {
            let (gone, kept): (Vec<_>, Vec<_>) = std::mem::take(list).into_iter().partition(|p| p.deadline <= now);
            *list = kept;
            expired.extend(gone);
        }
        self.passes.retain(|_, v| !v.is_empty());
        for p in expired {
            log!(Level::Info, "msg=\"passed connection not claimed\" conn={}", p.conn);
            self.release(p.holder, p.conn, p.side, true);
        }
    }

    /// Whether the client `token` holds `side` of `conn`.
    pub(super) fn holds(&self, token: u64, conn: u64, side: Side) -> bool {
        self.clients.get(&token).is_some_and(|c| c.holdings.contains(&(conn, side)))
    }
}
