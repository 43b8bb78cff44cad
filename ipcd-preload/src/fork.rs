//! fork (and vfork, daemon): both processes keep every connection.
//!
//! Before the fork, each ipcd connection end gains a holder in its segment,
//! so whichever process closes first does not end the connection for the
//! other; after it, both mark their ends shared, which makes every use
//! take the end's locks and resync. The child then registers with the
//! monitor as the parent's fork (`Forked`), which makes it a holder in the
//! monitor's books too, so its death is noticed. Handlers are installed
//! with `pthread_atfork`, so forks made inside libc (`daemon`) count too.

use std::cell::RefCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::socket::table;
use crate::socket::{Socket, State};
use crate::sys::process::{self, Pinned};
use crate::sys::real;

/// Ends that gained a holder for the fork in progress (undone if it fails).
static PENDING: Mutex<Vec<Arc<Socket>>> = Mutex::new(Vec::new());
/// A pipe the parent waits on until the child has registered with the
/// monitor: otherwise the parent could close a connection before the
/// monitor learns that the child holds it too, and the monitor would end
/// it. -1 when the process holds nothing of ours.
static SYNC: [AtomicI32; 2] = [AtomicI32::new(-1), AtomicI32::new(-1)];

/// A socket's lock held across a fork.
struct HeldSocket {
    guard: MutexGuard<'static, State>,
    sock: Pinned<Socket>,
}

/// Every lock of ours another thread could hold, taken by the forking
/// thread in `prepare` and released in `parent` and `child`: a child
/// inherits a lock held by a thread that is not in it locked for good
/// (the child's handler hung on a socket a sending thread held, and the
/// parent with it, waiting for the child to register). Taken in the
/// library's one order — epoll sets, sockets, the control channel, the
/// kept segments, the kept kernel sockets, the doorbell tables — and
/// released in reverse (fields drop in order).
struct Held {
    _bells: crate::conn::bell::ForkLock,
    kept: std::sync::MutexGuard<'static, Vec<crate::socket::reuse::Kept>>,
    cache: crate::conn::link::CacheLock,
    control: MutexGuard<'static, Option<crate::control::Control>>,
    sockets: Vec<HeldSocket>,
    _epoll: crate::ready::epoll::ForkLock,
}

thread_local! {
    /// What the forking thread holds between the handlers.
    static HELD: RefCell<Option<Held>> = const { RefCell::new(None) };
}

fn take_held() -> Option<Held> {
    HELD.with(|h| h.borrow_mut().take())
}

extern "C" fn prepare() {
    crate::sys::guarded((), || {
        let mut pending = PENDING.lock().unwrap_or_else(|p| p.into_inner());
        pending.clear();
        // Before the sockets are looked at: one made or kept meanwhile
        // taints itself (see `reuse::fork_begins`).
        crate::socket::reuse::fork_begins();
        let epoll = crate::ready::epoll::lock_for_fork();
        let mut ours = false;
        let mut sockets = Vec::new();
        for s in table::sockets() {
            let (sock, r) = Pinned::new(&s);
            // Both processes hold its kernel socket now: never reused.
            r.taint();
            let mut held = HeldSocket { guard: r.lock(), sock };
            match &mut *held.guard {
                State::Stream(st) => {
                    st.link.add_holder();
                    ours = true;
                    pending.push(s);
                }
                State::Listening { .. } => ours = true,
                _ => {}
            }
            sockets.push(held);
        }
        let mut control = crate::control::lock_for_fork();
        if let Some(c) = control.as_mut() {
            // The child is made a holder of what we hold when it registers:
            // ends closed before the fork are reported closed first (a
            // broken channel loses them with everything else).
            let _ = c.flush();
        }
        if ours && control.is_some() {
            let mut p = [-1; 2];
            // SAFETY: a pipe into a live array.
            if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) } == 0 {
                SYNC[0].store(p[0], Ordering::Relaxed);
                SYNC[1].store(p[1], Ordering::Relaxed);
            }
        }
        let cache = crate::conn::link::lock_for_fork();
        let kept = crate::socket::reuse::lock_for_fork();
        let bells = crate::conn::bell::lock_for_fork();
        HELD.with(|h| *h.borrow_mut() = Some(Held { _bells: bells, kept, cache, control, sockets, _epoll: epoll }));
    });
}

