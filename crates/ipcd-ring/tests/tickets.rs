//! A standby connection's ticket: the connector's connect and a cancel
//! race by compare-exchange, and exactly one of them wins.

mod common;

use common::segment;
use ipcd_ring::Ticket;

const ADDR: [u32; 8] = [2, 8080, 0x7f00_0001, 0, 0, 0, 0, 0];

#[test]
fn a_connect_through_an_expected_ticket_is_seen_with_its_address() {
    let (_r, mut seg) = segment([64, 64]);
    assert_eq!(seg.ticket(7), Ticket::Other, "a fresh segment is nobody's ticket");
    seg.expect(7);
    assert_eq!(seg.ticket(7), Ticket::Expected);
    assert!(seg.connect(7, ADDR));
    assert_eq!(seg.ticket(7), Ticket::Connected(ADDR));
    assert_eq!(seg.cancel(7), Ticket::Connected(ADDR), "a used ticket cannot be cancelled");
    assert!(!seg.connect(7, ADDR), "a ticket is used once");
    seg.reuse(8);
    assert_eq!(seg.ticket(7), Ticket::Other, "reuse ends the ticket");
}

#[test]
fn a_cancelled_ticket_cannot_be_used_nor_a_stale_one_take_the_next() {
    let (_r, seg) = segment([64, 64]);
    seg.expect(7);
    assert_eq!(seg.cancel(7), Ticket::Cancelled);
    assert_eq!(seg.cancel(7), Ticket::Cancelled, "cancelling twice is harmless");
    assert!(!seg.connect(7, ADDR));
    assert_eq!(seg.ticket(7), Ticket::Cancelled);
    // The segment issued again: the old connection's holder cannot use it.
    seg.expect(9);
    assert!(!seg.connect(7, ADDR));
    assert_eq!(seg.cancel(7), Ticket::Other);
    assert_eq!(seg.ticket(9), Ticket::Expected);
}

#[test]
fn connect_and_cancel_racing_agree_on_one_winner() {
    for round in 0..2000u64 {
        let (_r, seg) = segment([64, 64]);
        seg.expect(round);
        let (connected, cancelled) = std::thread::scope(|s| {
            let c = s.spawn(|| seg.connect(round, ADDR));
            let x = s.spawn(|| seg.cancel(round));
            (c.join().unwrap(), x.join().unwrap())
        });
        match cancelled {
            Ticket::Cancelled => assert!(!connected, "round {round}: both won"),
            Ticket::Connected(a) => assert!(connected && a == ADDR, "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
    }
}
