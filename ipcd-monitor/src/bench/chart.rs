//! `ipcd bench`'s figure: one group per workload, the medians of kernel
//! TCP, a Unix socket and ipcd side by side as bars with their values and
//! units, each group on its own linear scale (so no single noisy number
//! sets everyone's), and the ratio ipcd / kernel beside it; the machine,
//! date, commit and whether it was a quick run in the header. Written as
//! SVG and as PNG, from one drawing routine.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::Row;

/// What the header says of the run.
#[derive(Debug, Clone)]
pub(super) struct Run {
    /// Date and time (UTC).
    pub date: String,
    /// CPU model, cores, kernel.
    pub machine: String,
    /// ipcd version and commit.
    pub build: String,
    /// A `--quick` run.
    pub quick: bool,
}

const WIDTH: u32 = 1100;
const TOP: i32 = 96;
const BAR: i32 = 15;
const GAP: i32 = 2;
const GROUP: i32 = 3 * (BAR + GAP) + 12;
const LABEL_W: i32 = 400;
const BARS_W: i32 = 520;
/// Kernel TCP, Unix socket, ipcd.
const COLORS: [RGBColor; 3] = [RGBColor(150, 150, 150), RGBColor(230, 145, 56), RGBColor(38, 110, 200)];
const NAMES: [&str; 3] = ["kernel TCP", "Unix socket", "ipcd"];

/// The rows worth a group: one metric per workload where two say the
/// same thing (messages/s and GB/s of one stream give the same ratio:
/// the one in readable units stays), and no p99.9 (one outlier decides
/// it; the table and results.json keep it).
pub(super) fn groups(rows: &[Row]) -> Vec<&Row> {
    let mut out: Vec<&Row> = Vec::new();
    for r in rows.iter().filter(|r| r.metric != "p99.9" && r.values.iter().any(Option::is_some)) {
        if let Some(last) = out.last_mut() {
            // The same thing in other units: the same workload, its
            // values in proportion, so the same ratio.
            let same = last.workload == r.workload
                && last.unit != r.unit
                && matches!((last.ratio(), r.ratio()), (Some(a), Some(b)) if (a - b).abs() <= 1e-9 * a.abs().max(1.0));
            if same {
                // Prefer the one whose ipcd value reads as a plain number.
                if last.values[2].unwrap_or(0.0) < 1.0 && r.values[2].unwrap_or(0.0) >= 1.0 {
                    *last = r;
                }
                continue;
            }
        }
        out.push(r);
    }
    out
}

