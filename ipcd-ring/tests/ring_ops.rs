//! Single-threaded behaviour of the ring: every operation, the wait/wake
//! decisions, and hostile index values. Miri runs this file in CI.

use ipcd_ring::ConnSegment;
use std::num::NonZeroU32;

use ipcd_ring::fuzzing::segment;
use ipcd_ring::{offsets, Corruption, EndLock, Error, PeerState, Side, Wait};

#[test]
fn bytes_written_by_a_arrive_at_b_and_back() {
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut a_tx, mut a_rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let (mut b_tx, mut b_rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
    assert_eq!(a_tx.write(b"ping").unwrap().len, 4);
    let mut buf = [0u8; 16];
    assert_eq!(b_rx.read(&mut buf).unwrap().len, 4);
    assert_eq!(&buf[..4], b"ping");
    assert_eq!(b_tx.write(b"pong!").unwrap().len, 5);
    assert_eq!(a_rx.read(&mut buf).unwrap().len, 5);
    assert_eq!(&buf[..5], b"pong!");
    assert_eq!(a_rx.read(&mut buf).unwrap().len, 0);
}

#[test]
fn a_small_read_takes_the_copy_beside_tail_unless_it_is_being_rewritten() {
    let (r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let recent = offsets::ring(0) + offsets::RECENT;
    // The copy on the writer's line is what a small read returns: changed
    // behind the writer's back, the change shows.
    assert_eq!(tx.write(b"ping").unwrap().len, 4);
    r.poke_u64(recent, u64::from_le_bytes(*b"PONGxxxx"));
    let mut buf = [0u8; 4];
    assert_eq!(rx.read(&mut buf).unwrap().len, 4);
    assert_eq!(&buf, b"PONG");
    // A copy marked as being rewritten is not used: the data area is.
    assert_eq!(tx.write(b"abcd").unwrap().len, 4);
    r.poke_u64(offsets::ring(0) + offsets::RECENT_END, u64::MAX);
    r.poke_u64(recent, u64::from_le_bytes(*b"xxxxWXYZ"));
    assert_eq!(rx.read(&mut buf).unwrap().len, 4);
    assert_eq!(&buf, b"abcd");
    // Nor is one for bytes it does not hold (more than it carries).
    let big = [7u8; 40];
    assert_eq!(tx.write(&big).unwrap().len, 40);
    let mut out = [0u8; 40];
    assert_eq!(rx.read(&mut out).unwrap().len, 40);
    assert_eq!(out, big);
}

#[test]
fn a_batching_reader_is_sent_no_copy_and_still_reads_every_byte() {
    let (r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let end = offsets::ring(0) + offsets::RECENT_END;
    let hint = offsets::ring(0) + offsets::READER_BATCHING;
    assert_eq!(tx.write(b"ping").unwrap().len, 4);
    assert_eq!(r.peek_u64(end), 4);
    rx.set_batching(true);
    assert_eq!(r.peek_u32(hint), 1);
    // The writer leaves the copy as it was: it still names bytes 0..4.
    assert_eq!(tx.write(b"abcd").unwrap().len, 4);
    assert_eq!(r.peek_u64(end), 4);
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 8);
    assert_eq!(&buf, b"pingabcd");
    // Back to waiting for small messages: the copy is published and used
    // again (changed behind the writer's back, the change shows).
    rx.set_batching(false);
    assert_eq!(r.peek_u32(hint), 0);
    assert_eq!(tx.write(b"wxyz").unwrap().len, 4);
    assert_eq!(r.peek_u64(end), 12);
    r.poke_u64(offsets::ring(0) + offsets::RECENT + 8, u64::from_le_bytes(*b"WXYZxxxx"));
    let mut small = [0u8; 4];
    assert_eq!(rx.read(&mut small).unwrap().len, 4);
    assert_eq!(&small, b"WXYZ");
}

#[test]
fn the_reader_learns_the_cpu_its_writer_last_waited_on() {
    let (r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(rx.writer_cpu(), ipcd_ring::NO_CPU, "not said yet");
    tx.note_cpu(3);
    assert_eq!(rx.writer_cpu(), 3);
    assert_eq!(r.peek_u32(offsets::ring(0) + offsets::WRITER_CPU), 3, "on ring 0's writer line");
    assert_eq!(r.peek_u32(offsets::ring(1) + offsets::WRITER_CPU), ipcd_ring::NO_CPU, "not on the other ring");
    // A hint from the peer: whatever it writes is what the reader gets.
    r.poke_u32(offsets::ring(0) + offsets::WRITER_CPU, 0xdead);
    assert_eq!(rx.writer_cpu(), 0xdead);
    tx.note_cpu(1);
    assert_eq!(rx.writer_cpu(), 1);
}

#[test]
fn a_full_ring_accepts_nothing_until_the_reader_frees_space() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"0123456789").unwrap().len, 8);
    assert_eq!(tx.writable().unwrap(), 0);
    assert_eq!(tx.write(b"x").unwrap().len, 0);
    assert_eq!(tx.unread().unwrap(), 8);
    let mut buf = [0u8; 3];
    assert_eq!(rx.read(&mut buf).unwrap().len, 3);
    assert_eq!(&buf, b"012");
    assert_eq!(tx.writable().unwrap(), 3);
    assert_eq!(tx.write(b"abcd").unwrap().len, 3);
    let mut rest = [0u8; 16];
    assert_eq!(rx.read(&mut rest).unwrap().len, 8);
    assert_eq!(&rest[..8], b"34567abc");
}

