//! A client's outbox: the messages its channel could not take yet, in the
//! order they were sent, each with copies of its fds. A burst of connects
//! to a listener whose process is busy fills its channel; the connections
//! then wait here, as they would in the kernel's accept queue (bounded, as
//! that is, by the listener's backlog), instead of going to the kernel.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ipcd_proto::channel::{Channel, ChannelError};
use ipcd_proto::message::Response;

/// Fds an outbox may hold (copies): a client that does not read its
/// channel must not take the monitor's fds with it.
const MAX_FDS: usize = 3 * 4096;

/// One message waiting.
struct Queued {
    seq: u32,
    resp: Response,
    fds: Vec<OwnedFd>,
}

#[derive(Default)]
pub(super) struct Outbox {
    queue: VecDeque<Queued>,
    /// Fds held by `queue`.
    fds: usize,
    /// `EPOLLOUT` is asked for the channel (the outbox was not empty).
    pub watching: bool,
}

impl Outbox {
    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends `resp` with `fds` on `chan` after everything that waits, or
    /// queues it if the channel is full. `Ok(true)`: it waits (the caller
    /// asks for `EPOLLOUT`). A would-block error: no room for it.
    pub(super) fn send(
        &mut self,
        chan: &Channel,
        seq: u32,
        resp: &Response,
        fds: &[BorrowedFd<'_>],
    ) -> Result<bool, ChannelError> {
        if self.queue.is_empty() {
            match chan.send_response(seq, resp, fds) {
                Ok(()) => return Ok(false),
                Err(e) if e.is_would_block() => {}
                Err(e) => return Err(e),
            }
        }
        // No room for the copies (the outbox holds its most, or the
        // monitor is at its fd limit): as if the channel were full, which
        // fails this message alone.
        let full = || ChannelError::Io(io::ErrorKind::WouldBlock.into());
        if self.fds + fds.len() > MAX_FDS {
            return Err(full());
        }
        let fds = fds.iter().map(BorrowedFd::try_clone_to_owned).collect::<Result<Vec<_>, _>>().map_err(|_| full())?;
        self.fds += fds.len();
        self.queue.push_back(Queued { seq, resp: *resp, fds });
        Ok(true)
    }

    /// Sends what waits until the channel is full.
    pub(super) fn flush(&mut self, chan: &Channel) -> Result<(), ChannelError> {
        while let Some(q) = self.queue.front() {
            let fds: Vec<BorrowedFd<'_>> = q.fds.iter().map(AsFd::as_fd).collect();
            match chan.send_response(q.seq, &q.resp, &fds) {
                Ok(()) => {
                    self.fds -= q.fds.len();
                    self.queue.pop_front();
                }
                Err(e) if e.is_would_block() => return Ok(()),
                Err(e) => {
                    self.queue.clear();
                    self.fds = 0;
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}
