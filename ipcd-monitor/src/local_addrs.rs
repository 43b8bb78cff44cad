//! Which addresses are this host's own (for wildcard listeners), read with
//! getifaddrs and refreshed at most once a second.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A cached set of the host's addresses.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    addrs: Vec<IpAddr>,
    read_at: Option<Instant>,
}

impl LocalAddrs {
    /// Whether `ip` is loopback, unspecified (Linux connects those locally),
    /// or an address of one of this namespace's interfaces.
    pub fn is_local(&mut self, ip: IpAddr) -> bool {
        if ip.is_loopback() || ip.is_unspecified() {
            return true;
        }
        if self.read_at.is_none_or(|t| t.elapsed() > Duration::from_secs(1)) {
            self.addrs = read_ifaddrs();
            self.read_at = Some(Instant::now());
        }
        self.addrs.contains(&ip)
    }
}

fn read_ifaddrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; each entry's
    // ifa_addr is null or points at a sockaddr of the family it states.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return out;
        }
        let mut p = head;
        while !p.is_null() {
            let sa = (*p).ifa_addr;
            if !sa.is_null() {
                match i32::from((*sa).sa_family) {
                    libc::AF_INET => {
                        let sin = &*sa.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*sa.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(head);
    }
    out
}
