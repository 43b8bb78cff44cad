//! epoll over a mix of ipcd sockets and kernel fds.
//!
//! The kernel epoll instance stays the program's; its kernel fds are in it
//! as usual. Our fds are kept beside it, in user space, with their events
//! and data: their readiness comes from the rings. To sleep on both at
//! once, the wake-up sources of our fds (for streams the instance's own
//! doorbell, which a wait names in their rings; for listeners the kernel
//! fd, the control channel and the listener's bell) are added to the
//! kernel instance under tagged data that `epoll_wait` never hands to the
//! program.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;

use libc::{c_int, epoll_event};

use crate::conn::bell::Bell;
use crate::conn::wait::{Nap, Next, Rounds};
use crate::control;
use crate::ready::readiness::{self, Kind};
use crate::socket::stream::Edge;
use crate::socket::table::TABLE_LEN;
use crate::socket::Socket;
use crate::sys::process::Pinned;
use crate::sys::real;

/// High bits of the data of our own entries in a kernel epoll set. A
/// program's data never looks like this in practice (pointers on x86-64
/// and AArch64 Linux stay below 2^48; small integers far below).
const TAG: u64 = 0x1bcd_0000_0000_0000;
const TAG_MASK: u64 = 0xffff_0000_0000_0000;

/// What a tagged entry is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Source {
    Channel = 2,
    Events = 3,
    Kernel = 4,
    Wake = 5,
}

fn tag(src: Source, fd: c_int) -> u64 {
    TAG | (src as u64) << 32 | fd as u32 as u64
}

fn untag(data: u64) -> Option<(u64, c_int)> {
    (data & TAG_MASK == TAG).then_some(((data >> 32) & 0xffff, data as u32 as c_int))
}

/// One of our fds in a set.
struct Member {
    fd: c_int,
    sock: Arc<Socket>,
    events: u32,
    data: u64,
    /// `EPOLLONESHOT` fired: silent until `EPOLL_CTL_MOD`.
    disarmed: bool,
    /// For edge-triggered entries: the mask and the received-bytes count
    /// last reported, so an event is reported once per change.
    last_mask: u32,
    last_edge: Edge,
    /// The kernel's readiness of a listener's or a not-yet-connected
    /// socket's kernel fd, as last asked (asking costs a system call).
    kernel_cache: u32,
}

/// The user-space part of one epoll instance.
#[derive(Default)]
pub(crate) struct EpollSet {
    /// Some fd of ours was ever added: waits take our path.
    used: AtomicBool,
    members: Mutex<Vec<Member>>,
    /// Tagged fds in the kernel instance, with the serial of the socket they
    /// belong to: an fd number (and a socket's address) may be reused by a
    /// later socket whose fd the kernel instance has never seen — an
    /// identity by address once skipped registering a new connection's
    /// doorbell, and nginx stalled until its send timeout.
    sources: Mutex<HashMap<c_int, (Source, u64)>>,
    /// Where the next scan starts, so no member starves the others.
    cursor: AtomicUsize,
    /// The instance's own doorbell: a wait names it in the rings of its
    /// stream members (see `wait`), whose peers then ring it.
    waker: OnceLock<Option<Arc<Bell>>>,
}

impl EpollSet {
    fn waker(&self) -> Option<&Arc<Bell>> {
        self.waker.get_or_init(|| Bell::new().map(Arc::new)).as_ref()
    }

    /// The doorbell's registered id (`None`: no monitor; waits nap).
    fn waker_id(&self) -> Option<u64> {
        self.waker()?.id()
    }

    /// The doorbell's id if it was registered (nothing named it otherwise).
    fn registered_id(&self) -> Option<u64> {
        self.waker.get()?.as_ref()?.registered()
    }
}

impl Drop for EpollSet {
    /// The instance is gone: its doorbell leaves the rings it was named in.
    fn drop(&mut self) {
        let me = self.registered_id();
        if me.is_some() {
            for m in self.members.get_mut().unwrap_or_else(|p| p.into_inner()).iter() {
                readiness::unname(&m.sock, me);
            }
        }
    }
}

/// Every epoll fd we know of, each to its instance's user-space part: the
/// part belongs to the instance, not the fd, since a program may add
/// through one fd and wait through a dup of it (mio's `Registry::try_clone`,
/// so every tokio program, does).
static SETS: Mutex<Option<HashMap<c_int, Arc<EpollSet>>>> = Mutex::new(None);
/// Which fds are in `SETS`: close and dup of other fds pay one load.
static KNOWN: [AtomicU64; TABLE_LEN / 64] = [const { AtomicU64::new(0) }; TABLE_LEN / 64];
/// Number of instances with fds of ours: zero keeps epoll_wait of programs
/// without ipcd sockets on the direct path.
static ANY: AtomicUsize = AtomicUsize::new(0);

