//! The config file, `ipcd.toml`, read by the monitor and by the preload
//! library alike: profiles, library and monitor settings, and rules that
//! leave programs, ports or addresses to the kernel.
//!
//! ```toml
//! [library]                 # every program under ipcd
//! profile = "balanced"      # latency | balanced | low-cpu
//! log = "warn"              # error | warn | info | debug
//! # spin_us = 50            # these three override the profile
//! # spinners = 1
//! # batch_ns = 500
//!
//! [monitor]                 # `ipcd daemon`; its flags override these
//! ring_bytes = 1048576
//! cross_uid = false
//! poll = false
//! queues = "channel"        # or "per-process", "shared" (polling modes)
//! # metrics_address = "127.0.0.1:9464"   # serve `ipcd metrics` over HTTP
//!
//! [[rule]]                  # the first rule that matches decides
//! program = "pgbench"       # executable name, or a path (with a '/')
//! remote_port = 5432        # a port or "lo-hi"; also local_port,
//! remote_addr = "127.0.0.1" # local_addr, remote_addr (CIDR allowed)
//! use = "kernel"            # or "ipcd"
//!
//! [[rule]]
//! program = "redis-server"
//! profile = "latency"       # a program's profile: its first rule with one
//! ```
//!
//! Files are read in order ([`Settings::paths`]): `/etc/ipcd/ipcd.toml`,
//! then the user's (`$XDG_CONFIG_HOME/ipcd/ipcd.toml`, else
//! `~/.config/ipcd/ipcd.toml`), then the file `IPCD_CONFIG` names; a later
//! file's setting overrides an earlier one's, and its rules are tried
//! first. The environment overrides every file (`IPCD_PROFILE`,
//! `IPCD_SPIN_US`, …). Nothing here fails: a setting that is not
//! understood is named in [`Settings::invalid`] with what is used
//! instead, and the rest of the file applies.
//!
//! This module does no I/O: the caller reads the files and the
//! environment and hands their text here.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::string::{String, ToString};
use std::vec::Vec;

use toml::de::{DeTable, DeValue};

use crate::SockAddr;

/// How a blocking call waits: how long it spins before it sleeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Spin for 2 ms before sleeping: the lowest latency, a core busy
    /// while a peer thinks.
    Latency,
    /// Spin for 50 µs (the defaults).
    Balanced,
    /// Sleep at once, never pause to batch: the least CPU.
    LowCpu,
}

impl Profile {
    /// Every profile.
    pub const ALL: [Profile; 3] = [Profile::Latency, Profile::Balanced, Profile::LowCpu];

    /// Its name in the file and in `IPCD_PROFILE`.
    pub fn name(self) -> &'static str {
        match self {
            Profile::Latency => "latency",
            Profile::Balanced => "balanced",
            Profile::LowCpu => "low-cpu",
        }
    }

    /// The profile named `s`.
    pub fn from_name(s: &str) -> Option<Profile> {
        Profile::ALL.into_iter().find(|p| p.name() == s)
    }

    /// How long a blocking call spins before it sleeps, in µs.
    pub fn spin_us(self) -> u64 {
        match self {
            Profile::Latency => 2000,
            Profile::Balanced => 50,
            Profile::LowCpu => 0,
        }
    }

    /// How long a reader that keeps finding a few bytes pauses, in ns.
    pub fn batch_ns(self) -> u64 {
        match self {
            Profile::LowCpu => 0,
            _ => 500,
        }
    }
}

/// Log levels, as `IPCD_LOG` and `log` name them.
pub const LOG_LEVELS: [&str; 4] = ["error", "warn", "info", "debug"];

/// A value and where it was set (`FILE: [section] key`, or the variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Set<T> {
    /// The value.
    pub value: T,
    /// Where it was set.
    pub origin: String,
}

/// The `[library]` section, merged over the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Library {
    /// `profile`.
    pub profile: Option<Set<Profile>>,
    /// `spin_us`.
    pub spin_us: Option<Set<u64>>,
    /// `spinners`.
    pub spinners: Option<Set<u32>>,
    /// `batch_ns`.
    pub batch_ns: Option<Set<u64>>,
    /// `log`: an index into [`LOG_LEVELS`].
    pub log: Option<Set<u8>>,
}