#[test]
fn order_survives_many_wraparounds() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let input: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
    let mut out = Vec::new();
    let mut sent = 0;
    let mut step = 1;
    while out.len() < input.len() {
        let end = (sent + step % 7 + 1).min(input.len());
        sent += tx.write(&input[sent..end]).unwrap().len;
        let mut buf = [0u8; 5];
        let n = rx.read(&mut buf[..step % 5 + 1]).unwrap().len;
        out.extend_from_slice(&buf[..n]);
        step += 1;
    }
    assert_eq!(out, input);
}

#[test]
fn vectored_write_and_read_cross_the_wrap() {
    let (_r, seg) = segment([16, 16]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::B) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::A) }.unwrap();
    // Move the indices near the end so the next write wraps.
    assert_eq!(tx.write(&[0; 13]).unwrap().len, 13);
    assert_eq!(rx.consume(13).unwrap().len, 13);
    let t = tx.write_vectored(&[b"ab", b"", b"cdefg", b"hijklmnopqrstu"]).unwrap();
    assert_eq!(t.len, 16);
    let (mut x, mut y, mut z) = ([0u8; 3], [0u8; 0], [0u8; 20]);
    let t = rx.read_vectored(&mut [&mut x, &mut y, &mut z]).unwrap();
    assert_eq!(t.len, 16);
    assert_eq!(&x, b"abc");
    assert_eq!(&z[..13], b"defghijklmnop");
}

#[test]
fn peek_copies_without_consuming_from_any_offset() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"abcdef").unwrap().len, 6);
    assert_eq!(rx.consume(4).unwrap().len, 4);
    assert_eq!(tx.write(b"ghij").unwrap().len, 4); // wraps
    let mut buf = [0u8; 4];
    assert_eq!(rx.peek(0, &mut buf).unwrap(), 4);
    assert_eq!(&buf, b"efgh");
    assert_eq!(rx.peek(3, &mut buf).unwrap(), 3);
    assert_eq!(&buf[..3], b"hij");
    assert_eq!(rx.peek(6, &mut buf).unwrap(), 0);
    assert_eq!(rx.peek(usize::MAX, &mut buf).unwrap(), 0);
    assert_eq!(rx.readable().unwrap(), 6);
    let mut all = [0u8; 8];
    assert_eq!(rx.read(&mut all).unwrap().len, 6);
    assert_eq!(&all[..6], b"efghij");
}

#[test]
fn close_gives_end_of_stream_only_after_the_remaining_bytes() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"last").unwrap().len, 4);
    assert!(!tx.close(), "nobody sleeps, nobody to wake");
    assert_eq!(rx.peer_state(), PeerState::Closed);
    assert!(!rx.at_eof().unwrap());
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 4);
    assert!(rx.at_eof().unwrap());
    assert_eq!(rx.read(&mut buf).unwrap().len, 0);
}

#[test]
fn reset_is_reported_as_reset() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::B) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::A) }.unwrap();
    assert_eq!(rx.peer_state(), PeerState::Open);
    let _ = tx.reset();
    assert_eq!(rx.peer_state(), PeerState::Reset);
    assert!(rx.at_eof().unwrap());
}

