//! Operations on both ends of a segment interleaved with a hostile peer
//! scribbling over the shared control area. While nobody has scribbled, the
//! ring must behave exactly like a byte queue; after that, every call must
//! still return (a value or an error) without panics or out-of-bounds
//! accesses, and never report more bytes than were asked for.
#![no_main]

use std::collections::VecDeque;

use libfuzzer_sys::fuzz_target;

use ipcd_ring::fuzzing::Region;
use ipcd_ring::{Segment, Side};

/// Control area size: the header line plus two rings of four lines each.
const CONTROL: usize = 9 * 128;

fuzz_target!(|data: &[u8]| {
    let Some((&shape, mut ops)) = data.split_first() else {
        return;
    };
    let caps = [8u64 << (shape & 7), 8u64 << ((shape >> 3) & 7)];
    let len = Segment::required_len(caps).unwrap();
    let region = Region::new(len);
    // SAFETY: the region is ours, aligned, large enough, and outlives `seg`.
    let seg = unsafe { Segment::init(region.ptr(), len, 1, caps) }.unwrap();
    // SAFETY: the only handle of its side (ring) in this test or call.
    let (mut tx, _) = unsafe { seg.endpoint(Side::A) }.unwrap();
    // SAFETY: the only handle of its side (ring) in this test or call.
    let (_, mut rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
    let mut model = VecDeque::new();
    let mut honest = true;
    let mut buf = vec![0u8; 2048];
    while let Some((&op, rest)) = ops.split_first() {
        ops = rest;
        let arg = usize::from(ops.first().copied().unwrap_or(0)) * 8;
        match op % 10 {
            0 | 1 => {
                let chunk: Vec<u8> = (0..arg).map(|i| (i as u8) ^ op).collect();
                let mid = arg / 3;
                match tx.write_vectored(&[&chunk[..mid], &chunk[mid..]]) {
                    Ok(t) => {
                        assert!(t.len <= arg);
                        if honest {
                            model.extend(&chunk[..t.len]);
                        }
                    }
                    Err(_) => assert!(!honest, "error without a hostile peer"),
                }
            }
            2 | 3 => {
                let (a, b) = buf[..arg].split_at_mut(arg / 2);
                match rx.read_vectored(&mut [a, b]) {
                    Ok(t) => {
                        assert!(t.len <= arg);
                        if honest {
                            let want: Vec<u8> = model.drain(..t.len).collect();
                            assert_eq!(&buf[..t.len], &want[..]);
                            assert_eq!(t.len, arg.min(want.len() + model.len()));
                        }
                    }
                    Err(_) => assert!(!honest, "error without a hostile peer"),
                }
            }
            4 => {
                let off = arg / 2;
                match rx.peek(off, &mut buf[..arg]) {
                    Ok(n) => {
                        assert!(n <= arg);
                        if honest {
                            let want: Vec<u8> = model.iter().skip(off).take(arg).copied().collect();
                            assert_eq!(&buf[..n], &want[..]);
                        }
                    }
                    Err(_) => assert!(!honest),
                }
            }
            5 => {
                if let Ok(t) = rx.consume(arg) {
                    if honest {
                        model.drain(..t.len);
                    }
                }
            }
            6 => {
                let _ = if op & 0x10 != 0 { tx.reset() } else { tx.close() };
                let _ = rx.prepare_wait();
                rx.cancel_wait();
                let _ = rx.at_eof();
                let _ = rx.peer_state();
            }
            7 => {
                let _ = rx.close();
                let _ = tx.prepare_wait(arg);
                tx.cancel_wait();
                let _ = tx.is_reader_closed();
            }
            8 => {
                // Scribble: offset byte then up to 8 bytes of garbage.
                let n = ops.len().min(9);
                if n >= 2 {
                    region.scribble(usize::from(ops[0]) * 9 % CONTROL, &ops[1..n]);
                    honest = false;
                }
                ops = &ops[n..];
                continue;
            }
            _ => {
                let _ = tx.resync();
                let _ = rx.resync();
                if honest {
                    assert_eq!(rx.readable().unwrap(), model.len());
                    assert_eq!(tx.unread().unwrap(), model.len());
                }
            }
        }
        ops = ops.get(1..).unwrap_or(&[]);
    }
});
