//! The codec of the messages in [`super`]: frames (header and body), the
//! fixed-size encoding of each field, and each message's fd count.

use super::{
    ConnInfo, ConnStatus, EndState, ErrorCode, Fallback, ListenFlags, ListenerStatus, ProcessStatus, Request, Response,
    Side, Status, CODEC_VERSION, FALLBACK_KINDS, FRAME_MAGIC, HEADER_LEN, MAX_FRAME,
};
use crate::addr::SockAddr;
use crate::error::{DecodeError, EncodeError};
use crate::wire::{Reader, Writer};

/// Encodes one frame around `body`.
fn encode_frame(kind: u16, seq: u32, buf: &mut [u8], body: impl FnOnce(&mut Writer<'_>)) -> Result<usize, EncodeError> {
    let mut w = Writer::new(buf);
    w.u16(FRAME_MAGIC);
    w.u8(CODEC_VERSION);
    w.u8(0);
    w.u16(kind);
    w.u16(0);
    w.u32(seq);
    w.u32(0);
    body(&mut w);
    let body_len = w.pos().saturating_sub(HEADER_LEN);
    w.patch_u32(12, body_len as u32);
    let n = w.finish()?;
    if n > MAX_FRAME {
        return Err(EncodeError::BufferTooSmall { need: n });
    }
    Ok(n)
}

/// Checks a frame's header; returns (type, seq, body reader).
fn decode_frame(packet: &[u8]) -> Result<(u16, u32, Reader<'_>), DecodeError> {
    if packet.len() > MAX_FRAME {
        return Err(DecodeError::TooLong(packet.len()));
    }
    let mut r = Reader::new(packet);
    let magic = r.u16()?;
    if magic != FRAME_MAGIC {
        return Err(DecodeError::BadMagic(magic));
    }
    let version = r.u8()?;
    if version != CODEC_VERSION {
        return Err(DecodeError::UnknownVersion(version));
    }
    if r.u8()? != 0 {
        return Err(DecodeError::BadValue("reserved"));
    }
    let kind = r.u16()?;
    if r.u16()? != 0 {
        return Err(DecodeError::BadValue("reserved"));
    }
    let seq = r.u32()?;
    let declared = r.u32()? as usize;
    if declared != r.remaining() {
        return Err(DecodeError::BadLength { declared, actual: r.remaining() });
    }
    Ok((kind, seq, r))
}

/// The frames of a packet of requests, in order: one, or several whole
/// ones back to back (see [`super::Request::decode_packet`]). A frame whose
/// header is cut off or whose declared body runs past the packet ends the
/// walk with an error.
pub(super) fn split_frames(packet: &[u8]) -> impl Iterator<Item = Result<&[u8], DecodeError>> + '_ {
    let mut rest = packet;
    core::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let frame = match rest.get(12..HEADER_LEN) {
            Some(len) => {
                let declared = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
                match HEADER_LEN.checked_add(declared).filter(|&n| n <= rest.len()) {
                    Some(n) => Ok(n),
                    None => Err(DecodeError::BadLength { declared, actual: rest.len() - HEADER_LEN }),
                }
            }
            None => Err(DecodeError::Truncated { at: packet.len() - rest.len(), need: HEADER_LEN, have: rest.len() }),
        };
        match frame {
            Ok(n) => {
                let (frame, tail) = rest.split_at(n);
                rest = tail;
                Some(Ok(frame))
            }
            Err(e) => {
                rest = &[];
                Some(Err(e))
            }
        }
    })
}

fn check_fds(expected: usize, got: usize) -> Result<(), DecodeError> {
    if expected == got {
        Ok(())
    } else {
        Err(DecodeError::FdCount { expected, got })
    }
}

/// A small enum as one byte; `ALL` lists the variants in code order.
trait Code: Sized + Copy + PartialEq + 'static {
    const ALL: &'static [Self];
    const FIELD: &'static str;
    fn encode(self, w: &mut Writer<'_>) {
        let i = Self::ALL.iter().position(|v| *v == self).unwrap_or(0);
        w.u8(i as u8);
    }
    fn decode(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Self::ALL.get(usize::from(r.u8()?)).copied().ok_or(DecodeError::BadValue(Self::FIELD))
    }
}

impl Code for Side {
    const ALL: &'static [Self] = &[Side::A, Side::B];
    const FIELD: &'static str = "side";
}

impl Code for EndState {
    const ALL: &'static [Self] = EndState::ALL;
    const FIELD: &'static str = "end state";
}

impl Code for Fallback {
    const ALL: &'static [Self] = Fallback::ALL;
    const FIELD: &'static str = "fallback reason";
}

