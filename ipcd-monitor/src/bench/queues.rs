//! The monitor group of `ipcd bench`: how many requests a monitor takes
//! per second in each `--queues` mode (the IPC-Direct poster's question),
//! with 1, 2, 4 and 8 processes sending at once. Each process registers,
//! waits for the word, sends its requests (`Fallbacks` with no counts:
//! no reply, no fds, nothing changed) as fast as its mode lets it, then a
//! `Ping`, whose reply says the monitor handled them all. The rate is
//! every process's requests over the slowest one's time. A monitor of
//! each mode is started afresh for each repetition, in turn, so the three
//! share the machine's noise.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::ptr::NonNull;
use std::time::Instant;

use ipcd_proto::channel::Channel;
use ipcd_proto::message::{Caps, Request, Response};
use ipcd_proto::queue::{PushError, RequestRing};
use ipcd_proto::FALLBACK_KINDS;
use ipcd_ring::{IndexQueue, Segment};
use memmap2::MmapMut;

use super::median;
use crate::config::Queues;

/// Processes sending at once.
pub(super) const CLIENTS: [usize; 4] = [1, 2, 4, 8];

/// One row: requests per second by mode, in [`Queues::ALL`]'s order.
#[derive(Debug, Clone)]
pub(super) struct QueueRow {
    pub clients: usize,
    pub rates: [Option<f64>; 3],
}

/// How many runs [`run`] makes, for the progress count.
pub(super) fn steps(reps: usize) -> usize {
    reps * Queues::ALL.len() * CLIENTS.len()
}

/// Runs the group: a row per client count.
pub(super) fn run(ipcd: &Path, quick: bool, reps: usize, progress: &mut super::Progress) -> Vec<QueueRow> {
    let count: u64 = if quick { 20_000 } else { 200_000 };
    let mut samples = vec![[Vec::new(), Vec::new(), Vec::new()]; CLIENTS.len()];
    for _ in 0..reps {
        for (m, mode) in Queues::ALL.into_iter().enumerate() {
            let name = format!("-queues-{}", mode.name());
            let monitor = match super::Monitor::start_with(ipcd, &name, &["--queues", mode.name()]) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("\n  monitor --queues {}: {e}", mode.name());
                    continue;
                }
            };
            for (k, &n) in CLIENTS.iter().enumerate() {
                progress.step_named(&format!("monitor requests x{n}"), mode.name());
                match burst(ipcd, &monitor.socket, n, count) {
                    Ok(rate) => samples[k][m].push(rate),
                    Err(e) => eprintln!("\n  monitor --queues {}, {n} process(es): {e}", mode.name()),
                }
            }
        }
    }
    CLIENTS.iter().zip(samples).map(|(&clients, s)| QueueRow { clients, rates: s.map(median) }).collect()
}

/// `n` processes of `count` requests each at once: requests per second.
fn burst(ipcd: &Path, socket: &str, n: usize, count: u64) -> Result<f64, String> {
    let mut kids = Vec::new();
    for _ in 0..n {
        let mut c = Command::new(ipcd)
            .args(["workload", "monitor-client", socket, &count.to_string()])
            .env_remove("LD_PRELOAD")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("client: {e}"))?;
        let mut out = BufReader::new(c.stdout.take().ok_or("client stdout")?);
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        if line.trim() != "ready" {
            return Err(format!("client said {line:?}"));
        }
        kids.push((c, out));
    }
    for (c, _) in &mut kids {
        c.stdin.as_mut().ok_or("client stdin")?.write_all(b"go\n").map_err(|e| e.to_string())?;
    }
    let mut slowest: f64 = 0.0;
    for (mut c, mut out) in kids {
        let mut line = String::new();
        out.read_line(&mut line).map_err(|e| e.to_string())?;
        let status = c.wait().map_err(|e| e.to_string())?;
        let ns: f64 = line.trim().parse().map_err(|_| format!("client printed {line:?} ({status})"))?;
        slowest = slowest.max(ns);
    }
    Ok((n as u64 * count) as f64 / (slowest / 1e9))
}

