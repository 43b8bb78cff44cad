//! Attaching to a segment validates every header field; a hostile header is
//! an error, never a panic. Miri runs this file in CI.

use ipcd_ring::fuzzing::{segment, Region};
use ipcd_ring::ConnSegment;
use ipcd_ring::{offsets, Error, Segment, Side, SEGMENT_MAGIC, SEGMENT_VERSION};

fn attach(r: &Region) -> Result<Segment, Error> {
    attach_len(r, r.len())
}

fn attach_len(r: &Region, len: usize) -> Result<Segment, Error> {
    // SAFETY: the region is valid for `len <= r.len()` bytes and outlives the view.
    unsafe { Segment::attach(r.ptr(), len) }
}

#[test]
fn attach_sees_what_init_wrote() {
    let (r, seg) = segment([64, 256]);
    let other = attach(&r).unwrap();
    assert_eq!(other.conn_id(), 42);
    assert_eq!(other.capacity(Side::A), 64);
    assert_eq!(other.capacity(Side::B), 256);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { other.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"shared").unwrap().len, 6);
    let mut buf = [0u8; 6];
    assert_eq!(rx.read(&mut buf).unwrap().len, 6);
    assert_eq!(&buf, b"shared");
}

#[test]
fn init_refuses_bad_capacities_and_small_regions() {
    let r = Region::new(4096);
    for caps in [[0, 8], [8, 3], [8, (1 << 40) * 2]] {
        // SAFETY: valid region that outlives the (failed) call.
        let res = unsafe { Segment::init(r.ptr(), r.len(), 1, caps) };
        assert!(matches!(res, Err(Error::BadCapacity(_))), "{caps:?}");
    }
    // SAFETY: as above.
    let res = unsafe { Segment::init(r.ptr(), r.len(), 1, [4096, 4096]) };
    assert!(matches!(res, Err(Error::RegionTooSmall { have: 4096, .. })));
    // SAFETY: one byte past an aligned base is still inside the region.
    let res = unsafe { Segment::init(r.ptr().add(1), r.len() - 1, 1, [8, 8]) };
    assert_eq!(res.unwrap_err(), Error::Misaligned);
}

#[test]
fn attach_rejects_every_broken_header_field() {
    let (r, _seg) = segment([64, 64]);
    let ok_len = r.len();
    assert!(attach_len(&r, 100).is_err(), "shorter than the control area");
    assert!(matches!(attach_len(&r, ok_len - 1), Err(Error::RegionTooSmall { .. })));

    r.poke_u64(offsets::MAGIC, 0xdead);
    assert_eq!(attach(&r).unwrap_err(), Error::BadMagic(0xdead));
    r.poke_u64(offsets::MAGIC, SEGMENT_MAGIC);

    r.poke_u32(offsets::VERSION, SEGMENT_VERSION + 1);
    assert_eq!(attach(&r).unwrap_err(), Error::BadVersion(SEGMENT_VERSION + 1));
    r.poke_u32(offsets::VERSION, SEGMENT_VERSION);

    r.poke_u32(offsets::DATA_START, 0);
    assert_eq!(attach(&r).unwrap_err(), Error::BadLayout);
    r.poke_u32(offsets::DATA_START, 10 * 128);

    r.poke_u64(offsets::CAPACITY, 100);
    assert_eq!(attach(&r).unwrap_err(), Error::BadCapacity(100));
    r.poke_u64(offsets::CAPACITY, 1 << 20);
    assert_eq!(attach(&r).unwrap_err(), Error::BadLayout, "total length disagrees");
    r.poke_u64(offsets::TOTAL_LEN, Segment::required_len([1 << 20, 64]).unwrap() as u64);
    assert!(matches!(attach(&r), Err(Error::RegionTooSmall { .. })), "claims more than is mapped");
    r.poke_u64(offsets::CAPACITY, 64);
    r.poke_u64(offsets::TOTAL_LEN, ok_len as u64);
    assert!(attach(&r).is_ok());
}

#[test]
fn a_header_rewritten_after_attach_cannot_move_the_rings() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    r.poke_u64(offsets::CAPACITY, 1 << 30);
    r.poke_u64(offsets::MAGIC, 0);
    assert_eq!(tx.write(&[1; 100]).unwrap().len, 8, "the capacity read at attach holds");
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(rx.read(&mut [0u8; 100]).unwrap().len, 8);
}

#[test]
fn attach_to_garbage_never_panics() {
    for seed in 0..64u64 {
        // A fresh region per seed, filled with plain byte writes: a peer's
        // garbage, not a sequence of differently sized atomic stores.
        let r = Region::new(8192);
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut garbage = vec![0u8; 2048];
        for b in garbage.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        if seed % 2 == 0 {
            garbage[offsets::MAGIC..offsets::MAGIC + 8].copy_from_slice(&SEGMENT_MAGIC.to_le_bytes());
            garbage[offsets::VERSION..offsets::VERSION + 4].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        }
        // SAFETY: 2048 bytes fit in the 8192-byte region; nothing else uses it yet.
        unsafe { std::ptr::copy_nonoverlapping(garbage.as_ptr(), r.ptr().as_ptr(), garbage.len()) };
        let _ = attach(&r);
    }
}

