//! Other projects' socket test suites, unchanged, run natively and then
//! under ipcd in the same job: CPython's socket tests, tokio's TCP
//! integration tests and TCP programs of the Linux kernel's selftests.
//! Every case that passes natively must pass under ipcd, and the monitor's
//! counters must show the ipcd run's connections went over shared memory.
//!
//! `scripts/suites.sh` (run by scripts/test.sh) fetches and builds tokio's
//! tests and the kernel programs into `target/suites`; a suite that could
//! not be fetched skips and says so.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use ipcd_tests::harness::{die_with_parent, Monitor};

const RING_BYTES: u64 = 256 * 1024;

/// One suite at a time: their own timeouts assume the machine is theirs.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// What became of one test case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// Test case name to outcome.
type Results = BTreeMap<String, Outcome>;

fn suites_dir() -> PathBuf {
    ipcd_tests::harness::target_dir().join("suites")
}

fn skip(suite: &str, why: &str) {
    eprintln!("SKIPPED {suite}: {why}");
}

/// `cmd` under `timeout`, which kills its whole process group when time is
/// up, so a hang fails the case instead of the job.
fn timed(secs: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("timeout");
    die_with_parent(&mut cmd).args(["-k", "10", &secs.to_string()]).arg(program).stdin(Stdio::null());
    cmd
}

/// Prints both runs' counts and fails on any case that passed natively but
/// not under ipcd.
fn compare(suite: &str, native: &Results, ipcd: &Results) {
    let count = |r: &Results, o: Outcome| r.values().filter(|&&v| v == o).count();
    for (how, r) in [("native", native), ("ipcd", ipcd)] {
        eprintln!(
            "{suite} {how:>6}: {} passed, {} failed, {} skipped",
            count(r, Outcome::Pass),
            count(r, Outcome::Fail),
            count(r, Outcome::Skip)
        );
    }
    assert!(count(native, Outcome::Pass) > 0, "{suite}: nothing passed natively; the suite did not run");
    let lost: Vec<_> = native
        .iter()
        .filter(|(name, &o)| o == Outcome::Pass && ipcd.get(*name) != Some(&Outcome::Pass))
        .map(|(name, _)| format!("{name}: {:?}", ipcd.get(name)))
        .collect();
    assert!(lost.is_empty(), "{suite}: passes natively but not under ipcd:\n{}", lost.join("\n"));
}

/// Runs a suite natively, then under a fresh monitor; compares the two and
/// checks that at least `min_connects` connections went over shared memory.
fn native_then_ipcd(suite: &str, min_connects: u64, run: impl Fn(Option<&Monitor>) -> Results) {
    let native = run(None);
    let mon = Monitor::start(RING_BYTES);
    let ipcd = run(Some(&mon));
    compare(suite, &native, &ipcd);
    let st = mon.status().status;
    eprintln!(
        "{suite} under ipcd: {} connections over shared memory, {} to the kernel",
        st.connects_total, st.fallbacks_total
    );
    assert!(st.connects_total >= min_connects, "{suite}: few connections went through ipcd: {st:?}");
}

fn tail(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = err.lines().rev().take(30).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join("\n")
}

// ---- CPython -------------------------------------------------------------

const PYTHON_TESTS: [&str; 6] =
    ["test_socket", "test_selectors", "test_poll", "test_select", "test_epoll", "test_socketserver"];

/// The outcomes in a JUnit file of `python3 -m test --junit-xml`.
fn junit(xml: &str) -> Results {
    xml.split("<testcase ")
        .skip(1)
        .filter_map(|case| {
            let name = case.split("name=\"").nth(1)?.split('"').next()?.to_string();
            // A case's children end at the next case (or the suite's end).
            let body = case.split("</testcase>").next().unwrap_or(case);
            let outcome = if body.contains("<failure") || body.contains("<error") {
                Outcome::Fail
            } else if body.contains("<skipped") {
                Outcome::Skip
            } else {
                Outcome::Pass
            };
            Some((name, outcome))
        })
        .collect()
}