#[test]
fn writer_sees_reader_close() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert!(!tx.is_reader_closed());
    let _ = rx.close();
    assert!(tx.is_reader_closed());
    assert_eq!(tx.prepare_wait(8).unwrap(), Wait::Ready);
}

#[test]
fn empty_reader_may_sleep_and_the_next_write_must_wake_it() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert!(!tx.write(b"a").unwrap().wake_peer, "no sleeper yet");
    assert_eq!(rx.prepare_wait().unwrap(), Wait::Ready, "data is there");
    assert_eq!(rx.read(&mut [0u8; 1]).unwrap().len, 1);
    assert_eq!(rx.prepare_wait().unwrap(), Wait::Sleep);
    assert_eq!(r.peek_u32(offsets::ring(0) + offsets::READER_WAITING), 1);
    assert!(tx.write(b"b").unwrap().wake_peer);
    assert_eq!(r.peek_u32(offsets::ring(0) + offsets::READER_WAITING), 0, "the waker clears the flag");
    assert!(!tx.write(b"c").unwrap().wake_peer, "one ring per sleep");
}

#[test]
fn close_wakes_a_sleeping_reader() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(rx.prepare_wait().unwrap(), Wait::Sleep);
    assert!(tx.close());
    assert_eq!(rx.prepare_wait().unwrap(), Wait::Ready);
    assert!(rx.at_eof().unwrap());
}

#[test]
fn full_writer_may_sleep_and_the_next_read_must_wake_it() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(&[7; 6]).unwrap().len, 6);
    assert_eq!(tx.prepare_wait(2).unwrap(), Wait::Ready, "two bytes free");
    assert_eq!(tx.prepare_wait(100).unwrap(), Wait::Sleep, "wants a full ring");
    assert!(rx.read(&mut [0u8; 1]).unwrap().wake_peer);
    assert_eq!(tx.prepare_wait(100).unwrap(), Wait::Sleep, "3 of 8 free");
    assert!(!rx.consume(0).unwrap().wake_peer);
    assert!(rx.close(), "closing the reader wakes a writer waiting for space");
}

#[test]
fn cancelled_wait_asks_for_no_doorbell() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(rx.prepare_wait().unwrap(), Wait::Sleep);
    rx.cancel_wait();
    assert!(!tx.write(b"z").unwrap().wake_peer);
}

#[test]
fn tail_beyond_head_plus_capacity_is_corruption() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    r.poke_u64(offsets::ring(0) + offsets::TAIL, 9);
    let err = Error::Corrupt(Corruption::Tail { found: 9 });
    assert_eq!(rx.readable(), Err(err));
    assert_eq!(rx.read(&mut [0u8; 4]), Err(err));
    assert_eq!(rx.peek(0, &mut [0u8; 4]), Err(err));
    assert_eq!(rx.prepare_wait(), Err(err));
    assert_eq!(r.peek_u32(offsets::ring(0) + offsets::READER_WAITING), 0, "a failed wait leaves no flag armed");
    // Past the small area (half of 8) without the switch: corruption too.
    r.poke_u64(offsets::ring(0) + offsets::TAIL, 5);
    let err = Error::Corrupt(Corruption::Tail { found: 5 });
    assert_eq!(rx.readable(), Err(err));
    r.poke_u64(offsets::ring(0) + offsets::TAIL, 4);
    assert_eq!(rx.readable(), Ok(4), "a full small area of garbage is only bytes");
    r.poke_u64(offsets::ring(0) + offsets::GROWN_AT, 4);
    r.poke_u32(offsets::ring(0) + offsets::GROWN, 1);
    r.poke_u64(offsets::ring(0) + offsets::TAIL, 8);
    assert_eq!(rx.readable(), Ok(8), "a full ring of garbage is only bytes");
}

#[test]
fn tail_moving_backwards_is_corruption() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"abcd").unwrap().len, 4);
    assert_eq!(rx.readable(), Ok(4));
    r.poke_u64(offsets::ring(0) + offsets::TAIL, 2);
    assert_eq!(rx.readable(), Err(Error::Corrupt(Corruption::Tail { found: 2 })));
    r.poke_u64(offsets::ring(0) + offsets::TAIL, u64::MAX);
    assert_eq!(rx.readable(), Err(Error::Corrupt(Corruption::Tail { found: u64::MAX })));
}

