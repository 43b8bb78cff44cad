//! # ipcd-monitor
//!
//! The per-host (per user, per network namespace) monitor: it registers
//! ipcd listeners, brokers connections between processes under ipcd by
//! handing both ends a sealed shared-memory segment and each other's
//! doorbell, and cleans up after processes that die. It is on the control
//! path only and touches payload bytes only for an end it relays over
//! kernel TCP to a program that cannot map it ([`relay`]).
#![warn(missing_docs, missing_debug_implementations)]

pub mod bells;
pub mod bench;
/// The monitor client lives in `ipcd-proto`, for tools that need only it.
pub use ipcd_proto::client;
pub mod config;
mod control_pages;
pub mod daemon;
pub mod limits;
pub mod local_addrs;
pub mod log;
pub mod metrics;
pub mod metrics_http;
pub mod notify;
pub mod pcap;
pub mod registry;
pub mod relay;
pub mod segment;
pub mod settings_report;
pub mod tracer;
