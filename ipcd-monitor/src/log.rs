//! Leveled, structured log lines on stderr: `ts=… level=… msg="…" key=value…`.
//! The level comes from `IPCD_LOG` (error, warn, info, debug; default info).

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed.
    Error = 1,
    /// Something is off but service goes on.
    Warn = 2,
    /// Lifecycle events.
    Info = 3,
    /// Every request.
    Debug = 4,
}

static MAX: AtomicU8 = AtomicU8::new(Level::Info as u8);

/// Sets the level from `IPCD_LOG`; unknown values keep `info` and say so.
pub fn init_from_env() {
    let Ok(v) = std::env::var("IPCD_LOG") else { return };
    let level = match v.to_ascii_lowercase().as_str() {
        "error" => Level::Error,
        "warn" | "warning" => Level::Warn,
        "info" => Level::Info,
        "debug" | "trace" => Level::Debug,
        "off" | "none" => {
            MAX.store(0, Ordering::Relaxed);
            return;
        }
        other => {
            eprintln!("ipcd: IPCD_LOG={other:?} is not one of error, warn, info, debug, off; using info");
            Level::Info
        }
    };
    MAX.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are written.
pub fn enabled(level: Level) -> bool {
    level as u8 <= MAX.load(Ordering::Relaxed)
}

/// Writes one line (use the `log!` macro).
pub fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let name = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    // One write per line, so lines from several processes never interleave.
    let line =
        format!("ts={}.{:03} level={name} pid={} {msg}\n", now.as_secs(), now.subsec_millis(), std::process::id());
    let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
}

/// `log!(Level::Info, "msg=\"started\" socket={}", name)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}
