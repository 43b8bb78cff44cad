//! The requests a client sends, each to a short function: `handle` checks
//! that the client may ask, promotes the standbys the request may concern,
//! and dispatches.

use ipcd_proto::channel::Fds;
use ipcd_proto::message::{ErrorCode, Request, Response, Side};
use ipcd_proto::{Caps, ListenFlags, SockAddr, PROTOCOL_VERSIONS};
use std::os::fd::{AsFd, OwnedFd};

use super::{
    idx, is_eventfd, send_to, socket_inode, undeliverable, verify_listening_socket, Daemon, Gone, HeldEnd, EXECED,
};
use crate::log;
use crate::log::Level;
use crate::registry::Listener;

/// Who sent a request: its client token, the reply's sequence number and
/// the process's kernel-checked credentials.
#[derive(Debug, Clone, Copy)]
pub(super) struct From {
    pub(super) token: u64,
    pub(super) seq: u32,
    pub(super) pid: u32,
    pub(super) uid: u32,
}

impl Daemon {
    pub(super) fn handle(&mut self, token: u64, seq: u32, req: Request, fds: Fds) {
        let Some(c) = self.clients.get(&token) else { return };
        let (from, hello) = (From { token, seq, pid: c.pid, uid: c.uid }, c.hello);
        if !hello && !matches!(req, Request::Hello { .. }) {
            self.fail(token, seq, ErrorCode::NotRegistered);
            self.doom(token, "request before hello".into());
            return;
        }
        self.promote_for(token, &req);
        match req {
            Request::Hello { version_min, version_max, pid, uid, caps } => {
                self.hello(from, hello, (version_min, version_max), (pid, uid), caps)
            }
            Request::Listen { listener, addr, backlog, flags } => {
                self.listen(from, listener, addr, backlog, flags, fds)
            }
            Request::Unlisten { listener } => self.unlisten(from, listener),
            Request::Connect { dest, source, .. } => self.broker(token, seq, from.pid, from.uid, dest, source),
            // A connector that had no bell for the listener says so
            // itself; the ticket has the rest.
            Request::Use { conn, .. } => self.promote(conn),
            Request::Unused { conn } => self.unused_standby(token, conn),
            Request::Accepted { conn } => self.accepted(token, conn),
            Request::Shutdown { .. } => {}
            Request::Close { conn, side, keep } => self.close(token, conn, side, keep),
            Request::Release { conn, side, abort } => self.release_shared(token, conn, side, abort),
            Request::Forked { parent_pid } => self.forked(token, seq, from.pid, from.uid, parent_pid),
            Request::ExecPrepare => {
                if let Some(c) = self.clients.get_mut(&token) {
                    c.exec_pending = true;
                }
            }
            Request::Reopen { conn, side } => self.reopen(from, conn, side),
            Request::Pass { conn, side } => match fds.into_vec().pop() {
                Some(kernel) => self.pass(from, conn, side, kernel),
                None => self.fail(token, seq, ErrorCode::BadRequest),
            },
            Request::PassOver { conn, side } => self.pass_over(from, conn, side, fds.into_vec()),
            Request::Demote { conn, side } => match fds.into_vec().pop() {
                Some(kernel) => self.demote(from, conn, side, kernel),
                None => self.fail(token, seq, ErrorCode::BadRequest),
            },
            Request::Claim => self.claim(from, fds),
            Request::Trace { pid, port } => self.trace(from, pid, port),
            Request::Serve { listener, .. } => self.serve_listener(token, listener, fds.into_vec().pop()),
            Request::Decline { conn } => self.decline(token, conn),
            Request::Held { conn, side, local, peer, open } => {
                self.held(token, HeldEnd { conn, side, local, peer }, open)
            }
            // Counts a process made itself: believed (they only add to
            // the report, its own and the totals).
            Request::Fallbacks { counts } => {
                for (&reason, n) in ipcd_proto::Fallback::ALL.iter().zip(counts) {
                    self.count_fallbacks(token, reason, u64::from(n));
                }
            }
            // Who runs what, on which ports: the monitor's own user's
            // business (and root's), as `ss -p` shows only one's own.
            Request::Status if from.uid == self.uid || from.uid == 0 => self.status(token, seq),
            Request::Status => self.fail(token, seq, ErrorCode::NotOwner),
            Request::Stop => self.stop(from),
            // Everything it sent before was handled: its ring was read
            // before its channel.
            Request::Ping => self.reply(token, seq, &Response::Ok, &[]),
            Request::Bell => match fds.into_vec().pop() {
                Some(fd) => {
                    let id = self.bells.add(token, from.uid, fd);
                    self.reply(token, seq, &Response::BellId { id }, &[]);
                }
                None => self.fail(token, seq, ErrorCode::BadRequest),
            },
            Request::BellOf { id } => self.bell_of(from, id),
            Request::Unbell { id } => self.bells.remove(token, id),
        }
    }

