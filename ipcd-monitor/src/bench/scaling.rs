//! Scaling in `ipcd bench`: 1 to 8 connection pairs exchanging 8-byte
//! round trips at once, unpinned, on however many cores the machine has;
//! their total messages/s and the CPU time (user + system, all processes
//! of the run) per message.

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use super::{alternate, Progress, Row, Runner, Transport};

pub(super) const PAIRS: [usize; 4] = [1, 2, 4, 8];

/// User plus system time of this process's waited-for children, in ns.
fn children_cpu_ns() -> f64 {
    // SAFETY: getrusage fills a zeroed struct we own.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e9 + t.tv_usec as f64 * 1e3;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

impl Runner<'_> {
    /// `pairs` servers and clients at once, each client doing round trips
    /// for `ms`: (round trips per second in all, CPU ns per round trip).
    fn pairs(&self, t: Transport, pairs: usize, ms: u64) -> Result<Vec<f64>, String> {
        let kind = t.kind();
        let cpu_before = children_cpu_ns();
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..pairs {
            let mut s = self
                .cmd(t, &["bench-server", kind, "-"])
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| format!("server: {e}"))?;
            let mut line = String::new();
            BufReader::new(s.stdout.as_mut().ok_or("server stdout")?)
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            addrs.push(line.trim().to_string());
            servers.push(s);
        }
        let clients: Vec<_> = addrs
            .iter()
            .map(|a| {
                self.cmd(t, &["bench-client", kind, a, "-", "rtt-for", "8", &ms.to_string()])
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("client: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut rate = 0.0;
        let mut total = 0.0;
        for c in clients {
            let out = c.wait_with_output().map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&out.stdout);
            let mut it = text.split_whitespace().map(|v| v.parse::<f64>());
            let (Some(Ok(n)), Some(Ok(ns))) = (it.next(), it.next()) else {
                return Err(format!("client printed {text:?} ({})", out.status));
            };
            rate += n / (ns / 1e9);
            total += n;
        }
        for mut s in servers {
            let _ = s.wait();
        }
        Ok(vec![rate, (children_cpu_ns() - cpu_before) / total])
    }
}

/// How many runs [`run`] makes, for the progress count.
pub(super) fn steps(reps: usize, transports: usize) -> usize {
    PAIRS.len() * reps * transports
}

/// Runs the scaling series and appends its rows.
pub(super) fn run(
    runner: &Runner,
    quick: bool,
    reps: usize,
    transports: &[Transport],
    progress: &mut Progress,
    rows: &mut Vec<Row>,
) {
    let ms = if quick { 300 } else { 1500 };
    for pairs in PAIRS {
        let what = format!("scaling, {pairs} pair(s)");
        let res = alternate(reps, transports, progress, &what, |t| runner.pairs(t, pairs, ms));
        let pick = |k: usize| res.get(k).copied().unwrap_or([None; 3]);
        let workload = format!("scaling: {pairs} pair(s) of 8 B round trips");
        rows.push(Row {
            workload: workload.clone(),
            metric: "messages/s",
            unit: "M/s",
            higher_better: true,
            values: pick(0).map(|v| v.map(|x| x / 1e6)),
        });
        rows.push(Row {
            workload,
            metric: "CPU per message",
            unit: "µs",
            higher_better: false,
            values: pick(1).map(|v| v.map(|x| x / 1e3)),
        });
    }
}