/// The `[monitor]` section, merged over the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Monitor {
    /// `ring_bytes` (a power of two).
    pub ring_bytes: Option<Set<u64>>,
    /// `cross_uid`.
    pub cross_uid: Option<Set<bool>>,
    /// `poll`.
    pub poll: Option<Set<bool>>,
    /// `queues`: `channel`, `per-process` or `shared` (checked by the monitor).
    pub queues: Option<Set<String>>,
    /// `metrics_address`: where the monitor serves its metrics over HTTP
    /// (checked by the monitor).
    pub metrics_address: Option<Set<String>>,
}

/// What a rule does with the connections and listeners it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Accelerate them (the default; a rule saying so stops later rules).
    Ipcd,
    /// Leave them to the kernel.
    Kernel,
}

/// An address or a network (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Net {
    /// The address.
    pub addr: IpAddr,
    /// How many leading bits must match.
    pub prefix: u8,
}

impl Net {
    fn parse(s: &str) -> Option<Net> {
        let (a, p) = s.split_once('/').map_or((s, None), |(a, p)| (a, Some(p)));
        let addr: IpAddr = a.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max)?,
            None => max,
        };
        Some(Net { addr, prefix })
    }

    /// Whether `a` is in it (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, a: &SockAddr) -> bool {
        let bits = |ip: IpAddr| -> (u128, u8) {
            match ip {
                IpAddr::V4(v) => (u128::from(u32::from(v)), 32),
                IpAddr::V6(v) => match v.to_ipv4_mapped() {
                    Some(v4) => (u128::from(u32::from(v4)), 32),
                    None => (u128::from(v), 128),
                },
            }
        };
        let other = match *a {
            SockAddr::V4 { ip, .. } => IpAddr::from(ip),
            SockAddr::V6 { ip, .. } => IpAddr::from(ip),
        };
        let ((mine, width), (theirs, w2)) = (bits(self.addr), bits(other));
        let prefix = if width == 32 && self.addr.is_ipv6() { self.prefix.saturating_sub(96) } else { self.prefix };
        if width != w2 {
            return false;
        }
        let shift = u32::from(width) - u32::from(prefix.min(width));
        shift >= 128 || (mine >> shift) == (theirs >> shift)
    }
}

/// A port or a range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

/// One `[[rule]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// `program`: an executable name, or a path if it has a '/'.
    pub program: Option<String>,
    /// `local_addr`.
    pub local_addr: Option<Net>,
    /// `local_port`.
    pub local_port: Option<Ports>,
    /// `remote_addr`.
    pub remote_addr: Option<Net>,
    /// `remote_port`.
    pub remote_port: Option<Ports>,
    /// `use`.
    pub action: Option<Use>,
    /// `profile`.
    pub profile: Option<Profile>,
    /// Where it is (`FILE: rule N`).
    pub origin: String,
}

impl Rule {
    /// Whether it names the program known by `names` (its executable's
    /// path, the name it was started by: a symlink such as `redis-server`
    /// names another executable), or names none.
    pub fn covers(&self, names: &[&str]) -> bool {
        match &self.program {
            None => true,
            Some(p) if p.contains('/') => names.contains(&p.as_str()),
            Some(p) => names.iter().any(|n| n.rsplit('/').next() == Some(p.as_str())),
        }
    }

    /// Whether it matches a socket of the program known by `names` with
    /// these addresses (a rule naming an address the socket does not have
    /// yet does not).
    pub fn matches(&self, names: &[&str], local: Option<&SockAddr>, remote: Option<&SockAddr>) -> bool {
        let addr =
            |want: Option<Net>, have: Option<&SockAddr>| want.is_none_or(|n| have.is_some_and(|a| n.contains(a)));
        let port = |want: Option<Ports>, have: Option<&SockAddr>| {
            want.is_none_or(|p| have.is_some_and(|a| (p.lo..=p.hi).contains(&a.port())))
        };
        self.covers(names)
            && addr(self.local_addr, local)
            && port(self.local_port, local)
            && addr(self.remote_addr, remote)
            && port(self.remote_port, remote)
    }
}

