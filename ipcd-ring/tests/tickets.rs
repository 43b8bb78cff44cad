//! A standby connection's ticket: the connector's connect and a cancel
//! race by compare-exchange, and exactly one of them wins.

use ipcd_ring::fuzzing::segment;
use ipcd_ring::ConnSegment;
use ipcd_ring::Ticket;

const ADDR: [u32; 8] = [2, 8080, 0x7f00_0001, 0, 0, 0, 0, 0];

#[test]
fn a_connect_through_an_expected_ticket_is_seen_with_its_address() {
    let (_r, mut seg) = segment([64, 64]);
    assert_eq!(seg.ticket(7), Ticket::Other, "a fresh segment is nobody's ticket");
    seg.expect(7);
    assert_eq!(seg.ticket(7), Ticket::Expected);
    assert_eq!(seg.connect(7, ADDR), Some(false), "nobody watched it");
    assert_eq!(seg.ticket(7), Ticket::Connected(ADDR));
    assert_eq!(seg.cancel(7), Ticket::Connected(ADDR), "a used ticket cannot be cancelled");
    assert_eq!(seg.connect(7, ADDR), None, "a ticket is used once");
    seg.reuse(8);
    assert_eq!(seg.ticket(7), Ticket::Other, "reuse ends the ticket");
}

#[test]
fn a_cancelled_ticket_cannot_be_used_nor_a_stale_one_take_the_next() {
    let (_r, seg) = segment([64, 64]);
    seg.expect(7);
    assert_eq!(seg.cancel(7), Ticket::Cancelled);
    assert_eq!(seg.cancel(7), Ticket::Cancelled, "cancelling twice is harmless");
    assert_eq!(seg.connect(7, ADDR), None);
    assert_eq!(seg.ticket(7), Ticket::Cancelled);
    // The segment issued again: the old connection's holder cannot use it.
    seg.expect(9);
    assert_eq!(seg.connect(7, ADDR), None);
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
            Ticket::Cancelled => assert_eq!(connected, None, "round {round}: both won"),
            Ticket::Connected(a) => assert!(connected.is_some() && a == ADDR, "round {round}"),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[test]
fn a_watched_ticket_tells_its_connector_and_its_unwatch_sees_the_connect() {
    let (_r, seg) = segment([64, 64]);
    seg.expect(7);
    assert_eq!(seg.watch(7, true), Ticket::Expected);
    assert_eq!(seg.watch(7, true), Ticket::Expected, "a second watcher is harmless");
    assert_eq!(seg.ticket(7), Ticket::Expected, "watched is still expected");
    assert_eq!(seg.watch(7, false), Ticket::Expected);
    assert_eq!(seg.watch(7, false), Ticket::Expected, "unwatched twice is harmless");
    assert_eq!(seg.connect(7, ADDR), Some(false), "unwatched: the connector must wake the acceptor");

    seg.expect(8);
    seg.watch(8, true);
    assert_eq!(seg.connect(8, ADDR), Some(true), "watched: no wake-up needed");
    assert_eq!(seg.watch(8, false), Ticket::Connected(ADDR), "the watcher learns it must not sleep");

    seg.expect(9);
    seg.watch(9, true);
    assert_eq!(seg.cancel(9), Ticket::Cancelled, "a watched ticket can be cancelled");
    assert_eq!(seg.connect(9, ADDR), None);
    assert_eq!(seg.watch(9, false), Ticket::Cancelled);
    assert_eq!(seg.watch(8, true), Ticket::Other, "a stale id changes nothing");
}

#[test]
fn a_connector_that_skips_the_wake_up_is_always_seen_by_the_watcher() {
    for round in 0..2000u64 {
        let (_r, seg) = segment([64, 64]);
        seg.expect(round);
        seg.watch(round, true);
        let (watched, after) = std::thread::scope(|s| {
            let c = s.spawn(|| seg.connect(round, ADDR));
            let w = s.spawn(|| seg.watch(round, false));
            (c.join().unwrap().expect("an expected ticket connects"), w.join().unwrap())
        });
        // Not woken and not seen by the unwatch would be a lost wake-up.
        assert!(!watched || after == Ticket::Connected(ADDR), "round {round}: {after:?}");
    }
}
