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
            exec_grace_secs: 10,
        }
    }
}
