//! The monitor's request queues (`ipcd daemon --queues per-process|shared`):
//! programs under the library keep Linux's behaviour when their requests
//! travel through shared memory, the monitor takes what a process writes
//! in its ring in order with the rest, and a process that writes garbage
//! into its ring or the shared index queue harms only itself.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::time::{Duration, Instant};

use ipcd_proto::channel::{Channel, ChannelError};
use ipcd_proto::message::{Caps, Request, Response, MAX_FRAME};
use ipcd_proto::FALLBACK_KINDS;
use ipcd_ring::{IndexQueue, Producer, Segment};
use ipcd_tests::harness::{die_with_parent, Monitor};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const RING_BYTES: u64 = 64 * 1024;
const MODES: [&str; 2] = ["per-process", "shared"];

/// A whole memfd mapped shared (never unmapped: the test process ends).
fn map(fd: &OwnedFd) -> (NonNull<u8>, usize) {
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out pointer.
    assert_eq!(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) }, 0);
    let len = st.st_size as usize;
    // SAFETY: a fresh shared mapping of the whole memfd.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0)
    };
    assert_ne!(p, libc::MAP_FAILED);
    (NonNull::new(p.cast()).unwrap(), len)
}

/// A process registered with a polling monitor, holding its ring as the
/// library would, but free to write anything into it.
struct RawClient {
    chan: Channel,
    tx: Producer,
    index: u32,
    /// The index queue and where its region is mapped.
    shared: Option<(IndexQueue, NonNull<u8>)>,
    _seg: Segment,
    seq: u32,
}

impl RawClient {
    fn register(mon: &Monitor) -> RawClient {
        let chan = Channel::connect_abstract(mon.socket.as_bytes()).expect("connect");
        // SAFETY: getpid and getuid cannot fail.
        let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
        chan.send_request(1, &Request::hello(pid, uid, Caps::empty()), &[]).expect("hello");
        let (resp, fds) = match chan.recv_response().expect("queue") {
            (0, resp, fds) => (resp, fds.into_vec()),
            other => panic!("a polling monitor sends the queue before Welcome, got {other:?}"),
        };
        let Response::Queue { index, shared } = resp else { panic!("expected Queue, got {resp:?}") };
        assert!(matches!(chan.recv_response().expect("welcome"), (1, Response::Welcome { .. }, _)));
        let (base, len) = map(&fds[0]);
        // SAFETY: the mapping stays for the life of the test process.
        let seg = unsafe { Segment::attach(base, len) }.expect("ring");
        // SAFETY: this client is its ring's one writer.
        let tx = unsafe { seg.producer(ipcd_ring::Side::A) }.expect("producer");
        let shared = shared.then(|| {
            let (base, len) = map(&fds[1]);
            // SAFETY: as above.
            (unsafe { IndexQueue::attach(base, len) }.expect("index queue"), base)
        });
        RawClient { chan, tx, index, shared, _seg: seg, seq: 1 }
    }

    /// Writes `bytes` into the ring and tells the monitor as the library
    /// does.
    fn write(&mut self, bytes: &[u8]) {
        let t = self.tx.write(bytes).expect("ring");
        assert_eq!(t.len, bytes.len());
        if let (true, Some((q, _))) = (t.wake_peer, &self.shared) {
            // A full queue is not waited on: the monitor sweeps the rings.
            let _ = q.push(self.index);
        }
    }

    fn queue(&mut self, req: &Request) {
        let mut buf = [0u8; MAX_FRAME];
        let n = req.encode(0, &mut buf).expect("encode");
        self.write(&buf[..n]);
    }

    /// `Ping`: Ok once everything before it was handled; Err when the
    /// monitor dropped us.
    fn ping(&mut self) -> Result<(), ChannelError> {
        self.seq += 1;
        self.chan.send_request(self.seq, &Request::Ping, &[])?;
        loop {
            match self.chan.recv_response()? {
                (seq, Response::Ok, _) if seq == self.seq => return Ok(()),
                (_, Response::Error { code }, _) => panic!("ping refused: {code:?}"),
                _ => {}
            }
        }
    }

    /// Waits until the monitor closes our channel (it dropped us).
    fn dropped_within(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        self.chan.set_nonblocking(true).expect("nonblocking");
        while Instant::now() < deadline {
            match self.chan.recv_response() {
                Err(ChannelError::Closed) => return true,
                Err(e) if e.is_would_block() => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => return true,
                Ok(_) => {}
            }
        }
        false
    }
}

fn fallbacks(mon: &Monitor) -> u64 {
    mon.status().status.fallbacks_total
}

