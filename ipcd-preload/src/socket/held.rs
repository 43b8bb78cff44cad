//! Telling a monitor that did not make them which connections this process
//! holds (the monitor was restarted): it lists them in `ipcd status` until
//! they close or the process goes (`Request::Held`). The peer's death is
//! not its to see (it has no segment for them): an end judges that itself
//! (see `conn::peer`).

use std::sync::atomic::{AtomicU32, Ordering};

use ipcd_proto::Request;

use crate::control;
use crate::socket::{table, State, Stream};

/// The monitor (pid) this process last reported to.
static REPORTED_TO: AtomicU32 = AtomicU32::new(0);

/// At a set-up call: if the monitor answering now has not heard of the
/// connections an earlier one made, tells it (once per monitor; one
/// atomic load otherwise).
pub(crate) fn report() {
    let now = control::monitor();
    if now == 0 || REPORTED_TO.load(Ordering::Relaxed) == now || REPORTED_TO.swap(now, Ordering::Relaxed) == now {
        return;
    }
    let mut reqs = Vec::new();
    for s in table::sockets() {
        if let State::Stream(st) = &mut *s.lock() {
            if st.monitor != now && st.reported_to != now {
                st.reported_to = now;
                reqs.push(held(st, true));
            }
        }
    }
    if !reqs.is_empty() {
        let _ = control::with(|c| reqs.iter().try_for_each(|r| c.notify(r)));
    }
}

/// The `Held` request for `st` (`open`: still held).
fn held(st: &Stream, open: bool) -> Request {
    Request::Held { conn: st.info.conn, side: st.info.side, local: st.info.local, peer: st.info.peer, open }
}

/// `st` is let go: the request that tells the monitor now answering, if
/// it was told of `st` (and not by us, then nothing to say).
pub(crate) fn let_go(st: &Stream) -> Option<Request> {
    (st.reported_to != 0 && st.reported_to == control::monitor()).then(|| held(st, false))
}