/// The process's request ring (and the index queue), mapped.
struct Mapped {
    ring: RequestRing,
    _seg: Segment,
    _maps: Vec<MmapMut>,
}

fn map(fd: std::os::fd::OwnedFd) -> Result<MmapMut, String> {
    // SAFETY: a sealed memfd from the monitor, mapped shared; every index
    // read through the views made over it is validated.
    unsafe { MmapMut::map_mut(&File::from(fd)) }.map_err(|e| e.to_string())
}

fn base(m: &mut MmapMut) -> Result<NonNull<u8>, String> {
    NonNull::new(m.as_mut_ptr()).ok_or_else(|| "null mapping".into())
}

/// `ipcd workload monitor-client SOCKET COUNT`: registers with the
/// monitor, says `ready`, waits for a line on stdin, sends `COUNT`
/// requests and a `Ping`, and prints the nanoseconds from the word to
/// the `Ping`'s reply.
pub(super) fn client(socket: &str, count: u64) -> Result<(), String> {
    let chan = Channel::connect_abstract(socket.as_bytes()).map_err(|e| format!("connect: {e}"))?;
    // SAFETY: getpid and getuid cannot fail.
    let (pid, uid) = unsafe { (libc::getpid() as u32, libc::getuid()) };
    chan.send_request(1, &Request::hello(pid, uid, Caps::empty()), &[]).map_err(|e| e.to_string())?;
    let mut mapped = None;
    loop {
        let (seq, resp, fds) = chan.recv_response().map_err(|e| e.to_string())?;
        match resp {
            Response::Queue { index, shared } => {
                let mut maps = fds.into_vec().into_iter().map(map).collect::<Result<Vec<_>, _>>()?;
                let ring = maps.first_mut().ok_or("no ring")?;
                // SAFETY: a live mapping of the whole memfd, kept in
                // `Mapped` beside the view.
                let seg = unsafe { Segment::attach(base(ring)?, ring.len()) }.map_err(|e| e.to_string())?;
                // SAFETY: this process is its ring's one writer.
                let tx = unsafe { seg.producer(ipcd_ring::Side::A) }.map_err(|e| e.to_string())?;
                let tell = match maps.get_mut(1) {
                    Some(m) if shared => {
                        // SAFETY: as above, for the index queue.
                        let q = unsafe { IndexQueue::attach(base(m)?, m.len()) }.map_err(|e| e.to_string())?;
                        Some((q, index))
                    }
                    _ => None,
                };
                mapped = Some(Mapped { ring: RequestRing::new(tx, tell), _seg: seg, _maps: maps });
            }
            Response::Welcome { .. } if seq == 1 => break,
            other => return Err(format!("monitor said {other:?}")),
        }
    }
    println!("ready");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).map_err(|e| e.to_string())?;
    let req = Request::Fallbacks { counts: [0; FALLBACK_KINDS] };
    let start = Instant::now();
    for i in 0..count {
        match &mut mapped {
            Some(m) => loop {
                match m.ring.push(&req) {
                    Ok(()) => break,
                    Err(PushError::Full) => std::hint::spin_loop(),
                    Err(e) => return Err(e.to_string()),
                }
            },
            None => chan.send_request(2 + i as u32, &req, &[]).map_err(|e| e.to_string())?,
        }
    }
    let ping = 2 + count as u32;
    chan.send_request(ping, &Request::Ping, &[]).map_err(|e| e.to_string())?;
    loop {
        match chan.recv_response().map_err(|e| e.to_string())? {
            (seq, Response::Ok, _) if seq == ping => break,
            (_, Response::Error { code }, _) => return Err(format!("monitor refused: {code:?}")),
            _ => {}
        }
    }
    println!("{}", start.elapsed().as_nanos());
    Ok(())
}