#[test]
fn head_beyond_tail_or_backwards_is_corruption() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    assert_eq!(tx.write(b"abcd").unwrap().len, 4);
    assert_eq!(rx.consume(2).unwrap().len, 2);
    assert_eq!(tx.writable(), Ok(6));
    r.poke_u64(offsets::ring(0) + offsets::HEAD, 5);
    assert_eq!(tx.writable(), Err(Error::Corrupt(Corruption::Head { found: 5 })));
    r.poke_u64(offsets::ring(0) + offsets::HEAD, 1);
    assert_eq!(tx.writable(), Err(Error::Corrupt(Corruption::Head { found: 1 })));
    assert_eq!(tx.write(&[0; 8]), Err(Error::Corrupt(Corruption::Head { found: 1 })));
    assert_eq!(tx.prepare_wait(8), Err(Error::Corrupt(Corruption::Head { found: 1 })));
    r.poke_u64(offsets::ring(0) + offsets::HEAD, 4);
    assert_eq!(tx.writable(), Ok(8));
}

#[test]
fn a_handle_made_over_corrupted_indices_is_refused() {
    let (r, seg) = segment([8, 8]);
    r.poke_u64(offsets::ring(1) + offsets::TAIL, 100);
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert!(matches!(unsafe { seg.producer(Side::B) }, Err(Error::Corrupt(_))));
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert!(matches!(unsafe { seg.consumer(Side::A) }, Err(Error::Corrupt(_))));
    // SAFETY: test: the handles of each ring side are used one at a time.
    assert!(unsafe { seg.producer(Side::A) }.is_ok());
}