/// Marks every stream end and listener held as shared; returns whether
/// any socket is ours (stream or listener). Each process then tells the
/// monitor at its next accept or wait that it serves a listener. A
/// `child` makes its listeners bells of their own: the eventfd it
/// inherited is the parent's, and one process emptying it could take
/// the other's wake-up.
fn share_all(held: &mut Held, child: bool) -> bool {
    let mut any = false;
    for h in &mut held.sockets {
        match &mut *h.guard {
            State::Stream(st) => {
                st.link.set_shared();
                if child {
                    st.link.name_self();
                }
                any = true;
            }
            State::Listening { bell, shared, served, passed, .. } => {
                // One passed on is unregistered: nothing to serve.
                *shared = !*passed;
                *served = false;
                if child {
                    *bell = crate::control::ListenerBell::new();
                }
                any = true;
            }
            _ => {}
        }
    }
    any
}

extern "C" fn parent() {
    crate::sys::guarded((), || {
        crate::socket::reuse::fork_ends();
        if let Some(mut held) = take_held() {
            share_all(&mut held, false);
        }
        let (r, w) = (SYNC[0].swap(-1, Ordering::Relaxed), SYNC[1].swap(-1, Ordering::Relaxed));
        if r >= 0 {
            // SAFETY: our pipe's ends. With the write end closed here, the
            // read ends when the child wrote its byte, closed its copy, or
            // never existed (a failed fork).
            unsafe {
                real::close(w);
                let mut b = 0u8;
                while real::read(r, (&raw mut b).cast(), 1) < 0 && real::errno() == libc::EINTR {}
                real::close(r);
            }
        }
    });
}

extern "C" fn child() {
    crate::sys::guarded((), || {
        crate::socket::reuse::fork_ends();
        process::forked();
        crate::conn::peer::forked();
        crate::conn::wait::SpinSlot::reset_after_fork();
        PENDING.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let mut known = HashSet::new();
        let ours = take_held().is_some_and(|mut held| {
            for h in &mut held.sockets {
                h.sock.get().forget_threads();
                known.insert(h.sock.addr());
            }
            // The parent's channel is not the child's (it opens its own),
            // and what the parent kept the child's channel will never reuse.
            *held.control = None;
            held.cache.clear();
            crate::socket::reuse::forget_in_child(&mut held.kept);
            share_all(&mut held, true)
        });
        drop_unheld(&known);
        if ours {
            // SAFETY: getppid cannot fail.
            let parent = unsafe { libc::getppid() } as u32;
            process::set_parent(parent);
            // Register now: the monitor must know this process holds the
            // connections before it can die or the parent can close them.
            let _ = crate::control::with(|_| Ok(()));
        }
        let (r, w) = (SYNC[0].swap(-1, Ordering::Relaxed), SYNC[1].swap(-1, Ordering::Relaxed));
        if w >= 0 {
            // SAFETY: our pipe's ends: one byte tells the parent to go on.
            unsafe {
                real::close(r);
                real::write(w, b"r".as_ptr().cast(), 1);
                real::close(w);
            }
        }
    });
}

/// In a child: forgets the sockets that another thread made or took
/// between the prepare handler and the fork. The kernel copies the fd
/// table before the memory, so the table can name an fd the child does not
/// have (its number then came back as the child's own fd and the child hung
/// on the stranger's lock), and such a socket may be locked by a thread
/// that is not in the child or hold an end without the child counted as a
/// holder. Only plain sockets not yet connecting stay; the others are left
/// to the kernel (and leaked: their state may be half-changed).
fn drop_unheld(known: &HashSet<usize>) {
    let mut gone = Vec::new();
    table::for_each_fd(|fd, s| {
        if known.contains(&(Arc::as_ptr(s) as usize)) {
            return;
        }
        // SAFETY: F_GETFD only asks whether the fd is open.
        let open = unsafe { real::fcntl(fd, libc::F_GETFD, 0) } >= 0;
        let plain = matches!(s.state.try_lock().as_deref(), Ok(State::Fresh { .. } | State::Closed));
        if !(open && plain) {
            gone.push(fd);
        }
        // The parent has its kernel socket too.
        s.taint();
    });
    for fd in gone {
        if let Some(s) = table::remove(fd) {
            std::mem::forget(s);
        }
    }
}

/// Installs the fork handlers (from the library's constructor).
pub(crate) fn install() {
    // SAFETY: registers three extern "C" functions that live as long as the library.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

/// A failed fork: the holders added for the child that never came.
pub(crate) fn undo() {
    let pending = std::mem::take(&mut *PENDING.lock().unwrap_or_else(|p| p.into_inner()));
    for s in pending {
        if let State::Stream(st) = &*s.lock() {
            st.link.release_holder();
        }
    }
}
