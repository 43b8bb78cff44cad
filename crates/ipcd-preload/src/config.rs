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
pub struct Config {
    /// `IPCD_DISABLE=1`: every call passes through to libc.
    pub disabled: bool,
    /// Monitor socket name (`IPCD_SOCKET`, else `ipcd-<uid>`, as the monitor).
    pub socket: String,
    /// `IPCD_SPIN_US`: how long a blocking call spins before it sleeps.
    pub spin: Duration,
    /// `IPCD_BATCH_NS`: how long a reader that keeps finding a few bytes
    /// waiting pauses before it looks again (0: never).
    pub batch: Duration,
    /// `IPCD_LOG`: 0 error, 1 warn (default), 2 info, 3 debug.
    pub log_level: u8,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The settings (read on first use).
pub fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        Config {
            disabled: var("IPCD_DISABLE").is_some_and(|v| v != "0"),
            socket: var("IPCD_SOCKET").unwrap_or_else(|| format!("ipcd-{uid}")),
            spin: var("IPCD_SPIN_US").and_then(|v| v.parse().ok()).map_or(DEFAULT_SPIN, Duration::from_micros),
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
