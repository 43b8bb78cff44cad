//! loom models of the ring and its wait/wake protocol, with the doorbell (an
//! eventfd in production) modelled as a counting semaphore. loom explores
//! the interleavings and memory orderings; a lost wakeup shows up as a
//! deadlock, a lost or duplicated byte as a failed assertion.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p ipcd-ring --release --test loom_ring`.
#![cfg(loom)]

use ipcd_ring::fuzzing::Region;
use ipcd_ring::ConnSegment;
use ipcd_ring::{Consumer, Producer, Segment, Side, Wait};
use loom::sync::{Arc, Condvar, Mutex};
use loom::thread;

/// An eventfd in semaphore-less mode: `ring` adds a token, `wait` blocks until
/// there is one and takes them all.
#[derive(Default)]
struct Doorbell {
    tokens: Mutex<u32>,
    cv: Condvar,
}

impl Doorbell {
    fn ring(&self) {
        *self.tokens.lock().unwrap() += 1;
        self.cv.notify_one();
    }

    fn wait(&self) {
        let mut tokens = self.tokens.lock().unwrap();
        while *tokens == 0 {
            tokens = self.cv.wait(tokens).unwrap();
        }
        *tokens = 0;
    }
}

/// A segment with tiny rings, the memory it lives in, and one doorbell per side.
struct Setup {
    _region: Region,
    seg: Segment,
    bell_a: Arc<Doorbell>,
    bell_b: Arc<Doorbell>,
}

fn setup(cap: u64) -> Setup {
    let region = Region::new(Segment::required_len([cap, cap]).unwrap());
    // SAFETY: the heap block is owned by `Setup`, which every model keeps
    // until its threads have joined, past every handle's last use.
    let seg = unsafe { Segment::init(region.ptr(), region.len(), 1, [cap, cap]) }.unwrap();
    Setup { _region: region, seg, bell_a: Arc::default(), bell_b: Arc::default() }
}

/// Blocking send as ipcd-preload does it: write, ring if told, sleep when full.
fn send_all(tx: &mut Producer, mine: &Doorbell, peer: &Doorbell, mut data: &[u8]) {
    while !data.is_empty() {
        let t = tx.write(data).unwrap();
        if t.wake_peer {
            peer.ring();
        }
        data = &data[t.len..];
        if t.len == 0 && tx.prepare_wait(data.len()).unwrap() == Wait::Sleep {
            mine.wait();
        }
    }
}

/// Blocking receive of everything until end-of-stream.
fn recv_to_eof(rx: &mut Consumer, mine: &Doorbell, peer: &Doorbell, chunk: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut buf = vec![0u8; chunk];
        let t = rx.read(&mut buf).unwrap();
        if t.wake_peer {
            peer.ring();
        }
        out.extend_from_slice(&buf[..t.len]);
        if t.len > 0 {
            continue;
        }
        if rx.at_eof().unwrap() {
            return out;
        }
        if rx.prepare_wait().unwrap() == Wait::Sleep {
            mine.wait();
        }
    }
}

