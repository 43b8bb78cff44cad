//! The framed control channel: one message per `SOCK_SEQPACKET` packet
//! (or, for a batch of requests without fds, several whole ones), its
//! fds beside it (`SCM_RIGHTS`, received with `MSG_CMSG_CLOEXEC`), and the
//! peer's credentials (`SO_PEERCRED`) on both ends.
//!
//! Everything received is checked before use: a packet longer than
//! [`MAX_FRAME`] or with truncated control data is an error, and fds beyond
//! what the message defines are closed, never leaked.

use std::fmt;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::error::{DecodeError, EncodeError};
use crate::message::{Request, Response, MAX_FDS, MAX_FRAME};

/// Fds room in the receive buffer: more than any message carries, so extra
/// fds are seen (and closed) rather than silently cut off.
const FD_ROOM: usize = 16;

/// Why a channel operation failed.
#[derive(Debug)]
pub enum ChannelError {
    /// The system call failed (`WouldBlock` on a non-blocking channel with
    /// nothing to do: see [`ChannelError::is_would_block`]).
    Io(io::Error),
    /// The peer closed the channel.
    Closed,
    /// A packet longer than the frame limit (its tail was discarded).
    Truncated,
    /// Not every fd of the packet could be received (more than fit the
    /// control buffer, or the receiver is at its fd limit: `MSG_CTRUNC`);
    /// those that came were closed.
    ControlTruncated,
    /// The packet did not decode; its fds were closed.
    Decode(DecodeError),
    /// The message did not encode.
    Encode(EncodeError),
    /// Wrong number of fds handed to a send.
    FdCount {
        /// Fds the message's definition requires.
        expected: usize,
        /// Fds given.
        got: usize,
    },
}

impl ChannelError {
    /// True for `EAGAIN` on a non-blocking channel.
    pub fn is_would_block(&self) -> bool {
        matches!(self, ChannelError::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelError::Io(e) => write!(f, "control channel: {e}"),
            ChannelError::Closed => f.write_str("control channel closed by the peer"),
            ChannelError::Truncated => write!(f, "control packet longer than {MAX_FRAME} bytes"),
            ChannelError::ControlTruncated => f.write_str("control packet carried too many fds"),
            ChannelError::Decode(e) => write!(f, "bad control message: {e}"),
            ChannelError::Encode(e) => write!(f, "cannot encode control message: {e}"),
            ChannelError::FdCount { expected, got } => {
                write!(f, "message carries {expected} fds, {got} given")
            }
        }
    }
}

