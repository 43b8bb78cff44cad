//! Settings read once, at load: the config files (`ipcd_proto::settings`:
//! profiles, settings, rules) under the environment, which overrides them.

use std::sync::OnceLock;
use std::time::Duration;

use ipcd_proto::settings::{Resolved, Settings};
use ipcd_proto::SockAddr;

/// What the files and the environment asked for.
#[derive(Debug)]
pub(crate) struct Config {
    /// `IPCD_DISABLE=1`: every call passes through to libc.
    pub disabled: bool,
    /// Monitor socket name (`IPCD_SOCKET`, else `ipcd-<uid>`, as the monitor).
    pub socket: String,
    /// How long a blocking call spins before it sleeps (`spin_us`, by
    /// profile: 50 µs balanced, 2 ms latency, 0 low-cpu).
    pub spin: Duration,
    /// How many threads of this process may spin at once (`spinners`,
    /// else one fewer than the cores this process may run on, at least 1).
    pub spinners: u32,
    /// How long a reader that keeps finding a few bytes waiting first
    /// pauses before it looks again (0: never); further pauses double, up
    /// to 32 times this (see `stream::recv`).
    pub batch: Duration,
    /// 0 error, 1 warn (default), 2 info, 3 debug.
    pub log_level: u8,
    /// This program's names as rules match them: its executable's path and
    /// the name it was started by (`argv[0]`); empty when no rule exists.
    pub program: [String; 2],
    /// Everything resolved, with where each value came from and the rules
    /// that may apply to this program.
    pub resolved: Resolved,
}

impl Config {
    /// Whether a rule leaves a socket with these addresses to the kernel
    /// (a load and a length check when there are no rules).
    pub(crate) fn to_kernel(&self, local: Option<&SockAddr>, remote: Option<&SockAddr>) -> bool {
        !self.resolved.rules.is_empty() && self.resolved.to_kernel(&self.names(), local, remote)
    }

    fn names(&self) -> [&str; 2] {
        [&self.program[0], &self.program[1]]
    }
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The cores this process may run on.
fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// The settings (read on first use, which the constructor makes).
pub(crate) fn get() -> &'static Config {
    CONFIG.get_or_init(|| {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let settings = files(&var);
        // Only rules look at the program: without any, its names are not
        // read (two system calls less in every process's start).
        let program = if settings.rules.is_empty() { Default::default() } else { program_names() };
        read(&settings, &var, program)
    })
}

/// This program's executable and the name it was started by (`argv[0]`).
fn program_names() -> [String; 2] {
    let exe = std::fs::read_link("/proc/self/exe").map(|p| p.to_string_lossy().into_owned());
    let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
    let argv0 = cmdline.split(|&b| b == 0).next().unwrap_or_default();
    [exe.unwrap_or_default(), String::from_utf8_lossy(argv0).into_owned()]
}

/// The config files that exist, read, in order (see `Settings::paths`).
pub(crate) fn files(var: &dyn Fn(&str) -> Option<String>) -> Settings {
    Settings::load(var, &|path| std::fs::read_to_string(path))
}

/// Says once, at load, which settings were not understood and what was
/// used instead (a typo must not pass for the default in silence).
pub(crate) fn report_invalid() {
    for m in &get().resolved.invalid {
        crate::sys::log::log!(crate::sys::log::Level::Warn, "{m}");
    }
}

/// The settings for `program` from `settings` under the environment `var`.
fn read(settings: &Settings, var: &dyn Fn(&str) -> Option<String>, program: [String; 2]) -> Config {
    let resolved = settings.library_for(&[&program[0], &program[1]], var, cores());
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    Config {
        disabled: resolved.disabled,
        socket: var("IPCD_SOCKET").unwrap_or_else(|| format!("ipcd-{uid}")),
        spin: Duration::from_micros(resolved.spin_us.value),
        spinners: resolved.spinners.value,
        batch: Duration::from_nanos(resolved.batch_ns.value),
        log_level: resolved.log.value,
        program,
        resolved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(vars: &[(&str, &str)]) -> Config {
        with_file("", vars)
    }

    fn with_file(text: &str, vars: &[(&str, &str)]) -> Config {
        let vars: Vec<(String, String)> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let settings = Settings::from_files([("test.toml", text)]);
        read(
            &settings,
            &|k| vars.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
            ["/usr/bin/prog".into(), "prog".into()],
        )
    }

    #[test]
    fn unset_settings_take_the_defaults_quietly() {
        let c = with(&[]);
        assert_eq!((c.spin, c.batch, c.log_level), (Duration::from_micros(50), Duration::from_nanos(500), 1));
        assert_eq!(c.spinners, cores().saturating_sub(1).max(1));
        assert!(c.resolved.invalid.is_empty());
    }

    #[test]
    fn good_settings_are_taken() {
        let c = with(&[("IPCD_SPIN_US", "7"), ("IPCD_SPINNERS", "3"), ("IPCD_BATCH_NS", "0"), ("IPCD_LOG", "debug")]);
        assert_eq!((c.spin, c.spinners, c.batch, c.log_level), (Duration::from_micros(7), 3, Duration::ZERO, 3));
        assert!(c.resolved.invalid.is_empty(), "{:?}", c.resolved.invalid);
    }

    #[test]
    fn bad_settings_are_named_with_what_was_used() {
        let c = with(&[("IPCD_SPIN_US", "garbage"), ("IPCD_SPINNERS", "0"), ("IPCD_LOG", "loud")]);
        assert_eq!((c.spin, c.spinners, c.log_level), (Duration::from_micros(50), 1, 1));
        let invalid = &c.resolved.invalid;
        assert_eq!(invalid.len(), 3, "{invalid:?}");
        assert!(invalid[0].contains("IPCD_SPIN_US=\"garbage\"") && invalid[0].ends_with("using 50"));
        assert!(invalid[1].contains("IPCD_SPINNERS=0"));
        assert!(invalid[2].contains("IPCD_LOG=\"loud\"") && invalid[2].ends_with("using warn"));
    }

    #[test]
    fn the_program_s_profile_and_rules_come_from_the_file() {
        let file =
            "[[rule]]\nprogram = \"prog\"\nprofile = \"low-cpu\"\n[[rule]]\nremote_port = 5432\nuse = \"kernel\"\n";
        let c = with_file(file, &[]);
        assert_eq!((c.spin, c.batch), (Duration::ZERO, Duration::ZERO));
        let pg = SockAddr::V4 { ip: [127, 0, 0, 1], port: 5432 };
        assert!(c.to_kernel(None, Some(&pg)));
        assert!(!c.to_kernel(None, Some(&pg.with_port(80))));
        // The environment still overrides the profile's numbers.
        assert_eq!(with_file(file, &[("IPCD_SPIN_US", "9")]).spin, Duration::from_micros(9));
    }
}
