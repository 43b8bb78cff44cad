//! The rows the kernel differential test cannot reach on loopback (a
//! connect in progress, a refused or timed-out connect, monitor events),
//! and invariants over arbitrary event sequences.

use ipcd_proto::fuzzing::{ring_from_byte, run, Step};
use ipcd_proto::state::{Conn, Errno, How, Readiness, Recv, Ring, Send};
use proptest::prelude::*;

const IDLE: Ring = Ring { readable: 0, writable: 100, peer_fin: false, peer_reset: false, peer_reader_closed: false };

#[test]
fn a_connect_in_progress_blocks_then_completes() {
    let mut c = Conn::connecting();
    assert_eq!(c.name(), "connecting");
    assert_eq!(c.poll(&IDLE), Readiness::empty(), "tcp_poll: nothing while SYN_SENT");
    assert_eq!(c.send(&IDLE, 5, false), Send::WouldBlock);
    assert_eq!(c.recv(&IDLE, 5), Recv::WouldBlock);
    c.on_connected();
    assert_eq!(c.name(), "established");
    assert_eq!(c.poll(&IDLE), Readiness::OUT | Readiness::WRNORM);
    assert_eq!(c.send(&IDLE, 5, false), Send::Write(5));
}

#[test]
fn a_refused_connect_reports_once_then_reads_eof() {
    let mut c = Conn::connecting();
    c.on_connect_failed(Errno::ECONNREFUSED);
    assert_eq!(c.name(), "refused");
    let all = Readiness::IN | Readiness::RDNORM | Readiness::RDHUP | Readiness::OUT | Readiness::WRNORM;
    assert_eq!(c.poll(&IDLE), all | Readiness::HUP | Readiness::ERR);
    assert_eq!(c.so_error(&IDLE), Some(Errno::ECONNREFUSED));
    assert_eq!(c.so_error(&IDLE), None);
    assert_eq!(c.poll(&IDLE), all | Readiness::HUP);
    assert_eq!(c.recv(&IDLE, 4), Recv::Eof);
    assert_eq!(c.send(&IDLE, 4, false), Send::Fail { errno: Errno::EPIPE, sigpipe: true });
    assert_eq!(c.shutdown(&IDLE, How::Both), (Err(Errno::ENOTCONN), false));
}

#[test]
fn an_unread_refusal_is_what_recv_reports() {
    let mut c = Conn::connecting();
    c.on_connect_failed(Errno::ETIMEDOUT);
    assert_eq!(c.recv(&IDLE, 4), Recv::Fail(Errno::ETIMEDOUT));
    assert_eq!(c.recv(&IDLE, 4), Recv::Eof);
}

#[test]
fn shutdown_while_connecting_disconnects() {
    let mut c = Conn::connecting();
    assert_eq!(c.shutdown(&IDLE, How::Write), (Ok(()), false));
    assert_eq!(c.recv(&IDLE, 4), Recv::Fail(Errno::ENOTCONN));
    assert_eq!(c.send(&IDLE, 4, true), Send::Fail { errno: Errno::EPIPE, sigpipe: false });
}

#[test]
fn corruption_resets_and_keeps_unread_bytes_readable() {
    let mut c = Conn::established();
    c.on_abort();
    assert_eq!(c.name(), "reset");
    let data = Ring { readable: 3, ..IDLE };
    assert_eq!(c.recv(&data, 10), Recv::Read(3));
    assert_eq!(c.recv(&IDLE, 10), Recv::Fail(Errno::ECONNRESET));
    assert_eq!(c.recv(&IDLE, 10), Recv::Eof);
}

#[test]
fn state_names_follow_the_lifecycle() {
    let mut c = Conn::established();
    let _ = c.shutdown(&IDLE, How::Read);
    assert_eq!(c.name(), "read-shut");
    let _ = c.shutdown(&IDLE, How::Write);
    assert_eq!(c.name(), "write-shut");
    let mut d = Conn::established();
    d.sync(&Ring { peer_fin: true, ..IDLE });
    assert_eq!(d.name(), "peer-write-shut");
    let _ = d.shutdown(&IDLE, How::Write);
    assert_eq!(d.name(), "closed");
}

fn steps() -> impl Strategy<Value = Vec<(Step, Ring)>> {
    prop::collection::vec((any::<u8>(), any::<u8>(), any::<u8>()), 0..40)
        .prop_map(|v| v.into_iter().map(|(op, arg, ring)| (Step::from_bytes(op, arg), ring_from_byte(ring))).collect())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn no_sequence_breaks_the_invariants(connecting in any::<bool>(), steps in steps()) {
        run(connecting, &steps);
    }
}

#[test]
fn tcp_info_states_are_linuxs() {
    let mut c = Conn::established();
    assert_eq!(c.tcp_state(), 1, "ESTABLISHED");
    let _ = c.shutdown(&IDLE, How::Write);
    assert_eq!(c.tcp_state(), 5, "FIN_WAIT2: our FIN is acknowledged at once");
    let mut d = Conn::established();
    d.sync(&Ring { peer_fin: true, ..IDLE });
    assert_eq!(d.tcp_state(), 8, "CLOSE_WAIT");
    let _ = d.shutdown(&IDLE, How::Write);
    assert_eq!(d.tcp_state(), 7, "CLOSE after both FINs");
    assert_eq!(Conn::connecting().tcp_state(), 2, "SYN_SENT");
    let mut r = Conn::established();
    r.sync(&Ring { peer_reset: true, ..IDLE });
    assert_eq!(r.tcp_state(), 7, "CLOSE after a reset");
}
