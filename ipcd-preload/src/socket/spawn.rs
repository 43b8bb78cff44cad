//! `posix_spawn`: the program it starts keeps the connections it inherits.
//!
//! glibc's `posix_spawn` (Rust's `std::process::Command`, Python's
//! `os.posix_spawn`) clones without fork handlers and execs through its
//! own internal call, so neither the fork nor the exec path sees it, and
//! the new program found bare kernel sockets under the fds it inherited.
//! Here the parent works out what the child will hold: its fds of ours
//! without `FD_CLOEXEC`, after the spawn's file actions (recorded as the
//! program adds them: `dup2` onto stdin and stdout is the inetd way). Each
//! stream end among them is handed over as a pass over `SCM_RIGHTS` is
//! (`pass::hand_over`: one more holder, shared from now on), and the child's
//! `IPCD_FDS` names the fds to claim (`c` entries), which its library does
//! with the kernel socket under each as proof (`pass::claim`). A child that
//! never claims (not under ipcd, or the spawn failed) lets its passes
//! expire, as an unclaimed pass does.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex};

use libc::c_int;

use crate::socket::heir::{self, Image};
use crate::socket::{pass, table, Socket};
use crate::sys::real;

/// One file action of a spawn, as far as it moves fds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Action {
    /// `dup2(from, to)` in the child (`from == to` clears `FD_CLOEXEC`).
    Dup2(c_int, c_int),
    /// The child's `fd` is closed, or replaced by a file it opens.
    Gone(c_int),
}

/// Recorded actions by the address of their `posix_spawn_file_actions_t`.
static ACTIONS: Mutex<Vec<(usize, Vec<Action>)>> = Mutex::new(Vec::new());

fn actions() -> std::sync::MutexGuard<'static, Vec<(usize, Vec<Action>)>> {
    ACTIONS.lock().unwrap_or_else(|p| p.into_inner())
}

/// The program added `action` to the file actions at `fa`.
pub(crate) fn record(fa: usize, action: Action) {
    let mut all = actions();
    match all.iter_mut().find(|(a, _)| *a == fa) {
        Some((_, list)) => list.push(action),
        None => all.push((fa, vec![action])),
    }
}

/// The file actions at `fa` were made afresh or destroyed.
pub(crate) fn forget(fa: usize) {
    actions().retain(|(a, _)| *a != fa);
}

/// What the child holds at each fd: the socket and whether the fd closes
/// at exec.
type ChildFds = BTreeMap<c_int, (Arc<Socket>, bool)>;

/// Our fds as the child will have them once the file actions at `fa`
/// ran and the exec closed the close-on-exec ones.
fn child_fds(fa: usize) -> ChildFds {
    let mut child = ChildFds::new();
    table::for_each_fd(|fd, sock| {
        // SAFETY: F_GETFD on an fd in our table.
        let cloexec = unsafe { real::fcntl(fd, libc::F_GETFD, 0) } & libc::FD_CLOEXEC != 0;
        child.insert(fd, (Arc::clone(sock), cloexec));
    });
    let list = actions().iter().find(|(a, _)| *a == fa).map(|(_, l)| l.clone()).unwrap_or_default();
    for action in list {
        match action {
            // glibc clears the flag for a dup2 onto itself.
            Action::Dup2(from, to) if from == to => {
                if let Some(e) = child.get_mut(&from) {
                    e.1 = false;
                }
            }
            Action::Dup2(from, to) => match child.get(&from).map(|(s, _)| Arc::clone(s)) {
                Some(sock) => {
                    child.insert(to, (sock, false));
                }
                None => {
                    child.remove(&to);
                }
            },
            Action::Gone(fd) => {
                child.remove(&fd);
            }
        }
    }
    child.retain(|_, (_, cloexec)| !*cloexec);
    child
}

/// Before a `posix_spawn` of `image` with file actions `fa` (0: none) and
/// environment `envp`: hands over every end the child will hold and
/// returns the child's `IPCD_FDS` entry, or `None` if it inherits none of
/// ours (or will not run the library: its ends are relayed, see `heir`).
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
pub(crate) unsafe fn prepare(fa: usize, image: Image<'_>, envp: *const *const libc::c_char) -> Option<CString> {
    let child = child_fds(fa);
    if child.is_empty() {
        return None;
    }
    // SAFETY: as the caller promises.
    if !unsafe { heir::runs_library(image, envp) } {
        for (sock, fd) in parent_fds(&child) {
            pass::demote(fd, &sock);
        }
        return None;
    }
    // Each socket once, through one of the parent's fds for it.
    let mut handed: Vec<(usize, bool)> = Vec::new();
    let mut parent_fd: BTreeMap<usize, c_int> = BTreeMap::new();
    table::for_each_fd(|fd, sock| {
        parent_fd.entry(Arc::as_ptr(sock) as usize).or_insert(fd);
    });
    let mut out = String::new();
    for (fd, (sock, _)) in &child {
        let key = Arc::as_ptr(sock) as usize;
        let group = match handed.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                let ok = parent_fd.get(&key).is_some_and(|&pfd| pass::hand_over(pfd, sock, pass::To::Spawned));
                handed.push((key, ok));
                handed.len() - 1
            }
        };
        if !handed[group].1 {
            continue;
        }
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(&format!("{fd}:c:{group}:a:1"));
    }
    if out.is_empty() {
        return None;
    }
    CString::new(format!("{}={out}", crate::socket::exec::VAR)).ok()
}

/// Each socket the child will hold once, with an fd of it in this process.
fn parent_fds(child: &ChildFds) -> Vec<(Arc<Socket>, c_int)> {
    let mut out: Vec<(Arc<Socket>, c_int)> = Vec::new();
    table::for_each_fd(|fd, sock| {
        let wanted = child.values().any(|(s, _)| Arc::ptr_eq(s, sock));
        if wanted && !out.iter().any(|(s, _)| Arc::ptr_eq(s, sock)) {
            out.push((Arc::clone(sock), fd));
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_actions_stay_with_their_file_actions_until_forgotten() {
        record(0x1000, Action::Dup2(5, 0));
        record(0x2000, Action::Gone(3));
        record(0x1000, Action::Dup2(5, 1));
        let list = |fa| actions().iter().find(|(a, _)| *a == fa).map(|(_, l)| l.len());
        assert_eq!(list(0x1000), Some(2));
        assert_eq!(list(0x2000), Some(1));
        forget(0x1000);
        assert_eq!(list(0x1000), None);
        assert_eq!(list(0x2000), Some(1));
        forget(0x2000);
    }
}
