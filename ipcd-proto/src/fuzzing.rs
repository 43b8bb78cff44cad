//! Fuzzing and test support, compiled only for the fuzz targets (`--cfg
//! fuzzing`, set by cargo-fuzz) and this crate's own tests (feature
//! `fuzzing`, which the crate's dev-dependency on itself turns on): drives
//! one [`Conn`] with an arbitrary event sequence and checks what no
//! sequence may break. Not part of the crate's API.

use crate::state::{CloseAction, Conn, Errno, How, Phase, Readiness, Recv, Ring, Send};

/// One step: an event from the ring or monitor, or a call.
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Connected,
    ConnectFailed(bool),
    Abort,
    Send { len: usize, nosignal: bool },
    Recv { len: usize },
    Shutdown(i32),
    Close { abort: bool },
    Poll,
    SoError,
}

impl Step {
    /// Decodes a step from two bytes (for the fuzz target).
    pub fn from_bytes(op: u8, arg: u8) -> Step {
        let len = usize::from(arg) % 8;
        match op % 9 {
            0 => Step::Connected,
            1 => Step::ConnectFailed(arg & 1 == 0),
            2 => Step::Abort,
            3 => Step::Send { len, nosignal: arg & 0x80 != 0 },
            4 => Step::Recv { len },
            5 => Step::Shutdown(i32::from(arg % 4)),
            6 => Step::Close { abort: arg & 1 == 0 },
            7 => Step::Poll,
            _ => Step::SoError,
        }
    }
}

/// Decodes a ring view from one byte.
pub fn ring_from_byte(b: u8) -> Ring {
    Ring {
        readable: usize::from(b & 3),
        writable: usize::from((b >> 2) & 3),
        peer_fin: b & 0x10 != 0,
        peer_reset: b & 0x20 != 0,
        peer_reader_closed: b & 0x40 != 0,
    }
}

/// Runs the steps, checking after each one:
/// - poll and recv agree: recv would block exactly when poll shows none of
///   IN, HUP, ERR (and likewise send with OUT, HUP, ERR);
/// - a pending error is reported once;
/// - nothing is written in a closed or connecting end, nothing read while
///   connecting, and counts never exceed what was asked or available;
/// - after close, the end stays closed and stops reading.
pub fn run(start_connecting: bool, steps: &[(Step, Ring)]) {
    let mut c = if start_connecting { Conn::connecting() } else { Conn::established() };
    let mut closed = false;
    for &(step, ring) in steps {
        if closed {
            break;
        }
        consistent(&c, &ring);
        match step {
            Step::Connected => c.on_connected(),
            Step::ConnectFailed(refused) => {
                c.on_connect_failed(if refused { Errno::ECONNREFUSED } else { Errno::ETIMEDOUT })
            }
            Step::Abort => c.on_abort(),
            Step::Send { len, nosignal } => {
                let phase = c.phase();
                match c.send(&ring, len, nosignal) {
                    Send::Write(n) | Send::Discard(n) => {
                        assert!(
                            n <= len && n <= ring.writable.max(usize::from(len == 0)) && phase == Phase::Established
                        );
                    }
                    Send::Fail { sigpipe, errno } => assert!(!sigpipe || (errno == Errno::EPIPE && !nosignal)),
                    Send::WouldBlock => {}
                }
            }
            Step::Recv { len } => {
                if let Recv::Read(n) = c.recv(&ring, len) {
                    assert!(n <= len && n <= ring.readable && c.phase() != Phase::Connecting);
                }
            }
            Step::Shutdown(how) => {
                if let Ok(how) = How::from_raw(how) {
                    let _ = c.shutdown(&ring, how);
                }
            }
            Step::Close { abort } => {
                let action = c.close(&ring, abort);
                assert!(action != CloseAction::Fin || !abort);
                assert!(c.stops_reading() && c.phase() == Phase::Closed);
                closed = true;
            }
            Step::Poll => {
                let _ = c.poll(&ring);
            }
            Step::SoError => {
                if c.so_error(&ring).is_some() {
                    assert_eq!(c.so_error(&ring), None, "an error is reported once");
                }
            }
        }
    }
}

/// Readiness agrees with what the calls would do (checked on copies).
fn consistent(c: &Conn, ring: &Ring) {
    let mask = c.clone().poll(ring);
    let wakes = Readiness::HUP | Readiness::ERR;
    let recv_blocks = c.clone().recv(ring, 1) == Recv::WouldBlock;
    assert_eq!(recv_blocks, !mask.intersects(wakes | Readiness::IN), "recv vs poll {mask:?} in {c:?} with {ring:?}");
    let send_blocks = c.clone().send(ring, 1, true) == Send::WouldBlock;
    assert_eq!(send_blocks, !mask.intersects(wakes | Readiness::OUT), "send vs poll {mask:?} in {c:?} with {ring:?}");
}
