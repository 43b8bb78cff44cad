//! One end of a connection: the link to its shared-memory segment
//! ([`link`]), the doorbells that wake a sleeping peer ([`bell`]), and the
//! spin-then-sleep wait every blocking call uses ([`wait`]).

pub(crate) mod bell;
pub(crate) mod link;
pub(crate) mod wait;
