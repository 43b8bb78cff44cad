//! What closing an fd of ours does: the table forgets it and, with its
//! last fd gone, the socket's connection ends (FIN or reset), its listener
//! unregisters, its doorbell leaves every epoll set. Called by the
//! interposed close/dup family and by a data call that outlived a close.

use libc::c_int;

use crate::socket::{reuse, setup, stream, table, Socket, State};
use crate::sys::guarded;

/// Drops `fd` from the table: from now on the kernel serves it alone.
pub(crate) fn forget(fd: c_int) {
    if let Some(s) = table::remove(fd) {
        if s.drop_fd() {
            *s.lock() = State::Closed;
            reuse::give_up(&s);
        }
    }
}

/// What the last close does (also run by a call that outlived the close).
pub(crate) fn close_now(sock: &Socket) {
    let old = std::mem::replace(&mut *sock.lock(), State::Closed);
    match old {
        State::Stream(st) => {
            stream::let_go(*st, sock.linger_zero(), true);
            crate::ready::epoll::stream_closed();
        }
        State::Listening { id, shared, passed, .. } => setup::close_listener(id, shared, passed),
        State::Fresh { .. } | State::Closed => {}
    }
    // Not kept: a lent copy would hold the kernel socket open.
    reuse::give_up(sock);
}

/// Our bookkeeping for an fd about to be closed (by close, or implicitly by
/// dup2/dup3 onto it).
pub(crate) fn release(fd: c_int) {
    drop_fd(fd, false);
}

/// [`release`] for the program's `close`, before the kernel's: with the
/// last fd gone, a clean kernel socket (still open as `fd`) is kept for
/// the next socket (see [`reuse`]).
pub(crate) fn release_keeping(fd: c_int) {
    drop_fd(fd, true);
}

/// Forgets `fd`. With the last fd of its socket gone: FIN or reset,
/// unregister, unmap (keeping the kernel socket first if `keep`) — unless
/// a call in another thread still uses it, which then does this.
fn drop_fd(fd: c_int, keep: bool) {
    if !table::is_ours(fd) {
        return;
    }
    let forks = if keep { reuse::forks_now() } else { 0 };
    let Some(s) = table::remove(fd) else { return };
    if !s.drop_fd() {
        return;
    }
    guarded((), || {
        if s.defer_close() {
            return;
        }
        if keep {
            let bound = match &*s.lock() {
                State::Fresh { bound } => Some(*bound),
                State::Stream(st) => Some(st.bound),
                State::Listening { .. } | State::Closed => None,
            };
            if let Some(bound) = bound {
                reuse::keep(fd, &s, bound, forks);
            }
        }
        close_now(&s);
    });
}
