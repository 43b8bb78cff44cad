//! Two programs using only the ordinary socket API, over kernel TCP
//! loopback, a Unix socket and ipcd, in one run: 8-byte round trips, 8-byte
//! streaming and 64 KiB streaming, each reported with its ratio to kernel
//! TCP measured here and now (the machine is shared; absolute numbers
//! drift, ratios less). Then the cost of the library on calls that are not
//! ours: `dd` of one-byte blocks with and without it.
//!
//! `cargo bench -p ipcd-tests --bench transport [-- --quick]` (needs the
//! release build of the workspace: `cargo build --workspace --release`).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Instant;

use ipcd_tests::harness::{die_with_parent, Monitor};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

#[derive(Clone, Copy, PartialEq)]
enum Transport {
    Tcp,
    Unix,
    Ipcd,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "kernel TCP",
            Transport::Unix => "unix socket",
            Transport::Ipcd => "ipcd",
        }
    }
}

/// Runs one server/client pair; returns the client's nanoseconds.
fn run(t: Transport, mon: &Monitor, mode: &str, size: usize, count: u64) -> f64 {
    let kind = if t == Transport::Unix { "unix" } else { "tcp" };
    let cmd = |args: &[&str]| {
        let mut c = Command::new(PROBE);
        die_with_parent(&mut c).args(args).env_remove("LD_PRELOAD").stdin(Stdio::null());
        if t == Transport::Ipcd {
            mon.under(&mut c);
        }
        c
    };
    let mut server = cmd(&["bench-server", kind, "0"]).stdout(Stdio::piped()).spawn().expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("address");
    let out = cmd(&["bench-client", kind, line.trim(), "1", mode, &size.to_string(), &count.to_string()])
        .output()
        .expect("client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    assert!(server.wait().expect("server").success());
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("nanoseconds")
}

/// Requests per second of the epoll echo server with `conns` connections.
fn epoll_run(t: Transport, mon: &Monitor, conns: usize, rounds: usize) -> f64 {
    let cmd = |args: &[&str]| {
        let mut c = Command::new(PROBE);
        die_with_parent(&mut c).args(args).env_remove("LD_PRELOAD").stdin(Stdio::null());
        if t == Transport::Ipcd {
            mon.under(&mut c);
        }
        c
    };
    let mut server = cmd(&["epoll-serve", &conns.to_string(), "level"])
        .env("IPCD_WORKLOAD_CPU", "0")
        .stdout(Stdio::piped())
        .spawn()
        .expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.as_mut().expect("stdout")).read_line(&mut line).expect("port");
    let out = cmd(&["epoll-load", line.trim(), &conns.to_string(), &rounds.to_string()])
        .env("IPCD_WORKLOAD_CPU", "1")
        .output()
        .expect("client");
    assert!(out.status.success(), "client: {}", String::from_utf8_lossy(&out.stderr));
    assert!(server.wait().expect("server").success());
    let ns: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().expect("nanoseconds");
    (conns * rounds) as f64 / (ns / 1e9)
}

/// Best of `reps` runs (least disturbed by the neighbours).
fn best(t: Transport, mon: &Monitor, mode: &str, size: usize, count: u64, reps: usize) -> f64 {
    (0..reps).map(|_| run(t, mon, mode, size, count)).fold(f64::INFINITY, f64::min)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let reps = if quick { 1 } else { 3 };
    let mon = Monitor::start(1 << 20);
    let all = [Transport::Tcp, Transport::Unix, Transport::Ipcd];

    println!("8-byte round trip (µs, best of {reps})");
    let mut rtt = Vec::new();
    for t in all {
        let n = if t == Transport::Ipcd { 1_000_000 } else { 20_000 } / scale;
        let us = best(t, &mon, "rtt", 8, n, reps) / n as f64 / 1e3;
        rtt.push(us);
        println!("  {:<12} {:>9.3} µs   {:>7.1}× kernel TCP", t.name(), us, rtt[0] / us);
    }

    println!("8-byte streaming (million messages/s)");
    let mut msgs = Vec::new();
    for t in all {
        let n = if t == Transport::Ipcd { 20_000_000 } else { 1_000_000 } / scale;
        let rate = n as f64 / (best(t, &mon, "stream", 8, n, reps) / 1e9) / 1e6;
        msgs.push(rate);
        println!("  {:<12} {:>9.2} M/s  {:>7.1}× kernel TCP", t.name(), rate, rate / msgs[0]);
    }

    println!("64 KiB streaming (GB/s)");
    let mut gbs = Vec::new();
    for t in all {
        let n = 40_000 / scale;
        let rate = (n * 65536) as f64 / best(t, &mon, "stream", 65536, n, reps);
        gbs.push(rate);
        println!("  {:<12} {:>9.2} GB/s {:>7.1}× kernel TCP", t.name(), rate, rate / gbs[0]);
    }

    // An epoll echo server (the probe's, single-threaded, level-triggered).
    println!("epoll echo server (thousand requests/s, 8-byte requests)");
    for conns in [1usize, 64] {
        let mut rates = Vec::new();
        for t in [Transport::Tcp, Transport::Ipcd] {
            let rounds = if t == Transport::Ipcd { 200_000 / conns } else { 10_000 / conns.min(10) } / scale as usize;
            let rounds = rounds.max(10);
            let rate = (0..reps).map(|_| epoll_run(t, &mon, conns, rounds)).fold(0.0, f64::max);
            rates.push(rate);
            println!(
                "  {conns:>3} conn {:<12} {:>9.1} k/s  {:>6.1}× kernel TCP",
                t.name(),
                rate / 1e3,
                rate / rates[0]
            );
        }
    }

    // Calls on fds that are not ours: dd of 1-byte blocks, 2 calls a block.
    let blocks = 2_000_000 / scale;
    let dd = |preload: bool| {
        let mut c = Command::new("dd");
        c.args(["if=/dev/zero", "of=/dev/null", "bs=1", &format!("count={blocks}")]).stderr(Stdio::null());
        if preload {
            mon.under(&mut c);
        }
        let t = Instant::now();
        assert!(c.status().expect("dd").success());
        t.elapsed().as_nanos() as f64 / (2 * blocks) as f64
    };
    let plain = (0..3).map(|_| dd(false)).fold(f64::INFINITY, f64::min);
    let with = (0..3).map(|_| dd(true)).fold(f64::INFINITY, f64::min);
    println!("read/write on files (dd bs=1, ns per call)");
    println!(
        "  without library {plain:>8.1} ns\n  with library    {with:>8.1} ns   ({:+.1} ns per call)",
        with - plain
    );
}
