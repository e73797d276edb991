//! Charts drawn on the server as inline SVG (no chart library, no inline style: the CSP allows
//! neither). The Status page's per-minute sparklines, which `dashboard.js` redraws; and the
//! Usage page's charts with labelled axes, whose every bar names its figures in a `<title>`
//! (shown on hover) and whose figures the page also lists in a table.

use maud::{Markup, html};

/// A per-minute bar chart as SVG; `dashboard.js` redraws it from `/dashboard/api/traffic`.
pub(crate) fn chart(id: &str, title: &str, values: &[u64]) -> Markup {
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    let total: u64 = values.iter().sum();
    let width = 600;
    let height = 120;
    let step = width as f64 / values.len().max(1) as f64;
    html! {
        figure.chart {
            figcaption {
                (title) " "
                span.chart-total data-total-for=(id) { "(" (total) " in the last hour, peak " (max) "/min)" }
            }
            svg #(id) viewBox=(format!("0 0 {width} {height}")) preserveAspectRatio="none"
                role="img" aria-label=(format!("{title}: {total} in the last hour")) {
                @for (i, value) in values.iter().enumerate() {
                    @let h = (*value as f64 / max as f64) * (height as f64 - 4.0);
                    rect x=(format!("{:.1}", i as f64 * step)) y=(format!("{:.1}", height as f64 - h))
                        width=(format!("{:.1}", (step - 1.0).max(1.0))) height=(format!("{h:.1}")) {
                        title { (value) }
                    }
                }
            }
        }
    }
}

/// How a chart's values read: the axes' titles and the unit of every figure.
pub(crate) struct Axes {
    /// Under the x axis ("Date (UTC)").
    pub(crate) x: &'static str,
    /// Above the y axis ("US dollars").
    pub(crate) y: &'static str,
    /// A value as people read it (`$1.25`, `12,345`).
    pub(crate) value: fn(u64) -> String,
    /// A tick label, short (`$1.25`, `12k`).
    pub(crate) tick: fn(u64) -> String,
    /// The step between ticks when every value is 0 (a cent, a token).
    pub(crate) empty_step: u64,
}

/// One column: its tick label ("Dec 7"), its full name for the hover text ("2026-12-07"),
/// and one value per series, stacked from the axis up.
pub(crate) struct Column {
    pub(crate) tick: String,
    pub(crate) name: String,
    pub(crate) values: Vec<u64>,
}

// The drawing's own units; the SVG scales to its box, keeping its proportions, so text stays
// upright and readable at phone and desktop widths.
const WIDTH: f64 = 440.0;
const HEIGHT: f64 = 250.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 10.0;
const TOP: f64 = 26.0;
const BOTTOM: f64 = 46.0;
const TICKS: u64 = 4;

/// A round step (1, 2, 2.5 or 5 × 10ⁿ) so that `TICKS` steps reach `max`.
fn tick_step(max: u64, empty_step: u64) -> u64 {
    if max == 0 {
        return empty_step.max(1);
    }
    let raw = max.div_ceil(TICKS);
    let mut magnitude = 1u64;
    while magnitude.saturating_mul(10) <= raw {
        magnitude *= 10;
    }
    [1, 2, 5, 10]
        .iter()
        .flat_map(|m| {
            // 2.5 × 10ⁿ as well, where it is a whole number.
            let quarter = (magnitude >= 4 && *m == 2).then_some(magnitude * 5 / 2);
            [Some(magnitude.saturating_mul(*m)), quarter]
        })
        .flatten()
        .filter(|step| *step >= raw)
        .min()
        .unwrap_or(raw)
}

/// The y axis: horizontal grid lines with their labels, and the axis title above.
fn y_axis(axes: &Axes, step: u64, top: u64, plot_height: f64) -> Markup {
    html! {
        text.axis-title x="4" y=(TOP - 12.0) { (axes.y) }
        @for i in 0..=(top / step) {
            @let y = TOP + plot_height - (i * step) as f64 / top as f64 * plot_height;
            line class=(if i == 0 { "axis" } else { "grid" }) x1=(LEFT) x2=(WIDTH - RIGHT) y1=(format!("{y:.1}")) y2=(format!("{y:.1}")) {}
            text.tick x=(LEFT - 6.0) y=(format!("{:.1}", y + 4.0)) text-anchor="end" { ((axes.tick)(i * step)) }
        }
    }
}

