//! `ipcd metrics`: the monitor's status as Prometheus (OpenMetrics) text,
//! for a node exporter's textfile collector or a scrape through a small
//! wrapper. Counters are the monitor's totals since it started; gauges
//! are what it holds now; per-process and per-listener series carry the
//! pid and the command name as labels.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use ipcd_proto::message::Fallback;

use crate::client::StatusReport;

/// Labels of one series.
type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, g);
}

/// A fallback reason as a label value: its name in snake case
/// (`no_listener_under_ipcd`), as label values conventionally are.
pub fn reason_label(reason: Fallback) -> String {
    reason.name().replace(' ', "_")
}

/// A process's command name (`/proc/PID/comm`), if it is still there.
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// `report` as OpenMetrics text; `name_of` gives a process's command name
/// (empty if unknown).
pub fn render(report: &StatusReport, name_of: impl Fn(u32) -> String) -> String {
    let s = &report.status;
    let mut r = Registry::with_prefix("ipcd");
    counter(&mut r, "connects", "Connections set up through shared memory since the monitor started", s.connects_total);
    counter(
        &mut r,
        "connects_reused",
        "Of those, on the segment of an earlier connection of the same pair",
        s.reused_total,
    );
    counter(
        &mut r,
        "connects_standby",
        "Of those, taken from a standby without waiting for an answer",
        s.standby_total,
    );
    counter(
        &mut r,
        "connects_renewed",
        "Of those, made by the two processes alone through a standby they renewed (no message to the monitor)",
        s.renewed_total,
    );
    let fallbacks = Family::<Labels, Counter>::default();
    for (reason, n) in Fallback::ALL.iter().zip(s.fallbacks) {
        fallbacks.get_or_create(&vec![("reason", reason_label(*reason))]).inc_by(n);
    }
    r.register("fallbacks", "Connects left to the kernel, by reason", fallbacks);
    gauge(&mut r, "processes", "Processes with a channel to the monitor", u64::from(s.processes));
    gauge(&mut r, "listeners", "Listeners under ipcd", u64::from(s.listeners));
    gauge(&mut r, "connections", "Live connections", u64::from(s.connections));
    gauge(&mut r, "segment_bytes", "Bytes of live and pooled shared-memory segments", s.segment_bytes);
    gauge(&mut r, "uptime_seconds", "Seconds since the monitor started", s.uptime_ms / 1000);
    let conns = Family::<Labels, Gauge>::default();
    let sent = Family::<Labels, Counter>::default();
    let received = Family::<Labels, Counter>::default();
    let to_kernel = Family::<Labels, Counter>::default();
    for p in &report.processes {
        let labels = vec![("pid", p.pid.to_string()), ("name", name_of(p.pid))];
        conns.get_or_create(&labels).set(i64::from(p.connections));
        sent.get_or_create(&labels).inc_by(p.sent);
        received.get_or_create(&labels).inc_by(p.received);
        to_kernel.get_or_create(&labels).inc_by(p.to_kernel);
    }
    r.register("process_connections", "Connection ends a process holds", conns);
    r.register("process_sent_bytes", "Bytes sent on the ends a process holds", sent);
    r.register("process_received_bytes", "Bytes received on the ends a process holds", received);
    r.register("process_fallbacks", "Connects of a process left to the kernel", to_kernel);
    let pending = Family::<Labels, Gauge>::default();
    let backlog = Family::<Labels, Gauge>::default();
    for l in &report.listeners {
        let labels = vec![("addr", l.addr.to_string()), ("pid", l.pid.to_string()), ("name", name_of(l.pid))];
        pending.get_or_create(&labels).set(i64::from(l.pending));
        backlog.get_or_create(&labels).set(i64::from(l.backlog));
    }
    r.register("listener_pending", "Connections brokered to a listener and not yet accepted", pending);
    r.register("listener_backlog", "A listener's listen backlog", backlog);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &r);
    out
}
