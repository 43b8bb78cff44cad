//! `ipcd`: the command line.

// The doc comments of the command-line types are clap's `--help` text,
// written for a terminal, not rustdoc markup.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use ipcd_monitor::client::{MonitorClient, StatusReport};
use ipcd_monitor::config::{default_socket_name, Config, Queues, DEFAULT_RING_BYTES};
use ipcd_monitor::daemon::Daemon;
use ipcd_monitor::log::{self, Level};
use ipcd_monitor::metrics::comm;
use ipcd_monitor::settings_report;
use ipcd_proto::settings::Set;

/// ipcd: TCP between processes on one host, over shared memory.
#[derive(Parser)]
#[command(name = "ipcd", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the monitor in the foreground (one per user and network namespace).
    Daemon {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// Capacity of each ring of a connection, in bytes (a power of
        /// two) [default: the config file's `[monitor] ring_bytes`, else
        /// 1048576].
        #[arg(long, value_parser = parse_ring_bytes)]
        ring_bytes: Option<u64>,
        /// Also broker shared memory between processes of different users
        /// (by default such pairs use the kernel; also `[monitor]
        /// cross_uid` in the config file).
        #[arg(long)]
        cross_uid: bool,
        /// Busy-poll on one pinned core instead of sleeping in epoll (also
        /// `[monitor] poll` in the config file).
        #[arg(long)]
        poll: bool,
        /// How requests without fds or replies reach the monitor:
        /// `channel` (each process's Unix socket, the monitor sleeps until
        /// one is readable), `per-process` (a ring per process in shared
        /// memory, polled on a core of the monitor's own) or `shared` (a
        /// ring per process and one queue of process numbers all share,
        /// polled likewise). The polling modes imply `--poll` [default:
        /// the config file's `[monitor] queues`, else channel].
        #[arg(long, value_parser = Queues::parse)]
        queues: Option<Queues>,
        /// Serve `ipcd metrics` over HTTP at this address (`GET /metrics`,
        /// e.g. 127.0.0.1:9464, for a Prometheus server to scrape); off by
        /// default, since the page names processes and pids to whoever
        /// reaches it [default: the config file's `[monitor]
        /// metrics_address`].
        #[arg(long, value_name = "ADDR:PORT")]
        metrics_address: Option<std::net::SocketAddr>,
    },
    /// The config files: `ipcd config show` prints the settings a program
    /// gets from /etc/ipcd/ipcd.toml, the user's ipcd.toml, the file
    /// IPCD_CONFIG names and the environment, and where each came from.
    Config {
        #[command(subcommand)]
        what: ConfigCmd,
    },
    /// Run a command under ipcd, starting a monitor if none answers; the
    /// command then replaces `ipcd run` (same pid, signals, exit status).
    Run {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Show processes, listeners and connections of the monitor.
    Status {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Instead of one report, a line every SECS seconds with the rates
        /// over the interval, as `vmstat` prints: connects brokered and
        /// sent to the kernel, bytes sent on the live connections (one
        /// that closed takes its bytes with it), connections, processes.
        #[arg(long, value_name = "SECS", value_parser = parse_interval)]
        watch: Option<f64>,
        /// With --watch: stop after N lines [default: never].
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Print the monitor's counters and what it holds in the Prometheus
    /// (OpenMetrics) text format: connects and fallbacks by reason,
    /// processes, listeners, connections, and per process its connections
    /// and bytes each way (labelled with pid and command name).
    Metrics {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
    },
    /// Write the bytes of ipcd connections to a pcap file, with TCP/IP
    /// headers made up for them, for `tcpdump -r` or Wireshark: every
    /// connection the monitor has or makes while it runs, or those of one
    /// process or port. Runs until SIGINT/SIGTERM or --duration; costs
    /// the traced programs nothing (it reads their rings from the side),
    /// and bytes a ring wrapped over before it looked are counted lost.
    Trace {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// Only connections of this process.
        #[arg(long)]
        pid: Option<u32>,
        /// Only connections with this port at either end.
        #[arg(long)]
        port: Option<u16>,
        /// The pcap file to write.
        #[arg(short = 'w', value_name = "FILE")]
        file: PathBuf,
        /// Stop after SECS seconds.
        #[arg(long, value_name = "SECS", value_parser = parse_interval)]
        duration: Option<f64>,
    },
    /// Ask the monitor to broker a connect to ADDR and print its answer
    /// (a debugging aid; the listener sees a real incoming connection).
    #[command(hide = true)]
    DebugConnect {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// Destination, e.g. 127.0.0.1:8080 or [::1]:8080.
        addr: std::net::SocketAddr,
    },
    /// Claim the connection end passed with the socket open at FD and
    /// print the monitor's answer (a debugging aid for passed connections).
    #[command(hide = true)]
    DebugClaim {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
        /// An open fd of this process: the received kernel socket.
        #[arg(long)]
        fd: i32,
    },
    /// Measure ipcd against kernel TCP and a Unix socket on this machine:
    /// the same programs over each, alternating runs; prints a table of
    /// medians and writes results.json and chart.svg.
    Bench {
        /// Fewer, shorter runs (about a minute).
        #[arg(long)]
        quick: bool,
        /// Directory for results.json and chart.svg.
        #[arg(long, default_value = "ipcd-bench")]
        out: PathBuf,
        /// Run only these groups of workloads, comma-separated: latency,
        /// stream, setup, epoll, programs, scaling, monitor, footprint [default: all].
        #[arg(long, value_delimiter = ',', value_name = "GROUPS")]
        only: Vec<ipcd_monitor::bench::Group>,
    },
    /// Run one of `ipcd bench`'s workload programs (bench-server,
    /// bench-client, conn-serve, conn-client, epoll-serve, epoll-load,
    /// monitor-client); `ipcd bench` runs them itself.
    #[command(hide = true)]
    Workload {
        /// The workload and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Write the man pages (ipcd.1 and one per command, ipcd-status.1 …)
    /// into DIR, from the same definitions as --help.
    #[command(hide = true)]
    Man {
        /// Where to write them.
        #[arg(long, default_value = ".")]
        out: PathBuf,
    },
    /// Stop the monitor.
    Stop {
        /// Abstract socket name of the monitor [default: ipcd-<uid>].
        #[arg(long, env = "IPCD_SOCKET")]
        socket: Option<String>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the effective settings for a program: its profile, spin,
    /// spinners, batching and log level with their sources, the rules
    /// that may apply to it, the monitor's settings, and every setting
    /// not understood with what is used instead.
    Show {
        /// The program (a name looked up in PATH, or a path) [default:
        /// settings for any program].
        #[arg(long)]
        program: Option<String>,
    },
}

/// A `--watch` interval: seconds, at least 0.01.
fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.01 => Ok(v),
        _ => Err(format!("'{s}' is not an interval in seconds (at least 0.01)")),
    }
}

fn parse_ring_bytes(s: &str) -> Result<u64, String> {
    let n: u64 = s.parse().map_err(|e| format!("{e}"))?;
    if n.is_power_of_two() && (4096..=ipcd_ring::MAX_CAPACITY).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be a power of two between 4096 and {}", ipcd_ring::MAX_CAPACITY))
    }
}

