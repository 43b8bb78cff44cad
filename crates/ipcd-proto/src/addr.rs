//! Socket addresses as they travel in messages.

use crate::error::DecodeError;
use crate::wire::{Reader, Writer};

/// An IPv4 or IPv6 TCP endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SockAddr {
    /// `sockaddr_in`.
    V4 {
        /// Address, network order.
        ip: [u8; 4],
        /// Port, host order.
        port: u16,
    },
    /// `sockaddr_in6`.
    V6 {
        /// Address, network order.
        ip: [u8; 16],
        /// Port, host order.
        port: u16,
        /// `sin6_flowinfo`.
        flowinfo: u32,
        /// `sin6_scope_id`.
        scope_id: u32,
    },
}

const TAG_NONE: u8 = 0;
const TAG_V4: u8 = 4;
const TAG_V6: u8 = 6;

impl SockAddr {
    /// The port.
    pub fn port(&self) -> u16 {
        match *self {
            SockAddr::V4 { port, .. } | SockAddr::V6 { port, .. } => port,
        }
    }

    /// Loopback, unspecified, or (for the monitor to decide) a local address.
    pub fn is_loopback(&self) -> bool {
        match *self {
            SockAddr::V4 { ip, .. } => ip[0] == 127,
            SockAddr::V6 { ip, .. } => {
                ip == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]
                    || (ip[..12] == [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] && ip[12] == 127)
            }
        }
    }

    pub(crate) fn encode(&self, w: &mut Writer<'_>) {
        match *self {
            SockAddr::V4 { ip, port } => {
                w.u8(TAG_V4);
                w.put(&ip);
                w.u16(port);
            }
            SockAddr::V6 { ip, port, flowinfo, scope_id } => {
                w.u8(TAG_V6);
                w.put(&ip);
                w.u16(port);
                w.u32(flowinfo);
                w.u32(scope_id);
            }
        }
    }

    pub(crate) fn encode_opt(addr: &Option<SockAddr>, w: &mut Writer<'_>) {
        match addr {
            Some(a) => a.encode(w),
            None => w.u8(TAG_NONE),
        }
    }

    pub(crate) fn decode_opt(r: &mut Reader<'_>) -> Result<Option<SockAddr>, DecodeError> {
        Ok(match r.u8()? {
            TAG_NONE => None,
            TAG_V4 => Some(SockAddr::V4 { ip: r.bytes()?, port: r.u16()? }),
            TAG_V6 => Some(SockAddr::V6 { ip: r.bytes()?, port: r.u16()?, flowinfo: r.u32()?, scope_id: r.u32()? }),
            _ => return Err(DecodeError::BadValue("address family")),
        })
    }

    pub(crate) fn decode(r: &mut Reader<'_>) -> Result<SockAddr, DecodeError> {
        SockAddr::decode_opt(r)?.ok_or(DecodeError::BadValue("address family"))
    }
}
