//! Interposed ways to start a program that the `exec` family of the socket
//! layer does not define: `posix_spawn` and the file actions it runs
//! (recorded, so the parent knows which fds the child gets), the variadic
//! `execl` family, and `execveat`.

use std::ffi::CString;

use libc::{c_char, c_int, mode_t, pid_t, posix_spawn_file_actions_t, posix_spawnattr_t};

use crate::socket::exec;
use crate::socket::heir::Image;
use crate::socket::spawn::{self, Action};
use crate::sys::{config, guarded, real};

/// The child's environment: `envp` with `entry` in place of any inherited
/// `IPCD_FDS`, as the pointer array `posix_spawn` takes.
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
unsafe fn env_with(envp: *const *mut c_char, entry: &CString) -> Vec<*const c_char> {
    // SAFETY: as the caller promises.
    unsafe { exec::with_entry(envp.cast(), entry) }
}

/// What a spawn of `image` with file actions `fa` and environment
/// `envp` hands over, if the library is on.
///
/// # Safety
/// `envp` null or a null-terminated array of C strings.
unsafe fn prepare(
    fa: *const posix_spawn_file_actions_t,
    image: Image<'_>,
    envp: *const *mut c_char,
) -> Option<CString> {
    if config::get().disabled {
        return None;
    }
    // SAFETY: as the caller promises.
    guarded(None, || unsafe { spawn::prepare(fa as usize, image, envp.cast()) })
}

/// `posix_spawnp` if `search`, else `posix_spawn`, with our entry in the
/// child's environment when it inherits ends of ours.
///
/// # Safety
/// As for `posix_spawn(3)`.
unsafe fn spawn_with(
    search: bool,
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let real = if search { real::posix_spawnp } else { real::posix_spawn };
    // SAFETY: the caller's path and environment.
    match unsafe { prepare(fa, Image::from_ptr(path, search), envp) } {
        // SAFETY: the caller's arguments, with our entry in a copy of envp.
        Some(entry) => unsafe { real(pid, path, fa, attr, argv, env_with(envp, &entry).as_ptr().cast()) },
        // SAFETY: the caller's arguments, unchanged.
        None => unsafe { real(pid, path, fa, attr, argv, envp) },
    }
}

/// Interposed `posix_spawn(3)`.
///
/// # Safety
/// As for `posix_spawn(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the caller's arguments, to libc's function.
    unsafe { spawn_with(false, pid, path, fa, attr, argv, envp) }
}

/// Interposed `posix_spawnp(3)`.
///
/// # Safety
/// As for `posix_spawnp(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    fa: *const posix_spawn_file_actions_t,
    attr: *const posix_spawnattr_t,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the caller's arguments, to libc's function.
    unsafe { spawn_with(true, pid, file, fa, attr, argv, envp) }
}

/// Interposed `posix_spawn_file_actions_init(3)`: a fresh list (the
/// address may be one a destroyed list had).
///
/// # Safety
/// As for `posix_spawn_file_actions_init(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn_file_actions_init(fa: *mut posix_spawn_file_actions_t) -> c_int {
    spawn::forget(fa as usize);
    // SAFETY: the caller's argument, unchanged.
    unsafe { real::posix_spawn_file_actions_init(fa) }
}

/// Interposed `posix_spawn_file_actions_destroy(3)`.
///
/// # Safety
/// As for `posix_spawn_file_actions_destroy(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn_file_actions_destroy(fa: *mut posix_spawn_file_actions_t) -> c_int {
    spawn::forget(fa as usize);
    // SAFETY: the caller's argument, unchanged.
    unsafe { real::posix_spawn_file_actions_destroy(fa) }
}

/// Records `action` on `fa` if the real call `r` took it.
fn noted(r: c_int, fa: *mut posix_spawn_file_actions_t, action: Action) -> c_int {
    if r == 0 {
        guarded((), || spawn::record(fa as usize, action));
    }
    r
}

/// Interposed `posix_spawn_file_actions_adddup2(3)`.
///
/// # Safety
/// As for `posix_spawn_file_actions_adddup2(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn_file_actions_adddup2(
    fa: *mut posix_spawn_file_actions_t,
    fd: c_int,
    new: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    noted(unsafe { real::posix_spawn_file_actions_adddup2(fa, fd, new) }, fa, Action::Dup2(fd, new))
}

/// Interposed `posix_spawn_file_actions_addclose(3)`.
///
/// # Safety
/// As for `posix_spawn_file_actions_addclose(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn_file_actions_addclose(
    fa: *mut posix_spawn_file_actions_t,
    fd: c_int,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    noted(unsafe { real::posix_spawn_file_actions_addclose(fa, fd) }, fa, Action::Gone(fd))
}

