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
    /// The address as eight words, for a segment's ticket (see
    /// `ipcd_ring::Segment::connect`): family (4 or 6), port, flowinfo,
    /// scope id, then the IP's bytes, big-endian words.
    pub fn to_words(&self) -> [u32; 8] {
        let mut w = [0u32; 8];
        match *self {
            SockAddr::V4 { ip, port } => {
                w[0] = 4;
                w[1] = u32::from(port);
                w[4] = u32::from_be_bytes(ip);
            }
            SockAddr::V6 { ip, port, flowinfo, scope_id } => {
                w[0] = 6;
                w[1] = u32::from(port);
                w[2] = flowinfo;
                w[3] = scope_id;
                for (k, chunk) in ip.chunks_exact(4).enumerate() {
                    w[4 + k] = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                }
            }
        }
        w
    }

    /// The inverse of [`SockAddr::to_words`]; `None` for words that are no
    /// address (shared memory is not trusted).
    pub fn from_words(w: [u32; 8]) -> Option<SockAddr> {
        let port = u16::try_from(w[1]).ok()?;
        match w[0] {
            4 => Some(SockAddr::V4 { ip: w[4].to_be_bytes(), port }),
            6 => {
                let mut ip = [0u8; 16];
                for k in 0..4 {
                    ip[4 * k..4 * k + 4].copy_from_slice(&w[4 + k].to_be_bytes());
                }
                Some(SockAddr::V6 { ip, port, flowinfo: w[2], scope_id: w[3] })
            }
            _ => None,
        }
    }

    /// The port.
    pub fn port(&self) -> u16 {
        match *self {
            SockAddr::V4 { port, .. } | SockAddr::V6 { port, .. } => port,
        }
    }

    /// The same address with port `port`.
    pub fn with_port(self, port: u16) -> SockAddr {
        match self {
            SockAddr::V4 { ip, .. } => SockAddr::V4 { ip, port },
            SockAddr::V6 { ip, flowinfo, scope_id, .. } => SockAddr::V6 { ip, port, flowinfo, scope_id },
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

#[cfg(feature = "std")]
impl SockAddr {
    /// Reads a `sockaddr_in`/`sockaddr_in6` of `len` bytes; `None` for other
    /// families or short lengths.
    ///
    /// # Safety
    /// `addr` must point at `len` readable bytes.
    pub unsafe fn from_raw(addr: *const libc::sockaddr, len: libc::socklen_t) -> Option<SockAddr> {
        let len = len as usize;
        if addr.is_null() || len < core::mem::size_of::<libc::sa_family_t>() {
            return None;
        }
        // SAFETY: at least the family field is readable (checked above); each
        // arm checks the full length before reading the struct, unaligned.
        unsafe {
            match i32::from((*addr).sa_family) {
                libc::AF_INET if len >= core::mem::size_of::<libc::sockaddr_in>() => {
                    let sin = addr.cast::<libc::sockaddr_in>().read_unaligned();
                    Some(SockAddr::V4 { ip: sin.sin_addr.s_addr.to_ne_bytes(), port: u16::from_be(sin.sin_port) })
                }
                libc::AF_INET6 if len >= core::mem::size_of::<libc::sockaddr_in6>() => {
                    let sin6 = addr.cast::<libc::sockaddr_in6>().read_unaligned();
                    Some(SockAddr::V6 {
                        ip: sin6.sin6_addr.s6_addr,
                        port: u16::from_be(sin6.sin6_port),
                        flowinfo: sin6.sin6_flowinfo,
                        scope_id: sin6.sin6_scope_id,
                    })
                }
                _ => None,
            }
        }
    }

    /// As a `sockaddr_storage` and its length, for the socket calls.
    pub fn to_raw(&self) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: an all-zero sockaddr_storage is valid.
        let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
        let len = match *self {
            SockAddr::V4 { ip, port } => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: port.to_be(),
                    sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(ip) },
                    sin_zero: [0; 8],
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
                unsafe { (&raw mut ss).cast::<libc::sockaddr_in>().write(sin) };
                core::mem::size_of::<libc::sockaddr_in>()
            }
            SockAddr::V6 { ip, port, flowinfo, scope_id } => {
                let sin6 = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: port.to_be(),
                    sin6_flowinfo: flowinfo,
                    sin6_addr: libc::in6_addr { s6_addr: ip },
                    sin6_scope_id: scope_id,
                };
                // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
                unsafe { (&raw mut ss).cast::<libc::sockaddr_in6>().write(sin6) };
                core::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }
}

impl core::fmt::Display for SockAddr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match *self {
            SockAddr::V4 { ip, port } => write!(f, "{}.{}.{}.{}:{port}", ip[0], ip[1], ip[2], ip[3]),
            // As `ss` prints it: `[::1]:6379`, `[::ffff:10.0.0.1]:80`.
            SockAddr::V6 { ip, port, .. } => write!(f, "[{}]:{port}", core::net::Ipv6Addr::from(ip)),
        }
    }
}