/// Columns over time (days or weeks), stacked by `series`, with labelled axes and a legend.
pub(crate) fn column_chart(
    id: &str,
    caption: &str,
    axes: &Axes,
    series: &[&str],
    columns: &[Column],
) -> Markup {
    let total = |c: &Column| c.values.iter().sum::<u64>();
    let max = columns.iter().map(total).max().unwrap_or(0);
    let step = tick_step(max, axes.empty_step);
    let top = max.div_ceil(step).max(1) * step;
    let plot_width = WIDTH - LEFT - RIGHT;
    let plot_height = HEIGHT - TOP - BOTTOM;
    let slot = plot_width / columns.len().max(1) as f64;
    let bar = (slot * 0.72).clamp(1.0, 48.0);
    // At most one tick label per 64 units, so dates never overlap.
    let every = columns.len().div_ceil((plot_width / 64.0) as usize).max(1);
    let sum: u64 = columns.iter().map(total).sum();
    html! {
        figure.chart.axes {
            figcaption {
                (caption) " "
                span.chart-total { "(" ((axes.value)(sum)) " in all)" }
                @if series.len() > 1 {
                    span.legend {
                        @for (i, name) in series.iter().enumerate() {
                            span class=(format!("swatch s{i}")) {} (name)
                        }
                    }
                }
            }
            svg #(id) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img"
                aria-label=(format!("{caption}: {} in all; the table below lists every figure", (axes.value)(sum))) {
                (y_axis(axes, step, top, plot_height))
                @for (i, column) in columns.iter().enumerate() {
                    @let x = LEFT + slot * i as f64 + (slot - bar) / 2.0;
                    @let hover = hover_text(&column.name, series, &column.values, axes.value);
                    g.column {
                        @for (s, base, value) in stacked(&column.values) {
                            @let y0 = TOP + plot_height - base as f64 / top as f64 * plot_height;
                            @let h = value as f64 / top as f64 * plot_height;
                            rect class=(format!("s{s}")) x=(format!("{x:.1}")) y=(format!("{:.1}", y0 - h))
                                width=(format!("{bar:.1}")) height=(format!("{h:.1}")) { title { (hover) } }
                        }
                        // The whole column answers hover, even where its value is 0.
                        rect.hit x=(format!("{:.1}", LEFT + slot * i as f64)) y=(TOP)
                            width=(format!("{slot:.1}")) height=(format!("{plot_height:.1}")) { title { (hover) } }
                    }
                    @if i % every == 0 {
                        text.tick x=(format!("{:.1}", x + bar / 2.0)) y=(format!("{:.1}", TOP + plot_height + 18.0)) text-anchor="middle" { (column.tick) }
                    }
                }
                text.axis-title x=(format!("{:.1}", LEFT + plot_width / 2.0)) y=(HEIGHT - 6.0) text-anchor="middle" { (axes.x) }
            }
        }
    }
}

/// Each non-zero value of a column with its series and the sum below it: `(series, base, value)`.
fn stacked(values: &[u64]) -> Vec<(usize, u64, u64)> {
    let mut base = 0;
    let mut out = Vec::new();
    for (series, value) in values.iter().enumerate() {
        if *value > 0 {
            out.push((series, base, *value));
        }
        base += value;
    }
    out
}

fn hover_text(name: &str, series: &[&str], values: &[u64], value: fn(u64) -> String) -> String {
    if let [only] = values {
        return format!("{name}: {}", value(*only));
    }
    let parts: Vec<String> = series
        .iter()
        .zip(values)
        .map(|(s, v)| format!("{s} {}", value(*v)))
        .collect();
    format!(
        "{name}: {} ({})",
        value(values.iter().sum()),
        parts.join(", ")
    )
}

