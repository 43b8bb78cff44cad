//! The ring for the common case, for programs that embed it (feature
//! `std`): a segment in a sealed memfd that one process makes and another
//! opens from the fd, eventfd doorbells, and an endpoint per side with
//! blocking calls that spin a little, then sleep on the doorbell.
//!
//! This is the only part of the crate that makes system calls; the rest
//! stays `no_std` over a region you map yourself.
//!
//! ```
//! use ipcd_ring::shm::{Doorbell, SharedRing};
//! use ipcd_ring::Side;
//!
//! // One process makes the ring and two doorbells; the other would get
//! // the three fds (inherited, or over a Unix socket) and open them.
//! let ring = SharedRing::create(64 * 1024)?;
//! let bells = [Doorbell::new()?, Doorbell::new()?];
//! let other = SharedRing::open(ring.fd().try_clone_to_owned()?)?;
//! let mut a = ring.endpoint(Side::A, bells[0].try_clone()?, bells[1].try_clone()?)?;
//! let mut b = other.endpoint(Side::B, bells[1].try_clone()?, bells[0].try_clone()?)?;
//! // One endpoint per side: a second is refused while the first lives.
//! assert!(ring.endpoint(Side::A, bells[0].try_clone()?, bells[1].try_clone()?).is_err());
//! a.send_all(b"ping")?;
//! let mut buf = [0u8; 4];
//! b.recv_exact(&mut buf)?;
//! assert_eq!(&buf, b"ping");
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::{Consumer, Error, Producer, Segment, Side, Wait};

/// How long a blocking call spins before it sleeps on its doorbell:
/// long enough to catch a peer that answers at once.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn ring_err(e: Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// A segment of two rings in a sealed memfd, mapped here.
#[derive(Debug)]
pub struct SharedRing {
    seg: Segment,
    fd: OwnedFd,
    /// An endpoint of side A, of side B, lives.
    taken: Arc<[AtomicBool; 2]>,
    /// Declared last: `seg` points into it; endpoints share it.
    map: Arc<Mapping>,
}

// SAFETY: the mapping is shared memory kept alive by `map`; the view is
// only read through atomics and the handles it makes, which are `Send`.
unsafe impl Send for SharedRing {}
// SAFETY: as above; `&SharedRing` only reads the mapping.
unsafe impl Sync for SharedRing {}

/// A shared mapping, unmapped when the last of the ring and its
/// endpoints goes.
#[derive(Debug)]
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: a process-wide mapping; only its address is held.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the mapping `map` made with this length; nothing points
        // into it any more (its owners hold this `Arc`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

impl SharedRing {
    /// Makes a segment whose two rings hold `capacity` bytes each (a power
    /// of two), in a memfd sealed against shrinking and growing.
    pub fn create(capacity: usize) -> io::Result<SharedRing> {
        let caps = [capacity as u64; 2];
        let len = Segment::required_len(caps).map_err(ring_err)?;
        // SAFETY: a NUL-terminated name and valid flags.
        let fd =
            cvt(unsafe { libc::memfd_create(c"ipcd-ring".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) })?;
        // SAFETY: a fresh fd that we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: our own memfd.
        cvt(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
        let map = map(&fd, len)?;
        // SAFETY: a fresh shared mapping of `len` bytes, page-aligned, that
        // no one else has yet; it lives as long as the returned value.
        let seg = unsafe { Segment::init(map.base, len, 1, caps) }.map_err(ring_err)?;
        let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on our own memfd.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) })?;
        Ok(SharedRing { seg, fd, taken: Arc::default(), map })
    }

    /// Opens a segment another process made, from its fd: it must be
    /// sealed against shrinking (a peer could otherwise truncate it under
    /// us), and its header is validated.
    pub fn open(fd: OwnedFd) -> io::Result<SharedRing> {
        // SAFETY: fcntl on an fd we own.
        let seals = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })?;
        if seals & libc::F_SEAL_SHRINK == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "segment memfd not sealed against shrinking"));
        }
        // SAFETY: an all-zero stat is valid; fstat fills it.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: our fd and a writable stat.
        cvt(unsafe { libc::fstat(fd.as_raw_fd(), &raw mut st) })?;
        let len = usize::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
        let map = map(&fd, len)?;
        // SAFETY: a shared mapping of the whole sealed memfd, living as
        // long as the returned value; the content is validated.
        let seg = unsafe { Segment::attach(map.base, len) }.map_err(ring_err)?;
        Ok(SharedRing { seg, fd, taken: Arc::default(), map })
    }

    /// The memfd, to pass to the other process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The endpoint of `side`: its producer and consumer, sleeping on
    /// `bell` (the peer rings it) and ringing `peer_bell`. One per side at
    /// a time in each `SharedRing`: a second while the first lives is an
    /// error (`AddrInUse`), since two writers of one ring overwrite each
    /// other's bytes. Use one `SharedRing` per process.
    pub fn endpoint(&self, side: Side, bell: Doorbell, peer_bell: Doorbell) -> io::Result<Endpoint> {
        let i = usize::from(side == Side::B);
        if self.taken[i].swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(io::ErrorKind::AddrInUse, "this side already has an endpoint here"));
        }
        let taken = Taken { flags: Arc::clone(&self.taken), i };
        // SAFETY: `taken` was just set: the only endpoint of this side here.
        let (tx, rx) = unsafe { self.seg.endpoint(side) }.map_err(ring_err)?;
        Ok(Endpoint { tx, rx, bell, peer_bell, spin: DEFAULT_SPIN, _taken: taken, _map: Arc::clone(&self.map) })
    }
}

