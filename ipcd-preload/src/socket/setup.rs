//! Connection set-up through the monitor: `connect`, `listen`, `accept`,
//! closing a listener, and taking on an end the monitor hands over.
//! Whatever the monitor cannot do goes to the kernel.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use ipcd_proto::message::{ConnInfo, Request, Response, Side};
use ipcd_proto::{Fallback, ListenFlags, SockAddr};
use ipcd_ring::Ticket;

use crate::conn::link::{AttachError, Link};
use crate::control::{self, ListenerBell, Pending};
use crate::socket::{reuse, table};
use crate::socket::{Socket, State, Stream};
use crate::sys::log::{log, Level};
use crate::sys::signals::Caught;
use crate::sys::{real, user};

/// What `connect` decided.
pub(crate) enum Connect {
    /// Done through ipcd: return this (0, or `EINPROGRESS` as errno).
    Done(Result<(), libc::c_int>),
    /// Let the kernel connect (the fd is no longer ours).
    Kernel,
    /// A blocking connect whose listener's queue is full: wait, without
    /// the socket's lock, for the monitor to admit or refuse it
    /// (`stream::wait_connected`).
    Wait,
}

/// `getsockname` of a kernel fd.
fn sockname(fd: libc::c_int) -> Option<SockAddr> {
    // SAFETY: zeroed storage and its length as out parameters.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: valid out pointers of the stated size.
    if unsafe { real::getsockname(fd, (&raw mut ss).cast(), &mut len) } != 0 {
        return None;
    }
    // SAFETY: the kernel wrote `len` bytes.
    unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }
}

/// Whether an int socket option is on.
fn opt_on(fd: libc::c_int, level: libc::c_int, name: libc::c_int) -> bool {
    real::int_opt(fd, level, name).is_some_and(|v| v != 0)
}

/// An end the monitor handed this process (`Reopened`: after an exec, or
/// passed over `SCM_RIGHTS`), mapped; `shared` when other processes may
/// hold it too.
pub(crate) fn stream_from(info: ConnInfo, fds: Vec<OwnedFd>, shared: bool) -> Option<Stream> {
    let mut link = match Link::attach(&info, fds) {
        Ok(l) => l,
        Err(e) => {
            log!(Level::Error, "connection {} cannot be mapped: {e}", info.conn);
            return None;
        }
    };
    if shared {
        link.set_shared();
    }
    Some(Stream::new(link, info, false))
}

/// Makes `stream` the socket behind `fd`, a kernel socket the program
/// already has (its family and `O_NONBLOCK` are the kernel's).
pub(crate) fn adopt(fd: libc::c_int, stream: Stream) -> Option<Arc<Socket>> {
    let conn = stream.info.conn;
    let family = real::int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    // SAFETY: F_GETFL on the program's fd.
    let nonblock = unsafe { real::fcntl(fd, libc::F_GETFL, 0) } & libc::O_NONBLOCK != 0;
    let sock = Arc::new(Socket::new(family, nonblock, State::Stream(Box::new(stream))));
    match table::install(fd, Arc::clone(&sock)) {
        Ok(_) => Some(sock),
        Err(_) => {
            log!(Level::Error, "connection {conn}: fd {fd} is beyond the table");
            None
        }
    }
}

/// The host's own addresses (cached: interfaces rarely change under a
/// running program, and the monitor has the last word anyway).
fn local_ips() -> &'static [SockAddr] {
    static IPS: OnceLock<Vec<SockAddr>> = OnceLock::new();
    IPS.get_or_init(|| {
        let mut out = Vec::new();
        let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
        // SAFETY: getifaddrs fills a list that we free below.
        if unsafe { libc::getifaddrs(&mut ifs) } != 0 {
            return out;
        }
        let mut p = ifs;
        while !p.is_null() {
            // SAFETY: a node of the list getifaddrs returned.
            let ifa = unsafe { &*p };
            let len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
            // SAFETY: ifa_addr is null or a sockaddr of its family's size.
            if let Some(a) = unsafe { SockAddr::from_raw(ifa.ifa_addr, len) } {
                out.push(a);
            }
            p = ifa.ifa_next;
        }
        // SAFETY: the list from getifaddrs, freed once.
        unsafe { libc::freeifaddrs(ifs) };
        out
    })
}

fn v4_of(a: &SockAddr) -> Option<[u8; 4]> {
    match *a {
        SockAddr::V4 { ip, .. } => Some(ip),
        SockAddr::V6 { ip, .. } if ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] => {
            Some([ip[12], ip[13], ip[14], ip[15]])
        }
        SockAddr::V6 { .. } => None,
    }
}

fn is_unspecified(a: &SockAddr) -> bool {
    match *a {
        SockAddr::V4 { ip, .. } => ip == [0; 4],
        SockAddr::V6 { ip, .. } => ip == [0; 16],
    }
}

/// Could a listener on this host be at `dest`?
fn is_local(dest: &SockAddr) -> bool {
    if dest.is_loopback() || is_unspecified(dest) {
        return true;
    }
    local_ips().iter().any(|l| match (v4_of(l), v4_of(dest)) {
        (Some(a), Some(b)) => a == b,
        _ => matches!((l, dest), (SockAddr::V6 { ip: a, .. }, SockAddr::V6 { ip: b, .. }) if a == b),
    })
}