    /// `BellOf`: doorbell `id`, to a process of its owner's user (any with
    /// `--cross-uid`, where connections cross users too). Ringing it can
    /// only wake a sleeper to look again.
    fn bell_of(&mut self, from: From, id: u64) {
        match self.bells.get(id) {
            Some((uid, fd)) if uid == from.uid || self.cfg.cross_uid => {
                self.reply(from.token, from.seq, &Response::Bell { id }, &[fd.as_fd()]);
            }
            _ => self.fail(from.token, from.seq, ErrorCode::BadRequest),
        }
    }

    /// Standbys used since (their connectors send nothing) become
    /// connections before anything that may concern them.
    fn promote_for(&mut self, token: u64, req: &Request) {
        match *req {
            Request::Close { conn, .. }
            | Request::Reopen { conn, .. }
            | Request::Pass { conn, .. }
            | Request::PassOver { conn, .. }
            | Request::Demote { conn, .. }
            | Request::Release { conn, .. }
            | Request::Decline { conn }
            | Request::Accepted { conn } => self.promote(conn),
            // A process about to exec: its own and its listeners'. (Not
            // a connect: its standbys in use are renewed, not spent.)
            Request::ExecPrepare => self.promote_where(|s| s.client == token || s.acceptor == token),
            // A fork: its parent's, in `forked` (known by pid only).
            _ => {}
        }
    }

    /// `Hello`: the client is who the kernel says (`SO_PEERCRED`, in the
    /// monitor's namespaces), whatever it claims: a process in its own
    /// pid namespace (a container sharing the host's network) knows
    /// itself by another pid, one in a user namespace by another uid. A
    /// common protocol version is chosen; an exec'd image replaces the
    /// channel of its old one and adopts what it held.
    fn hello(&mut self, from: From, again: bool, versions: (u16, u16), claimed: (u32, u32), caps: Caps) {
        let From { token, seq, pid, uid } = from;
        if again {
            self.fail(token, seq, ErrorCode::NotRegistered);
            self.doom(token, "second hello".into());
            return;
        }
        if claimed != (pid, uid) {
            let (cp, cu) = claimed;
            log!(
                Level::Debug,
                "msg=\"another namespace\" client={token} claims=\"pid {cp} uid {cu}\" pid={pid} uid={uid}"
            );
        }
        let (lo, hi) = versions;
        let common = lo.max(*PROTOCOL_VERSIONS.start())..=hi.min(*PROTOCOL_VERSIONS.end());
        let Some(version) = common.clone().next_back() else {
            self.fail(token, seq, ErrorCode::VersionMismatch);
            self.doom(token, format!("no common version in {lo}..={hi}"));
            return;
        };
        if let Some(c) = self.clients.get_mut(&token) {
            c.hello = true;
        }
        self.replace_old_image(token, pid, uid);
        self.adopt_orphans(token, pid, uid);
        log!(Level::Debug, "msg=\"process registered\" client={token} pid={pid} uid={uid} caps={caps:?}");
        let welcome = Response::Welcome {
            version,
            monitor_pid: std::process::id(),
            pid,
            caps: Caps::FORK | Caps::EXEC,
            ring_bytes: self.cfg.ring_bytes,
        };
        self.give_queue(token);
        self.reply(token, seq, &welcome, &[]);
    }

