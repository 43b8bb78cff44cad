//! Kernel sockets kept for reuse. Making a kernel socket (and binding it to
//! reserve a port) and destroying it cost more than the rest of an ipcd
//! connection's set-up, yet the one under an ipcd connection never carries
//! a byte. So the last close of a clean one keeps it at a hidden fd, and
//! the next `socket()` or `accept()` of the family takes it with
//! `F_DUPFD(…, 0)`, which gives the lowest free number as `socket()` would.
//!
//! The hidden fd stays open while the program holds the duplicate (it is
//! *lent*, [`Socket::lend`]): a clean last close is then only the
//! program's `close`, and the next `socket()` one `fcntl` — two system
//! calls per connection instead of four (moving the socket out to a
//! hidden number and back, and closing each old number). At most
//! [`CAPACITY`] per family are kept and as many lent (more sockets in use
//! take the four calls), so a program with many connections holds few
//! extra fds. A lent copy goes as soon as
//! the socket can no longer be kept (tainted, swapped by [`unbind`],
//! forgotten, or its last close did not keep it): kept open, it would hold
//! a kernel connection open past the program's close, or reach a forked
//! child.
//!
//! Clean means nobody could tell the kept socket from a new one: made by
//! this process, never bound or listened by the program, never shared by
//! fork, exec or `SCM_RIGHTS`, no option, ioctl or fcntl of the program's
//! left on it except the ones in [`RESETTABLE`], which are put back to
//! their defaults. A kept socket stays bound where the library bound it
//! for its connection, so the next connection reuses the port without a
//! `bind`; to the program such a socket is unbound, and it is swapped for a
//! truly new one ([`unbind`]) before anything that could show the binding.

use std::cell::Cell;
use std::os::fd::IntoRawFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use ipcd_proto::SockAddr;
use libc::c_int;

use crate::socket::{Socket, State, TCP_INQ};
use crate::sys::{fds, real};

/// Options a program commonly sets that can be put back exactly: `(level,
/// name, size)`; every default is all zeroes (off, no timeout, no linger).
pub(crate) const RESETTABLE: [(c_int, c_int, usize); 10] = [
    (libc::IPPROTO_TCP, libc::TCP_NODELAY, 4),
    (libc::IPPROTO_TCP, TCP_INQ, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEADDR, 4),
    (libc::SOL_SOCKET, libc::SO_REUSEPORT, 4),
    (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 4),
    (libc::SOL_SOCKET, libc::SO_OOBINLINE, 4),
    (libc::SOL_SOCKET, libc::SO_ZEROCOPY, 4),
    (libc::SOL_SOCKET, libc::SO_LINGER, size_of::<libc::linger>()),
    (libc::SOL_SOCKET, libc::SO_RCVTIMEO, size_of::<libc::timeval>()),
    (libc::SOL_SOCKET, libc::SO_SNDTIMEO, size_of::<libc::timeval>()),
];

/// The bit of an option in [`RESETTABLE`].
pub(crate) fn resettable(level: c_int, name: c_int) -> Option<u32> {
    RESETTABLE.iter().position(|&(l, n, _)| l == level && n == name).map(|i| i as u32)
}

/// A kept kernel socket.
pub(crate) struct Kept {
    /// Its hidden fd.
    fd: c_int,
    family: c_int,
    /// Where the library bound it, if it did.
    bound: Option<SockAddr>,
    /// Its `O_NONBLOCK`.
    nonblock: bool,
}

/// Kept sockets. Taken only for short sections that call nothing of ours
/// (a leaf lock), and across a fork by the forking thread.
static KEPT: Mutex<Vec<Kept>> = Mutex::new(Vec::new());

/// At most this many of a family are kept, and as many lent: each holds
/// an fd (and maybe a port) the program does not see. (Counting lent ones
/// against the kept ones made a server with more connections in flight
/// than this make and destroy a kernel socket for each extra one.)
const CAPACITY: usize = 8;

/// Lent copies open now, by family (`AF_INET`, `AF_INET6`).
static LENT: [AtomicUsize; 2] = [const { AtomicUsize::new(0) }; 2];

fn lent(family: c_int) -> &'static AtomicUsize {
    &LENT[usize::from(family == libc::AF_INET6)]
}

fn kept() -> MutexGuard<'static, Vec<Kept>> {
    KEPT.lock().unwrap_or_else(|p| p.into_inner())
}

/// Twice the forks this process made, plus one while one is under way
/// (from its prepare handler to its parent or child handler).
static FORKS: AtomicU64 = AtomicU64::new(0);

/// A fork begins (its prepare handler, before it taints the sockets it
/// finds): a socket made or kept from now until [`fork_ends`] may be
/// missed by that handler and yet be in the child, so it is never reused.
pub(crate) fn fork_begins() {
    FORKS.fetch_add(1, Ordering::SeqCst);
    // Pairs with the fence in `forked_since`: the handler's look at the
    // table comes after it.
    std::sync::atomic::fence(Ordering::SeqCst);
}