/// The address a kernel connect to `dest` would bind us to: the
/// destination itself for a local address, loopback for the unspecified one.
fn source_for(dest: &SockAddr) -> SockAddr {
    match *dest {
        SockAddr::V4 { ip, .. } if ip == [0; 4] => SockAddr::V4 { ip: [127, 0, 0, 1], port: 0 },
        SockAddr::V4 { ip, .. } => SockAddr::V4 { ip, port: 0 },
        SockAddr::V6 { ip, .. } if ip == [0; 16] => {
            let mut lo = [0; 16];
            lo[15] = 1;
            SockAddr::V6 { ip: lo, port: 0, flowinfo: 0, scope_id: 0 }
        }
        SockAddr::V6 { ip, scope_id, .. } => SockAddr::V6 { ip, port: 0, flowinfo: 0, scope_id },
    }
}

/// `addr` as a socket of `family` reports it: IPv4 peers of an IPv6 socket
/// appear IPv4-mapped, mapped peers of an IPv4 socket plain.
pub(crate) fn for_family(addr: SockAddr, family: libc::c_int) -> SockAddr {
    match (addr, family) {
        (SockAddr::V4 { ip, port }, libc::AF_INET6) => {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&ip);
            SockAddr::V6 { ip: m, port, flowinfo: 0, scope_id: 0 }
        }
        (a @ SockAddr::V6 { port, .. }, libc::AF_INET) => match v4_of(&a) {
            Some(ip) => SockAddr::V4 { ip, port },
            None => a,
        },
        (a, _) => a,
    }
}

/// Writes `addr` to a caller's `(sockaddr*, socklen_t*)` pair the way the
/// kernel does: truncated to the caller's length, full length reported.
/// False if the program's memory faulted (`EFAULT`); nothing asked
/// (`out` null) is true.
pub(crate) fn write_addr(addr: SockAddr, out: *mut libc::sockaddr, len: *mut libc::socklen_t) -> bool {
    if out.is_null() {
        return true;
    }
    let (ss, full) = addr.to_raw();
    // SAFETY: a socklen_t is plain data.
    let Some(have) = (unsafe { user::read(len) }) else { return false };
    let n = have.min(full) as usize;
    // SAFETY: `ss` holds `full` bytes, at least `n`; `out` goes through `user`.
    unsafe { user::copy_out(out.cast(), (&raw const ss).cast(), n) && user::write(len, full) }
}