impl std::error::Error for ChannelError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ChannelError::Io(e) => Some(e),
            ChannelError::Decode(e) => Some(e),
            ChannelError::Encode(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for ChannelError {
    fn from(e: io::Error) -> Self {
        ChannelError::Io(e)
    }
}

/// The peer's credentials as the kernel recorded them at connect time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

impl PeerCred {
    /// Whether a process of user `uid` may trust this peer as its monitor:
    /// the same user, or root.
    pub fn is_monitor_for(&self, uid: u32) -> bool {
        self.uid == uid || self.uid == 0
    }
}

/// Fds received with a message, in the order its definition gives.
#[derive(Debug, Default)]
pub struct Fds(Vec<OwnedFd>);

impl Fds {
    /// Number of fds.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No fds.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes all fds out, in order.
    pub fn into_vec(self) -> Vec<OwnedFd> {
        self.0
    }
}

/// One end of a control channel.
#[derive(Debug)]
pub struct Channel {
    fd: OwnedFd,
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl From<Channel> for OwnedFd {
    /// The channel's socket, e.g. to move it to another fd number.
    fn from(chan: Channel) -> OwnedFd {
        chan.fd
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// Most fds `send_packet` passes (tests send more than `FD_ROOM` to check
/// the receiver's handling of a truncated control buffer).
const SEND_FD_LIMIT: usize = 64;
const CMSG_BYTES: usize = 32 + SEND_FD_LIMIT * size_of::<RawFd>();

/// Most packets one batched call ([`Channel::send_requests`]) moves.
pub const BATCH: usize = 16;

/// Control buffer, aligned for `cmsghdr`.
#[repr(C)]
struct CmsgBuf {
    _align: [libc::cmsghdr; 0],
    bytes: [u8; CMSG_BYTES],
}

impl Channel {
    /// A connected pair (for tests, and for a monitor talking to itself).
    pub fn pair() -> io::Result<(Channel, Channel)> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        cvt(unsafe {
            libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr())
        })?;
        // SAFETY: socketpair succeeded: both fds are open and ours alone.
        let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        Ok((Channel { fd: a }, Channel { fd: b }))
    }

    /// Wraps a connected `SOCK_SEQPACKET` socket (accepted by the monitor).
    pub fn from_fd(fd: OwnedFd) -> Channel {
        Channel { fd }
    }

    /// Connects to the monitor listening on the abstract Unix name `name`
    /// (scoped by network namespace, as the design wants).
    pub fn connect_abstract(name: &[u8]) -> io::Result<Channel> {
        let (addr, len) = abstract_addr(name)?;
        // SAFETY: plain socket creation.
        let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: socket succeeded: the fd is open and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        Ok(Channel { fd })
    }

    /// Switches `O_NONBLOCK`.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_raw_fd(), on)
    }

    /// The peer's pid, uid and gid (`SO_PEERCRED`).
    pub fn peer_cred(&self) -> io::Result<PeerCred> {
        let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: `cred` and `len` describe a writable ucred.
        cvt(unsafe {
            libc::getsockopt(self.fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
        })?;
        Ok(PeerCred { pid: cred.pid as u32, uid: cred.uid, gid: cred.gid })
    }

    /// Sends one packet with `fds` beside it.
    pub fn send_packet(&self, packet: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        if fds.len() > SEND_FD_LIMIT {
            return Err(ChannelError::FdCount { expected: SEND_FD_LIMIT, got: fds.len() });
        }
        let mut iov = libc::iovec { iov_base: packet.as_ptr() as *mut _, iov_len: packet.len() };
        let mut cbuf = CmsgBuf { _align: [], bytes: [0; CMSG_BYTES] };
        // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
        let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !fds.is_empty() {
            let data_len = (fds.len() * size_of::<RawFd>()) as u32;
            // SAFETY: CMSG_SPACE is a pure size computation.
            let space = unsafe { libc::CMSG_SPACE(data_len) } as usize;
            msg.msg_control = cbuf.bytes.as_mut_ptr().cast();
            msg.msg_controllen = space;
            // SAFETY: the control buffer is aligned for cmsghdr and `space`
            // bytes long (≤ its size), so the first header and its data fit.
            unsafe {
                let cmsg = libc::CMSG_FIRSTHDR(&msg);
                (*cmsg).cmsg_level = libc::SOL_SOCKET;
                (*cmsg).cmsg_type = libc::SCM_RIGHTS;
                (*cmsg).cmsg_len = libc::CMSG_LEN(data_len) as usize;
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                for (i, fd) in fds.iter().enumerate() {
                    data.add(i).write_unaligned(fd.as_raw_fd());
                }
            }
        }
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = cvt_size(unsafe { libc::sendmsg(self.fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
        debug_assert_eq!(n, packet.len(), "SOCK_SEQPACKET sends whole packets");
        Ok(())
    }

    /// Receives one packet into `buf` (at least [`MAX_FRAME`] bytes) and
    /// the fds that came with it.
    pub fn recv_packet(&self, buf: &mut [u8]) -> Result<(usize, Fds), ChannelError> {
        match self.recv_packet_lossy(buf)? {
            (_, _, true) => Err(ChannelError::ControlTruncated),
            (n, fds, false) => Ok((n, fds)),
        }
    }

    /// As [`Channel::recv_packet`], but a packet whose fds did not all
    /// arrive still comes (without any fds, and `true`).
    fn recv_packet_lossy(&self, buf: &mut [u8]) -> Result<(usize, Fds, bool), ChannelError> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut cbuf = CmsgBuf { _align: [], bytes: [0; CMSG_BYTES] };
        let mut msg = recv_header(&mut iov, &mut cbuf);
        // SAFETY: `msg` points at live, writable buffers of the stated sizes.
        let n = cvt_size(unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
        // SAFETY: the kernel just filled `msg` for this packet.
        unsafe { received(&msg, n) }
    }

    /// Receives up to [`BATCH`] packets waiting, in one system call
    /// (`recvmmsg`, non-blocking), each into its own `MAX_FRAME + 1`
    /// bytes of `bufs`, and hands each to `each` in order with its fds
    /// (or its error: a bad packet does not hide the rest). Returns how
    /// many there were (at least one); `WouldBlock` if none waited,
    /// `Closed` if the peer closed.
    pub fn recv_packets(
        &self,
        bufs: &mut [[u8; MAX_FRAME + 1]],
        mut each: impl FnMut(&[u8], Result<Fds, ChannelError>),
    ) -> Result<usize, ChannelError> {
        let k = bufs.len().min(BATCH);
        if k == 0 {
            return Ok(0);
        }
        let mut cbufs: Vec<CmsgBuf> = (0..k).map(|_| CmsgBuf { _align: [], bytes: [0; CMSG_BYTES] }).collect();
        let mut iovs: Vec<libc::iovec> = bufs
            .iter_mut()
            .take(k)
            .map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() })
            .collect();
        let mut msgs: Vec<libc::mmsghdr> = iovs
            .iter_mut()
            .zip(cbufs.iter_mut())
            .map(|(iov, cbuf)| libc::mmsghdr { msg_hdr: recv_header(iov, cbuf), msg_len: 0 })
            .collect();
        // SAFETY: `k` headers, each pointing at its own live iovec (into
        // `bufs`) and control buffer, all outliving the call.
        let got = cvt(unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                k as libc::c_uint,
                libc::MSG_CMSG_CLOEXEC | libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        })? as usize;
        if got == 0 {
            // The peer closed (a packet of 0 bytes would be counted).
            return Err(ChannelError::Closed);
        }
        for (m, buf) in msgs.iter().zip(bufs.iter()).take(got) {
            let n = m.msg_len as usize;
            // SAFETY: the kernel filled the first `got` headers.
            match unsafe { received(&m.msg_hdr, n) } {
                Ok((n, fds, false)) => each(&buf[..n], Ok(fds)),
                // The message itself is whole: [`decode_response`] can
                // still read it.
                Ok((n, _, true)) => each(&buf[..n], Err(ChannelError::ControlTruncated)),
                Err(e) => each(&[], Err(e)),
            }
        }
        Ok(got)
    }

    fn send_with(
        &self,
        fds: &[BorrowedFd<'_>],
        expected: usize,
        encode: impl FnOnce(&mut [u8]) -> Result<usize, EncodeError>,
    ) -> Result<(), ChannelError> {
        if fds.len() != expected {
            return Err(ChannelError::FdCount { expected, got: fds.len() });
        }
        let mut buf = [0u8; MAX_FRAME];
        let n = encode(&mut buf).map_err(ChannelError::Encode)?;
        self.send_packet(&buf[..n], fds)
    }

    /// Sends a request (process side).
    pub fn send_request(&self, seq: u32, req: &Request, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_with(fds, req.fd_count(), |buf| req.encode(seq, buf))
    }

    /// Sends requests that carry no fds, in order, packed whole into as
    /// few packets as hold them ([`MAX_FRAME`] bytes each, read back with
    /// [`Request::decode_packet`]), up to [`BATCH`] packets per system call
    /// (`sendmmsg`): a process reporting a batch of closes pays one call
    /// and wakes the monitor once (one packet each woke it, and moved it
    /// to the sender's core, once per close). Returns how many requests
    /// were sent (at least one, fewer when the channel filled); an error
    /// only when none was.
    pub fn send_requests(&self, reqs: &[(u32, Request)]) -> Result<usize, ChannelError> {
        no_fds(reqs.iter().map(|(_, r)| r.fd_count()))?;
        let mut buf = vec![0u8; BATCH * MAX_FRAME];
        // (bytes, requests) of each packet; packet `i` starts at `i * MAX_FRAME`.
        let mut packets: Vec<(usize, usize)> = Vec::new();
        let mut frame = [0u8; MAX_FRAME];
        for (seq, req) in reqs {
            let n = req.encode(*seq, &mut frame).map_err(ChannelError::Encode)?;
            if packets.last().is_none_or(|&(len, _)| len + n > MAX_FRAME) {
                if packets.len() == BATCH {
                    break;
                }
                packets.push((0, 0));
            }
            let at = (packets.len() - 1) * MAX_FRAME;
            if let Some((len, count)) = packets.last_mut() {
                buf[at + *len..at + *len + n].copy_from_slice(&frame[..n]);
                *len += n;
                *count += 1;
            }
        }
        let slices: Vec<&[u8]> =
            packets.iter().enumerate().map(|(i, &(len, _))| &buf[i * MAX_FRAME..i * MAX_FRAME + len]).collect();
        let sent = self.send_packets(&slices)?;
        Ok(packets[..sent].iter().map(|&(_, count)| count).sum())
    }

    /// Sends responses or events that carry no fds, one packet each, with
    /// one `sendmmsg` per [`BATCH`]: the monitor's events of one report
    /// to one process (a standby and its successor's `Expect` per
    /// connection). Returns how many were sent, as `send_requests`.
    pub fn send_responses(&self, resps: &[(u32, Response)]) -> Result<usize, ChannelError> {
        no_fds(resps.iter().map(|(_, r)| r.fd_count()))?;
        let resps = &resps[..resps.len().min(BATCH)];
        let mut buf = vec![0u8; resps.len() * MAX_FRAME];
        let mut lens = Vec::with_capacity(resps.len());
        for ((seq, resp), frame) in resps.iter().zip(buf.chunks_mut(MAX_FRAME)) {
            lens.push(resp.encode(*seq, frame).map_err(ChannelError::Encode)?);
        }
        let slices: Vec<&[u8]> = buf.chunks(MAX_FRAME).zip(lens).map(|(frame, n)| &frame[..n]).collect();
        self.send_packets(&slices)
    }

    /// Sends up to [`BATCH`] fd-less `packets` with one `sendmmsg`; how
    /// many went.
    fn send_packets(&self, packets: &[&[u8]]) -> Result<usize, ChannelError> {
        let count = packets.len().min(BATCH);
        if count == 0 {
            return Ok(0);
        }
        // SAFETY: all-zero iovecs and mmsghdrs are valid (null, empty).
        let mut iovs: [libc::iovec; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { MaybeUninit::zeroed().assume_init() };
        for (iov, p) in iovs.iter_mut().zip(packets) {
            // The kernel only reads through it (sendmmsg).
            *iov = libc::iovec { iov_base: p.as_ptr() as *mut _, iov_len: p.len() };
        }
        for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
            m.msg_hdr.msg_iov = iov;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` headers each point at one live iovec,
        // which points into a packet the caller keeps alive across the call.
        let n = cvt(unsafe {
            libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), count as libc::c_uint, libc::MSG_NOSIGNAL)
        })?;
        Ok(n as usize)
    }

    /// Sends a response or event (monitor side).
    pub fn send_response(&self, seq: u32, resp: &Response, fds: &[BorrowedFd<'_>]) -> Result<(), ChannelError> {
        self.send_with(fds, resp.fd_count(), |buf| resp.encode(seq, buf))
    }

    /// Receives a request (monitor side).
    pub fn recv_request(&self) -> Result<(u32, Request, Fds), ChannelError> {
        let mut buf = [0u8; MAX_FRAME + 1];
        let (n, fds) = self.recv_packet(&mut buf)?;
        let (seq, req) = Request::decode(&buf[..n], fds.len()).map_err(ChannelError::Decode)?;
        Ok((seq, req, fds))
    }

    /// Receives a response or event (process side). One whose fds could
    /// not all be received (the process is at its fd limit) still comes,
    /// with none: see [`decode_response`].
    pub fn recv_response(&self) -> Result<(u32, Response, Fds), ChannelError> {
        let mut buf = [0u8; MAX_FRAME + 1];
        let (n, fds, lost) = self.recv_packet_lossy(&mut buf)?;
        decode_response(&buf[..n], if lost { Err(ChannelError::ControlTruncated) } else { Ok(fds) })
    }
}

/// Refuses a batch of messages any of which carries fds (`counts`).
fn no_fds(mut counts: impl Iterator<Item = usize>) -> Result<(), ChannelError> {
    match counts.find(|&n| n != 0) {
        Some(got) => Err(ChannelError::FdCount { expected: 0, got }),
        None => Ok(()),
    }
}

/// Decodes a response packet received with `fds`. A packet whose fds were
/// lost (`ControlTruncated`: the process was at its fd limit, as a call
/// that needs a new fd fails with `EMFILE`) still decodes, with no fds: the
/// channel stays usable, and whoever needed the fds finds them missing.
pub fn decode_response(packet: &[u8], fds: Result<Fds, ChannelError>) -> Result<(u32, Response, Fds), ChannelError> {
    match fds {
        Ok(fds) => {
            let (seq, resp) = Response::decode(packet, fds.len()).map_err(ChannelError::Decode)?;
            Ok((seq, resp, fds))
        }
        Err(ChannelError::ControlTruncated) => {
            // The message says how many fds it had; decode it as sent.
            let expected = match Response::decode(packet, 0) {
                Ok((seq, resp)) => return Ok((seq, resp, Fds(Vec::new()))),
                Err(DecodeError::FdCount { expected, .. }) => expected,
                Err(e) => return Err(ChannelError::Decode(e)),
            };
            let (seq, resp) = Response::decode(packet, expected).map_err(ChannelError::Decode)?;
            Ok((seq, resp, Fds(Vec::new())))
        }
        Err(e) => Err(e),
    }
}

/// A receive header for one packet into `iov`, its fds into `cbuf`.
fn recv_header(iov: &mut libc::iovec, cbuf: &mut CmsgBuf) -> libc::msghdr {
    // SAFETY: an all-zero msghdr is valid.
    let mut msg: libc::msghdr = unsafe { MaybeUninit::zeroed().assume_init() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.bytes.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE is a pure size computation.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE((FD_ROOM * size_of::<RawFd>()) as u32) } as usize;
    msg
}

/// The packet of `n` bytes and its fds that the kernel put where `msg`
/// points, checked: every fd is owned first, so every error closes them.
///
/// # Safety
/// `msg` was just filled by a successful receive of that packet.
/// The last value says whether fds were lost (`MSG_CTRUNC`): then none
/// is returned (those that came are closed), and the packet is otherwise
/// as sent.
unsafe fn received(msg: &libc::msghdr, n: usize) -> Result<(usize, Fds, bool), ChannelError> {
    // SAFETY: the kernel filled the control data; each fd it passed is
    // ours alone, owned here before any check can return.
    let mut fds: Vec<OwnedFd> =
        unsafe { scm_rights(msg) }.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect();
    let lost = msg.msg_flags & libc::MSG_CTRUNC != 0;
    if lost {
        fds.clear();
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 || n > MAX_FRAME {
        return Err(ChannelError::Truncated);
    }
    if n == 0 {
        return Err(ChannelError::Closed);
    }
    Ok((n, Fds(fds), lost))
}

/// The fds of every `SCM_RIGHTS` message in `msg`'s control data, in
/// order (a length shorter than its header counts as none).
///
/// # Safety
/// `msg`'s control pointer and length describe readable memory.
pub unsafe fn scm_rights(msg: &libc::msghdr) -> Vec<RawFd> {
    let mut fds = Vec::new();
    // SAFETY: the CMSG macros walk the caller's control buffer within
    // `msg_controllen`, and each payload is read within its stated length.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let n = ((*c).cmsg_len as usize).saturating_sub(libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                fds.extend((0..n).map(|i| data.add(i).read_unaligned()));
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

/// A listening SEQPACKET socket on an abstract Unix name (monitor side).
#[derive(Debug)]
pub struct Listener {
    fd: OwnedFd,
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Listener {
    /// Binds and listens on the abstract name `name`.
    pub fn bind_abstract(name: &[u8]) -> io::Result<Listener> {
        let (addr, len) = abstract_addr(name)?;
        // SAFETY: plain socket creation.
        let fd = cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: socket succeeded: the fd is open and ours.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) })?;
        // SAFETY: listen on our bound socket.
        cvt(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(Listener { fd })
    }

    /// Switches `O_NONBLOCK` on the listening socket (for an event loop).
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        set_nonblocking(self.fd.as_raw_fd(), on)
    }

    /// Accepts one channel (`O_CLOEXEC`; non-blocking if `nonblocking`).
    pub fn accept(&self, nonblocking: bool) -> io::Result<Channel> {
        let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: accept4 on our listening socket, no address wanted.
        let fd = cvt(unsafe { libc::accept4(self.fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), flags) })?;
        // SAFETY: accept4 succeeded: the fd is open and ours.
        Ok(Channel { fd: unsafe { OwnedFd::from_raw_fd(fd) } })
    }
}

fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on an open fd the caller owns.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        let flags = if on { flags | libc::O_NONBLOCK } else { flags & !libc::O_NONBLOCK };
        cvt(libc::fcntl(fd, libc::F_SETFL, flags))?;
    }
    Ok(())
}

/// `sockaddr_un` for an abstract name (leading NUL, not NUL-terminated).
fn abstract_addr(name: &[u8]) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: an all-zero sockaddr_un is valid.
    let mut addr: libc::sockaddr_un = unsafe { MaybeUninit::zeroed().assume_init() };
    if name.is_empty() || name.len() >= addr.sun_path.len() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "abstract socket name empty or too long"));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, &b) in addr.sun_path[1..].iter_mut().zip(name) {
        *dst = b as libc::c_char;
    }
    let len = size_of::<libc::sa_family_t>() + 1 + name.len();
    Ok((addr, len as libc::socklen_t))
}

// Extra fds must be seen to be closed: leave room beyond the largest message.
const _: () = assert!(MAX_FDS < FD_ROOM);
