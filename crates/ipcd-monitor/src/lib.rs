//! The ipcd monitor: the per-host daemon that brokers connections.
//! (Built out by the monitor issue; this crate holds the workspace slot.)
#![warn(missing_docs)]
