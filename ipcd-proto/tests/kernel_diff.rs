//! Differential test: random call sequences on a real kernel TCP loopback
//! pair and on two `Conn` state machines joined the way ipcd joins them
//! (two byte queues standing for the rings, and the ring flags: FIN, reset,
//! reader closed). Every return value, errno, byte, `SIGPIPE` and poll mask
//! must agree.

use std::collections::VecDeque;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};

use ipcd_proto::state::{CloseAction, Conn, Errno, How, Readiness, Recv, Ring, Send};
use proptest::prelude::*;

#[derive(Debug, Clone, Copy)]
enum Op {
    Send { end: usize, len: usize, nosignal: bool },
    Recv { end: usize, len: usize, peek: bool },
    Shutdown { end: usize, how: i32 },
    Close { end: usize, linger0: bool },
    Poll { end: usize },
    SoError { end: usize },
}

impl Op {
    fn end(&self) -> usize {
        match *self {
            Op::Send { end, .. }
            | Op::Recv { end, .. }
            | Op::Shutdown { end, .. }
            | Op::Close { end, .. }
            | Op::Poll { end }
            | Op::SoError { end } => end,
        }
    }
}

/// What one call returned, as the program sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    /// Return value (and bytes, for recv).
    Ok(usize, Vec<u8>),
    Err(i32),
    Mask(u32),
    SoError(i32),
}

fn op() -> impl Strategy<Value = Op> {
    let end = 0usize..2;
    prop_oneof![
        5 => (end.clone(), 0usize..300, any::<bool>()).prop_map(|(end, len, nosignal)| Op::Send { end, len, nosignal }),
        5 => (end.clone(), 0usize..400, any::<bool>()).prop_map(|(end, len, peek)| Op::Recv { end, len, peek }),
        2 => (end.clone(), 0i32..4).prop_map(|(end, how)| Op::Shutdown { end, how }),
        1 => (end.clone(), prop::bool::weighted(0.2)).prop_map(|(end, linger0)| Op::Close { end, linger0 }),
        3 => end.clone().prop_map(|end| Op::Poll { end }),
        1 => end.prop_map(|end| Op::SoError { end }),
    ]
}

const POLL_EVENTS: i16 = libc::POLLIN | libc::POLLOUT | libc::POLLRDHUP | libc::POLLRDNORM | libc::POLLWRNORM;

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Blocks SIGPIPE in this thread so a raised one stays pending, to be seen.
fn block_sigpipe() {
    // SAFETY: plain signal-mask calls on this thread.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        assert_eq!(libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()), 0);
    }
}

/// Takes a pending SIGPIPE of this thread, if any.
fn take_sigpipe() -> bool {
    // SAFETY: sigtimedwait with a zero timeout on a blocked signal.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        let zero = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        libc::sigtimedwait(&set, std::ptr::null_mut(), &zero) == libc::SIGPIPE
    }
}

struct Kernel {
    fds: [Option<RawFd>; 2],
    next_byte: [u8; 2],
}

impl Kernel {
    fn new() -> Kernel {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        // Nagle would hold small segments back until an ACK: a timing
        // effect, not a semantic one, and ipcd has no such delay.
        for s in [&a, &b] {
            s.set_nonblocking(true).unwrap();
            s.set_nodelay(true).unwrap();
        }
        Kernel { fds: [Some(a.into_raw_fd()), Some(b.into_raw_fd())], next_byte: [0, 128] }
    }

    fn run(&mut self, op: Op) -> (Seen, bool) {
        let fd = self.fds[op.end()].expect("op on a closed end");
        // SAFETY: each call gets valid buffers of the stated lengths on an
        // fd this test owns.
        let seen = unsafe {
            match op {
                Op::Send { end, len, nosignal } => {
                    let data: Vec<u8> = (0..len).map(|i| self.next_byte[end].wrapping_add(i as u8)).collect();
                    let flags = libc::MSG_DONTWAIT | if nosignal { libc::MSG_NOSIGNAL } else { 0 };
                    let n = libc::send(fd, data.as_ptr().cast(), len, flags);
                    if n < 0 {
                        Seen::Err(errno())
                    } else {
                        self.next_byte[end] = self.next_byte[end].wrapping_add(n as u8);
                        Seen::Ok(n as usize, Vec::new())
                    }
                }
                Op::Recv { len, peek, .. } => {
                    let mut buf = vec![0u8; len];
                    let flags = libc::MSG_DONTWAIT | if peek { libc::MSG_PEEK } else { 0 };
                    let n = libc::recv(fd, buf.as_mut_ptr().cast(), len, flags);
                    if n < 0 {
                        Seen::Err(errno())
                    } else {
                        buf.truncate(n as usize);
                        Seen::Ok(n as usize, buf)
                    }
                }
                Op::Shutdown { how, .. } => {
                    if libc::shutdown(fd, how) < 0 {
                        Seen::Err(errno())
                    } else {
                        Seen::Ok(0, Vec::new())
                    }
                }
                Op::Close { end, linger0 } => {
                    if linger0 {
                        let l = libc::linger { l_onoff: 1, l_linger: 0 };
                        let len = std::mem::size_of::<libc::linger>() as libc::socklen_t;
                        assert_eq!(
                            libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, (&raw const l).cast(), len),
                            0
                        );
                    }
                    self.fds[end] = None;
                    assert_eq!(libc::close(fd), 0);
                    Seen::Ok(0, Vec::new())
                }
                Op::Poll { .. } => {
                    let mut p = libc::pollfd { fd, events: POLL_EVENTS, revents: 0 };
                    assert_eq!(libc::poll(&mut p, 1, 0), i32::from(p.revents != 0));
                    Seen::Mask(p.revents as u16 as u32)
                }
                Op::SoError { .. } => {
                    let mut v: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    assert_eq!(
                        libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_ERROR, (&raw mut v).cast(), &mut len),
                        0
                    );
                    Seen::SoError(v)
                }
            }
        };
        (seen, take_sigpipe())
    }
}

