//! `ipcd bench`: the same test programs over kernel TCP loopback, a kernel
//! Unix stream socket and ipcd, in one run, alternating so all three share
//! the machine's noise; medians, ratios to kernel TCP, JSON and a chart.
//! Real programs (`programs`) and the scaling series (`scaling`) have files
//! of their own.

mod chart;
mod footprint;
pub mod net;
mod programs;
mod queues;
mod scaling;
pub mod workload;

pub use programs::listening;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Options of `ipcd bench`.
#[derive(Debug, Clone)]
pub struct Options {
    /// Fewer and shorter runs.
    pub quick: bool,
    /// Where results.json and chart.svg go.
    pub out: PathBuf,
    /// The `ipcd` binary: it starts a private monitor and runs the
    /// workloads (`ipcd workload …`, see [`workload`]).
    pub ipcd: PathBuf,
    /// `libipcd_preload.so`.
    pub preload: PathBuf,
    /// The groups of workloads to run; empty runs them all.
    pub only: Vec<Group>,
}

/// A group of workloads, for `ipcd bench --only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Round trips of 8 B and 1 KiB.
    Latency,
    /// One-way streaming of every write size.
    Stream,
    /// Connection set-up, one and eight client threads.
    Setup,
    /// The epoll echo server.
    Epoll,
    /// Real programs (redis, sockperf, iperf3, nginx).
    Programs,
    /// Throughput as connection pairs grow.
    Scaling,
    /// Requests a monitor takes per second in each `--queues` mode.
    Monitor,
    /// Memory and fds per idle connection.
    Footprint,
}

impl Group {
    /// Every group, in the order a run takes them.
    pub const ALL: [Group; 8] = [
        Group::Latency,
        Group::Stream,
        Group::Setup,
        Group::Epoll,
        Group::Programs,
        Group::Scaling,
        Group::Monitor,
        Group::Footprint,
    ];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Group::Latency => "latency",
            Group::Stream => "stream",
            Group::Setup => "setup",
            Group::Epoll => "epoll",
            Group::Programs => "programs",
            Group::Scaling => "scaling",
            Group::Monitor => "monitor",
            Group::Footprint => "footprint",
        }
    }
}

impl std::str::FromStr for Group {
    type Err = String;

    fn from_str(s: &str) -> Result<Group, String> {
        Group::ALL.into_iter().find(|g| g.name() == s).ok_or_else(|| {
            let names: Vec<_> = Group::ALL.iter().map(|g| g.name()).collect();
            format!("unknown group `{s}` (one of: {})", names.join(", "))
        })
    }
}

impl Options {
    fn runs(&self, g: Group) -> bool {
        self.only.is_empty() || self.only.contains(&g)
    }
}

/// A transport a workload runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Transport {
    Tcp,
    Unix,
    Ipcd,
}

/// The transports real programs can use (a Unix socket needs other programs).
const TCP_IPCD: [Transport; 2] = [Transport::Tcp, Transport::Ipcd];

impl Transport {
    /// The socket kind the workloads take (ipcd is TCP under the library).
    fn kind(self) -> &'static str {
        if self == Transport::Unix {
            "unix"
        } else {
            "tcp"
        }
    }

    fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "kernel_tcp",
            Transport::Unix => "unix",
            Transport::Ipcd => "ipcd",
        }
    }
}

/// One row of the results: a metric of a workload on each transport.
#[derive(Debug, Clone)]
struct Row {
    workload: String,
    metric: &'static str,
    unit: &'static str,
    /// Higher is better (rates) or lower is better (latencies).
    higher_better: bool,
    /// Median per transport, in `Transport` order; `None`: not run.
    values: [Option<f64>; 3],
}

impl Row {
    /// A rate in thousands per second from the first value of each run.
    fn thousands_per_s(res: &[[Option<f64>; 3]], workload: String, metric: &'static str) -> Row {
        let values = res.first().copied().unwrap_or([None; 3]).map(|v| v.map(|x| x / 1e3));
        Row { workload, metric, unit: "k/s", higher_better: true, values }
    }

    /// How many times better ipcd is than kernel TCP.
    fn ratio(&self) -> Option<f64> {
        let (k, i) = (self.values[0]?, self.values[2]?);
        Some(if self.higher_better { i / k } else { k / i })
    }
}

