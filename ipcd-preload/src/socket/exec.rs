//! exec: ipcd sockets without `FD_CLOEXEC` keep working in the new image.
//!
//! Before the exec, the library writes its table of such fds into the
//! environment (`IPCD_FDS`) and tells the monitor (`ExecPrepare`), which
//! keeps the process's connections while its old control channel closes.
//! The new image (under the library too, since `LD_PRELOAD` is inherited)
//! reads the table in its constructor, says `Hello` as the same pid, and
//! maps each connection again (`Reopen`). Close-on-exec sockets are mapped
//! and closed there, as the kernel closes them at exec. `execl`-style
//! variadic calls cannot be defined in stable Rust and are not caught; a
//! program using them gets its sockets reset in the new image, not
//! corrupted (the monitor's grace period ends them).

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, CString};
use std::sync::Arc;

use ipcd_proto::message::{Request, Response, Side};
use libc::{c_char, c_int};

use crate::control;
use crate::socket::heir::{self, Image};
use crate::socket::{pass, reuse, setup, table};
use crate::socket::{Socket, State, Stream};
use crate::sys::log::{log, Level};
use crate::sys::real;

/// The environment variable that carries the table across exec.
pub(crate) const VAR: &str = "IPCD_FDS";

/// `fd:kind:value:side:shared` entries, `;`-separated. Kinds: `s` a stream
/// to keep, `d` a stream the exec closes (value: connection id, side `a`
/// or `b`), `c` an end a spawning parent passed, to claim (value: a group
/// shared by the fds of one socket; written by `spawn`), `l` a listener (value: backlog; two more fields: its id, under
/// which a listener shared with other processes is registered again, and
/// the program's `O_NONBLOCK`, which the kernel fd does not show: the
/// library keeps every listener's kernel fd non-blocking).
fn describe() -> String {
    let mut out = String::new();
    table::for_each_fd(|fd, sock| {
        // SAFETY: F_GETFD on an fd in our table.
        let cloexec = unsafe { real::fcntl(fd, libc::F_GETFD, 0) } & libc::FD_CLOEXEC != 0;
        let mut state = sock.lock();
        let entry = match &mut *state {
            // The new image sees a plain unbound socket: a kept one's
            // binding of ours goes.
            State::Fresh { .. } if !cloexec => {
                reuse::unbind(fd, sock, &mut state);
                return;
            }
            State::Stream(s) => format!(
                "{fd}:{}:{}:{}:{}",
                if cloexec { 'd' } else { 's' },
                s.link.conn,
                if s.info.side == Side::A { 'a' } else { 'b' },
                u8::from(s.link.is_shared())
            ),
            // One passed on is the kernel's: the new image finds it so.
            State::Listening { backlog, id, shared, passed: false, .. } if !cloexec => {
                format!("{fd}:l:{backlog}:a:{}:{id}:{}", u8::from(*shared), u8::from(sock.nonblocking()))
            }
            _ => return,
        };
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(&entry);
    });
    out
}

/// Before an exec of `image` with environment `envp`: the table for the
/// new image, if there is anything to hand over; the monitor is told to
/// keep our connections. A new image that will not run the library (see
/// `heir`) gets none: its inherited ends are relayed by the monitor
/// instead, its listeners become the kernel's.
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
pub(crate) unsafe fn prepare(image: Image<'_>, envp: *const *const c_char) -> Option<CString> {
    if table::is_empty() {
        return None;
    }
    // SAFETY: as the caller promises.
    if !crate::sys::guarded(true, || unsafe { heir::runs_library(image, envp) }) {
        crate::sys::guarded((), demote_inherited);
        return None;
    }
    let table = crate::sys::guarded(String::new(), describe);
    if table.is_empty() {
        return None;
    }
    let _ = control::with(|c| c.notify(&Request::ExecPrepare));
    CString::new(format!("{VAR}={table}")).ok()
}

/// Every socket of ours the new image inherits (an fd without
/// `FD_CLOEXEC`), for a new image without the library: each stream end
/// relayed, each listener the kernel's.
fn demote_inherited() {
    let mut inherited: Vec<(c_int, Arc<Socket>)> = Vec::new();
    table::for_each_fd(|fd, sock| {
        // SAFETY: F_GETFD on an fd in our table.
        let cloexec = unsafe { real::fcntl(fd, libc::F_GETFD, 0) } & libc::FD_CLOEXEC != 0;
        if !cloexec && !inherited.iter().any(|(_, s)| Arc::ptr_eq(s, sock)) {
            inherited.push((fd, Arc::clone(sock)));
        }
    });
    for (fd, sock) in inherited {
        pass::demote(fd, &sock);
    }
}

/// `envp` with our entry instead of any inherited one.
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
pub(crate) unsafe fn with_entry(envp: *const *const c_char, entry: &CString) -> Vec<*const c_char> {
    let mut v = Vec::new();
    let prefix = format!("{VAR}=");
    let mut p = envp;
    while !p.is_null() {
        // SAFETY: walking the caller's null-terminated array.
        let s = unsafe { *p };
        if s.is_null() {
            break;
        }
        // SAFETY: each entry is a C string.
        if !unsafe { CStr::from_ptr(s) }.to_bytes().starts_with(prefix.as_bytes()) {
            v.push(s);
        }
        // SAFETY: still inside the array (not past its null).
        p = unsafe { p.add(1) };
    }
    v.push(entry.as_ptr());
    v.push(std::ptr::null());
    v
}

