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
    /// What was not understood, and what was used instead.
    pub invalid: Vec<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// One fewer than the cores this process may run on: a spinner keeps a
/// core, and the thread it waits for needs one too.
fn default_spinners() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32 - 1).max(1)
}

/// The settings (read on first use).
pub(crate) fn get() -> &'static Config {
    CONFIG.get_or_init(|| read(&|k| std::env::var(k).ok().filter(|v| !v.is_empty())))
}

/// Says once, at load, which settings were not understood and what was
/// used instead (a typo must not pass for the default in silence).
pub(crate) fn report_invalid() {
    for m in &get().invalid {
        crate::sys::log::log!(crate::sys::log::Level::Warn, "{m}");
    }
}

/// The settings from `var` (the environment).
fn read(var: &dyn Fn(&str) -> Option<String>) -> Config {
    let mut invalid = Vec::new();
    let mut num = |k: &str, default: u64, shown: &str| -> u64 {
        match var(k).map(|v| (v.parse::<u64>(), v)) {
            None => default,
            Some((Ok(n), _)) => n,
            Some((Err(_), v)) => {
                invalid.push(format!("{k}={v:?} is not a whole number; using {shown}"));
                default
            }
        }
    };
    let spin = Duration::from_micros(num("IPCD_SPIN_US", DEFAULT_SPIN.as_micros() as u64, "50"));
    let batch = Duration::from_nanos(num("IPCD_BATCH_NS", DEFAULT_BATCH.as_nanos() as u64, "500"));
    let cores = default_spinners();
    let spinners = match num("IPCD_SPINNERS", u64::from(cores), &format!("{cores} (one fewer than the cores)")) {
        0 => {
            invalid.push("IPCD_SPINNERS=0 lets no thread spin; using 1".to_string());
            1
        }
        n => u32::try_from(n).unwrap_or(u32::MAX),
    };
    let log_level = match var("IPCD_LOG").as_deref() {
        None | Some("warn") => 1,
        Some("error") => 0,
        Some("info") => 2,
        Some("debug") | Some("trace") => 3,
        Some(other) => {
            invalid.push(format!("IPCD_LOG={other:?} is not one of error, warn, info, debug; using warn"));
            1
        }
    };
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    Config {
        disabled: var("IPCD_DISABLE").is_some_and(|v| v != "0"),
        socket: var("IPCD_SOCKET").unwrap_or_else(|| format!("ipcd-{uid}")),
        spin,
        spinners,
        batch,
        log_level,
        invalid,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        read(&|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()))
    }

    #[test]
    fn unset_settings_take_the_defaults_quietly() {
        let c = with(&[]);
        assert_eq!((c.spin, c.batch, c.log_level), (DEFAULT_SPIN, DEFAULT_BATCH, 1));
        assert_eq!(c.spinners, default_spinners().max(1));
        assert!(c.invalid.is_empty());
    }

    #[test]
    fn good_settings_are_taken() {
        let c = with(&[("IPCD_SPIN_US", "7"), ("IPCD_SPINNERS", "3"), ("IPCD_BATCH_NS", "0"), ("IPCD_LOG", "debug")]);
        assert_eq!((c.spin, c.spinners, c.batch, c.log_level), (Duration::from_micros(7), 3, Duration::ZERO, 3));
        assert!(c.invalid.is_empty(), "{:?}", c.invalid);
    }

    #[test]
    fn bad_settings_are_named_with_what_was_used() {
        let c = with(&[("IPCD_SPIN_US", "garbage"), ("IPCD_SPINNERS", "0"), ("IPCD_LOG", "loud")]);
        assert_eq!((c.spin, c.spinners, c.log_level), (DEFAULT_SPIN, 1, 1));
        assert_eq!(c.invalid.len(), 3, "{:?}", c.invalid);
        assert!(c.invalid[0].contains("IPCD_SPIN_US=\"garbage\"") && c.invalid[0].ends_with("using 50"));
        assert!(c.invalid[1].contains("IPCD_SPINNERS=0"));
        assert!(c.invalid[2].contains("IPCD_LOG=\"loud\"") && c.invalid[2].ends_with("using warn"));
    }
}