/// Horizontal bars, one per named row (a model, a key), longest first, with the value at the
/// end of each bar and the axis below.
pub(crate) fn bar_chart(id: &str, caption: &str, axes: &Axes, rows: &[(String, u64)]) -> Markup {
    const LABEL: f64 = 150.0;
    const ROW: f64 = 28.0;
    const VALUE: f64 = 74.0;
    let max = rows.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let step = tick_step(max, axes.empty_step);
    let top = max.div_ceil(step).max(1) * step;
    let plot_width = WIDTH - LABEL - VALUE;
    let plot_height = ROW * rows.len().max(1) as f64;
    let height = 8.0 + plot_height + BOTTOM;
    let sum: u64 = rows.iter().map(|(_, v)| *v).sum();
    let short = |name: &str| {
        if name.chars().count() > 20 {
            format!("{}…", name.chars().take(19).collect::<String>())
        } else {
            name.to_string()
        }
    };
    html! {
        figure.chart.axes.bars {
            figcaption { (caption) " " span.chart-total { "(" ((axes.value)(sum)) " in all)" } }
            svg #(id) viewBox=(format!("0 0 {WIDTH} {height:.0}")) role="img"
                aria-label=(format!("{caption}: {} in all; the table below lists every figure", (axes.value)(sum))) {
                @for i in 0..=(top / step) {
                    @let x = LABEL + (i * step) as f64 / top as f64 * plot_width;
                    line class=(if i == 0 { "axis" } else { "grid" }) x1=(format!("{x:.1}")) x2=(format!("{x:.1}")) y1="8" y2=(format!("{:.1}", 8.0 + plot_height)) {}
                    // Every other tick, so labels never run into each other.
                    @if i % 2 == 0 {
                        text.tick x=(format!("{x:.1}")) y=(format!("{:.1}", 8.0 + plot_height + 18.0)) text-anchor="middle" { ((axes.tick)(i * step)) }
                    }
                }
                @for (i, (name, value)) in rows.iter().enumerate() {
                    @let y = 8.0 + ROW * i as f64;
                    @let w = *value as f64 / top as f64 * plot_width;
                    @let hover = format!("{name}: {}", (axes.value)(*value));
                    g.row {
                        text.tick x=(LABEL - 6.0) y=(format!("{:.1}", y + ROW / 2.0 + 5.0)) text-anchor="end" { (short(name)) }
                        rect.s0 x=(LABEL) y=(format!("{:.1}", y + 5.0)) width=(format!("{:.1}", w.max(1.0))) height=(format!("{:.1}", ROW - 10.0)) { title { (hover) } }
                        text.value x=(format!("{:.1}", LABEL + w + 4.0)) y=(format!("{:.1}", y + ROW / 2.0 + 5.0)) { ((axes.value)(*value)) }
                        rect.hit x="0" y=(format!("{y:.1}")) width=(WIDTH) height=(ROW) { title { (hover) } }
                    }
                }
                text.axis-title x=(format!("{:.1}", LABEL + plot_width / 2.0)) y=(format!("{:.1}", height - 6.0)) text-anchor="middle" { (axes.x) }
            }
        }
    }
}

/// A token count, short (`950`, `12k`, `1.5M`).
pub(crate) fn compact(n: u64) -> String {
    let scaled = |unit: u64, suffix: &str| {
        if n.is_multiple_of(unit) || n >= unit * 10 {
            format!("{}{suffix}", n / unit)
        } else {
            format!("{}.{}{suffix}", n / unit, n % unit * 10 / unit)
        }
    };
    match n {
        n if n >= 1_000_000_000 => scaled(1_000_000_000, "G"),
        n if n >= 1_000_000 => scaled(1_000_000, "M"),
        n if n >= 1_000 => scaled(1_000, "k"),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_reach_the_largest_value() {
        assert_eq!(tick_step(0, 10_000), 10_000);
        assert_eq!(tick_step(7, 1), 2);
        assert_eq!(tick_step(100, 1), 25);
        assert_eq!(tick_step(1_250_000, 1), 500_000);
        assert_eq!(tick_step(9_000, 1), 2_500);
        for max in [1, 3, 17, 999, 12_345, 7_654_321] {
            assert!(tick_step(max, 1) * TICKS >= max, "{max}");
        }
    }

    #[test]
    fn token_counts_read_short() {
        assert_eq!(compact(950), "950");
        assert_eq!(compact(12_000), "12k");
        assert_eq!(compact(1_500), "1.5k");
        assert_eq!(compact(1_500_000), "1.5M");
    }
}