extern "C" {
    static environ: *const *const c_char;
}

/// Interposed `execve(2)`.
///
/// # Safety
/// As for `execve(2)`.
#[no_mangle]
pub(crate) unsafe extern "C" fn execve(
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the caller's environment.
    match unsafe { prepare(Image::from_ptr(path, false), envp) } {
        // SAFETY: the caller's arguments, with our entry added to a copy of envp.
        Some(entry) => unsafe { real::execve(path, argv, with_entry(envp, &entry).as_ptr()) },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::execve(path, argv, envp) },
    }
}

/// Interposed `execv(3)`.
///
/// # Safety
/// As for `execv(3)`.
#[no_mangle]
pub(crate) unsafe extern "C" fn execv(path: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execv is execve with the current environment.
    unsafe { execve(path, argv, environ) }
}

/// Interposed `execvpe(3)`.
///
/// # Safety
/// As for `execvpe(3)`.
#[no_mangle]
pub(crate) unsafe extern "C" fn execvpe(
    file: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: the caller's environment.
    match unsafe { prepare(Image::from_ptr(file, true), envp) } {
        // SAFETY: the caller's arguments, with our entry added to a copy of envp.
        Some(entry) => unsafe { real::execvpe(file, argv, with_entry(envp, &entry).as_ptr()) },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::execvpe(file, argv, envp) },
    }
}

/// Interposed `execvp(3)`.
///
/// # Safety
/// As for `execvp(3)`.
#[no_mangle]
pub(crate) unsafe extern "C" fn execvp(file: *const c_char, argv: *const *const c_char) -> c_int {
    // SAFETY: execvp is execvpe with the current environment.
    unsafe { execvpe(file, argv, environ) }
}

/// Interposed `fexecve(3)`.
///
/// # Safety
/// As for `fexecve(3)`.
#[no_mangle]
pub(crate) unsafe extern "C" fn fexecve(fd: c_int, argv: *const *const c_char, envp: *const *const c_char) -> c_int {
    // SAFETY: the caller's environment.
    match unsafe { prepare(Image::Fd(fd), envp) } {
        // SAFETY: the caller's arguments, with our entry added to a copy of envp.
        Some(entry) => unsafe { real::fexecve(fd, argv, with_entry(envp, &entry).as_ptr()) },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real::fexecve(fd, argv, envp) },
    }
}

/// In the new image's constructor: takes over what the old image left.
pub(crate) fn restore() {
    let Ok(table) = std::env::var(VAR) else { return };
    // Not for our own children: they get a table of their own, or none.
    std::env::remove_var(VAR);
    let entries = parse(&table);
    // Ends a spawning parent passed (`spawn`): claimed once per group,
    // the group's other fds (dups) installed as the same socket.
    let mut claimed: HashMap<u64, Arc<Socket>> = HashMap::new();
    for &(fd, kind, group, _, _) in entries.iter().filter(|e| e.1 == b'c') {
        debug_assert_eq!(kind, b'c');
        match claimed.get(&group) {
            Some(sock) => {
                let _ = table::install(fd, Arc::clone(sock));
            }
            None => {
                if let Some(sock) = pass::claim(fd) {
                    claimed.insert(group, sock);
                }
            }
        }
    }
    // Kept streams first: several fds (dups) of one connection share one
    // socket object; a close-on-exec dup of a kept one closes nothing.
    let mut kept: HashMap<(u64, Side), Arc<Socket>> = HashMap::new();
    for &(fd, kind, value, side, how) in &entries {
        match kind {
            b's' => match kept.get(&(value, side)) {
                Some(sock) => {
                    let _ = table::install(fd, Arc::clone(sock));
                }
                None => {
                    if let Some(sock) = reopen(fd, value, side, how.shared) {
                        kept.insert((value, side), sock);
                    }
                }
            },
            b'l' => relisten(fd, value as c_int, how),
            _ => {}
        }
    }
    let mut dropped = HashSet::new();
    for &(fd, kind, value, side, how) in &entries {
        if kind == b'd' && !kept.contains_key(&(value, side)) && dropped.insert((value, side)) {
            drop_conn(fd, value, side, how.shared);
        }
    }
}

/// One fd of the table: fd, kind (`s`, `d` or `l`), value, side.
type Entry = (c_int, u8, u64, Side, Inherited);

