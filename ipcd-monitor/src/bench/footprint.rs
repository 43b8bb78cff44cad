//! The footprint group of `ipcd bench`: what an idle connection costs in
//! memory and file descriptors. A server accepts and a client makes
//! connections (a byte echoed on each, so the rings' first pages are
//! touched as after a request), in two steps; the cost per connection is
//! the growth between the two steps over the connections added, so what
//! a process or a pair pays once (the library, the first segments) is
//! left out.
//!
//! Memory is the processes' proportional set size (shared pages split
//! between the processes that map them, so a segment mapped by client,
//! server and monitor counts once) and their page tables, plus the
//! kernel's slab (sockets, files, eventfds, memfd inodes), which is
//! system-wide: the group runs with nothing else of the benchmark, but a
//! program that lists processes' /proc/PID/fd meanwhile leaves about
//! 1 kB per fd there, which counts against whoever has more fds.
//! Kernel TCP and ipcd alternate, with a monitor of the group's own.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};

use super::{median, workload_cmd, Options, Progress, Row, Transport, TCP_IPCD};

/// How many runs [`run`] makes, for the progress count.
pub(super) fn steps(reps: usize) -> usize {
    reps * TCP_IPCD.len()
}

/// Memory at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Snapshot {
    /// Proportional set size and page tables of the processes, kB.
    pss_kb: u64,
    /// The kernel's slab, system-wide, kB.
    slab_kb: u64,
}

/// Open fds of the client and of all the processes (client, server,
/// monitor). Listing /proc/PID/fd makes an inode and a dentry per fd in
/// the slab, so fds are counted only before the first connection and
/// after the memory was read.
type Fds = (u64, u64);

/// kB per added connection between two snapshots.
fn kb_per_conn(a: Snapshot, b: Snapshot, added: usize) -> f64 {
    let d = |x: u64, y: u64| y as f64 - x as f64;
    (d(a.pss_kb, b.pss_kb) + d(a.slab_kb, b.slab_kb)) / added as f64
}

/// The value of `key` (a `Key:   123 kB` line) in a /proc file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))?;
    line[key.len() + 1..].split_whitespace().next()?.parse().ok()
}

fn open_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn snapshot(pids: &[u32]) -> Snapshot {
    let slab_kb = proc_kb("/proc/meminfo", "Slab").unwrap_or(0);
    let pss_kb = pids
        .iter()
        .map(|p| {
            proc_kb(&format!("/proc/{p}/smaps_rollup"), "Pss").unwrap_or(0)
                + proc_kb(&format!("/proc/{p}/status"), "VmPTE").unwrap_or(0)
        })
        .sum();
    Snapshot { pss_kb, slab_kb }
}

fn fds(pids: &[u32]) -> Fds {
    (open_fds(pids[0]), pids.iter().map(|&p| open_fds(p)).sum())
}

/// Connections the run makes: `want`, or fewer if the fd limit (which the
/// children inherit) cannot hold them. ipcd takes three fds per connection
/// today in each process and in the monitor; the hard limit is raised
/// where allowed (`CAP_SYS_RESOURCE`).
fn connections(want: usize) -> usize {
    let need = (want * 4 + 1024) as libc::rlim_t;
    // SAFETY: get/setrlimit on live structs.
    let hard = unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl);
        if rl.rlim_max < need {
            let up = libc::rlimit { rlim_cur: rl.rlim_cur, rlim_max: need };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                rl.rlim_max = need;
            }
        }
        rl.rlim_max
    };
    want.min((hard.saturating_sub(1024) / 4) as usize).max(100)
}

/// Runs the group: memory per connection, the client's fds per
/// connection, and the fds of client, server and monitor together.
pub(super) fn run(opts: &Options, reps: usize, progress: &mut Progress, rows: &mut Vec<Row>) {
    let total = connections(if opts.quick { 2_000 } else { 10_000 });
    let first = total / 10;
    let monitor = match super::Monitor::start_with(&opts.ipcd, "-footprint", &[]) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("\n  footprint: {e}");
            return;
        }
    };
    let mut samples: [[Vec<f64>; 3]; 3] = Default::default();
    for _ in 0..reps {
        for t in TCP_IPCD {
            progress.step(&format!("{total} idle connections"), t);
            let mon = (t == Transport::Ipcd).then(|| monitor.child.id());
            match measure(opts, t, &monitor.socket, mon, total, first) {
                Ok(v) => {
                    for (k, x) in v.into_iter().enumerate() {
                        samples[k][t as usize].push(x);
                    }
                }
                Err(e) => eprintln!("\n  {total} idle connections over {}: {e}", t.name()),
            }
        }
    }
    let [mem, fds, all_fds] = samples.map(|s| s.map(median));
    let workload = format!("{total} idle connections");
    rows.push(Row { workload: workload.clone(), metric: "memory", unit: "kB/conn", higher_better: false, values: mem });
    rows.push(Row {
        workload: workload.clone(),
        metric: "client fds",
        unit: "fds/conn",
        higher_better: false,
        values: fds,
    });
    rows.push(Row { workload, metric: "all fds", unit: "fds/conn", higher_better: false, values: all_fds });
}