/// A private monitor for the run, stopped on drop.
struct Monitor {
    child: Child,
    socket: String,
}

impl Monitor {
    fn start(ipcd: &Path) -> Result<Monitor, String> {
        Monitor::start_with(ipcd, "", &[])
    }

    /// A monitor on a socket named after this run and `name`, with more
    /// `ipcd daemon` flags.
    fn start_with(ipcd: &Path, name: &str, flags: &[&str]) -> Result<Monitor, String> {
        let socket = format!("ipcd-bench-{}{name}", std::process::id());
        let child = Command::new(ipcd)
            .args(["daemon", "--socket", &socket])
            .args(flags)
            .env("IPCD_LOG", "warn")
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start a monitor: {e}"))?;
        let m = Monitor { child, socket };
        for _ in 0..500 {
            if crate::client::MonitorClient::connect(&m.socket).is_ok() {
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err("the benchmark's monitor did not come up".into())
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = crate::client::MonitorClient::connect(&self.socket).and_then(|mut c| c.stop());
        let _ = self.child.wait();
    }
}

/// `ipcd workload ARGS…` over transport `t` (ipcd: under the library,
/// served by the monitor on `socket`), stdin empty.
fn workload_cmd(opts: &Options, t: Transport, socket: &str, args: &[&str]) -> Command {
    let mut c = Command::new(&opts.ipcd);
    c.arg("workload").args(args).env_remove("LD_PRELOAD").stdin(Stdio::null()).stderr(Stdio::inherit());
    if t == Transport::Ipcd {
        c.env("LD_PRELOAD", &opts.preload).env("IPCD_SOCKET", socket);
    }
    c
}

struct Runner<'a> {
    opts: &'a Options,
    monitor: Monitor,
}

impl Runner<'_> {
    fn cmd(&self, t: Transport, args: &[&str]) -> Command {
        workload_cmd(self.opts, t, &self.monitor.socket, args)
    }

