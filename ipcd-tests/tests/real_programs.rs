//! Real programs from Debian's packages, server and client both under
//! ipcd: each test checks the program's result and, from the monitor's
//! counters, that its connections went over shared memory. A program that
//! is not installed (scripts/setup.sh installs them) makes its test skip
//! and say so.

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ipcd_tests::data::{Fnv, Prng};
use ipcd_tests::harness::{die_with_parent, Monitor};

const PROBE: &str = env!("CARGO_BIN_EXE_probe");

/// Whether every program is on PATH; prints why a test skips otherwise.
fn have(test: &str, programs: &[&str]) -> bool {
    for p in programs {
        let found =
            Command::new("sh").args(["-c", &format!("command -v {p}")]).output().is_ok_and(|o| o.status.success());
        if !found {
            println!("SKIPPED {test}: {p} is not installed (scripts/setup.sh installs it)");
            return false;
        }
    }
    true
}

/// A port free right now on 127.0.0.1.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// A server process, killed on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        // SIGTERM first, so that a server with children (nginx's master)
        // ends them; SIGKILL if it will not go.
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.0.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn under(mon: &Monitor, program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    die_with_parent(&mut c).args(args).stdin(Stdio::null());
    mon.under(&mut c);
    c
}

fn spawn_server(mon: &Monitor, program: &str, args: &[&str], port: u16) -> Bg {
    let child = under(mon, program, args).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("spawn server");
    let bg = Bg(child);
    // Ready once the monitor lists its listener (a test connection would
    // itself be a client, and make socat fork).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mon.status().listeners.iter().any(|l| l.addr.port() == port) {
        assert!(Instant::now() < deadline, "{program} did not listen on {port} under ipcd");
        std::thread::sleep(Duration::from_millis(20));
    }
    bg
}

fn ok(what: &str, out: Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what}: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

fn brokered(mon: &Monitor) -> u64 {
    mon.status().status.connects_total
}

