//! Ends demoted to relayed kernel TCP (see [`crate::relay`]): for a
//! receiver of `SCM_RIGHTS` with no ipcd library to claim the end, and
//! for an exec into such an image (`Demote`).

use ipcd_ring::ConnSegment;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use ipcd_proto::message::{ErrorCode, Response, Side};

use super::handle::From;
use super::{idx, ring_side, Daemon, Gone};
use crate::log;
use crate::log::Level;
use crate::relay::{self, RelayEnd};

impl Daemon {
    /// `Pass`: a receiver that can claim the end (see
    /// [`Daemon::receiver_can_claim`]) gets it as before; any other gets a
    /// relay, with the share of the end the sender added for it.
    pub(super) fn pass_over(&mut self, from: From, conn: u64, side: Side, fds: Vec<OwnedFd>) {
        let [kernel, unix]: [OwnedFd; 2] = match fds.try_into() {
            Ok(two) => two,
            Err(_) => return self.fail(from.token, from.seq, ErrorCode::BadRequest),
        };
        if self.receiver_can_claim(unix.as_fd()) {
            self.pass(from, conn, side, kernel);
        } else {
            self.demote(from, conn, side, kernel);
        }
    }

    /// `Demote` (and a `Pass` to a receiver that cannot claim): the kernel
    /// socket under the end is connected to the monitor's junction and a
    /// relay serves the end over it, holding the share of the end the
    /// process added for it.
    pub(super) fn demote(&mut self, from: From, conn: u64, side: Side, kernel: OwnedFd) {
        let From { token, seq, pid, .. } = from;
        if !self.holds(token, conn, side) {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        }
        if !relay::unconnected(kernel.as_fd()) {
            return self.fail(token, seq, ErrorCode::BadRequest);
        }
        let Some(rec) = self.conns.get(&conn) else {
            return self.fail(token, seq, ErrorCode::NoSuchConnection);
        };
        let i = idx(side);
        let holder = self.next_token;
        let end = (|| -> std::io::Result<RelayEnd> {
            let seg = rec.seg.map_again()?;
            let sock = self.junction.connect(kernel.as_fd())?;
            // Registered under the relay's holder token: dropped when it ends.
            let id = self.bells.add(holder, self.uid, crate::segment::doorbell()?);
            let bell = (id, self.bells.get(id).ok_or_else(|| std::io::Error::other("no doorbell"))?.1);
            Ok(RelayEnd { conn, seg, side: ring_side(side), bell, bells: self.bells.clone(), sock })
        })();
        let started = end.and_then(|end| {
            let wake = self.relay_bell.try_clone()?;
            relay::spawn(end, holder, self.relay_done.0.clone(), wake)
        });
        if let Err(e) = started {
            self.bells.drop_owner(holder);
            log!(Level::Warn, "msg=\"cannot relay connection\" conn={conn} pid={pid} err=\"{e}\"");
            return self.fail(token, seq, ErrorCode::Internal);
        }
        self.next_token += 1;
        let Some(rec) = self.conns.get_mut(&conn) else { return };
        rec.holders[i].push(holder);
        rec.relays[i] += 1;
        // Named as the monitor, so that the peer, should the monitor (and
        // with it the relay) die, can judge the end dead by itself.
        if let Some(id) = self_holder_id() {
            let _ = rec.seg.view().name_holder(ring_side(side), id);
        }
        // A third party maps it: never reused by the pair.
        rec.recyclable = false;
        log!(Level::Info, "msg=\"connection relayed over kernel TCP\" conn={conn} pid={pid}");
        self.reply(token, seq, &Response::Relayed, &[]);
    }

    /// Relays that ended give back their share of their end (the last
    /// holder's going closes it, as a released share does).
    pub(super) fn relays_finished(&mut self) {
        crate::segment::take(self.relay_bell.as_fd());
        while let Ok(f) = self.relay_done.1.try_recv() {
            let side = if f.side == ipcd_ring::Side::A { Side::A } else { Side::B };
            if let Some(rec) = self.conns.get_mut(&f.conn) {
                rec.relays[idx(side)] = rec.relays[idx(side)].saturating_sub(1);
                if let Some(id) = self_holder_id() {
                    rec.seg.view().unname_holder(f.side, id);
                }
            }
            self.bells.drop_owner(f.holder);
            self.let_go(f.holder, f.conn, side, Gone::Released { abort: false });
        }
    }

    /// Whether the process at the other end of `unix` can claim an end
    /// passed over it: one under this monitor, or one with the library
    /// loaded and not disabled (a forked or spawned child registers only
    /// at its first use). One the monitor cannot look at is given the
    /// benefit of the doubt, as before relays.
    fn receiver_can_claim(&self, unix: BorrowedFd<'_>) -> bool {
        let Some(pid) = peer_pid(unix) else { return true };
        if self.clients.values().any(|c| c.hello && c.pid == pid) {
            return true;
        }
        match (std::fs::read(format!("/proc/{pid}/maps")), std::fs::read(format!("/proc/{pid}/environ"))) {
            (Ok(maps), Ok(environ)) => has_library(&maps) && !disabled(&environ),
            _ => true,
        }
    }
}

/// The monitor's own name among an end's holders (see `ipcd_proto::holder`).
fn self_holder_id() -> Option<std::num::NonZeroU64> {
    ipcd_proto::holder::holder_id(crate::segment::pid_namespace(), std::process::id())
}

/// The pid of the process at the other end of a Unix socket (its
/// creator's, for a socketpair), as the kernel recorded it.
fn peer_pid(unix: BorrowedFd<'_>) -> Option<u32> {
    // SAFETY: an all-zero ucred is valid; getsockopt fills it.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: the struct and its length.
    let r = unsafe {
        libc::getsockopt(unix.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&raw mut cred).cast(), &mut len)
    };
    (r == 0 && cred.pid > 0).then_some(cred.pid as u32)
}

/// Whether a process's `/proc/PID/maps` shows the preload library.
fn has_library(maps: &[u8]) -> bool {
    maps.split(|&b| b == b'\n').any(|line| line.ends_with(b".so") && contains(line, b"/libipcd_preload"))
}

/// Whether a process's `/proc/PID/environ` disables the library
/// (`IPCD_DISABLE` set to anything but `0`, as the library reads it).
fn disabled(environ: &[u8]) -> bool {
    environ.split(|&b| b == 0).any(|v| v.strip_prefix(b"IPCD_DISABLE=").is_some_and(|v| v != b"0"))
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_is_found_in_maps_and_disabled_as_the_library_reads_it() {
        let maps = b"7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/ipcd/libipcd_preload.so\n";
        assert!(has_library(maps));
        assert!(!has_library(b"7f00-7f01 r-xp 00000000 08:01 42 /usr/lib/libc.so.6\n"));
        assert!(disabled(b"A=1\0IPCD_DISABLE=1\0"));
        assert!(disabled(b"IPCD_DISABLE=\0"));
        assert!(!disabled(b"IPCD_DISABLE=0\0B=2\0"));
        assert!(!disabled(b"XIPCD_DISABLE=1\0"));
    }
}