impl Drop for Kernel {
    fn drop(&mut self) {
        for fd in self.fds.iter().flatten() {
            // SAFETY: our own fd, closed once.
            unsafe { libc::close(*fd) };
        }
    }
}

/// Two ends joined as ipcd joins them. `to[i]` holds the bytes in flight to
/// end `i` (its receiving ring); the flags are those the rings carry.
struct Model {
    conn: [Conn; 2],
    to: [VecDeque<u8>; 2],
    fin: [bool; 2],
    reset: [bool; 2],
    next_byte: [u8; 2],
}

impl Model {
    fn new() -> Model {
        Model {
            conn: [Conn::established(), Conn::established()],
            to: [VecDeque::new(), VecDeque::new()],
            fin: [false; 2],
            reset: [false; 2],
            next_byte: [0, 128],
        }
    }

    /// What the rings tell end `i` right now.
    fn ring(&self, i: usize) -> Ring {
        let p = 1 - i;
        Ring {
            readable: self.to[i].len(),
            writable: 1 << 20,
            peer_fin: self.fin[p],
            peer_reset: self.reset[p],
            peer_reader_closed: self.conn[p].stops_reading(),
        }
    }

    fn run(&mut self, op: Op) -> (Seen, bool) {
        let i = op.end();
        let ring = self.ring(i);
        let c = &mut self.conn[i];
        let err = |e: Errno| Seen::Err(e.code());
        match op {
            Op::Send { len, nosignal, .. } => match c.send(&ring, len, nosignal) {
                Send::Write(n) => {
                    let start = self.next_byte[i];
                    self.to[1 - i].extend((0..n).map(|k| start.wrapping_add(k as u8)));
                    self.next_byte[i] = start.wrapping_add(n as u8);
                    (Seen::Ok(n, Vec::new()), false)
                }
                Send::Discard(n) => {
                    self.next_byte[i] = self.next_byte[i].wrapping_add(n as u8);
                    self.reset[i] = true;
                    (Seen::Ok(n, Vec::new()), false)
                }
                Send::WouldBlock => (err(Errno::EAGAIN), false),
                Send::Fail { errno, sigpipe } => (err(errno), sigpipe),
            },
            Op::Recv { len, peek, .. } => match c.recv(&ring, len) {
                Recv::Read(n) => {
                    let bytes: Vec<u8> = if peek {
                        self.to[i].iter().take(n).copied().collect()
                    } else {
                        self.to[i].drain(..n).collect()
                    };
                    (Seen::Ok(n, bytes), false)
                }
                Recv::Eof => (Seen::Ok(0, Vec::new()), false),
                Recv::WouldBlock => (err(Errno::EAGAIN), false),
                Recv::Fail(e) => (err(e), false),
            },
            Op::Shutdown { how, .. } => match How::from_raw(how) {
                Err(e) => (err(e), false),
                Ok(how) => {
                    let (res, fin) = c.shutdown(&ring, how);
                    self.fin[i] |= fin;
                    (res.map_or_else(err, |()| Seen::Ok(0, Vec::new())), false)
                }
            },
            Op::Close { linger0, .. } => {
                match c.close(&ring, linger0) {
                    CloseAction::Fin => self.fin[i] = true,
                    CloseAction::Reset => self.reset[i] = true,
                    CloseAction::Quiet => {}
                }
                self.to[i].clear();
                (Seen::Ok(0, Vec::new()), false)
            }
            Op::Poll { .. } => {
                let asked = Readiness::from_bits_truncate(POLL_EVENTS as u16 as u32) | Readiness::ERR | Readiness::HUP;
                (Seen::Mask((c.poll(&ring) & asked).bits()), false)
            }
            Op::SoError { .. } => (Seen::SoError(c.so_error(&ring).map_or(0, Errno::code)), false),
        }
    }
}

