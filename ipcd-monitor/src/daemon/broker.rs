//! Brokering a connect: the listener it reaches, the segment it gets
//! (new or from the pair's pool), and its delivery to an acceptor.

use ipcd_proto::channel::ChannelError;
use ipcd_proto::message::{ConnInfo, Fallback, Response, Side};
use ipcd_proto::SockAddr;
use ipcd_ring::ConnSegment;

use super::{peer_closed, port_zero, send_to, undeliverable, ConnRec, Daemon, NewConn, Pooled};
use crate::log;
use crate::log::Level;
use crate::registry::Listener;
use crate::segment::SharedSegment;

impl Daemon {
    /// A port for a connector at `source` (port 0) to `dest`: one of the
    /// ephemeral range no other ipcd connection from that address to
    /// `dest` uses. The kernel's connect shares a local port across
    /// destinations the same way when bind finds none free.
    pub(super) fn assign_port(&mut self, source: SockAddr, dest: SockAddr) -> SockAddr {
        let (lo, hi) = ephemeral_range();
        let span = u32::from(hi - lo) + 1;
        for _ in 0..span {
            let p = lo + ((u32::from(self.next_port) % span) as u16);
            self.next_port = self.next_port.wrapping_add(1);
            let candidate = source.with_port(p);
            if !self.conns.values().any(|c| c.info[0].local == candidate && c.info[0].peer == dest) {
                return candidate;
            }
        }
        // Every port of the range is taken towards `dest`: as many as the
        // kernel could have made; reuse the first (names only, no clash).
        source.with_port(lo)
    }

    /// The listener a connect to `dest` reaches, if any.
    pub(super) fn listener_for(&mut self, dest: &SockAddr) -> Option<Listener> {
        let local = &mut self.local;
        self.registry.lookup(dest, |ip| local.is_local(ip)).cloned()
    }

    pub(super) fn broker(
        &mut self,
        token: u64,
        seq: u32,
        pid: u32,
        uid: u32,
        dest: SockAddr,
        source: Option<SockAddr>,
    ) {
        let mut found = self.listener_for(&dest);
        // A listener's owner reports its accepts on its own channel, which
        // this loop may read after a connect sent later (the owner
        // accepted, then told the connector through a pipe): before a full
        // backlog sends the connector to the kernel, read what the owner
        // has sent so far. Once, not nested: a connect met while catching
        // up is judged on what is known.
        if let Some(owner) =
            found.as_ref().filter(|l| self.queue_full(l) && l.owner != token && !self.catching_up).map(|l| l.owner)
        {
            self.catching_up = true;
            // Everything it has sent so far, bounded so that a flooding
            // owner cannot hold the connect forever.
            self.serve(owner, 256);
            self.catching_up = false;
            found = self.listener_for(&dest);
        }
        // Whose accept queue it joins: the owner's, or a sharer's that
        // serves it (see `Listener::acceptor`).
        let acceptor = found.as_ref().and_then(|l| self.registry.get_mut(l.owner, l.id)).and_then(Listener::acceptor);
        let fallback = match &found {
            None => Some(Fallback::NoListener),
            Some(l) if l.flags.contains(ipcd_proto::ListenFlags::KERNEL) => Some(Fallback::Rule),
            Some(l) if l.uid != uid && !self.cfg.cross_uid => Some(Fallback::OtherUser),
            Some(_) if acceptor.is_none() => Some(Fallback::Disabled),
            Some(_) => None,
        };
        if let Some(reason) = fallback {
            log!(Level::Debug, "msg=\"use kernel\" pid={pid} dest={dest} reason={reason:?}");
            return self.use_kernel(token, seq, reason);
        }
        let (l, acceptor) = (found.expect("checked above"), acceptor.expect("checked above"));
        // A full queue: the connect waits for room, as a client whose SYN
        // the kernel dropped (see `admit_waiting`).
        let waiting = self.queue_full(&l);
        let conn = self.next_conn;
        let pair = (token, acceptor);
        let Some((segment, seg, reused)) = self.take_segment(pair, conn) else {
            return self.use_kernel(token, seq, Fallback::NoMemory);
        };
        self.next_conn += 1;
        let a_addr = match source {
            // The connector could not reserve a port (ephemeral ports ran
            // out for bind, which the kernel's connect would share across
            // destinations): one unique for this destination, as connect's.
            Some(s) if s.port() == 0 => self.assign_port(s, dest),
            Some(s) => s,
            None => port_zero(dest),
        };
        let info_a =
            ConnInfo { conn, side: Side::A, local: a_addr, peer: dest, segment_len: seg.len() as u64, segment, reused };
        let new = NewConn { token, acceptor, listener: (l.owner, l.id), seg, info_a, defer: l.defer_secs, waiting };
        // Sent before the answer: the connector, woken by the answer,
        // often runs before the rest of this, and its next connect would
        // find no standby yet. A pair with a pool has had a connection
        // before. None for a deferring listener: a standby reaches the
        // acceptor before any data.
        // Nor beyond the queue's room: a standby is used without asking,
        // and each one used joins the queue.
        // Counting this listener's standbys walks every standby: only when
        // all of them together could fill its room (not on each connect).
        let free = u64::from(l.backlog).saturating_sub(u64::from(l.pending));
        let room = free > self.standbys.len() as u64
            || (self.standbys.values().filter(|s| s.listener == (l.owner, l.id)).count() as u64) < free;
        if l.defer_secs == 0 && !waiting && room {
            self.issue_standby(token, (l.owner, l.id), dest, reused || self.pools.contains_key(&pair));
        }
        self.deliver(new, Some(seq));
    }

