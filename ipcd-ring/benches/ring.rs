//! Two processes, one core each, sharing a memfd mapping: the raw spin
//! ping-pong on one cache line (the physical limit) beside the ring's round
//! trip and one-way streaming, measured in the same run.
//!
//! `cargo bench -p ipcd-ring` (add `-- --quick` for a short run).

use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ipcd_ring::{Segment, Side};

const CONTROL: usize = 4096; // first page: spin line and phase words

struct Shared {
    base: NonNull<u8>,
    len: usize,
}

impl Shared {
    fn new(len: usize) -> Shared {
        // SAFETY: plain libc calls with valid arguments; results are checked.
        unsafe {
            let fd = libc::memfd_create(c"ipcd-ring-bench".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0, "memfd_create failed");
            assert_eq!(libc::ftruncate(fd, len as libc::off_t), 0);
            let p = libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0);
            assert_ne!(p, libc::MAP_FAILED);
            libc::close(fd);
            Shared { base: NonNull::new(p.cast()).unwrap(), len }
        }
    }

    fn word(&self, i: usize) -> &AtomicU64 {
        assert!(i < CONTROL / 128);
        // SAFETY: in the control page, 128-byte aligned, mapping lives as long as self.
        unsafe { &*self.base.as_ptr().add(i * 128).cast::<AtomicU64>() }
    }

    fn segment_base(&self) -> NonNull<u8> {
        // SAFETY: CONTROL < len.
        unsafe { self.base.add(CONTROL) }
    }
}