/// The fork is over (the parent's handler, which glibc runs after a
/// failed fork too, and the child's, whose count is a copy).
pub(crate) fn fork_ends() {
    FORKS.fetch_add(1, Ordering::SeqCst);
}

/// Whether a fork was under way at, or began since, the moment [`FORKS`]
/// read `since`. The fence orders the caller's earlier stores (a socket
/// put in the table) before the look, as [`fork_begins`] orders its count
/// before the handler's look at the table: one of the two sees the other.
fn forked_since(since: u64) -> bool {
    std::sync::atomic::fence(Ordering::SeqCst);
    since % 2 == 1 || FORKS.load(Ordering::Relaxed) != since
}

/// A kernel socket for the program: `fd` and where it is (invisibly)
/// bound, or the errno `socket()` gives.
pub(crate) struct Made {
    pub fd: c_int,
    pub bound: Option<SockAddr>,
    /// The hidden kept socket `fd` duplicates, for [`Socket::lend`].
    pub lent: Option<c_int>,
    /// [`FORKS`] before it was made.
    forks: u64,
}

impl Made {
    /// The socket made for the program from this: holds the lent copy.
    pub(crate) fn lend_to(&self, sock: &Socket) {
        if let Some(h) = self.lent {
            sock.lend(h);
        }
    }

    /// `sock`, made from this, is in the socket table (and marked clean):
    /// if a fork began meanwhile, its handler may have looked at the table
    /// before it was there, and the child may hold its kernel socket (or
    /// the kept one it duplicates): tainted, never reused.
    pub(crate) fn installed(&self, sock: &Socket) {
        if forked_since(self.forks) {
            sock.taint();
        }
    }
}

/// A TCP socket of `family` with `flags` (`SOCK_NONBLOCK`, `SOCK_CLOEXEC`):
/// a kept one if there is one, else a new one.
pub(crate) fn socket(family: c_int, flags: c_int) -> Result<Made, c_int> {
    let nonblock = flags & libc::SOCK_NONBLOCK != 0;
    let forks = FORKS.load(Ordering::SeqCst);
    let taken = {
        let mut kept = kept();
        // Prefer one whose O_NONBLOCK is already right: one call less.
        let best =
            kept.iter().enumerate().filter(|(_, k)| k.family == family).max_by_key(|(_, k)| k.nonblock == nonblock);
        best.map(|(i, _)| i).map(|i| kept.swap_remove(i))
    };
    if let Some(k) = taken {
        let cmd = if flags & libc::SOCK_CLOEXEC != 0 { libc::F_DUPFD_CLOEXEC } else { libc::F_DUPFD };
        // SAFETY: duplicates our hidden fd to the lowest free number.
        let fd = unsafe { real::fcntl(k.fd, cmd, 0) };
        if fd >= 0 {
            if k.nonblock != nonblock {
                real::set_kernel_nonblocking(fd, nonblock);
            }
            // Lent while few are: beyond, one more hidden fd per socket in
            // use would be one more per connection.
            let lend = lent(family).fetch_add(1, Ordering::Relaxed) < CAPACITY;
            if lend {
                return Ok(Made { fd, bound: k.bound, lent: Some(k.fd), forks });
            }
            lent(family).fetch_sub(1, Ordering::Relaxed);
            drop_hidden(k.fd);
            return Ok(Made { fd, bound: k.bound, lent: None, forks });
        }
        // No free number: closing ours frees one for the new socket below.
        drop_hidden(k.fd);
    }
    // SAFETY: plain socket creation.
    let fd = unsafe { real::socket(family, libc::SOCK_STREAM | flags, 0) };
    if fd < 0 {
        return Err(real::errno());
    }
    Ok(Made { fd, bound: None, lent: None, forks })
}

/// Closes hidden `fd`, a kept socket nobody else knows (the program may
/// still hold a duplicate, which keeps the kernel socket).
fn drop_hidden(fd: c_int) {
    fds::unhide(fd);
    // SAFETY: our hidden fd; closing it drops one reference.
    unsafe { real::close(fd) };
}

/// `sock` will not be kept: the copy it was lent, if any, goes.
pub(crate) fn give_up(sock: &Socket) {
    if let Some(h) = sock.take_lent() {
        lent(sock.family).fetch_sub(1, Ordering::Relaxed);
        drop_hidden(h);
    }
}

/// The fork count now, for [`keep`]: read by a close before its socket
/// leaves the table (where a fork's handler could still see and taint it).
pub(crate) fn forks_now() -> u64 {
    FORKS.load(Ordering::SeqCst)
}