#[test]
fn a_reused_segment_is_fresh_for_its_next_connection() {
    let (r, mut seg) = segment([64, 64]);
    let me = std::num::NonZeroU32::new(7).unwrap();
    {
        // A first connection that wrote, half-read, closed, reset, waited
        // and left a lock and an extra holder behind.
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, mut rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut ptx, mut prx) = unsafe { seg.endpoint(Side::B) }.unwrap();
        assert_eq!(tx.write(b"old bytes").unwrap().len, 9);
        let mut two = [0u8; 2];
        assert_eq!(prx.read(&mut two).unwrap().len, 2);
        assert_eq!(ptx.write(b"x").unwrap().len, 1);
        let _ = rx.prepare_wait();
        tx.note_cpu(1);
        prx.set_batching(true);
        seg.add_holder(Side::B);
        seg.try_lock(ipcd_ring::EndLock::Send(Side::A), me).unwrap();
        seg.offer(9);
        tx.close();
        ptx.reset();
        rx.close();
    }
    seg.reuse(43);
    let other = attach(&r).unwrap();
    assert_eq!(other.conn_id(), 43);
    assert_eq!(seg.conn_id(), 43);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut tx, mut rx) = unsafe { other.endpoint(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut ptx, mut prx) = unsafe { other.endpoint(Side::B) }.unwrap();
    for c in [&rx, &prx] {
        assert_eq!(c.peer_state(), ipcd_ring::PeerState::Open);
        assert!(!c.peer_fin());
    }
    assert_eq!(rx.readable().unwrap(), 0, "nothing of the old connection is readable");
    assert_eq!(prx.readable().unwrap(), 0);
    assert_eq!(tx.writable().unwrap(), 64, "the whole ring is free");
    assert!(!tx.is_reader_closed() && !ptx.is_reader_closed());
    assert_eq!(other.written(Side::A), 0);
    for ring in [0, 1] {
        let end = ipcd_ring::offsets::ring(ring) + ipcd_ring::offsets::RECENT_END;
        let busy = [r.peek_u32(end), r.peek_u32(end + 4)];
        assert_eq!(busy, [u32::MAX; 2], "the old copy of the last bytes is withdrawn");
        let base = ipcd_ring::offsets::ring(ring);
        assert_eq!(r.peek_u32(base + ipcd_ring::offsets::WRITER_CPU), ipcd_ring::NO_CPU, "no writer's CPU");
        assert_eq!(r.peek_u32(base + ipcd_ring::offsets::READER_BATCHING), 0, "no reader batches");
    }
    assert!(other.try_lock(ipcd_ring::EndLock::Send(Side::A), me).is_ok(), "no lock is left held");
    assert_eq!(other.release_holder(Side::B), 0, "one holder per end again");
    assert!(!other.claim(9), "offered to nobody again");
    assert_eq!(tx.write(b"new").unwrap().len, 3);
    let mut buf = [0u8; 8];
    assert_eq!(prx.read(&mut buf).unwrap().len, 3);
    assert_eq!(&buf[..3], b"new");
    assert_eq!(ptx.write(b"y").unwrap().len, 1);
    assert_eq!(rx.read(&mut buf).unwrap().len, 1);
}

#[test]
fn an_end_is_untouched_until_it_reads_writes_or_closes() {
    type Act = fn(&mut ipcd_ring::Producer, &mut ipcd_ring::Consumer);
    let acts: [(&str, Act); 5] = [
        ("write", |tx, _| assert_eq!(tx.write(b"x").unwrap().len, 1)),
        ("read", |_, rx| assert_eq!(rx.read(&mut [0u8; 4]).unwrap().len, 2)),
        ("shut its writing side", |tx, _| {
            let _ = tx.close();
        }),
        ("reset", |tx, _| {
            let _ = tx.reset();
        }),
        ("shut its reading side", |_, rx| {
            let _ = rx.close();
        }),
    ];
    for (what, act) in acts {
        let (_r, seg) = segment([64, 64]);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut ptx, _) = unsafe { seg.endpoint(Side::A) }.unwrap();
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, mut rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
        // The peer's bytes waiting, unread, and a look at them, leave B untouched.
        assert_eq!(ptx.write(b"hi").unwrap().len, 2);
        assert_eq!(rx.readable().unwrap(), 2);
        assert!(seg.untouched(Side::B), "before B {what}");
        act(&mut tx, &mut rx);
        assert!(!seg.untouched(Side::B), "after B {what}");
        assert!(!seg.untouched(Side::A), "A wrote");
    }
}

