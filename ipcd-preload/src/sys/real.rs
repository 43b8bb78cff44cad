//! The libc functions we interpose, resolved with `dlsym(RTLD_NEXT)` on
//! first use: the next definition after ours in the lookup order, normally
//! glibc's. The library's own calls go straight through these, so a socket
//! call made while handling another never re-enters the interposition.

use core::sync::atomic::{AtomicUsize, Ordering};
use libc::{
    c_int, c_long, c_uint, c_void, iovec, mmsghdr, msghdr, nfds_t, pollfd, size_t, sockaddr, socklen_t, ssize_t,
};

/// A symbol resolved once; 0 until then.
struct Sym {
    name: &'static [u8],
    addr: AtomicUsize,
}

impl Sym {
    const fn new(name: &'static [u8]) -> Sym {
        Sym { name, addr: AtomicUsize::new(0) }
    }

    #[inline]
    fn get(&self) -> usize {
        // Relaxed: the address is the same whichever thread resolves it, and
        // dlsym's own locking publishes the code it points at.
        let a = self.addr.load(Ordering::Relaxed);
        if a != 0 {
            return a;
        }
        self.resolve()
    }

    #[cold]
    fn resolve(&self) -> usize {
        // SAFETY: `name` is NUL-terminated (built by the macro below).
        let a = unsafe { libc::dlsym(libc::RTLD_NEXT, self.name.as_ptr().cast()) } as usize;
        if a == 0 {
            // Every symbol here is in every glibc; without it nothing can go on.
            let msg = b"ipcd: libc lacks a socket function; aborting\n";
            // SAFETY: raw write of a static buffer to stderr, then abort.
            unsafe {
                syscall(libc::SYS_write, 2, msg.as_ptr() as c_long, msg.len() as c_long, 0, 0, 0);
                libc::abort();
            }
        }
        self.addr.store(a, Ordering::Relaxed);
        a
    }
}

macro_rules! real {
    ($( $name:ident ( $($arg:ident : $t:ty),* ) -> $r:ty; )*) => {
        $(
            #[doc = concat!("The real `", stringify!($name), "`.")]
            ///
            /// # Safety
            /// As for the libc function of that name.
            #[inline]
            pub(crate) unsafe fn $name($($arg: $t),*) -> $r {
                static SYM: Sym = Sym::new(concat!(stringify!($name), "\0").as_bytes());
                // SAFETY: dlsym returned the address of the libc function of
                // this name, whose C signature is the one written here.
                let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { core::mem::transmute(SYM.get()) };
                // SAFETY: the caller upholds the function's contract.
                unsafe { f($($arg),*) }
            }
        )*
    };
}