/// The last close of `sock`, still open as `fd`, is under way (nothing
/// else uses it): keeps its kernel socket if it is clean, once the
/// program's `fd` is closed ([`commit_kept`]) and if no fork began since
/// `forks` ([`forks_now`] before the socket left the table: a fork from
/// then on may have missed it and its child may hold `fd`).
/// What is not kept, the caller's `close_now` lets go (see [`give_up`]).
pub(crate) fn keep(fd: c_int, sock: &Socket, bound: Option<SockAddr>, forks: u64) {
    let family = sock.family;
    if !sock.is_clean() || kept().iter().filter(|k| k.family == family).count() >= CAPACITY {
        return;
    }
    let resets = sock.resets();
    for (i, &(level, name, size)) in RESETTABLE.iter().enumerate() {
        let zero = [0u8; 16];
        // SAFETY: `size` zero bytes, at most 16, are the option's default.
        if resets & (1 << i) != 0 && unsafe { real::setsockopt(fd, level, name, zero.as_ptr().cast(), size as _) } != 0
        {
            return;
        }
    }
    let hidden = match sock.take_lent() {
        Some(h) => {
            lent(family).fetch_sub(1, Ordering::Relaxed);
            h
        }
        None => match fds::hidden_copy(fd) {
            Some(copy) => copy.into_raw_fd(),
            None => return,
        },
    };
    let k = Kept { fd: hidden, family, bound, nonblock: sock.nonblocking() };
    if let Some((old, _)) = PENDING.with(|p| p.replace(Some((k, forks)))) {
        drop_hidden(old.fd);
    }
}

thread_local! {
    /// The kernel socket [`keep`] kept, until the program's fd to it is
    /// closed ([`commit_kept`]).
    static PENDING: Cell<Option<(Kept, u64)>> = const { Cell::new(None) };
}

/// The kernel closed the program's fd whose socket [`keep`] kept: the
/// kept copy joins the list, unless a fork began since `keep` looked.
/// Such a fork's handler may have tainted the socket after that look,
/// and its child holds a copy of the kernel socket (the program's fd, or
/// our copy of it) unless the list had it then (the child closes what
/// the list holds: the fork takes the lock).
/// Nothing pending (every other close) costs one thread-local load; it
/// never panics and leaves `errno` as it was.
pub(crate) fn commit_kept() {
    let Some((k, forks)) = PENDING.with(Cell::take) else { return };
    let mut kept = kept();
    if forked_since(forks) || kept.iter().filter(|x| x.family == k.family).count() >= CAPACITY {
        drop(kept);
        let err = real::errno();
        drop_hidden(k.fd);
        real::set_errno(err);
        return;
    }
    kept.push(k);
}

/// A fresh socket `fd` of ours was a kept one still bound (`bound` in its
/// state, locked by the caller): swaps it for a new unbound kernel socket
/// with the same flags and the resettable options the program set, before
/// the program does what would show the binding (bind, listen, a kernel
/// connect, sharing it). Returns false if no socket could be made; the
/// binding then stays.
pub(crate) fn unbind(fd: c_int, sock: &Socket, state: &mut State) -> bool {
    let State::Fresh { bound } = state else { return true };
    if bound.is_none() {
        return true;
    }
    let flags = if sock.nonblocking() { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain socket creation.
    let new = unsafe { real::socket(sock.family, libc::SOCK_STREAM | flags | libc::SOCK_CLOEXEC, 0) };
    if new < 0 {
        return false;
    }
    let resets = sock.resets();
    for (i, &(level, name, _)) in RESETTABLE.iter().enumerate() {
        if resets & (1 << i) == 0 {
            continue;
        }
        let mut v = [0u8; 16];
        let mut len = v.len() as libc::socklen_t;
        // SAFETY: a 16-byte buffer and its length, then as many bytes back.
        unsafe {
            if real::getsockopt(fd, level, name, v.as_mut_ptr().cast(), &mut len) == 0 {
                real::setsockopt(new, level, name, v.as_ptr().cast(), len);
            }
        }
    }
    // SAFETY: F_GETFD on the program's fd; dup3 replaces the kernel socket
    // under the same number, keeping its close-on-exec flag.
    let ok = unsafe {
        let cloexec = real::fcntl(fd, libc::F_GETFD, 0) > 0;
        let r = real::dup3(new, fd, if cloexec { libc::O_CLOEXEC } else { 0 });
        real::close(new);
        r >= 0
    };
    if ok {
        *bound = None;
        // The copy is of the old, bound socket.
        give_up(sock);
    }
    ok
}

/// Locks the kept sockets across a fork (see `fork.rs`).
pub(crate) fn lock_for_fork() -> MutexGuard<'static, Vec<Kept>> {
    kept()
}

/// In a forked child: the kept sockets are the parent's too; the child
/// closes its copies rather than hand them out a second time.
pub(crate) fn forget_in_child(kept: &mut Vec<Kept>) {
    for k in kept.drain(..) {
        drop_hidden(k.fd);
    }
}