    /// Answers connect request `seq` of `token` with `UseKernel`, counted
    /// with its reason.
    fn use_kernel(&mut self, token: u64, seq: u32, reason: Fallback) {
        self.count_fallbacks(token, reason, 1);
        self.reply(token, seq, &Response::UseKernel { reason }, &[]);
    }

    /// `n` connects of `token` went to the kernel for `reason`.
    pub(super) fn count_fallbacks(&mut self, token: u64, reason: Fallback, n: u64) {
        self.fallbacks_total += n;
        self.fallbacks[reason.index()] += n;
        if let Some(c) = self.clients.get_mut(&token) {
            c.to_kernel += n;
        }
    }

    /// A segment for a new connection `conn` between `pair`: one of the
    /// pair's pool, made fresh for it (`true`: both ends map it already),
    /// else a new one. `None` when none can be made.
    pub(super) fn take_segment(&mut self, pair: (u64, u64), conn: u64) -> Option<(u64, SharedSegment, bool)> {
        if let Some(p) = self.pools.get_mut(&pair).and_then(Vec::pop) {
            let mut seg = p.seg;
            seg.reuse(conn);
            return Some((p.id, seg, true));
        }
        match SharedSegment::create(conn, self.cfg.ring_bytes) {
            Ok(seg) => {
                self.next_segment += 1;
                Some((self.next_segment - 1, seg, false))
            }
            Err(e) => {
                log!(Level::Error, "msg=\"cannot create segment\" err=\"{e}\"");
                None
            }
        }
    }

