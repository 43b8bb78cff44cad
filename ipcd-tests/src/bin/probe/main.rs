//! A test program that uses only the ordinary socket API. The integration
//! tests run it under the kernel and under ipcd and expect the same
//! answers: each `check` scenario asserts exactly what Linux TCP does.
//!
//! Usage:
//!
//! ```text
//! probe check NAME            one scenario, server and client in-process
//! probe list                  the names of every scenario
//! probe serve [N]             echo server on loopback; prints its port;
//!                             serves N connections (default: forever)
//! probe fork-serve            echo server that accepts one connection,
//!                             forks a child to echo on it, prints the
//!                             child's pid and waits (the two share it)
//! probe client PORT ROUNDS SEED   echo rounds of random sizes, hashed
//! probe hold PORT             connects, then waits for stdin to close
//! probe pattern-client PORT N  sends N bytes of `pattern` to an echo
//!                             server and checks the echo
//! probe many-clients PORT N   N connections at once, echoes on each
//! probe remote-connects N     N non-blocking connects to 192.0.2.1:9
//!                             (not this host), each then closed
//! probe poll-accept           waits in poll for one connection; prints
//!                             its port
//! probe fault-client PORT SEED N  streams N seeded bytes to an echo
//!                             server and checks the echo (fault test)
//! probe prefork-serve W       pre-fork echo server with W workers;
//!                             prints its port; stops when stdin closes
//! probe daemon-serve N        the same through daemon(3)
//! probe prefork-clients PORT N  N connections in turn; prints how many
//!                             workers answered
//! probe diff-trace SEED N     N seeded random call sequences on a pair;
//!                             prints every observable (compare runs)
//! probe kept-inode            prints whether a socket made after a
//!                             connection closed has its kernel socket
//! probe kernel-sink N         prints its port, takes N connections in
//!                             turn, printing how many bytes came before
//!                             each one's end (run without ipcd by
//!                             `kept-kernel-peer`)
//! probe fd-capacity SOFT      prints how many connections fit under a
//!                             soft fd limit of SOFT
//! probe epoll-serve|epoll-load|conn-serve|conn-client|bench-server|
//!       bench-client ARGS     the workloads of `ipcd bench`, as
//!                             `ipcd workload` runs them
//! ```

use ipcd_monitor::bench::workload;
use ipcd_tests::net::{self, cvt, Fail};

type Res = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(format!("{} (line {}): {}", stringify!($cond), line!(), format!($($msg)*)));
        }
    };
}

// After `ensure!`, which they use.
mod checks;
mod diff;
mod serve;

use checks::{
    data::*, exec::*, fork::*, kept::*, lifecycle::*, limits::*, pass::*, readiness::*, relay::*, renewal::*,
    signals::*,
};
use diff::*;
use serve::*;

pub(crate) fn f(e: Fail) -> String {
    e.to_string()
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A connected pair through a fresh listener: (client, server).
pub(crate) fn pair(v6: bool) -> Result<(i32, i32), String> {
    let (l, port) = net::listen_loopback(v6).map_err(f)?;
    let c = net::connect_loopback(v6, port).map_err(f)?;
    let s = net::accept(l).map_err(f)?;
    net::close(l);
    Ok((c, s))
}

pub(crate) fn recv(fd: i32, buf: &mut [u8], flags: i32) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), flags) }
}

pub(crate) fn send(fd: i32, buf: &[u8], flags: i32) -> isize {
    // SAFETY: a live buffer.
    unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), flags) }
}

pub(crate) fn int_opt(fd: i32, level: i32, name: i32) -> Result<i32, String> {
    let mut v: i32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: an int-sized out buffer.
    cvt("getsockopt", unsafe { libc::getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) }).map_err(f)?;
    Ok(v)
}

