//! Whether the program an exec or spawn starts will run this library: it
//! will not if its environment has no `LD_PRELOAD` naming it (`env -i`,
//! a cleared variable), disables it (`IPCD_DISABLE`), or the binary
//! ignores `LD_PRELOAD` (statically linked, or set-user-ID to another
//! user). Such a program cannot map our connection ends; they are handed
//! to monitor relays instead (see `pass::demote`). What cannot be read
//! (a path that does not exist, an unreadable binary) counts as running
//! the library: the exec fails, or nothing better is known.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use libc::{c_char, c_int};

use crate::sys::real;

/// The program an exec or spawn starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Image<'a> {
    /// A path, as `execve` takes it.
    Path(&'a CStr),
    /// A name looked up in `PATH` unless it has a slash (`execvp`).
    Search(&'a CStr),
    /// An open file (`fexecve`).
    Fd(c_int),
    /// `execveat(dirfd, path, flags)`.
    At(c_int, &'a CStr, c_int),
    /// A path that cannot be read (the exec fails with `EFAULT`).
    Unreadable,
}

impl<'a> Image<'a> {
    /// The image at `path` as the caller passed it (looked up in `PATH`
    /// if `search`), or [`Image::Unreadable`].
    ///
    /// # Safety
    /// `path` null or a pointer the caller passed, alive for `'a`.
    pub(crate) unsafe fn from_ptr(path: *const c_char, search: bool) -> Image<'a> {
        if path.is_null() || crate::sys::user::accessible(path.cast(), 1, false) == 0 {
            return Image::Unreadable;
        }
        // SAFETY: a readable C string, as the caller promises.
        let p = unsafe { CStr::from_ptr(path) };
        if search {
            Image::Search(p)
        } else {
            Image::Path(p)
        }
    }
}

/// Whether `image`, started with environment `envp`, runs this library.
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
pub(crate) unsafe fn runs_library(image: Image<'_>, envp: *const *const c_char) -> bool {
    // SAFETY: as the caller promises.
    let env = unsafe { Env::read(envp) };
    if !env.preloads_us || env.disabled {
        return false;
    }
    match open(image) {
        Some(file) => loads_preload(&file, 1),
        None => true,
    }
}

/// What the new image's environment says of us.
struct Env {
    preloads_us: bool,
    disabled: bool,
}

impl Env {
    /// # Safety
    /// As for [`runs_library`].
    unsafe fn read(envp: *const *const c_char) -> Env {
        let mut env = Env { preloads_us: false, disabled: false };
        let mut p = envp;
        while !p.is_null() {
            // SAFETY: walking the caller's null-terminated array.
            let s = unsafe { *p };
            if s.is_null() {
                break;
            }
            // SAFETY: each entry is a C string.
            let bytes = unsafe { CStr::from_ptr(s) }.to_bytes();
            if let Some(v) = bytes.strip_prefix(b"LD_PRELOAD=") {
                env.preloads_us = v.windows(LIB.len()).any(|w| w == LIB);
            } else if let Some(v) = bytes.strip_prefix(b"IPCD_DISABLE=") {
                // As `sys::config` reads it.
                env.disabled = v != b"0";
            }
            // SAFETY: still inside the array.
            p = unsafe { p.add(1) };
        }
        env
    }
}

/// How this library's file name starts.
const LIB: &[u8] = b"libipcd_preload";

/// Opens the binary `image` names, read-only.
fn open(image: Image<'_>) -> Option<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    let fd = match image {
        // SAFETY: a C string.
        Image::Path(p) => unsafe { libc::open(p.as_ptr(), flags) },
        // SAFETY: a C string.
        Image::Search(name) if name.to_bytes().contains(&b'/') => unsafe { libc::open(name.as_ptr(), flags) },
        Image::Search(name) => return search(name),
        // SAFETY: a duplicate of the caller's fd, ours to close.
        Image::Fd(fd) => unsafe { real::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) },
        Image::At(dirfd, path, at) if path.to_bytes().is_empty() && at & libc::AT_EMPTY_PATH != 0 => {
            // SAFETY: as for `Image::Fd`.
            unsafe { real::fcntl(dirfd, libc::F_DUPFD_CLOEXEC, 0) }
        }
        // SAFETY: the caller's dirfd and C string.
        Image::At(dirfd, path, _) => unsafe { libc::openat(dirfd, path.as_ptr(), flags) },
        Image::Unreadable => -1,
    };
    // SAFETY: a fresh fd of ours, if any.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `name` looked up in `PATH` as `execvp` does: the first executable file.