/// Every file's settings, merged, and what was not understood.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// The files read, in order.
    pub files: Vec<String>,
    /// `[library]`.
    pub library: Library,
    /// `[monitor]`.
    pub monitor: Monitor,
    /// Every rule, in the order they are tried.
    pub rules: Vec<Rule>,
    /// Settings not understood, each with what is used instead.
    pub invalid: Vec<String>,
}

/// The library's settings for one program, from the files and the
/// environment (see [`Settings::library_for`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The profile and where it came from.
    pub profile: Set<Profile>,
    /// Spin before sleeping, µs.
    pub spin_us: Set<u64>,
    /// Threads that may spin at once.
    pub spinners: Set<u32>,
    /// Batching pause, ns.
    pub batch_ns: Set<u64>,
    /// Log level, an index into [`LOG_LEVELS`].
    pub log: Set<u8>,
    /// `IPCD_DISABLE`.
    pub disabled: bool,
    /// The rules that may apply to this program, in order.
    pub rules: Vec<Rule>,
    /// What was not understood (files and environment).
    pub invalid: Vec<String>,
}

impl Settings {
    /// The files to read, lowest precedence first, from the environment
    /// (`var`): the system's, the user's, and `IPCD_CONFIG`'s.
    pub fn paths(var: &dyn Fn(&str) -> Option<String>) -> Vec<String> {
        let mut out = vec!["/etc/ipcd/ipcd.toml".to_string()];
        match (var("XDG_CONFIG_HOME"), var("HOME")) {
            (Some(x), _) => out.push(format!("{x}/ipcd/ipcd.toml")),
            (None, Some(h)) => out.push(format!("{h}/.config/ipcd/ipcd.toml")),
            _ => {}
        }
        out.extend(var("IPCD_CONFIG"));
        out
    }

    /// Settings from the files [`Settings::paths`] names that `read` can
    /// read (the caller's I/O; this crate does none). One that cannot be
    /// read is skipped, but the one `IPCD_CONFIG` names is reported.
    pub fn load(
        var: &dyn Fn(&str) -> Option<String>,
        read: &dyn Fn(&str) -> Result<String, std::io::Error>,
    ) -> Settings {
        let mut settings = Settings::default();
        let named = var("IPCD_CONFIG");
        for path in Settings::paths(var) {
            match read(&path) {
                Ok(text) => settings.add(&path, &text),
                Err(e) if named.as_deref() == Some(path.as_str()) => {
                    settings.invalid.push(format!("IPCD_CONFIG={path:?} cannot be read ({e}); ignored"));
                }
                Err(_) => {}
            }
        }
        settings
    }