/// A scenario: its name and what runs it.
type Check = (&'static str, fn() -> Res);

/// Every `check` scenario by name, in the order `probe list` prints them.
/// The integration tests assert that they run each one.
const CHECKS: &[Check] = &[
    ("echo", || echo(false, 200, 1)),
    ("echo6", || echo(true, 50, 2)),
    ("large", large),
    ("many", many),
    ("nonblock", nonblock),
    ("standby-refused", standby_refused),
    ("peek-waitall", peek_waitall),
    ("trunc-zerocopy", trunc_zerocopy),
    ("sigpipe", sigpipe),
    ("reset", reset),
    ("half-close", half_close),
    ("timeouts", timeouts),
    ("names", || names(false)),
    ("names6", || names(true)),
    ("options", options),
    ("dup-vectored", dup_vectored),
    ("sendfile", sendfile),
    ("poll", poll_mixed),
    ("select", select_mixed),
    ("epoll-level", epoll_level),
    ("epoll-edge", epoll_edge),
    ("epoll-shared", epoll_shared),
    ("fork-share", fork_share),
    ("fork-wake", fork_wake),
    ("threads", threads),
    ("close-race", close_race),
    ("eintr", eintr),
    ("fork-handoff", fork_handoff),
    ("exec-handoff", exec_handoff),
    ("reuse", reuse),
    ("backlog", backlog_refills),
    ("close-all", close_all),
    ("relisten", relisten),
    ("fork-busy", fork_busy),
    ("fd-table", fd_table),
    ("sa-restart", sa_restart),
    ("raw-syscalls", raw_syscalls),
    ("pass-fd", pass_fd),
    ("pass-listener", pass_listener),
    ("fork-listener", fork_listener),
    ("prefork", prefork),
    ("prefork-decline", prefork_decline),
    ("prefork-kill", prefork_kill),
    ("fork-queued", fork_queued),
    ("master-queued", master_queued),
    ("exec-queued", exec_queued),
    ("exec-nonblocking", exec_nonblocking),
    ("exec-unmonitored", exec_unmonitored),
    ("exec-workers", exec_workers),
    ("daemon-queued", daemon_queued),
    ("accept-wake", accept_wake),
    ("wait-both-ways", wait_both_ways),
    ("stdio", stdio),
    ("fd-renamed", fd_renamed),
    ("small-writes", small_writes),
    ("exec-relay", exec_relay),
    ("fd-limit", fd_limit),
    ("fd-count", fd_count),
    ("bad-args", bad_args),
    ("closed-names", closed_names),
    ("kept-sockets", kept_sockets),
    ("kept-kernel-peer", kept_kernel_peer),
    ("fork-recycle", fork_while_sockets_recycle),
    ("sleeping-acceptor", sleeping_acceptor_wakes),
    ("renewal", renewal_rounds),
    ("renewal-death", renewal_death),
    ("renewal-fork-listener", renewal_fork_and_listener),
    ("accept-order", renewal_accept_order),
    ("renewal-backlog", renewal_backlog),
    ("renewal-held", renewal_held),
    ("acceptor-threads", acceptor_threads),
    ("prefork-standbys", prefork_standbys),
    ("shared-listener-close", shared_listener_close),
    ("dead-listener-close", dead_listener_close),
    ("burst", burst),
    ("inherited-options", inherited_options),
    ("tcp-info", tcp_info),
    ("listener-shutdown", listener_shutdown),
    ("timestamps", timestamps),
    ("sndbuf", sndbuf),
    ("bad-pointers", bad_pointers),
    ("rcvbuf", rcvbuf),
    ("spawn-paths", spawn_paths),
    ("relay-exec-static", relay_exec_static),
    ("relay-exec-env", relay_exec_env),
    ("relay-spawn-env", relay_spawn_env),
    ("relay-pass", relay_pass),
    ("relay-reset", relay_reset),
    ("cork", cork),
    ("defer-accept", defer_accept),
    ("backlog-wait", backlog_wait),
];

fn check(name: &str) -> Res {
    match CHECKS.iter().find(|(n, _)| *n == name) {
        Some((_, run)) => run(),
        None => Err(format!("unknown check {name}")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    // The benchmark workloads (epoll-serve, conn-client, …) are `ipcd`'s own.
    if let Some(res) = workload::run(&args) {
        exit_on(&args, res);
        return;
    }
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or_else(|_| panic!("argument {i} must be a number"));
    let res = match arg(0).as_str() {
        "check" => check(&arg(1)),
        "list" => {
            CHECKS.iter().for_each(|(n, _)| println!("{n}"));
            Ok(())
        }
        "serve" => serve(args.get(1).map(|_| num(1) as usize)),
        "fork-serve" => fork_serve(),
        "client" => net::connect_loopback(false, num(1) as u16).map_err(f).and_then(|c| {
            let r = client_rounds(c, num(2) as usize, num(3));
            net::close(c);
            r
        }),
        "pattern-client" => pattern_client(num(1) as u16, num(2) as usize),
        "hold" => net::connect_loopback(false, num(1) as u16).map_err(f).map(|c| {
            let _ = send(c, b"!", 0);
            // Read the echo: closing with it unread would reset the server.
            let _ = recv(c, &mut [0u8; 1], libc::MSG_WAITALL);
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            net::close(c);
        }),
        "poll-accept" => poll_accept(),
        "remote-connects" => remote_connects(num(1)),
        "uring-connects" => uring_connects(&arg(1), num(2)),
        "fault-client" => fault_client(num(1) as u16, num(2), num(3) as usize),
        // Only where ports are made scarce (see the check's comment).
        "ports-scarce" => ports_scarce(),
        "prefork-serve" => prefork_serve(num(1) as usize),
        "daemon-serve" => daemon_serve(num(1) as usize),
        "prefork-clients" => prefork_clients(num(1) as u16, num(2) as usize),
        "exec-exit" => Ok(()),
        "exec-child" => exec_child(num(1) as i32),
        "echo-line" => echo_line(),
        "exec-accept" => exec_accept(num(1) as i32, num(2) as i32),
        "exec-listener-flag" => exec_listener_flag(num(1) as i32, num(2) as u16, num(3) == 1),
        "exec-worker" => exec_worker(num(1) as i32, num(2) as i32, num(3) as u8),
        "diff-trace" => diff_traces(num(1), num(2)),
        "kept-inode" => kept_inode(),
        "kernel-sink" => kernel_sink(num(1)),
        "fd-capacity" => fd_capacity(num(1)),
        "many-clients" => many_clients(num(1) as u16, num(2) as usize),
        other => Err(format!("unknown command {other:?}; see the module docs")),
    };
    exit_on(&args, res);
}

fn exit_on(args: &[String], res: Res) {
    if let Err(e) = res {
        eprintln!("probe {}: {e}", args.join(" "));
        std::process::exit(1);
    }
}
