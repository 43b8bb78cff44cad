//! proptest: random operation sequences against a `VecDeque<u8>` model, and
//! the same sequences with a hostile peer rewriting the shared header between
//! operations.

use std::collections::VecDeque;

use ipcd_ring::fuzzing::segment;
use ipcd_ring::{offsets, Error, PeerState, Side, Wait};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    /// Write `data`, handed over as slices cut at `cuts`.
    Write {
        data: Vec<u8>,
        cuts: Vec<usize>,
    },
    /// Read into buffers of these sizes.
    Read {
        sizes: Vec<usize>,
    },
    Peek {
        offset: usize,
        len: usize,
    },
    Consume(usize),
    CloseWriter,
    ResetWriter,
    CloseReader,
    ReaderWait,
    WriterWait(usize),
    /// A hostile store of `value` at shared offset `at` (u64 slots of the control area).
    Poke {
        at: usize,
        value: u64,
    },
}

fn op(hostile: bool) -> impl Strategy<Value = Op> {
    let data = prop::collection::vec(any::<u8>(), 0..40);
    let cuts = prop::collection::vec(0usize..40, 0..4);
    let normal = prop_oneof![
        4 => (data, cuts).prop_map(|(data, cuts)| Op::Write { data, cuts }),
        4 => prop::collection::vec(0usize..24, 1..4).prop_map(|sizes| Op::Read { sizes }),
        2 => (0usize..40, 0usize..40).prop_map(|(offset, len)| Op::Peek { offset, len }),
        1 => (0usize..40).prop_map(Op::Consume),
        1 => Just(Op::CloseWriter),
        1 => Just(Op::ResetWriter),
        1 => Just(Op::CloseReader),
        1 => Just(Op::ReaderWait),
        1 => (0usize..64).prop_map(Op::WriterWait),
    ];
    let slots: Vec<usize> = vec![
        offsets::MAGIC,
        offsets::CAPACITY,
        offsets::TOTAL_LEN,
        offsets::ring(0) + offsets::TAIL,
        offsets::ring(0) + offsets::WRITER_FLAGS,
        offsets::ring(0) + offsets::RECENT_LEN,
        offsets::ring(0) + offsets::RECENT_END,
        offsets::ring(0) + offsets::RECENT,
        offsets::ring(0) + offsets::RECENT + 24,
        // The CPU hint and, in its high half, the grown flag.
        offsets::ring(0) + offsets::WRITER_CPU,
        offsets::ring(0) + offsets::GROWN_AT,
        offsets::ring(0) + offsets::HEAD,
        offsets::ring(0) + offsets::READER_FLAGS,
        offsets::ring(0) + offsets::READER_WAITING,
        offsets::ring(0) + offsets::WRITER_WAITING,
    ];
    let value = prop_oneof![any::<u64>(), 0u64..64, Just(u64::MAX), Just(1u64 << 63)];
    let poke = (prop::sample::select(slots), value).prop_map(|(at, value)| Op::Poke { at, value });
    if hostile {
        prop_oneof![6 => normal, 1 => poke].boxed()
    } else {
        normal.boxed()
    }
}

fn cut<'a>(data: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.sort_unstable();
    let mut out = Vec::new();
    let mut prev = 0;
    for p in points.into_iter().chain([data.len()]) {
        out.push(&data[prev..p]);
        prev = p;
    }
    out
}