    /// Settings from files' text, in order: `(path, text)`.
    pub fn from_files<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let mut s = Settings::default();
        for (path, text) in files {
            s.add(path, text);
        }
        s
    }

    /// Adds a file read later than those before: its settings override
    /// theirs, its rules come first.
    pub fn add(&mut self, path: &str, text: &str) {
        self.files.push(path.to_string());
        let doc = match DeTable::parse(text) {
            Ok(d) => d.into_inner(),
            Err(e) => {
                let why = e.to_string().lines().next().unwrap_or("").trim().to_string();
                self.invalid.push(format!("{path}: not TOML ({why}); the whole file is ignored"));
                return;
            }
        };
        let mut rules = Vec::new();
        for (key, value) in &doc {
            match (key.get_ref().as_ref(), value.get_ref()) {
                ("library", DeValue::Table(t)) => self.library_section(path, t),
                ("monitor", DeValue::Table(t)) => self.monitor_section(path, t),
                ("rule", DeValue::Array(list)) => {
                    for (n, r) in list.iter().enumerate() {
                        let origin = format!("{path}: rule {}", n + 1);
                        match r.get_ref() {
                            DeValue::Table(t) => rules.extend(self.rule(origin, t)),
                            _ => self.invalid.push(format!("{origin}: not a table; ignored")),
                        }
                    }
                }
                (k, _) => self
                    .invalid
                    .push(format!("{path}: [{k}] is not a section ipcd knows (library, monitor, [[rule]]); ignored")),
            }
        }
        rules.append(&mut self.rules);
        self.rules = rules;
    }

    fn library_section(&mut self, path: &str, t: &DeTable<'_>) {
        for (key, value) in t {
            let key = key.get_ref().as_ref();
            let origin = format!("{path}: [library] {key}");
            let v = value.get_ref();
            let lib = &mut self.library;
            let ok = match key {
                "profile" => v.as_str().and_then(Profile::from_name).map(|p| lib.profile = Some(set(p, &origin))),
                "spin_us" => int(v).map(|n| lib.spin_us = Some(set(n, &origin))),
                "batch_ns" => int(v).map(|n| lib.batch_ns = Some(set(n, &origin))),
                "spinners" => int(v)
                    .and_then(|n| u32::try_from(n).ok())
                    .filter(|&n| n > 0)
                    .map(|n| lib.spinners = Some(set(n, &origin))),
                "log" => v
                    .as_str()
                    .and_then(|s| LOG_LEVELS.iter().position(|l| *l == s))
                    .map(|i| lib.log = Some(set(i as u8, &origin))),
                _ => {
                    self.invalid.push(format!("{origin}: not a setting ipcd knows; ignored"));
                    continue;
                }
            };
            if ok.is_none() {
                let want = match key {
                    "profile" => "one of latency, balanced, low-cpu",
                    "log" => "one of error, warn, info, debug",
                    "spinners" => "a whole number above 0",
                    _ => "a whole number",
                };
                self.invalid
                    .push(format!("{origin} = {}: not {want}; the earlier value or the default is used", show(v)));
            }
        }
    }

    fn monitor_section(&mut self, path: &str, t: &DeTable<'_>) {
        for (key, value) in t {
            let key = key.get_ref().as_ref();
            let origin = format!("{path}: [monitor] {key}");
            let v = value.get_ref();
            let mon = &mut self.monitor;
            let ok = match key {
                "ring_bytes" => int(v).filter(|n| n.is_power_of_two()).map(|n| mon.ring_bytes = Some(set(n, &origin))),
                "cross_uid" => v.as_bool().map(|b| mon.cross_uid = Some(set(b, &origin))),
                "poll" => v.as_bool().map(|b| mon.poll = Some(set(b, &origin))),
                "queues" => v.as_str().map(|q| mon.queues = Some(set(q.to_string(), &origin))),
                "metrics_address" => v.as_str().map(|a| mon.metrics_address = Some(set(a.to_string(), &origin))),
                _ => {
                    self.invalid.push(format!("{origin}: not a setting ipcd knows; ignored"));
                    continue;
                }
            };
            if ok.is_none() {
                let want = match key {
                    "ring_bytes" => "a power of two",
                    "queues" | "metrics_address" => "a string",
                    _ => "true or false",
                };
                self.invalid
                    .push(format!("{origin} = {}: not {want}; the earlier value or the default is used", show(v)));
            }
        }
    }

    /// One `[[rule]]`; `None` (and why, in `invalid`) if it cannot be
    /// taken whole: half a rule could accelerate what it meant to exclude.
    fn rule(&mut self, origin: String, t: &DeTable<'_>) -> Option<Rule> {
        let mut r = Rule {
            program: None,
            local_addr: None,
            local_port: None,
            remote_addr: None,
            remote_port: None,
            action: None,
            profile: None,
            origin,
        };
        let mut bad = String::new();
        for (key, value) in t {
            let key = key.get_ref().as_ref();
            let v = value.get_ref();
            let ok = match key {
                "program" => v.as_str().filter(|s| !s.is_empty()).map(|s| r.program = Some(s.to_string())),
                "local_addr" => v.as_str().and_then(Net::parse).map(|n| r.local_addr = Some(n)),
                "remote_addr" => v.as_str().and_then(Net::parse).map(|n| r.remote_addr = Some(n)),
                "local_port" => ports(v).map(|p| r.local_port = Some(p)),
                "remote_port" => ports(v).map(|p| r.remote_port = Some(p)),
                "use" => match v.as_str() {
                    Some("kernel") => Some(Use::Kernel),
                    Some("ipcd") => Some(Use::Ipcd),
                    _ => None,
                }
                .map(|u| r.action = Some(u)),
                "profile" => v.as_str().and_then(Profile::from_name).map(|p| r.profile = Some(p)),
                _ => {
                    let _ = write!(bad, "{}{key} is not a rule key", if bad.is_empty() { "" } else { ", " });
                    continue;
                }
            };
            if ok.is_none() {
                let _ = write!(bad, "{}{key} = {} is not understood", if bad.is_empty() { "" } else { ", " }, show(v));
            }
        }
        if r.action.is_none() && r.profile.is_none() && bad.is_empty() {
            bad.push_str("it says neither `use` nor `profile`");
        }
        if !bad.is_empty() {
            self.invalid.push(format!("{}: {bad}; the rule is ignored", r.origin));
            return None;
        }
        Some(r)
    }

    /// The library's settings for the program known by `names` (see
    /// [`Rule::covers`]): each
    /// from the environment (`var`) if set there, else the files, else the
    /// program's profile; `cores` is how many cores it may run on (its
    /// default spinners are one fewer).
    pub fn library_for(&self, names: &[&str], var: &dyn Fn(&str) -> Option<String>, cores: u32) -> Resolved {
        let mut invalid = self.invalid.clone();
        let rules: Vec<Rule> = self.rules.iter().filter(|r| r.covers(names)).cloned().collect();
        let from_rule = rules.iter().find_map(|r| r.profile.map(|p| set(p, &r.origin)));
        let file_profile = from_rule.or_else(|| self.library.profile.clone());
        let profile = match var("IPCD_PROFILE") {
            Some(v) => match Profile::from_name(&v) {
                Some(p) => set(p, "IPCD_PROFILE"),
                None => {
                    let used = file_profile.clone().unwrap_or_else(|| set(Profile::Balanced, "default"));
                    invalid.push(format!(
                        "IPCD_PROFILE={v:?} is not one of latency, balanced, low-cpu; using {}",
                        used.value.name()
                    ));
                    used
                }
            },
            None => file_profile.unwrap_or_else(|| set(Profile::Balanced, "default")),
        };
        let by_profile = |n: u64| set(n, &format!("profile {}", profile.value.name()));
        let mut num = |name: &str, file: &Option<Set<u64>>, default: Set<u64>| -> Set<u64> {
            let fallback = file.clone().unwrap_or(default);
            match var(name) {
                None => fallback,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) => set(n, name),
                    Err(_) => {
                        invalid.push(format!("{name}={v:?} is not a whole number; using {}", fallback.value));
                        fallback
                    }
                },
            }
        };
        let spin_us = num("IPCD_SPIN_US", &self.library.spin_us, by_profile(profile.value.spin_us()));
        let batch_ns = num("IPCD_BATCH_NS", &self.library.batch_ns, by_profile(profile.value.batch_ns()));
        let default_spinners = set(u64::from(cores.saturating_sub(1).max(1)), "default (one fewer than the cores)");
        let file_spinners = self.library.spinners.as_ref().map(|s| set(u64::from(s.value), &s.origin));
        let spinners = num("IPCD_SPINNERS", &file_spinners, default_spinners);
        let spinners = if spinners.value == 0 {
            invalid.push("IPCD_SPINNERS=0 lets no thread spin; using 1".to_string());
            set(1, "IPCD_SPINNERS")
        } else {
            set(u32::try_from(spinners.value).unwrap_or(u32::MAX), &spinners.origin)
        };
        let file_log = self.library.log.clone().unwrap_or_else(|| set(1, "default"));
        let log = match var("IPCD_LOG").as_deref() {
            None => file_log,
            Some("trace") => set(3, "IPCD_LOG"),
            Some(v) => match LOG_LEVELS.iter().position(|l| *l == v) {
                Some(i) => set(i as u8, "IPCD_LOG"),
                None => {
                    invalid.push(format!(
                        "IPCD_LOG={v:?} is not one of error, warn, info, debug; using {}",
                        LOG_LEVELS[usize::from(file_log.value).min(3)]
                    ));
                    file_log
                }
            },
        };
        Resolved {
            profile,
            spin_us,
            spinners,
            batch_ns,
            log,
            disabled: var("IPCD_DISABLE").is_some_and(|v| v != "0"),
            rules,
            invalid,
        }
    }
}

