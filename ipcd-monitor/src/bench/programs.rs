//! Real programs in `ipcd bench`, where installed: redis-benchmark against
//! redis-server, sockperf, iperf3, and wrk against nginx, each run on
//! kernel TCP and then under ipcd (both ends), server on core 0 and client
//! on core 1 alike.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{alternate, Progress, Row, Runner, Transport, TCP_IPCD};

/// A server, killed on drop.
struct Bg(Child);

impl Drop for Bg {
    /// SIGTERM first, so that a server with workers (nginx's master) ends
    /// them before it exits: SIGKILL would leave them holding the port.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: a signal to our own child, not yet reaped (so the pid
            // is still its own).
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether `program` is on PATH.
fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}

fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// Whether the kernel lists a TCP socket listening on `port` (under ipcd
/// too: a listener keeps its kernel socket for clients not under ipcd).
/// Asking this way makes no connection, which some servers would count.
pub fn listening(port: u16) -> bool {
    let hex = format!(":{port:04X} ");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                cols.len() > 3 && format!("{} ", cols[1]).ends_with(&hex) && cols[3] == "0A"
            })
        })
    })
}

impl Runner<'_> {
    /// `program` on `core`, under ipcd for the ipcd transport.
    fn program(&self, t: Transport, core: &str, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("taskset");
        c.args(["-c", core, program]).args(args).env_remove("LD_PRELOAD").stdin(Stdio::null());
        if t == Transport::Ipcd {
            c.env("LD_PRELOAD", &self.opts.preload).env("IPCD_SOCKET", &self.monitor.socket);
        }
        c
    }

    /// Starts a server on core 0 and waits until it listens on `port`.
    fn server(&self, t: Transport, program: &str, args: &[&str], port: u16) -> Result<Bg, String> {
        let child = self
            .program(t, "0", program, args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("{program}: {e}"))?;
        let mut bg = Bg(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(port) {
            if Instant::now() > deadline || bg.0.try_wait().ok().flatten().is_some() {
                return Err(format!("{program} did not listen on port {port}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(bg)
    }

    /// Runs a client on core 1; its standard output.
    fn client(&self, t: Transport, program: &str, args: &[&str]) -> Result<String, String> {
        let out = self.program(t, "1", program, args).output().map_err(|e| format!("{program}: {e}"))?;
        if !out.status.success() {
            return Err(format!("{program} {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The number after `key` in `text`.
fn number_after(text: &str, key: &str) -> Result<f64, String> {
    let rest = text.split(key).nth(1).ok_or_else(|| format!("no {key:?} in the output:\n{text}"))?;
    let num: String = rest
        .trim_start_matches(|c: char| c.is_whitespace() || c == '"' || c == ':' || c == '=' || c == ',')
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == 'e' || *c == '+')
        .collect();
    num.parse().map_err(|_| format!("no number after {key:?} in the output:\n{text}"))
}

struct Plan<'a> {
    reps: usize,
    secs: &'a str,
    quick: bool,
}

/// One workload: its programs, its rows (name, metric, unit, higher is
/// better) and how to measure them.
struct Workload {
    programs: &'static [&'static str],
    rows: &'static [(&'static str, &'static str, &'static str, bool)],
    measure: fn(&Runner, Transport, &Plan) -> Result<Vec<f64>, String>,
}

const WORKLOADS: [Workload; 4] = [
    Workload {
        programs: &["redis-server", "redis-benchmark"],
        rows: &[
            ("redis-benchmark SET, 50 clients", "requests/s", "k/s", true),
            ("redis-benchmark GET, 50 clients", "requests/s", "k/s", true),
            ("redis-benchmark SET, -P 16", "requests/s", "k/s", true),
            ("redis-benchmark GET, -P 16", "requests/s", "k/s", true),
            ("redis-benchmark SET, -k 0 (reconnects)", "requests/s", "k/s", true),
        ],
        measure: redis,
    },
    Workload {
        programs: &["sockperf"],
        rows: &[
            ("sockperf ping-pong (half round trip)", "p50", "µs", false),
            ("sockperf ping-pong (half round trip)", "p99", "µs", false),
            ("sockperf throughput, 14 B", "messages/s", "M/s", true),
        ],
        measure: sockperf,
    },
    Workload { programs: &["iperf3"], rows: &[("iperf3", "throughput", "Gbit/s", true)], measure: iperf3 },
    Workload {
        programs: &["nginx", "wrk"],
        rows: &[
            ("nginx + wrk, keep-alive, 16 connections", "requests/s", "k/s", true),
            ("nginx + wrk, Connection: close", "requests/s", "k/s", true),
            ("nginx, 2 workers, Connection: close", "requests/s", "k/s", true),
        ],
        measure: nginx,
    },
];

/// The first program of `w` that is not installed.
fn missing(w: &Workload) -> Option<&'static str> {
    w.programs.iter().copied().find(|p| !installed(p))
}

/// How many runs [`run`] makes, for the progress count.
pub(super) fn steps(reps: usize) -> usize {
    WORKLOADS.iter().filter(|w| missing(w).is_none()).count() * reps * TCP_IPCD.len()
}

/// Runs every installed workload and appends its rows.
pub(super) fn run(runner: &Runner, quick: bool, reps: usize, progress: &mut Progress, rows: &mut Vec<Row>) {
    let plan = Plan { reps, secs: if quick { "1" } else { "3" }, quick };
    for w in &WORKLOADS {
        if let Some(p) = missing(w) {
            eprintln!("{p} is not installed: its workload is left out (scripts/setup.sh installs it)");
            continue;
        }
        let what = w.rows[0].0;
        let res = alternate(plan.reps, &TCP_IPCD, progress, what, |t| (w.measure)(runner, t, &plan));
        for (k, &(workload, metric, unit, higher_better)) in w.rows.iter().enumerate() {
            let scale = if unit == "k/s" { 1e-3 } else { 1.0 };
            let values = res.get(k).copied().unwrap_or([None; 3]).map(|v| v.map(|x| x * scale));
            rows.push(Row { workload: workload.to_string(), metric, unit, higher_better, values });
        }
    }
}

/// The requests/s of `test` in redis-benchmark's CSV output.
fn redis_rps(csv: &str, test: &str) -> Result<f64, String> {
    number_after(csv, &format!("\"{test}\","))
}

fn redis(r: &Runner, t: Transport, plan: &Plan) -> Result<Vec<f64>, String> {
    let port = free_port()?;
    let p = port.to_string();
    let args = ["--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"];
    let _srv = r.server(t, "redis-server", &args, port)?;
    let mut v = Vec::new();
    let (n1, n16) = if plan.quick { ("20000", "200000") } else { ("100000", "1000000") };
    for (pipeline, n) in [("1", n1), ("16", n16)] {
        let out =
            r.client(t, "redis-benchmark", &["-p", &p, "-t", "set,get", "-n", n, "-P", pipeline, "-q", "--csv"])?;
        v.push(redis_rps(&out, "SET")?);
        v.push(redis_rps(&out, "GET")?);
    }
    // A new connection per request from 50 clients at once: set-up under
    // concurrency, as a pool that does not keep connections sees it.
    let out = r.client(t, "redis-benchmark", &["-p", &p, "-t", "set", "-n", n1, "-k", "0", "-q", "--csv"])?;
    v.push(redis_rps(&out, "SET")?);
    Ok(v)
}

fn sockperf(r: &Runner, t: Transport, plan: &Plan) -> Result<Vec<f64>, String> {
    let port = free_port()?;
    let p = port.to_string();
    let _srv = r.server(t, "sockperf", &["server", "--tcp", "-i", "127.0.0.1", "-p", &p], port)?;
    // sockperf sizes its bookkeeping from --mps (600 k messages/s without
    // it, and `max` did not do either) and aborts when ipcd goes faster;
    // a rate above what either transport reaches does not limit it. (5 M/s
    // did: ipcd's throughput row sat at 4.93 M/s, 5.5-7.2 without the cap;
    // 50 M/s costs sockperf no more memory.)
    let common = ["--tcp", "-i", "127.0.0.1", "-p", &p, "-t", plan.secs, "--mps=50000000"];
    let pp = r.client(t, "sockperf", &[&["ping-pong"][..], &common].concat())?;
    let tp = r.client(t, "sockperf", &[&["throughput"][..], &common].concat())?;
    Ok(vec![
        number_after(&pp, "percentile 50.000 =")?,
        number_after(&pp, "percentile 99.000 =")?,
        number_after(&tp, "Message Rate is")? / 1e6,
    ])
}

fn iperf3(r: &Runner, t: Transport, plan: &Plan) -> Result<Vec<f64>, String> {
    let port = free_port()?;
    let p = port.to_string();
    let _srv = r.server(t, "iperf3", &["-s", "-p", &p], port)?;
    let out = r.client(t, "iperf3", &["-c", "127.0.0.1", "-p", &p, "-t", plan.secs, "-J"])?;
    let received = out.split("\"sum_received\"").nth(1).ok_or("no sum_received in iperf3's report")?;
    Ok(vec![number_after(received, "\"bits_per_second\":")? / 1e9])
}

/// A directory with a page and an nginx configuration serving it on
/// `port`: one process, or a master and `workers` processes sharing the
/// listener (nginx's usual set-up).
fn nginx_dir(port: u16, workers: usize) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("ipcd-bench-nginx-{}-{port}", std::process::id()));
    let io = |e: std::io::Error| format!("nginx directory: {e}");
    std::fs::create_dir_all(dir.join("html")).map_err(io)?;
    std::fs::write(dir.join("html/index.html"), "<html><body>ipcd bench</body></html>\n").map_err(io)?;
    let procs = if workers == 0 {
        "master_process off;".to_string()
    } else {
        format!("master_process on;\nworker_processes {workers};")
    };
    let conf = format!(
        "daemon off;\n{procs}\nerror_log {d}/error.log error;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; keepalive_requests 1000000;\n\
           client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{port}; root {d}/html; }} }}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).map_err(io)?;
    Ok(dir)
}

fn nginx(r: &Runner, t: Transport, plan: &Plan) -> Result<Vec<f64>, String> {
    let d = format!("-d{}s", plan.secs);
    let mut v = Vec::new();
    // One process, then a master and two workers; wrk's 16 connections
    // kept alive (one process only), then one per request.
    for workers in [0, 2] {
        let port = free_port()?;
        let dir = nginx_dir(port, workers)?;
        let conf = dir.join("nginx.conf");
        let result = (|| {
            let _srv = r.server(t, "nginx", &["-e", "stderr", "-c", &path(&conf)], port)?;
            let url = format!("http://127.0.0.1:{port}/index.html");
            if workers == 0 {
                v.push(number_after(&r.client(t, "wrk", &["-t1", "-c16", &d, &url])?, "Requests/sec:")?);
            }
            let close = r.client(t, "wrk", &["-t1", "-c16", &d, "-H", "Connection: close", &url])?;
            v.push(number_after(&close, "Requests/sec:")?);
            Ok::<_, String>(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result?;
    }
    Ok(v)
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_read_from_each_programs_output() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\"\n\"SET\",\"76923.08\",\"0.3\"\n\"GET\",\"80000.00\",\"0.3\"\n";
        assert_eq!(redis_rps(csv, "GET"), Ok(80000.0));
        assert_eq!(redis_rps(csv, "SET"), Ok(76923.08));
        let pp = "sockperf: ---> percentile 99.000 =    5.640\nsockperf: ---> percentile 50.000 =    2.934\n";
        assert_eq!(number_after(pp, "percentile 50.000 ="), Ok(2.934));
        let tp = "sockperf: Summary: Message Rate is 907397 [msg/sec]\n";
        assert_eq!(number_after(tp, "Message Rate is"), Ok(907397.0));
        assert_eq!(number_after("Requests/sec:  51234.56\nTransfer/sec: 1MB", "Requests/sec:"), Ok(51234.56));
        assert_eq!(number_after("\"bits_per_second\":\t7.8e+10,", "\"bits_per_second\":"), Ok(7.8e10));
        assert!(number_after("nothing here", "Requests/sec:").is_err());
    }

    #[test]
    fn listening_sees_a_listener_and_not_a_closed_port() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening(port));
        drop(l);
        assert!(!listening(port));
    }
}