    /// The same process again after ExecPrepare: its old channel closed at
    /// the exec even if we have not read the hang-up yet, nor, at times,
    /// the ExecPrepare itself (one wait reported both channels, and this
    /// one was read first): read what the old one still holds before
    /// looking, then drop the channels of the replaced image.
    fn replace_old_image(&mut self, token: u64, pid: u32, uid: u32) {
        let others = |d: &Daemon, exec_pending: bool| -> Vec<u64> {
            d.clients
                .iter()
                .filter(|(&t, c)| t != token && c.pid == pid && c.uid == uid && c.exec_pending == exec_pending)
                .map(|(&t, _)| t)
                .collect()
        };
        for t in others(self, false) {
            self.serve(t, 64);
        }
        for t in others(self, true) {
            self.doom(t, EXECED.into());
        }
        self.drop_doomed();
    }

    /// `Listen`: registers a listener once the kernel confirms the passed
    /// socket listens on the address claimed.
    fn listen(&mut self, from: From, listener: u64, addr: SockAddr, backlog: u32, flags: ListenFlags, fds: Fds) {
        let From { token, seq, pid, uid } = from;
        let mut fds = fds.into_vec();
        if let Err(why) = verify_listening_socket(&fds[0], &addr) {
            log!(Level::Warn, "msg=\"listen refused\" client={token} pid={pid} addr={addr} why=\"{why}\"");
            self.fail(token, seq, ErrorCode::NotOwner);
            return;
        }
        let defer = super::defer::defer_secs(&fds[0]);
        if let Some(l) = self.registry.get_mut(token, listener).filter(|l| l.addr == addr) {
            // `listen` again on a listening socket: Linux takes the new
            // backlog and keeps the queue. (The library says it again when
            // an option the monitor reads from the socket changed.)
            l.backlog = backlog;
            l.defer_secs = defer;
            if defer > 0 {
                // Standbys would reach the acceptor before any data.
                self.withdraw_standbys(|s| s.listener == (token, listener));
            }
            log!(Level::Info, "msg=\"backlog changed\" client={token} pid={pid} addr={addr} backlog={backlog}");
            self.reply(token, seq, &Response::Ok, &[]);
            return;
        }
        let inode = socket_inode(&fds[0]).unwrap_or(0);
        if self.registry.share_inherited(token, listener, &addr, inode) {
            log!(Level::Info, "msg=\"inherited listener shared\" client={token} pid={pid} addr={addr}");
            self.reply(token, seq, &Response::Ok, &[]);
            return;
        }
        let mut entry = Listener::new(token, listener, pid, uid, addr, backlog, flags - ListenFlags::BELL);
        entry.inode = inode;
        entry.defer_secs = defer;
        if flags.contains(ListenFlags::BELL) && fds.len() == 2 {
            if let Some(bell) = fds.pop().filter(is_eventfd) {
                self.listener_bells.insert((token, listener), bell);
            }
        }
        let stale = self.registry.add(entry);
        for s in &stale {
            log!(Level::Info, "msg=\"stale listener replaced\" addr={addr} old_pid={}", s.pid);
        }
        if !stale.is_empty() {
            self.rehome_parked();
        }
        log!(Level::Info, "msg=listening client={token} pid={pid} addr={addr} backlog={backlog}");
        self.reply(token, seq, &Response::Ok, &[]);
        self.requeue_after_exec(token, listener);
    }

