//! `ipcd config show`: the settings the config files and the environment
//! give a program, and where each came from.

use std::fmt::Write as _;

use ipcd_proto::settings::{Resolved, Rule, Set, Settings, Use, LOG_LEVELS};

use crate::config::DEFAULT_RING_BYTES;

/// The files as the monitor and the library read them, from this
/// process's environment.
pub fn load() -> Settings {
    Settings::load(&env_var, &|path| std::fs::read_to_string(path))
}

/// A variable of this process's environment, unset if empty (as the
/// library reads them).
pub fn env_var(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// The executable a program name stands for: a path as given, a name
/// looked up in `PATH` (as the shell would), else the name itself.
pub fn program_path(program: &str) -> String {
    if program.contains('/') {
        return std::fs::canonicalize(program).map_or_else(|_| program.to_string(), |p| p.display().to_string());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
        .map_or_else(|| program.to_string(), |p| p.display().to_string())
}

/// The report for the program known by `names` (its executable's path,
/// the name it is started by), with this process's environment over the
/// files, as that program started from here would see them; `cores` as
/// the library counts them.
pub fn report(settings: &Settings, names: &[&str], cores: u32) -> String {
    let r = settings.library_for(names, &env_var, cores);
    let program = match names {
        [] => "any program (rules that name one are left out)".to_string(),
        [a, b] if a == b => a.to_string(),
        _ => names.join(", started as "),
    };
    let mut out = String::new();
    let _ = writeln!(out, "config files, later overriding earlier:");
    for path in Settings::paths(&env_var) {
        let state = if settings.files.contains(&path) { "read" } else { "absent" };
        let _ = writeln!(out, "  {path}  ({state})");
    }
    let _ = writeln!(out, "\nlibrary, for {program}:");
    if r.disabled {
        let _ = writeln!(out, "  disabled     IPCD_DISABLE is set: every call goes to libc");
    }
    line(&mut out, "profile", &r.profile, |p| p.name().to_string());
    line(&mut out, "spin_us", &r.spin_us, u64::to_string);
    line(&mut out, "spinners", &r.spinners, u32::to_string);
    line(&mut out, "batch_ns", &r.batch_ns, u64::to_string);
    line(&mut out, "log", &r.log, |l| LOG_LEVELS[usize::from(*l).min(3)].to_string());
    rules(&mut out, &r);
    let m = &settings.monitor;
    let _ = writeln!(out, "\nmonitor (`ipcd daemon` flags override these):");
    let dflt = |v: String| Set { value: v, origin: "default".to_string() };
    let show = |s: &Option<Set<u64>>, d: u64| s.as_ref().map_or(dflt(d.to_string()), |s| text(s, u64::to_string));
    let flag = |s: &Option<Set<bool>>| s.as_ref().map_or(dflt("false".into()), |s| text(s, bool::to_string));
    line_in(&mut out, 15, "ring_bytes", &show(&m.ring_bytes, DEFAULT_RING_BYTES), String::clone);
    line_in(&mut out, 15, "cross_uid", &flag(&m.cross_uid), String::clone);
    line_in(&mut out, 15, "poll", &flag(&m.poll), String::clone);
    line_in(&mut out, 15, "queues", &m.queues.clone().unwrap_or_else(|| dflt("channel".into())), String::clone);
    line_in(
        &mut out,
        15,
        "metrics_address",
        &m.metrics_address.clone().unwrap_or_else(|| dflt("off".into())),
        String::clone,
    );
    if !r.invalid.is_empty() {
        let _ = writeln!(out, "\nnot understood (what is used instead):");
        for m in &r.invalid {
            let _ = writeln!(out, "  {m}");
        }
    }
    out
}

fn text<T>(s: &Set<T>, f: impl Fn(&T) -> String) -> Set<String> {
    Set { value: f(&s.value), origin: s.origin.clone() }
}

fn line<T>(out: &mut String, name: &str, s: &Set<T>, f: impl Fn(&T) -> String) {
    line_in(out, 12, name, s, f);
}

/// A setting in a column `width` wide (the monitor's keys are longer).
fn line_in<T>(out: &mut String, width: usize, name: &str, s: &Set<T>, f: impl Fn(&T) -> String) {
    let _ = writeln!(out, "  {name:<width$} {:<10} ({})", f(&s.value), s.origin);
}

fn rules(out: &mut String, r: &Resolved) {
    if r.rules.is_empty() {
        let _ = writeln!(out, "  rules        none apply: every connect and listener goes through ipcd");
        return;
    }
    let _ = writeln!(out, "  rules that may apply, the first that matches a socket decides:");
    for rule in &r.rules {
        let _ = writeln!(out, "    {}: {}", rule.origin, describe(rule));
    }
}

/// A rule in one line: what it matches, then what it does.
fn describe(r: &Rule) -> String {
    let mut m = Vec::new();
    if let Some(p) = &r.program {
        m.push(format!("program {p}"));
    }
    let net = |n: &ipcd_proto::settings::Net| format!("{}/{}", n.addr, n.prefix);
    let ports = |p: &ipcd_proto::settings::Ports| {
        if p.lo == p.hi {
            p.lo.to_string()
        } else {
            format!("{}-{}", p.lo, p.hi)
        }
    };
    m.extend(r.local_addr.as_ref().map(|n| format!("local address {}", net(n))));
    m.extend(r.local_port.as_ref().map(|p| format!("local port {}", ports(p))));
    m.extend(r.remote_addr.as_ref().map(|n| format!("remote address {}", net(n))));
    m.extend(r.remote_port.as_ref().map(|p| format!("remote port {}", ports(p))));
    let what = if m.is_empty() { "everything".to_string() } else { m.join(", ") };
    let mut does = Vec::new();
    match r.action {
        Some(Use::Kernel) => does.push("kernel".to_string()),
        Some(Use::Ipcd) => does.push("ipcd".to_string()),
        None => {}
    }
    if let Some(p) = r.profile {
        does.push(format!("profile {}", p.name()));
    }
    format!("{what} -> {}", does.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example the package ships is understood whole.
    #[test]
    fn the_packaged_example_config_is_understood() {
        let text = include_str!("../../packaging/ipcd.toml");
        let s = Settings::from_files([("ipcd.toml", text)]);
        assert!(s.invalid.is_empty(), "{:?}", s.invalid);
        assert_eq!(s.monitor.ring_bytes.as_ref().map(|r| r.value), Some(DEFAULT_RING_BYTES));
        let out = report(&s, &["/usr/bin/x", "x"], 2);
        assert!(out.contains("profile      balanced   (ipcd.toml: [library] profile)"), "{out}");
    }
}