/// Reads a program's `sockaddr` of `len` bytes; `None` if it is longer
/// than any address or cannot be read (the kernel then answers).
pub(crate) fn read_addr(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<SockAddr> {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let n = usize::try_from(len).ok().filter(|&n| n <= std::mem::size_of_val(&ss))?;
    // SAFETY: `ss` holds `n` bytes; the source goes through `user`.
    if !unsafe { user::copy_in((&raw mut ss).cast(), addr.cast(), n) } {
        return None;
    }
    // SAFETY: `ss` holds `len` initialised bytes.
    unsafe { SockAddr::from_raw((&raw const ss).cast(), len) }
}

/// `connect` of one of our fresh sockets to `dest`.
pub(crate) fn connect(fd: libc::c_int, sock: &Socket, dest: SockAddr) -> Connect {
    let family_ok =
        matches!((sock.family, dest), (libc::AF_INET, SockAddr::V4 { .. }) | (libc::AF_INET6, SockAddr::V6 { .. }));
    crate::socket::fallbacks::report();
    if !family_ok {
        return Connect::Kernel;
    }
    let to_kernel = if !is_local(&dest) {
        Some(Fallback::NotLocal)
    } else if crate::sys::uring::in_use() {
        Some(Fallback::IoUring)
    } else if crate::sys::config::get().to_kernel(None, Some(&dest)) {
        Some(Fallback::Rule)
    } else {
        None
    };
    if let Some(reason) = to_kernel {
        // The first at once (a program that connects once shows why),
        // then at most a report a second.
        crate::socket::fallbacks::count(reason);
        crate::socket::fallbacks::report();
        return Connect::Kernel;
    }
    crate::socket::held::report();
    let mut state = sock.lock();
    let want = source_for(&for_family(dest, sock.family));
    let kept = match &mut *state {
        State::Fresh { bound } => *bound,
        State::Stream(s) => {
            return Connect::Done(match s.admission() {
                // Linux's answers for a connect in progress and one refused.
                ipcd_ring::Admission::Waiting => Err(libc::EALREADY),
                ipcd_ring::Admission::Refused => {
                    Err(Some(std::mem::take(&mut s.connect_error)).filter(|&e| e != 0).unwrap_or(libc::ECONNREFUSED))
                }
                ipcd_ring::Admission::Established if std::mem::take(&mut s.connect_pending) => Ok(()),
                ipcd_ring::Admission::Established => Err(libc::EISCONN),
            });
        }
        State::Listening { .. } | State::Closed => return Connect::Kernel,
    };
    // The kernel reserves our port: bind as its connect would, if the
    // program did not bind. A kept socket is bound already (where a
    // connect to `dest` would bind it, or it is swapped for a new one);
    // a clean one is known to be unbound without asking.
    let mut bound = kept.filter(|b| b.with_port(0) == want);
    if kept.is_some() && bound.is_none() {
        reuse::unbind(fd, sock, &mut state);
    }
    let mut source = match bound {
        Some(b) => Some(b),
        None if sock.is_clean() => None,
        None => sockname(fd),
    };
    if source.is_none_or(|s| s.port() == 0) {
        let want = match source {
            // Bound to an address but port 0: keep the address.
            Some(s) if !is_unspecified(&s) => s,
            _ => want,
        };
        let (ss, len) = want.to_raw();
        // SAFETY: a sockaddr of the length to_raw gives.
        if unsafe { real::bind(fd, (&raw const ss).cast(), len) } == 0 {
            source = sockname(fd);
            bound = source;
        } else {
            let e = real::errno();
            if e != libc::EADDRINUSE && e != libc::EADDRNOTAVAIL {
                log!(Level::Debug, "cannot reserve a port for {dest} (errno {e}); kernel connect");
                return Connect::Kernel;
            }
            // Ephemeral ports ran out for bind, while the kernel's connect
            // would still share one across destinations: the monitor
            // gives the connection a port unique for `dest` (port 0 asks).
            log!(Level::Debug, "no port to reserve for {dest}; the monitor names one");
            source = Some(want.with_port(0));
        }
    }
    // A standby carries no port of its own for us: only with one reserved.
    let reserved = source.is_some_and(|s| s.port() != 0);
    if let Some(done) = reserved.then(|| connect_standby(sock, &mut state, dest, source, bound)).flatten() {
        return done;
    }
    let req = Request::Connect { dest, source, nonblocking: sock.nonblocking() };
    let answer = control::with(|c| {
        let answer = c.call(&req, &[])?;
        if let (Response::Connected(_), _) = &answer {
            c.brokered(dest);
        }
        Ok(answer)
    });
    let Some((resp, fds)) = answer else {
        crate::socket::fallbacks::count(Fallback::NoMonitor);
        return Connect::Kernel;
    };
    let info = match resp {
        Response::Connected(info) => info,
        Response::UseKernel { reason } => {
            log!(Level::Debug, "connect to {dest}: kernel ({reason:?})");
            return Connect::Kernel;
        }
        other => {
            log!(Level::Warn, "connect to {dest}: unexpected answer {other:?}; kernel connect");
            return Connect::Kernel;
        }
    };
    match Link::attach(&info, fds.into_vec()) {
        Ok(link) => {
            let nonblocking = sock.nonblocking();
            let mut stream = Stream::new(link, info, nonblocking);
            stream.bound = bound;
            let waiting = !stream.admitted;
            sock.become_stream(&mut state, stream);
            // A non-blocking connect to a loopback listener still answers
            // EINPROGRESS on Linux; the brokering is already done, so the
            // connection is writable at once (or once a full queue admits
            // it).
            match (sock.nonblocking(), waiting) {
                (true, _) => Connect::Done(Err(libc::EINPROGRESS)),
                (false, true) => Connect::Wait,
                (false, false) => Connect::Done(Ok(())),
            }
        }
        Err(e) => {
            // No fds at all: the kernel had no free number for them (the
            // process is at its fd limit), which the kernel connect does
            // not need.
            let level = if matches!(e, AttachError::Fds(0)) { Level::Info } else { Level::Error };
            log!(level, "connect to {dest}: cannot map the connection ({e}); kernel connect");
            let _ = control::with(|c| abandon(c, &info));
            Connect::Kernel
        }
    }
}

/// Connects through the connection the monitor holds ready for `dest`
/// (`Standby`), if it sent one: no answer to wait for, the listener is
/// told on the monitor's side (`Use`). `None`: there is none, or it
/// cannot be mapped (given back); the caller asks the monitor.
fn connect_standby(
    sock: &Socket,
    state: &mut State,
    dest: SockAddr,
    source: Option<SockAddr>,
    bound: Option<SockAddr>,
) -> Option<Connect> {
    // One in hand is used without reading the channel (its refills wait
    // there until the hand is empty: one read for many connects).
    let (mut info, renewal, after_brokered) = control::with(|c| {
        let taken = match c.take_standby(&dest) {
            Some(taken) => Some(taken),
            None if c.expects_standbys() => c.drain().map(|()| c.take_standby(&dest))?,
            None => None,
        };
        Ok(taken.map(|(info, renewal)| (info, renewal, c.brokered_lately(&dest))))
    })??;
    let conn = info.conn;
    info.local = source.unwrap_or(info.local);
    // Its acceptor learns of a first standby from its channel (`Expect`),
    // as of a connection the monitor made.
    let told_on_channel = renewal.is_none();
    let attached = match renewal {
        Some(r) => r.attach(&info),
        None => Link::attach(&info, Vec::new()),
    };
    match attached {
        Ok(link) => {
            let Some(watched) = link.connect_ticket(info.local.to_words(), after_brokered) else {
                // Cancelled (its listener went): the monitor has us drop
                // and unmap it; ask it instead.
                log!(Level::Debug, "standby {conn} to {dest} was withdrawn; asking the monitor");
                let _ = link.keep();
                return None;
            };
            // Connected now: an acceptor spinning on the ticket sees it;
            // otherwise the listener hears it from its bell (the monitor,
            // when it sent none). Not undone if the channel broke.
            if !watched || told_on_channel {
                let _ = control::with(|c| {
                    if told_on_channel {
                        c.brokered(dest);
                    }
                    match watched || c.ring_listener(&dest, info.segment) {
                        true => Ok(()),
                        false => c.notify(&Request::Use { conn, source }),
                    }
                });
            }
            let nonblocking = sock.nonblocking();
            let mut stream = Stream::new(link, info, nonblocking);
            stream.bound = bound;
            sock.become_stream(state, stream);
            // As for an answered connect, below.
            Some(Connect::Done(if nonblocking { Err(libc::EINPROGRESS) } else { Ok(()) }))
        }
        Err(e) => {
            log!(Level::Debug, "standby {conn} to {dest} cannot be mapped ({e}); asking the monitor");
            let _ = control::with(|c| c.notify(&Request::Unused { conn }));
            None
        }
    }
}

/// After a successful kernel `listen`: registers the listener with the
/// monitor. Returns false when the monitor will not route to it (the socket
/// is then a plain kernel listener).
pub(crate) fn listen(fd: libc::c_int, sock: &Socket, backlog: libc::c_int) -> bool {
    listen_as(fd, sock, backlog, None)
}

/// [`listen`], or for a listener inherited across exec, registers it
/// under the old image's id and sharing (`inherited`): the monitor then
/// knows it for the socket other processes hold under that id.
pub(crate) fn listen_as(fd: libc::c_int, sock: &Socket, backlog: libc::c_int, inherited: Option<(u64, bool)>) -> bool {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    if crate::sys::uring::in_use() {
        return false;
    }
    let mut state = sock.lock();
    let (id, again) = match (&*state, inherited) {
        // Passed on: the kernel's listener now, whatever its backlog.
        (State::Listening { passed: true, .. }, _) => return true,
        // Listening already: Linux takes the new backlog, so must the monitor.
        (State::Listening { id, backlog: old, .. }, _) if *old != backlog => (*id, true),
        (State::Listening { .. }, _) => return true,
        (State::Fresh { .. }, Some((id, _))) => {
            // Ids of this image's own listeners come after it.
            NEXT_ID.fetch_max(id.saturating_add(1), Ordering::Relaxed);
            (id, false)
        }
        (State::Fresh { .. }, None) => (NEXT_ID.fetch_add(1, Ordering::Relaxed), false),
        _ => return false,
    };
    let shared = inherited.is_some_and(|(_, shared)| shared);
    let Some(addr) = sockname(fd) else { return again };
    let mut flags = listen_flags(fd, sock.family);
    // Connectors through standbys ring it: the monitor gets it now.
    let bell = if again { None } else { ListenerBell::new() };
    if bell.is_some() {
        flags |= ListenFlags::BELL;
    }
    let req = Request::Listen { listener: id, addr, backlog: backlog.max(0) as u32, flags };
    // SAFETY: `fd` is the open listening socket this call is about.
    let proof = unsafe { BorrowedFd::borrow_raw(fd) };
    // SAFETY: the bell's eventfd, alive for the call.
    let bell_fd = bell.as_ref().map(|b| unsafe { BorrowedFd::borrow_raw(b.fd()) });
    let mut fds = vec![proof];
    fds.extend(bell_fd);
    match control::with(|c| c.call(&req, &fds)) {
        Some((Response::Ok, _)) => {}
        Some((other, _)) => {
            log!(Level::Warn, "listener {addr} not registered ({other:?}); kernel only");
            return again;
        }
        None => return again,
    }
    if again {
        if let State::Listening { backlog: old, .. } = &mut *state {
            *old = backlog;
        }
        return true;
    }
    // accept waits on the kernel fd and the monitor together, so the kernel
    // fd never blocks; the program's O_NONBLOCK is kept in `sock`.
    real::set_kernel_nonblocking(fd, true);
    let monitor = control::monitor();
    *state = State::Listening { id, backlog, bell, shared, served: false, passed: false, monitor };
    log!(Level::Debug, "listening on {addr} through ipcd (listener {id})");
    true
}

/// An option the monitor reads from a listening socket changed
/// (`TCP_DEFER_ACCEPT`): our listener `fd` is registered again, as `listen`
/// again would, so the monitor looks at the socket anew.
pub(crate) fn refresh_listener(fd: libc::c_int, sock: &Socket) {
    let (id, backlog) = match &*sock.lock() {
        State::Listening { id, backlog, passed: false, .. } => (*id, *backlog),
        _ => return,
    };
    let Some(addr) = sockname(fd) else { return };
    let req =
        Request::Listen { listener: id, addr, backlog: backlog.max(0) as u32, flags: listen_flags(fd, sock.family) };
    // SAFETY: `fd` is the open listening socket this call is about.
    let proof = unsafe { BorrowedFd::borrow_raw(fd) };
    if let Some((other, _)) = control::with(|c| c.call(&req, &[proof])).filter(|(r, _)| *r != Response::Ok) {
        log!(Level::Warn, "listener {addr} not updated ({other:?})");
    }
}

/// The process turned to io_uring: every listener of ours becomes the
/// kernel's (as one passed to another process does), so that no new
/// connection reaches it through ipcd.
pub(crate) fn listeners_to_kernel() {
    table::for_each_fd(|fd, sock| {
        pass_listener(fd, sock);
    });
}

/// Why an accept could not give a queued connection an fd.
enum Refused {
    /// This accept fails with `EMFILE`; the connection stays queued.
    Again(Pending),
    /// The connection is gone (errno for this accept).
    Failed(libc::c_int),
}

/// The fds of connection `conn`'s accepting end again (`Reopen`), after
/// they were lost at the fd limit; `None` if they cannot come now.
fn refetch(conn: u64) -> Option<Vec<OwnedFd>> {
    let answer = control::with(|c| c.call(&Request::Reopen { conn, side: Side::B }, &[]));
    match answer {
        Some((Response::Reopened(_), fds)) if fds.len() == 1 => Some(fds.into_vec()),
        _ => None,
    }
}

/// Makes an accepted ipcd connection into a new fd; `pid` is ours.
fn accepted(
    sock: &Socket,
    listener: u64,
    pending: Pending,
    pid: u32,
    flags: libc::c_int,
) -> Result<(libc::c_int, SockAddr), Refused> {
    let (conn, side) = (pending.info().conn, pending.info().side);
    let fail = |e: libc::c_int| {
        let _ = control::with(|c| c.notify(&Request::Close { conn, side, keep: false }));
        e
    };
    let (info, link) = match pending {
        Pending::Told(info, fds, _) => {
            let fds = match fds {
                // Its fds were lost (the process was at its fd limit when
                // the monitor sent them): ask again, or fail as the
                // kernel's accept does at the limit, the connection kept.
                fds if fds.is_empty() && !info.reused => match refetch(conn) {
                    Some(fds) => fds,
                    None => return Err(Refused::Again(Pending::Told(info, Vec::new(), 0))),
                },
                fds => fds,
            };
            let link = Link::attach(&info, fds).map_err(|e| {
                log!(Level::Error, "cannot map accepted connection {conn}: {e}");
                let _ = control::with(|c| abandon(c, &info));
                Refused::Failed(libc::ECONNABORTED)
            })?;
            (info, link)
        }
        Pending::Expected(info, link) => (info, *link),
        // Connected just after the queue last looked (see `Queue::refresh`).
        Pending::Renewing(info, r) => match r.attach(&info) {
            Ok(link) => (info, link),
            Err(e) => {
                log!(Level::Debug, "renewed connection {conn} cannot be attached ({e})");
                return Err(Refused::Failed(libc::ECONNABORTED));
            }
        },
    };
    if !link.claim(pid) {
        // Handed to a process that accepts while it waited here: its
        // copy of the segment goes, nothing else.
        log!(Level::Debug, "connection {conn} went to another process before this accept");
        return Err(Refused::Failed(libc::ECONNABORTED));
    }
    // A kernel socket under the fd (new, or kept for reuse) keeps fstat,
    // SO_TYPE and /proc/self/fd right; it never connects. Its O_NONBLOCK
    // is the program's, so an exec'd image can read it back.
    let made = match reuse::socket(sock.family, flags & (libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK)) {
        Ok(made) => made,
        Err(e) => {
            drop(reset_link(link));
            return Err(Refused::Failed(fail(e)));
        }
    };
    let fd = made.fd;
    let peer = info.peer;
    // After the claim (see `ConnSegment::claim`): a renewable end is not
    // reported, the monitor learns it from the claim if it promotes it.
    let renewable = link.renewable();
    let mut stream = Stream::new(link, info, false);
    stream.bound = made.bound;
    stream.listener = renewable.then_some(listener);
    let new = Arc::new(Socket::new(sock.family, flags & libc::SOCK_NONBLOCK != 0, State::Stream(Box::new(stream))));
    new.set_clean();
    made.lend_to(&new);
    sock.inherited.pass_to(fd, &new);
    let installed = Arc::clone(&new);
    if let Err(new) = table::install(fd, new) {
        // An fd beyond the table: we cannot serve it.
        if let State::Stream(s) = std::mem::replace(&mut *new.lock(), State::Closed) {
            drop(reset_link(s.link));
        }
        // SAFETY: the socket made above.
        unsafe { real::close(fd) };
        return Err(Refused::Failed(fail(libc::EMFILE)));
    }
    made.installed(&installed);
    if !renewable {
        let _ = control::with(|c| {
            c.accepted(conn);
            Ok(())
        });
    }
    Ok((fd, for_family(peer, sock.family)))
}

/// Lets go of an end we could not map (its fds never came, or did not
/// map): the monitor resets it for us, so the peer sees `ECONNRESET`
/// instead of waiting for ever. (A `Close` would say we had closed it in
/// the ring ourselves.)
fn abandon(c: &mut control::Control, info: &ConnInfo) -> Result<(), ipcd_proto::channel::ChannelError> {
    c.notify(&Request::Release { conn: info.conn, side: info.side, abort: true })
}

/// Resets a connection we will not serve: the connector sees `ECONNRESET`.
fn reset_link(mut link: Link) -> Link {
    if link.tx.reset() | link.rx.close() {
        link.ring_peer();
    }
    link
}

/// `accept4` on one of our listeners: the first of an ipcd connection and a
/// kernel one (from a program not under ipcd).
///
/// # Safety
/// `addr`/`len` as for `accept4`.
pub(crate) unsafe fn accept(
    fd: libc::c_int,
    sock: &Socket,
    id: u64,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
    flags: libc::c_int,
) -> Result<libc::c_int, libc::c_int> {
    let deadline = sock.rcvtimeo().map(|t| Instant::now() + t);
    let caught = Caught::now();
    // Already queued ipcd connections first (no system call). A
    // non-blocking accept then asks the kernel's queue and reads what the
    // control channel holds; a blocking one lets poll say which of the
    // two has something, and reads one message when the channel does: a
    // connection that has to be waited for costs poll and one read, where
    // asking both first cost an accept4 and a read that found nothing.
    let mut drain = false;
    let mut read_one = false;
    // Decided on entry, as Linux's accept takes its timeout once.
    let nonblocking = sock.nonblocking();
    let mut kernel_ready = nonblocking;
    // A monitor that came back (restarted) learns of this listener again
    // before anything else; `Serve` follows if a fork shared it.
    let _ = control::with(|_| Ok(()));
    reregister(fd, sock);
    crate::socket::held::report();
    let (bell, serve, backlog) = match &mut *sock.lock() {
        State::Listening { bell, shared, served, backlog, .. } => (bell.clone(), serve_now(*shared, served), *backlog),
        _ => (None, false, 0),
    };
    if serve {
        let _ = control::with(|c| c.serve(id, bell.as_deref()));
    }
    loop {
        let next = control::with(|c| {
            if drain {
                c.drain()?;
            } else if read_one {
                c.read_one()?;
            }
            if let Some(b) = &bell {
                c.watch(id, b);
            }
            Ok(c.pop_incoming(id).map(|p| (p, c.seen_pid())))
        });
        if let Some(Some((pending, pid))) = next {
            match accepted(sock, id, pending, pid, flags) {
                Ok((newfd, peer)) => {
                    // A buffer that faults loses only the address.
                    write_addr(peer, addr, len);
                    // A queue that was at its backlog before this accept
                    // may have connects waiting for room: the monitor
                    // hears of this accept now, not with the next request.
                    let _ = control::with(|c| {
                        if c.queued(id) + 1 >= backlog.max(1) as usize {
                            c.flush_accepted()?;
                        }
                        Ok(())
                    });
                    return Ok(newfd);
                }
                Err(Refused::Failed(libc::ECONNABORTED)) => continue,
                Err(Refused::Failed(e)) => return Err(e),
                Err(Refused::Again(pending)) => {
                    let _ = control::with(|c| {
                        c.unpop_incoming(id, pending);
                        Ok(())
                    });
                    return Err(libc::EMFILE);
                }
            }
        }
        if kernel_ready {
            // SAFETY: the caller's buffers; the kernel fd is non-blocking.
            let r = unsafe { real::accept4(fd, addr, len, flags) };
            if r >= 0 {
                return Ok(r);
            }
            let e = real::errno();
            if e != libc::EAGAIN {
                return Err(e);
            }
            kernel_ready = false;
        }
        if nonblocking && !drain {
            drain = true;
            continue;
        }
        drain = false;
        // Nothing to accept: a good moment to report what was accepted.
        let _ = control::with(|c| c.flush_accepted());
        if nonblocking {
            return Err(libc::EAGAIN);
        }
        // A standby's connector connects without the monitor: spin on
        // the tickets it will set before sleeping, as a read spins on its
        // ring.
        if spin_on_tickets(id, &caught) {
            continue;
        }
        // Asleep: connectors of expected connections ring the bell from
        // now on; one that connected before may not have.
        let Some(asleep) = crate::ready::readiness::Asleep::on(id) else { continue };
        let slept = sleep_for_accept(fd, bell.as_deref(), deadline, &caught);
        drop(asleep);
        (kernel_ready, read_one) = slept?;
    }
}

/// A blocking accept's spin on the standby tickets it expects. While no
/// thread of ours sleeps on the listener its tickets are watched, so a
/// connector that finds its ticket so connects without ringing the bell
/// (see `Control::sleep_on`). The channel is read first only if nothing
/// is expected, then every few batches of looks: connectors take their
/// oldest standby, whose `Expect` is most likely read already, so reading
/// the channel before every spin cost one system call per connection.
/// Whether to look again.
fn spin_on_tickets(id: u64, caught: &Caught) -> bool {
    let known = control::peek(|c| c.awaits(id)).unwrap_or(false);
    let expecting = known || control::with(|c| c.drain().map(|()| c.awaits(id))).unwrap_or(false);
    if !expecting {
        return false;
    }
    let mut looks = 0u32;
    let ready = || {
        looks = looks.wrapping_add(1);
        if looks % DRAIN_EVERY == 0 {
            control::with(|c| c.drain().map(|()| c.has_incoming(id))).unwrap_or(false)
        } else {
            control::peek(|c| c.has_incoming(id)).unwrap_or(false)
        }
    };
    match crate::conn::wait::spin(false, ready, || caught.interrupts(true)) {
        crate::conn::wait::Spun::Ready => true,
        // Before sleeping: the connection may be one not read yet.
        _ => control::with(|c| c.drain().map(|()| c.has_incoming(id))).unwrap_or(false),
    }
}

/// Looks at the tickets between two reads of the channel in
/// [`spin_on_tickets`] (a batch of looks is 64, a few microseconds).
const DRAIN_EVERY: u32 = 256;

/// A blocking accept's sleep: on the kernel listener, the listener's bell
/// (readable while connections wait here; the accept that takes the last
/// one empties it) and the control channel. Returns whether the kernel fd
/// and the channel are readable.
fn sleep_for_accept(
    fd: libc::c_int,
    bell: Option<&ListenerBell>,
    deadline: Option<Instant>,
    caught: &Caught,
) -> Result<(bool, bool), libc::c_int> {
    let chan = control::with(|c| Ok(c.fd())).unwrap_or(-1);
    let mut pfds = [
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: bell.map_or(-1, |b| b.fd()), events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: chan, events: libc::POLLIN, revents: 0 },
    ];
    let timeout = match deadline {
        None => -1,
        Some(d) => match d.checked_duration_since(Instant::now()) {
            Some(left) => left.as_millis().clamp(1, i32::MAX as u128) as i32,
            None => return Err(libc::EAGAIN),
        },
    };
    // SAFETY: three live pollfds (a negative fd is ignored by poll).
    let n = unsafe { real::poll(pfds.as_mut_ptr(), 3, timeout) };
    // Linux restarts accept after an SA_RESTART handler, unless the
    // socket has a timeout.
    if n < 0 && real::errno() == libc::EINTR && (deadline.is_some() || caught.interrupts(true)) {
        return Err(libc::EINTR);
    }
    Ok((pfds[0].revents != 0, pfds[2].revents != 0))
}