#[test]
fn redis_cli_and_benchmark() {
    if !have("redis", &["redis-server", "redis-cli", "redis-benchmark"]) {
        return;
    }
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let p = port.to_string();
    let _server = spawn_server(
        &mon,
        "redis-server",
        &["--port", &p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"],
        port,
    );
    let mut rng = Prng::new(42);
    for i in 0..20 {
        let mut v = [0u8; 24];
        rng.fill(&mut v);
        let value: String = v.iter().map(|b| format!("{b:02x}")).collect();
        let key = format!("key{i}");
        assert_eq!(
            ok("SET", under(&mon, "redis-cli", &["-p", &p, "SET", &key, &value]).output().unwrap()).trim(),
            "OK"
        );
        assert_eq!(ok("GET", under(&mon, "redis-cli", &["-p", &p, "GET", &key]).output().unwrap()).trim(), value);
    }
    assert!(brokered(&mon) >= 40, "redis-cli did not go through ipcd");
    for pipeline in ["1", "16"] {
        let out = ok(
            "redis-benchmark",
            under(&mon, "redis-benchmark", &["-p", &p, "-t", "set,get", "-n", "20000", "-P", pipeline, "-q", "--csv"])
                .output()
                .unwrap(),
        );
        assert!(out.contains("\"SET\"") && out.contains("\"GET\""), "{out}");
    }
    assert!(brokered(&mon) >= 140, "redis-benchmark's 50 clients did not go through ipcd");
    assert_eq!(mon.status().status.fallbacks_total, 0);
}

/// `head`: the lines that say how nginx runs (daemon or not, master or not).
fn nginx_conf(dir: &std::path::Path, port: u16, head: &str) -> PathBuf {
    let conf = dir.join("nginx.conf");
    let text = format!(
        "{head}\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; sendfile on;\n\
           client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n\
           server {{ listen 127.0.0.1:{port}; root {d}/html; }} }}\n",
        d = dir.display()
    );
    std::fs::write(&conf, text).unwrap();
    conf
}

#[test]
fn nginx_serves_curl_and_wrk() {
    if !have("nginx", &["nginx", "curl", "wrk"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ipcd-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("html")).unwrap();
    let mut data = vec![0u8; 20 << 20];
    Prng::new(7).fill(&mut data);
    std::fs::write(dir.join("html/big.bin"), &data).unwrap();
    std::fs::write(dir.join("html/index.html"), "hello from nginx\n").unwrap();
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let conf = nginx_conf(&dir, port, "daemon off;\nmaster_process off;");
    let _server = spawn_server(&mon, "nginx", &["-p", &dir.to_string_lossy(), "-c", &conf.to_string_lossy()], port);
    let url = format!("http://127.0.0.1:{port}/big.bin");
    let mut want = Fnv::default();
    want.update(&data);
    // Several times: a lost edge-triggered EPOLLOUT once stalled about one
    // transfer in five until nginx's send timeout.
    for _ in 0..5 {
        let out = under(&mon, "curl", &["-sf", "--max-time", "30", &url]).output().unwrap();
        assert!(out.status.success(), "curl failed: {}", out.status);
        let mut got = Fnv::default();
        got.update(&out.stdout);
        assert_eq!((out.stdout.len(), got), (data.len(), want), "the file came back different");
    }
    let before = brokered(&mon);
    let wrk = ok(
        "wrk",
        under(&mon, "wrk", &["-t2", "-c16", "-d2s", &format!("http://127.0.0.1:{port}/index.html")]).output().unwrap(),
    );
    assert!(wrk.contains("Requests/sec") && !wrk.contains("Non-2xx"), "{wrk}");
    assert!(brokered(&mon) >= before + 16, "wrk's connections did not go through ipcd");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A daemon nginx running in this directory: stopped through its pid
/// file (its master is not our child), first with SIGTERM so that it ends
/// its workers; then the directory goes.
struct NginxDaemon(PathBuf);

impl Drop for NginxDaemon {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.0.join("nginx.pid")).ok().and_then(|p| p.trim().parse().ok());
        if let Some(pid) = pid {
            stop(pid);
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SIGTERM to `pid`, and SIGKILL if it is still there 3 s later.
fn stop(pid: libc::pid_t) {
    let deadline = Instant::now() + Duration::from_secs(3);
    // SAFETY: signals the process this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    // SAFETY: signal 0 only asks whether it is still there.
    let there = || unsafe { libc::kill(pid, 0) } == 0;
    while there() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if there() {
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
}

/// nginx as Debian's service runs it: it listens, daemonizes (forks, and
/// the first process exits), and its master forks workers that accept on
/// the listener they inherited (the master never does).
#[test]
fn nginx_master_and_workers_serve_through_ipcd() {
    if !have("nginx", &["nginx", "curl", "wrk"]) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("ipcd-nginx-workers-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("html")).unwrap();
    std::fs::write(dir.join("html/index.html"), "hello from a worker\n").unwrap();
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let conf = nginx_conf(&dir, port, "daemon on;\nworker_processes 2;");
    let _daemon = NginxDaemon(dir.clone());
    let _server = spawn_server(&mon, "nginx", &["-p", &dir.to_string_lossy(), "-c", &conf.to_string_lossy()], port);
    let url = format!("http://127.0.0.1:{port}/index.html");
    for _ in 0..5 {
        let out = under(&mon, "curl", &["-sf", "--max-time", "30", &url]).output().unwrap();
        assert!(out.status.success(), "curl failed: {}", out.status);
        assert_eq!(out.stdout, b"hello from a worker\n");
    }
    // The workers may not have waited on the listener yet when the first
    // curl came (that one then went through the kernel); by wrk's turn
    // they have.
    let before = brokered(&mon);
    for close in [false, true] {
        let mut args = vec!["-t2", "-c16", "-d1s"];
        if close {
            args.extend(["-H", "Connection: close"]);
        }
        args.push(&url);
        let wrk = ok("wrk", under(&mon, "wrk", &args).output().unwrap());
        assert!(wrk.contains("Requests/sec") && !wrk.contains("Non-2xx") && !wrk.contains("Socket errors"), "{wrk}");
    }
    assert!(brokered(&mon) >= before + 100, "wrk's connections to the workers did not go through ipcd");
}

#[test]
fn sockperf_ping_pong_and_throughput() {
    if !have("sockperf", &["sockperf"]) {
        return;
    }
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let p = port.to_string();
    let _server = spawn_server(&mon, "sockperf", &["server", "--tcp", "-i", "127.0.0.1", "-p", &p], port);
    // sockperf sizes its bookkeeping for at most 600 k messages/s unless
    // told a rate; over ipcd it goes faster.
    let pp = ok(
        "sockperf ping-pong",
        under(&mon, "sockperf", &["ping-pong", "--tcp", "-i", "127.0.0.1", "-p", &p, "-t", "1", "--mps=5000000"])
            .output()
            .unwrap(),
    );
    assert!(pp.contains("percentile 50.000"), "{pp}");
    let tp = ok(
        "sockperf throughput",
        under(&mon, "sockperf", &["throughput", "--tcp", "-i", "127.0.0.1", "-p", &p, "-t", "1", "--mps=5000000"])
            .output()
            .unwrap(),
    );
    assert!(tp.contains("BandWidth"), "{tp}");
    assert!(brokered(&mon) >= 2, "sockperf did not go through ipcd");
}

#[test]
fn iperf3_over_loopback() {
    if !have("iperf3", &["iperf3"]) {
        return;
    }
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let p = port.to_string();
    let server =
        under(&mon, "iperf3", &["-s", "-1", "-p", &p]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let _server = Bg(server);
    std::thread::sleep(Duration::from_millis(300));
    let out = ok("iperf3", under(&mon, "iperf3", &["-c", "127.0.0.1", "-p", &p, "-t", "1"]).output().unwrap());
    assert!(out.contains("receiver"), "{out}");
    assert!(brokered(&mon) >= 2, "iperf3's control and data connections did not go through ipcd");
}

#[test]
fn socat_forking_echo_server() {
    if !have("socat", &["socat"]) {
        return;
    }
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork");
    let _server = spawn_server(&mon, "socat", &[&listen, "PIPE"], port);
    for i in 0..5 {
        let msg = format!("echo number {i}\n");
        let mut c = under(&mon, "socat", &["-t", "1", "-", &format!("TCP:127.0.0.1:{port}")]);
        let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(msg.as_bytes()).unwrap();
        assert_eq!(ok("socat client", child.wait_with_output().unwrap()), msg);
    }
    // Over ipcd: socat's parent accepts, so it serves the listener its
    // children hold for a moment after each fork. A client that comes
    // between a fork and the parent's next accept goes to the kernel.
    let st = mon.status().status;
    assert!(st.connects_total >= 1 && st.connects_total + st.fallbacks_total >= 5, "{st:?}");
}

/// socat's fork-per-connection relay through an exec'd filter, both ends
/// under ipcd: every byte echoed, hash-checked (the tail was lost in about
/// half the runs when the filter's image gave its share back twice).
#[test]
fn socat_fork_exec_relay_echoes_every_byte() {
    if !have("socat", &["socat"]) || !have("python", &["python3"]) {
        return;
    }
    let mon = Monitor::start(1 << 20);
    let port = free_port();
    let listen = format!("TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork");
    let _server = spawn_server(&mon, "socat", &[&listen, "EXEC:cat"], port);
    let client = r#"
import hashlib, os, socket, sys, threading
port, n = int(sys.argv[1]), int(sys.argv[2])
data = os.urandom(n)
s = socket.create_connection(("127.0.0.1", port))
def send():
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
t = threading.Thread(target=send)
t.start()
got = bytearray()
while True:
    b = s.recv(65536)
    if not b:
        break
    got += b
t.join()
print(len(got), hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest())
"#;
    for size in ["100000", "1000000", "3000000"] {
        let out =
            ok("relay client", under(&mon, "python3", &["-c", client, &port.to_string(), size]).output().unwrap());
        assert_eq!(out.trim(), format!("{size} True"), "{size} bytes through socat EXEC:cat");
    }
    assert!(brokered(&mon) >= 1, "no connection went through ipcd");
}

#[test]
fn python_asyncio_many_connections() {
    if !have("python", &["python3"]) {
        return;
    }
    // Rings of the default size: each client writes up to 1.6 MB before it
    // reads its echo, which both rings and asyncio's buffers must hold
    // (with 256 KiB rings such a client and its server block on each
    // other's full ring, where Linux's autotuned buffers hold megabytes).
    let mon = Monitor::start(1 << 20);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/asyncio_echo.py");
    let out = ok("asyncio echo", under(&mon, "python3", &[&script.to_string_lossy(), "200"]).output().unwrap());
    assert!(out.contains("200 of 200"), "{out}");
    // Connects beyond asyncio's backlog of 100 wait for room, as Linux's
    // do, and then go through shared memory like the others.
    let st = mon.status().status;
    assert_eq!((st.connects_total, st.fallbacks_total), (200, 0), "{st:?}");
}

/// Python workers started with multiprocessing's `spawn` method, from a
/// socket the parent listened on: each is a new image that inherits
/// the parent's listener, which never accepts. All requests go through
/// ipcd to both workers (the 2 refused connects are the workers' own
/// check that the monitor knows they accept). Before, each worker's image
/// registered the socket as a new listener and replaced the others': one
/// worker got every connection and the rest timed out.
#[test]
fn python_spawn_workers_share_the_listener() {
    python_workers("spawn", (20, 2));
}

/// scripts/spawn_workers.py with its workers started by `method`, under
/// ipcd (skipped without python3): all 20 requests must be answered, by
/// both workers, and the monitor must count `connects_fallbacks` (connects
/// through ipcd, connects sent to the kernel).
fn python_workers(method: &str, connects_fallbacks: (u64, u64)) {
    if !have(&format!("python {method} workers"), &["python3"]) {
        return;
    }
    let mon = Monitor::start(256 * 1024);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/spawn_workers.py");
    let args = [&*script.to_string_lossy(), "20", method];
    let out = ok(&format!("{method} workers"), under(&mon, "python3", &args).output().unwrap());
    assert!(out.contains("20 of 20 answered by 2 workers"), "{out}");
    let st = mon.status().status;
    assert_eq!((st.connects_total, st.fallbacks_total), connects_fallbacks, "{st:?}");
}

/// The same workers started by multiprocessing's fork server (Python
/// 3.14's default on Linux): the listener reaches them over a Unix
/// socket, which makes it the kernel's in every process, as no library
/// but the parent's knows it. All requests are answered, through the
/// kernel (the parent's 20, and the workers' own 2 refused connects).
/// Before, each worker's blocking accept failed with EAGAIN (the parent's
/// library had made the shared description non-blocking) and every
/// request timed out waiting for the parent, which never accepts.
#[test]
fn python_forkserver_workers_take_the_passed_listener() {
    python_workers("forkserver", (0, 22));
}

/// scripts/node_http.js in `mode` (`serve` or `cluster`) under ipcd on a
/// port of its own, and `count` requests from its Node clients under ipcd,
/// which must all be answered right. The server runs until the `Bg` drops.
fn node_http(mon: &Monitor, mode: &str, count: usize) -> (u16, Bg) {
    let port = free_port();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/node_http.js");
    let script = script.to_string_lossy();
    let server = spawn_server(mon, "node", &[&script, mode, &port.to_string()], port);
    let load = under(mon, "node", &[&script, "load", &port.to_string(), &count.to_string()]).output().unwrap();
    let out = ok("node clients", load);
    assert!(out.contains(&format!("{count} of {count}")), "{out}");
    (port, server)
}

/// Node's HTTP server under ipcd, Node clients under ipcd, then curl on
/// the kernel. libuv closes fds with `syscall(SYS_close)`: before the
/// library caught that, the server's closed connections stayed in its
/// table (and in the monitor), and the next kernel client, given one of
/// their numbers, was hung up on at once.
#[test]
fn node_http_server_and_clients() {
    if !have("node", &["node", "curl"]) {
        return;
    }
    let mon = Monitor::start(256 * 1024);
    let (port, _server) = node_http(&mon, "serve", 200);
    let url = format!("http://127.0.0.1:{port}/");
    let curl = Command::new("curl").args(["-s", "-m", "10", "-d", "hello", &url]).output().unwrap();
    assert_eq!(ok("curl on the kernel", curl), "echo:5");
    // Segments go back to the pair's pool only when both ends said Close:
    // the server's closes reached the monitor.
    let st = mon.status().status;
    assert!(st.connects_total >= 200 && st.reused_total >= 100, "{st:?}");
}

/// Node's cluster module in its default mode on Linux: the primary
/// accepts and passes each connection to a worker over a Unix socket
/// (`SCM_RIGHTS`). Before ends could be passed, every ipcd client was
/// hung up on.
#[test]
fn node_cluster_passes_connections_to_workers() {
    if !have("node cluster", &["node"]) {
        return;
    }
    let mon = Monitor::start(256 * 1024);
    let _server = node_http(&mon, "cluster", 100);
    let st = mon.status().status;
    assert!(st.connects_total >= 100 && st.fallbacks_total == 0, "{st:?}");
}

#[test]
fn static_client_falls_back_to_the_kernel() {
    if !have("static C client", &["cc"]) {
        return;
    }
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("c/static_client.c");
    let bin = std::env::temp_dir().join(format!("ipcd-static-client-{}", std::process::id()));
    let built = Command::new("cc").args(["-O2", "-static", "-o"]).arg(&bin).arg(&src).status().expect("cc");
    if !built.success() {
        println!("SKIPPED static client: no static libc to link with");
        return;
    }
    let mon = Monitor::start(256 * 1024);
    let mut server = under(&mon, PROBE, &["serve", "1"]);
    let mut server = Bg(server.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.0.stdout.as_mut().unwrap()), &mut line).unwrap();
    let mut client = Command::new(&bin);
    // LD_PRELOAD is set but cannot apply: the binary has no dynamic loader.
    let out = ok("static client", mon.under(die_with_parent(&mut client)).arg(line.trim()).output().unwrap());
    let _ = std::fs::remove_file(&bin);
    assert_eq!(out.trim(), "ok");
    assert!(server.0.wait().unwrap().success());
    let st = mon.status().status;
    assert_eq!((st.connects_total, st.fallbacks_total), (0, 0), "{st:?}");
}
