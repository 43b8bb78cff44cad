//! Socket options the library follows: the ones that change what ipcd
//! does with a connection (timeouts, `SO_LINGER`, `TCP_INQ`, `SO_TIMESTAMP`,
//! `SO_ZEROCOPY`, `SO_SNDBUF`), and the ones an accepted connection inherits from its
//! listener. Linux makes each accepted socket a copy of the listening one,
//! options and all (timeouts, keepalive, linger, `TCP_NODELAY`, buffer
//! sizes, …); an ipcd connection's socket is made by the library, so it
//! is given the options the program set on the listener, in the order set.

use std::sync::Mutex;
use std::time::Duration;

use libc::{c_int, c_void, socklen_t};

use ipcd_proto::SockAddr;

use crate::socket::{reuse, Socket, TCP_INQ};
use crate::sys::real;

/// Options set on a socket before it was a connection (on a listener, or
/// before it listened): `(level, name, value)`, the last value of each.
#[derive(Debug, Default)]
pub(crate) struct Inherited(Mutex<Vec<(c_int, c_int, Vec<u8>)>>);

/// At most this many options are remembered per listener (a program sets
/// a handful; past this, later ones are not passed on).
const MAX_INHERITED: usize = 32;

/// The longest value remembered (the options that matter are ints,
/// timevals, lingers and short names).
const MAX_VALUE: usize = 64;

/// Options an accepted socket does not get from its listener on Linux
/// (listener-only state, a value the handshake decides), and the ones
/// whose value points at memory the program may have freed since.
fn not_inherited(level: c_int, name: c_int) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_PRIORITY
                | libc::SO_ATTACH_FILTER
                | libc::SO_DETACH_FILTER
                | libc::SO_ATTACH_BPF
                | libc::SO_ATTACH_REUSEPORT_CBPF
                | libc::SO_ATTACH_REUSEPORT_EBPF
                | libc::SO_LOCK_FILTER
        ),
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_DEFER_ACCEPT
                | libc::TCP_FASTOPEN
                | libc::TCP_FASTOPEN_KEY
                | libc::TCP_MAXSEG
                | libc::TCP_SAVE_SYN
                | libc::TCP_REPAIR
                | libc::TCP_REPAIR_QUEUE
                | libc::TCP_QUEUE_SEQ
                | libc::TCP_REPAIR_OPTIONS
                | libc::TCP_REPAIR_WINDOW
        ),
        libc::IPPROTO_IP | libc::IPPROTO_IPV6 => false,
        _ => true,
    }
}

/// Before the kernel sets `level`/`name` on our socket `s` (fd `fd`): a
/// resettable option is noted for the socket's reuse; any other leaves
/// state we cannot undo, so the kernel socket is never reused, and first
/// swapped for a new one if it was bound by the library (some options
/// answer differently on a bound socket: `IPV6_V6ONLY`).
pub(crate) fn before_set(fd: c_int, s: &Socket, level: c_int, name: c_int) {
    match reuse::resettable(level, name) {
        // Noted even if the kernel refuses it: one reset more.
        Some(bit) => s.note_reset(bit),
        None => {
            s.taint();
            reuse::unbind(fd, s, &mut s.lock());
        }
    }
}

/// The size the kernel took for buffer option `name` (it doubles what
/// was asked, within its bounds), at least 1.
fn kernel_int(fd: c_int, name: c_int) -> Option<u32> {
    let mut v: c_int = 0;
    let mut l = size_of::<c_int>() as socklen_t;
    // SAFETY: an int out buffer and its size.
    let r = unsafe { real::getsockopt(fd, libc::SOL_SOCKET, name, (&raw mut v).cast(), &mut l) };
    (r == 0).then(|| v.max(1) as u32)
}