/// What the monitor needs to know of a listening socket's options (it
/// matches addresses as the kernel would).
fn listen_flags(fd: libc::c_int, family: libc::c_int) -> ListenFlags {
    let mut flags = ListenFlags::empty();
    if opt_on(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT) {
        flags |= ListenFlags::REUSEPORT;
    }
    if opt_on(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR) {
        flags |= ListenFlags::REUSEADDR;
    }
    if family == libc::AF_INET6 && opt_on(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) {
        flags |= ListenFlags::V6ONLY;
    }
    if crate::sys::config::get().to_kernel(sockname(fd).as_ref(), None) {
        flags |= ListenFlags::KERNEL;
    }
    flags
}

/// Registers listener `fd` again with the monitor this process now talks
/// to, when that is not the one it was registered with (the monitor was
/// restarted): under its id, with its bell, as the process's own (a
/// process that shares it says `Serve` again at its next accept; the
/// others' registrations of the same socket become shares). Connects
/// reach it through ipcd again from then on.
pub(crate) fn reregister(fd: libc::c_int, sock: &Socket) {
    let now = control::monitor();
    let mut state = sock.lock();
    let State::Listening { id, backlog, bell, served, passed: false, monitor, .. } = &mut *state else { return };
    if *monitor == now || now == 0 {
        return;
    }
    let Some(addr) = sockname(fd) else { return };
    let mut flags = listen_flags(fd, sock.family);
    // SAFETY: `fd` is the open listening socket this call is about.
    let mut fds = vec![unsafe { BorrowedFd::borrow_raw(fd) }];
    if let Some(b) = bell {
        flags |= ListenFlags::BELL;
        // SAFETY: the bell's eventfd, alive while the socket holds it.
        fds.push(unsafe { BorrowedFd::borrow_raw(b.fd()) });
    }
    let req = Request::Listen { listener: *id, addr, backlog: (*backlog).max(0) as u32, flags };
    match control::with(|c| c.call(&req, &fds)) {
        Some((Response::Ok, _)) => {
            *monitor = now;
            *served = false;
            log!(Level::Info, "listener {addr} registered again with monitor {now}");
        }
        other => log!(Level::Debug, "listener {addr} not registered again ({other:?})"),
    }
}

