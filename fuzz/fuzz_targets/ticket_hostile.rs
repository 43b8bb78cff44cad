//! A renewable standby's ticket driven by its connector, its acceptor and
//! the monitor (connect, finish, renew, promote, cancel, watch), with a
//! hostile peer scribbling over the header words they share. While
//! nobody has scribbled, every answer must be the one a model of the
//! ticket gives (one renewal or one promotion per round, never both);
//! after that, every call must still return without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;

use ipcd_ring::fuzzing::Region;
use ipcd_ring::{next_ticket_id, offsets, ConnSegment, Finish, Segment, Side, Ticket};

const ADDR: [u32; 8] = [2, 80, 1, 0, 0, 0, 0, 0];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Model {
    Expected,
    Connected { done: [bool; 2] },
    Renewing,
    Promoted,
    Cancelled,
}

fuzz_target!(|data: &[u8]| {
    let caps = [64u64, 64];
    let len = Segment::required_len(caps).unwrap();
    let region = Region::new(len);
    // SAFETY: the region is ours, aligned, large enough, and outlives `seg`.
    let seg = unsafe { Segment::init(region.ptr(), len, 1, caps) }.unwrap();
    let mut conn = 7u64;
    seg.expect_renewable(conn);
    let mut model = Model::Expected;
    let mut honest = true;
    let mut rounds = 0u64;
    let mut ops = data;
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let arg = ops.first().copied().unwrap_or(0);
        match op % 8 {
            0 => {
                let got = seg.connect(conn, ADDR);
                if honest {
                    assert_eq!(got.is_some(), model == Model::Expected);
                    if got.is_some() {
                        model = Model::Connected { done: [false; 2] };
                    }
                }
            }
            1 | 2 => {
                let side = if op % 8 == 1 { Side::A } else { Side::B };
                let i = usize::from(op % 8 == 2);
                let got = seg.finish(conn, side);
                if honest {
                    let want = match model {
                        Model::Connected { done } if !done[i] && done[1 - i] => Finish::Last,
                        Model::Connected { done } if !done[i] => Finish::First,
                        _ => Finish::Not,
                    };
                    assert_eq!(got, want, "{model:?}");
                    match (got, &mut model) {
                        (Finish::First, Model::Connected { done }) => done[i] = true,
                        (Finish::Last, _) => model = Model::Renewing,
                        _ => {}
                    }
                }
            }
            3 => {
                let next = next_ticket_id(conn);
                let got = seg.renew(conn, next);
                if honest {
                    assert_eq!(got, model == Model::Renewing);
                    if got {
                        rounds += 1;
                        conn = next;
                        model = Model::Expected;
                        assert_eq!(seg.rounds(), rounds);
                        assert!(seg.untouched(Side::A) && seg.untouched(Side::B));
                    }
                }
            }
            4 => {
                let got = seg.promote(conn);
                if honest {
                    match model {
                        Model::Connected { done } => {
                            assert_eq!(got.map(|p| p.done), Some(done));
                            model = Model::Promoted;
                        }
                        _ => assert_eq!(got, None),
                    }
                }
            }
            5 => {
                let got = seg.cancel(conn);
                if honest {
                    match model {
                        Model::Expected | Model::Renewing | Model::Cancelled => {
                            assert_eq!(got, Ticket::Cancelled);
                            model = Model::Cancelled;
                        }
                        Model::Connected { .. } | Model::Promoted => assert_eq!(got, Ticket::Connected(ADDR)),
                    }
                }
            }
            6 => {
                let got = seg.watch(conn, arg & 1 != 0);
                if honest {
                    let want = match model {
                        Model::Expected => Ticket::Expected,
                        Model::Connected { .. } | Model::Promoted => Ticket::Connected(ADDR),
                        Model::Cancelled => Ticket::Cancelled,
                        Model::Renewing => Ticket::Other,
                    };
                    assert_eq!(got, want);
                }
            }
            _ => {
                // The peer writes a word of the header: the ticket, the
                // rounds, the connect time or the offer.
                let at =
                    [offsets::TICKET, offsets::ROUNDS, offsets::CONNECTED_AT, offsets::OFFER][usize::from(arg % 4)];
                let word = u64::from_le_bytes(core::array::from_fn(|k| ops.get(1 + k).copied().unwrap_or(arg)));
                // SAFETY: an aligned u64 inside the region's header (at the
                // offer, it covers the admission word after it too).
                unsafe { region.ptr().as_ptr().add(at).cast::<u64>().write_volatile(word) };
                honest = false;
            }
        }
        // Reads of any state answer without panicking.
        let _ = (seg.ticket(conn), seg.renewable(conn), seg.awaits_renewal(conn), seg.ticket_id());
        let _ = (seg.rounds(), seg.connected_at(), seg.claimed_by());
    }
});