/// Pins the calling process to `cpu`, taken modulo the CPUs the bench started
/// with (not the current affinity, which an earlier `pin` already narrowed).
fn pin(cpu: usize) {
    let cpus = num_cpus();
    // SAFETY: cpu_set_t is plain data; sched_setaffinity on ourselves.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % cpus, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// CPUs available when first asked, i.e. before any `pin`.
fn num_cpus() -> usize {
    static CPUS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CPUS.get_or_init(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// Runs `child` in a forked process pinned to core 1 and `parent` here on
/// core 0; returns the parent's result after the child exits.
fn two_processes<T>(parent: impl FnOnce() -> T, child: impl FnOnce()) -> T {
    // SAFETY: the bench is single-threaded, so the child may run arbitrary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        pin(1);
        child();
        // SAFETY: leave without running the parent's atexit handlers.
        unsafe { libc::_exit(0) };
    }
    pin(0);
    let out = parent();
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "child failed");
    out
}

fn spin_until(w: &AtomicU64, v: u64) {
    while w.load(Ordering::Acquire) != v {
        std::hint::spin_loop();
    }
}

fn raw_spin_rtt(sh: &Shared, iters: u64) -> Duration {
    let line = sh.word(1);
    line.store(0, Ordering::Relaxed);
    two_processes(
        || {
            let t = Instant::now();
            for i in 0..iters {
                line.store(2 * i + 1, Ordering::Release);
                spin_until(line, 2 * i + 2);
            }
            t.elapsed() / iters as u32
        },
        || {
            for i in 0..iters {
                spin_until(line, 2 * i + 1);
                line.store(2 * i + 2, Ordering::Release);
            }
        },
    )
}

fn fresh_segment(sh: &Shared, cap: u64) -> Segment {
    // SAFETY: the mapping outlives every use of the segment in this process and
    // the forked child (which inherits it).
    unsafe { Segment::init(sh.segment_base(), sh.len - CONTROL, 1, [cap, cap]) }.unwrap()
}

fn ring_rtt(sh: &Shared, iters: u64) -> Duration {
    let seg = fresh_segment(sh, 4096);
    two_processes(
        || {
            // SAFETY: test: the handles of each ring side are used one at a time.
            let (mut tx, mut rx) = unsafe { seg.endpoint(Side::A) }.unwrap();
            let mut buf = [0u8; 8];
            let t = Instant::now();
            for i in 0..iters {
                let _ = tx.write(&i.to_le_bytes()).unwrap();
                while rx.read(&mut buf).unwrap().len == 0 {
                    std::hint::spin_loop();
                }
                debug_assert_eq!(u64::from_le_bytes(buf), i);
            }
            t.elapsed() / iters as u32
        },
        || {
            // SAFETY: test: the handles of each ring side are used one at a time.
            let (mut tx, mut rx) = unsafe { seg.endpoint(Side::B) }.unwrap();
            let mut buf = [0u8; 8];
            for _ in 0..iters {
                while rx.read(&mut buf).unwrap().len == 0 {
                    std::hint::spin_loop();
                }
                let _ = tx.write(&buf).unwrap();
            }
        },
    )
}

/// One-way stream of `msg`-byte writes; returns (messages/s, bytes/s).
fn stream(sh: &Shared, msg: usize, total: u64) -> (f64, f64) {
    let seg = fresh_segment(sh, 1 << 20);
    let count = total / msg as u64;
    let done = sh.word(2);
    done.store(0, Ordering::Relaxed);
    two_processes(
        || {
            // SAFETY: test: the handles of each ring side are used one at a time.
            let mut tx = unsafe { seg.producer(Side::A) }.unwrap();
            let payload = vec![0xA5u8; msg];
            let t = Instant::now();
            for _ in 0..count {
                let mut off = 0;
                while off < msg {
                    off += tx.write(&payload[off..]).unwrap().len;
                }
            }
            spin_until(done, 1);
            let secs = t.elapsed().as_secs_f64();
            (count as f64 / secs, (count * msg as u64) as f64 / secs)
        },
        || {
            // SAFETY: test: the handles of each ring side are used one at a time.
            let mut rx = unsafe { seg.consumer(Side::B) }.unwrap();
            let mut buf = vec![0u8; 256 << 10];
            let mut left = count * msg as u64;
            while left > 0 {
                left -= rx.read(&mut buf).unwrap().len as u64;
            }
            done.store(1, Ordering::Release);
        },
    )
}

fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, iters, total) = if quick { (3, 200_000u64, 256u64 << 20) } else { (7, 1_000_000, 2u64 << 30) };
    if num_cpus() < 2 {
        println!("note: one CPU only; two spinning processes share it and the figures mean little");
    }
    let sh = Shared::new(CONTROL + Segment::required_len([1 << 20, 1 << 20]).unwrap());
    println!("ipcd-ring benchmark: two processes, one core each, {rounds} rounds, medians");
    let mut raw = Vec::new();
    let mut ring = Vec::new();
    for _ in 0..rounds {
        raw.push(raw_spin_rtt(&sh, iters));
        ring.push(ring_rtt(&sh, iters));
    }
    let (raw, ring) = (median(raw), median(ring));
    println!("{:<36} {:>12}", "workload", "result");
    println!("{:<36} {:>9.3} µs", "raw spin ping-pong, round trip", raw.as_secs_f64() * 1e6);
    println!(
        "{:<36} {:>9.3} µs   ({:.2}x raw spin; goal <= 2x)",
        "ring 8 B round trip",
        ring.as_secs_f64() * 1e6,
        ring.as_secs_f64() / raw.as_secs_f64()
    );
    for (msg, goal) in [(8usize, "goal >= 50 M msg/s"), (64, ""), (1024, ""), (65536, "goal >= 8 GB/s")] {
        let runs: Vec<(f64, f64)> = (0..rounds).map(|_| stream(&sh, msg, total)).collect();
        let msgs = median(runs.iter().map(|r| r.0).collect());
        let bytes = median(runs.iter().map(|r| r.1).collect());
        println!(
            "{:<36} {:>9.2} M msg/s  {:>7.2} GB/s   {goal}",
            format!("stream {msg} B writes"),
            msgs / 1e6,
            bytes / 1e9
        );
    }
}