fn sets() -> MutexGuard<'static, Option<HashMap<c_int, Arc<EpollSet>>>> {
    SETS.lock().unwrap_or_else(|p| p.into_inner())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One set's locks held across a fork (guards before the set they borrow).
struct HeldSet {
    _sources: MutexGuard<'static, HashMap<c_int, (Source, u64)>>,
    _members: MutexGuard<'static, Vec<Member>>,
    set: Pinned<EpollSet>,
}

/// Every epoll lock of ours, held by a forking thread (see `fork`): the
/// map, then each set's members and sources, the order the waits use.
/// Released in reverse (fields drop in order).
pub(crate) struct ForkLock {
    _sets: Vec<HeldSet>,
    _map: MutexGuard<'static, Option<HashMap<c_int, Arc<EpollSet>>>>,
}

/// Takes every epoll lock for a fork.
pub(crate) fn lock_for_fork() -> ForkLock {
    let map = sets();
    let mut held: Vec<HeldSet> = Vec::new();
    for s in map.iter().flat_map(|m| m.values()) {
        // A set with several names (dups) is locked once.
        if held.iter().any(|h| h.set.addr() == Arc::as_ptr(s) as usize) {
            continue;
        }
        let (set, r) = Pinned::new(s);
        // Members before sources, as `arm` takes them.
        let members = lock(&r.members);
        held.push(HeldSet { _sources: lock(&r.sources), _members: members, set });
    }
    ForkLock { _sets: held, _map: map }
}

fn known_bit(fd: c_int) -> Option<(&'static AtomicU64, u64)> {
    let i = usize::try_from(fd).ok().filter(|&i| i < TABLE_LEN)?;
    Some((&KNOWN[i / 64], 1 << (i % 64)))
}

/// Whether `fd` is an epoll fd we track (one load).
#[inline]
pub(crate) fn is_epoll(fd: c_int) -> bool {
    known_bit(fd).is_some_and(|(w, b)| w.load(Ordering::Relaxed) & b != 0)
}

/// Records `fd` as a name of `set`.
fn insert(map: &mut HashMap<c_int, Arc<EpollSet>>, fd: c_int, set: Arc<EpollSet>) {
    if let Some(old) = map.insert(fd, set) {
        release(old);
    }
    if let Some((w, b)) = known_bit(fd) {
        w.fetch_or(b, Ordering::Relaxed);
    }
}

/// One name of `set` went away: the last one of a used set leaves the count.
fn release(set: Arc<EpollSet>) {
    if Arc::strong_count(&set) == 1 && set.used.load(Ordering::Relaxed) {
        ANY.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The user-space part of `epfd`, if it has fds of ours.
#[inline]
pub(crate) fn get(epfd: c_int) -> Option<Arc<EpollSet>> {
    if ANY.load(Ordering::Relaxed) == 0 {
        return None;
    }
    sets().as_ref()?.get(&epfd).filter(|s| s.used.load(Ordering::Relaxed)).cloned()
}

/// `epoll_create` made `epfd`: a fresh instance.
pub(crate) fn created(epfd: c_int) {
    insert(sets().get_or_insert_with(HashMap::new), epfd, Arc::default());
}

/// The part of `epfd`, made if it is new to us (created before exec, or
/// received), and marked used.
fn get_or_make(epfd: c_int) -> Arc<EpollSet> {
    let mut g = sets();
    let map = g.get_or_insert_with(HashMap::new);
    let set = match map.get(&epfd) {
        Some(s) => Arc::clone(s),
        None => {
            let s = Arc::<EpollSet>::default();
            insert(map, epfd, Arc::clone(&s));
            s
        }
    };
    if !set.used.swap(true, Ordering::Relaxed) {
        ANY.fetch_add(1, Ordering::Relaxed);
    }
    set
}

/// `epfd` was closed (or replaced by dup2).
pub(crate) fn forget(epfd: c_int) {
    let Some((w, b)) = known_bit(epfd) else { return };
    if w.load(Ordering::Relaxed) & b == 0 {
        return;
    }
    w.fetch_and(!b, Ordering::Relaxed);
    let removed = sets().as_mut().and_then(|m| m.remove(&epfd));
    if let Some(set) = removed {
        release(set);
    }
}

/// A stream closed: a set left with no live stream takes its own
/// doorbell out of the kernel instance, as closing a program's fds takes
/// them out (the next stream's wait adds it again): a set of closed fds
/// holds nothing of ours.
pub(crate) fn stream_closed() {
    if ANY.load(Ordering::Relaxed) == 0 {
        return;
    }
    let all: Vec<(c_int, Arc<EpollSet>)> = match sets().as_ref() {
        Some(m) => m.iter().map(|(&fd, s)| (fd, Arc::clone(s))).collect(),
        None => return,
    };
    for (epfd, set) in all {
        let Some(w) = set.waker.get().and_then(|w| w.as_ref()).map(|w| w.fd()) else { continue };
        let members = lock(&set.members);
        if members.iter().any(|m| !closed(&m.sock) && readiness::kind(&m.sock) == Kind::Stream) {
            continue;
        }
        // A set with several names (dups) finds it gone the second time.
        if lock(&set.sources).remove(&w).is_some() {
            // SAFETY: removes our bell from a live epoll instance.
            unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, w, std::ptr::null_mut()) };
        }
    }
}