impl Resolved {
    /// The rule that decides a socket with these addresses: the first of
    /// [`Resolved::rules`] with a `use` that matches.
    pub fn decide(&self, names: &[&str], local: Option<&SockAddr>, remote: Option<&SockAddr>) -> Option<&Rule> {
        self.rules.iter().filter(|r| r.action.is_some()).find(|r| r.matches(names, local, remote))
    }

    /// Whether a socket with these addresses is left to the kernel by rule.
    pub fn to_kernel(&self, names: &[&str], local: Option<&SockAddr>, remote: Option<&SockAddr>) -> bool {
        self.decide(names, local, remote).is_some_and(|r| r.action == Some(Use::Kernel))
    }
}

fn set<T>(value: T, origin: &str) -> Set<T> {
    Set { value, origin: origin.to_string() }
}

fn int(v: &DeValue<'_>) -> Option<u64> {
    let i = v.as_integer()?;
    u64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
}

fn ports(v: &DeValue<'_>) -> Option<Ports> {
    let one = |n: u64| u16::try_from(n).ok();
    match v {
        DeValue::Integer(_) => one(int(v)?).map(|p| Ports { lo: p, hi: p }),
        DeValue::String(s) => {
            let (lo, hi) = s.split_once('-').unwrap_or((s, s));
            let (lo, hi) = (lo.trim().parse::<u16>().ok()?, hi.trim().parse::<u16>().ok()?);
            (lo <= hi).then_some(Ports { lo, hi })
        }
        _ => None,
    }
}

