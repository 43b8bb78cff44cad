//! One mapped connection segment: our producer and consumer in it and the
//! two doorbells (ours, which we sleep on, and the peer's, which we ring).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;

use ipcd_proto::message::{ConnInfo, Side};
use ipcd_proto::Ring;
use ipcd_ring::{Consumer, EndLock, Producer, Segment};

use crate::{fds, real};

/// Why a connection from the monitor could not be attached.
#[derive(Debug)]
pub enum AttachError {
    /// The message did not carry segment and two doorbells.
    Fds(usize),
    /// The segment's size disagrees with what the monitor said.
    Size,
    /// `mmap` failed (errno).
    Map(i32),
    /// The header failed validation.
    Ring(ipcd_ring::Error),
}

impl std::fmt::Display for AttachError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachError::Fds(n) => write!(f, "expected 3 fds, got {n}"),
            AttachError::Size => f.write_str("segment size mismatch"),
            AttachError::Map(e) => write!(f, "mmap failed: errno {e}"),
            AttachError::Ring(e) => write!(f, "bad segment: {e}"),
        }
    }
}

/// A mapped segment and our end of it.
pub struct Link {
    base: NonNull<u8>,
    len: usize,
    /// Our side's sending ring.
    pub tx: Producer,
    /// Our side's receiving ring.
    pub rx: Consumer,
    bell: OwnedFd,
    peer_bell: OwnedFd,
    /// The monitor's connection id.
    pub conn: u64,
    seg: Segment,
    side: ipcd_ring::Side,
    /// Another process holds this end too (after fork): every use takes
    /// the end's locks in the segment and resyncs the handles first.
    shared: bool,
}

// SAFETY: the mapping is owned by the Link and only touched through `tx`/`rx`,
// which are Send; the fds are plain integers.
unsafe impl Send for Link {}

impl Link {
    /// Maps the segment of `info` from `fds` = `[segment, own bell, peer bell]`.
    pub fn attach(info: &ConnInfo, fds: Vec<OwnedFd>) -> Result<Link, AttachError> {
        let [seg_fd, bell, peer_bell]: [OwnedFd; 3] =
            fds.try_into().map_err(|v: Vec<OwnedFd>| AttachError::Fds(v.len()))?;
        let len = usize::try_from(info.segment_len).map_err(|_| AttachError::Size)?;
        // The memfd is sealed against shrinking, so its size now is its size
        // for good; a monitor that lied about it is caught here.
        // SAFETY: fstat into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: valid fd and out pointer.
        if unsafe { libc::fstat(seg_fd.as_raw_fd(), &mut st) } != 0 || st.st_size as u64 != info.segment_len || len == 0
        {
            return Err(AttachError::Size);
        }
        // SAFETY: a fresh shared mapping of the whole memfd.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                seg_fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(AttachError::Map(real::errno()));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or(AttachError::Map(libc::EINVAL))?;
        let unmap = |e| {
            // SAFETY: unmaps the mapping made above, which nothing uses yet.
            unsafe { libc::munmap(p, len) };
            e
        };
        // SAFETY: `base..base+len` is a live shared mapping that stays mapped
        // until this Link drops, after the handles made from it.
        let seg = unsafe { Segment::attach(base, len) }.map_err(|e| unmap(AttachError::Ring(e)))?;
        if seg.conn_id() != info.conn {
            return Err(unmap(AttachError::Size));
        }
        let side = match info.side {
            Side::A => ipcd_ring::Side::A,
            Side::B => ipcd_ring::Side::B,
        };
        let (tx, rx) = seg.endpoint(side).map_err(|e| unmap(AttachError::Ring(e)))?;
        Ok(Link {
            base,
            len,
            tx,
            rx,
            bell: fds::hide(bell),
            peer_bell: fds::hide(peer_bell),
            conn: info.conn,
            seg,
            side,
            shared: false,
        })
    }

    /// A process is about to fork: one more holder of this end.
    pub fn add_holder(&self) {
        self.seg.add_holder(self.side);
    }

    /// This process lets go of the end; true if it was the last holder
    /// (the caller then closes the end as Linux would).
    pub fn release_holder(&self) -> bool {
        self.seg.release_holder(self.side) == 0
    }

    /// Whether another process may hold this end.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// The end is (from now on) held by more than one process.
    pub fn set_shared(&mut self) {
        self.shared = true;
    }

    /// Before using the handles: with a shared end, takes both of its locks
    /// and rereads the indices another process may have moved.
    pub fn enter(&mut self) {
        if !self.shared {
            return;
        }
        let me = crate::fork::owner_id();
        for lock in [EndLock::Send(self.side), EndLock::Recv(self.side)] {
            take(&self.seg, lock, me);
        }
        if self.tx.resync().is_err() || self.rx.resync().is_err() {
            // A corrupt ring shows up again in `observe`, which resets.
        }
    }

    /// After using the handles: releases what `enter` took.
    pub fn leave(&mut self) {
        if !self.shared {
            return;
        }
        let me = crate::fork::owner_id();
        for lock in [EndLock::Recv(self.side), EndLock::Send(self.side)] {
            self.seg.unlock(lock, me);
        }
    }

    /// The doorbell this end sleeps on.
    pub fn bell(&self) -> RawFd {
        self.bell.as_raw_fd()
    }

    /// Rings the peer's doorbell (it asked to be woken).
    pub fn ring_peer(&self) {
        ring(self.peer_bell.as_raw_fd());
    }

    /// What the rings say now, for the state machine. `None`: the ring is
    /// corrupt (the peer broke the protocol); the caller resets.
    pub fn observe(&mut self) -> Option<Ring> {
        let peer_fin = self.rx.peer_fin();
        let peer_reset = self.rx.peer_state() == ipcd_ring::PeerState::Reset;
        Some(Ring {
            readable: self.rx.readable().ok()?,
            writable: self.tx.writable_cached().ok()?,
            peer_fin,
            peer_reset,
            // Every end closes its writing side before its reading side (the
            // preload library and the monitor alike), so a closed reader is
            // only possible once a FIN or reset is visible. Checking it only
            // then keeps each send off the line the peer's reads keep
            // writing (its `head`), which would cost a cache miss per send.
            peer_reader_closed: (peer_fin || peer_reset) && self.tx.is_reader_closed(),
        })
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `attach`; `tx`/`rx` die with `self`
        // and are not used after this point.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// Takes `lock`, breaking it if its holder died (a process that crashed
/// while holding an end's lock must not stall the others forever).
fn take(seg: &Segment, lock: EndLock, me: std::num::NonZeroU32) {
    let mut spins = 0u32;
    while let Err(owner) = seg.try_lock(lock, me) {
        spins += 1;
        if spins % 1024 == 0 {
            // SAFETY: signal 0 only checks whether the process exists.
            let gone =
                owner != 0 && unsafe { libc::kill(owner as libc::pid_t, 0) } != 0 && real::errno() == libc::ESRCH;
            if gone {
                seg.break_lock(lock, owner);
            } else {
                std::thread::yield_now();
            }
        } else {
            std::hint::spin_loop();
        }
    }
}

/// Adds one to an eventfd (a full counter is as good as rung).
pub fn ring(bell: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd.
    let _ = unsafe { real::write(bell, (&raw const one).cast(), 8) };
}

/// Empties an eventfd (non-blocking).
pub fn drain(bell: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a live u64.
    let _ = unsafe { real::read(bell, (&raw mut v).cast(), 8) };
}