/// Interposed `posix_spawn_file_actions_addopen(3)`: the file opened
/// takes the fd's place.
///
/// # Safety
/// As for `posix_spawn_file_actions_addopen(3)`.
#[no_mangle]
pub(super) unsafe extern "C" fn posix_spawn_file_actions_addopen(
    fa: *mut posix_spawn_file_actions_t,
    fd: c_int,
    path: *const c_char,
    flags: c_int,
    mode: mode_t,
) -> c_int {
    // SAFETY: the caller's arguments, unchanged.
    noted(unsafe { real::posix_spawn_file_actions_addopen(fa, fd, path, flags, mode) }, fa, Action::Gone(fd))
}

/// Which member of the `execl` family a trampoline stands for.
const EXECL: c_int = 0;
const EXECLP: c_int = 1;
const EXECLE: c_int = 2;

/// The `execl` family is variadic, which stable Rust cannot define: each
/// is a naked trampoline (x86-64 System V) that stores the six argument
/// registers beside its caller's stack arguments and calls
/// [`execl_args`] with both, which walks them as `va_arg` would.
macro_rules! execl_trampoline {
    ($name:ident, $kind:expr) => {
        #[doc = concat!("Interposed `", stringify!($name), "(3)`: its arguments go to [`execl_args`].")]
        ///
        /// # Safety
        /// As for the C function of this name.
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[no_mangle]
        pub(super) unsafe extern "C" fn $name() {
            core::arch::naked_asm!(
                // Six registers, 8 bytes more to keep the stack 16-aligned
                // at the call (the return address made it 8 off).
                "sub rsp, 56",
                "mov [rsp], rdi",
                "mov [rsp + 8], rsi",
                "mov [rsp + 16], rdx",
                "mov [rsp + 24], rcx",
                "mov [rsp + 32], r8",
                "mov [rsp + 40], r9",
                "mov rdi, rsp",
                // The caller's stack arguments start above our frame and
                // the return address.
                "lea rsi, [rsp + 64]",
                "mov edx, {kind}",
                "call {args}",
                "add rsp, 56",
                "ret",
                kind = const $kind,
                args = sym execl_args,
            )
        }
    };
}

execl_trampoline!(execl, EXECL);
execl_trampoline!(execlp, EXECLP);
execl_trampoline!(execle, EXECLE);

/// The `execl` family's arguments as the trampoline left them: argument
/// `i` is `regs[i]` for the first six, then `stack[i - 6]`. The path (or
/// file), then the argument list up to its null, then for `execle` the
/// environment; made into an array for the `execv` form.
///
/// # Safety
/// `regs` holds six words and `stack` the caller's further arguments, as a
/// C call of the family passes them.
#[cfg(target_arch = "x86_64")]
unsafe extern "C" fn execl_args(regs: *const usize, stack: *const usize, kind: c_int) -> c_int {
    // SAFETY: within what the caller passed (the list ends with its null,
    // and `execle`'s environment follows it).
    let arg = |i: usize| unsafe {
        if i < 6 {
            *regs.add(i)
        } else {
            *stack.add(i - 6)
        }
    };
    let path = arg(0) as *const c_char;
    let mut argv: Vec<*const c_char> = Vec::new();
    let mut i = 1;
    loop {
        let a = arg(i) as *const c_char;
        argv.push(a);
        i += 1;
        if a.is_null() {
            break;
        }
    }
    // SAFETY: the interposed exec calls, with the caller's strings.
    unsafe {
        match kind {
            EXECLP => exec::execvp(path, argv.as_ptr()),
            EXECLE => exec::execve(path, argv.as_ptr(), arg(i) as *const *const c_char),
            _ => exec::execv(path, argv.as_ptr()),
        }
    }
}

/// `execveat(2)`, reached through `syscall`: the interposed exec path's
/// hand-over, then the system call.
///
/// # Safety
/// As for `execveat(2)`.
pub(super) unsafe fn execveat(
    dirfd: c_int,
    path: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    flags: c_int,
) -> libc::c_long {
    // SAFETY: the caller's path.
    let image = match unsafe { Image::from_ptr(path, false) } {
        Image::Path(p) => Image::At(dirfd, p, flags),
        other => other,
    };
    // SAFETY: the caller's environment.
    let entry = unsafe { exec::prepare(image, envp) };
    let env = entry.as_ref().map(|e| {
        // SAFETY: the caller's environment array.
        unsafe { exec::with_entry(envp, e) }
    });
    let envp = env.as_ref().map_or(envp, |v| v.as_ptr());
    // SAFETY: the caller's arguments, with our entry in a copy of envp.
    unsafe {
        real::syscall(
            libc::SYS_execveat,
            dirfd as libc::c_long,
            path as libc::c_long,
            argv as libc::c_long,
            envp as libc::c_long,
            flags as libc::c_long,
            0,
        )
    }
}