/// A value as the file wrote it, for messages.
fn show(v: &DeValue<'_>) -> String {
    match v {
        DeValue::String(s) => format!("{:?}", s.as_ref()),
        DeValue::Integer(i) => i.as_str().to_string(),
        DeValue::Float(f) => f.as_str().to_string(),
        DeValue::Boolean(b) => b.to_string(),
        other => format!("<{}>", other.type_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn later_files_override_and_their_rules_come_first() {
        let s = Settings::from_files([
            (
                "/etc/ipcd/ipcd.toml",
                "[library]\nprofile = \"low-cpu\"\nspin_us = 7\n[[rule]]\nremote_port = 5432\nuse = \"kernel\"\n",
            ),
            ("user.toml", "[library]\nspin_us = 9\n[[rule]]\nprogram = \"psql\"\nuse = \"ipcd\"\n"),
        ]);
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
        let r = s.library_for(&["/usr/bin/psql"], &no_env, 2);
        assert_eq!((r.profile.value, r.spin_us.value, r.batch_ns.value), (Profile::LowCpu, 9, 0));
        assert_eq!(r.spin_us.origin, "user.toml: [library] spin_us");
        let pg = SockAddr::V4 { ip: [127, 0, 0, 1], port: 5432 };
        // psql's own rule comes first and keeps it on ipcd; others go to the kernel.
        assert!(!r.to_kernel(&["/usr/bin/psql"], None, Some(&pg)));
        let other = s.library_for(&["/usr/bin/pgbench"], &no_env, 2);
        assert!(other.to_kernel(&["/usr/bin/pgbench"], None, Some(&pg)));
        assert!(!other.to_kernel(&["/usr/bin/pgbench"], None, Some(&pg.with_port(5433))));
    }

    #[test]
    fn the_environment_overrides_the_files_and_bad_values_say_what_is_used() {
        let s = Settings::from_files([("f", "[library]\nlog = \"info\"\nspin_us = 3\n")]);
        let env = |k: &str| match k {
            "IPCD_SPIN_US" => Some("garbage".to_string()),
            "IPCD_LOG" => Some("loud".to_string()),
            "IPCD_PROFILE" => Some("latency".to_string()),
            _ => None,
        };
        let r = s.library_for(&["/bin/x"], &env, 2);
        assert_eq!((r.spin_us.value, r.log.value, r.profile.value), (3, 2, Profile::Latency));
        assert_eq!(r.invalid.len(), 2, "{:?}", r.invalid);
        assert!(r.invalid[0].contains("IPCD_SPIN_US=\"garbage\"") && r.invalid[0].ends_with("using 3"));
        assert!(r.invalid[1].contains("IPCD_LOG=\"loud\"") && r.invalid[1].ends_with("using info"));
        // Unset, the default log level is warn and the profile balanced.
        let d = Settings::default().library_for(&["/bin/x"], &no_env, 4);
        assert_eq!((d.log.value, d.profile.value, d.spin_us.value, d.spinners.value), (1, Profile::Balanced, 50, 3));
    }

    #[test]
    fn bad_settings_and_rules_are_named_and_the_rest_applies() {
        let s = Settings::from_files([(
            "f",
            "[library]\nprofile = \"fast\"\nspinners = 0\nspinz = 1\n[monitor]\nring_bytes = 1000\npoll = true\nqueues = \"shared\"\nmetrics_address = \"127.0.0.1:9464\"\n\
             [[rule]]\nremote_port = \"9-1\"\nuse = \"kernel\"\n[[rule]]\nprogram = \"a\"\n[[rule]]\nprogram = \"b\"\nuse = \"kernel\"\n[extra]\n",
        )]);
        assert_eq!(s.monitor.poll.as_ref().map(|p| p.value), Some(true));
        assert_eq!(s.monitor.queues.as_ref().map(|q| q.value.as_str()), Some("shared"));
        assert_eq!(s.monitor.metrics_address.as_ref().map(|q| q.value.as_str()), Some("127.0.0.1:9464"));
        assert_eq!(s.monitor.ring_bytes, None);
        assert_eq!(s.rules.len(), 1, "{:?}", s.rules);
        assert_eq!(s.rules[0].program.as_deref(), Some("b"));
        let joined = s.invalid.join("\n");
        for what in ["profile = \"fast\"", "spinners = 0", "spinz", "ring_bytes = 1000", "rule 1", "rule 2", "[extra]"]
        {
            assert!(joined.contains(what), "{what} not reported:\n{joined}");
        }
        let broken = Settings::from_files([("g", "[library\n")]);
        assert!(broken.invalid[0].starts_with("g: not TOML"), "{:?}", broken.invalid);
    }

    #[test]
    fn rules_match_programs_ports_and_networks() {
        let s = Settings::from_files([(
            "f",
            "[[rule]]\nprogram = \"/opt/x/bin/srv\"\nlocal_port = \"8000-8099\"\nuse = \"kernel\"\n\
             [[rule]]\nremote_addr = \"10.1.0.0/16\"\nuse = \"kernel\"\n[[rule]]\nprogram = \"redis-server\"\nprofile = \"latency\"\n",
        )]);
        let srv = s.library_for(&["/opt/x/bin/srv"], &no_env, 2);
        let at = |p| SockAddr::V4 { ip: [127, 0, 0, 1], port: p };
        assert!(srv.to_kernel(&["/opt/x/bin/srv"], Some(&at(8042)), None));
        assert!(!srv.to_kernel(&["/opt/x/bin/srv"], Some(&at(8100)), None));
        let other = s.library_for(&["/usr/bin/srv"], &no_env, 2);
        assert!(!other.to_kernel(&["/usr/bin/srv"], Some(&at(8042)), None));
        let v6mapped = SockAddr::V6 {
            ip: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 255, 255, 10, 1, 2, 3],
            port: 1,
            flowinfo: 0,
            scope_id: 0,
        };
        assert!(other.to_kernel(&["/usr/bin/srv"], None, Some(&v6mapped)));
        assert!(!other.to_kernel(&["/usr/bin/srv"], None, Some(&SockAddr::V4 { ip: [10, 2, 0, 1], port: 1 })));
        assert_eq!(s.library_for(&["/usr/bin/redis-server"], &no_env, 2).profile.value, Profile::Latency);
    }
}