#[test]
fn bytes_arrive_in_order_once_across_wraparound() {
    loom::model(|| {
        let s = setup(2);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let (bell_a, bell_b) = (s.bell_a.clone(), s.bell_b.clone());
        let writer = thread::spawn(move || {
            send_all(&mut tx, &bell_a, &bell_b, &[1, 2, 3, 4, 5]);
            if tx.close() {
                bell_b.ring();
            }
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let got = recv_to_eof(&mut rx, &s.bell_b, &s.bell_a, 2);
        writer.join().unwrap();
        assert_eq!(got, [1, 2, 3, 4, 5]);
    });
}

#[test]
fn bytes_written_across_the_switch_to_the_bulk_area_arrive_in_order() {
    // Two writes and a close against reads of two: with three preemptions
    // this model ran for hours (two take over a minute); one takes seconds
    // and still moves the switch against every point of the reader's.
    let mut model = loom::model::Builder::new();
    model.preemption_bound = Some(1);
    model.check(|| {
        // A small area of 1 byte: the first write stays there, the second
        // does not fit and moves the ring while the reader may be anywhere.
        let s = setup(2);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let (bell_a, bell_b) = (s.bell_a.clone(), s.bell_b.clone());
        let writer = thread::spawn(move || {
            for part in [&[1u8][..], &[2, 3]] {
                send_all(&mut tx, &bell_a, &bell_b, part);
            }
            if tx.close() {
                bell_b.ring();
            }
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let got = recv_to_eof(&mut rx, &s.bell_b, &s.bell_a, 2);
        writer.join().unwrap();
        assert_eq!(got, [1, 2, 3]);
    });
}

#[test]
fn reader_sleeps_writer_wakes_no_lost_wakeup() {
    loom::model(|| {
        let s = setup(4);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let bell_b = s.bell_b.clone();
        let writer = thread::spawn(move || {
            let t = tx.write(&[9]).unwrap();
            assert_eq!(t.len, 1);
            if t.wake_peer {
                bell_b.ring();
            }
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let mut buf = [0u8; 1];
        loop {
            if rx.read(&mut buf).unwrap().len == 1 {
                break;
            }
            if rx.prepare_wait().unwrap() == Wait::Sleep {
                s.bell_b.wait(); // deadlocks here if the wakeup were lost
            }
        }
        assert_eq!(buf, [9]);
        writer.join().unwrap();
    });
}

#[test]
fn writer_sleeps_for_space_reader_wakes_no_lost_wakeup() {
    loom::model(|| {
        let s = setup(1);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let (bell_a, bell_b) = (s.bell_a.clone(), s.bell_b.clone());
        let writer = thread::spawn(move || send_all(&mut tx, &bell_a, &bell_b, &[1, 2]));
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let mut got = Vec::new();
        while got.len() < 2 {
            let mut b = [0u8; 1];
            let t = rx.read(&mut b).unwrap();
            if t.wake_peer {
                s.bell_a.ring();
            }
            if t.len == 1 {
                got.push(b[0]);
            } else if rx.prepare_wait().unwrap() == Wait::Sleep {
                s.bell_b.wait();
            }
        }
        writer.join().unwrap();
        assert_eq!(got, [1, 2]);
    });
}

#[test]
fn close_while_reader_sleeps_wakes_it_to_eof_after_the_last_bytes() {
    loom::model(|| {
        let s = setup(4);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let bell_b = s.bell_b.clone();
        let writer = thread::spawn(move || {
            let t = tx.write(&[7, 8]).unwrap();
            assert_eq!(t.len, 2);
            if t.wake_peer {
                bell_b.ring();
            }
            if tx.close() {
                bell_b.ring();
            }
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let got = recv_to_eof(&mut rx, &s.bell_b, &s.bell_a, 1);
        writer.join().unwrap();
        assert_eq!(got, [7, 8]);
    });
}

#[test]
fn reader_close_wakes_a_writer_waiting_for_space() {
    loom::model(|| {
        let s = setup(1);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let bell_a = s.bell_a.clone();
        let writer = thread::spawn(move || {
            assert_eq!(tx.write(&[1, 2]).unwrap().len, 1);
            // Wait for space or for the reader to go away.
            while !tx.is_reader_closed() && tx.writable().unwrap() == 0 {
                if tx.prepare_wait(1).unwrap() == Wait::Sleep {
                    bell_a.wait();
                }
            }
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        if rx.close() {
            s.bell_a.ring();
        }
        writer.join().unwrap();
    });
}

/// The copy of the last bytes beside `tail` is rewritten by every write;
/// a reader taking it while the second write overwrites the same slots
/// (positions 32 apart) must not mix the two.
#[test]
fn the_copy_beside_tail_is_never_read_torn() {
    loom::model(|| {
        let s = setup(64);
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (mut tx, _) = unsafe { s.seg.endpoint(Side::A) }.unwrap();
        let first: Vec<u8> = (0..32).collect();
        let expect: Vec<u8> = first.iter().copied().chain([100, 101, 102, 103, 104, 105, 106, 107]).collect();
        let writer = thread::spawn(move || {
            assert_eq!(tx.write(&first).unwrap().len, 32);
            assert_eq!(tx.write(&[100, 101, 102, 103, 104, 105, 106, 107]).unwrap().len, 8);
        });
        // SAFETY: test: the handles of each ring side are used one at a time.
        let (_, mut rx) = unsafe { s.seg.endpoint(Side::B) }.unwrap();
        let mut got = Vec::new();
        while got.len() < expect.len() {
            let mut buf = [0u8; 40];
            let n = rx.read(&mut buf).unwrap().len;
            got.extend_from_slice(&buf[..n]);
            thread::yield_now();
        }
        writer.join().unwrap();
        assert_eq!(got, expect);
    });
}

#[test]
fn a_watched_ticket_connects_without_a_lost_wakeup() {
    const ADDR: [u32; 8] = [2, 80, 1, 0, 0, 0, 0, 0];
    loom::model(|| {
        let s = Arc::new(setup(4));
        s.seg.expect(5);
        let listener_bell = Arc::new(Doorbell::default());
        let (seg, bell) = (s.clone(), listener_bell.clone());
        let connector = thread::spawn(move || {
            // Rings only when no acceptor watched, as ipcd-preload does.
            if seg.seg.connect(5, ADDR) == Some(false) {
                bell.ring();
            }
        });
        // The acceptor spins once while watching, then sleeps on its bell
        // unless the unwatch saw the connect.
        s.seg.watch(5, true);
        let seen = matches!(s.seg.ticket(5), ipcd_ring::Ticket::Connected(_));
        if !seen && s.seg.watch(5, false) == ipcd_ring::Ticket::Expected {
            listener_bell.wait(); // deadlocks here if the wake-up were lost
        }
        s.seg.watch(5, false);
        assert_eq!(s.seg.ticket(5), ipcd_ring::Ticket::Connected(ADDR));
        connector.join().unwrap();
    });
}

/// The two ends of a renewable connection finish while the monitor
/// promotes it: exactly one of them owns the segment afterwards (the last
/// end to finish renews it, or the monitor has it in its books, told
/// which ends finished), and a renewal never follows a promotion.
#[test]
fn finishing_ends_and_a_promotion_never_both_own_the_segment() {
    use ipcd_ring::{next_ticket_id, Finish};
    const ADDR: [u32; 8] = [2, 80, 1, 0, 0, 0, 0, 0];
    loom::model(|| {
        let s = Arc::new(setup(4));
        s.seg.expect_renewable(5);
        s.seg.connect(5, ADDR).unwrap();
        let ends: Vec<_> = [Side::A, Side::B]
            .into_iter()
            .map(|side| {
                let s = s.clone();
                thread::spawn(move || {
                    let f = s.seg.finish(5, side);
                    let renewed = f == Finish::Last && s.seg.renew(5, next_ticket_id(5));
                    (f, renewed)
                })
            })
            .collect();
        let promoted = s.seg.promote(5);
        let done: Vec<(Finish, bool)> = ends.into_iter().map(|t| t.join().unwrap()).collect();
        let renewed = done.iter().filter(|d| d.1).count();
        match promoted {
            Some(p) => {
                assert_eq!(renewed, 0);
                assert_eq!(p.done, [done[0].0 == Finish::First, done[1].0 == Finish::First]);
            }
            None => {
                assert_eq!(renewed, 1);
                assert_eq!(s.seg.ticket(next_ticket_id(5)), ipcd_ring::Ticket::Expected);
            }
        }
    });
}

/// Two threads sleep for data on one ring, each on a doorbell of its own
/// named in the reader's waiting line (as ipcd's threads, or two
/// processes sharing an end, do); the writer rings every name it finds
/// after taking the flag. Neither may sleep through the write: a name
/// not yet visible to the writer would deadlock its sleeper here.
#[test]
fn every_named_sleeper_is_rung() {
    loom::model(|| {
        let s = Arc::new(setup(4));
        let bells: Arc<[Doorbell; 2]> = Arc::default();
        let sleeper = |id: u64| {
            let (s, bells) = (s.clone(), bells.clone());
            thread::spawn(move || {
                let [waiters, _] = s.seg.waiters_of(Side::B);
                assert!(waiters.name(id));
                if s.seg.prepare_reader_wait(Side::B).unwrap() == Wait::Sleep {
                    bells[id as usize - 1].wait(); // deadlocks if never rung
                }
                waiters.unname(id);
            })
        };
        let (one, two) = (sleeper(1), sleeper(2));
        // SAFETY: test: the one producer of side A.
        let mut tx = unsafe { s.seg.producer(Side::A) }.unwrap();
        if tx.write(&[7]).unwrap().wake_peer {
            for id in tx.reader_waiters().ids().into_iter().filter(|&i| i != 0) {
                bells[id as usize - 1].ring();
            }
        }
        one.join().unwrap();
        two.join().unwrap();
    });
}

/// A sleeper that finds the ring ready takes its name back and clears
/// the flag only if nobody else is named (`cancel_wait_alone`); when
/// another sleeper named itself meanwhile it rings that one, since a
/// publish may have found the flag cleared. The other sleeper must not
/// sleep through the write.
#[test]
fn a_cancel_never_loses_another_sleepers_wake_up() {
    loom::model(|| {
        let s = Arc::new(setup(4));
        let bells: Arc<[Doorbell; 2]> = Arc::default();
        let ring_named = |ids: [u64; ipcd_ring::WAITER_SLOTS], bells: &[Doorbell; 2]| {
            for id in ids.into_iter().filter(|&i| i != 0) {
                bells[id as usize - 1].ring();
            }
        };
        let (s2, b2) = (s.clone(), bells.clone());
        let sleeper = thread::spawn(move || {
            let [waiters, _] = s2.seg.waiters_of(Side::B);
            assert!(waiters.name(2));
            if s2.seg.prepare_reader_wait(Side::B).unwrap() == Wait::Sleep {
                b2[1].wait(); // deadlocks if never rung
            }
            waiters.unname(2);
        });
        let (s3, b3) = (s.clone(), bells.clone());
        let canceller = thread::spawn(move || {
            // Names itself, arms, and gives up at once (as a wait that
            // found the ring ready does).
            let [waiters, _] = s3.seg.waiters_of(Side::B);
            assert!(waiters.name(1));
            let _ = s3.seg.prepare_reader_wait(Side::B).unwrap();
            waiters.unname(1);
            // SAFETY: test: this thread only touches the reader's flag.
            let rx = unsafe { s3.seg.consumer(Side::B) }.unwrap();
            if rx.cancel_wait_alone() {
                ring_named(rx.waiters().ids(), &b3);
            }
        });
        // SAFETY: test: the one producer of side A.
        let mut tx = unsafe { s.seg.producer(Side::A) }.unwrap();
        if tx.write(&[7]).unwrap().wake_peer {
            ring_named(tx.reader_waiters().ids(), &bells);
        }
        canceller.join().unwrap();
        sleeper.join().unwrap();
        // The canceller's doorbell may hold a token; nobody waits on it.
    });
}