/// The entries of an `IPCD_FDS` table; malformed ones are left out.
fn parse(table: &str) -> Vec<Entry> {
    let mut entries = Vec::new();
    for entry in table.split(';').filter(|e| !e.is_empty()) {
        let parts: Vec<&str> = entry.split(':').collect();
        let parsed = match parts.as_slice() {
            [fd, kind @ ("s" | "d" | "c"), value, side @ ("a" | "b"), shared] => {
                Some((fd, kind, value, side, shared, "0", "0"))
            }
            [fd, kind @ "l", value, side @ "a", shared, id, nonblocking @ ("0" | "1")] => {
                Some((fd, kind, value, side, shared, *id, *nonblocking))
            }
            // From a library that did not write the flag: blocking, as it assumed.
            [fd, kind @ "l", value, side @ "a", shared, id] => Some((fd, kind, value, side, shared, *id, "0")),
            _ => None,
        };
        let Some((fd, kind, value, side, shared, id, nonblocking)) = parsed else {
            log!(Level::Warn, "ignoring malformed {VAR} entry {entry:?}");
            continue;
        };
        match (fd.parse::<c_int>(), value.parse::<u64>(), id.parse::<u64>()) {
            (Ok(fd), Ok(value), Ok(id)) => {
                let side = if *side == "a" { Side::A } else { Side::B };
                let how = Inherited { shared: *shared == "1", id, nonblocking: nonblocking == "1" };
                entries.push((fd, kind.as_bytes()[0], value, side, how));
            }
            _ => log!(Level::Warn, "ignoring malformed {VAR} entry {entry:?}"),
        }
    }
    entries
}

/// What the old image said of an fd beyond its kind and value.
#[derive(Clone, Copy)]
struct Inherited {
    /// Other processes may hold it too.
    shared: bool,
    /// A listener's id in the old image (0 for streams).
    id: u64,
    /// A listener's `O_NONBLOCK` as the program set it.
    nonblocking: bool,
}

/// The connection `conn`, mapped again from the monitor.
fn remap(fd: c_int, conn: u64, side: Side, shared: bool) -> Option<Stream> {
    let answer = control::with(|c| c.call(&Request::Reopen { conn, side }, &[]));
    let Some((Response::Reopened(info), fds)) = answer else {
        log!(Level::Warn, "connection {conn} (fd {fd}) not handed over by the monitor: {answer:?}");
        return None;
    };
    setup::stream_from(info, fds.into_vec(), shared)
}

/// Maps connection `conn` again at `fd`.
fn reopen(fd: c_int, conn: u64, side: Side, shared: bool) -> Option<Arc<Socket>> {
    setup::adopt(fd, remap(fd, conn, side, shared)?)
}

/// A close-on-exec connection: gone in this image, closed as the kernel
/// closes it at exec.
fn drop_conn(fd: c_int, conn: u64, side: Side, shared: bool) {
    if let Some(stream) = remap(fd, conn, side, shared) {
        crate::socket::stream::let_go(stream, false, false);
    }
}

/// Registers an inherited listener again, as the old image's listener
/// `how.id`, shared if other processes held it then, with the program's
/// `O_NONBLOCK` from the table (its kernel fd is always non-blocking).
fn relisten(fd: c_int, backlog: c_int, how: Inherited) {
    let family = real::int_opt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    let sock = Arc::new(Socket::new(family, how.nonblocking, State::Fresh { bound: None }));
    if table::install(fd, Arc::clone(&sock)).is_ok()
        && !setup::listen_as(fd, &sock, backlog, Some((how.id, how.shared)))
    {
        if let Some(s) = table::remove(fd) {
            s.drop_fd();
        }
        // A plain kernel listener now: its flag is the program's again.
        // Not when other processes share the description: their libraries
        // rely on it staying non-blocking (see `setup::listen_as`).
        if !how.shared && !how.nonblocking {
            real::set_kernel_nonblocking(fd, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(e: &Entry) -> (c_int, u64, bool, u64, bool) {
        assert_eq!(e.1, b'l');
        (e.0, e.2, e.4.shared, e.4.id, e.4.nonblocking)
    }

    #[test]
    fn a_listener_entry_carries_its_id_sharing_and_nonblocking_flag() {
        let entries = parse("3:l:128:a:1:7:1;4:l:16:a:0:9:0");
        assert_eq!(entries.len(), 2);
        assert_eq!(listener(&entries[0]), (3, 128, true, 7, true));
        assert_eq!(listener(&entries[1]), (4, 16, false, 9, false));
    }

    #[test]
    fn a_listener_entry_without_the_flag_is_taken_as_blocking() {
        let entries = parse("5:l:64:a:0:2");
        assert_eq!(entries.len(), 1);
        assert_eq!(listener(&entries[0]), (5, 64, false, 2, false));
    }

    #[test]
    fn stream_entries_keep_their_side_and_malformed_ones_are_dropped() {
        let entries = parse("6:s:42:b:1;7:d:43:a:0;8:l:1:a:0:3:2;x:s:1:a:0;9:s:1:c:0;;");
        assert_eq!(entries.len(), 2);
        let (fd, kind, conn, side, how) = entries[0];
        assert_eq!((fd, kind, conn, side, how.shared), (6, b's', 42, Side::B, true));
        let (fd, kind, conn, side, how) = entries[1];
        assert_eq!((fd, kind, conn, side, how.shared), (7, b'd', 43, Side::A, false));
    }
}
