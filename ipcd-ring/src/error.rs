//! Errors returned by the ring and the segment.

use core::fmt;

/// Which shared value broke an invariant. The peer wrote it; we only report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The reader's `head` went backwards or past the writer's `tail`.
    Head {
        /// Value read from shared memory.
        found: u64,
    },
    /// The writer's `tail` went backwards or ran more than a capacity ahead of `head`.
    Tail {
        /// Value read from shared memory.
        found: u64,
    },
}

/// Everything that can go wrong in `ipcd-ring`. None of these is a panic: a
/// hostile or broken peer produces one of these values, never UB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// The region is smaller than the layout needs.
    RegionTooSmall {
        /// Bytes the layout needs.
        need: usize,
        /// Bytes the caller provided.
        have: usize,
    },
    /// The region's base address is not aligned to [`crate::SEGMENT_ALIGN`].
    Misaligned,
    /// A ring capacity is zero, not a power of two, or above [`crate::MAX_CAPACITY`].
    BadCapacity(u64),
    /// The segment does not start with [`crate::SEGMENT_MAGIC`].
    BadMagic(u64),
    /// The segment's layout version is not [`crate::SEGMENT_VERSION`].
    BadVersion(u32),
    /// The header's offsets or sizes disagree with the layout this version defines.
    BadLayout,
    /// A shared index broke the ring's invariant: the connection must be reset.
    Corrupt(Corruption),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::RegionTooSmall { need, have } => {
                write!(f, "segment region too small: need {need} bytes, have {have}")
            }
            Error::Misaligned => write!(f, "segment region is not {}-byte aligned", crate::SEGMENT_ALIGN),
            Error::BadCapacity(c) => {
                write!(f, "bad ring capacity {c}: must be a power of two in 1..={}", crate::MAX_CAPACITY)
            }
            Error::BadMagic(m) => write!(f, "bad segment magic {m:#018x}"),
            Error::BadVersion(v) => {
                write!(f, "unsupported segment version {v} (this build speaks {})", crate::SEGMENT_VERSION)
            }
            Error::BadLayout => write!(f, "segment header offsets disagree with the layout"),
            Error::Corrupt(Corruption::Head { found }) => {
                write!(f, "ring corrupted by peer: head {found} out of range")
            }
            Error::Corrupt(Corruption::Tail { found }) => {
                write!(f, "ring corrupted by peer: tail {found} out of range")
            }
        }
    }
}

impl core::error::Error for Error {}