    /// Starts a server that prints its address, runs the client, returns
    /// the client's output.
    /// Server on core 0, client on core 1, for every transport alike.
    fn pair(&self, t: Transport, server: &[&str], client: impl FnOnce(&str) -> Vec<String>) -> Result<String, String> {
        let mut srv = self
            .cmd(t, server)
            .env("IPCD_WORKLOAD_CPU", "0")
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("server: {e}"))?;
        let mut line = String::new();
        BufReader::new(srv.stdout.as_mut().ok_or("server stdout")?).read_line(&mut line).map_err(|e| e.to_string())?;
        let args = client(line.trim());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.cmd(t, &args).env("IPCD_WORKLOAD_CPU", "1").output().map_err(|e| format!("client: {e}"))?;
        let _ = srv.wait();
        if !out.status.success() {
            return Err(format!("{} {args:?} failed", t.name()));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Round-trip latency percentiles (ns).
    fn latency(&self, t: Transport, size: usize, count: u64) -> Result<Vec<f64>, String> {
        let kind = t.kind();
        let out = self.pair(t, &["bench-server", kind, "0"], |addr| {
            ["bench-client", kind, addr, "1", "lat", &size.to_string(), &count.to_string()].map(String::from).to_vec()
        })?;
        out.split_whitespace().map(|v| v.parse::<f64>().map_err(|e| e.to_string())).collect()
    }

    /// One-way streaming: nanoseconds for `count` writes of `size` (mode
    /// `stream`: one buffer each; `writev`: four equal pieces in one call).
    fn stream(&self, t: Transport, mode: &str, size: usize, count: u64) -> Result<f64, String> {
        let kind = t.kind();
        let out = self.pair(t, &["bench-server", kind, "0"], |addr| {
            ["bench-client", kind, addr, "1", mode, &size.to_string(), &count.to_string()].map(String::from).to_vec()
        })?;
        out.parse().map_err(|e| format!("{e}"))
    }

    /// Connections per second (connect, 1 byte each way, close).
    fn setup(&self, t: Transport, count: usize, threads: usize) -> Result<f64, String> {
        let out = self.pair(t, &["conn-serve", &count.to_string()], |port| {
            ["conn-client", port, &count.to_string(), &threads.to_string()].map(String::from).to_vec()
        })?;
        let ns: f64 = out.parse().map_err(|e| format!("{e}"))?;
        Ok(count as f64 / (ns / 1e9))
    }

    /// Requests per second of the epoll echo server.
    fn epoll(&self, t: Transport, conns: usize, rounds: usize) -> Result<f64, String> {
        let out = self.pair(t, &["epoll-serve", &conns.to_string(), "level"], |port| {
            ["epoll-load", port, &conns.to_string(), &rounds.to_string()].map(String::from).to_vec()
        })?;
        let ns: f64 = out.parse().map_err(|e| format!("{e}"))?;
        Ok((conns * rounds) as f64 / (ns / 1e9))
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

/// Runs `f` `reps` times per transport, alternating transports, and keeps
/// the median of each.
fn alternate(
    reps: usize,
    transports: &[Transport],
    progress: &mut Progress,
    what: &str,
    mut f: impl FnMut(Transport) -> Result<Vec<f64>, String>,
) -> Vec<[Option<f64>; 3]> {
    let mut samples: Vec<[Vec<f64>; 3]> = Vec::new();
    for _ in 0..reps {
        for &t in transports {
            progress.step(what, t);
            match f(t) {
                Ok(vals) => {
                    if samples.len() < vals.len() {
                        samples.resize_with(vals.len(), Default::default);
                    }
                    for (k, v) in vals.into_iter().enumerate() {
                        samples[k][t as usize].push(v);
                    }
                }
                Err(e) => eprintln!("\n  {what} over {}: {e}", t.name()),
            }
        }
    }
    samples.into_iter().map(|s| s.map(median)).collect()
}

struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    fn step(&mut self, what: &str, t: Transport) {
        self.step_named(what, t.name());
    }

    fn step_named(&mut self, what: &str, how: &str) {
        self.done += 1;
        eprint!("\r[{:>3}/{}] {what:<32} {how:<12}", self.done, self.total);
        let _ = std::io::stderr().flush();
    }
}

/// Runs the whole benchmark and writes `results.json` and `chart.svg`.
// Long on purpose: one group of workloads after another, each a short loop over its sizes.
pub fn run(opts: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&opts.out).map_err(|e| format!("cannot create {}: {e}", opts.out.display()))?;
    let runner = Runner { opts, monitor: Monitor::start(&opts.ipcd)? };
    let q = if opts.quick { 10 } else { 1 };
    let reps = if opts.quick { 3 } else { 5 };
    let all = [Transport::Tcp, Transport::Unix, Transport::Ipcd];
    let stream_sizes: [usize; 6] = [8, 64, 1024, 16384, 65536, 1 << 20];
    let steps = |g: Group, n: usize| if opts.runs(g) { n } else { 0 };
    let total = steps(Group::Latency, reps * 2 * 3)
        + steps(Group::Stream, reps * (stream_sizes.len() + 1) * 3)
        + steps(Group::Setup, reps * 2 * 2)
        + steps(Group::Epoll, reps * 3 * 2)
        + steps(Group::Programs, programs::steps(reps))
        + steps(Group::Scaling, scaling::steps(reps, all.len()))
        + steps(Group::Monitor, queues::steps(reps))
        + steps(Group::Footprint, footprint::steps(reps));
    let mut progress = Progress { done: 0, total };
    let mut rows = Vec::new();

    for size in [8usize, 1024].into_iter().filter(|_| opts.runs(Group::Latency)) {
        let res = alternate(reps, &all, &mut progress, &format!("round trip {size} B"), |t| {
            let n = if t == Transport::Ipcd { 200_000 } else { 10_000 } / q;
            runner.latency(t, size, n)
        });
        for (k, metric) in ["p50", "p99", "p99.9"].into_iter().enumerate() {
            let values = res.get(k).map_or([None; 3], |v| v.map(|x| x.map(|ns| ns / 1e3)));
            rows.push(Row {
                workload: format!("round trip {size} B"),
                metric,
                unit: "µs",
                higher_better: false,
                values,
            });
        }
    }
    for size in stream_sizes.into_iter().filter(|_| opts.runs(Group::Stream)) {
        let res = alternate(reps, &all, &mut progress, &format!("stream {size} B writes"), |t| {
            // About 64 MiB (ipcd: 512 MiB) or 1 M writes, whichever is fewer.
            let bytes: u64 = if t == Transport::Ipcd { 512 << 20 } else { 64 << 20 };
            let n = (bytes / size as u64).clamp(1, if t == Transport::Ipcd { 20_000_000 } else { 1_000_000 }) / q;
            let ns = runner.stream(t, "stream", size, n.max(1))?;
            Ok(vec![n as f64 / (ns / 1e9), (n * size as u64) as f64 / ns])
        });
        let name = format!("stream {size} B writes");
        let pick = |k: usize| res.get(k).copied().unwrap_or([None; 3]);
        rows.push(Row {
            workload: name.clone(),
            metric: "messages/s",
            unit: "M/s",
            higher_better: true,
            values: pick(0).map(|v| v.map(|x| x / 1e6)),
        });
        rows.push(Row { workload: name, metric: "throughput", unit: "GB/s", higher_better: true, values: pick(1) });
    }
    if opts.runs(Group::Stream) {
        // A writev of small pieces: one publication of the ring per call.
        let res = alternate(reps, &all, &mut progress, "writev 4 x 16 B", |t| {
            let n = if t == Transport::Ipcd { 10_000_000 } else { 1_000_000 } / q;
            let ns = runner.stream(t, "writev", 64, n)?;
            Ok(vec![n as f64 / (ns / 1e9)])
        });
        rows.push(Row {
            workload: "writev 4 x 16 B".into(),
            metric: "messages/s",
            unit: "M/s",
            higher_better: true,
            values: res.first().copied().unwrap_or([None; 3]).map(|v| v.map(|x| x / 1e6)),
        });
    }
    for threads in [1usize, 8].into_iter().filter(|_| opts.runs(Group::Setup)) {
        let res = alternate(reps, &TCP_IPCD, &mut progress, &format!("connection setup x{threads}"), |t| {
            let n = if opts.quick { 500 } else { 3000 };
            runner.setup(t, n, threads).map(|r| vec![r])
        });
        rows.push(Row::thousands_per_s(&res, format!("connection setup, {threads} client thread(s)"), "connections/s"));
    }
    for conns in [1usize, 16, 256].into_iter().filter(|_| opts.runs(Group::Epoll)) {
        let res = alternate(reps, &TCP_IPCD, &mut progress, &format!("epoll server {conns} conn"), |t| {
            let rounds = (if t == Transport::Ipcd { 200_000 } else { 10_000 } / conns.min(16) / q as usize).max(20);
            runner.epoll(t, conns, rounds).map(|r| vec![r])
        });
        rows.push(Row::thousands_per_s(&res, format!("epoll echo server, {conns} connection(s)"), "requests/s"));
    }
    if opts.runs(Group::Programs) {
        programs::run(&runner, opts.quick, reps, &mut progress, &mut rows);
    }
    if opts.runs(Group::Scaling) {
        scaling::run(&runner, opts.quick, reps, &all, &mut progress, &mut rows);
    }
    let monitor_rows =
        if opts.runs(Group::Monitor) { queues::run(&opts.ipcd, opts.quick, reps, &mut progress) } else { Vec::new() };
    if opts.runs(Group::Footprint) {
        footprint::run(opts, reps, &mut progress, &mut rows);
    }
    eprintln!();
    print_table(&rows);
    print_queue_table(&monitor_rows);
    let json = opts.out.join("results.json");
    std::fs::write(&json, to_json(&rows, &monitor_rows, opts.quick))
        .map_err(|e| format!("cannot write {}: {e}", json.display()))?;
    let (svg, png) = (opts.out.join("chart.svg"), opts.out.join("chart.png"));
    match chart::write(&rows, &run_info(opts.quick), &svg, &png)? {
        None => println!("\nraw results: {}\nchart:       {} and {}", json.display(), svg.display(), png.display()),
        Some(why) => println!("\nraw results: {}\nchart:       {} ({why})", json.display(), svg.display()),
    }
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 1.0 => format!("{x:.2}"),
        Some(x) => format!("{x:.3}"),
    }
}

