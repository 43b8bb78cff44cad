//! # ipcd-proto
//!
//! Everything the monitor and the processes under ipcd say to each other,
//! and what a connection end answers to each socket call:
//!
//! - [`message`]: control messages and their bounded binary codec (no
//!   allocation to decode, every length checked, fds counted per message);
//! - [`state`]: one connection end as a pure state machine giving Linux
//!   TCP's answers (bytes, end-of-stream, errno, `SIGPIPE`, poll mask);
//! - [`holder`]: how a process names itself among a side's holders in a
//!   segment;
//! - `settings` (feature `std`): the config file, `ipcd.toml`, and how it
//!   and the environment decide a program's settings and rules;
//! - `client` (feature `std`): a client of a running monitor, for status,
//!   metrics, tracing and stopping it;
//! - `channel` (feature `std`): the framed channel over a Unix
//!   `SOCK_SEQPACKET` socket with fd passing and peer credentials.
//!
//! `channel` and `client`, which talks through it, are the only parts of
//! this crate that make system calls; without `std` it makes none.
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs, missing_debug_implementations)]

pub mod addr;
pub mod error;
pub mod holder;
pub mod message;
pub mod queue;
pub mod state;
mod wire;

// Test support for the fuzz targets and this crate's tests (not API).
#[cfg(any(fuzzing, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;

#[cfg(feature = "std")]
pub mod channel;
#[cfg(feature = "std")]
pub mod client;
#[cfg(feature = "std")]
pub mod settings;

pub use addr::SockAddr;
pub use error::{DecodeError, EncodeError};
pub use message::{
    Caps, ConnInfo, ConnStatus, EndState, ErrorCode, Fallback, ListenFlags, ListenerStatus, ProcessStatus, Request,
    Response, Side, Status, CODEC_VERSION, FALLBACK_KINDS, FRAME_MAGIC, HEADER_LEN, MAX_FDS, MAX_FRAME,
};
pub use state::{CloseAction, Conn, Errno, How, Phase, Readiness, Recv, Ring, Send, Shutdown};

/// Versions of the control protocol this build speaks (negotiated in
/// [`Request::Hello`]).
/// 3: standby connections (`Standby`, `Withdraw`, `Use`, `Unused`).
/// 5: `Pass` and `Claim` carry the kernel socket instead of naming its inode.
/// 6: `Held`, `EndState::Unknown`, fallbacks by reason in `Status`, the
/// client's pid as the monitor sees it in `Welcome`, `ProcessEntry`.
/// 7: `Fallback::IoUring` (eight reasons in `Status` and `Fallbacks`).
/// 8: `PassOver`, `Demote`, `Relayed`, `EndState::Relayed`;
/// `Fallback::Rule` (nine reasons); `Trace`, `Traced`.
/// 9: request queues in shared memory (`Queue`), `Ping`.
/// 10: doorbells per thread, named in the rings (`Bell`, `BellOf`,
/// `Unbell`, `BellId`, `Bell`): connections carry only their segment.
/// 11: a packet of requests without fds may hold several whole frames.
/// 12: standbys renewed by their processes (`Status.renewed_total`,
/// `Incoming.at`).
/// 13: `Serve` may carry the server's bell, `Standby` names its acceptor
/// (standbys for listeners a fork shared).
pub const PROTOCOL_VERSIONS: core::ops::RangeInclusive<u16> = 13..=13;
