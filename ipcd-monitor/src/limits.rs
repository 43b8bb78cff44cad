//! Process resource limits.

/// Raises the soft `RLIMIT_NOFILE` to the hard limit: the monitor holds fds
/// per connection, and the benchmark servers hold many connections.
pub fn raise_nofile() {
    // SAFETY: get/setrlimit on a live struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}
