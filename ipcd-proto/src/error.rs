//! Errors of the codec.

use core::fmt;

/// Why a packet could not be decoded. The channel closes on any of these:
/// a peer that sends them is broken or hostile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeError {
    /// The packet ended before a field: `need` bytes at offset `at`, `have` left.
    Truncated {
        /// Offset of the field.
        at: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the packet.
        have: usize,
    },
    /// The frame does not start with [`crate::FRAME_MAGIC`].
    BadMagic(u16),
    /// A frame of a codec version this build does not speak.
    UnknownVersion(u8),
    /// A message type this build does not know (or from the other direction).
    UnknownType(u16),
    /// The packet is longer than [`crate::MAX_FRAME`].
    TooLong(usize),
    /// The header's body length disagrees with the packet's length.
    BadLength {
        /// Body length in the header.
        declared: usize,
        /// Body bytes actually present.
        actual: usize,
    },
    /// Bytes left over after the last field of the body.
    TrailingBytes(usize),
    /// A field holds a value outside its domain.
    BadValue(&'static str),
    /// The message travels with a different number of fds.
    FdCount {
        /// Fds the message's definition requires.
        expected: usize,
        /// Fds received with it.
        got: usize,
    },
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DecodeError::Truncated { at, need, have } => {
                write!(f, "truncated message: {need} bytes needed at offset {at}, {have} left")
            }
            DecodeError::BadMagic(m) => write!(f, "bad frame magic {m:#06x}"),
            DecodeError::UnknownVersion(v) => write!(f, "unknown codec version {v}"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t:#06x}"),
            DecodeError::TooLong(n) => write!(f, "packet of {n} bytes exceeds the frame limit"),
            DecodeError::BadLength { declared, actual } => {
                write!(f, "body length {declared} declared, {actual} present")
            }
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the last field"),
            DecodeError::BadValue(field) => write!(f, "invalid value in field {field}"),
            DecodeError::FdCount { expected, got } => {
                write!(f, "message carries {expected} fds, {got} received")
            }
        }
    }
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is too small: `need` bytes.
    BufferTooSmall {
        /// Bytes the encoded frame needs.
        need: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            EncodeError::BufferTooSmall { need } => write!(f, "output buffer too small: {need} bytes needed"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for DecodeError {}
#[cfg(feature = "std")]
impl std::error::Error for EncodeError {}
