//! The request ring a monitor in a queue mode gives each process
//! (`Response::Queue`): requests with no fds and no reply go there
//! instead of the channel, and the polling monitor takes them without a
//! system call on either side. In the shared mode the process also
//! writes its number on the index queue all processes share, when the
//! monitor asked to be told (its ring's waiting flag). A full ring or
//! index queue is never waited on: the request goes on the channel, and
//! a lost number is found by the monitor's sweep.

use std::os::fd::{AsFd, OwnedFd};
use std::ptr::NonNull;

use ipcd_proto::message::Request;
use ipcd_proto::queue::RequestRing;
use ipcd_ring::{IndexQueue, Segment};

/// A shared mapping of a whole memfd, unmapped on drop.
struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory; it is only reached through
// atomics (the ring's and the index queue's views).
unsafe impl Send for Mapping {}

impl Mapping {
    /// Maps the whole of `fd`, a sealed memfd from the monitor; the fd is
    /// closed after.
    fn of(fd: OwnedFd) -> Result<Mapping, i32> {
        let (base, len) = crate::sys::memfd::map_whole(fd.as_fd(), None)?;
        Ok(Mapping { base, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping; the views into it are dropped first
        // (they are declared before it in every struct holding both).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// This process's request ring (and the shared index queue).
pub(crate) struct RequestQueue {
    ring: RequestRing,
    /// The index queue's mapping, in the shared mode.
    _shared: Option<Mapping>,
    _seg: Segment,
    _map: Mapping,
}

impl RequestQueue {
    /// Maps what `Response::Queue` brought: `[ring]` or `[ring, index queue]`.
    pub(crate) fn map(index: u32, shared: bool, fds: Vec<OwnedFd>) -> Result<RequestQueue, String> {
        let mut fds = fds.into_iter();
        let ring = fds.next().ok_or("no ring")?;
        let map = Mapping::of(ring).map_err(|e| format!("ring: errno {e}"))?;
        // SAFETY: a live, page-aligned mapping of the whole memfd, kept in
        // the returned value beside the view; every index read is validated.
        let seg = unsafe { Segment::attach(map.base, map.len) }.map_err(|e| format!("ring: {e}"))?;
        // SAFETY: the process's one writer of its ring (under the channel's lock).
        let tx = unsafe { seg.producer(ipcd_ring::Side::A) }.map_err(|e| format!("ring: {e}"))?;
        let (tell, shared) = match (shared, fds.next()) {
            (true, Some(fd)) => {
                let m = Mapping::of(fd).map_err(|e| format!("index queue: errno {e}"))?;
                // SAFETY: as above, for the index queue's memfd.
                let q = unsafe { IndexQueue::attach(m.base, m.len) }.map_err(|e| format!("index queue: {e}"))?;
                (Some((q, index)), Some(m))
            }
            (true, None) => return Err("no index queue".into()),
            (false, _) => (None, None),
        };
        Ok(RequestQueue { ring: RequestRing::new(tx, tell), _shared: shared, _seg: seg, _map: map })
    }

    /// Queues `req`; false if it must go on the channel (not queueable,
    /// no room, or the ring is broken).
    pub(crate) fn push(&mut self, req: &Request) -> bool {
        self.ring.push(req).is_ok()
    }
}