    /// Records connection `new` and tells its acceptor (`Incoming`). The
    /// connector waits for its answer (`Connected`) when `answer` is its
    /// request's sequence number; otherwise it took a standby and has it.
    // Long on purpose: the order of the two answers, the fallback and the records is the
    // protocol, step by step as the comments say; split, it would hide that order.
    pub(super) fn deliver(&mut self, new: NewConn, answer: Option<u32>) {
        let NewConn { token, acceptor, listener: (owner, id), seg, info_a, defer, waiting } = new;
        if waiting {
            // Before the connector can look: it waits, nothing sent or read.
            seg.view().set_admission(ipcd_ring::Admission::Waiting);
        }
        // Told later: when admitted (`admit_waiting`) or when data comes (`defer`).
        let later = waiting || defer > 0;
        let (conn, segment, reused) = (info_a.conn, info_a.segment, info_a.reused);
        let pair = (token, acceptor);
        let info_b = ConnInfo { side: Side::B, local: info_a.peer, peer: info_a.local, ..info_a };
        // Named before either end can run: should this monitor die, a
        // survivor judges from these names whether its peer did too.
        let pid_of = |t: u64| self.clients.get(&t).map_or(0, |c| c.pid);
        seg.name_holders([pid_of(token), pid_of(acceptor)]);
        // A reused segment is already mapped at both ends.
        let fds = [seg.fd()];
        let n = usize::from(!reused);
        // The listener first: its `Incoming` is in its channel before the
        // connector can make its next connection, which a standby may
        // carry, so the acceptor that reads its channel sees them in the
        // order they were made (as Linux's accept queue gives them); and
        // a connection it cannot take still gets the kernel's answer. A
        // process connecting to itself is answered first: both come on one
        // channel, and at its fd limit the `Incoming`'s segment would take
        // the fd its connect needs (its accept then fails with `EMFILE`,
        // as it should); it reads the `Incoming` before its next accept.
        let answered = match answer {
            None => true,
            // One told later is answered at once.
            Some(seq) if later || token == acceptor => {
                self.reply(token, seq, &Response::Connected(info_a), &fds[..n]);
                true
            }
            Some(_) => false,
        };
        let to_pid = self.clients.get(&acceptor).map_or(0, |c| c.pid);
        // A standby's acceptor was told when it was issued (`Expect`).
        // A busy acceptor's channel may be full: the connection then waits
        // in its outbox, as in an accept queue (bounded by the backlog).
        let sent = match (answer, self.clients.contains_key(&acceptor)) {
            (None, true) => Ok(()),
            (Some(_), true) if later => Ok(()),
            (Some(_), true) => {
                seg.view().offer(to_pid);
                let incoming = Response::Incoming { listener: id, info: info_b, at: super::monotonic_ns() };
                send_to(&mut self.clients, &mut self.watch, acceptor, 0, &incoming, &fds[..n])
            }
            (_, false) => Err(ChannelError::Closed),
        };
        if let Err(e) = &sent {
            log!(Level::Warn, "msg=\"listener cannot take a connection\" pid={to_pid} err=\"{e}\"");
            if !e.is_would_block() {
                self.doom(acceptor, undeliverable("cannot deliver", e));
            }
        }
        if let (Err(e), false, Some(seq)) = (&sent, answered, answer) {
            // A full channel is a full accept queue; a closed one, a
            // listener whose process went.
            let reason = if e.is_would_block() { Fallback::BacklogFull } else { Fallback::NoListener };
            self.use_kernel(token, seq, reason);
            if reused {
                // Both still map it; a dropped listener's pool is emptied
                // (and the connector told to forget it) with its client.
                self.pools.entry(pair).or_default().push(Pooled { id: segment, seg });
            }
            return;
        }
        if let Some(entry) = self.registry.get_mut(owner, id).filter(|_| !waiting) {
            entry.pending += 1;
        }
        if let (false, Some(seq)) = (answered, answer) {
            self.reply(token, seq, &Response::Connected(info_a), &fds[..n]);
        }
        self.connects_total += 1;
        self.reused_total += u64::from(reused);
        self.standby_total += u64::from(answer.is_none());
        log!(Level::Debug, "msg=brokered conn={conn} to_pid={to_pid} dest={}", info_a.peer);
        // An acceptor that closed its channel is dropped with the rest of
        // what it held, as one that died or exec'd (its new image is sent
        // the connection again, see `requeue_after_exec`): it holds this
        // end as if it had been told.
        let held = match &sent {
            Ok(()) => true,
            Err(e) => peer_closed(e) && self.clients.contains_key(&acceptor),
        };
        for (t, side) in [(token, Side::A), (acceptor, Side::B)] {
            if let Some(c) = self.clients.get_mut(&t).filter(|_| side == Side::A || held) {
                c.holdings.push((conn, side));
            }
        }
        let rec = ConnRec {
            seg,
            info: [info_a, info_b],
            holders: [vec![token], vec![acceptor]],
            gone: [false; 2],
            pending_in: Some((owner, id)),
            waits: waiting,
            pair,
            kept: [false; 2],
            recyclable: true,
            relays: [0; 2],
            refill: answer.is_none().then_some(((owner, id), info_a.peer)),
        };
        self.conns.insert(conn, rec);
        self.show_tracers(conn);
        if waiting && held {
            self.waiting.push_back(conn);
            return;
        }
        if defer > 0 && held {
            self.defer(conn, defer);
            return;
        }
        // Answered, but the acceptor could not be told (its channel full
        // or broken): it goes to another process serving the listener if
        // there is one, else its end goes as a dead acceptor's would (the
        // connector reads end of stream or a reset, and is told `PeerGone`).
        if !held && !self.hand_on(acceptor, conn) {
            self.release(acceptor, conn, Side::B, true);
        }
    }
}

/// The kernel's ephemeral port range (`ip_local_port_range`).
fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse::<u16>().ok());
    match (it.next().flatten(), it.next().flatten()) {
        (Some(lo), Some(hi)) if lo > 0 && lo <= hi => (lo, hi),
        _ => (32768, 60999),
    }
}
