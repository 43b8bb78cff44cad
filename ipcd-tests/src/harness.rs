//! Starting a monitor and programs under the preload library, for tests
//! and benchmarks.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ipcd_monitor::client::{MonitorClient, StatusReport};

/// The built `ipcd` binary and `libipcd_preload.so`.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// `target/<profile>/ipcd`.
    pub ipcd: PathBuf,
    /// `target/<profile>/libipcd_preload.so`.
    pub preload: PathBuf,
}

/// Finds the artifacts next to the running test or bench binary
/// (`target/<profile>/deps/<name>`), which `cargo build --workspace` of the
/// same profile made.
pub fn artifacts() -> Artifacts {
    let dir = profile_dir();
    let a = Artifacts { ipcd: dir.join("ipcd"), preload: dir.join("libipcd_preload.so") };
    for p in [&a.ipcd, &a.preload] {
        assert!(
            p.exists(),
            "{} is missing: build the workspace first with the same profile \
             (`cargo build --workspace --release`; scripts/test.sh does)",
            p.display()
        );
    }
    a
}

/// The profile directory this test or bench binary was built into
/// (`target/<profile>`), found from the running binary's own path rather
/// than from the source tree, so it is right wherever the crates sit.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    let mut dir = exe.parent().expect("deps dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The cargo target directory (`target/`), the parent of [`profile_dir`].
pub fn target_dir() -> PathBuf {
    let dir = profile_dir();
    dir.parent().map(PathBuf::from).unwrap_or(dir)
}

/// Kills `cmd`'s child when this process dies (a crashed test skips Drop),
/// so no stray process keeps the test runner's pipes open.
pub fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl in the child before exec, async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        })
    }
}

/// Runs `cmd` in a process group of its own and collects its output;
/// `None` if it has not ended within `limit`. Either way the whole group
/// is killed first, so a descendant that hangs (a forked child stuck in
/// its fork) cannot keep the output pipes open and hang the caller.
pub fn output_within(cmd: &mut Command, limit: Duration) -> Option<Output> {
    let mut child = cmd.process_group(0).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    let group = child.id() as i32;
    // Read as it comes: a command that writes more than a pipe holds
    // would otherwise block until the limit and look hung.
    fn drain(mut r: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    }
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + limit;
    let ended = loop {
        if child.try_wait().expect("try_wait").is_some() {
            break true;
        }
        if Instant::now() >= deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // SAFETY: signals the group made for this command.
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let status = child.wait().expect("wait");
    let out =
        Output { status, stdout: stdout.join().expect("stdout reader"), stderr: stderr.join().expect("stderr reader") };
    ended.then_some(out)
}

/// A monitor on a socket name of its own, stopped on drop.
pub struct Monitor {
    child: Child,
    /// Its abstract socket name.
    pub socket: String,
    /// Where it came from.
    pub artifacts: Artifacts,
}

impl Monitor {
    /// Starts a monitor with `ring_bytes` per ring and waits until it answers.
    pub fn start(ring_bytes: u64) -> Monitor {
        Monitor::start_with(ring_bytes, &[])
    }

    /// [`Monitor::start`] with more `ipcd daemon` flags (`--queues shared`).
    pub fn start_with(ring_bytes: u64, flags: &[&str]) -> Monitor {
        static N: AtomicU32 = AtomicU32::new(0);
        let artifacts = artifacts();
        let socket = format!("ipcd-it-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
        let child = spawn_daemon(&artifacts, &socket, ring_bytes, flags);
        Monitor { child, socket, artifacts }
    }

    /// Counters and listings now.
    pub fn status(&self) -> StatusReport {
        MonitorClient::connect(&self.socket).and_then(|mut c| c.status()).expect("monitor status")
    }

    /// The monitor's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the monitor with SIGKILL (as a crash would) and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills the monitor and starts a new one on the same socket name (a
    /// restart, as an upgrade does).
    pub fn restart(&mut self, ring_bytes: u64) {
        self.kill();
        self.child = spawn_daemon(&self.artifacts, &self.socket, ring_bytes, &[]);
    }

    /// Makes `cmd` run under ipcd with this monitor.
    pub fn under<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        cmd.env("LD_PRELOAD", &self.artifacts.preload).env("IPCD_SOCKET", &self.socket)
    }
}

/// User and system CPU time of the live process `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces): utime and
    // stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    rest.split_whitespace().skip(11).take(2).map(|v| v.parse::<u64>().expect("ticks")).sum()
}

/// Runs `ipcd daemon` on `socket` and waits until it answers.
fn spawn_daemon(artifacts: &Artifacts, socket: &str, ring_bytes: u64, flags: &[&str]) -> Child {
    let mut cmd = Command::new(&artifacts.ipcd);
    die_with_parent(&mut cmd)
        .args(["daemon", "--socket", socket, "--ring-bytes", &ring_bytes.to_string()])
        .args(flags)
        .env("IPCD_LOG", "warn")
        .stdin(Stdio::null());
    let mut child = cmd.spawn().expect("spawn ipcd daemon");
    let deadline = Instant::now() + Duration::from_secs(10);
    while MonitorClient::connect(socket).is_err() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the monitor on @{socket} did not answer within 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child
}

impl Drop for Monitor {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = self.child.wait();
    }
}