fn print_table(rows: &[Row]) {
    println!(
        "{:<42} {:<14} {:>12} {:>12} {:>12} {:>10}",
        "workload", "metric", "kernel TCP", "unix", "ipcd", "ipcd gain"
    );
    for r in rows {
        let ratio = r.ratio().map_or("-".into(), |x| format!("{x:.1}×"));
        println!(
            "{:<42} {:<14} {:>12} {:>12} {:>12} {:>10}",
            r.workload,
            format!("{} ({})", r.metric, r.unit),
            fmt(r.values[0]),
            fmt(r.values[1]),
            fmt(r.values[2]),
            ratio
        );
    }
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite()).map_or("null".into(), |x| format!("{x}"))
}

/// What a result needs to be read later: the kernel release, the CPU
/// model, the cores this process may use, and the time of the run.
fn machine() -> (String, String, usize, u64) {
    // SAFETY: uname fills a zeroed utsname.
    let kernel = unsafe {
        let mut u: libc::utsname = std::mem::zeroed();
        libc::uname(&mut u);
        std::ffi::CStr::from_ptr(u.release.as_ptr()).to_string_lossy().into_owned()
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(str::trim)
                .map(String::from)
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let unix_time = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    (kernel, cpu, cores, unix_time)
}

/// The header of the chart: when, where, what build.
fn run_info(quick: bool) -> chart::Run {
    let (kernel, cpu, cores, unix_time) = machine();
    chart::Run {
        date: utc(unix_time),
        machine: format!("{cpu}, {cores} cores, Linux {kernel}"),
        build: format!("ipcd {} (commit {})", env!("CARGO_PKG_VERSION"), env!("IPCD_COMMIT")),
        quick,
    }
}

/// `YYYY-MM-DD HH:MM UTC` of a Unix time (the civil-from-days algorithm).
fn utc(t: u64) -> String {
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02} UTC", secs / 3600, secs % 3600 / 60)
}