/// Whether a listener's first accept or wait since a fork left it
/// `shared` must tell the monitor it serves it (see `State::Listening`);
/// marks it told.
pub(crate) fn serve_now(shared: bool, served: &mut bool) -> bool {
    shared && !std::mem::replace(served, true)
}

/// The last fd of a listener closed: unregister (unless it was `passed`
/// on, and so already), and reset whatever still waits in its ipcd accept
/// queue (as Linux resets its accept queue). A listener a fork left
/// `shared` is still open in other processes: what waits here goes back
/// to the monitor for them (`Decline`), as the kernel's queue would stay
/// theirs.
pub(crate) fn close_listener(id: u64, shared: bool, passed: bool) {
    let _ = control::with(|c| {
        if !passed {
            c.call(&Request::Unlisten { listener: id }, &[])?;
        }
        c.drain()?;
        for pending in c.take_incoming(id) {
            let (info, link) = match pending {
                Pending::Told(info, fds, _) if shared => {
                    drop(fds);
                    c.notify(&Request::Decline { conn: info.conn })?;
                    continue;
                }
                Pending::Told(info, fds, _) => (info, Link::attach(&info, fds).ok()),
                // Never connected: the monitor cancelled it with the
                // listener (or does now) and has both unmap it.
                Pending::Expected(_, link) if !matches!(link.cancel_ticket(), Ticket::Connected(_)) => {
                    let _ = (*link).keep();
                    continue;
                }
                // Connected through a standby issued to us, and promoted
                // by the monitor at `Unlisten` (handed to us, read by the
                // drain): the other processes may take it.
                Pending::Expected(info, link) if shared && !passed && !link.renewable() => {
                    let _ = (*link).keep();
                    c.notify(&Request::Decline { conn: info.conn })?;
                    continue;
                }
                Pending::Expected(info, link) => (info, Some(*link)),
                // Its last round is the monitor's now (promoted with the
                // listener), the next one never comes.
                Pending::Renewing(_, r) => {
                    r.keep();
                    continue;
                }
            };
            match link {
                // Taken from us for another process: not ours to reset.
                Some(link) if !link.claim(c.seen_pid()) => continue,
                Some(link) => drop(reset_link(link)),
                None => {
                    abandon(c, &info)?;
                    continue;
                }
            }
            c.notify(&Request::Close { conn: info.conn, side: info.side, keep: false })?;
        }
        Ok(())
    });
}