fn main() -> ExitCode {
    log::init_from_env();
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Daemon { socket, ring_bytes, cross_uid, poll, queues, metrics_address } => {
            let file = settings_report::load();
            for m in &file.invalid {
                ipcd_monitor::log!(Level::Warn, "msg=\"config: {}\"", m.replace('"', "'"));
            }
            let m = &file.monitor;
            let from_file = file_value(&m.ring_bytes, |n| parse_ring_bytes(&n.to_string()), DEFAULT_RING_BYTES);
            let queues_from_file = file_value(&m.queues, |q| Queues::parse(q), "channel");
            let queues = queues.or(queues_from_file).unwrap_or(Queues::Channel);
            let metrics_from_file = file_value(&m.metrics_address, |a| a.parse(), "none (metrics not served)");
            let cfg = Config {
                socket: socket.unwrap_or_else(default_socket_name),
                ring_bytes: ring_bytes.or(from_file).unwrap_or(DEFAULT_RING_BYTES),
                cross_uid: cross_uid || m.cross_uid.as_ref().is_some_and(|s| s.value),
                poll: poll || m.poll.as_ref().is_some_and(|s| s.value) || queues != Queues::Channel,
                queues,
                metrics_address: metrics_address.or(metrics_from_file),
                ..Config::default()
            };
            daemon(cfg)
        }
        Cmd::Config { what: ConfigCmd::Show { program } } => {
            let path = program.as_deref().map(settings_report::program_path);
            let names: Vec<&str> = path.iter().map(String::as_str).chain(program.as_deref()).collect();
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
            print!("{}", settings_report::report(&settings_report::load(), &names, cores));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Run { socket, command } => run(&socket.unwrap_or_else(default_socket_name), &command),
        Cmd::Status { socket, json: _, watch: Some(secs), count } => {
            watch(&socket.unwrap_or_else(default_socket_name), secs, count)
        }
        Cmd::Status { socket, json, .. } => status(&socket.unwrap_or_else(default_socket_name), json),
        Cmd::Metrics { socket } => metrics(&socket.unwrap_or_else(default_socket_name)),
        Cmd::Bench { quick, out, only } => bench(quick, out, only),
        Cmd::Workload { args } => match ipcd_monitor::bench::workload::run(&args) {
            Some(Ok(())) => Ok(ExitCode::SUCCESS),
            Some(Err(e)) => Err(format!("workload {}: {e}", args.join(" "))),
            None => Err(format!("no workload named {:?}", args[0])),
        },
        Cmd::Man { out } => man(&out),
        Cmd::Trace { socket, pid, port, file, duration } => {
            let opts = ipcd_monitor::tracer::Options {
                socket: socket.unwrap_or_else(default_socket_name),
                pid: pid.unwrap_or(0),
                port: port.unwrap_or(0),
                out: file,
                duration: duration.map(Duration::from_secs_f64),
            };
            ipcd_monitor::tracer::run(&opts).map(|s| {
                eprintln!(
                    "ipcd trace: {} connections, {} bytes written to {}, {} bytes lost",
                    s.connections,
                    s.bytes,
                    opts.out.display(),
                    s.lost
                );
                ExitCode::SUCCESS
            })
        }
        Cmd::Stop { socket } => stop(&socket.unwrap_or_else(default_socket_name)),
        Cmd::DebugClaim { socket, fd } => debug_claim(&socket.unwrap_or_else(default_socket_name), fd),
        Cmd::DebugConnect { socket, addr } => debug_connect(&socket.unwrap_or_else(default_socket_name), addr),
    };
    match result {
        Ok(code) => code,
        Err(msg) => {
            eprintln!("ipcd: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// `ipcd man`: a page for `ipcd` and one for each visible command.
fn man(out: &Path) -> Result<ExitCode, String> {
    use clap::CommandFactory;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, out).map_err(|e| format!("writing man pages to {}: {e}", out.display()))?;
    Ok(ExitCode::SUCCESS)
}

/// A `[monitor]` setting of the config file, parsed; one that does not
/// parse is reported with what is used `instead` (and `None` returned).
fn file_value<V, T, E: std::fmt::Display>(
    set: &Option<Set<V>>,
    parse: impl FnOnce(&V) -> Result<T, E>,
    instead: impl std::fmt::Display,
) -> Option<T> {
    let s = set.as_ref()?;
    parse(&s.value)
        .map_err(|e| {
            // Quotes in the reason would end the log's quoted field.
            let why = format!("{}: {e}; using {instead}", s.origin).replace('"', "'");
            ipcd_monitor::log!(Level::Warn, "msg=\"config: {why}\"");
        })
        .ok()
}

fn daemon(cfg: Config) -> Result<ExitCode, String> {
    let metrics = cfg.metrics_address.map(|a| (a, cfg.socket.clone()));
    let mut d = Daemon::bind(cfg).map_err(|e| e.to_string())?;
    if let Some((addr, socket)) = metrics {
        let bound = ipcd_monitor::metrics_http::spawn(addr, socket)
            .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
        ipcd_monitor::log!(Level::Info, "msg=\"metrics served\" url=\"http://{bound}/metrics\"");
    }
    // Bound: clients connecting from now on are answered.
    if let Err(e) = ipcd_monitor::notify::notify("READY=1") {
        eprintln!("ipcd: cannot tell the service manager the monitor is ready: {e}");
    }
    d.run().map_err(|e| format!("monitor failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

/// Connects to the monitor, starting one in the background if none answers.
fn ensure_monitor(socket: &str) -> Result<(), String> {
    if MonitorClient::connect(socket).is_ok() {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ipcd binary: {e}"))?;
    let log_path = std::env::temp_dir().join(format!("{socket}.log"));
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(["daemon", "--socket", socket])
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?);
    cmd.stderr(log_file);
    // SAFETY: between fork and exec, only async-signal-safe calls. The
    // child leaves our session (the monitor outlives this command and its
    // terminal) and forks again: the monitor runs in the grandchild, which
    // is no child of the program `ipcd run` becomes, so the program never
    // reaps it or hears of its exit.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut middle = cmd.spawn().map_err(|e| format!("cannot start the monitor: {e}"))?;
    let _ = middle.wait();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if MonitorClient::connect(socket).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Err(format!("the monitor did not answer on @{socket} within 5 s; see {}", log_path.display()))
}

fn bench(quick: bool, out: PathBuf, only: Vec<ipcd_monitor::bench::Group>) -> Result<ExitCode, String> {
    let ipcd = std::env::current_exe().map_err(|e| format!("cannot find the ipcd binary: {e}"))?;
    let opts = ipcd_monitor::bench::Options { quick, out, ipcd, preload: preload_path()?, only };
    ipcd_monitor::bench::run(&opts)?;
    Ok(ExitCode::SUCCESS)
}

fn preload_path() -> Result<PathBuf, String> {
    if let Ok(p) = std::env::var("IPCD_PRELOAD") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the ipcd binary: {e}"))?;
    // Beside the binary (a build tree), or the installed layout:
    // `<prefix>/bin/ipcd` and `<prefix>/lib/ipcd/libipcd_preload.so`.
    let beside = exe.with_file_name("libipcd_preload.so");
    let installed = exe.parent().and_then(Path::parent).map(|p| p.join("lib/ipcd/libipcd_preload.so"));
    match [Some(beside.clone()), installed].into_iter().flatten().find(|p| p.exists()) {
        Some(lib) => Ok(lib),
        None => Err(format!(
            "{} not found (nor lib/ipcd/ beside the binary's directory); build it with `cargo build --release -p ipcd-preload`, or set IPCD_PRELOAD",
            beside.display()
        )),
    }
}

fn run(socket: &str, command: &[String]) -> Result<ExitCode, String> {
    let lib = preload_path()?;
    if let Err(e) = ensure_monitor(socket) {
        // No monitor means kernel sockets, never a failure of the command.
        eprintln!("ipcd: {e}; running with kernel sockets only");
    }
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{} {old}", lib.display()),
        _ => lib.display().to_string(),
    };
    // The command replaces this process: its pid, signals and exit status
    // are its own (a SIGTERM to `ipcd run` reaches it; as a container's
    // first process it is the init). exec returns only on failure.
    let e = Command::new(&command[0]).args(&command[1..]).env("LD_PRELOAD", preload).env("IPCD_SOCKET", socket).exec();
    let code = if e.kind() == std::io::ErrorKind::NotFound { 127 } else { 126 };
    eprintln!("ipcd: cannot run {}: {e}", command[0]);
    Ok(ExitCode::from(code))
}

/// The monitor on `socket`, or the error every command prints.
fn monitor(socket: &str) -> Result<MonitorClient, String> {
    MonitorClient::connect(socket).map_err(|e| format!("no monitor answers on @{socket}: {e}"))
}

/// Prints the monitor's status report as `render` writes it (`ipcd status`
/// as a table or JSON, `ipcd metrics`).
fn print_report(socket: &str, render: impl FnOnce(&StatusReport) -> String) -> Result<ExitCode, String> {
    let r = monitor(socket)?.status().map_err(|e| format!("status failed: {e}"))?;
    let _ = std::io::stdout().write_all(render(&r).as_bytes());
    Ok(ExitCode::SUCCESS)
}

fn status(socket: &str, json: bool) -> Result<ExitCode, String> {
    print_report(socket, |r| if json { to_json(r) } else { to_table(r) })
}

/// `ipcd metrics`: one scrape's worth of OpenMetrics text.
fn metrics(socket: &str) -> Result<ExitCode, String> {
    print_report(socket, |r| ipcd_monitor::metrics::render(r, |pid| comm(pid).unwrap_or_default()))
}

/// `ipcd status --watch SECS`: a header, then a line of rates per
/// interval (`count` lines, or until interrupted).
fn watch(socket: &str, secs: f64, count: Option<u64>) -> Result<ExitCode, String> {
    let mut c = monitor(socket)?;
    let sample = |c: &mut MonitorClient| -> Result<(Instant, StatusReport), String> {
        let r = c.status().map_err(|e| format!("status failed: {e}"))?;
        Ok((Instant::now(), r))
    };
    let bytes = |r: &StatusReport| r.processes.iter().map(|p| p.sent).sum::<u64>();
    let (mut t0, mut r0) = sample(&mut c)?;
    println!(
        "{:>10} {:>12} {:>12} {:>14} {:>11} {:>9}",
        "time s", "brokered/s", "kernel/s", "MB/s live", "connections", "processes"
    );
    let mut lines = 0;
    while count.is_none_or(|n| lines < n) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let (t1, r1) = sample(&mut c)?;
        let dt = t1.duration_since(t0).as_secs_f64().max(1e-6);
        let rate = |a: u64, b: u64| b.saturating_sub(a) as f64 / dt;
        println!(
            "{:>10.1} {:>12.0} {:>12.0} {:>14.1} {:>11} {:>9}",
            r1.status.uptime_ms as f64 / 1000.0,
            rate(r0.status.connects_total, r1.status.connects_total),
            rate(r0.status.fallbacks_total, r1.status.fallbacks_total),
            rate(bytes(&r0), bytes(&r1)) / 1e6,
            r1.status.connections,
            r1.status.processes
        );
        (t0, r0) = (t1, r1);
        lines += 1;
    }
    Ok(ExitCode::SUCCESS)
}

fn stop(socket: &str) -> Result<ExitCode, String> {
    let mut c = monitor(socket)?;
    c.stop().map_err(|e| format!("stop failed: {e}"))?;
    Ok(ExitCode::SUCCESS)
}

fn debug_connect(socket: &str, addr: std::net::SocketAddr) -> Result<ExitCode, String> {
    let mut c = monitor(socket)?;
    let dest = match addr {
        std::net::SocketAddr::V4(a) => ipcd_proto::SockAddr::V4 { ip: a.ip().octets(), port: a.port() },
        std::net::SocketAddr::V6(a) => ipcd_proto::SockAddr::V6 {
            ip: a.ip().octets(),
            port: a.port(),
            flowinfo: a.flowinfo(),
            scope_id: a.scope_id(),
        },
    };
    let req = ipcd_proto::Request::Connect { dest, source: None, nonblocking: false };
    let (resp, fds) = c.call(&req, &[]).map_err(|e| format!("connect request failed: {e}"))?;
    println!("{resp:?} fds={}", fds.len());
    Ok(ExitCode::SUCCESS)
}

fn debug_claim(socket: &str, fd: i32) -> Result<ExitCode, String> {
    // SAFETY: F_GETFD only asks whether the fd is open.
    if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
        return Err(format!("fd {fd} is not open"));
    }
    let mut c = monitor(socket)?;
    // SAFETY: checked open above, and not closed while borrowed.
    let received = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let (resp, fds) =
        c.call(&ipcd_proto::Request::Claim, &[received]).map_err(|e| format!("claim request failed: {e}"))?;
    println!("{resp:?} fds={}", fds.len());
    Ok(ExitCode::SUCCESS)
}

fn to_table(r: &StatusReport) -> String {
    let s = &r.status;
    let mut out = format!(
        "monitor pid {}  up {:.1} s  processes {}  listeners {}  connections {}  segments {} KiB  brokered {} ({} reusing a segment, {} from a standby, {} renewed by their processes)  to kernel {}\n",
        s.monitor_pid,
        s.uptime_ms as f64 / 1000.0,
        s.processes,
        s.listeners,
        s.connections,
        s.segment_bytes / 1024,
        s.connects_total,
        s.reused_total,
        s.standby_total,
        s.renewed_total,
        s.fallbacks_total
    );
    let reasons: Vec<String> = ipcd_proto::Fallback::ALL
        .iter()
        .zip(s.fallbacks)
        .filter(|(_, n)| *n > 0)
        .map(|(f, n)| format!("{} {n}", f.name()))
        .collect();
    if !reasons.is_empty() {
        out.push_str(&format!("to kernel by reason: {}\n", reasons.join(", ")));
    }
    if !r.processes.is_empty() {
        out.push_str(&format!(
            "\n{:<24} {:>6} {:>11} {:>9} {:>14} {:>14} {:>9}\n",
            "process", "uid", "connections", "listeners", "bytes sent", "bytes received", "to kernel"
        ));
        for p in &r.processes {
            out.push_str(&format!(
                "{:<24} {:>6} {:>11} {:>9} {:>14} {:>14} {:>9}\n",
                process(p.pid),
                p.uid,
                p.connections,
                p.listeners,
                p.sent,
                p.received,
                p.to_kernel
            ));
        }
    }
    if !r.listeners.is_empty() {
        out.push_str(&format!(
            "\n{:<24} {:<28} {:>8} {:>8} {}\n",
            "process", "listening on", "backlog", "pending", "reuseport"
        ));
        for l in &r.listeners {
            out.push_str(&format!(
                "{:<24} {:<28} {:>8} {:>8} {}\n",
                process(l.pid),
                l.addr.to_string(),
                l.backlog,
                l.pending,
                if l.reuseport { "yes" } else { "no" }
            ));
        }
    }
    if !r.connections.is_empty() {
        out.push_str(&format!(
            "\n{:<16} {:<24} {:<24} {:<7} {:<24} {:<24} {:<7} {:>12} {:>12}\n",
            "conn", "process A", "address A", "state", "process B", "address B", "state", "bytes A→B", "bytes B→A"
        ));
        for c in &r.connections {
            let pid = |p: u32| if p == 0 { "-".to_string() } else { process(p) };
            out.push_str(&format!(
                "{:<16} {:<24} {:<24} {:<7} {:<24} {:<24} {:<7} {:>12} {:>12}\n",
                c.conn,
                pid(c.pids[0]),
                c.addrs[0].to_string(),
                c.states[0].name(),
                pid(c.pids[1]),
                c.addrs[1].to_string(),
                c.states[1].name(),
                c.bytes[0],
                c.bytes[1]
            ));
        }
    }
    out
}

/// `pid/name` as `netstat -p` prints it, or the pid alone.
fn process(pid: u32) -> String {
    match comm(pid) {
        Some(name) => format!("{pid}/{name}"),
        None => pid.to_string(),
    }
}

/// A string as a JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A process's command name as JSON (`null` if unknown).
fn json_comm(pid: u32) -> String {
    comm(pid).map_or_else(|| "null".to_string(), |n| json_str(&n))
}

fn to_json(r: &StatusReport) -> String {
    let s = &r.status;
    let listeners: Vec<String> = r
        .listeners
        .iter()
        .map(|l| {
            format!(
                r#"{{"pid":{},"name":{},"addr":"{}","backlog":{},"pending":{},"reuseport":{}}}"#,
                l.pid,
                json_comm(l.pid),
                l.addr,
                l.backlog,
                l.pending,
                l.reuseport
            )
        })
        .collect();
    let processes: Vec<String> = r
        .processes
        .iter()
        .map(|p| {
            format!(
                r#"{{"pid":{},"name":{},"uid":{},"connections":{},"listeners":{},"bytes_sent":{},"bytes_received":{},"to_kernel":{}}}"#,
                p.pid,
                json_comm(p.pid),
                p.uid,
                p.connections,
                p.listeners,
                p.sent,
                p.received,
                p.to_kernel
            )
        })
        .collect();
    let conns: Vec<String> = r
        .connections
        .iter()
        .map(|c| {
            format!(
                r#"{{"conn":{},"pids":[{},{}],"names":[{},{}],"addrs":["{}","{}"],"states":["{}","{}"],"bytes":[{},{}],"segment_bytes":{}}}"#,
                c.conn,
                c.pids[0],
                c.pids[1],
                json_comm(c.pids[0]),
                json_comm(c.pids[1]),
                c.addrs[0],
                c.addrs[1],
                c.states[0].name(),
                c.states[1].name(),
                c.bytes[0],
                c.bytes[1],
                c.segment_len
            )
        })
        .collect();
    format!(
        concat!(
            r#"{{"monitor_pid":{},"uptime_ms":{},"processes":{},"listeners":{},"connections":{},"#,
            r#""segment_bytes":{},"connects_total":{},"reused_total":{},"standby_total":{},"renewed_total":{},"#,
            r#""fallbacks_total":{},"fallbacks":{{{}}},"#,
            r#""process_list":[{}],"listener_list":[{}],"connection_list":[{}]}}"#,
            "\n"
        ),
        s.monitor_pid,
        s.uptime_ms,
        s.processes,
        s.listeners,
        s.connections,
        s.segment_bytes,
        s.connects_total,
        s.reused_total,
        s.standby_total,
        s.renewed_total,
        s.fallbacks_total,
        ipcd_proto::Fallback::ALL
            .iter()
            .zip(s.fallbacks)
            .map(|(f, n)| format!("{}:{n}", json_str(&f.name().replace(' ', "_"))))
            .collect::<Vec<_>>()
            .join(","),
        processes.join(","),
        listeners.join(","),
        conns.join(",")
    )
}