impl Code for ErrorCode {
    const ALL: &'static [Self] = ErrorCode::ALL;
    const FIELD: &'static str = "error code";
}

impl ConnInfo {
    fn encode(&self, w: &mut Writer<'_>) {
        w.u64(self.conn);
        self.side.encode(w);
        self.local.encode(w);
        self.peer.encode(w);
        w.u64(self.segment_len);
        w.u64(self.segment);
        w.bool(self.reused);
    }

    fn decode(r: &mut Reader<'_>) -> Result<ConnInfo, DecodeError> {
        Ok(ConnInfo {
            conn: r.u64()?,
            side: Side::decode(r)?,
            local: SockAddr::decode(r)?,
            peer: SockAddr::decode(r)?,
            segment_len: r.u64()?,
            segment: r.u64()?,
            reused: r.bool("reused")?,
        })
    }
}

fn flags<F: bitflags::Flags<Bits = u32>>(r: &mut Reader<'_>, field: &'static str) -> Result<F, DecodeError> {
    F::from_bits(r.u32()?).ok_or(DecodeError::BadValue(field))
}

// ---- requests ---------------------------------------------------------

impl Request {
    fn kind(&self) -> u16 {
        match self {
            Request::Hello { .. } => 0x0101,
            Request::Listen { .. } => 0x0102,
            Request::Unlisten { .. } => 0x0103,
            Request::Connect { .. } => 0x0104,
            Request::Shutdown { .. } => 0x0105,
            Request::Close { .. } => 0x0106,
            Request::Forked { .. } => 0x0107,
            Request::ExecPrepare => 0x0108,
            Request::Reopen { .. } => 0x0109,
            Request::Status => 0x010a,
            Request::Accepted { .. } => 0x010b,
            Request::Stop => 0x010c,
            Request::Pass { .. } => 0x010d,
            Request::Claim => 0x010e,
            Request::Serve { .. } => 0x010f,
            Request::Decline { .. } => 0x0110,
            Request::Use { .. } => 0x0111,
            Request::Unused { .. } => 0x0112,
            Request::Release { .. } => 0x0113,
            Request::Held { .. } => 0x0114,
            Request::Fallbacks { .. } => 0x0115,
            Request::Demote { .. } => 0x0116,
            Request::PassOver { .. } => 0x0117,
            Request::Trace { .. } => 0x0118,
            Request::Ping => 0x0119,
            Request::Bell => 0x011a,
            Request::BellOf { .. } => 0x011b,
            Request::Unbell { .. } => 0x011c,
        }
    }

    /// Fds that travel with this message.
    pub fn fd_count(&self) -> usize {
        match self {
            Request::Listen { flags, .. } if flags.contains(ListenFlags::BELL) => 2,
            Request::PassOver { .. } => 2,
            Request::Listen { .. } | Request::Pass { .. } | Request::Demote { .. } | Request::Claim | Request::Bell => {
                1
            }
            Request::Serve { bell, .. } => usize::from(*bell),
            _ => 0,
        }
    }

    /// Encodes the frame into `buf`; returns its length.
    pub fn encode(&self, seq: u32, buf: &mut [u8]) -> Result<usize, EncodeError> {
        encode_frame(self.kind(), seq, buf, |w| match *self {
            Request::Hello { version_min, version_max, pid, uid, caps } => {
                w.u16(version_min);
                w.u16(version_max);
                w.u32(pid);
                w.u32(uid);
                w.u32(caps.bits());
            }
            Request::Listen { listener, addr, backlog, flags } => {
                w.u64(listener);
                addr.encode(w);
                w.u32(backlog);
                w.u32(flags.bits());
            }
            Request::Unlisten { listener } => w.u64(listener),
            Request::Connect { dest, source, nonblocking } => {
                dest.encode(w);
                SockAddr::encode_opt(&source, w);
                w.bool(nonblocking);
            }
            Request::Shutdown { conn, how } => {
                w.u64(conn);
                w.u8(how);
            }
            Request::Close { conn, side, keep } => {
                w.u64(conn);
                side.encode(w);
                w.bool(keep);
            }
            Request::Reopen { conn, side } => {
                w.u64(conn);
                side.encode(w);
            }
            Request::Accepted { conn } => w.u64(conn),
            Request::Forked { parent_pid } => w.u32(parent_pid),
            Request::Pass { conn, side } | Request::PassOver { conn, side } | Request::Demote { conn, side } => {
                w.u64(conn);
                side.encode(w);
            }
            Request::Serve { listener, bell } => {
                w.u64(listener);
                w.bool(bell);
            }
            Request::Trace { pid, port } => {
                w.u32(pid);
                w.u16(port);
            }
            Request::Decline { conn } | Request::Unused { conn } => w.u64(conn),
            Request::Release { conn, side, abort } => {
                w.u64(conn);
                side.encode(w);
                w.bool(abort);
            }
            Request::Use { conn, source } => {
                w.u64(conn);
                SockAddr::encode_opt(&source, w);
            }
            Request::Fallbacks { counts } => {
                for n in counts {
                    w.u32(n);
                }
            }
            Request::Held { conn, side, local, peer, open } => {
                w.u64(conn);
                side.encode(w);
                local.encode(w);
                peer.encode(w);
                w.bool(open);
            }
            Request::ExecPrepare | Request::Status | Request::Stop | Request::Claim | Request::Ping | Request::Bell => {
            }
            Request::BellOf { id } | Request::Unbell { id } => w.u64(id),
        })
    }

