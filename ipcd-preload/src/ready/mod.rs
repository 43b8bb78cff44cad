//! Readiness of our sockets from ring state ([`readiness`]), and the
//! emulated `poll`/`select` ([`poll`]) and `epoll` ([`epoll`]) that mix
//! them with the kernel's fds.

pub(crate) mod epoll;
pub(crate) mod poll;
pub(crate) mod readiness;
