//! # ipcd-ring
//!
//! The shared-memory floor of ipcd: the layout of a connection segment, the
//! single-producer single-consumer byte ring that carries each direction of
//! a connection, and the wait/wake protocol that lets either side sleep
//! without losing a wakeup.
//!
//! The crate is `no_std`, allocates nothing and makes no system calls. It
//! works over a raw region (pointer and length): heap memory in tests, an
//! mmap'd memfd in production. For programs that embed the ring, the
//! `std` feature adds the `shm` module: a memfd segment one
//! process makes and another opens, eventfd doorbells, and an endpoint
//! per side with blocking spin-then-sleep calls, one endpoint per side
//! enforced; see `examples/pingpong.rs` for two processes. The peer is not trusted: every index read from
//! shared memory is validated, and a broken invariant is an [`Error`], never a
//! panic or an out-of-bounds access.
//!
//! ```
//! use core::ptr::NonNull;
//! use ipcd_ring::{Segment, Side, Wait};
//!
//! #[repr(C, align(128))]
//! struct Region([u8; 8192]);
//! let mut region = Region([0; 8192]);
//! let base = NonNull::new(region.0.as_mut_ptr()).unwrap();
//! // SAFETY: `region` outlives the segment and all handles made from it.
//! let seg = unsafe { Segment::init(base, 8192, 1, [1024, 1024]) }.unwrap();
//! // SAFETY: one handle per side of each ring, in this one thread (the
//! // `shm` module enforces that for programs that share a memfd).
//! let (mut a_tx, _a_rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
//! // SAFETY: as above.
//! let (_b_tx, mut b_rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
//!
//! // The reader finds nothing and may sleep...
//! assert_eq!(b_rx.prepare_wait().unwrap(), Wait::Sleep);
//! // ...so the writer is told to ring its doorbell.
//! let sent = a_tx.write(b"ping").unwrap();
//! assert!(sent.wake_peer);
//! let mut buf = [0u8; 4];
//! assert_eq!(b_rx.read(&mut buf).unwrap().len, 4);
//! ```
#![cfg_attr(not(any(loom, feature = "std")), no_std)]
#![warn(missing_docs, missing_debug_implementations)]
#![warn(clippy::cast_possible_truncation, clippy::borrow_as_ptr)]

mod conn;
mod consumer;
mod error;
mod index_queue;
mod layout;
mod producer;
mod recent;
mod segment;
mod span;
mod sync;
mod wait;

#[cfg(all(feature = "std", not(loom)))]
pub mod shm;

// Test support for the fuzz targets and this crate's tests (not API).
#[cfg(all(any(fuzzing, feature = "fuzzing"), not(loom)))]
extern crate std;
#[cfg(any(fuzzing, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

pub use conn::{is_round_of, next_ticket_id, ConnSegment, Finish, Promoted, MAX_TICKET_ID, RENEWED_ID};
pub use consumer::{Consumer, PeerState};
pub use error::{Corruption, Error};
pub use index_queue::{IndexQueue, Pop, Popper, INDEX_QUEUE_MAGIC};
pub use layout::{
    RingControl, SegmentHeader, CACHE_LINE, FLAG_CLOSED, FLAG_RESET, HOLDER_SLOTS, MAX_CAPACITY, NO_CPU, OFFER_CLAIMED,
    SEGMENT_ALIGN, SEGMENT_MAGIC, SEGMENT_VERSION, SMALL_AREA, WAITER_SLOTS,
};
pub use producer::Producer;
pub use segment::{Admission, EndLock, Segment, Side, Tapped, Ticket};
pub use wait::{Transfer, Wait, Waiters};

pub use layout::offsets;
