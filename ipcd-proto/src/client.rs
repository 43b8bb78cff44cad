//! A client of a running monitor (feature `std`): `ipcd status`,
//! `metrics`, `trace` and `stop` are built on it, and so can other tools
//! (an exporter, a dashboard) without the monitor's crate.

use std::io;

use crate::channel::{Channel, ChannelError, Fds};
use crate::message::{ConnStatus, ErrorCode, ListenerStatus, ProcessStatus, Request, Response, Status};
use crate::Caps;

/// A registered control channel to the monitor.
#[derive(Debug)]
pub struct MonitorClient {
    chan: Channel,
    seq: u32,
    /// The monitor's answer to `Hello`.
    pub welcome: Response,
}

/// What `ipcd status` shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    /// Counters.
    pub status: Status,
    /// Every process, with what it holds.
    pub processes: Vec<ProcessStatus>,
    /// Every listener.
    pub listeners: Vec<ListenerStatus>,
    /// Every connection.
    pub connections: Vec<ConnStatus>,
}

fn proto_err(e: ChannelError) -> io::Error {
    match e {
        ChannelError::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

impl MonitorClient {
    /// Connects to the monitor at `socket`, checks that it runs as our user
    /// (or root), and registers.
    pub fn connect(socket: &str) -> io::Result<MonitorClient> {
        let chan = Channel::connect_abstract(socket.as_bytes())?;
        // SAFETY: getuid/getpid cannot fail.
        let (uid, pid) = unsafe { (libc::getuid(), libc::getpid() as u32) };
        let cred = chan.peer_cred()?;
        if !cred.is_monitor_for(uid) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the monitor on @{socket} runs as uid {}, not {uid} or root", cred.uid),
            ));
        }
        let mut c = MonitorClient { chan, seq: 0, welcome: Response::Ok };
        let hello = Request::hello(pid, uid, Caps::empty());
        let (welcome, _) = c.call(&hello, &[])?;
        if !matches!(welcome, Response::Welcome { .. }) {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("monitor refused: {welcome:?}")));
        }
        c.welcome = welcome;
        Ok(c)
    }

    /// The channel, for requests this type has no helper for.
    pub fn channel(&self) -> &Channel {
        &self.chan
    }

    /// Sends a request and waits for its reply, skipping events.
    pub fn call(&mut self, req: &Request, fds: &[std::os::fd::BorrowedFd<'_>]) -> io::Result<(Response, Fds)> {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.chan.send_request(self.seq, req, fds).map_err(proto_err)?;
        self.wait_reply()
    }

    /// Waits for the reply to the last request, skipping events.
    pub fn wait_reply(&mut self) -> io::Result<(Response, Fds)> {
        loop {
            let (seq, resp, fds) = self.chan.recv_response().map_err(proto_err)?;
            if seq == self.seq {
                return Ok((resp, fds));
            }
        }
    }

    /// Sends a request that has no reply.
    pub fn notify(&mut self, req: &Request) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.chan.send_request(self.seq, req, &[]).map_err(proto_err)
    }

    /// Counters and listings.
    pub fn status(&mut self) -> io::Result<StatusReport> {
        let (first, _) = self.call(&Request::Status, &[])?;
        let status = match first {
            Response::Status(status) => status,
            Response::Error { code: ErrorCode::NotOwner } => {
                return Err(io::Error::new(io::ErrorKind::PermissionDenied, "the monitor belongs to another user"))
            }
            other => return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer {other:?}"))),
        };
        let mut report = StatusReport { status, processes: Vec::new(), listeners: Vec::new(), connections: Vec::new() };
        loop {
            match self.wait_reply()?.0 {
                Response::ProcessEntry(p) => report.processes.push(p),
                Response::ListenerEntry(l) => report.listeners.push(l),
                Response::ConnEntry(c) => report.connections.push(c),
                Response::Ok => return Ok(report),
                other => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer {other:?}")))
                }
            }
        }
    }

    /// Asks the monitor to stop.
    pub fn stop(&mut self) -> io::Result<()> {
        match self.call(&Request::Stop, &[])?.0 {
            Response::Ok => Ok(()),
            other => Err(io::Error::new(io::ErrorKind::PermissionDenied, format!("monitor refused: {other:?}"))),
        }
    }
}
