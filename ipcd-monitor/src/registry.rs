//! The ipcd listeners of this monitor and how a connect's destination finds
//! one, the way the kernel's socket lookup would: an exact address beats a
//! wildcard of the same family, which beats a dual-stack `::` listener;
//! IPv4-mapped IPv6 addresses count as IPv4; wildcards match only this
//! host's own addresses; an `SO_REUSEPORT` group takes turns.

use std::net::IpAddr;

use ipcd_proto::{ListenFlags, SockAddr};

/// One registered listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The client (control channel) that registered it.
    pub owner: u64,
    /// The client's id for it.
    pub id: u64,
    /// Owning process and user.
    pub pid: u32,
    /// Owning user.
    pub uid: u32,
    /// Bound address as the kernel reported it.
    pub addr: SockAddr,
    /// `listen` backlog.
    pub backlog: u32,
    /// Port-sharing options.
    pub flags: ListenFlags,
    /// Brokered connections not yet accepted.
    pub pending: u32,
    /// Forked children (their clients) that hold the kernel socket too. A
    /// child leaves the list when it closes its copy, or its image (exec
    /// with the socket close-on-exec) or its process ends.
    pub sharers: Vec<u64>,
    /// Of the owner and the sharers, those that said they accept on it
    /// (`Serve`) since it became shared: connects are handed to them in
    /// turn. A process that holds the socket but never accepts (a child
    /// that went on to other work) must not be handed any, or they would
    /// wait for ever where the kernel's shared queue would have let
    /// another process take them.
    pub servers: Vec<u64>,
    /// Whose turn among `servers` is next.
    pub turn: usize,
    /// Handed on from an owner that left (see [`Registry::disown`]): its
    /// new owner, a child that inherited it, may not accept either (a
    /// daemon's master), so only `servers` are handed connects.
    pub handed_on: bool,
    /// The kernel socket's inode (0: unknown): a process that registers
    /// the same socket under the same id inherited it across fork and
    /// exec, and shares it (see [`Registry::share_inherited`]).
    pub inode: u64,
    /// `TCP_DEFER_ACCEPT` of the listening socket, in seconds (0: none):
    /// its connections are announced once their connector wrote.
    pub defer_secs: u32,
}

impl Listener {
    /// A listener registered by `owner` under `id`, not shared yet.
    pub fn new(owner: u64, id: u64, pid: u32, uid: u32, addr: SockAddr, backlog: u32, flags: ListenFlags) -> Self {
        Listener {
            owner,
            id,
            pid,
            uid,
            addr,
            backlog,
            flags,
            pending: 0,
            sharers: Vec::new(),
            servers: Vec::new(),
            turn: 0,
            handed_on: false,
            defer_secs: 0,
            inode: 0,
        }
    }

    /// Whether other processes hold the kernel socket too.
    pub fn is_shared(&self) -> bool {
        !self.sharers.is_empty()
    }

    /// The client a connect is handed to: the owner while no other
    /// process holds the listener; while others do (or it was handed on),
    /// the servers in turn, and none (the kernel takes the connect, and
    /// hands it to whichever process accepts) while none has said it
    /// serves. The owner too must say so then: it may be a master that
    /// never accepts.
    pub fn acceptor(&mut self) -> Option<u64> {
        if !self.is_shared() && !self.handed_on {
            return Some(self.owner);
        }
        if self.servers.is_empty() {
            return None;
        }
        self.turn = self.turn.wrapping_add(1);
        Some(self.servers[self.turn % self.servers.len()])
    }
}

/// All listeners.
#[derive(Debug, Default)]
pub struct Registry {
    entries: Vec<Listener>,
    turn: usize,
}

/// An address reduced to what matching needs: mapped IPv6 is IPv4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ip {
    V4([u8; 4]),
    V6([u8; 16]),
}

fn norm(a: &SockAddr) -> Ip {
    match *a {
        SockAddr::V4 { ip, .. } => Ip::V4(ip),
        SockAddr::V6 { ip, .. } => match IpAddr::from(ip) {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Ip::V4(v4.octets()),
                None => Ip::V6(ip),
            },
            IpAddr::V4(_) => unreachable!("from [u8; 16] is always V6"),
        },
    }
}

impl Ip {
    fn unspecified(self) -> bool {
        match self {
            Ip::V4(ip) => ip == [0; 4],
            Ip::V6(ip) => ip == [0; 16],
        }
    }
    fn to_std(self) -> IpAddr {
        match self {
            Ip::V4(ip) => IpAddr::from(ip),
            Ip::V6(ip) => IpAddr::from(ip),
        }
    }
}