#[test]
fn a_waiting_end_is_taken_by_whoever_it_is_offered_to_and_only_once() {
    let (r, seg) = segment([64, 64]);
    assert!(!seg.claim(5), "a fresh segment is offered to nobody");
    seg.offer(5);
    let other = attach(&r).unwrap();
    assert!(!other.claim(6), "offered to 5, not 6");
    // Withdrawn before 5 took it: 5 can no longer take it, and the
    // process it is offered to next can.
    assert!(seg.withdraw(5));
    assert!(!other.claim(5), "withdrawn");
    assert!(!seg.withdraw(5), "already withdrawn");
    seg.offer(6);
    assert!(other.claim(6));
    assert!(!other.claim(6), "taken once");
    // Once taken it cannot be withdrawn from its taker.
    assert!(!seg.withdraw(6));
    assert_eq!(r.peek_u32(offsets::OFFER), 6 | ipcd_ring::OFFER_CLAIMED);
    // Words nobody could be offered cannot be used to steal it.
    seg.offer(7);
    assert!(!other.claim(0) && !other.claim(7 | ipcd_ring::OFFER_CLAIMED));
    assert!(!seg.withdraw(7 | ipcd_ring::OFFER_CLAIMED));
    assert!(other.claim(7));
}

#[test]
fn named_holders_count_only_when_they_cover_every_share() {
    let (r, mut seg) = segment([64, 64]);
    let id = |n: u64| std::num::NonZeroU64::new(n).unwrap();
    // One share per side, nobody named: nothing to judge from.
    assert_eq!(seg.holders_named(Side::A), None);
    assert!(seg.name_holder(Side::A, id(11)));
    assert!(seg.name_holder(Side::A, id(11)), "a name already there is kept once");
    assert_eq!(seg.holders_named(Side::A), Some([11, 0, 0, 0]));
    assert_eq!(seg.holders_named(Side::B), None, "the other side is apart");
    // A fork adds a share before its child names itself: not covered.
    seg.add_holder(Side::A);
    assert_eq!(seg.holders_named(Side::A), None);
    assert!(seg.name_holder(Side::A, id(12)));
    assert_eq!(seg.holders_named(Side::A), Some([11, 12, 0, 0]));
    // A holder that lets go takes its name off with its share.
    seg.unname_holder(Side::A, id(11));
    assert_eq!(seg.holders_named(Side::A), None, "two shares, one name");
    assert_eq!(seg.release_holder(Side::A), 1);
    assert_eq!(seg.holders_named(Side::A), Some([0, 12, 0, 0]));
    // Four names at most; a fifth holder makes the side unknowable.
    for n in 13..=15 {
        assert!(seg.name_holder(Side::A, id(n)));
    }
    assert!(!seg.name_holder(Side::A, id(16)));
    for _ in 0..4 {
        seg.add_holder(Side::A);
    }
    assert_eq!(seg.holders_named(Side::A), None, "five shares, four names");
    // Another view sees the names; a reused segment has none.
    assert_eq!(attach(&r).unwrap().holders_named(Side::B), None);
    seg.reuse(43);
    assert!(seg.name_holder(Side::B, id(21)));
    assert_eq!(seg.holders_named(Side::A), None);
    assert_eq!(seg.holders_named(Side::B), Some([21, 0, 0, 0]));
}