#[test]
fn requests_in_rings_are_taken_in_order_and_bad_writers_are_dropped_alone() {
    for mode in MODES {
        let mon = Monitor::start_with(RING_BYTES, &["--queues", mode]);
        let mut good = RawClient::register(&mon);
        let mut counts = [0u32; FALLBACK_KINDS];
        counts[0] = 2;
        counts[1] = 1;
        for _ in 0..50 {
            good.queue(&Request::Fallbacks { counts });
        }
        // The ping goes on the channel, after the ring's 50 requests: its
        // reply means all were taken.
        good.ping().expect("ping");
        assert_eq!(fallbacks(&mon), 150, "{mode}: the ring's requests were not all taken");

        // A torn frame, a request that has a reply, bytes that are no frame.
        let mut buf = [0u8; MAX_FRAME];
        let n = Request::Fallbacks { counts }.encode(0, &mut buf).unwrap();
        let mut status_frame = [0u8; MAX_FRAME];
        let status = Request::Status.encode(0, &mut status_frame).unwrap();
        let bad: [&[u8]; 3] = [&buf[..n - 3], &status_frame[..status], &[0xff; 32]];
        for bytes in bad {
            let mut evil = RawClient::register(&mon);
            evil.write(bytes);
            assert!(evil.dropped_within(Duration::from_secs(5)), "{mode}: a ring holding {bytes:?} was accepted");
        }
        good.queue(&Request::Fallbacks { counts });
        good.ping().expect("the good client is still served");
        assert_eq!(fallbacks(&mon), 153, "{mode}: nothing from the bad writers may count");
    }
}

#[test]
fn a_process_that_corrupts_the_index_queue_only_delays_the_others() {
    let mon = Monitor::start_with(RING_BYTES, &["--queues", "shared"]);
    let mut good = RawClient::register(&mon);
    let evil = RawClient::register(&mon);
    let (q, base) = evil.shared.as_ref().expect("shared mode sends the index queue");
    // Numbers of nobody, of the good client, and a reservation never written.
    for n in [u32::MAX, 9999, good.index, evil.index] {
        assert!(q.push(n));
    }
    let mut counts = [0u32; FALLBACK_KINDS];
    counts[2] = 1;
    good.queue(&Request::Fallbacks { counts });
    good.ping().expect("ping");
    assert_eq!(fallbacks(&mon), 1);
    // The shared words are everyone's: a tail thrown a long way ahead (the
    // third 128-byte line of the region) and a reservation never written.
    // SAFETY: an aligned u64 word inside the live shared mapping.
    let tail = unsafe { &*base.as_ptr().add(256).cast::<std::sync::atomic::AtomicU64>() };
    tail.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    good.queue(&Request::Fallbacks { counts });
    good.ping().expect("ping past a reservation never written");
    tail.store(1 << 40, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..200 {
        good.queue(&Request::Fallbacks { counts });
    }
    good.ping().expect("ping after the noise");
    assert_eq!(fallbacks(&mon), 202);
}

#[test]
fn programs_keep_linux_behaviour_when_requests_go_through_shared_memory() {
    // Scenarios that close, accept, fork, exec, pass and share listeners
    // (their `Close`, `Accepted`, `Serve`, `Decline`, `Release` requests
    // take the rings), with the monitor's counts the channel mode gives
    // them (preload.rs): connects through ipcd (None: at least one) and
    // connects to closed ports, which go to the kernel.
    let scenarios: [(&str, Option<u64>, u64); 14] = [
        ("echo", None, 0),
        ("many", None, 0),
        ("reset", None, 0),
        ("half-close", None, 0),
        ("close-all", None, 0),
        ("backlog", None, 0),
        ("reuse", None, 0),
        ("fork-share", None, 0),
        ("fork-handoff", None, 0),
        ("exec-handoff", None, 0),
        ("pass-fd", None, 0),
        ("prefork", Some(27), 2),
        ("prefork-decline", Some(2), 2),
        ("fork-queued", Some(1), 1),
    ];
    for mode in MODES {
        for (name, connects, to_kernel) in scenarios {
            let mon = Monitor::start_with(RING_BYTES, &["--queues", mode]);
            let mut cmd = Command::new(PROBE);
            die_with_parent(&mut cmd).args(["check", name]).stdin(Stdio::null()).env("IPCD_LOG", "warn");
            let out = mon.under(&mut cmd).output().expect("run probe");
            let stderr = String::from_utf8_lossy(&out.stderr);
            let what = format!("{name} with --queues {mode}");
            assert!(out.status.success(), "{what}: {}\n{stderr}", out.status);
            assert!(!stderr.contains("ipcd["), "{what}: the library complained:\n{stderr}");
            let st = mon.status().status;
            match connects {
                Some(n) => assert_eq!(st.connects_total, n, "{what}: {st:?}"),
                None => assert!(st.connects_total >= 1, "{what}: nothing went through ipcd ({st:?})"),
            }
            assert_eq!(st.fallbacks_total, to_kernel, "{what}: {st:?}");
        }
    }
}