fn python_run(mon: Option<&Monitor>) -> Results {
    let how = if mon.is_some() { "ipcd" } else { "native" };
    let dir = std::env::temp_dir().join(format!("ipcd-cpython-{}-{how}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let xml = dir.join("results.xml");
    let mut cmd = timed(900, "python3");
    cmd.args(["-m", "test"]).args(PYTHON_TESTS).args(["-u", "network", "--timeout", "300", "--junit-xml"]);
    cmd.arg(&xml);
    // The VSOCK cases hang on this kind of VM, natively too.
    for pat in ["*VSOCK*", "*Vsock*", "*vsock*"] {
        cmd.args(["-i", pat]);
    }
    cmd.current_dir(&dir).env_remove("LD_PRELOAD");
    if let Some(m) = mon {
        m.under(&mut cmd);
    }
    let out = cmd.output().expect("run python3 -m test");
    let text = std::fs::read_to_string(&xml)
        .unwrap_or_else(|e| panic!("CPython {how}: no results ({e}); exit {}\n{}", out.status, tail(&out)));
    let _ = std::fs::remove_dir_all(&dir);
    junit(&text)
}

#[test]
fn cpython_socket_tests_pass_under_ipcd_as_natively() {
    let _alone = alone();
    let has = Command::new("python3").args(["-c", "import test.test_socket"]).output();
    if !has.is_ok_and(|o| o.status.success()) {
        return skip("CPython", "python3 or its test package (libpython3.X-testsuite) is not installed");
    }
    native_then_ipcd("CPython", 50, python_run);
}

// ---- tokio ---------------------------------------------------------------

/// `test NAME ... ok|FAILED|ignored` lines of a libtest run.
fn libtest(prefix: &str, stdout: &str) -> Results {
    stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("test ")?;
            let (name, verdict) = rest.rsplit_once(" ... ")?;
            let o = match verdict.trim() {
                "ok" => Outcome::Pass,
                "FAILED" => Outcome::Fail,
                v if v.starts_with("ignored") => Outcome::Skip,
                _ => return None,
            };
            Some((format!("{prefix}::{name}"), o))
        })
        .collect()
}

fn tokio_run(dir: &Path, tests: &[String], mon: Option<&Monitor>) -> Results {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let runner_var = format!("CARGO_TARGET_{}_UNKNOWN_LINUX_GNU_RUNNER", std::env::consts::ARCH.to_uppercase());
    let mut all = Results::new();
    for t in tests {
        let mut cmd = timed(300, &cargo);
        cmd.args(["test", "--locked", "--features", "full", "--test", t])
            .current_dir(dir)
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("RUSTFLAGS")
            .env_remove("LD_PRELOAD");
        if let Some(m) = mon {
            // Cargo's target runner: the library goes to the test binary only.
            let a = &m.artifacts;
            cmd.env(runner_var.as_str(), format!("env LD_PRELOAD={} IPCD_SOCKET={}", a.preload.display(), m.socket));
        }
        let out = cmd.output().expect("run cargo test");
        let r = libtest(t, &String::from_utf8_lossy(&out.stdout));
        if r.is_empty() {
            eprintln!("tokio {t}: no results (exit {})\n{}", out.status, tail(&out));
        }
        all.extend(r);
    }
    all
}

#[test]
fn tokio_tcp_tests_pass_under_ipcd_as_natively() {
    let _alone = alone();
    let dir = suites_dir().join("tokio");
    let Ok(list) = std::fs::read_to_string(dir.join("tests.txt")) else {
        return skip("tokio", "target/suites/tokio was not built (scripts/suites.sh could not fetch or build it)");
    };
    let tests: Vec<String> = list.lines().map(str::to_string).collect();
    native_then_ipcd("tokio", 20, |mon| tokio_run(&dir, &tests, mon));
}

// ---- Linux selftests/net -------------------------------------------------

/// Single-process programs and their arguments: exit status 0 is a pass.
const KERNEL_PROGRAMS: [(&str, &[&str]); 8] = [
    ("tcp_inq", &["-4"]),
    ("tcp_inq", &["-6"]),
    ("reuseport_addr_any", &[]),
    ("reuseport_dualstack", &[]),
    ("reuseaddr_conflict", &[]),
    ("socket", &[]),
    ("sk_connect_zero_addr", &[]),
    // nettest with both ends in one run (it forks the server).
    ("nettest", &["-B", "-r", "127.0.0.1", "-l", "127.0.0.1", "-t", "5", "-q"]),
];

