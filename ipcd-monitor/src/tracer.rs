//! `ipcd trace`: the bytes of chosen ipcd connections as a pcap.
//!
//! The monitor sends the tracer each matching connection (`Trace`,
//! `Traced`) with its segment, which the tracer maps read-only; it then
//! copies what each side wrote as it appears, consumed or not
//! (`Segment::copy_written`), and writes it as TCP packets with
//! synthesized headers: a handshake when it starts watching, sequence
//! numbers that are stream offsets (+1), a FIN or RST when a side ends.
//! Processes under ipcd do nothing different while traced, and nothing
//! at all runs when no tracer is.
//!
//! A tracer that falls a ring's worth behind a fast writer loses bytes:
//! they are skipped in the sequence space (Wireshark shows "previous
//! segment not captured") and counted in the summary.

use std::fs::File;
use std::io::BufWriter;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ipcd_proto::message::{Request, Response};
use ipcd_proto::SockAddr;
use ipcd_ring::{PeerState, Segment, Side};
use memmap2::Mmap;

use crate::client::MonitorClient;
use crate::pcap::{flags, PcapWriter, MAX_PAYLOAD};

/// How far past its published tail a writer may be copying: the preload
/// library and the monitor's relays publish at least every 64 KiB.
const WRITER_CHUNK: u64 = 64 << 10;

/// What to trace and where to.
#[derive(Debug, Clone)]
pub struct Options {
    /// The monitor's socket name.
    pub socket: String,
    /// Only connections of this process (0: any).
    pub pid: u32,
    /// Only connections with this port at either end (0: any).
    pub port: u16,
    /// The pcap file.
    pub out: PathBuf,
    /// Stop after this long (else at SIGINT or SIGTERM).
    pub duration: Option<Duration>,
}

/// What a trace saw.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Connections traced.
    pub connections: u64,
    /// Payload bytes written to the file.
    pub bytes: u64,
    /// Bytes the rings no longer held when the tracer looked.
    pub lost: u64,
}

/// One direction of a traced connection.
#[derive(Debug, Default)]
struct Direction {
    /// Stream position copied up to.
    next: u64,
    /// Its FIN or RST was written.
    ended: bool,
}