real! {
    socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    listen(fd: c_int, backlog: c_int) -> c_int;
    accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int;
    connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int;
    read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t;
    write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t;
    readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t;
    send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t;
    recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t;
    sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, len: socklen_t) -> ssize_t;
    recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> ssize_t;
    sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t;
    recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t;
    sendmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int) -> c_int;
    recvmmsg(fd: c_int, msgs: *mut mmsghdr, n: c_uint, flags: c_int, timeout: *mut libc::timespec) -> c_int;
    sendfile(out_fd: c_int, in_fd: c_int, offset: *mut libc::off_t, n: size_t) -> ssize_t;
    sendfile64(out_fd: c_int, in_fd: c_int, offset: *mut libc::off64_t, n: size_t) -> ssize_t;
    splice(fd_in: c_int, off_in: *mut libc::loff_t, fd_out: c_int, off_out: *mut libc::loff_t, n: size_t, flags: c_uint) -> ssize_t;
    close(fd: c_int) -> c_int;
    shutdown(fd: c_int, how: c_int) -> c_int;
    dup(fd: c_int) -> c_int;
    dup2(fd: c_int, new: c_int) -> c_int;
    dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
    getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int;
    setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int;
    getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int;
    poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int;
    fork() -> libc::pid_t;
    sigaction(sig: c_int, act: *const libc::sigaction, old: *mut libc::sigaction) -> c_int;
    execve(path: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    execvpe(file: *const libc::c_char, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    fexecve(fd: c_int, argv: *const *const libc::c_char, envp: *const *const libc::c_char) -> c_int;
    posix_spawn(pid: *mut libc::pid_t, path: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    posix_spawnp(pid: *mut libc::pid_t, file: *const libc::c_char, fa: *const libc::posix_spawn_file_actions_t, attr: *const libc::posix_spawnattr_t, argv: *const *mut libc::c_char, envp: *const *mut libc::c_char) -> c_int;
    posix_spawn_file_actions_init(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    posix_spawn_file_actions_destroy(fa: *mut libc::posix_spawn_file_actions_t) -> c_int;
    posix_spawn_file_actions_adddup2(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, new: c_int) -> c_int;
    posix_spawn_file_actions_addclose(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int) -> c_int;
    posix_spawn_file_actions_addopen(fa: *mut libc::posix_spawn_file_actions_t, fd: c_int, path: *const libc::c_char, flags: c_int, mode: libc::mode_t) -> c_int;
    ppoll(fds: *mut pollfd, n: nfds_t, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, timeout: *mut libc::timeval) -> c_int;
    pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    epoll_create(size: c_int) -> c_int;
    epoll_create1(flags: c_int) -> c_int;
    epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    epoll_wait(epfd: c_int, evs: *mut libc::epoll_event, n: c_int, timeout: c_int) -> c_int;
    epoll_pwait(epfd: c_int, evs: *mut libc::epoll_event, n: c_int, timeout: c_int, mask: *const libc::sigset_t) -> c_int;
    epoll_pwait2(epfd: c_int, evs: *mut libc::epoll_event, n: c_int, timeout: *const libc::timespec, mask: *const libc::sigset_t) -> c_int;
    fdopen(fd: c_int, mode: *const libc::c_char) -> *mut libc::FILE;
    fileno(f: *mut libc::FILE) -> c_int;
    fileno_unlocked(f: *mut libc::FILE) -> c_int;
}

/// `close_range(2)`, as the system call itself: glibc's `closefrom` makes
/// it without going through any symbol, and older glibcs lack the wrapper.
///
/// # Safety
/// As for `close_range(2)`.
#[inline]
pub(crate) unsafe fn close_range(first: c_uint, last: c_uint, flags: c_int) -> c_int {
    // SAFETY: the caller upholds close_range's contract.
    unsafe { syscall(libc::SYS_close_range, first as c_long, last as c_long, flags as c_long, 0, 0, 0) as c_int }
}

/// A system call made here, as libc's `syscall` makes it (-1 and `errno`
/// on failure). The library exports `syscall` itself (`ffi_syscall`), so
/// its own raw calls come here, never to that.
///
/// # Safety
/// As for the system call `n` with these arguments.
#[inline]
pub(crate) unsafe fn syscall(
    n: c_long,
    a1: c_long,
    a2: c_long,
    a3: c_long,
    a4: c_long,
    a5: c_long,
    a6: c_long,
) -> c_long {
    let r: c_long;
    // SAFETY: the Linux system call convention of this architecture; the
    // instruction clobbers only the registers named here.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        core::arch::asm!(
            "syscall",
            inlateout("rax") n => r,
            in("rdi") a1, in("rsi") a2, in("rdx") a3, in("r10") a4, in("r8") a5, in("r9") a6,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    // SAFETY: as above.
    #[cfg(target_arch = "aarch64")]
    unsafe {
        core::arch::asm!(
            "svc 0",
            in("x8") n,
            inlateout("x0") a1 => r,
            in("x1") a2, in("x2") a3, in("x3") a4, in("x4") a5, in("x5") a6,
            options(nostack),
        );
    }
    if (-4095..0).contains(&r) {
        set_errno(-r as c_int);
        return -1;
    }
    r
}

/// An int socket option, from the kernel (`None` if it answers an error).
pub(crate) fn int_opt(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = core::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: an int-sized out buffer.
    (unsafe { getsockopt(fd, level, name, (&raw mut v).cast(), &mut len) } == 0).then_some(v)
}

/// Sets or clears `O_NONBLOCK` on the kernel's file description of `fd`
/// (what every process holding it sees), leaving its other flags.
pub(crate) fn set_kernel_nonblocking(fd: c_int, on: bool) {
    // SAFETY: F_GETFL and F_SETFL take an int argument or none.
    unsafe {
        let fl = fcntl(fd, libc::F_GETFL, 0);
        if fl >= 0 {
            let fl = if on { fl | libc::O_NONBLOCK } else { fl & !libc::O_NONBLOCK };
            fcntl(fd, libc::F_SETFL, fl as usize);
        }
    }
}

/// The real `fcntl`, called with one integer or pointer argument (every
/// command takes at most one).
///
/// # Safety
/// As for `fcntl(2)`.
#[inline]
pub(crate) unsafe fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    static SYM: Sym = Sym::new(b"fcntl\0");
    // SAFETY: dlsym gave the address of the variadic libc `fcntl`.
    let f: unsafe extern "C" fn(c_int, c_int, ...) -> c_int = unsafe { core::mem::transmute(SYM.get()) };
    // SAFETY: the caller upholds fcntl's contract for `cmd`.
    unsafe { f(fd, cmd, arg) }
}

/// The real `ioctl`, with its one argument.
///
/// # Safety
/// As for `ioctl(2)`.
#[inline]
pub(crate) unsafe fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    static SYM: Sym = Sym::new(b"ioctl\0");
    // SAFETY: dlsym gave the address of the variadic libc `ioctl`.
    let f: unsafe extern "C" fn(c_int, libc::c_ulong, ...) -> c_int = unsafe { core::mem::transmute(SYM.get()) };
    // SAFETY: the caller upholds ioctl's contract for `req`.
    unsafe { f(fd, req, arg) }
}

/// The calling thread's `errno`.
#[inline]
pub(crate) fn errno() -> c_int {
    // SAFETY: __errno_location always returns the thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Sets the calling thread's `errno`.
#[inline]
pub(crate) fn set_errno(e: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}
