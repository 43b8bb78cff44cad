//! # ipcd-proto
//!
//! The control protocol between processes under ipcd and the monitor.
//! (Built out by the protocol issue; this crate holds the workspace slot.)
#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]

/// Version of the control protocol this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
