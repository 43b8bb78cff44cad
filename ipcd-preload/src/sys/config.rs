//! Settings read once from the environment at the first interposed call.

use std::sync::OnceLock;
use std::time::Duration;

/// Default spin before sleeping on a doorbell: long enough to cover a peer
/// that answers at once (a round trip is well under a microsecond), short
/// enough that an idle wait costs little CPU.
const DEFAULT_SPIN: Duration = Duration::from_micros(50);

/// Default pause of a reader that keeps finding a few bytes waiting (see
/// `stream::recv`): a few line transfers' worth, far below what the kernel
/// takes to hand over one write.
const DEFAULT_BATCH: Duration = Duration::from_nanos(500);

/// What the environment asked for.
#[derive(Debug)]
pub(crate) struct Config {
    /// `IPCD_DISABLE=1`: every call passes through to libc.
    pub disabled: bool,
    /// Monitor socket name (`IPCD_SOCKET`, else `ipcd-<uid>`, as the monitor).
    pub socket: String,
    /// `IPCD_SPIN_US`: how long a blocking call spins before it sleeps.
    pub spin: Duration,
    /// How many threads of this process may spin at once (`IPCD_SPINNERS`,
    /// else one fewer than the cores this process may run on, at least 1).
    pub spinners: u32,
    /// `IPCD_BATCH_NS`: how long a reader that keeps finding a few bytes
    /// waiting first pauses before it looks again (0: never); further
    /// pauses double, up to 32 times this (see `stream::recv`).
    pub batch: Duration,
    /// `IPCD_LOG`: 0 error, 1 warn (default), 2 info, 3 debug.
    pub log_level: u8,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// One fewer than the cores this process may run on: a spinner keeps a
/// core, and the thread it waits for needs one too.
fn default_spinners() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32 - 1)
}

/// The settings (read on first use).
pub(crate) fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        Config {
            disabled: var("IPCD_DISABLE").is_some_and(|v| v != "0"),
            socket: var("IPCD_SOCKET").unwrap_or_else(|| format!("ipcd-{uid}")),
            spin: var("IPCD_SPIN_US").and_then(|v| v.parse().ok()).map_or(DEFAULT_SPIN, Duration::from_micros),
            spinners: var("IPCD_SPINNERS").and_then(|v| v.parse().ok()).unwrap_or_else(default_spinners).max(1),
            batch: var("IPCD_BATCH_NS").and_then(|v| v.parse().ok()).map_or(DEFAULT_BATCH, Duration::from_nanos),
            log_level: match var("IPCD_LOG").as_deref() {
                Some("error") => 0,
                Some("info") => 2,
                Some("debug") | Some("trace") => 3,
                _ => 1,
            },
        }
    })
}