fn capacity() -> impl Strategy<Value = u64> {
    prop_oneof![Just(1u64), Just(2), Just(8), Just(16), Just(64)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Every result of every operation matches a byte queue of the same capacity.
    #[test]
    fn ring_matches_vecdeque_model(cap in capacity(), ops in prop::collection::vec(op(false), 1..80)) {
        let (_r, seg) = segment([cap, cap]);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
        // SAFETY: test: the handles of each ring side are used one at a time.
        let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
        let cap = cap as usize;
        let mut model: VecDeque<u8> = VecDeque::new();
        let (mut closed, mut reset, mut reader_closed) = (false, false, false);
        let mut reader_sleeping = false;
        let mut writer_sleeping = false;
        for op in ops {
            match op {
                Op::Write { data, cuts } => {
                    if closed { continue; } // writing after close is the caller's bug, not modelled
                    let t = tx.write_vectored(&cut(&data, &cuts)).unwrap();
                    let n = data.len().min(cap - model.len());
                    prop_assert_eq!(t.len, n);
                    model.extend(&data[..n]);
                    prop_assert_eq!(t.wake_peer, n > 0 && reader_sleeping);
                    if n > 0 { reader_sleeping = false; }
                }
                Op::Read { sizes } => {
                    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0; s]).collect();
                    let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                    let t = rx.read_vectored(&mut refs).unwrap();
                    let n = sizes.iter().sum::<usize>().min(model.len());
                    prop_assert_eq!(t.len, n);
                    let got: Vec<u8> = bufs.concat().into_iter().take(n).collect();
                    let want: Vec<u8> = model.drain(..n).collect();
                    prop_assert_eq!(got, want);
                    prop_assert_eq!(t.wake_peer, n > 0 && writer_sleeping);
                    if n > 0 { writer_sleeping = false; }
                }
                Op::Peek { offset, len } => {
                    let mut buf = vec![0; len];
                    let n = rx.peek(offset, &mut buf).unwrap();
                    let want: Vec<u8> = model.iter().skip(offset).take(len).copied().collect();
                    prop_assert_eq!(&buf[..n], &want[..]);
                }
                Op::Consume(k) => {
                    let t = rx.consume(k).unwrap();
                    let n = k.min(model.len());
                    prop_assert_eq!(t.len, n);
                    model.drain(..n);
                    if n > 0 { writer_sleeping = false; }
                }
                Op::CloseWriter => { prop_assert_eq!(tx.close(), reader_sleeping); reader_sleeping = false; closed = true; }
                Op::ResetWriter => { prop_assert_eq!(tx.reset(), reader_sleeping); reader_sleeping = false; closed = true; reset = true; }
                Op::CloseReader => { prop_assert_eq!(rx.close(), writer_sleeping); writer_sleeping = false; reader_closed = true; }
                Op::ReaderWait => {
                    let w = rx.prepare_wait().unwrap();
                    let ready = closed || !model.is_empty();
                    prop_assert_eq!(w, if ready { Wait::Ready } else { Wait::Sleep });
                    // Armed either way: another sleeper may rely on the flag.
                    reader_sleeping = true;
                }
                Op::WriterWait(want) => {
                    let w = tx.prepare_wait(want).unwrap();
                    let ready = reader_closed || cap - model.len() >= want.clamp(1, cap);
                    prop_assert_eq!(w, if ready { Wait::Ready } else { Wait::Sleep });
                    writer_sleeping = true;
                }
                Op::Poke { .. } => unreachable!("not generated without hostility"),
            }
            prop_assert_eq!(rx.readable().unwrap(), model.len());
            prop_assert_eq!(tx.writable().unwrap(), cap - model.len());
            prop_assert_eq!(tx.unread().unwrap(), model.len());
            let state = if reset { PeerState::Reset } else if closed { PeerState::Closed } else { PeerState::Open };
            prop_assert_eq!(rx.peer_state(), state);
            prop_assert_eq!(rx.at_eof().unwrap(), closed && model.is_empty());
            prop_assert_eq!(tx.is_reader_closed(), reader_closed);
        }
    }

    /// With a peer rewriting the shared header at random, every call returns
    /// in bounds or with `Error::Corrupt`: no panic, no out-of-bounds copy.
    #[test]
    fn hostile_header_writes_are_errors_never_panics(cap in capacity(), ops in prop::collection::vec(op(true), 1..120)) {
        let (r, seg) = segment([cap, cap]);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
        // SAFETY: test: the handles of each ring side are used one at a time.
        let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
        let cap = cap as usize;
        let ok_or_corrupt = |e: &Error| matches!(e, Error::Corrupt(_));
        for op in ops {
            match op {
                Op::Write { data, cuts } => match tx.write_vectored(&cut(&data, &cuts)) {
                    Ok(t) => prop_assert!(t.len <= data.len().min(cap)),
                    Err(e) => prop_assert!(ok_or_corrupt(&e)),
                },
                Op::Read { sizes } => {
                    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&s| vec![0; s]).collect();
                    let mut refs: Vec<&mut [u8]> = bufs.iter_mut().map(|b| b.as_mut_slice()).collect();
                    match rx.read_vectored(&mut refs) {
                        Ok(t) => prop_assert!(t.len <= sizes.iter().sum::<usize>().min(cap)),
                        Err(e) => prop_assert!(ok_or_corrupt(&e)),
                    }
                }
                Op::Peek { offset, len } => match rx.peek(offset, &mut vec![0; len]) {
                    Ok(n) => prop_assert!(n <= len.min(cap)),
                    Err(e) => prop_assert!(ok_or_corrupt(&e)),
                },
                Op::Consume(k) => if let Err(e) = rx.consume(k) { prop_assert!(ok_or_corrupt(&e)) },
                Op::CloseWriter => { let _ = tx.close(); }
                Op::ResetWriter => { let _ = tx.reset(); }
                Op::CloseReader => { let _ = rx.close(); }
                Op::ReaderWait => if let Err(e) = rx.prepare_wait() { prop_assert!(ok_or_corrupt(&e)) },
                Op::WriterWait(w) => if let Err(e) = tx.prepare_wait(w) { prop_assert!(ok_or_corrupt(&e)) },
                Op::Poke { at, value } => {
                    if at % 8 == 0 && [offsets::ring(0) + offsets::TAIL, offsets::ring(0) + offsets::HEAD, offsets::ring(0) + offsets::RECENT_END, offsets::ring(0) + offsets::RECENT, offsets::ring(0) + offsets::RECENT + 24, offsets::MAGIC, offsets::CAPACITY, offsets::TOTAL_LEN].contains(&at) {
                        r.poke_u64(at, value);
                    } else {
                        r.poke_u32(at, value as u32);
                    }
                }
            }
            match rx.readable() { Ok(n) => prop_assert!(n <= cap), Err(e) => prop_assert!(ok_or_corrupt(&e)) }
            match tx.writable() { Ok(n) => prop_assert!(n <= cap), Err(e) => prop_assert!(ok_or_corrupt(&e)) }
        }
    }
}
