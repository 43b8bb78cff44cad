//! Fault injection: pairs of echo servers and clients stream seeded data
//! under ipcd while a driver kills clients, servers and the monitor with
//! SIGKILL at random moments and restarts the monitor. Checked: every byte
//! a client got back is right (a correct prefix of what it sent), every
//! process ends (no wait outlives its peer by more than its timeout), a
//! process waiting for a connection does not spin after its monitor died,
//! and the last monitor is left with no connection, process or fd once
//! everything is over. Seeded: `IPCD_FAULT_SEED` (printed on failure),
//! `IPCD_FAULT_SECS` (default 60).
//!
//! Processes are killed whichever monitor made their connection: one made
//! under a monitor killed since is ended for the survivor by the survivor
//! itself (see the preload library's `conn::peer`), as is one whose
//! process died just before its monitor could close it.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipcd_tests::data::Prng;
use ipcd_tests::harness::{cpu_ticks, die_with_parent, Monitor};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");
const RING_BYTES: u64 = 256 * 1024;

/// One server and its client.
struct Pair {
    server: Child,
    client: Child,
    /// When the first of the two ended (its peer must follow).
    first_end: Option<Instant>,
    client_done: bool,
    server_done: bool,
}

fn probe(mon: &Monitor, args: &[&str]) -> Command {
    let mut c = Command::new(PROBE);
    die_with_parent(&mut c).args(args).stdin(Stdio::null()).stderr(Stdio::null()).env("IPCD_LOG", "error");
    mon.under(&mut c);
    c
}

