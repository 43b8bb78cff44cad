//! Sockets of ours: the object behind an fd ([`object`]), the fd table
//! ([`table`]), the stream data path ([`stream`]), connection set-up through
//! the monitor ([`setup`]), hand-over by `SCM_RIGHTS` ([`pass`]) and across
//! exec ([`exec`]) and `posix_spawn` ([`spawn`]), kernel sockets kept for
//! reuse ([`reuse`]).

pub(crate) mod cork;
pub(crate) mod exec;
pub(crate) mod fallbacks;
pub(crate) mod heir;
pub(crate) mod held;
mod object;
pub(crate) mod options;
pub(crate) mod pass;
pub(crate) mod reuse;
pub(crate) mod setup;
pub(crate) mod spawn;
pub(crate) mod stream;
pub(crate) mod table;

pub(crate) use object::{Call, Socket, State, Stream, TCP_INQ};
