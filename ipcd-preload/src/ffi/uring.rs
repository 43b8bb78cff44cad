//! liburing's entry points, interposed only to notice io_uring (see
//! `sys::uring`), then passed on to liburing.

use libc::{c_int, c_uint, c_void, size_t};

use crate::sys::uring;

/// The next definition of `name` (liburing's), if any.
fn next(name: &std::ffi::CStr) -> Option<usize> {
    // SAFETY: a NUL-terminated name.
    let a = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) } as usize;
    (a != 0).then_some(a)
}

/// io_uring is about to be used: new connections stay on the kernel, and
/// our listeners become the kernel's (see `socket::setup::to_kernel`).
pub(super) fn noticed() {
    if uring::seen() {
        crate::sys::guarded((), crate::socket::setup::listeners_to_kernel);
    }
}

/// Interposed `io_uring_setup` (liburing's raw wrapper).
///
/// # Safety
/// As for `io_uring_setup(2)`.
#[no_mangle]
pub(super) unsafe extern "C" fn io_uring_setup(entries: c_uint, params: *mut c_void) -> c_int {
    noticed();
    match next(c"io_uring_setup") {
        Some(f) => {
            // SAFETY: liburing's function of this name and signature.
            let f: unsafe extern "C" fn(c_uint, *mut c_void) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: the caller's arguments.
            unsafe { f(entries, params) }
        }
        None => {
            // SAFETY: the system call with the caller's arguments.
            let r =
                unsafe { crate::sys::real::syscall(libc::SYS_io_uring_setup, entries as _, params as _, 0, 0, 0, 0) };
            r as c_int
        }
    }
}

/// Forwards a liburing `io_uring_queue_init*` call of this shape, or
/// `-ENOSYS` (liburing's way of failing) if there is no liburing.
macro_rules! forward {
    ($name:ident ( $($arg:ident : $t:ty),* )) => {
        #[doc = concat!("Interposed liburing `", stringify!($name), "`.")]
        ///
        /// # Safety
        /// As for liburing's function of this name.
        #[no_mangle]
        pub(super) unsafe extern "C" fn $name($($arg: $t),*) -> c_int {
            noticed();
            let name = concat!(stringify!($name), "\0");
            let Some(f) = next(std::ffi::CStr::from_bytes_with_nul(name.as_bytes()).unwrap_or(c"")) else {
                return -libc::ENOSYS;
            };
            // SAFETY: liburing's function of this name and signature.
            let f: unsafe extern "C" fn($($t),*) -> c_int = unsafe { std::mem::transmute(f) };
            // SAFETY: the caller's arguments.
            unsafe { f($($arg),*) }
        }
    };
}

forward!(io_uring_queue_init(entries: c_uint, ring: *mut c_void, flags: c_uint));
forward!(io_uring_queue_init_params(entries: c_uint, ring: *mut c_void, params: *mut c_void));
forward!(io_uring_queue_init_mem(entries: c_uint, ring: *mut c_void, params: *mut c_void, buf: *mut c_void, size: size_t));