/// A connection being traced.
struct Traced {
    conn: u64,
    addrs: [SockAddr; 2],
    seg: Segment,
    dirs: [Direction; 2],
    /// Declared last: `seg` points into it.
    _map: Mmap,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Traces until `opts.duration` passed, or SIGINT or SIGTERM.
pub fn run(opts: &Options) -> Result<Summary, String> {
    // SAFETY: a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_stop as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_stop as *const () as libc::sighandler_t);
    }
    let mut client = MonitorClient::connect(&opts.socket).map_err(|e| format!("monitor @{}: {e}", opts.socket))?;
    client.notify(&Request::Trace { pid: opts.pid, port: opts.port }).map_err(|e| e.to_string())?;
    let file = File::create(&opts.out).map_err(|e| format!("{}: {e}", opts.out.display()))?;
    let mut pcap = PcapWriter::new(BufWriter::new(file)).map_err(|e| e.to_string())?;
    let deadline = opts.duration.map(|d| Instant::now() + d);
    let mut traced: Vec<Traced> = Vec::new();
    let mut summary = Summary::default();
    let mut buf = vec![0u8; 1 << 20];
    let chan = client.channel().as_fd().as_raw_fd();
    loop {
        let stopping = STOP.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        // New connections from the monitor.
        while readable(chan) {
            let (_, resp, fds) = client.channel().recv_response().map_err(|e| format!("monitor: {e}"))?;
            match resp {
                Response::Traced { conn, addrs, .. } => {
                    let Some(fd) = fds.into_vec().into_iter().next() else { continue };
                    match map(fd) {
                        Ok((seg, map)) if seg.conn_id() == conn => {
                            handshake(&mut pcap, addrs).map_err(|e| e.to_string())?;
                            traced.push(Traced { conn, addrs, seg, dirs: Default::default(), _map: map });
                            summary.connections += 1;
                        }
                        Ok(_) => {}
                        Err(e) => eprintln!("ipcd trace: connection {conn}: {e}"),
                    }
                }
                Response::Error { code } => return Err(format!("the monitor refused to trace: {code:?}")),
                _ => {}
            }
        }
        let mut moved = false;
        for t in &mut traced {
            moved |= copy(t, &mut pcap, &mut buf, &mut summary).map_err(|e| e.to_string())?;
        }
        traced.retain(|t| !(t.dirs[0].ended && t.dirs[1].ended) && t.seg.conn_id() == t.conn);
        if stopping {
            break;
        }
        if !moved {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    pcap.flush().map_err(|e| e.to_string())?;
    Ok(summary)
}

/// Whether `fd` has something to read now.
fn readable(fd: libc::c_int) -> bool {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one live pollfd, no waiting.
    unsafe { libc::poll(&mut p, 1, 0) == 1 }
}

/// Maps a segment read-only and validates it.
fn map(fd: OwnedFd) -> std::io::Result<(Segment, Mmap)> {
    let file = File::from(fd);
    // SAFETY: a sealed memfd (it cannot shrink under the mapping); the
    // tracer only reads it, and validates what it reads.
    let map = unsafe { Mmap::map(&file)? };
    let base = NonNull::new(map.as_ptr().cast_mut()).ok_or_else(|| std::io::Error::other("null mapping"))?;
    // SAFETY: the mapping lives beside the view in `Traced`; the view is
    // only used through read-only calls (`copy_written`, `writer_state`,
    // `conn_id`), so a read-only mapping serves.
    let seg = unsafe { Segment::attach(base, map.len()) }.map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((seg, map))
}

/// SYN, SYN-ACK, ACK: the handshake the connection had, so that readers
/// of the file see a whole TCP connection (both initial sequence numbers
/// 0: a sequence number is the stream offset + 1).
fn handshake<W: std::io::Write>(pcap: &mut PcapWriter<W>, [a, b]: [SockAddr; 2]) -> std::io::Result<()> {
    let now = SystemTime::now();
    let seg = |from, to, seq, ack, flags| crate::pcap::Segment { from, to, seq, ack, flags, payload: &[] };
    pcap.write(now, &seg(a, b, 0, 0, flags::SYN))?;
    pcap.write(now, &seg(b, a, 0, 1, flags::SYN | flags::ACK))?;
    pcap.write(now, &seg(a, b, 1, 1, flags::ACK))
}

/// Copies what appeared on both sides of `t` into packets; whether
/// anything did.
fn copy<W: std::io::Write>(
    t: &mut Traced,
    pcap: &mut PcapWriter<W>,
    buf: &mut [u8],
    summary: &mut Summary,
) -> std::io::Result<bool> {
    let mut moved = false;
    for (i, side) in [Side::A, Side::B].into_iter().enumerate() {
        let (from, to) = (t.addrs[i], t.addrs[1 - i]);
        loop {
            if t.dirs[i].ended {
                break;
            }
            // Read before the bytes: a FIN seen now comes after all of them.
            let state = t.seg.writer_state(side);
            let got = t.seg.copy_written(side, t.dirs[i].next, buf, WRITER_CHUNK);
            t.dirs[i].next += got.lost;
            summary.lost += got.lost;
            let ack = (t.dirs[1 - i].next as u32).wrapping_add(1);
            let now = SystemTime::now();
            for chunk in buf[..got.len].chunks(MAX_PAYLOAD) {
                let seq = (t.dirs[i].next as u32).wrapping_add(1);
                let flags = flags::PSH | flags::ACK;
                pcap.write(now, &crate::pcap::Segment { from, to, seq, ack, flags, payload: chunk })?;
                t.dirs[i].next += chunk.len() as u64;
                summary.bytes += chunk.len() as u64;
            }
            moved |= got.len > 0 || got.lost > 0;
            if got.len > 0 {
                continue;
            }
            let end = match state {
                PeerState::Open => break,
                PeerState::Closed => flags::FIN | flags::ACK,
                PeerState::Reset => flags::RST | flags::ACK,
            };
            let seq = (t.dirs[i].next as u32).wrapping_add(1);
            pcap.write(now, &crate::pcap::Segment { from, to, seq, ack, flags: end, payload: &[] })?;
            t.dirs[i].ended = true;
            moved = true;
        }
    }
    Ok(moved)
}
