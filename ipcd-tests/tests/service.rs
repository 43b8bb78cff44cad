//! The monitor as a service: its readiness notification, the systemd
//! units shipped in `packaging/systemd`, and the Debian package.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipcd_monitor::client::MonitorClient;
use ipcd_tests::harness::{artifacts, die_with_parent, profile_dir};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ipcd-service-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// Started by a service manager (`NOTIFY_SOCKET` set), the monitor sends
/// `READY=1` once bound, and answers from then on.
#[test]
fn the_monitor_tells_the_service_manager_it_is_ready() {
    let dir = scratch("notify");
    let path = dir.join("notify");
    let manager = UnixDatagram::bind(&path).expect("bind the notify socket");
    manager.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let socket = format!("ipcd-notify-{}", std::process::id());
    let mut cmd = Command::new(artifacts().ipcd);
    let mut daemon = die_with_parent(&mut cmd)
        .args(["daemon", "--socket", &socket])
        .env("NOTIFY_SOCKET", &path)
        .stdin(Stdio::null())
        .spawn()
        .expect("ipcd daemon");
    let mut buf = [0u8; 64];
    let got = manager.recv(&mut buf);
    let answers = MonitorClient::connect(&socket).is_ok();
    let _ = daemon.kill();
    let _ = daemon.wait();
    let n = got.expect("no readiness notification within 10 s");
    assert_eq!(&buf[..n], b"READY=1");
    assert!(answers, "the monitor said it was ready but does not answer");
}

/// `unit` with `ExecStart` pointing at `ipcd` instead of `/usr/bin/ipcd`,
/// written into `dir`.
fn unit_for(unit: &Path, ipcd: &Path, dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(unit).expect("read unit");
    assert!(text.contains("ExecStart=/usr/bin/ipcd daemon"), "{}: ExecStart changed", unit.display());
    let out = dir.join("ipcd.service");
    std::fs::write(&out, text.replace("/usr/bin/ipcd", &ipcd.display().to_string())).expect("write unit");
    out
}

fn verify(unit: &Path, user: bool, runtime: &Path) -> std::process::Output {
    let mut cmd = Command::new("systemd-analyze");
    if user {
        // A user manager's checks need a runtime directory of their own.
        cmd.arg("--user").env("XDG_RUNTIME_DIR", runtime);
    }
    cmd.arg("verify").arg(unit).output().expect("run systemd-analyze (scripts/setup.sh installs systemd)")
}

/// Both units pass `systemd-analyze verify` with the binary in place, and
/// fail it when the binary is missing (the check can fail).
#[test]
fn the_systemd_units_verify() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../packaging/systemd");
    let ipcd = artifacts().ipcd;
    for (unit, user) in [(root.join("ipcd.service"), false), (root.join("user/ipcd.service"), true)] {
        let dir = scratch(if user { "user" } else { "system" });
        let runtime = dir.join("run");
        std::fs::create_dir_all(&runtime).expect("runtime dir");
        std::fs::set_permissions(&runtime, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        let out = verify(&unit_for(&unit, &ipcd, &dir), user, &runtime);
        assert!(
            out.status.success(),
            "{}: {}{}",
            unit.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let broken = unit_for(&unit, Path::new("/nonexistent/ipcd"), &dir);
        assert!(!verify(&broken, user, &runtime).status.success(), "{}: a missing binary passed", unit.display());
    }
}

/// `scripts/package.sh` makes a Debian package of the built binaries; it
/// unpacks into a scratch root with the installed layout, and `ipcd run`
/// from there (no library beside the binary, no `LD_PRELOAD` set) finds
/// its library under `lib/ipcd` and accelerates a program.
#[test]
fn the_package_unpacks_and_runs_from_a_scratch_root() {
    let dir = scratch("package");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/package.sh");
    let out = Command::new(&script)
        .arg(dir.join("out"))
        .env("IPCD_BIN_DIR", profile_dir())
        .output()
        .expect("run scripts/package.sh (dpkg-deb, strip)");
    assert!(out.status.success(), "package.sh: {}", String::from_utf8_lossy(&out.stderr));
    let deb = String::from_utf8(out.stdout).expect("UTF-8").trim().to_string();
    let root = dir.join("root");
    let x = Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).status().expect("dpkg-deb -x");
    assert!(x.success(), "dpkg-deb -x {deb}");
    for f in [
        "usr/bin/ipcd",
        "usr/lib/ipcd/libipcd_preload.so",
        "usr/lib/systemd/system/ipcd.service",
        "usr/lib/systemd/user/ipcd.service",
        "usr/share/doc/ipcd/commands.txt",
        "usr/share/doc/ipcd/ipcd.toml.example",
        "usr/share/man/man1/ipcd.1.gz",
        "usr/share/man/man1/ipcd-status.1.gz",
        "usr/share/man/man1/ipcd-config-show.1.gz",
    ] {
        assert!(root.join(f).exists(), "{f} missing from {deb}");
    }
    // The man pages are the commands' own: `ipcd status`'s has its options.
    let page = Command::new("gzip").arg("-dc").arg(root.join("usr/share/man/man1/ipcd-status.1.gz")).output();
    let page = String::from_utf8_lossy(&page.expect("gzip -dc").stdout).into_owned();
    assert!(page.starts_with(".ie") && page.contains(".TH ipcd-status 1") && page.contains("watch"), "{page}");
    let ipcd = root.join("usr/bin/ipcd");
    let socket = format!("ipcd-package-{}", std::process::id());
    let mut cmd = Command::new(&ipcd);
    let run = die_with_parent(&mut cmd)
        .args(["run", "--socket", &socket, "--", env!("CARGO_BIN_EXE_probe"), "check", "echo"])
        .env_remove("LD_PRELOAD")
        .env_remove("IPCD_PRELOAD")
        .current_dir(&dir)
        .output()
        .expect("ipcd run");
    let report = MonitorClient::connect(&socket).and_then(|mut c| c.status());
    let _ = Command::new(&ipcd).args(["stop", "--socket", &socket]).status();
    assert!(run.status.success(), "ipcd run from the package: {}", String::from_utf8_lossy(&run.stderr));
    let st = report.expect("the monitor the package's ipcd started").status;
    assert!(st.connects_total >= 1 && st.fallbacks_total == 0, "{st:?}");
}
