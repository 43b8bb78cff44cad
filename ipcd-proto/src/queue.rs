//! Request queues: control frames in a shared-memory ring instead of the
//! channel (the monitor's `--queues` modes). A process writes each
//! [`Request::queueable`] request as one frame, published whole, into the
//! side-A ring of a segment the monitor made for it; the monitor reads
//! them, trusting nothing: a frame that is torn, too long, undecodable or
//! not queueable is the writer's fault and ends its registration.

use ipcd_ring::{Consumer, Producer};

use crate::message::{frame_len, Request, HEADER_LEN, MAX_FRAME};
use crate::{DecodeError, EncodeError};

/// Why a request was not queued (the caller sends it on the channel).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushError {
    /// The request carries fds or waits for a reply.
    NotQueueable,
    /// No room for the whole frame now.
    Full,
    /// The request did not encode.
    Encode(EncodeError),
    /// The ring's shared words are broken (the monitor's side wrote them).
    Ring(ipcd_ring::Error),
}

/// Why a queue's content was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PopError {
    /// Fewer bytes than the frame's header says: a writer publishes whole
    /// frames, so this one is broken.
    Torn,
    /// The frame does not decode.
    Decode(DecodeError),
    /// A request that may not travel in a queue.
    NotQueueable,
    /// The ring's shared words are broken.
    Ring(ipcd_ring::Error),
}

impl core::fmt::Display for PushError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PushError::NotQueueable => f.write_str("request carries fds or has a reply"),
            PushError::Full => f.write_str("request queue full"),
            PushError::Encode(e) => write!(f, "{e}"),
            PushError::Ring(e) => write!(f, "request queue broken: {e}"),
        }
    }
}

impl core::fmt::Display for PopError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PopError::Torn => f.write_str("torn frame in request queue"),
            PopError::Decode(e) => write!(f, "bad frame in request queue: {e}"),
            PopError::NotQueueable => f.write_str("request that may not be queued"),
            PopError::Ring(e) => write!(f, "request queue broken: {e}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for PushError {}
#[cfg(feature = "std")]
impl std::error::Error for PopError {}

/// Writes `req` as one frame, whole or not at all. `Ok(true)`: the
/// monitor asked to be told (its waiting flag was set), so the caller
/// signals it (in the shared mode, by pushing its number on the index
/// queue).
pub fn push(tx: &mut Producer, req: &Request) -> Result<bool, PushError> {
    if !req.queueable() {
        return Err(PushError::NotQueueable);
    }
    let mut buf = [0u8; MAX_FRAME];
    let n = req.encode(0, &mut buf).map_err(PushError::Encode)?;
    if tx.writable().map_err(PushError::Ring)? < n {
        return Err(PushError::Full);
    }
    let t = tx.write(&buf[..n]).map_err(PushError::Ring)?;
    // `writable` said there was room and only this producer writes.
    debug_assert_eq!(t.len, n);
    Ok(t.wake_peer)
}

/// A process's side of its request queue: its ring and, in the shared
/// mode, the index queue with its number there. [`RequestRing::push`]
/// writes a request and, when the monitor asked to be told, pushes the
/// number (a full index queue is left alone: the monitor sweeps every
/// ring now and then).
#[derive(Debug)]
pub struct RequestRing {
    tx: Producer,
    tell: Option<(ipcd_ring::IndexQueue, u32)>,
}

impl RequestRing {
    /// The ring's producer and, in the shared mode, the index queue and
    /// this process's number on it.
    pub fn new(tx: Producer, tell: Option<(ipcd_ring::IndexQueue, u32)>) -> RequestRing {
        RequestRing { tx, tell }
    }

    /// Writes `req` as one frame ([`push`]) and tells the monitor if it
    /// asked.
    pub fn push(&mut self, req: &Request) -> Result<(), PushError> {
        if push(&mut self.tx, req)? {
            if let Some((q, number)) = &self.tell {
                let _ = q.push(*number);
            }
        }
        Ok(())
    }
}

/// Reads the next frame, if a whole one is there.
pub fn pop(rx: &mut Consumer) -> Result<Option<Request>, PopError> {
    let have = rx.readable().map_err(PopError::Ring)?;
    if have == 0 {
        return Ok(None);
    }
    let mut buf = [0u8; MAX_FRAME];
    let mut header = [0u8; HEADER_LEN];
    if have < HEADER_LEN || rx.peek(0, &mut header).map_err(PopError::Ring)? < HEADER_LEN {
        return Err(PopError::Torn);
    }
    let n = frame_len(&header).map_err(PopError::Decode)?;
    if have < n || rx.peek(0, &mut buf[..n]).map_err(PopError::Ring)? < n {
        return Err(PopError::Torn);
    }
    let _ = rx.consume(n).map_err(PopError::Ring)?;
    let (_, req) = Request::decode(&buf[..n], 0).map_err(PopError::Decode)?;
    if !req.queueable() {
        return Err(PopError::NotQueueable);
    }
    Ok(Some(req))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Side;
    use core::ptr::NonNull;
    use ipcd_ring::Segment;

    #[repr(C, align(128))]
    struct Region([u8; 8192]);

    #[test]
    fn frames_go_whole_and_in_order_and_bad_ones_are_refused() {
        let mut r = Box::new(Region([0; 8192]));
        let base = NonNull::new(r.0.as_mut_ptr()).unwrap();
        // SAFETY: the region outlives the segment and its handles.
        let seg = unsafe { Segment::init(base, r.0.len(), 1, [256, 128]) }.unwrap();
        // SAFETY: one writer and one reader of side A's ring in this test,
        // except `evil` below, which writes only once `tx` is done.
        let (mut tx, _) = unsafe { seg.endpoint(ipcd_ring::Side::A) }.unwrap();
        // SAFETY: as above.
        let mut rx = unsafe { seg.consumer(ipcd_ring::Side::B) }.unwrap();
        // SAFETY: as above: the hostile writer takes over after `tx`.
        let mut evil = unsafe { seg.producer(ipcd_ring::Side::A) }.unwrap();
        assert_eq!(pop(&mut rx), Ok(None));
        let close = |conn| Request::Close { conn, side: Side::A, keep: true };
        let mut pushed = 0;
        while push(&mut tx, &close(pushed)).is_ok() {
            pushed += 1;
        }
        assert!(pushed >= 5, "a 256-byte ring holds several frames, took {pushed}");
        assert_eq!(push(&mut tx, &close(99)), Err(PushError::Full));
        assert_eq!(push(&mut tx, &Request::Status), Err(PushError::NotQueueable));
        for conn in 0..pushed {
            assert_eq!(pop(&mut rx), Ok(Some(close(conn))));
        }
        assert_eq!(pop(&mut rx), Ok(None));
        // A frame cut short, a request with a reply, bytes that are no frame.
        let mut buf = [0u8; MAX_FRAME];
        let n = close(1).encode(0, &mut buf).unwrap();
        let _ = evil.resync();
        let _ = evil.write(&buf[..n - 1]).unwrap();
        assert_eq!(pop(&mut rx), Err(PopError::Torn));
        let _ = rx.consume(n - 1);
        let n = Request::Status.encode(0, &mut buf).unwrap();
        let _ = evil.write(&buf[..n]).unwrap();
        assert_eq!(pop(&mut rx), Err(PopError::NotQueueable));
        let _ = evil.write(&[0xff; HEADER_LEN]).unwrap();
        assert!(matches!(pop(&mut rx), Err(PopError::Decode(_))));
    }
}