/// After the kernel took `level`/`name` = `val` (`len` bytes) on our
/// socket `s` (fd `fd`): notes what changes ipcd's behaviour, and
/// remembers it for the connections a listener accepts.
///
/// # Safety
/// `val` is valid for `len` bytes (the kernel just read them).
pub(crate) unsafe fn after_set(fd: c_int, s: &Socket, level: c_int, name: c_int, val: *const c_void, len: socklen_t) {
    let len = len as usize;
    // SAFETY: by contract.
    let bytes = unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len) };
    let int = || bytes.get(..4).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
    match (level, name) {
        // The monitor reads it from the listening socket and defers
        // announcing connections until their first data.
        (libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT) => crate::socket::setup::refresh_listener(fd, s),
        // Turned off, it sends what it held at once, as Linux's does.
        (libc::IPPROTO_TCP, libc::TCP_CORK) => {
            if let Some(v) = int() {
                s.set_corked(v != 0);
                if v == 0 {
                    let _ = crate::socket::stream::with_stream(s, |st| st.publish_held());
                }
            }
        }
        (libc::IPPROTO_TCP, TCP_INQ) => {
            if let Some(v) = int() {
                s.set_inq(v != 0);
            }
        }
        (libc::SOL_SOCKET, libc::SO_RCVTIMEO | libc::SO_SNDTIMEO) if len >= size_of::<libc::timeval>() => {
            // SAFETY: the kernel accepted it as a timeval.
            let tv = unsafe { val.cast::<libc::timeval>().read_unaligned() };
            let t = if tv.tv_sec < 0 {
                // Linux takes a negative timeout as none at all: the call
                // fails with EAGAIN at once (sock_set_timeout).
                None
            } else {
                Some(Duration::from_secs(tv.tv_sec as u64) + Duration::from_micros(tv.tv_usec.max(0) as u64))
            };
            s.set_timeout(name == libc::SO_RCVTIMEO, t);
        }
        (libc::SOL_SOCKET, libc::SO_ZEROCOPY) => {
            if let Some(v) = int() {
                s.set_zerocopy(v != 0);
            }
        }
        // What a connection may hold unread: the size the kernel took (it
        // doubles what was asked, within its bounds). A sender blocked on
        // the old limit wakes to look again, as Linux's does.
        (libc::SOL_SOCKET, libc::SO_SNDBUF | libc::SO_SNDBUFFORCE) => {
            if let Some(bytes) = kernel_int(fd, libc::SO_SNDBUF) {
                s.set_sndbuf(bytes);
                let _ = crate::socket::stream::with_stream(s, |st| {
                    st.link.set_send_limit(bytes as usize);
                    st.link.ring_own();
                });
            }
        }
        // The receive buffer adds to what the peer may send ahead: a peer
        // blocked on the old one is woken to look again.
        (libc::SOL_SOCKET, libc::SO_RCVBUF | libc::SO_RCVBUFFORCE) => {
            if let Some(bytes) = kernel_int(fd, libc::SO_RCVBUF) {
                s.set_rcvbuf(bytes);
                let _ = crate::socket::stream::with_stream(s, |st| {
                    st.link.set_window(bytes as usize);
                    st.link.ring_peer();
                });
            }
        }
        // SO_TIMESTAMP and SO_TIMESTAMPNS, old and new (y2038) numbers.
        (libc::SOL_SOCKET, 29 | 35 | 63 | 64) => {
            if let Some(v) = int() {
                s.set_timestamp(if v != 0 { name } else { 0 });
            }
        }
        (libc::SOL_SOCKET, libc::SO_LINGER) if len >= size_of::<libc::linger>() => {
            // SAFETY: the kernel accepted it as a linger.
            let l = unsafe { val.cast::<libc::linger>().read_unaligned() };
            s.set_linger_zero(l.l_onoff != 0 && l.l_linger == 0);
        }
        _ => {}
    }
    if !s.is_stream() && len <= MAX_VALUE && !not_inherited(level, name) {
        s.inherited.remember(level, name, bytes);
    }
}