    /// `Unlisten`: a forked child closing its copy of its parent's listener
    /// (same id) gives back its share.
    fn unlisten(&mut self, from: From, listener: u64) {
        let From { token, seq, .. } = from;
        let (owned, handed) = self.registry.disown(token, Some(listener));
        self.handed_on(token, &handed);
        // A sharer gives back its share (and stops serving) first.
        let held = owned > 0 || self.registry.unshare(token, Some(listener));
        // No more of its connects, nor standbys: those it has go (one
        // connected is handed to it, and it declines it to the others),
        // and so do all of a listener nobody holds any more.
        self.withdraw_standbys(|s| {
            (s.acceptor == token && s.listener.1 == listener) || s.listener == (token, listener)
        });
        self.listener_bells.remove(&(token, listener));
        if held {
            self.reply(token, seq, &Response::Ok, &[]);
            self.rehome_parked();
        } else {
            self.fail(token, seq, ErrorCode::NoSuchListener);
        }
    }

    /// `Accepted`: the connection left its listener's queue.
    pub(super) fn accepted(&mut self, token: u64, conn: u64) {
        let Some(rec) = self.conns.get_mut(&conn) else { return };
        if !rec.holders[1].contains(&token) {
            return;
        }
        super::left_queue(rec, &mut self.registry);
    }

    /// Takes `(conn, side)` off `token`'s holdings for a `what` request
    /// (`close`, `release`); false (and a warning) if it does not hold it.
    fn drop_holding(&mut self, token: u64, conn: u64, side: Side, what: &str) -> bool {
        if !self.holds(token, conn, side) {
            log!(Level::Warn, "msg=\"{what} of a connection not held\" client={token} conn={conn}");
            return false;
        }
        if let Some(c) = self.clients.get_mut(&token) {
            if let Some(pos) = c.holdings.iter().position(|h| *h == (conn, side)) {
                c.holdings.remove(pos);
            }
        }
        true
    }

    /// `Close`: an end the client holds is released.
    pub(super) fn close(&mut self, token: u64, conn: u64, side: Side, keep: bool) {
        if !self.drop_holding(token, conn, side, "close") {
            return;
        }
        if let Some(rec) = self.conns.get_mut(&conn) {
            rec.kept[idx(side)] = keep;
        }
        self.release(token, conn, side, false);
    }

    /// `Release`: an end the client holds goes (a shared one, or one it
    /// never mapped); the monitor gives its share of the holder count back
    /// (and closes the end if it was the last), so the share goes exactly
    /// once even if the client dies next.
    fn release_shared(&mut self, token: u64, conn: u64, side: Side, abort: bool) {
        if !self.drop_holding(token, conn, side, "release") {
            return;
        }
        self.let_go(token, conn, side, Gone::Released { abort });
    }

    /// `Reopen`: an end the client holds, mapped afresh.
    fn reopen(&mut self, from: From, conn: u64, side: Side) {
        let From { token, seq, .. } = from;
        let Some(rec) = self.conns.get(&conn).filter(|_| self.holds(token, conn, side)) else {
            self.fail(token, seq, ErrorCode::NoSuchConnection);
            return;
        };
        let (info, fds) = rec.fresh_end(side);
        if let Err(e) = send_to(&mut self.clients, &mut self.watch, token, seq, &Response::Reopened(info), &fds) {
            self.doom(token, undeliverable("cannot reply", &e));
        }
    }

    /// `Serve`: `token` accepts on `listener`, a listener a fork shared;
    /// with its own bell for it, standbys may be issued to it.
    fn serve_listener(&mut self, token: u64, listener: u64, bell: Option<OwnedFd>) {
        if self.registry.serve(token, listener) {
            if let Some(bell) = bell.filter(is_eventfd) {
                // The first one stays: connectors were sent that one.
                self.listener_bells.entry((token, listener)).or_insert(bell);
            }
            self.take_from_idle(token, listener);
            self.rehome_parked();
        } else {
            log!(Level::Warn, "msg=\"serve of a listener not held\" client={token} listener={listener}");
        }
    }

    /// `Stop`: only the monitor's own user (or root) may stop it.
    fn stop(&mut self, from: From) {
        let From { token, seq, pid, uid } = from;
        if uid == self.uid || uid == 0 {
            log!(Level::Info, "msg=\"stop requested\" pid={pid}");
            self.reply(token, seq, &Response::Ok, &[]);
            self.running = false;
        } else {
            self.fail(token, seq, ErrorCode::NotOwner);
        }
    }
}
