//! Interposed `fdopen`, `fileno` and `fileno_unlocked`: a stdio stream on
//! one of our sockets. glibc's streams read and write through its internal
//! `__read`/`__write`, which no interposition reaches: an `fdopen`ed ipcd
//! connection read the idle kernel socket underneath and never saw a byte.
//! Such a stream is made with `fopencookie` over the interposed `read`,
//! `write` and `close` instead, and `fileno` answers its fd.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use libc::{c_char, c_int, c_void, size_t, ssize_t, FILE};

use crate::ffi::{io, socket};
use crate::socket::table;
use crate::sys::real;

/// glibc's `cookie_io_functions_t`.
#[repr(C)]
struct CookieIo {
    read: Option<unsafe extern "C" fn(*mut c_void, *mut c_char, size_t) -> ssize_t>,
    write: Option<unsafe extern "C" fn(*mut c_void, *const c_char, size_t) -> ssize_t>,
    seek: Option<unsafe extern "C" fn(*mut c_void, *mut libc::off64_t, c_int) -> c_int>,
    close: Option<unsafe extern "C" fn(*mut c_void) -> c_int>,
}

extern "C" {
    fn fopencookie(cookie: *mut c_void, mode: *const c_char, io: CookieIo) -> *mut FILE;
}

/// What a stream of ours is given as its cookie: its fd, at an address of
/// its own (two streams may share an fd).
struct Cookie {
    fd: c_int,
}

/// Our streams: the `FILE`, its cookie and fd (few: one or two per
/// connection so opened).
static STREAMS: Mutex<Vec<(usize, usize, c_int)>> = Mutex::new(Vec::new());
/// How many there are: `fileno` of every other stream pays one load.
static COUNT: AtomicUsize = AtomicUsize::new(0);

fn streams() -> std::sync::MutexGuard<'static, Vec<(usize, usize, c_int)>> {
    STREAMS.lock().unwrap_or_else(|p| p.into_inner())
}

fn fd_of(cookie: *mut c_void) -> c_int {
    // SAFETY: every stream of ours was given a live `Cookie`, freed only by
    // its close, after which stdio calls nothing of it.
    unsafe { (*cookie.cast::<Cookie>()).fd }
}

unsafe extern "C" fn cookie_read(cookie: *mut c_void, buf: *mut c_char, n: size_t) -> ssize_t {
    // SAFETY: stdio hands us its buffer of `n` bytes.
    unsafe { io::read(fd_of(cookie), buf.cast(), n) }
}

/// Writes all of `buf` or fails: glibc takes a short count from a cookie
/// for an error on the stream.
unsafe extern "C" fn cookie_write(cookie: *mut c_void, buf: *const c_char, n: size_t) -> ssize_t {
    let mut done = 0;
    while done < n {
        // SAFETY: the rest of stdio's buffer of `n` bytes.
        let r = unsafe { io::write(fd_of(cookie), buf.add(done).cast(), n - done) };
        match r {
            r if r > 0 => done += r as usize,
            r if r < 0 && real::errno() == libc::EINTR => {}
            _ => return if done > 0 { done as ssize_t } else { -1 },
        }
    }
    done as ssize_t
}

unsafe extern "C" fn cookie_close(cookie: *mut c_void) -> c_int {
    let mut s = streams();
    if let Some(i) = s.iter().position(|&(_, c, _)| c == cookie as usize) {
        s.swap_remove(i);
        COUNT.fetch_sub(1, Ordering::Relaxed);
    }
    drop(s);
    // SAFETY: made by `Box::into_raw` in `fdopen`; stdio closes a stream once.
    let fd = unsafe { Box::from_raw(cookie.cast::<Cookie>()) }.fd;
    // SAFETY: the stream owned `fd`; fclose closes it.
    unsafe { socket::close(fd) }
}

/// Interposed `fdopen(3)`.
///
/// # Safety
/// As for `fdopen(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    if table::get(fd).is_none() || mode.is_null() {
        // SAFETY: the caller's arguments, unchanged.
        return unsafe { real::fdopen(fd, mode) };
    }
    // SAFETY: a NUL-terminated mode string (the caller's contract).
    if !matches!(unsafe { *mode } as u8, b'r' | b'w' | b'a') {
        real::set_errno(libc::EINVAL);
        return std::ptr::null_mut();
    }
    let io = CookieIo { read: Some(cookie_read), write: Some(cookie_write), seek: None, close: Some(cookie_close) };
    let cookie = Box::into_raw(Box::new(Cookie { fd }));
    // SAFETY: valid callbacks and cookie for the stream's life; `mode` is
    // the caller's.
    let f = unsafe { fopencookie(cookie.cast(), mode, io) };
    if f.is_null() {
        // SAFETY: not handed to any stream.
        drop(unsafe { Box::from_raw(cookie) });
    } else {
        streams().push((f as usize, cookie as usize, fd));
        COUNT.fetch_add(1, Ordering::Relaxed);
    }
    f
}

fn our_fd(f: *mut FILE) -> Option<c_int> {
    if COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    streams().iter().find(|&&(p, _, _)| p == f as usize).map(|&(_, _, fd)| fd)
}

/// Interposed `fileno(3)`: a stream of ours has no fd stdio knows of.
///
/// # Safety
/// As for `fileno(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fileno(f: *mut FILE) -> c_int {
    match our_fd(f) {
        Some(fd) => fd,
        // SAFETY: the caller's stream.
        None => unsafe { real::fileno(f) },
    }
}

/// Interposed `fileno_unlocked(3)`.
///
/// # Safety
/// As for `fileno_unlocked(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn fileno_unlocked(f: *mut FILE) -> c_int {
    match our_fd(f) {
        Some(fd) => fd,
        // SAFETY: the caller's stream.
        None => unsafe { real::fileno_unlocked(f) },
    }
}

/// From the constructor, once inherited connections are restored: each
/// of fds 0, 1 and 2 that is an ipcd connection (an inetd-style program
/// started with its stdin and stdout on one) gets a stream of ours as
/// `stdin`, `stdout` or `stderr`. glibc's own streams for them would read
/// and write the idle kernel socket underneath (`head` died of EPIPE).
/// `stderr` stays unbuffered, as glibc makes it.
pub(crate) fn standard_streams() {
    extern "C" {
        static mut stdin: *mut FILE;
        static mut stdout: *mut FILE;
        static mut stderr: *mut FILE;
    }
    for (fd, mode) in [(0, c"r"), (1, c"w"), (2, c"w")] {
        if table::get(fd).is_none() {
            continue;
        }
        // SAFETY: an fd of ours and a NUL-terminated mode.
        let f = unsafe { fdopen(fd, mode.as_ptr()) };
        if f.is_null() {
            continue;
        }
        // SAFETY: the constructor runs before the program's code, alone in
        // the process: nothing else reads these variables yet; `f` is a
        // stream just made.
        unsafe {
            match fd {
                0 => stdin = f,
                1 => stdout = f,
                _ => {
                    libc::setvbuf(f, std::ptr::null_mut(), libc::_IONBF, 0);
                    stderr = f;
                }
            }
        }
    }
}