fn search(name: &CStr) -> Option<OwnedFd> {
    let path = std::env::var_os("PATH").map_or_else(|| b"/bin:/usr/bin".to_vec(), |p| p.into_encoded_bytes());
    for dir in path.split(|&b| b == b':') {
        let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
        let mut full = dir.to_vec();
        full.push(b'/');
        full.extend_from_slice(name.to_bytes());
        let Ok(full) = CString::new(full) else { continue };
        // SAFETY: a C string.
        if unsafe { libc::access(full.as_ptr(), libc::X_OK) } == 0 {
            return open(Image::Path(&full));
        }
    }
    None
}

/// Whether the binary open at `file` lets the dynamic loader load
/// `LD_PRELOAD`: an ELF file with an interpreter and not set-ID to
/// another user, or a script whose interpreter does (`depth` more
/// levels of `#!` are followed).
fn loads_preload(file: &OwnedFd, depth: u32) -> bool {
    let fd = file.as_raw_fd();
    // SAFETY: fstat into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: our fd and a writable stat.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return true;
    }
    // SAFETY: plain getters.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let setid = (st.st_mode & libc::S_ISUID != 0 && st.st_uid != euid)
        || (st.st_mode & libc::S_ISGID != 0 && st.st_gid != egid);
    if setid {
        return false;
    }
    let mut head = [0u8; 256];
    let n = read_at(fd, &mut head, 0);
    let head = &head[..n];
    if let Some(rest) = head.strip_prefix(b"#!") {
        if depth == 0 {
            return true;
        }
        let line = rest.split(|&b| b == b'\n').next().unwrap_or_default();
        let interp = line.split(|&b| b == b' ' || b == b'\t').find(|w| !w.is_empty()).unwrap_or_default();
        let Ok(interp) = CString::new(interp) else { return true };
        return open(Image::Path(&interp)).is_none_or(|f| loads_preload(&f, depth - 1));
    }
    has_interpreter(fd, head)
}

/// Whether the ELF file at `fd` (its first bytes `head`) has a
/// `PT_INTERP` program header; true for anything that is not a 64-bit
/// little-endian ELF file (not ours to judge).
fn has_interpreter(fd: c_int, head: &[u8]) -> bool {
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(head[32..40].try_into().unwrap_or_default());
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    if phentsize < 4 || phnum == 0 || phnum > 256 {
        return true;
    }
    let mut table = vec![0u8; phentsize * phnum];
    if read_at(fd, &mut table, phoff as libc::off_t) != table.len() {
        return true;
    }
    const PT_INTERP: u32 = 3;
    table.chunks_exact(phentsize).any(|h| u32::from_le_bytes([h[0], h[1], h[2], h[3]]) == PT_INTERP)
}

/// `pread` into `buf` until full or the end of the file; bytes read.
fn read_at(fd: c_int, buf: &mut [u8], at: libc::off_t) -> usize {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the rest of `buf`.
        let n = unsafe { libc::pread(fd, buf[done..].as_mut_ptr().cast(), buf.len() - done, at + done as libc::off_t) };
        if n <= 0 {
            break;
        }
        done += n as usize;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[&CStr]) -> Vec<*const c_char> {
        vars.iter().map(|v| v.as_ptr()).chain(std::iter::once(std::ptr::null())).collect()
    }

    #[test]
    fn the_environment_decides_first() {
        let sh = Image::Path(c"/bin/sh");
        let ours = c"LD_PRELOAD=/usr/lib/ipcd/libipcd_preload.so";
        // SAFETY: null-terminated arrays of C strings.
        unsafe {
            assert!(!runs_library(sh, env(&[c"PATH=/bin"]).as_ptr()));
            assert!(!runs_library(sh, env(&[c"LD_PRELOAD=/lib/other.so"]).as_ptr()));
            assert!(!runs_library(sh, env(&[ours, c"IPCD_DISABLE=1"]).as_ptr()));
            assert!(runs_library(sh, env(&[ours, c"IPCD_DISABLE=0"]).as_ptr()));
            assert!(!runs_library(sh, std::ptr::null()));
        }
    }

    #[test]
    fn a_dynamic_binary_loads_the_preload_and_a_missing_one_is_not_judged() {
        let ours = c"LD_PRELOAD=libipcd_preload.so";
        // SAFETY: as above.
        unsafe {
            assert!(runs_library(Image::Search(c"sh"), env(&[ours]).as_ptr()));
            assert!(runs_library(Image::Path(c"/no/such/binary"), env(&[ours]).as_ptr()));
        }
    }
}