/// Clears an endpoint's flag when it goes.
#[derive(Debug)]
struct Taken {
    flags: Arc<[AtomicBool; 2]>,
    i: usize,
}

impl Drop for Taken {
    fn drop(&mut self) {
        self.flags[self.i].store(false, Ordering::Release);
    }
}

fn map(fd: &OwnedFd, len: usize) -> io::Result<Arc<Mapping>> {
    // SAFETY: a fresh shared mapping of `len` bytes of our fd.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("null mapping"))?;
    Ok(Arc::new(Mapping { base, len }))
}

/// An eventfd a side sleeps on and its peer rings.
#[derive(Debug)]
pub struct Doorbell(OwnedFd);

impl Doorbell {
    /// A new doorbell (a non-blocking, close-on-exec eventfd).
    pub fn new() -> io::Result<Doorbell> {
        // SAFETY: plain eventfd creation.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        // SAFETY: a fresh fd that we own.
        Ok(Doorbell(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// A doorbell from an eventfd another process passed.
    pub fn from_fd(fd: OwnedFd) -> Doorbell {
        Doorbell(fd)
    }

    /// Another handle to the same doorbell.
    pub fn try_clone(&self) -> io::Result<Doorbell> {
        self.0.try_clone().map(Doorbell)
    }

    /// The eventfd, to pass to the other process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }

    /// Rings it (a full counter is as good as rung).
    pub fn ring(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Sleeps until it is rung (or `timeout`), then empties it.
    pub fn wait(&self, timeout: Option<Duration>) {
        let ms = timeout.map_or(-1, |t| libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX));
        let mut p = libc::pollfd { fd: self.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one live pollfd.
        unsafe { libc::poll(&raw mut p, 1, ms) };
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut v).cast(), 8) };
    }
}

/// One side of a [`SharedRing`] with blocking calls: each tries, spins
/// for [`Endpoint::set_spin`] while the peer may act at once, then arms
/// the ring's waiting flag and sleeps on the doorbell; whoever moves
/// bytes the other waits for rings its doorbell.
#[derive(Debug)]
pub struct Endpoint {
    /// The sending ring's producer (for calls this type does not wrap).
    pub tx: Producer,
    /// The receiving ring's consumer.
    pub rx: Consumer,
    bell: Doorbell,
    peer_bell: Doorbell,
    spin: Duration,
    _taken: Taken,
    /// Declared last: the handles point into it.
    _map: Arc<Mapping>,
}

// SAFETY: the handles are `Send`; the rest is fds and an `Arc`.
unsafe impl Send for Endpoint {}

impl Endpoint {
    /// How long blocking calls spin before they sleep (0: sleep at once).
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// Sends some of `buf`, waiting for room: how many bytes went (0 only
    /// for an empty `buf`), or `BrokenPipe` once the peer closed its end.
    pub fn send(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let start = Instant::now();
        loop {
            if self.tx.is_reader_closed() {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            let t = self.tx.write(buf).map_err(ring_err)?;
            if t.wake_peer {
                self.peer_bell.ring();
            }
            if t.len > 0 {
                return Ok(t.len);
            }
            if start.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            if self.tx.prepare_wait(1).map_err(ring_err)? == Wait::Sleep {
                self.bell.wait(None);
                self.tx.cancel_wait();
            }
        }
    }

    /// Sends all of `buf`.
    pub fn send_all(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            let n = self.send(buf)?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Receives into `buf`, waiting for bytes: how many came, 0 at the end
    /// of the stream (the peer closed after its last byte).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let start = Instant::now();
        loop {
            let t = self.rx.read(buf).map_err(ring_err)?;
            if t.wake_peer {
                self.peer_bell.ring();
            }
            if t.len > 0 {
                return Ok(t.len);
            }
            if self.rx.at_eof().map_err(ring_err)? {
                return Ok(0);
            }
            if start.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            if self.rx.prepare_wait().map_err(ring_err)? == Wait::Sleep {
                self.bell.wait(None);
                self.rx.cancel_wait();
            }
        }
    }

    /// Fills `buf` whole; `UnexpectedEof` if the stream ends first.
    pub fn recv_exact(&mut self, mut buf: &mut [u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.recv(buf)? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => buf = &mut buf[n..],
            }
        }
        Ok(())
    }

    /// Ends the sending direction: the peer reads the end of the stream
    /// after the bytes already sent.
    pub fn close(&mut self) {
        if self.tx.close() {
            self.peer_bell.ring();
        }
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        // Both directions end with the endpoint, as a socket's close.
        self.close();
        if self.rx.close() {
            self.peer_bell.ring();
        }
    }
}
