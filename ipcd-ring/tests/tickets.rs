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

#[test]
fn a_renewable_ticket_is_renewed_by_the_last_of_its_two_ends_to_finish() {
    use ipcd_ring::{next_ticket_id, Finish, Side, RENEWED_ID};
    let (_r, seg) = segment([64, 64]);
    seg.expect_renewable(7);
    assert!(!seg.renewable(7), "not connected yet");
    assert_eq!(seg.connect(7, ADDR), Some(false));
    assert!(seg.renewable(7));
    seg.offer(42);
    assert!(seg.claim(42));
    // SAFETY: the only handles of side A.
    let (mut tx, _rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
    let _ = tx.write(b"hello").unwrap();
    assert_eq!(seg.finish(7, Side::B), Finish::First);
    assert_eq!(seg.finish(7, Side::B), Finish::Not, "an end finishes once");
    assert!(seg.awaits_renewal(7));
    assert_eq!(seg.finish(9, Side::A), Finish::Not, "another connection's");
    assert_eq!(seg.finish(7, Side::A), Finish::Last);
    assert_eq!(seg.ticket(7), Ticket::Other, "renewing is nobody's ticket");
    let next = next_ticket_id(7);
    assert!(next & RENEWED_ID != 0 && next != next_ticket_id(next), "a new id each round");
    assert_eq!(next_ticket_id(next) & !0x7fff, next & !0x7fff, "same ticket");
    assert!(seg.renew(7, next));
    assert!(!seg.awaits_renewal(7), "renewed");
    assert_eq!(seg.ticket(next), Ticket::Expected);
    assert_eq!(seg.ticket_id(), next);
    // Fresh: both rings empty, the offer to the acceptor kept unclaimed.
    assert!(seg.untouched(Side::A) && seg.untouched(Side::B));
    assert!(seg.claim(42), "offered again to the same acceptor");
    assert_eq!(seg.connect(7, ADDR), None, "the old id is gone");
    assert_eq!(seg.connect(next, ADDR), Some(false));
    assert!(seg.renewable(next));
}

#[test]
fn a_promoted_ticket_is_not_renewed_and_says_which_ends_finished() {
    use ipcd_ring::{Finish, Promoted, Side};
    let (_r, seg) = segment([64, 64]);
    seg.expect_renewable(7);
    assert_eq!(seg.promote(7), None, "nothing to promote before a connect");
    seg.connect(7, ADDR).unwrap();
    assert_eq!(seg.finish(7, Side::A), Finish::First);
    assert_eq!(seg.promote(7), Some(Promoted { addr: ADDR, done: [true, false] }));
    assert_eq!(seg.promote(7), None, "promoted once");
    assert_eq!(seg.ticket(7), Ticket::Connected(ADDR), "still connected for its acceptor");
    assert!(!seg.renewable(7));
    assert_eq!(seg.finish(7, Side::B), Finish::Not, "closes through the monitor now");
    // A plain ticket is never renewed.
    seg.expect(9);
    seg.connect(9, ADDR).unwrap();
    assert_eq!(seg.finish(9, Side::A), Finish::Not);
}

#[test]
fn a_cancel_while_renewing_makes_the_renewal_fail() {
    use ipcd_ring::{next_ticket_id, Finish, Side};
    let (_r, seg) = segment([64, 64]);
    seg.expect_renewable(7);
    seg.connect(7, ADDR).unwrap();
    assert_eq!(seg.finish(7, Side::A), Finish::First);
    assert_eq!(seg.finish(7, Side::B), Finish::Last);
    assert_eq!(seg.cancel(7), Ticket::Cancelled);
    assert!(!seg.renew(7, next_ticket_id(7)));
    assert_eq!(seg.ticket(next_ticket_id(7)), Ticket::Other);
    // An expected renewable ticket is cancelled as any other.
    seg.expect_renewable(8);
    assert_eq!(seg.watch(8, true), Ticket::Expected);
    assert_eq!(seg.connect(8, ADDR), Some(true), "watched");
    seg.expect_renewable(10);
    assert_eq!(seg.cancel(10), Ticket::Cancelled);
}

#[test]
fn finishing_ends_and_a_promotion_racing_agree() {
    use ipcd_ring::{Finish, Side};
    for round in 0..2000u64 {
        let (_r, seg) = segment([64, 64]);
        seg.expect_renewable(round);
        seg.connect(round, ADDR).unwrap();
        let (a, b, p) = std::thread::scope(|s| {
            let a = s.spawn(|| seg.finish(round, Side::A));
            let b = s.spawn(|| seg.finish(round, Side::B));
            let p = s.spawn(|| seg.promote(round));
            (a.join().unwrap(), b.join().unwrap(), p.join().unwrap())
        });
        let lasts = [a, b].iter().filter(|&&f| f == Finish::Last).count();
        match p {
            // Promoted: nobody renews; the ends that finished before say so.
            Some(p) => {
                assert_eq!(lasts, 0, "round {round}");
                assert_eq!(p.done, [a == Finish::First, b == Finish::First], "round {round}");
            }
            None => assert!(lasts == 1 && [a, b].contains(&Finish::First), "round {round}: {a:?} {b:?}"),
        }
    }
}

#[test]
fn the_rounds_of_a_ticket_are_told_from_anothers() {
    use ipcd_ring::{is_round_of, next_ticket_id};
    let (a, b) = (1_765_000_000_000_007u64, 1_765_000_000_000_008u64);
    let mut id = a;
    for _ in 0..70_000 {
        assert!(is_round_of(a, id) && !is_round_of(b, id), "{id:#x}");
        id = next_ticket_id(id);
    }
    assert!(!is_round_of(a, b) && !is_round_of(a, next_ticket_id(b)));
}
