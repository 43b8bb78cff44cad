//! The `check` scenarios, by theme. Each runs server and client in one
//! process tree and asserts exactly what Linux TCP does, so the same
//! check passes on the kernel and under ipcd.

pub(crate) mod data;
pub(crate) mod exec;
pub(crate) mod fork;
pub(crate) mod kept;
pub(crate) mod lifecycle;
pub(crate) mod limits;
pub(crate) mod pass;
pub(crate) mod readiness;
pub(crate) mod relay;
pub(crate) mod renewal;
pub(crate) mod signals;