/// `shutdown(fd, how)` of our listener. Linux disconnects a listener shut
/// for reading (`SHUT_RD`, `SHUT_RDWR`): the connections in its queue are
/// reset, later connects are refused, `accept` fails with EINVAL, and the
/// socket, still bound, may listen again. Shut for writing alone, nothing
/// changes. The kernel does that to its own socket and queue; here the
/// listener leaves the monitor and what waits in its ipcd queue is reset,
/// as at its close. `None` when `sock` is not our listener.
pub(crate) fn shutdown_listener(fd: libc::c_int, sock: &Socket, how: libc::c_int) -> Option<libc::c_int> {
    let mut state = sock.lock();
    let State::Listening { id, shared, passed, .. } = &*state else { return None };
    let (id, shared, passed) = (*id, *shared, *passed);
    // SAFETY: the caller's fd and `how`, unchanged.
    let r = unsafe { real::shutdown(fd, how) };
    if r != 0 || !matches!(how, libc::SHUT_RD | libc::SHUT_RDWR) {
        return Some(r);
    }
    // Bound by the program: never reused; its calls go to the kernel now.
    sock.taint();
    *state = State::Fresh { bound: None };
    drop(state);
    if !passed {
        real::set_kernel_nonblocking(fd, sock.nonblocking());
    }
    close_listener(id, shared, passed);
    log!(Level::Debug, "listener {id} (fd {fd}) shut down");
    Some(0)
}