/// Runs `ops` on both; returns the first disagreement as a readable trace.
fn compare(ops: &[Op]) -> Result<(), String> {
    block_sigpipe();
    let _ = take_sigpipe();
    let mut kernel = Kernel::new();
    let mut model = Model::new();
    let mut closed = [false; 2];
    let mut trace = String::new();
    for &op in ops {
        if closed[op.end()] {
            continue;
        }
        if let Op::Close { end, .. } = op {
            closed[end] = true;
        }
        let k = kernel.run(op);
        let m = model.run(op);
        trace.push_str(&format!("{op:?}\n    kernel {k:?}\n    model  {m:?}\n"));
        if k != m {
            return Err(format!("disagreement:\n{trace}"));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, max_shrink_iters: 2000, ..ProptestConfig::default() })]

    #[test]
    fn state_machine_answers_like_the_kernel(ops in prop::collection::vec(op(), 1..40)) {
        if let Err(trace) = compare(&ops) {
            prop_assert!(false, "{}", trace);
        }
    }
}

/// The errno values the machine uses are Linux's.
#[test]
fn errno_values_are_linux() {
    for (ours, theirs) in [
        (Errno::EAGAIN, libc::EAGAIN),
        (Errno::EINVAL, libc::EINVAL),
        (Errno::EPIPE, libc::EPIPE),
        (Errno::ECONNRESET, libc::ECONNRESET),
        (Errno::ENOTCONN, libc::ENOTCONN),
        (Errno::ETIMEDOUT, libc::ETIMEDOUT),
        (Errno::ECONNREFUSED, libc::ECONNREFUSED),
        (Errno::EINPROGRESS, libc::EINPROGRESS),
    ] {
        assert_eq!(ours.code(), theirs, "{ours:?}");
    }
    let bits = [
        (Readiness::IN, libc::POLLIN),
        (Readiness::OUT, libc::POLLOUT),
        (Readiness::ERR, libc::POLLERR),
        (Readiness::HUP, libc::POLLHUP),
        (Readiness::RDNORM, libc::POLLRDNORM),
        (Readiness::WRNORM, libc::POLLWRNORM),
        (Readiness::RDHUP, libc::POLLRDHUP),
    ];
    for (ours, theirs) in bits {
        assert_eq!(ours.bits(), theirs as u32, "{ours:?}");
    }
}

/// A hand-picked sequence with every interesting transition, so a broken
/// row shows up by name, not only through a shrunk random case.
#[test]
fn scripted_close_sequences_match_the_kernel() {
    use Op::*;
    let scripts: &[&[Op]] = &[
        // A closes cleanly; B reads EOF, then sends into the closed socket.
        &[
            Send { end: 0, len: 5, nosignal: false },
            Close { end: 0, linger0: false },
            Poll { end: 1 },
            Recv { end: 1, len: 10, peek: false },
            Recv { end: 1, len: 10, peek: false },
            Send { end: 1, len: 3, nosignal: false },
            Poll { end: 1 },
            SoError { end: 1 },
            Send { end: 1, len: 3, nosignal: false },
            Send { end: 1, len: 3, nosignal: true },
            Shutdown { end: 1, how: 1 },
        ],
        // A closes with unread data: B is reset.
        &[
            Send { end: 1, len: 7, nosignal: false },
            Send { end: 0, len: 4, nosignal: false },
            Close { end: 0, linger0: false },
            Poll { end: 1 },
            Recv { end: 1, len: 2, peek: false },
            Recv { end: 1, len: 10, peek: false },
            Recv { end: 1, len: 10, peek: false },
            Recv { end: 1, len: 10, peek: false },
            Send { end: 1, len: 1, nosignal: false },
        ],
        // Half-closes in both directions.
        &[
            Shutdown { end: 0, how: 1 },
            Poll { end: 0 },
            Poll { end: 1 },
            Send { end: 0, len: 1, nosignal: false },
            Send { end: 1, len: 9, nosignal: false },
            Recv { end: 0, len: 9, peek: true },
            Recv { end: 0, len: 9, peek: false },
            Shutdown { end: 1, how: 2 },
            Poll { end: 0 },
            Poll { end: 1 },
            Shutdown { end: 0, how: 0 },
            Recv { end: 0, len: 1, peek: false },
            Recv { end: 1, len: 1, peek: false },
        ],
        // Read-shut only, then data, then SHUT_WR: new data resets both.
        &[
            Shutdown { end: 0, how: 0 },
            Poll { end: 0 },
            Send { end: 1, len: 4, nosignal: false },
            Recv { end: 0, len: 9, peek: false },
            Shutdown { end: 0, how: 1 },
            Send { end: 1, len: 4, nosignal: false },
            Poll { end: 0 },
            Poll { end: 1 },
            Recv { end: 0, len: 9, peek: false },
            SoError { end: 0 },
            Recv { end: 0, len: 9, peek: false },
        ],
    ];
    for ops in scripts {
        if let Err(trace) = compare(ops) {
            panic!("{trace}");
        }
    }
}