impl Inherited {
    fn list(&self) -> std::sync::MutexGuard<'_, Vec<(c_int, c_int, Vec<u8>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, level: c_int, name: c_int, bytes: &[u8]) {
        let mut list = self.list();
        if let Some(e) = list.iter_mut().find(|e| e.0 == level && e.1 == name) {
            e.2 = bytes.to_vec();
        } else if list.len() < MAX_INHERITED {
            list.push((level, name, bytes.to_vec()));
        }
    }

    /// Gives the socket `new` just accepted (fd `fd`) what was remembered
    /// here, as Linux copies a listener into its accepted sockets. An
    /// option the kernel refuses now is left out, as it was never set.
    pub(crate) fn pass_to(&self, fd: c_int, new: &Socket) {
        let list = self.list();
        for (level, name, val) in list.iter() {
            before_set(fd, new, *level, *name);
            let (p, len) = (val.as_ptr().cast::<c_void>(), val.len() as socklen_t);
            // SAFETY: our own buffer of `len` bytes, on our new socket.
            if unsafe { real::setsockopt(fd, *level, *name, p, len) } == 0 {
                // SAFETY: as above.
                unsafe { after_set(fd, new, *level, *name, p, len) };
            }
        }
    }
}

/// `TCP_MAXSEG` of an established loopback connection of `family`, as the
/// kernel reports it: at the connecting end before any byte moved
/// (`fresh`), or at either end otherwise (they agree once a segment
/// went). Learnt once per process from a real loopback connection (the
/// values are the kernel's own, and differ between families and
/// kernels), the first time a program asks an ipcd connection. `None`
/// if the kernel would not make one.
pub(crate) fn loopback_mss(family: c_int, fresh: bool) -> Option<c_int> {
    use std::sync::atomic::{AtomicI32, Ordering};
    // v4 fresh, v4 after data, v6 fresh, v6 after data; 0: not learnt.
    static MSS: [AtomicI32; 4] = [const { AtomicI32::new(0) }; 4];
    let i = usize::from(family == libc::AF_INET6) * 2 + usize::from(!fresh);
    let v = MSS[i].load(Ordering::Relaxed);
    if v > 0 {
        return Some(v);
    }
    let (f, d) = learn_mss(family)?;
    MSS[i & !1].store(f, Ordering::Relaxed);
    MSS[i | 1].store(d, Ordering::Relaxed);
    Some(if fresh { f } else { d })
}

/// A loopback connection's `TCP_MAXSEG` at the connecting end, before and
/// after a byte went each way, through the kernel.
fn learn_mss(family: c_int) -> Option<(c_int, c_int)> {
    let addr = match family {
        libc::AF_INET6 => {
            SockAddr::V6 { ip: std::net::Ipv6Addr::LOCALHOST.octets(), port: 0, flowinfo: 0, scope_id: 0 }
        }
        _ => SockAddr::V4 { ip: [127, 0, 0, 1], port: 0 },
    };
    let (ss, len) = addr.to_raw();
    let flags = libc::SOCK_STREAM | libc::SOCK_CLOEXEC;
    let mss = |fd| real::int_opt(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG);
    // SAFETY: sockets made, used and closed here, through libc's own calls
    // (none of them becomes ours); out buffers of their sizes.
    unsafe {
        let (l, c) = (real::socket(family, flags, 0), real::socket(family, flags, 0));
        let mut a = -1;
        let mut got = None;
        let mut bound: libc::sockaddr_storage = std::mem::zeroed();
        let mut blen = size_of::<libc::sockaddr_storage>() as socklen_t;
        if l >= 0
            && c >= 0
            && real::bind(l, (&raw const ss).cast(), len) == 0
            && real::listen(l, 1) == 0
            && real::getsockname(l, (&raw mut bound).cast(), &mut blen) == 0
            && real::connect(c, (&raw const bound).cast(), blen) == 0
        {
            a = real::accept4(l, std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC);
            let fresh = mss(c);
            let mut b = [0u8; 1];
            let moved = a >= 0
                && real::write(c, b.as_ptr().cast(), 1) == 1
                && real::read(a, b.as_mut_ptr().cast(), 1) == 1
                && real::write(a, b.as_ptr().cast(), 1) == 1
                && real::read(c, b.as_mut_ptr().cast(), 1) == 1;
            got = fresh.zip(if moved { mss(c) } else { None });
        }
        for fd in [a, c, l] {
            if fd >= 0 {
                real::close(fd);
            }
        }
        got
    }
}