/// Writes the figure to `svg` and `png`. The PNG needs a TrueType font
/// (DejaVu Sans, `fonts-dejavu-core`); without one only the SVG is made
/// and the reason returned as `Ok(Some(..))`.
pub(super) fn write(rows: &[Row], run: &Run, svg: &Path, png: &Path) -> Result<Option<String>, String> {
    let groups = groups(rows);
    let height = (TOP + GROUP * groups.len() as i32 + 30) as u32;
    let font = load_font();
    let err = |e: &dyn std::fmt::Display| format!("chart: {e}");
    {
        let root = SVGBackend::new(svg, (WIDTH, height)).into_drawing_area();
        draw(&root, &groups, run).map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    if let Err(why) = font {
        return Ok(Some(why));
    }
    let root = BitMapBackend::new(png, (WIDTH, height)).into_drawing_area();
    draw(&root, &groups, run).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(None)
}

/// Registers DejaVu Sans as "sans-serif" for text measured and drawn in
/// pixels (the PNG; the SVG measures with it too).
fn load_font() -> Result<(), String> {
    static LOADED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            let paths = ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf"];
            let bytes = paths
                .iter()
                .find_map(|p| std::fs::read(p).ok())
                .ok_or("no DejaVuSans.ttf (Debian: fonts-dejavu-core): chart.png not made")?;
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            for style in [FontStyle::Normal, FontStyle::Bold] {
                plotters::style::register_font("sans-serif", style, bytes)
                    .map_err(|_| "DejaVuSans.ttf is not a usable font: chart.png not made".to_string())?;
            }
            Ok(())
        })
        .clone()
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    groups: &[&Row],
    run: &Run,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let left = Pos::new(HPos::Left, VPos::Center);
    let right = Pos::new(HPos::Right, VPos::Center);
    let text = |size: u32, color: &RGBColor, pos: Pos| ("sans-serif", size).into_font().color(color).pos(pos);
    let bold = |size: u32, color: &RGBColor, pos: Pos| {
        ("sans-serif", size).into_font().style(FontStyle::Bold).color(color).pos(pos)
    };
    root.draw(&Text::new(
        "ipcd bench: kernel TCP, a Unix socket and ipcd on one machine",
        (12, 18),
        bold(20, &BLACK, left),
    ))?;
    let quick = if run.quick { " · quick run (fewer, shorter runs)" } else { "" };
    let sub = format!("{} · {} · {}{quick}", run.date, run.machine, run.build);
    root.draw(&Text::new(sub, (12, 42), text(13, &RGBColor(60, 60, 60), left)))?;
    let mut x = 12;
    for (name, color) in NAMES.iter().zip(COLORS) {
        root.draw(&Rectangle::new([(x, 62), (x + 14, 76)], color.filled()))?;
        root.draw(&Text::new(*name, (x + 20, 69), text(13, &BLACK, left)))?;
        x += 40 + 8 * name.len() as i32;
    }
    let note = "medians; each group on its own scale; × = how many times ipcd beats kernel TCP";
    root.draw(&Text::new(note, (x + 10, 69), text(12, &RGBColor(90, 90, 90), left)))?;
    for (g, row) in groups.iter().enumerate() {
        let y0 = TOP + GROUP * g as i32;
        if g % 2 == 1 {
            root.draw(&Rectangle::new(
                [(0, y0 - 4), (WIDTH as i32, y0 + GROUP - 8)],
                RGBColor(246, 246, 246).filled(),
            ))?;
        }
        let mid = y0 + (3 * (BAR + GAP)) / 2 - 2;
        root.draw(&Text::new(row.workload.clone(), (12, mid - 8), text(14, &BLACK, left)))?;
        let better = if row.higher_better { "higher is better" } else { "lower is better" };
        let what = format!("{} ({}), {better}", row.metric, row.unit);
        root.draw(&Text::new(what, (12, mid + 10), text(12, &RGBColor(90, 90, 90), left)))?;
        let max = row.values.iter().flatten().copied().fold(0.0f64, f64::max);
        for (k, v) in row.values.iter().enumerate() {
            let y = y0 + k as i32 * (BAR + GAP);
            let Some(v) = v else {
                root.draw(&Text::new("not run", (LABEL_W, y + BAR / 2), text(12, &RGBColor(120, 120, 120), left)))?;
                continue;
            };
            let w = if max > 0.0 { ((v / max) * BARS_W as f64).round() as i32 } else { 0 };
            root.draw(&Rectangle::new([(LABEL_W, y), (LABEL_W + w.max(1), y + BAR)], COLORS[k].filled()))?;
            let label = format!("{} {}", super::fmt(Some(*v)), row.unit);
            root.draw(&Text::new(label, (LABEL_W + w.max(1) + 6, y + BAR / 2), text(12, &BLACK, left)))?;
        }
        if let Some(r) = row.ratio() {
            let color = if r >= 1.0 { RGBColor(20, 90, 170) } else { RGBColor(190, 40, 40) };
            let ratio = if r >= 10.0 { format!("{r:.0}×") } else { format!("{r:.1}×") };
            root.draw(&Text::new(ratio, (WIDTH as i32 - 16, mid), bold(22, &color, right)))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(workload: &str, metric: &'static str, unit: &'static str, values: [f64; 3]) -> Row {
        Row { workload: workload.into(), metric, unit, higher_better: true, values: values.map(Some) }
    }

    #[test]
    fn one_group_per_thing_measured() {
        let rows = [
            row("round trip 8 B", "p50", "µs", [30.0, 10.0, 0.5]),
            row("round trip 8 B", "p99", "µs", [60.0, 20.0, 1.0]),
            row("round trip 8 B", "p99.9", "µs", [900.0, 20.0, 1.0]),
            row("stream 8 B writes", "messages/s", "M/s", [1.0, 2.0, 40.0]),
            row("stream 8 B writes", "throughput", "GB/s", [0.008, 0.016, 0.32]),
            row("stream 1048576 B writes", "messages/s", "M/s", [0.001, 0.002, 0.008]),
            row("stream 1048576 B writes", "throughput", "GB/s", [1.0, 2.0, 8.0]),
        ];
        let g: Vec<(&str, &str)> = groups(&rows).iter().map(|r| (r.workload.as_str(), r.metric)).collect();
        assert_eq!(
            g,
            [
                ("round trip 8 B", "p50"),
                ("round trip 8 B", "p99"),
                ("stream 8 B writes", "messages/s"),
                ("stream 1048576 B writes", "throughput")
            ]
        );
    }
}