/// How well listener address `l` matches destination `d` (0: not at all).
fn score(l: &Listener, d: Ip, is_local: &mut impl FnMut(IpAddr) -> bool) -> u8 {
    let la = norm(&l.addr);
    let v6_wild = matches!(l.addr, SockAddr::V6 { ip, .. } if ip == [0; 16]);
    match (la, d) {
        _ if la == d => 4,
        (Ip::V4(_), Ip::V4(_)) | (Ip::V6(_), Ip::V6(_)) if la.unspecified() && is_local(d.to_std()) => 2,
        (Ip::V6(_), Ip::V4(_)) if v6_wild && !l.flags.contains(ListenFlags::V6ONLY) && is_local(d.to_std()) => 1,
        _ => 0,
    }
}

impl Registry {
    /// `child` forked from `parent`: it holds every listener `parent` held.
    pub fn mark_forked(&mut self, parent: u64, child: u64) {
        for l in self.entries.iter_mut().filter(|l| l.owner == parent || l.sharers.contains(&parent)) {
            if !l.sharers.contains(&child) {
                l.sharers.push(child);
            }
        }
    }

    /// `client` no longer holds listener `id` (any, if `None`) it shared
    /// after a fork; returns whether it held one.
    pub fn unshare(&mut self, client: u64, id: Option<u64>) -> bool {
        let mut any = false;
        for l in self.entries.iter_mut().filter(|l| id.is_none_or(|id| l.id == id)) {
            let before = l.sharers.len();
            l.sharers.retain(|&t| t != client);
            l.servers.retain(|&t| t != client);
            any |= l.sharers.len() != before;
        }
        any
    }

    /// `client`, an image exec'd after a fork, registers listener `id`
    /// at `addr` again, and it is the kernel socket (`inode`) another
    /// process registered under that id: `client` shares it, as the child
    /// did before it exec'd, instead of replacing it as stale. Returns
    /// whether it did.
    pub fn share_inherited(&mut self, client: u64, id: u64, addr: &SockAddr, inode: u64) -> bool {
        let Some(l) = self
            .entries
            .iter_mut()
            .find(|l| inode != 0 && l.inode == inode && l.id == id && l.addr == *addr && l.owner != client)
        else {
            return false;
        };
        if !l.sharers.contains(&client) {
            l.sharers.push(client);
        }
        true
    }

    /// `client` accepts on listener `id`, which it holds as its owner or
    /// a sharer; returns whether it holds one.
    pub fn serve(&mut self, client: u64, id: u64) -> bool {
        let mut any = false;
        for l in self.entries.iter_mut().filter(|l| l.id == id && (l.owner == client || l.sharers.contains(&client))) {
            if !l.servers.contains(&client) {
                l.servers.push(client);
            }
            any = true;
        }
        any
    }