/// `new` is a dup of `epfd`: another name of the same instance.
pub(crate) fn copied(epfd: c_int, new: c_int) {
    if !is_epoll(epfd) {
        return;
    }
    let mut g = sets();
    let Some(map) = g.as_mut() else { return };
    if let Some(set) = map.get(&epfd).cloned() {
        insert(map, new, set);
    }
}

/// `epoll_ctl` for one of our fds. Returns 0 or an errno.
pub(crate) fn ctl(epfd: c_int, op: c_int, fd: c_int, sock: Arc<Socket>, ev: Option<&epoll_event>) -> Result<(), c_int> {
    if epfd == fd {
        return Err(libc::EINVAL);
    }
    let set = get_or_make(epfd);
    let mut members = lock(&set.members);
    // Members whose socket closed are left to the next wait's scan, which
    // drops them anyway (event loops delete and add fds around every
    // request, as redis-benchmark does; no pass over the set for that).
    let pos = members.iter().position(|m| m.fd == fd && Arc::ptr_eq(&m.sock, &sock));
    match op {
        libc::EPOLL_CTL_ADD => {
            let ev = ev.ok_or(libc::EFAULT)?;
            if pos.is_some() {
                return Err(libc::EEXIST);
            }
            members.push(Member {
                fd,
                sock,
                events: ev.events,
                data: ev.u64,
                disarmed: false,
                last_mask: 0,
                last_edge: Edge::default(),
                kernel_cache: 0,
            });
        }
        libc::EPOLL_CTL_MOD => {
            let ev = ev.ok_or(libc::EFAULT)?;
            let m = &mut members[pos.ok_or(libc::ENOENT)?];
            if ev.events & libc::EPOLLEXCLUSIVE as u32 != 0 {
                return Err(libc::EINVAL);
            }
            m.events = ev.events;
            m.data = ev.u64;
            m.disarmed = false;
            m.last_mask = 0;
        }
        libc::EPOLL_CTL_DEL => {
            // Order does not matter: scans start at a rotating cursor.
            let gone = members.swap_remove(pos.ok_or(libc::ENOENT)?);
            readiness::unname(&gone.sock, set.registered_id());
        }
        _ => return Err(libc::EINVAL),
    }
    Ok(())
}

/// The socket's last fd is gone: its entries leave every set (one load;
/// sets call this for every member on every scan).
fn closed(sock: &Socket) -> bool {
    sock.fd_count() == 0
}

/// The events a member reports now, or 0. `kernel`: ask the kernel about
/// kernel fds now rather than use the last answer.
fn report(m: &mut Member, kernel: bool) -> u32 {
    if m.disarmed {
        return 0;
    }
    let want = m.events | (libc::EPOLLERR | libc::EPOLLHUP) as u32;
    let (kind, mask, edge) = readiness::see(&m.sock);
    let (mask, edge) = match kind {
        Kind::Stream => (mask, edge),
        Kind::Listener(id) => {
            if kernel {
                m.kernel_cache = kernel_mask(m.fd, m.events);
            }
            let mut mask = m.kernel_cache;
            if readiness::listener_pending(id) {
                mask |= libc::EPOLLIN as u32;
            }
            (mask, Edge::default())
        }
        Kind::Kernel => {
            if kernel {
                m.kernel_cache = kernel_mask(m.fd, m.events);
            }
            (m.kernel_cache, Edge::default())
        }
    };
    let mask = mask & want;
    if m.events & libc::EPOLLET as u32 != 0 {
        // Report what is newly set, or anything new from the peer (bytes,
        // FIN, reset) while readable: the moments Linux wakes the socket.
        let fresh = mask & !m.last_mask;
        let more_in =
            (edge.tail, edge.state) != (m.last_edge.tail, m.last_edge.state) && mask & libc::EPOLLIN as u32 != 0;
        // A send that found no room makes the next room an edge, even if
        // the ring drained before we looked.
        let more_out = edge.out != m.last_edge.out && mask & libc::EPOLLOUT as u32 != 0;
        let more = more_in || more_out;
        m.last_mask = mask;
        m.last_edge = edge;
        if fresh == 0 && !more {
            return 0;
        }
    }
    if mask != 0 && m.events & libc::EPOLLONESHOT as u32 != 0 {
        m.disarmed = true;
    }
    mask
}

