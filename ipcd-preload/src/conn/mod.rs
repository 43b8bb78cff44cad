//! One end of a connection: the link to its shared-memory segment
//! ([`link`]), the doorbells that wake a sleeping peer ([`bell`]), the
//! spin-then-sleep wait every blocking call uses ([`wait`]), and how an
//! end whose monitor is gone learns that its peer died ([`peer`]).

pub(crate) mod bell;
pub(crate) mod link;
pub(crate) mod peer;
pub(crate) mod wait;