#[test]
fn a_dead_end_closes_with_a_reset_only_if_it_left_bytes_unread() {
    use ipcd_ring::PeerState;
    // Everything read: an end of stream, and the survivor's writes fail.
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut tx, rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (_ptx, mut prx) = unsafe { seg.endpoint(Side::B) }.unwrap();
    assert_eq!(tx.write(b"read").unwrap().len, 4);
    let mut buf = [0u8; 4];
    assert_eq!(prx.read(&mut buf).unwrap().len, 4);
    assert!(seg.close_dead_end(Side::B, false));
    assert_eq!(rx.peer_state(), PeerState::Closed);
    assert!(tx.is_reader_closed());
    // Bytes it never read: a reset.
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut tx, rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
    assert_eq!(tx.write(b"unread").unwrap().len, 6);
    let _ = seg.close_dead_end(Side::B, false);
    assert_eq!(rx.peer_state(), PeerState::Reset);
    assert!(tx.is_reader_closed());
    // Asked to abort: a reset whatever was read.
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (_tx, rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
    let _ = seg.close_dead_end(Side::B, true);
    assert_eq!(rx.peer_state(), PeerState::Reset);
}

#[test]
fn a_control_view_steers_the_connection_and_moves_no_bytes() {
    let (r, seg) = segment([64, 256]);
    // SAFETY: the region is valid for these lengths and outlives the views.
    let short = unsafe { Segment::attach_control(r.ptr(), Segment::CONTROL_LEN - 1) };
    assert!(matches!(short, Err(Error::RegionTooSmall { .. })), "shorter than the controls");
    // SAFETY: as above.
    let ctrl = unsafe { Segment::attach_control(r.ptr(), Segment::CONTROL_LEN) }.unwrap();
    assert_eq!((ctrl.conn_id(), ctrl.capacity(Side::B), ctrl.len()), (42, 256, Segment::CONTROL_LEN));
    assert_eq!(ctrl.segment_len(), r.len());
    // No handle that could touch the data.
    // SAFETY: refused before any handle exists.
    unsafe {
        assert!(matches!(ctrl.producer(Side::A), Err(Error::RegionTooSmall { .. })));
        assert!(matches!(ctrl.consumer(Side::B), Err(Error::RegionTooSmall { .. })));
        assert!(ctrl.endpoint(Side::A).is_err());
    }
    let mut buf = [0u8; 8];
    assert_eq!(ctrl.copy_written(Side::A, 0, &mut buf, 0), ipcd_ring::Tapped { lost: 0, len: 0 });
    // Header words are the segment's.
    ctrl.expect(7);
    assert_eq!(seg.ticket(7), ipcd_ring::Ticket::Expected);
    // A watcher arms B's reader and sees A's bytes and FIN come.
    assert_eq!(ctrl.prepare_reader_wait(Side::B), Ok(ipcd_ring::Wait::Sleep));
    // SAFETY: test: the only producer of A.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    assert!(tx.write(b"hi").unwrap().wake_peer, "the armed flag asks the writer to wake");
    assert_eq!(ctrl.prepare_reader_wait(Side::B), Ok(ipcd_ring::Wait::Ready));
    assert_eq!(ctrl.writer_state(Side::A), ipcd_ring::PeerState::Open);
    tx.close();
    assert_eq!(ctrl.writer_state(Side::A), ipcd_ring::PeerState::Closed);
    // A dead end closes as the kernel closes a dead process's socket:
    // B, with A's bytes unread, resets; on a fresh segment, A with nothing
    // unread closes in order.
    ctrl.close_dead_end(Side::B, false);
    // SAFETY: test: the only consumer of A's side.
    let rx = unsafe { seg.consumer(Side::A) }.unwrap();
    assert_eq!(rx.peer_state(), ipcd_ring::PeerState::Reset, "B left bytes unread");
    let (r2, seg2) = segment([64, 64]);
    // SAFETY: as above.
    let ctrl2 = unsafe { Segment::attach_control(r2.ptr(), Segment::CONTROL_LEN) }.unwrap();
    ctrl2.close_dead_end(Side::A, false);
    // SAFETY: test: the only consumer of B's side.
    let rx2 = unsafe { seg2.consumer(Side::B) }.unwrap();
    assert_eq!(rx2.peer_state(), ipcd_ring::PeerState::Closed, "A left nothing unread: FIN");
    // A control view also refuses a header that is not a segment's.
    r.poke_u64(offsets::MAGIC, 0xdead);
    // SAFETY: as above.
    assert_eq!(unsafe { Segment::attach_control(r.ptr(), Segment::CONTROL_LEN) }.unwrap_err(), Error::BadMagic(0xdead));
}

#[test]
fn a_segment_made_through_its_control_area_is_whole_to_others() {
    let len = Segment::required_len([64, 256]).unwrap();
    let r = Region::new(len);
    // SAFETY: the region is valid for `len` bytes, ours alone, and outlives the views.
    let short = unsafe { Segment::init_control(r.ptr(), Segment::CONTROL_LEN - 1, 5, [64, 256]) };
    assert!(matches!(short, Err(Error::RegionTooSmall { .. })));
    // SAFETY: as above.
    let ctrl = unsafe { Segment::init_control(r.ptr(), Segment::CONTROL_LEN, 5, [64, 256]) }.unwrap();
    // SAFETY: refused before any handle exists.
    assert!(unsafe { ctrl.producer(Side::A) }.is_err(), "a control view");
    let whole = attach(&r).unwrap();
    assert_eq!((whole.conn_id(), whole.capacity(Side::A), whole.capacity(Side::B)), (5, 64, 256));
    // SAFETY: test: one producer and one consumer of ring A.
    let (mut tx, mut rx) = unsafe { (whole.producer(Side::A).unwrap(), whole.consumer(Side::B).unwrap()) };
    assert_eq!(tx.write(b"made").unwrap().len, 4);
    assert_eq!(ctrl.written(Side::A), 4);
    let mut buf = [0u8; 4];
    assert_eq!(rx.read(&mut buf).unwrap().len, 4);
    assert_eq!(&buf, b"made");
}
