//! Interposed `syscall(2)`: a program that closes, duplicates, reads,
//! writes or accepts through it rather than through the libc wrappers
//! still passes through the library. libuv (so Node) closes every fd with
//! `syscall(SYS_close, fd)`: the table kept the closed ipcd socket, the
//! next kernel connection got its number, and its reads and writes went
//! to the old connection (Node closed every kernel client's connection at
//! once). A raw read or write of an ipcd connection would use the idle
//! kernel socket underneath. Every other system call is made as libc's
//! `syscall` makes it.

use libc::{c_char, c_int, c_long, c_uint, c_void, iovec, msghdr, size_t, sockaddr, socklen_t};

use crate::ffi::{io, socket, spawn};
use crate::sys::real;

/// `syscall` is variadic in C. On x86-64 and aarch64 Linux the variadic
/// integer arguments travel exactly where fixed ones do, so six `c_long`s
/// read what the caller passed (and, beyond that, whatever the registers
/// and the caller's stack slot hold, which glibc's `syscall` reads too).
///
/// # Safety
/// As for the system call `n` with these arguments.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[no_mangle]
pub(super) unsafe extern "C" fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    // SAFETY: every arm passes the caller's arguments to the call it names.
    unsafe {
        match n {
            libc::SYS_close => c_long::from(socket::close(a1 as c_int)),
            libc::SYS_close_range => c_long::from(socket::close_range(a1 as c_uint, a2 as c_uint, a3 as c_int)),
            libc::SYS_dup => c_long::from(socket::dup(a1 as c_int)),
            #[cfg(target_arch = "x86_64")]
            libc::SYS_dup2 => c_long::from(socket::dup2(a1 as c_int, a2 as c_int)),
            libc::SYS_dup3 => c_long::from(socket::dup3(a1 as c_int, a2 as c_int, a3 as c_int)),
            libc::SYS_read => io::read(a1 as c_int, a2 as *mut c_void, a3 as size_t) as c_long,
            libc::SYS_write => io::write(a1 as c_int, a2 as *const c_void, a3 as size_t) as c_long,
            libc::SYS_readv => io::readv(a1 as c_int, a2 as *const iovec, a3 as c_int) as c_long,
            libc::SYS_writev => io::writev(a1 as c_int, a2 as *const iovec, a3 as c_int) as c_long,
            libc::SYS_recvfrom => io::recvfrom(
                a1 as c_int,
                a2 as *mut c_void,
                a3 as size_t,
                a4 as c_int,
                a5 as *mut sockaddr,
                a6 as *mut socklen_t,
            ) as c_long,
            libc::SYS_sendto => io::sendto(
                a1 as c_int,
                a2 as *const c_void,
                a3 as size_t,
                a4 as c_int,
                a5 as *const sockaddr,
                a6 as socklen_t,
            ) as c_long,
            libc::SYS_recvmsg => io::recvmsg(a1 as c_int, a2 as *mut msghdr, a3 as c_int) as c_long,
            libc::SYS_sendmsg => io::sendmsg(a1 as c_int, a2 as *const msghdr, a3 as c_int) as c_long,
            libc::SYS_shutdown => c_long::from(socket::shutdown(a1 as c_int, a2 as c_int)),
            libc::SYS_accept => c_long::from(socket::accept(a1 as c_int, a2 as *mut sockaddr, a3 as *mut socklen_t)),
            libc::SYS_accept4 => {
                c_long::from(socket::accept4(a1 as c_int, a2 as *mut sockaddr, a3 as *mut socklen_t, a4 as c_int))
            }
            libc::SYS_io_uring_setup => {
                super::uring::noticed();
                real::syscall(n, a1, a2, a3, a4, a5, a6)
            }
            libc::SYS_execve => c_long::from(crate::socket::exec::execve(
                a1 as *const c_char,
                a2 as *const *const c_char,
                a3 as *const *const c_char,
            )),
            libc::SYS_execveat => spawn::execveat(
                a1 as c_int,
                a2 as *const c_char,
                a3 as *const *const c_char,
                a4 as *const *const c_char,
                a5 as c_int,
            ),
            _ => real::syscall(n, a1, a2, a3, a4, a5, a6),
        }
    }
}