fn start_pair(mon: &Monitor, rng: &mut Prng) -> Pair {
    let mut server = probe(mon, &["serve", "1"]).stdout(Stdio::piped()).spawn().expect("server");
    let mut line = String::new();
    BufReader::new(server.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    let port = line.trim().to_string();
    let total = rng.range(1 << 20, 256 << 20).to_string();
    let seed = rng.next_u64().to_string();
    let client = probe(mon, &["fault-client", &port, &seed, &total]).stdout(Stdio::piped()).spawn().expect("client");
    Pair { server, client, first_end: None, client_done: false, server_done: false }
}

fn kill(c: &mut Child) {
    let _ = c.kill();
}

/// Which end of `p` still runs, with each of its threads' kernel wait
/// channel, for the failure message.
fn still_running(p: &Pair) -> String {
    let (who, pid) = if p.client_done { ("server", p.server.id()) } else { ("client", p.client.id()) };
    let mut threads = Vec::new();
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in dir.flatten() {
            let wchan = std::fs::read_to_string(t.path().join("wchan")).unwrap_or_default();
            threads.push(format!("{}:{wchan}", t.file_name().to_string_lossy()));
        }
    }
    format!("the {who} (pid {pid}, threads {})", threads.join(" "))
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

#[test]
fn survivors_get_correct_bytes_and_nothing_hangs_spins_or_leaks() {
    let seed: u64 = std::env::var("IPCD_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let secs: u64 = std::env::var("IPCD_FAULT_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let ctx = format!("IPCD_FAULT_SEED={seed} IPCD_FAULT_SECS={secs}");
    let mut rng = Prng::new(seed);
    let mut mon = Monitor::start(RING_BYTES);
    // A process that only waits for a connection, all along.
    let mut waiter = probe(&mon, &["poll-accept"]).stdout(Stdio::piped()).spawn().expect("waiter");
    let mut line = String::new();
    BufReader::new(waiter.stdout.take().expect("stdout")).read_line(&mut line).expect("port");
    let waiter_port: u16 = line.trim().parse().expect("waiter port");
    let waiter_start = cpu_ticks(waiter.id());
    let start = Instant::now();
    let (mut pairs, mut ended, mut whole, mut cut, mut bytes) = (Vec::<Pair>::new(), 0, 0, 0, 0u64);
    let (mut kills, mut restarts, mut unconnected) = (0, 0, 0);
    while start.elapsed() < Duration::from_secs(secs) || !pairs.is_empty() {
        let running = start.elapsed() < Duration::from_secs(secs);
        while running && pairs.len() < 3 {
            pairs.push(start_pair(&mon, &mut rng));
        }
        // The driver's pace: a fault every few tens of milliseconds.
        std::thread::sleep(Duration::from_millis(rng.range(10, 120) as u64));
        let roll = rng.range(0, 99);
        if running && !pairs.is_empty() {
            let k = rng.range(0, pairs.len() - 1);
            let p = &mut pairs[k];
            match roll {
                0..=19 => {
                    kill(&mut p.client);
                    kills += 1;
                }
                20..=39 => {
                    kill(&mut p.server);
                    kills += 1;
                }
                _ => {}
            }
        }
        if running && (40..=47).contains(&roll) {
            mon.restart(RING_BYTES);
            restarts += 1;
        }
        for p in &mut pairs {
            if !p.client_done {
                if let Some(status) = p.client.try_wait().expect("wait client") {
                    p.client_done = true;
                    p.first_end.get_or_insert_with(Instant::now);
                    let mut out = String::new();
                    if let Some(mut o) = p.client.stdout.take() {
                        let _ = std::io::Read::read_to_string(&mut o, &mut out);
                    }
                    let code = status.code();
                    assert!(code != Some(3), "a client got a wrong byte ({out}) [{ctx}]");
                    assert!(code != Some(4), "a client waited past its timeout ({out}) [{ctx}]");
                    let last = out.lines().last().unwrap_or("");
                    if let Some(n) = last.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()) {
                        bytes += n;
                        if last.starts_with("whole") {
                            whole += 1;
                        } else {
                            cut += 1;
                        }
                    }
                    if !out.starts_with("connected") {
                        // Killed before its connect returned: its server
                        // waits in accept for ever, as on Linux.
                        kill(&mut p.server);
                        unconnected += 1;
                    }
                }
            }
            if !p.server_done && p.server.try_wait().expect("wait server").is_some() {
                p.server_done = true;
                p.first_end.get_or_insert_with(Instant::now);
            }
            if let Some(t) = p.first_end {
                assert!(
                    t.elapsed() < Duration::from_secs(20) || (p.client_done && p.server_done),
                    "one end of a pair ended 20 s ago and the other still runs: {} [{ctx}]",
                    still_running(p)
                );
            }
        }
        let before = pairs.len();
        pairs.retain(|p| !(p.client_done && p.server_done));
        ended += before - pairs.len();
    }
    // The waiter slept through every monitor death.
    let used = cpu_ticks(waiter.id()) - waiter_start;
    let limit = start.elapsed().as_secs() * 10 + 20;
    assert!(used < limit, "the waiting process used {used} ticks in {:?} [{ctx}]", start.elapsed());
    let c = std::net::TcpStream::connect(("127.0.0.1", waiter_port)).expect("reach the waiter");
    let _ = waiter.wait();
    drop(c);
    // Nothing left in the last monitor.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = mon.status();
        // The one process left is the status client asking.
        if st.status.connections == 0 && st.status.processes <= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "left in the monitor: {st:?} [{ctx}]");
        std::thread::sleep(Duration::from_millis(20));
    }
    let fds = fd_count(mon.pid());
    eprintln!(
        "faults [{ctx}]: {ended} pairs, {kills} kills, {restarts} monitor restarts, {whole} whole and {cut} cut \
         streams ({unconnected} clients killed before they connected), {bytes} bytes checked; monitor fds at the \
         end {fds}"
    );
    assert!(ended > 0 && whole > 0, "no stream finished [{ctx}]");
    // The listener, epoll, stop bell, the log's stderr and the status client's
    // channel, and the standard streams: a handful, whatever ran before.
    assert!(fds <= 12, "the monitor holds {fds} fds with nothing left [{ctx}]");
}
