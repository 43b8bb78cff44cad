//! Shared pieces of ipcd's integration tests and benchmarks: socket calls
//! through plain libc (what an unmodified program does), test data, and a
//! harness that starts a monitor and programs under the preload library.

pub mod data;
pub mod harness;
/// Socket calls through plain libc; shared with `ipcd bench`'s workloads.
pub use ipcd_monitor::bench::net;
