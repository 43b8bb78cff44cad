//! Bounded little-endian cursors: every read checks its length first.

use crate::error::{DecodeError, EncodeError};

/// Reads fields off a packet; never reads past its end.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn bytes<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let have = self.buf.len() - self.pos;
        let Some(s) = self.buf.get(self.pos..self.pos + N) else {
            return Err(DecodeError::Truncated { at: self.pos, need: N, have });
        };
        self.pos += N;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.bytes::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.bytes()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.bytes()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.bytes()?))
    }
    /// A boolean: exactly 0 or 1.
    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue(field)),
        }
    }

    pub(crate) fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Succeeds only if every byte was consumed.
    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// Appends fields to an output buffer; fails cleanly when it is full.
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Bytes that did not fit: the encoder keeps counting to report the need.
    overflow: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0, overflow: 0 }
    }

    pub(crate) fn put(&mut self, bytes: &[u8]) {
        match self.buf.get_mut(self.pos..self.pos + bytes.len()) {
            Some(dst) if self.overflow == 0 => {
                dst.copy_from_slice(bytes);
                self.pos += bytes.len();
            }
            _ => self.overflow += bytes.len(),
        }
    }

    pub(crate) fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }
    pub(crate) fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }
    pub(crate) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }

    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Overwrites 4 bytes already written at `at` (the frame's length field).
    pub(crate) fn patch_u32(&mut self, at: usize, v: u32) {
        if self.overflow == 0 {
            self.buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
    }

    /// Bytes written, or the error giving the size that would have been needed.
    pub(crate) fn finish(self) -> Result<usize, EncodeError> {
        if self.overflow == 0 {
            Ok(self.pos)
        } else {
            Err(EncodeError::BufferTooSmall { need: self.pos + self.overflow })
        }
    }
}
