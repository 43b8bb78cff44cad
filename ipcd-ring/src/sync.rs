//! The one place that names the atomics the crate uses: `core`'s normally,
//! loom's under `--cfg loom`, so that every shared access is modelled.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