/// The kernel's readiness of a kernel fd of ours (a listener's own
/// connections, a socket not set up yet), without waiting.
fn kernel_mask(fd: c_int, events: u32) -> u32 {
    let mut p = libc::pollfd { fd, events: (events & 0xffff) as libc::c_short, revents: 0 };
    // SAFETY: one live pollfd, no waiting.
    if unsafe { real::poll(&mut p, 1, 0) } > 0 {
        p.revents as u16 as u32
    } else {
        0
    }
}

impl EpollSet {
    /// Our members' events into `out`; returns how many.
    fn scan(&self, out: &mut [epoll_event], kernel: bool) -> usize {
        let mut members = lock(&self.members);
        members.retain(|m| !closed(&m.sock));
        let n = members.len();
        if n == 0 {
            return 0;
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut k = 0;
        for j in 0..n {
            if k == out.len() {
                break;
            }
            let m = &mut members[(start + j) % n];
            let ev = report(m, kernel);
            if ev != 0 {
                out[k] = epoll_event { events: ev, u64: m.data };
                k += 1;
            }
        }
        k
    }

    /// Makes sure the kernel instance holds every wake-up source of our
    /// members, and arms the streams. `None`: something became ready;
    /// otherwise how long the sleep may last (see `wait::Nap`) and the
    /// listeners it sleeps on, to hold until it ends.
    fn arm(&self, epfd: c_int, me: Option<u64>) -> Option<(Nap, readiness::Asleep)> {
        let members = lock(&self.members);
        let mut sources = lock(&self.sources);
        let mut want: Vec<(c_int, Source, u64, u32)> = Vec::new();
        let mut listeners = Vec::new();
        let mut nap = Nap::None;
        let mut streams = false;
        let mut asleep = readiness::Asleep::default();
        for m in members.iter().filter(|m| !m.disarmed) {
            match readiness::kind(&m.sock) {
                Kind::Stream => match arm_stream(m, me) {
                    Some(a) => {
                        streams = true;
                        nap = nap.max(a.nap);
                    }
                    None => return None,
                },
                // Kernel fds wake us the way the member reports: an
                // edge-triggered one must not wake us for what it reported.
                Kind::Listener(id) => {
                    listeners.push((&m.sock, Kind::Listener(id), m.events));
                    let ev = libc::EPOLLIN as u32 | (m.events & libc::EPOLLET as u32);
                    want.push((m.fd, Source::Kernel, m.sock.serial, ev));
                }
                Kind::Kernel => {
                    let ev = m.events & (0xffff | libc::EPOLLET as u32);
                    want.push((m.fd, Source::Kernel, m.sock.serial, ev));
                }
            }
        }
        if !listeners.is_empty() {
            if let Some(chan) = control::peek(|c| c.fd()) {
                want.push((chan, Source::Channel, 0, libc::EPOLLIN as u32));
            }
            // Listeners' bells, watched, then a last look at their queues:
            // a connection another thread reads after that rings them.
            let watched = readiness::watch_listeners(listeners.into_iter());
            if watched.pending {
                return None;
            }
            asleep = watched.asleep;
            for (serial, bell) in watched.bells {
                // Edge-triggered: connections left waiting (reported, or a
                // member not asking) must not keep waking us; each arrival
                // rings again. The listener's socket keeps the bell open.
                want.push((bell.fd(), Source::Events, serial, (libc::EPOLLIN | libc::EPOLLET) as u32));
            }
        }
        if streams {
            if let Some(w) = self.waker() {
                want.push((w.fd(), Source::Wake, 0, libc::EPOLLIN as u32));
            }
        }
        for (fd, src, id, events) in want {
            if sources.get(&fd) == Some(&(src, id)) {
                continue;
            }
            let mut ev = epoll_event { events, u64: tag(src, fd) };
            // SAFETY: a live event; the fd is ours or the program's kernel fd.
            let mut r = unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if r != 0 && real::errno() == libc::EEXIST {
                // SAFETY: as above.
                r = unsafe { real::epoll_ctl(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
            }
            if r == 0 {
                sources.insert(fd, (src, id));
            }
        }
        Some((nap, asleep))
    }

    /// Handles a tagged event from the kernel instance.
    fn woke(&self, data: u64) {
        let Some((src, fd)) = untag(data) else { return };
        if src == Source::Wake as u64 {
            crate::conn::bell::take(fd);
        } else if src == Source::Channel as u64 {
            let _ = control::with(|c| c.drain());
        }
    }
}

/// Arms a stream member: level-triggered waits for readiness; an
/// edge-triggered one for something new since its last report (readiness
/// already reported must not keep waking it).
fn arm_stream(m: &Member, me: Option<u64>) -> Option<readiness::Armed> {
    if m.events & libc::EPOLLET as u32 != 0 {
        readiness::arm_edge(&m.sock, m.events, m.last_edge, m.last_mask & libc::EPOLLOUT as u32 != 0, me)
    } else {
        readiness::arm(&m.sock, m.events, me)
    }
}

/// The kernel wrote `got` events at `out[at..]`: handles (and drops) our
/// tagged ones and moves the program's down to follow `out[..at]`. Returns
/// the new fill of `out`. Working in the caller's array needs no buffer
/// (one of the caller's size, made per call, was a sixth of redis's time:
/// redis asks for up to 10 128 events).
fn take_kernel(set: &EpollSet, out: &mut [epoll_event], at: usize, got: usize) -> usize {
    let mut fill = at;
    for i in at..at + got {
        let ev = out[i];
        let data = ev.u64;
        if untag(data).is_some() {
            set.woke(data);
        } else {
            out[fill] = ev;
            fill += 1;
        }
    }
    fill
}

/// `epoll_wait`/`epoll_pwait` on a set with our members.
pub(crate) fn wait(
    epfd: c_int,
    set: &EpollSet,
    out: &mut [epoll_event],
    deadline: Option<Instant>,
    sigmask: Option<&libc::sigset_t>,
) -> Result<c_int, c_int> {
    if out.is_empty() {
        return Err(libc::EINVAL);
    }
    // Kernel events go straight into the room `out` has left: an event
    // taken from the kernel and dropped would be lost for edge-triggered
    // and one-shot entries. Our tagged events share the room.
    let mut rounds = Rounds::new();
    loop {
        let look = rounds.kernel_now();
        let mut n = set.scan(out, look);
        if n < out.len() && look {
            let room = &mut out[n..];
            // SAFETY: room for `room.len()` events in the caller's array, no waiting.
            let r = unsafe { real::epoll_wait(epfd, room.as_mut_ptr(), room.len() as c_int, 0) };
            if r < 0 {
                return Err(real::errno());
            }
            n = take_kernel(set, out, n, r as usize);
        }
        if n > 0 {
            return Ok(n as c_int);
        }
        match rounds.after_empty(deadline) {
            Next::Again => continue,
            Next::TimedOut => return Ok(0),
            Next::Interrupted => return Err(libc::EINTR),
            Next::Sleep => {}
        }
        // Named in its stream members' rings from the first sleep until
        // they leave the set (or it goes): a name left while the set is
        // not waiting costs a peer at most one ring of its doorbell.
        let me = set.waker_id();
        let Some((nap, _asleep)) = set.arm(epfd, me) else {
            rounds.look_again();
            continue;
        };
        // A nap that ends before the deadline ends in another round.
        let timeout = crate::conn::wait::nap_until(crate::socket::cork::cap(deadline), nap).map_or(-1, |d| {
            let left = d.saturating_duration_since(Instant::now());
            // Round up: waking early only costs another round.
            left.as_micros().div_ceil(1000).min(i32::MAX as u128) as c_int
        });
        let mp = sigmask.map_or(std::ptr::null(), |m| m as *const libc::sigset_t);
        // SAFETY: the caller's array (nothing in it yet); null mask means none.
        let r = unsafe { real::epoll_pwait(epfd, out.as_mut_ptr(), out.len() as c_int, timeout, mp) };
        if r < 0 {
            return Err(real::errno());
        }
        let n = take_kernel(set, out, 0, r as usize);
        let n = n + set.scan(&mut out[n..], true);
        if n > 0 {
            return Ok(n as c_int);
        }
        rounds.woke(true);
    }
}
