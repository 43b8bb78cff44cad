//! Daemon settings: command-line flags over environment over defaults.

/// How the daemon runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Abstract socket name (without the leading NUL).
    pub socket: String,
    /// Capacity of each ring of a new connection's segment (a power of two).
    pub ring_bytes: u64,
    /// Broker shared memory between processes of different users too.
    pub cross_uid: bool,
    /// Busy-poll on one pinned core instead of sleeping in epoll.
    pub poll: bool,
    /// How processes' requests without fds or replies reach the monitor.
    pub queues: Queues,
    /// Where to serve `ipcd metrics` over HTTP (off: `None`).
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Seconds a handed-over end waits for its new holder: the image of
    /// a process that announced an exec, or the receiver of an end passed
    /// over `SCM_RIGHTS`.
    pub exec_grace_secs: u64,
}

/// Default ring capacity: large enough for bulk streams, lazily backed.
pub const DEFAULT_RING_BYTES: u64 = 1 << 20;

/// The per-user default socket name, overridden by `IPCD_SOCKET`.
pub fn default_socket_name() -> String {
    if let Ok(name) = std::env::var("IPCD_SOCKET") {
        if !name.is_empty() {
            return name;
        }
    }
    // SAFETY: getuid cannot fail.
    format!("ipcd-{}", unsafe { libc::getuid() })
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: default_socket_name(),
            ring_bytes: DEFAULT_RING_BYTES,
            cross_uid: false,
            poll: false,
            queues: Queues::Channel,
            metrics_address: None,
            exec_grace_secs: 10,
        }
    }
}

/// How requests that carry no fds and wait for no reply reach the monitor
/// (the IPC-Direct poster's two designs beside the event-driven one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queues {
    /// On each process's channel (a Unix socket); the monitor sleeps in
    /// epoll until one is readable. The default: it costs no core.
    Channel,
    /// In a ring per process in shared memory, which the monitor polls in
    /// turn on a core of its own.
    PerProcess,
    /// In a ring per process, and one queue all processes share where a
    /// process writes its number when its ring has work the monitor does
    /// not know of yet; the monitor polls that one queue.
    Shared,
}

impl Queues {
    /// The name `--queues` takes.
    pub fn name(self) -> &'static str {
        match self {
            Queues::Channel => "channel",
            Queues::PerProcess => "per-process",
            Queues::Shared => "shared",
        }
    }

    /// Every mode, in the order benchmarks list them.
    pub const ALL: [Queues; 3] = [Queues::Channel, Queues::PerProcess, Queues::Shared];

    /// The mode named `name`.
    pub fn parse(name: &str) -> Result<Queues, String> {
        Queues::ALL
            .into_iter()
            .find(|q| q.name() == name)
            .ok_or_else(|| format!("unknown queue mode {name:?} (channel, per-process or shared)"))
    }
}
