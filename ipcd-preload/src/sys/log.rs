//! One-line diagnostics on stderr, each written with a single `write` so
//! lines from several processes never interleave.

use crate::sys::real;

/// Message levels, as `IPCD_LOG` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Something failed.
    Error = 0,
    /// Something degraded (a fallback to the kernel).
    Warn = 1,
    /// Lifecycle events.
    Info = 2,
    /// Per-connection detail.
    Debug = 3,
}

/// Writes `ipcd[pid] level: msg` if `level` is enabled.
pub(crate) fn write(level: Level, msg: std::fmt::Arguments<'_>) {
    if level as u8 > crate::sys::config::get().log_level {
        return;
    }
    let name = match level {
        Level::Error => "error",
        Level::Warn => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
    };
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let line = format!("ipcd[{pid}] {name}: {msg}\n");
    // SAFETY: writes a live buffer to stderr; a short or failed write of a
    // diagnostic is not worth handling.
    let _ = unsafe { real::write(2, line.as_ptr().cast(), line.len()) };
}

/// `log!(Level::Warn, "fmt", args…)`.
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        $crate::sys::log::write($level, format_args!($($arg)*))
    };
}
pub(crate) use log;
