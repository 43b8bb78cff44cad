//! `ipcd daemon --metrics-address ADDR`: the monitor's numbers served over
//! HTTP for a Prometheus server to scrape (`GET /metrics`, the text `ipcd
//! metrics` prints). A thread of its own takes one request at a time and
//! asks the monitor over its control socket like any client, so the
//! event loop never waits on a scraper. Off unless asked for: the page
//! names processes and their pids to whoever can reach the address.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use crate::client::MonitorClient;
use crate::log;
use crate::log::Level;

/// OpenMetrics, as `prometheus-client` encodes it.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// A scraper that sends nothing is dropped after this.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Binds `addr` and serves it from a new thread until the process ends;
/// returns the address bound (its port, when `addr` asked for port 0).
pub fn spawn(addr: SocketAddr, socket: String) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("ipcd-metrics".into()).spawn(move || {
        for conn in listener.incoming() {
            match conn {
                Ok(stream) => {
                    if let Err(e) = answer(stream, &socket) {
                        log!(Level::Debug, "msg=\"metrics request failed\" err=\"{e}\"");
                    }
                }
                Err(e) => log!(Level::Warn, "msg=\"metrics accept failed\" err=\"{e}\""),
            }
        }
    })?;
    Ok(bound)
}

/// One request: the request line decides, headers are read and ignored.
fn answer(stream: TcpStream, socket: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header == "\r\n" || header == "\n" {
            break;
        }
    }
    let mut parts = request.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, kind, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics" | "/") => match page(socket) {
            Ok(text) => ("200 OK", CONTENT_TYPE, text),
            Err(e) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("{e}\n")),
        },
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", "try /metrics\n".into()),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "GET only\n".into()),
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}

fn page(socket: &str) -> Result<String, String> {
    let report = MonitorClient::connect(socket)
        .and_then(|mut c| c.status())
        .map_err(|e| format!("monitor did not answer: {e}"))?;
    Ok(crate::metrics::render(&report, |pid| crate::metrics::comm(pid).unwrap_or_default()))
}
