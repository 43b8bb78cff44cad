//! Two processes exchange messages over an ipcd ring: the parent makes a
//! ring in a memfd and two eventfd doorbells, starts itself again with
//! the three fds inherited, and sends numbered messages; the child opens
//! the ring from its fd and answers each. Calls spin for 50 µs, then
//! sleep on the doorbell.
//!
//! `cargo run -p ipcd-ring --features std --example pingpong [ROUNDS]`;
//! `cargo test -p ipcd-ring --features std --examples` runs it as a test.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::process::Command;
use std::time::Instant;

use ipcd_ring::shm::{Doorbell, SharedRing};
use ipcd_ring::Side;

/// The child's fds: ring, its doorbell, the parent's doorbell.
const CHILD_FDS: &str = "PINGPONG_FDS";

fn main() {
    let rounds = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(100_000);
    if let Err(e) = run(rounds) {
        eprintln!("pingpong: {e}");
        std::process::exit(1);
    }
}

/// The child if started as one, else the parent.
fn run(rounds: u64) -> io::Result<()> {
    match std::env::var(CHILD_FDS) {
        Ok(fds) => child(&fds),
        Err(_) => parent(rounds),
    }
}

fn parent(rounds: u64) -> io::Result<()> {
    let ring = SharedRing::create(64 * 1024)?;
    let (mine, theirs) = (Doorbell::new()?, Doorbell::new()?);
    let fds = [ring.fd().as_raw_fd(), theirs.fd().as_raw_fd(), mine.fd().as_raw_fd()];
    for fd in fds {
        // The child inherits exactly these (they are close-on-exec).
        // SAFETY: F_SETFD on our own fds.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        // Run as a test, the child must run the same test; as an example,
        // it ignores them.
        .args(["two_processes_exchange_messages", "--exact", "--quiet", "1"])
        .env(CHILD_FDS, format!("{},{},{}", fds[0], fds[1], fds[2]))
        .spawn()?;
    let mut end = ring.endpoint(Side::A, mine, theirs)?;
    let start = Instant::now();
    for i in 0..rounds {
        end.send_all(&i.to_le_bytes())?;
        let mut reply = [0u8; 8];
        end.recv_exact(&mut reply)?;
        if u64::from_le_bytes(reply) != i + 1 {
            return Err(io::Error::other(format!("round {i}: answer {}", u64::from_le_bytes(reply))));
        }
    }
    let took = start.elapsed();
    // The end of the stream tells the child to stop.
    drop(end);
    let status = child.wait()?;
    if !status.success() {
        return Err(io::Error::other(format!("child: {status}")));
    }
    println!("{rounds} round trips, {:.2} µs each", took.as_secs_f64() * 1e6 / rounds.max(1) as f64);
    Ok(())
}

fn child(fds: &str) -> io::Result<()> {
    let fds: Vec<RawFd> = fds.split(',').filter_map(|f| f.parse().ok()).collect();
    let [ring, mine, theirs] = fds[..] else { return Err(io::Error::other("want three fds")) };
    // SAFETY: the fds the parent left open for us, each owned once here.
    let (ring, mine, theirs) =
        unsafe { (OwnedFd::from_raw_fd(ring), OwnedFd::from_raw_fd(mine), OwnedFd::from_raw_fd(theirs)) };
    let ring = SharedRing::open(ring)?;
    let mut end = ring.endpoint(Side::B, Doorbell::from_fd(mine), Doorbell::from_fd(theirs))?;
    let mut msg = [0u8; 8];
    loop {
        match end.recv(&mut msg)? {
            0 => break,
            8 => {}
            n => end.recv_exact(&mut msg[n..])?,
        }
        end.send_all(&(u64::from_le_bytes(msg) + 1).to_le_bytes())?;
    }
    std::process::exit(0)
}

#[test]
fn two_processes_exchange_messages() {
    run(2000).expect("pingpong");
}
