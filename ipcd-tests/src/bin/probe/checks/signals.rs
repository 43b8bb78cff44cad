//! Signal checks: SIGPIPE, EINTR from a handler, SA_RESTART.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use ipcd_monitor::bench::workload::epoll_add;
use ipcd_tests::net::{self, cvt};

use crate::*;

pub(crate) static SIGNALS: AtomicU32 = AtomicU32::new(0);

pub(crate) extern "C" fn count_signal(_: i32) {
    SIGNALS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn handle(sig: i32, restart: bool) {
    // SAFETY: installs a handler that only touches an atomic.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = count_signal as *const () as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigaction(sig, &sa, std::ptr::null_mut());
    }
}

/// Sending to a closed peer: the first send is accepted (the peer answers
/// with a reset), then EPIPE — with SIGPIPE unless MSG_NOSIGNAL.
pub(crate) fn sigpipe() -> Res {
    handle(libc::SIGPIPE, true);
    let (c, s) = pair(false)?;
    net::close(s);
    std::thread::sleep(Duration::from_millis(20));
    ensure!(send(c, b"x", libc::MSG_NOSIGNAL) == 1, "first send after the peer closed");
    std::thread::sleep(Duration::from_millis(20));
    let r = send(c, b"x", libc::MSG_NOSIGNAL);
    ensure!(r == -1 && errno() == libc::EPIPE, "second send gave {r}/{}", errno());
    ensure!(SIGNALS.load(Ordering::Relaxed) == 0, "SIGPIPE despite MSG_NOSIGNAL");
    let r = send(c, b"x", 0);
    ensure!(r == -1 && errno() == libc::EPIPE, "third send gave {r}/{}", errno());
    ensure!(SIGNALS.load(Ordering::Relaxed) == 1, "no SIGPIPE without MSG_NOSIGNAL");
    // write(2) raises it too.
    // SAFETY: a live buffer.
    let r = unsafe { libc::write(c, b"x".as_ptr().cast(), 1) };
    ensure!(r == -1 && errno() == libc::EPIPE && SIGNALS.load(Ordering::Relaxed) == 2, "write gave {r}");
    net::close(c);
    Ok(())
}

/// A signal handler without SA_RESTART interrupts accept, poll and
/// epoll_wait with EINTR.
pub(crate) fn eintr() -> Res {
    handle(libc::SIGUSR2, false);
    let (l, _port) = net::listen_loopback(false).map_err(f)?;
    let (c, s) = pair(false)?;
    // SAFETY: plain epoll creation.
    let ep = cvt("epoll_create1", unsafe { libc::epoll_create1(0) }).map_err(f)?;
    epoll_add(ep, s, IN, 1)?;
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let kick = || kick_then(me, libc::SIGUSR2, || {});
    let k = kick();
    // SAFETY: null address buffers are allowed.
    let r = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "accept gave {r}/{e}");
    let k = kick();
    let mut fds = [pollfd(s, libc::POLLIN)];
    let r = poll_n(&mut fds, 5000);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "poll gave {r}/{e}");
    let k = kick();
    let mut evs = [libc::epoll_event { events: 0, u64: 0 }; 4];
    // SAFETY: a live event array.
    let r = unsafe { libc::epoll_wait(ep, evs.as_mut_ptr(), 4, 5000) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "epoll_wait gave {r}/{e}");
    for fd in [l, c, s, ep] {
        net::close(fd);
    }
    Ok(())
}

/// Signals `thread` (waiting in a call) after 50 ms, then runs `then` 50 ms
/// later; join it before the thread can be gone.
pub(crate) fn kick_then(
    thread: libc::pthread_t,
    sig: i32,
    then: impl FnOnce() + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let thread = thread as usize;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: signals the waiting thread, which outlives this one.
        unsafe { libc::pthread_kill(thread as libc::pthread_t, sig) };
        std::thread::sleep(Duration::from_millis(50));
        then();
    })
}

/// A handler installed with SA_RESTART does not interrupt a blocked recv
/// or accept: the call goes on and returns what came after the signal.
/// With a receive timeout on the socket it does (EINTR), and poll is never
/// restarted.
pub(crate) fn sa_restart() -> Res {
    handle(libc::SIGUSR1, true);
    // SAFETY: pthread_self cannot fail.
    let me = unsafe { libc::pthread_self() };
    let ran = || SIGNALS.load(Ordering::Relaxed);
    let (c, s) = pair(false)?;
    let before = ran();
    let k = kick_then(me, libc::SIGUSR1, move || {
        send(s, b"x", 0);
    });
    let mut buf = [0u8; 8];
    let r = recv(c, &mut buf, 0);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(ran() > before, "the handler did not run");
    ensure!(r == 1 && buf[0] == b'x', "recv across an SA_RESTART handler gave {r}/{e}");

    let (l, port) = net::listen_loopback(false).map_err(f)?;
    let k = kick_then(me, libc::SIGUSR1, move || {
        if let Ok(fd) = net::connect_loopback(false, port) {
            net::close(fd);
        }
    });
    // SAFETY: null address buffers are allowed.
    let a = unsafe { libc::accept(l, std::ptr::null_mut(), std::ptr::null_mut()) };
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(a >= 0, "accept across an SA_RESTART handler gave {a}/{e}");
    net::close(a);
    net::close(l);

    let tv = libc::timeval { tv_sec: 5, tv_usec: 0 };
    // SAFETY: a timeval of its size.
    let set = unsafe {
        libc::setsockopt(
            c,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as u32,
        )
    };
    ensure!(set == 0, "SO_RCVTIMEO: {}", errno());
    let k = kick_then(me, libc::SIGUSR1, || {});
    let r = recv(c, &mut buf, 0);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "recv with a timeout across an SA_RESTART handler gave {r}/{e}");

    let k = kick_then(me, libc::SIGUSR1, || {});
    let mut fds = [pollfd(c, libc::POLLIN)];
    let r = poll_n(&mut fds, 5000);
    let e = errno();
    k.join().map_err(|_| "kicker")?;
    ensure!(r == -1 && e == libc::EINTR, "poll across an SA_RESTART handler gave {r}/{e}");
    net::close(c);
    net::close(s);
    Ok(())
}
