//! Whole programs under ipcd: a fortified C binary (the `_chk` entry points
//! and a socket made before `main`), and `ipcd run` of a test program.

use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipcd_monitor::client::MonitorClient;
use ipcd_tests::harness::{artifacts, die_with_parent, Monitor};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// Builds `c/<name>.c` as Debian builds packages (-O2 -D_FORTIFY_SOURCE=2).
fn build_c(name: &str) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c").join(format!("{name}.c"));
    let out = std::env::temp_dir().join(format!("ipcd-{name}-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-D_FORTIFY_SOURCE=2", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("run cc (scripts/setup.sh installs build-essential)");
    assert!(status.success(), "cc {}", src.display());
    out
}

fn imports(bin: &PathBuf) -> String {
    let out = Command::new("nm").args(["-D", "--undefined-only"]).arg(bin).output().expect("nm");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn fortified_c_program_runs_through_ipcd() {
    let bin = build_c("fortified");
    let syms = imports(&bin);
    for chk in ["__read_chk", "__recv_chk", "__recvfrom_chk"] {
        assert!(syms.contains(chk), "the build did not fortify ({chk} missing):\n{syms}");
    }
    let plain = Command::new(&bin).output().expect("run on the kernel");
    assert!(plain.status.success(), "on the kernel: {}", String::from_utf8_lossy(&plain.stderr));
    let mon = Monitor::start(64 * 1024);
    let mut cmd = Command::new(&bin);
    let out = mon.under(die_with_parent(&mut cmd)).output().expect("run under ipcd");
    let _ = std::fs::remove_file(&bin);
    assert!(out.status.success(), "under ipcd: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
    assert_eq!(mon.status().status.connects_total, 1, "the connection did not go through ipcd");
}

#[test]
fn ipcd_run_starts_a_monitor_and_accelerates_the_command() {
    let a = artifacts();
    let socket = format!("ipcd-run-{}", std::process::id());
    let mut cmd = Command::new(&a.ipcd);
    let out = die_with_parent(&mut cmd)
        .args(["run", "--socket", &socket, "--", PROBE, "check", "echo"])
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .output()
        .expect("ipcd run");
    // The monitor `ipcd run` started keeps serving; stop it whatever happens.
    let report = MonitorClient::connect(&socket).and_then(|mut c| c.status());
    let _ = MonitorClient::connect(&socket).and_then(|mut c| c.stop());
    assert!(out.status.success(), "ipcd run: {}", String::from_utf8_lossy(&out.stderr));
    let report = report.expect("the monitor started by ipcd run answers");
    assert!(report.status.connects_total >= 1, "{:?}", report.status);

    // The command's exit status comes back.
    let mut cmd = Command::new(&a.ipcd);
    let out = die_with_parent(&mut cmd)
        .args(["run", "--socket", &socket, "--", PROBE, "check", "no-such-check"])
        .stdin(Stdio::null())
        .output()
        .expect("ipcd run");
    let _ = MonitorClient::connect(&socket).and_then(|mut c| c.stop());
    assert_eq!(out.status.code(), Some(1));
}

/// `ipcd run` becomes the command: a SIGTERM sent to it reaches the
/// command (it once stayed in `ipcd run`, and the command ran on), and the
/// monitor it started is not the command's child (the command would reap
/// it, or hear of its exit).
#[test]
fn ipcd_run_becomes_the_command() {
    let a = artifacts();
    let socket = format!("ipcd-run-exec-{}", std::process::id());
    let mut cmd = Command::new(&a.ipcd);
    let mut child = die_with_parent(&mut cmd)
        .args(["run", "--socket", &socket, "--", "sleep", "60"])
        .env_remove("LD_PRELOAD")
        .stdin(Stdio::null())
        .spawn()
        .expect("ipcd run");
    let pid = child.id();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_to_string(format!("/proc/{pid}/comm")).map_or(true, |c| c.trim() != "sleep") {
        assert!(Instant::now() < deadline, "ipcd run did not become the command");
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = MonitorClient::connect(&socket).and_then(|mut c| c.status());
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    let monitor = report.expect("the monitor started by ipcd run answers").status.monitor_pid;
    let stat = std::fs::read_to_string(format!("/proc/{monitor}/stat")).unwrap_or_default();
    let _ = MonitorClient::connect(&socket).and_then(|mut c| c.stop());
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    // Field 4 of /proc/PID/stat, after the parenthesised name.
    let ppid: u32 =
        stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0);
    assert_ne!(ppid, pid, "the monitor is the command's child");
}

/// Runs `ipcd bench` with `args` and `--out` a fresh directory; returns
/// its output and, if it wrote them, results.json and chart.svg (the
/// directory is removed).
fn bench(args: &[&str], tag: &str) -> (std::process::Output, Option<String>, Option<String>) {
    let a = artifacts();
    let out_dir = std::env::temp_dir().join(format!("ipcd-bench-{tag}-{}", std::process::id()));
    let mut cmd = Command::new(&a.ipcd);
    let out = die_with_parent(&mut cmd)
        .arg("bench")
        .args(args)
        .arg("--out")
        .arg(&out_dir)
        .stdin(Stdio::null())
        .output()
        .expect("ipcd bench");
    let json = std::fs::read_to_string(out_dir.join("results.json")).ok();
    let svg = std::fs::read_to_string(out_dir.join("chart.svg")).ok();
    // The PNG beside it (a font is installed by scripts/setup.sh).
    if svg.is_some() {
        let png = std::fs::read(out_dir.join("chart.png")).unwrap_or_default();
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000, "no chart.png beside chart.svg");
    }
    let _ = std::fs::remove_dir_all(&out_dir);
    (out, json, svg)
}

/// The rows of a results.json.
fn rows(json: &str) -> Vec<&str> {
    json.lines().filter(|l| l.contains("\"workload\"")).collect()
}

#[test]
fn ipcd_bench_quick_writes_every_result() {
    let (out, json, svg) = bench(&["--quick"], "test");
    assert!(out.status.success(), "ipcd bench: {}", String::from_utf8_lossy(&out.stderr));
    let (json, svg) = (json.expect("results.json"), svg.expect("chart.svg"));
    // Every workload ran on kernel TCP and on ipcd (values, not nulls).
    let rows = rows(&json);
    assert!(rows.len() >= 20, "too few rows:\n{json}");
    for r in &rows {
        assert!(!r.contains("\"kernel_tcp\": null") && !r.contains("\"ipcd\": null"), "a run failed: {r}");
    }
    // Three bars a group, a group per workload and metric (p99.9 and
    // rows saying what another says are left to the table).
    assert!(svg.starts_with("<svg") && svg.matches("<rect").count() > rows.len(), "chart has no bars");
    for label in ["kernel TCP", "Unix socket", "round trip 8 B", "connection setup, 1 client thread(s)", "×"] {
        assert!(svg.contains(label), "chart without {label:?}");
    }
    assert!(!svg.contains("p99.9"), "p99.9 is left to the table");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("ipcd gain") && table.contains("round trip 8 B"), "{table}");
    assert!(table.contains("scaling: 8 pair(s)") && table.contains("CPU per message"), "{table}");
    assert!(table.contains("idle connections") && table.contains("kB/conn"), "{table}");
}

#[test]
fn ipcd_bench_only_runs_the_groups_asked_for() {
    let (out, json, _) = bench(&["--quick", "--only", "latency"], "only");
    assert!(out.status.success(), "ipcd bench: {}", String::from_utf8_lossy(&out.stderr));
    let json = json.expect("results.json");
    let rows = rows(&json);
    // p50, p99 and p99.9 of 8 B and 1 KiB, nothing else.
    assert_eq!(rows.len(), 6, "{json}");
    assert!(rows.iter().all(|r| r.contains("round trip")), "{json}");

    // A group that does not exist is refused before anything runs.
    let (out, json, _) = bench(&["--only", "latency,strem"], "bad");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown group `strem`"), "{out:?}");
    assert!(json.is_none());
}