    /// Decodes a packet of requests that arrived with `fds` file
    /// descriptors: one frame, or (without fds) several whole frames back
    /// to back, as [`crate::channel::Channel::send_requests`] packs a batch
    /// of requests that carry no fds, so that the batch wakes the monitor
    /// once. Each request comes with its sequence number, in order; a bad
    /// frame ends the packet with its error.
    pub fn decode_packet(packet: &[u8], fds: usize) -> impl Iterator<Item = Result<(u32, Request), DecodeError>> + '_ {
        let whole = (fds > 0 || packet.len() < HEADER_LEN).then(|| Request::decode(packet, fds));
        let frames = whole.is_none().then(|| split_frames(packet).map(|f| f.and_then(|f| Request::decode(f, 0))));
        whole.into_iter().chain(frames.into_iter().flatten())
    }

    /// Decodes one frame that arrived with `fds` file descriptors; returns
    /// the sequence number and the request.
    pub fn decode(packet: &[u8], fds: usize) -> Result<(u32, Request), DecodeError> {
        let (kind, seq, mut r) = decode_frame(packet)?;
        let r = &mut r;
        let msg = match kind {
            0x0101 => Request::Hello {
                version_min: r.u16()?,
                version_max: r.u16()?,
                pid: r.u32()?,
                uid: r.u32()?,
                caps: flags(r, "caps")?,
            },
            0x0102 => Request::Listen {
                listener: r.u64()?,
                addr: SockAddr::decode(r)?,
                backlog: r.u32()?,
                flags: flags(r, "listen flags")?,
            },
            0x0103 => Request::Unlisten { listener: r.u64()? },
            0x0104 => Request::Connect {
                dest: SockAddr::decode(r)?,
                source: SockAddr::decode_opt(r)?,
                nonblocking: r.bool("nonblocking")?,
            },
            0x0105 => {
                let conn = r.u64()?;
                let how = r.u8()?;
                if how > 2 {
                    return Err(DecodeError::BadValue("how"));
                }
                Request::Shutdown { conn, how }
            }
            0x0106 => Request::Close { conn: r.u64()?, side: Side::decode(r)?, keep: r.bool("keep")? },
            0x0107 => Request::Forked { parent_pid: r.u32()? },
            0x0108 => Request::ExecPrepare,
            0x0109 => Request::Reopen { conn: r.u64()?, side: Side::decode(r)? },
            0x010a => Request::Status,
            0x010b => Request::Accepted { conn: r.u64()? },
            0x010c => Request::Stop,
            0x0119 => Request::Ping,
            0x010d => Request::Pass { conn: r.u64()?, side: Side::decode(r)? },
            0x010e => Request::Claim,
            0x0116 => Request::Demote { conn: r.u64()?, side: Side::decode(r)? },
            0x0117 => Request::PassOver { conn: r.u64()?, side: Side::decode(r)? },
            0x0118 => Request::Trace { pid: r.u32()?, port: r.u16()? },
            0x011a => Request::Bell,
            0x011b => Request::BellOf { id: r.u64()? },
            0x011c => Request::Unbell { id: r.u64()? },
            0x010f => Request::Serve { listener: r.u64()?, bell: r.bool("bell")? },
            0x0110 => Request::Decline { conn: r.u64()? },
            0x0111 => Request::Use { conn: r.u64()?, source: SockAddr::decode_opt(r)? },
            0x0112 => Request::Unused { conn: r.u64()? },
            0x0113 => Request::Release { conn: r.u64()?, side: Side::decode(r)?, abort: r.bool("abort")? },
            0x0115 => {
                let mut counts = [0; FALLBACK_KINDS];
                for n in &mut counts {
                    *n = r.u32()?;
                }
                Request::Fallbacks { counts }
            }
            0x0114 => Request::Held {
                conn: r.u64()?,
                side: Side::decode(r)?,
                local: SockAddr::decode(r)?,
                peer: SockAddr::decode(r)?,
                open: r.bool("open")?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        check_fds(msg.fd_count(), fds)?;
        Ok((seq, msg))
    }
}

// ---- responses and events ---------------------------------------------

impl Response {
    fn kind(&self) -> u16 {
        match self {
            Response::Welcome { .. } => 0x0201,
            Response::Ok => 0x0202,
            Response::Error { .. } => 0x0203,
            Response::Connected(_) => 0x0204,
            Response::UseKernel { .. } => 0x0205,
            Response::Incoming { .. } => 0x0206,
            Response::PeerGone { .. } => 0x0207,
            Response::Reopened(_) => 0x0208,
            Response::Status(_) => 0x0209,
            Response::ListenerEntry(_) => 0x020a,
            Response::ProcessEntry(_) => 0x0210,
            Response::ConnEntry(_) => 0x020b,
            Response::Forget { .. } => 0x020c,
            Response::Standby { .. } => 0x020d,
            Response::Withdraw { .. } => 0x020e,
            Response::Expect { .. } => 0x020f,
            Response::Relayed => 0x0211,
            Response::Traced { .. } => 0x0212,
            Response::Queue { .. } => 0x0213,
            Response::BellId { .. } => 0x0214,
            Response::Bell { .. } => 0x0215,
        }
    }

    /// Fds that travel with this message.
    pub fn fd_count(&self) -> usize {
        match self {
            Response::Standby { info, bell, .. } => usize::from(*bell) + usize::from(!info.reused),
            Response::Connected(info) | Response::Incoming { info, .. } | Response::Expect { info, .. }
                if info.reused =>
            {
                0
            }
            Response::Connected(_) | Response::Incoming { .. } | Response::Expect { .. } | Response::Reopened(_) => 1,
            Response::Traced { .. } | Response::Bell { .. } => 1,
            Response::Queue { shared, .. } => 1 + usize::from(*shared),
            _ => 0,
        }
    }

    /// Encodes the frame into `buf`; returns its length.
    pub fn encode(&self, seq: u32, buf: &mut [u8]) -> Result<usize, EncodeError> {
        encode_frame(self.kind(), seq, buf, |w| match *self {
            Response::Welcome { version, monitor_pid, pid, caps, ring_bytes } => {
                w.u16(version);
                w.u32(monitor_pid);
                w.u32(pid);
                w.u32(caps.bits());
                w.u64(ring_bytes);
            }
            Response::Ok | Response::Relayed => {}
            Response::Error { code } => code.encode(w),
            Response::Connected(info) | Response::Reopened(info) => info.encode(w),
            Response::UseKernel { reason } => reason.encode(w),
            Response::Incoming { listener, info, at } => {
                w.u64(listener);
                info.encode(w);
                w.u64(at);
            }
            Response::PeerGone { conn } => w.u64(conn),
            Response::Forget { segment } => w.u64(segment),
            Response::Standby { dest, info, bell, acceptor } => {
                dest.encode(w);
                info.encode(w);
                w.bool(bell);
                w.u64(acceptor);
            }
            Response::Expect { listener, info } => {
                w.u64(listener);
                info.encode(w);
            }
            Response::Withdraw { conn } => w.u64(conn),
            Response::BellId { id } | Response::Bell { id } => w.u64(id),
            Response::Traced { conn, pids, addrs, segment_len } => {
                w.u64(conn);
                w.u32(pids[0]);
                w.u32(pids[1]);
                addrs[0].encode(w);
                addrs[1].encode(w);
                w.u64(segment_len);
            }
            Response::Queue { index, shared } => {
                w.u32(index);
                w.bool(shared);
            }
            Response::Status(s) => {
                w.u32(s.monitor_pid);
                w.u32(s.processes);
                w.u32(s.listeners);
                w.u32(s.connections);
                w.u64(s.segment_bytes);
                w.u64(s.connects_total);
                w.u64(s.reused_total);
                w.u64(s.standby_total);
                w.u64(s.renewed_total);
                w.u64(s.fallbacks_total);
                for n in s.fallbacks {
                    w.u64(n);
                }
                w.u64(s.uptime_ms);
            }
            Response::ProcessEntry(p) => {
                w.u32(p.pid);
                w.u32(p.uid);
                w.u32(p.connections);
                w.u32(p.listeners);
                w.u64(p.sent);
                w.u64(p.received);
                w.u64(p.to_kernel);
            }
            Response::ListenerEntry(l) => {
                w.u32(l.pid);
                l.addr.encode(w);
                w.u32(l.backlog);
                w.u32(l.pending);
                w.bool(l.reuseport);
            }
            Response::ConnEntry(c) => {
                w.u64(c.conn);
                w.u32(c.pids[0]);
                w.u32(c.pids[1]);
                c.addrs[0].encode(w);
                c.addrs[1].encode(w);
                w.u64(c.bytes[0]);
                w.u64(c.bytes[1]);
                w.u64(c.segment_len);
                c.states[0].encode(w);
                c.states[1].encode(w);
            }
        })
    }

    /// Decodes one packet that arrived with `fds` file descriptors; returns
    /// the sequence number and the response.
    pub fn decode(packet: &[u8], fds: usize) -> Result<(u32, Response), DecodeError> {
        let (kind, seq, mut r) = decode_frame(packet)?;
        let r = &mut r;
        let msg = match kind {
            0x0201 => Response::Welcome {
                version: r.u16()?,
                monitor_pid: r.u32()?,
                pid: r.u32()?,
                caps: flags(r, "caps")?,
                ring_bytes: r.u64()?,
            },
            0x0202 => Response::Ok,
            0x0211 => Response::Relayed,
            0x0213 => Response::Queue { index: r.u32()?, shared: r.bool("shared")? },
            0x0212 => Response::Traced {
                conn: r.u64()?,
                pids: [r.u32()?, r.u32()?],
                addrs: [SockAddr::decode(r)?, SockAddr::decode(r)?],
                segment_len: r.u64()?,
            },
            0x0203 => Response::Error { code: ErrorCode::decode(r)? },
            0x0204 => Response::Connected(ConnInfo::decode(r)?),
            0x0205 => Response::UseKernel { reason: Fallback::decode(r)? },
            0x0206 => Response::Incoming { listener: r.u64()?, info: ConnInfo::decode(r)?, at: r.u64()? },
            0x0207 => Response::PeerGone { conn: r.u64()? },
            0x020c => Response::Forget { segment: r.u64()? },
            0x020d => Response::Standby {
                dest: SockAddr::decode(r)?,
                info: ConnInfo::decode(r)?,
                bell: r.bool("bell")?,
                acceptor: r.u64()?,
            },
            0x020f => Response::Expect { listener: r.u64()?, info: ConnInfo::decode(r)? },
            0x020e => Response::Withdraw { conn: r.u64()? },
            0x0214 => Response::BellId { id: r.u64()? },
            0x0215 => Response::Bell { id: r.u64()? },
            0x0208 => Response::Reopened(ConnInfo::decode(r)?),
            0x0209 => Response::Status(Status {
                monitor_pid: r.u32()?,
                processes: r.u32()?,
                listeners: r.u32()?,
                connections: r.u32()?,
                segment_bytes: r.u64()?,
                connects_total: r.u64()?,
                reused_total: r.u64()?,
                standby_total: r.u64()?,
                renewed_total: r.u64()?,
                fallbacks_total: r.u64()?,
                fallbacks: {
                    let mut n = [0; FALLBACK_KINDS];
                    for v in &mut n {
                        *v = r.u64()?;
                    }
                    n
                },
                uptime_ms: r.u64()?,
            }),
            0x0210 => Response::ProcessEntry(ProcessStatus {
                pid: r.u32()?,
                uid: r.u32()?,
                connections: r.u32()?,
                listeners: r.u32()?,
                sent: r.u64()?,
                received: r.u64()?,
                to_kernel: r.u64()?,
            }),
            0x020a => Response::ListenerEntry(ListenerStatus {
                pid: r.u32()?,
                addr: SockAddr::decode(r)?,
                backlog: r.u32()?,
                pending: r.u32()?,
                reuseport: r.bool("reuseport")?,
            }),
            0x020b => Response::ConnEntry(ConnStatus {
                conn: r.u64()?,
                pids: [r.u32()?, r.u32()?],
                addrs: [SockAddr::decode(r)?, SockAddr::decode(r)?],
                bytes: [r.u64()?, r.u64()?],
                segment_len: r.u64()?,
                states: [EndState::decode(r)?, EndState::decode(r)?],
            }),
            other => return Err(DecodeError::UnknownType(other)),
        };
        r.finish()?;
        check_fds(msg.fd_count(), fds)?;
        Ok((seq, msg))
    }
}
