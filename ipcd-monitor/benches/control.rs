//! Control path: a connect request's round trip through the monitor, and
//! brokered connections per second, beside kernel TCP connect+accept on
//! loopback measured in the same run. `cargo bench -p ipcd-monitor`.

use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ipcd_monitor::client::MonitorClient;
use ipcd_proto::message::{Request, Response, Side};
use ipcd_proto::{ListenFlags, SockAddr};

// Long on purpose: one benchmark script, read top to bottom.
fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n: u32 = if quick { 2_000 } else { 20_000 };
    let socket = format!("ipcd-bench-{}", std::process::id());
    // target/<profile>/deps/control-* -> target/<profile>/ipcd, wherever the
    // crate sits in the source tree.
    let exe = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().and_then(|d| d.parent()).map(|d| d.join("ipcd")))
        .expect("own path");
    let mut daemon = Command::new(&exe)
        .args(["daemon", "--socket", &socket])
        .env("IPCD_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run {} (cargo build --release -p ipcd-monitor first): {e}", exe.display()));
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut server = loop {
        match MonitorClient::connect(&socket) {
            Ok(c) => break c,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => panic!("monitor did not start: {e}"),
        }
    };
    let mut client = MonitorClient::connect(&socket).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let addr = SockAddr::V4 { ip: [127, 0, 0, 1], port };
    let req = Request::Listen { listener: 1, addr, backlog: 1024, flags: ListenFlags::empty() };
    assert_eq!(server.call(&req, &[listener.as_fd()]).unwrap().0, Response::Ok);

    // ipcd: connect request → Connected, the listener drains the Incoming
    // event, both ends close: with a new segment each time (+3 fds each
    // way), then reusing the pair's (both ends say they keep it).
    let mut broker = |keep: bool| {
        let t = Instant::now();
        for _ in 0..n {
            let (resp, _fds) =
                client.call(&Request::Connect { dest: addr, source: None, nonblocking: false }, &[]).unwrap();
            let Response::Connected(info) = resp else { panic!("{resp:?}") };
            let (_, ev, _sfds) = server.channel().recv_response().unwrap();
            assert!(matches!(ev, Response::Incoming { .. }));
            server.notify(&Request::Accepted { conn: info.conn }).unwrap();
            client.notify(&Request::Close { conn: info.conn, side: Side::A, keep }).unwrap();
            server.notify(&Request::Close { conn: info.conn, side: Side::B, keep }).unwrap();
        }
        t.elapsed() / n
    };
    let ipcd = broker(false);
    let reused = broker(true);

    // Kernel: connect + accept + close of both on loopback.
    let t = Instant::now();
    for _ in 0..n {
        let c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, _) = listener.accept().unwrap();
        drop((c, s));
    }
    let kernel = t.elapsed() / n;

    println!("control path, {n} connections each, same run:");
    println!(
        "{:<48} {:>9.2} µs  {:>9.0} conn/s",
        "ipcd: connect request → segment + doorbells",
        us(ipcd),
        1.0 / ipcd.as_secs_f64()
    );
    println!(
        "{:<48} {:>9.2} µs  {:>9.0} conn/s",
        "ipcd: connect request → the pair's segment again",
        us(reused),
        1.0 / reused.as_secs_f64()
    );
    println!(
        "{:<48} {:>9.2} µs  {:>9.0} conn/s",
        "kernel TCP loopback: connect + accept + close",
        us(kernel),
        1.0 / kernel.as_secs_f64()
    );
    println!(
        "ratio kernel/ipcd: {:.2}x (new segment), {:.2}x (reused)",
        kernel.as_secs_f64() / ipcd.as_secs_f64(),
        kernel.as_secs_f64() / reused.as_secs_f64()
    );
    let _ = client.stop();
    let _ = daemon.wait();
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
