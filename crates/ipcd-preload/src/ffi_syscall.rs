//! Interposed `syscall(2)`: a program that closes or duplicates fds through
//! it rather than through the libc wrappers still passes through the
//! library. libuv (so Node) closes every fd with `syscall(SYS_close, fd)`:
//! the table kept the closed ipcd socket, the next kernel connection got
//! its number, and its reads and writes went to the old connection (Node
//! closed every kernel client's connection at once). Every other system
//! call is made as libc's `syscall` makes it.

use libc::{c_int, c_long, c_uint};

use crate::{ffi_socket, real};

/// `syscall` is variadic in C. On x86-64 and aarch64 Linux the variadic
/// integer arguments travel exactly where fixed ones do, so six `c_long`s
/// read what the caller passed (and, beyond that, whatever the registers
/// and the caller's stack slot hold, which glibc's `syscall` reads too).
///
/// # Safety
/// As for the system call `n` with these arguments.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[no_mangle]
pub unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // SAFETY (every arm): the caller's arguments, for the call it names.
    unsafe {
        match n {
            libc::SYS_close => c_long::from(ffi_socket::close(a1 as c_int)),
            libc::SYS_close_range => c_long::from(ffi_socket::close_range(a1 as c_uint, a2 as c_uint, a3 as c_int)),
            libc::SYS_dup => c_long::from(ffi_socket::dup(a1 as c_int)),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_dup2 => c_long::from(ffi_socket::dup2(a1 as c_int, a2 as c_int)),
            libc::SYS_dup3 => c_long::from(ffi_socket::dup3(a1 as c_int, a2 as c_int, a3 as c_int)),
            _ => real::syscall(n, a1, a2, a3, a4, a5, a6),
        }
    }
}