/// Our listener on `fd` is about to be passed to another process over a
/// Unix socket. That process's library, if it has one, cannot know it, and
/// the description it shares carries the `O_NONBLOCK` we set: its blocking
/// accepts would fail with EAGAIN, while the monitor went on handing every
/// ipcd connect to us, who may never accept (Python's forkserver workers, a
/// master handing its listeners on). So it stops being an ipcd listener:
/// unregistered, the program's flag back on the description, and both
/// processes accept from the kernel's queue as they would without ipcd
/// (correct, not faster). What was queued here already stays ours to
/// accept. Also when a fork left it shared: a child that exec'd may have
/// let go of it since, which only the monitor knows (Python's forkserver
/// is such a child), and a sibling that still holds it under ipcd keeps
/// its connects, its accepts now taking the program's blocking flag.
/// Returns whether `sock` is a listener (passed before or now).
pub(crate) fn pass_listener(fd: libc::c_int, sock: &Socket) -> bool {
    let mut state = sock.lock();
    let State::Listening { id, shared, passed, .. } = &mut *state else { return false };
    if std::mem::replace(passed, true) {
        return true;
    }
    *shared = false;
    let id = *id;
    // Answered after every `Incoming` sent before it, which `call` queues.
    let _ = control::with(|c| c.call(&Request::Unlisten { listener: id }, &[]));
    if !sock.nonblocking() {
        real::set_kernel_nonblocking(fd, false);
    }
    log!(Level::Debug, "listener {id} (fd {fd}) passed to another process: the kernel's from now on");
    true
}