#[test]
fn flags_written_by_a_hostile_peer_only_change_state() {
    let (r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let rx = unsafe { seg.consumer(Side::B) }.unwrap();
    r.poke_u32(offsets::ring(0) + offsets::WRITER_FLAGS, u32::MAX);
    assert_eq!(rx.peer_state(), PeerState::Reset);
    r.poke_u32(offsets::ring(0) + offsets::READER_FLAGS, u32::MAX);
    assert!(tx.is_reader_closed());
    r.poke_u32(offsets::ring(0) + offsets::READER_WAITING, 77);
    assert!(tx.write(b"x").unwrap().wake_peer);
}

#[test]
fn mark_gone_resets_the_dead_side_for_its_peer() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut b_rx = unsafe { seg.consumer(Side::B) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let b_tx = unsafe { seg.producer(Side::B) }.unwrap();
    assert_eq!(b_rx.prepare_wait().unwrap(), Wait::Sleep);
    assert!(seg.mark_gone(Side::A));
    assert_eq!(b_rx.peer_state(), PeerState::Reset);
    assert!(b_tx.is_reader_closed());
}

#[test]
fn holder_counts_never_underflow() {
    let (r, seg) = segment([8, 8]);
    assert_eq!(seg.add_holder(Side::A), 2);
    assert_eq!(seg.release_holder(Side::A), 1);
    assert_eq!(seg.release_holder(Side::A), 0);
    assert_eq!(seg.release_holder(Side::A), 0);
    r.poke_u32(offsets::HOLDERS + 4, u32::MAX);
    assert_eq!(seg.add_holder(Side::B), 0, "wraps, never panics");
}

#[test]
fn end_locks_exclude_and_can_be_broken_only_for_the_dead_owner() {
    let (_r, seg) = segment([8, 8]);
    let me = NonZeroU32::new(10).unwrap();
    let other = NonZeroU32::new(11).unwrap();
    let lock = EndLock::Send(Side::A);
    assert_eq!(seg.try_lock(lock, me), Ok(()));
    assert_eq!(seg.try_lock(lock, other), Err(10));
    assert_eq!(seg.try_lock(EndLock::Recv(Side::A), other), Ok(()), "locks are independent");
    assert!(!seg.unlock(lock, other));
    assert!(!seg.break_lock(lock, 11));
    assert!(seg.break_lock(lock, 10));
    assert_eq!(seg.try_lock(lock, other), Ok(()));
    assert!(seg.unlock(lock, other));
    assert!(!seg.break_lock(EndLock::Send(Side::B), 0));
}

#[test]
fn resync_picks_up_what_another_holder_of_the_same_end_wrote() {
    let (_r, seg) = segment([8, 8]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx1 = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx2 = unsafe { seg.producer(Side::A) }.unwrap();
    assert_eq!(tx1.write(b"abc").unwrap().len, 3);
    tx2.resync().unwrap();
    assert_eq!(tx2.write(b"def").unwrap().len, 3);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let mut buf = [0u8; 8];
    assert_eq!(rx.read(&mut buf).unwrap().len, 6);
    assert_eq!(&buf[..6], b"abcdef");
}

#[test]
fn held_bytes_reach_the_reader_only_when_published_and_in_order() {
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let mut buf = [0u8; 16];
    let t = tx.write_vectored_held(&[b"abc", b"de"]).unwrap();
    assert_eq!((t.len, t.wake_peer, tx.held(), tx.unread().unwrap()), (5, false, 5, 5));
    assert_eq!(rx.readable().unwrap(), 0, "held bytes are not the reader's yet");
    // A publishing write takes the held bytes with it, in order.
    assert_eq!(tx.write(b"f").unwrap().len, 1);
    assert_eq!(tx.held(), 0);
    assert_eq!(rx.read(&mut buf).unwrap().len, 6);
    assert_eq!(&buf[..6], b"abcdef");
    // Published on their own, or by a close before its end-of-stream.
    assert_eq!(tx.write_vectored_held(&[b"gh"]).unwrap().len, 2);
    assert!(!tx.publish(), "nobody sleeps: no wake-up");
    assert_eq!(rx.read(&mut buf).unwrap().len, 2);
    assert_eq!(&buf[..2], b"gh");
    assert_eq!(tx.write_vectored_held(&[b"ij"]).unwrap().len, 2);
    let _ = tx.close();
    assert_eq!(rx.read(&mut buf).unwrap().len, 2);
    assert_eq!(&buf[..2], b"ij");
    assert!(rx.at_eof().unwrap());
}

/// An observer's tap copies what a side wrote, consumed or not, as long
/// as the ring still holds it; what the writer wrapped over (or may be
/// writing over now) is counted lost, never copied.
#[test]
fn a_tap_copies_what_was_written_and_counts_what_the_ring_lost() {
    let (_r, seg) = segment([64, 64]);
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
    // SAFETY: test: the handles of each ring side are used one at a time.
    let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
    let mut buf = [0u8; 128];
    assert_eq!(seg.copy_written(Side::A, 0, &mut buf, 0), ipcd_ring::Tapped { lost: 0, len: 0 });
    assert_eq!(tx.write(b"hello, tap").unwrap().len, 10);
    // Read by the peer: still in the ring for the tap.
    assert_eq!(rx.read(&mut [0u8; 10]).unwrap().len, 10);
    assert_eq!(seg.copy_written(Side::A, 0, &mut buf, 0), ipcd_ring::Tapped { lost: 0, len: 10 });
    assert_eq!(&buf[..10], b"hello, tap");
    assert_eq!(seg.copy_written(Side::A, 7, &mut buf, 0).len, 3);
    assert_eq!(&buf[..3], b"tap");
    // 100 more bytes through a 64-byte ring: the first 46 of all 110 are gone.
    let more: Vec<u8> = (0..100u8).collect();
    for chunk in more.chunks(50) {
        assert_eq!(tx.write(chunk).unwrap().len, 50);
        assert_eq!(rx.read(&mut [0u8; 50]).unwrap().len, 50);
    }
    let t = seg.copy_written(Side::A, 0, &mut buf, 0);
    assert_eq!((t.lost, t.len), (46, 64));
    assert_eq!(&buf[..64], &more[36..]);
    // A writer that may be copying 16 bytes past its tail right now may
    // be overwriting the oldest 16 the ring holds: those count as lost.
    let t = seg.copy_written(Side::A, 46, &mut buf, 16);
    assert_eq!((t.lost, t.len), (16, 48));
    assert_eq!(&buf[..48], &more[52..]);
    assert_eq!(seg.writer_state(Side::A), PeerState::Open);
    tx.close();
    assert_eq!(seg.writer_state(Side::A), PeerState::Closed);
}