/// How the test sees that a server of a pair is ready.
#[derive(Clone, Copy)]
enum Ready {
    /// It prints a line containing this.
    Says(&'static str),
    /// The kernel lists its listener (a test connection would be its client).
    Listens,
}

/// Programs run as a server and a client (each given `-p PORT`): program,
/// readiness, server and client arguments.
///
/// nettest counts reads, not messages, and each side stops after its `-n`
/// reads (default 1): both sides get the same count, and each message fits
/// one read (1023 bytes), or the run races with itself natively too (a
/// server that stops early resets a client still sending). msg_zerocopy's
/// receiver discards with `recv(MSG_TRUNC)`; with `-z` the sender reads
/// `MSG_ZEROCOPY` completions from the error queue.
const PAIRS: [(&str, Ready, &[&str], &[&str]); 6] = [
    (
        "nettest",
        Ready::Says("waiting for client"),
        &["-s", "-t", "10", "-l", "127.0.0.1"],
        &["-t", "10", "-r", "127.0.0.1"],
    ),
    (
        "nettest",
        Ready::Says("waiting for client"),
        &["-s", "-t", "10", "-l", "127.0.0.1", "-n", "5"],
        &["-t", "10", "-r", "127.0.0.1", "-L", "1000", "-n", "5"],
    ),
    (
        "nettest",
        Ready::Says("waiting for client"),
        &["-s", "-t", "10", "-6", "-l", "::1", "-n", "5"],
        &["-t", "10", "-6", "-r", "::1", "-L", "1000", "-n", "5"],
    ),
    (
        "msg_zerocopy",
        Ready::Listens,
        &["-4", "-t", "2", "-C", "0", "-S", "127.0.0.1", "-D", "127.0.0.1", "-r", "tcp"],
        &["-4", "-t", "1", "-C", "1", "-S", "127.0.0.1", "-D", "127.0.0.1", "tcp"],
    ),
    (
        "msg_zerocopy",
        Ready::Listens,
        &["-4", "-t", "2", "-C", "0", "-S", "127.0.0.1", "-D", "127.0.0.1", "-r", "tcp"],
        &["-4", "-t", "1", "-C", "1", "-S", "127.0.0.1", "-D", "127.0.0.1", "-z", "tcp"],
    ),
    (
        "msg_zerocopy",
        Ready::Listens,
        &["-6", "-t", "2", "-C", "0", "-S", "::1", "-D", "::1", "-r", "tcp"],
        &["-6", "-t", "1", "-C", "1", "-S", "::1", "-D", "::1", "-z", "tcp"],
    ),
];

fn kernel_cmd(dir: &Path, prog: &str, mon: Option<&Monitor>) -> Command {
    let mut cmd = timed(60, dir.join(prog));
    cmd.current_dir(dir).env_remove("LD_PRELOAD");
    if let Some(m) = mon {
        m.under(&mut cmd);
    }
    cmd
}

/// A port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn pair(dir: &Path, prog: &str, ready: Ready, server: &[&str], client: &[&str], mon: Option<&Monitor>) -> bool {
    let port = free_port().to_string();
    let mut srv = kernel_cmd(dir, prog, mon)
        .args(["-p", &port])
        .args(server)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("server of a pair");
    // Kept open until the pair is done: a server that logs to a closed
    // pipe dies of SIGPIPE.
    let mut out = BufReader::new(srv.stdout.take().expect("stdout"));
    let up = match ready {
        Ready::Says(what) => (&mut out).lines().map_while(Result::ok).any(|l| l.contains(what)),
        Ready::Listens => {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let p: u16 = port.parse().expect("port");
            while !ipcd_monitor::bench::listening(p) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ipcd_monitor::bench::listening(p)
        }
    };
    if !up {
        let _ = srv.kill();
        let _ = srv.wait();
        return false;
    }
    let cli = kernel_cmd(dir, prog, mon).args(["-p", &port]).args(client).output();
    let _ = std::io::copy(&mut out, &mut std::io::sink());
    let srv_ok = srv.wait().is_ok_and(|s| s.success());
    cli.is_ok_and(|o| o.status.success()) && srv_ok
}

fn kernel_run(dir: &Path, mon: Option<&Monitor>) -> Results {
    let mut r = Results::new();
    let verdict = |ok| if ok { Outcome::Pass } else { Outcome::Fail };
    for (prog, args) in KERNEL_PROGRAMS {
        if !dir.join(prog).exists() {
            continue;
        }
        let ok = kernel_cmd(dir, prog, mon).args(args).output().is_ok_and(|o| o.status.success());
        r.insert(format!("{prog} {}", args.join(" ")), verdict(ok));
    }
    for (prog, ready, server, client) in PAIRS {
        if dir.join(prog).exists() {
            let ok = pair(dir, prog, ready, server, client, mon);
            r.insert(format!("{prog} {} / {}", server.join(" "), client.join(" ")), verdict(ok));
        }
    }
    r
}

#[test]
fn kernel_selftests_pass_under_ipcd_as_natively() {
    let _alone = alone();
    let dir = suites_dir().join("kselftest");
    if !dir.join(".built").exists() {
        return skip("kernel selftests", "target/suites/kselftest was not built (no linux-source package?)");
    }
    // tcp_inq twice and the nettest pairs connect over TCP at least.
    native_then_ipcd("kernel selftests/net", 5, |mon| kernel_run(&dir, mon));
}