    /// Registers a listener whose ownership was already proven. A listener
    /// at the same address that is not in a reuseport group with it is
    /// stale (the kernel let the new one bind, so the old one is gone) and
    /// is replaced; the replaced entries are returned.
    pub fn add(&mut self, l: Listener) -> Vec<Listener> {
        let group = |a: &Listener| {
            a.flags.contains(ListenFlags::REUSEPORT) && l.flags.contains(ListenFlags::REUSEPORT) && a.uid == l.uid
        };
        let (stale, keep): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.entries).into_iter().partition(|a| a.addr == l.addr && !group(a));
        self.entries = keep;
        self.entries.push(l);
        stale
    }

    /// `owner` lets go of its listener `id` (of every one, if `None`):
    /// each is removed, or, when forked children still hold the kernel
    /// socket, handed to the first of them (a daemon that listened, forked
    /// and exited goes on in the child). Returns how many it owned, and
    /// the (id, new owner) of those handed on.
    pub fn disown(&mut self, owner: u64, id: Option<u64>) -> (usize, Vec<(u64, u64)>) {
        let (mut owned, mut handed) = (0, Vec::new());
        self.entries.retain_mut(|l| {
            if l.owner != owner || id.is_some_and(|id| l.id != id) {
                return true;
            }
            owned += 1;
            l.servers.retain(|&t| t != owner);
            if l.sharers.is_empty() {
                return false;
            }
            l.owner = l.sharers.remove(0);
            l.handed_on = true;
            handed.push((l.id, l.owner));
            true
        });
        (owned, handed)
    }

    /// Lets go of every listener of a client (see [`Registry::disown`]),
    /// and of its share of others'.
    pub fn remove_owner(&mut self, owner: u64) -> (usize, Vec<(u64, u64)>) {
        self.unshare(owner, None);
        self.disown(owner, None)
    }

    /// The listener a connect to `dest` reaches, if any.
    pub fn lookup(&mut self, dest: &SockAddr, mut is_local: impl FnMut(IpAddr) -> bool) -> Option<&mut Listener> {
        let d = norm(dest);
        let port = dest.port();
        let mut best = 0;
        let mut group: Vec<usize> = Vec::new();
        for (i, l) in self.entries.iter().enumerate() {
            if l.addr.port() != port {
                continue;
            }
            let s = score(l, d, &mut is_local);
            if s > best {
                best = s;
                group.clear();
            }
            if s == best && s > 0 && group.first().is_none_or(|&g| self.entries[g].addr == l.addr) {
                group.push(i);
            }
        }
        if group.is_empty() {
            return None;
        }
        self.turn = self.turn.wrapping_add(1);
        let pick = group[self.turn % group.len()];
        self.entries.get_mut(pick)
    }

    /// The listener registered by `owner` under `id`.
    pub fn get(&self, owner: u64, id: u64) -> Option<&Listener> {
        self.entries.iter().find(|l| l.owner == owner && l.id == id)
    }

    /// The listener `owner` registered as `id`, to change.
    pub fn get_mut(&mut self, owner: u64, id: u64) -> Option<&mut Listener> {
        self.entries.iter_mut().find(|l| l.owner == owner && l.id == id)
    }

    /// Every listener.
    pub fn iter(&self) -> impl Iterator<Item = &Listener> {
        self.entries.iter()
    }

    /// Number of listeners.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No listeners.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(ip: [u8; 4], port: u16) -> SockAddr {
        SockAddr::V4 { ip, port }
    }
    fn v6(ip: [u8; 16], port: u16) -> SockAddr {
        SockAddr::V6 { ip, port, flowinfo: 0, scope_id: 0 }
    }
    fn mapped(ip: [u8; 4]) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&ip);
        m
    }
    const LOOP6: [u8; 16] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const HOST: [u8; 4] = [10, 1, 2, 3];

    fn listener(owner: u64, addr: SockAddr, flags: ListenFlags) -> Listener {
        Listener::new(owner, owner, owner as u32, 1000, addr, 16, flags)
    }

    fn local(ip: IpAddr) -> bool {
        ip.is_loopback() || ip == IpAddr::from(HOST)
    }

    fn owner_for(r: &mut Registry, dest: SockAddr) -> Option<u64> {
        r.lookup(&dest, local).map(|l| l.owner)
    }

    #[test]
    fn exact_beats_wildcard_and_ports_must_match() {
        let mut r = Registry::default();
        r.add(listener(1, v4([0, 0, 0, 0], 80), ListenFlags::empty()));
        r.add(listener(2, v4([127, 0, 0, 1], 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 80)), Some(2));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 2], 80)), Some(1));
        assert_eq!(owner_for(&mut r, v4(HOST, 80)), Some(1));
        assert_eq!(owner_for(&mut r, v4([0, 0, 0, 0], 80)), Some(1), "connect to 0.0.0.0 is local");
        assert_eq!(owner_for(&mut r, v4([8, 8, 8, 8], 80)), None, "not this host");
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 81)), None);
    }

    #[test]
    fn mapped_addresses_are_ipv4() {
        let mut r = Registry::default();
        r.add(listener(1, v4([127, 0, 0, 1], 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v6(mapped([127, 0, 0, 1]), 80)), Some(1));
        let mut r = Registry::default();
        r.add(listener(1, v6(mapped([127, 0, 0, 1]), 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 80)), Some(1));
    }

    #[test]
    fn dual_stack_wildcard_takes_ipv4_unless_v6only() {
        let mut r = Registry::default();
        r.add(listener(1, v6([0; 16], 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 80)), Some(1));
        assert_eq!(owner_for(&mut r, v6(LOOP6, 80)), Some(1));
        // An IPv4 wildcard on the same port is preferred for IPv4.
        r.add(listener(2, v4([0, 0, 0, 0], 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 80)), Some(2));
        assert_eq!(owner_for(&mut r, v6(LOOP6, 80)), Some(1));
        let mut r = Registry::default();
        r.add(listener(1, v6([0; 16], 80), ListenFlags::V6ONLY));
        assert_eq!(owner_for(&mut r, v4([127, 0, 0, 1], 80)), None);
        // An IPv4 listener never takes IPv6.
        let mut r = Registry::default();
        r.add(listener(1, v4([0; 4], 80), ListenFlags::empty()));
        assert_eq!(owner_for(&mut r, v6(LOOP6, 80)), None);
    }

    #[test]
    fn reuseport_groups_take_turns_and_others_replace() {
        let mut r = Registry::default();
        let a = v4([127, 0, 0, 1], 80);
        r.add(listener(1, a, ListenFlags::REUSEPORT));
        r.add(listener(2, a, ListenFlags::REUSEPORT));
        r.add(listener(3, a, ListenFlags::REUSEPORT));
        let mut seen: Vec<u64> = (0..6).filter_map(|_| owner_for(&mut r, a)).collect();
        seen.sort();
        assert_eq!(seen, [1, 1, 2, 2, 3, 3], "each member gets its turn");
        // A member of another user cannot join: the old group is stale.
        let mut other = listener(4, a, ListenFlags::REUSEPORT);
        other.uid = 1001;
        assert_eq!(r.add(other).len(), 3);
        assert_eq!(owner_for(&mut r, a), Some(4));
        assert_eq!(r.remove_owner(4), (1, vec![]));
        assert!(r.is_empty());
    }

    #[test]
    fn a_listener_is_shared_while_a_forked_child_holds_it() {
        let mut r = Registry::default();
        r.add(listener(1, v4([127, 0, 0, 1], 80), ListenFlags::empty()));
        let shared = |r: &mut Registry| r.lookup(&v4([127, 0, 0, 1], 80), local).is_some_and(|l| l.is_shared());
        assert!(!shared(&mut r));
        // 1 forks 7, and 7 forks 8: both hold the socket.
        r.mark_forked(1, 7);
        r.mark_forked(7, 8);
        assert!(shared(&mut r));
        assert!(!r.unshare(7, Some(2)), "another listener id");
        assert!(r.unshare(7, Some(1)), "7 closed its copy");
        assert!(shared(&mut r), "8 still holds it");
        assert_eq!(r.remove_owner(8), (0, vec![]), "8 owned nothing");
        assert!(!shared(&mut r), "8 went away");
        assert!(!r.unshare(8, None));
    }

    #[test]
    fn a_shared_listener_hands_connects_only_to_processes_that_serve_it() {
        let mut r = Registry::default();
        let addr = v4([127, 0, 0, 1], 80);
        r.add(listener(1, addr, ListenFlags::empty()));
        let acceptor = |r: &mut Registry| r.lookup(&addr, local).and_then(Listener::acceptor);
        assert_eq!(acceptor(&mut r), Some(1), "not shared: the owner");
        r.mark_forked(1, 7);
        r.mark_forked(1, 8);
        assert_eq!(acceptor(&mut r), None, "shared, nobody serves yet: the kernel");
        assert!(!r.serve(9, 1), "9 does not hold it");
        assert!(r.serve(7, 1));
        assert_eq!(acceptor(&mut r), Some(7));
        assert!(r.serve(8, 1));
        assert!(r.serve(8, 1), "a second Serve changes nothing");
        let mut seen: Vec<u64> = (0..4).filter_map(|_| acceptor(&mut r)).collect();
        seen.sort_unstable();
        assert_eq!(seen, [7, 7, 8, 8], "in turn");
        r.unshare(7, Some(1));
        assert_eq!((acceptor(&mut r), acceptor(&mut r)), (Some(8), Some(8)), "7 closed its copy");
        r.unshare(8, None);
        assert_eq!(acceptor(&mut r), Some(1), "no sharers left: the owner again");
    }

    #[test]
    fn a_listener_whose_owner_leaves_goes_to_a_child_that_holds_it() {
        let mut r = Registry::default();
        let addr = v4([127, 0, 0, 1], 80);
        r.add(listener(1, addr, ListenFlags::empty()));
        r.add(listener(2, v4([127, 0, 0, 1], 81), ListenFlags::empty()));
        r.mark_forked(1, 7);
        assert_eq!(r.remove_owner(1), (1, vec![(1, 7)]), "1 listened, forked 7 and left");
        let l = r.lookup(&addr, local).expect("still listening");
        assert_eq!((l.owner, l.sharers.is_empty()), (7, true));
        assert_eq!(l.acceptor(), None, "7 has not said it serves");
        assert!(r.serve(7, 1));
        assert_eq!(r.lookup(&addr, local).and_then(Listener::acceptor), Some(7));
        assert_eq!(r.disown(7, Some(1)), (1, vec![]), "7 closes it: gone");
        assert!(r.lookup(&addr, local).is_none());
        assert_eq!(r.disown(2, Some(2)), (1, vec![]));
    }
}