/// A child killed and reaped on drop, whatever happened.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Its stdin ending is its cue to close everything and exit.
        drop(self.0.stdin.take());
        for _ in 0..500 {
            if !matches!(self.0.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The next line `out` prints, trimmed.
fn line(out: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match out.read_line(&mut line) {
        Ok(0) => Err("ended early".into()),
        Ok(_) => Ok(line.trim().to_string()),
        Err(e) => Err(e.to_string()),
    }
}

fn go_on(stdin: &mut ChildStdin) -> Result<(), String> {
    stdin.write_all(b"\n").and_then(|()| stdin.flush()).map_err(|e| format!("client: {e}"))
}

/// One run over `t`: per connection added between `first` and `total`.
fn measure(
    opts: &Options,
    t: Transport,
    socket: &str,
    monitor: Option<u32>,
    total: usize,
    first: usize,
) -> Result<[f64; 3], String> {
    let spawn = |args: &[&str]| {
        workload_cmd(opts, t, socket, args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map(Reaped)
            .map_err(|e| format!("{}: {e}", args[0]))
    };
    let mut server = spawn(&["idle-serve", &total.to_string()])?;
    let port = line(&mut BufReader::new(server.0.stdout.take().ok_or("no stdout")?))?;
    let step = first.to_string();
    let mut client = spawn(&["idle-client", &port, &total.to_string(), &step])?;
    let pids: Vec<u32> = [Some(client.0.id()), Some(server.0.id()), monitor].into_iter().flatten().collect();
    let mut stdin = client.0.stdin.take().ok_or("no stdin")?;
    let mut out = BufReader::new(client.0.stdout.take().ok_or("no stdout")?);
    let (mut before, mut mem) = (None, Vec::new());
    loop {
        let held: usize = line(&mut out)?.parse().map_err(|e| format!("client said: {e}"))?;
        if held == 0 {
            before = Some(fds(&pids));
        }
        if held == first || held == total {
            mem.push((held, snapshot(&pids)));
        }
        if held >= total {
            break;
        }
        go_on(&mut stdin)?;
    }
    let after = fds(&pids);
    drop(stdin);
    let _ = out.lines().count();
    let (Some(before), [(a, sa), (b, sb)]) = (before, mem.as_slice()) else {
        return Err("the client skipped a step".into());
    };
    let per = |x: u64, y: u64| (y as f64 - x as f64) / total as f64;
    Ok([kb_per_conn(*sa, *sb, b - a), per(before.0, after.0), per(before.1, after.1)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_read_whole_not_as_a_prefix() {
        let path = std::env::temp_dir().join(format!("ipcd-footprint-{}", std::process::id()));
        std::fs::write(&path, "Rss:  90 kB\nPss_Anon:   5 kB\nPss:    7 kB\n").unwrap();
        let path = path.to_str().unwrap();
        assert_eq!(proc_kb(path, "Pss"), Some(7));
        assert_eq!(proc_kb(path, "Pss_Anon"), Some(5));
        assert_eq!(proc_kb(path, "Ps"), None);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn memory_per_connection_counts_processes_and_slab() {
        let a = Snapshot { pss_kb: 1_000, slab_kb: 50_000 };
        let b = Snapshot { pss_kb: 10_000, slab_kb: 41_000 };
        // The slab may shrink meanwhile (another program): it counts.
        assert_eq!(kb_per_conn(a, b, 100), 0.0);
        let b = Snapshot { pss_kb: 21_000, slab_kb: 60_000 };
        assert_eq!(kb_per_conn(a, b, 1_000), 30.0);
    }
}