/// The rows as JSON (written by hand: one flat array of records).
/// The monitor group's table: requests/s by mode, and each polling
/// mode's gain over the channel.
fn print_queue_table(rows: &[queues::QueueRow]) {
    if rows.is_empty() {
        return;
    }
    println!(
        "\n{:<42} {:<14} {:>12} {:>12} {:>12} {:>10}",
        "monitor requests (--queues)", "metric", "channel", "per-process", "shared", "best gain"
    );
    for r in rows {
        let best = r.rates[1].into_iter().chain(r.rates[2]).reduce(f64::max);
        let gain = best.zip(r.rates[0]).map_or("-".into(), |(b, c)| format!("{:.1}×", b / c));
        println!(
            "{:<42} {:<14} {:>12} {:>12} {:>12} {:>10}",
            format!("{} process(es) sending", r.clients),
            "requests (k/s)",
            fmt(r.rates[0].map(|x| x / 1e3)),
            fmt(r.rates[1].map(|x| x / 1e3)),
            fmt(r.rates[2].map(|x| x / 1e3)),
            gain
        );
    }
}

fn to_json(rows: &[Row], monitor: &[queues::QueueRow], quick: bool) -> String {
    let (kernel, cpu, cores, unix_time) = machine();
    let mut o = format!(
        "{{\n  \"quick\": {quick},\n  \"ipcd_version\": {},\n  \"commit\": {},\n  \"unix_time\": {unix_time},\n  \
         \"machine\": {{\"kernel\": {}, \"cpu\": {}, \"cores\": {cores}}},\n  \"results\": [\n",
        json_str(env!("CARGO_PKG_VERSION")),
        json_str(env!("IPCD_COMMIT")),
        json_str(&kernel),
        json_str(&cpu),
    );
    for (i, r) in rows.iter().enumerate() {
        o.push_str(&format!(
            "    {{\"workload\": {}, \"metric\": {}, \"unit\": {}, \"higher_is_better\": {}, \"kernel_tcp\": {}, \"unix\": {}, \"ipcd\": {}, \"ipcd_over_kernel\": {}}}{}\n",
            json_str(&r.workload),
            json_str(r.metric),
            json_str(r.unit),
            r.higher_better,
            json_num(r.values[0]),
            json_num(r.values[1]),
            json_num(r.values[2]),
            json_num(r.ratio()),
            if i + 1 < rows.len() { "," } else { "" }
        ));
    }
    o.push_str("  ],\n  \"monitor_queues\": [\n");
    for (i, r) in monitor.iter().enumerate() {
        o.push_str(&format!(
            "    {{\"clients\": {}, \"unit\": \"requests/s\", \"channel\": {}, \"per_process\": {}, \"shared\": {}}}{}\n",
            r.clients,
            json_num(r.rates[0]),
            json_num(r.rates[1]),
            json_num(r.rates[2]),
            if i + 1 < monitor.len() { "," } else { "" }
        ));
    }
    o.push_str("  ]\n}\n");
    o
}
