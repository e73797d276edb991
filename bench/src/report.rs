//! Medians over repeated runs, the targets of issue 7 checked against them, and the report:
//! `docs/benchmarks.json`, the generated part of `docs/benchmarks.md`, and the
//! latency-versus-throughput chart (SVG, written by hand).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::scenarios::{self, Percentiles, Run, Step};

/// The figures of one (scenario, target, rate), medians over the runs that measured it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub target: String,
    pub rate: f64,
    /// How many runs measured this step (a saturated sweep stops early).
    pub runs: usize,
    pub achieved: f64,
    pub sent: f64,
    pub errors: f64,
    pub latency_ms: Percentiles,
    /// Target − baseline, per run, then the median.
    pub overhead_ms: Option<Percentiles>,
    pub first_token_ms: Option<Percentiles>,
    pub first_token_overhead_ms: Option<Percentiles>,
    pub token_gap_ms: Option<Percentiles>,
    pub token_gap_overhead_ms: Option<Percentiles>,
    pub cpu_percent: BTreeMap<String, f64>,
    pub peak_rss_mib: BTreeMap<String, f64>,
    /// The machine's own stalls during the step (median count and longest; absent when the
    /// stall probe did not run), and the overhead of the requests none of them touched.
    #[serde(default)]
    pub machine_stalls: Option<f64>,
    #[serde(default)]
    pub machine_longest_ms: Option<f64>,
    #[serde(default)]
    pub untouched_overhead_ms: Option<Percentiles>,
    /// Attempts at this step (over all runs, baseline and target) measured again because the
    /// machine stalled, and the overhead had the first attempts counted instead.
    #[serde(default)]
    pub set_aside: usize,
    #[serde(default)]
    pub first_attempt_overhead_ms: Option<Percentiles>,
}

impl Row {
    pub fn saturated(&self) -> bool {
        self.achieved < 0.95 * self.rate || self.errors * 100.0 > self.sent
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub met: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub rows: Vec<Row>,
    pub idle_rss_mib: BTreeMap<String, f64>,
    pub streams: Option<scenarios::StreamsMemory>,
    pub verdicts: Vec<Verdict>,
}

pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The median of the values present, if any is.
fn median_of(values: impl Iterator<Item = Option<f64>>) -> Option<f64> {
    let values: Vec<f64> = values.flatten().collect();
    (!values.is_empty()).then(|| median(values))
}

fn median_percentiles(all: &[Percentiles]) -> Option<Percentiles> {
    (!all.is_empty()).then(|| Percentiles {
        p50: median(all.iter().map(|p| p.p50).collect()),
        p90: median(all.iter().map(|p| p.p90).collect()),
        p99: median(all.iter().map(|p| p.p99).collect()),
        p999: median(all.iter().map(|p| p.p999).collect()),
    })
}

fn minus(a: &Percentiles, b: &Percentiles) -> Percentiles {
    Percentiles {
        p50: a.p50 - b.p50,
        p90: a.p90 - b.p90,
        p99: a.p99 - b.p99,
        p999: a.p999 - b.p999,
    }
}

fn median_map(maps: Vec<&BTreeMap<String, f64>>) -> BTreeMap<String, f64> {
    let mut names: Vec<&String> = maps.iter().flat_map(|m| m.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|name| {
            let values = maps.iter().filter_map(|m| m.get(name).copied()).collect();
            (name.clone(), median(values))
        })
        .collect()
}

fn is_baseline(target: &str) -> bool {
    matches!(target, "upstream" | "redis")
}

/// The baseline step measured beside `step` in the same run.
fn baseline<'a>(run: &'a Run, step: &Step) -> Option<&'a Step> {
    run.steps
        .iter()
        .find(|s| s.scenario == step.scenario && s.rate == step.rate && is_baseline(&s.target))
}

pub fn summarise(runs: &[Run]) -> Summary {
    let mut keys: Vec<(String, String, f64)> = Vec::new();
    for step in runs.iter().flat_map(|r| &r.steps) {
        let key = (step.scenario.clone(), step.target.clone(), step.rate);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut rows = Vec::new();
    for (scenario, target, rate) in keys {
        let found: Vec<(&Run, &Step)> = runs
            .iter()
            .flat_map(|run| run.steps.iter().map(move |s| (run, s)))
            .filter(|(_, s)| s.scenario == scenario && s.target == target && s.rate == rate)
            .collect();
        let steps: Vec<&Step> = found.iter().map(|(_, s)| *s).collect();
        let differences = |pick: &dyn Fn(&Step) -> Option<Percentiles>| -> Option<Percentiles> {
            if is_baseline(&target) {
                return None;
            }
            let diffs: Vec<Percentiles> = found
                .iter()
                .filter_map(|(run, step)| {
                    let base = baseline(run, step)?;
                    Some(minus(&pick(step)?, &pick(base)?))
                })
                .collect();
            median_percentiles(&diffs)
        };
        rows.push(Row {
            runs: steps.len(),
            achieved: median(steps.iter().map(|s| s.achieved).collect()),
            sent: median(steps.iter().map(|s| s.sent as f64).collect()),
            errors: median(steps.iter().map(|s| s.errors as f64).collect()),
            latency_ms: median_percentiles(&steps.iter().map(|s| s.latency_ms).collect::<Vec<_>>())
                .unwrap_or_default(),
            overhead_ms: differences(&|s| Some(s.latency_ms)),
            first_token_ms: median_percentiles(
                &steps
                    .iter()
                    .filter_map(|s| s.first_token_ms)
                    .collect::<Vec<_>>(),
            ),
            first_token_overhead_ms: differences(&|s| s.first_token_ms),
            token_gap_ms: median_percentiles(
                &steps
                    .iter()
                    .filter_map(|s| s.token_gap_ms)
                    .collect::<Vec<_>>(),
            ),
            token_gap_overhead_ms: differences(&|s| s.token_gap_ms),
            cpu_percent: median_map(steps.iter().map(|s| &s.usage.cpu_percent).collect()),
            peak_rss_mib: median_map(steps.iter().map(|s| &s.usage.peak_rss_mib).collect()),
            machine_stalls: median_of(
                steps
                    .iter()
                    .map(|s| Some(s.machine.as_ref()?.stalls as f64)),
            ),
            machine_longest_ms: median_of(
                steps.iter().map(|s| Some(s.machine.as_ref()?.longest_ms)),
            ),
            untouched_overhead_ms: differences(&|s| s.machine.as_ref()?.clear_latency_ms),
            set_aside: found
                .iter()
                .map(|(run, step)| {
                    let base = match is_baseline(&step.target) {
                        true => None,
                        false => baseline(run, step),
                    };
                    step.set_aside.len() + base.map_or(0, |b| b.set_aside.len())
                })
                .sum(),
            first_attempt_overhead_ms: differences(&|s| {
                Some(s.set_aside.first().map_or(s.latency_ms, |a| a.latency_ms))
            }),
            scenario,
            target,
            rate,
        });
    }
    let streams: Vec<&scenarios::StreamsMemory> =
        runs.iter().filter_map(|r| r.streams.as_ref()).collect();
    let streams = (!streams.is_empty()).then(|| scenarios::StreamsMemory {
        requested: streams[0].requested,
        open: median(streams.iter().map(|s| s.open as f64).collect()) as u64,
        failed: median(streams.iter().map(|s| s.failed as f64).collect()) as u64,
        first_error: streams.iter().find_map(|s| s.first_error.clone()),
        rss_mib: median_map(streams.iter().map(|s| &s.rss_mib).collect()),
    });
    let mut summary = Summary {
        idle_rss_mib: median_map(runs.iter().map(|r| &r.idle_rss_mib).collect()),
        streams,
        rows,
        verdicts: Vec::new(),
    };
    summary.verdicts = verdicts(&summary);
    summary
}

fn row<'a>(summary: &'a Summary, scenario: &str, target: &str, rate: f64) -> Option<&'a Row> {
    summary
        .rows
        .iter()
        .find(|r| r.scenario == scenario && r.target == target && r.rate == rate)
}

fn overhead_target(
    summary: &Summary,
    scenario: &str,
    rate: f64,
    bound_ms: f64,
    name: &str,
) -> Verdict {
    let target = format!("{name}: overhead p99 below {bound_ms} ms at {rate} requests/s");
    match row(summary, scenario, "gateway", rate) {
        Some(r) if r.saturated() => Verdict {
            target,
            measured: format!(
                "saturated at {rate}/s: {:.0}/s achieved, {} errors, p99 {:.2} ms",
                r.achieved, r.errors, r.latency_ms.p99
            ),
            met: false,
        },
        Some(r) => {
            let p99 = r.overhead_ms.map(|o| o.p99).unwrap_or(f64::NAN);
            let met = p99 < bound_ms;
            let measured = if met {
                format!("{p99:.3} ms (met, {:.3} ms to spare)", bound_ms - p99)
            } else {
                format!(
                    "{p99:.3} ms (missed by {:.3} ms, {:.1}×)",
                    p99 - bound_ms,
                    p99 / bound_ms
                )
            };
            let mut machine = match (r.machine_stalls, r.untouched_overhead_ms) {
                (Some(stalls), Some(untouched)) => format!(
                    "; the machine stalled {stalls:.0} times in the step (median), and the requests no stall touched had overhead p99 {:.3} ms",
                    untouched.p99
                ),
                _ => String::new(),
            };
            if let (n @ 1.., Some(first)) = (r.set_aside, r.first_attempt_overhead_ms) {
                let _ = write!(
                    machine,
                    "; {n} attempt(s) at this step or its baseline set aside because the machine stalled ≥ {} ms (with the first attempts instead: {:.3} ms)",
                    scenarios::REPEAT_AFTER_STALL_MS,
                    first.p99
                );
            }
            Verdict {
                target,
                measured: measured + &machine,
                met,
            }
        }
        None => Verdict {
            target,
            measured: "not measured (the sweep did not reach this rate)".into(),
            met: false,
        },
    }
}

/// The highest unsaturated throughput whose p99 stays at or below `p99_ms`.
fn sustained<'a>(
    summary: &'a Summary,
    scenario: &str,
    target: &str,
    p99_ms: f64,
) -> Option<&'a Row> {
    summary
        .rows
        .iter()
        .filter(|r| {
            r.scenario == scenario
                && r.target == target
                && !r.saturated()
                && r.latency_ms.p99 <= p99_ms
        })
        .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
}

fn verdicts(summary: &Summary) -> Vec<Verdict> {
    let mut verdicts = vec![
        overhead_target(
            summary,
            scenarios::OPENAI,
            2000.0,
            1.0,
            "Scenario 2 (OpenAI-compatible, stateless)",
        ),
        overhead_target(
            summary,
            scenarios::SEND_MESSAGE,
            1000.0,
            2.0,
            "Scenario 1 (send-message, 10-turn history)",
        ),
        overhead_target(
            summary,
            scenarios::OPENAI_COMBINED,
            2000.0,
            1.0,
            "Scenario 2, combined replica",
        ),
        overhead_target(
            summary,
            scenarios::SEND_MESSAGE_COMBINED,
            1000.0,
            2.0,
            "Scenario 1, combined replica",
        ),
    ];
    let target = "Gateway saturation throughput at least 10× LiteLLM's at equal p99".to_string();
    let litellm_best = summary
        .rows
        .iter()
        .filter(|r| r.target == "litellm" && !r.saturated())
        .max_by(|a, b| a.achieved.total_cmp(&b.achieved));
    verdicts.push(match litellm_best {
        Some(l) => {
            let gateway = sustained(summary, scenarios::OPENAI, "gateway", l.latency_ms.p99);
            let (rate, ratio) = gateway.map_or((0.0, 0.0), |g| (g.achieved, g.achieved / l.achieved));
            let top = summary
                .rows
                .iter()
                .filter(|r| r.scenario == scenarios::OPENAI && r.target == "gateway" && !r.saturated())
                .map(|r| r.achieved)
                .fold(0.0, f64::max);
            Verdict {
                target,
                measured: format!(
                    "LiteLLM {:.0}/s at p99 {:.2} ms; gateway {rate:.0}/s at p99 ≤ {:.2} ms ({ratio:.1}×; the sweep's top unsaturated gateway rate is {top:.0}/s{})",
                    l.achieved,
                    l.latency_ms.p99,
                    l.latency_ms.p99,
                    if ratio >= 10.0 { "" } else { ", so the ratio is bounded by the sweep, not only by the gateway" }
                ),
                met: ratio >= 10.0,
            }
        }
        None => Verdict {
            target,
            measured: "not measured: LiteLLM did not run or saturated at the lowest rate".into(),
            met: false,
        },
    });
    verdicts
}

// ---------------------------------------------------------------- Markdown

fn ms(v: f64) -> String {
    if v.abs() < 10.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.1}")
    }
}

fn triple(p: Option<Percentiles>) -> String {
    p.map_or("".into(), |p| {
        format!("{} / {} / {}", ms(p.p50), ms(p.p99), ms(p.p999))
    })
}

fn usage(map: &BTreeMap<String, f64>, names: &[&str]) -> String {
    names
        .iter()
        .filter_map(|n| map.get(*n).map(|v| format!("{v:.0}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The generated part of `docs/benchmarks.md`.
pub fn markdown(summary: &Summary, meta: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{meta}\n");
    let _ = writeln!(
        out,
        "### Targets\n\n| target | measured (median of runs) | |\n|---|---|---|"
    );
    for v in &summary.verdicts {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            if v.met { "met" } else { "**missed**" }
        );
    }
    let procs = [
        "loadgen", "upstream", "redis", "core", "edge", "replica", "litellm",
    ];
    let scenarios_in_order = [
        (
            scenarios::SEND_MESSAGE,
            "Scenario 1: send-message on a session with a 10-turn history (REST edge → core → Redis → upstream; limits on)",
        ),
        (
            scenarios::SEND_MESSAGE_COMBINED,
            "Scenario 1c: send-message as scenario 1, through a combined replica (REST and core in one process)",
        ),
        (
            scenarios::OPENAI,
            "Scenario 2: OpenAI-compatible `/v1/chat/completions`, stateless (REST edge → core → upstream; limits on)",
        ),
        (
            scenarios::OPENAI_COMBINED,
            "Scenario 2c: OpenAI-compatible as scenario 2, through a combined replica (REST and core in one process)",
        ),
        (
            scenarios::GRPC,
            "Scenario 3: gRPC `CompletionService.Complete` straight to the core",
        ),
        (
            scenarios::STREAMING,
            "Scenario 4: streaming (`stream: true` on `/v1/chat/completions`; 20 tokens, 1 ms apart)",
        ),
        (
            scenarios::ADMISSION,
            "Scenario 5: rate-limit admission alone (the limiter's Redis script; baseline: a Redis PING)",
        ),
        (
            scenarios::LITELLM,
            "LiteLLM proxy in front of the same fake upstream (same request as scenario 2)",
        ),
    ];
    for (scenario, title) in scenarios_in_order {
        let rows: Vec<&Row> = summary
            .rows
            .iter()
            .filter(|r| r.scenario == scenario)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {title}\n");
        let present: Vec<&str> = procs
            .iter()
            .copied()
            .filter(|p| rows.iter().any(|r| r.cpu_percent.contains_key(*p)))
            .collect();
        let names = present.join(" / ");
        if scenario == scenarios::STREAMING {
            let _ = writeln!(
                out,
                "| rate/s | target | achieved/s | first token p50 / p99 / p99.9 ms | added | inter-token gap p50 / p99 / p99.9 ms | added | whole stream p99 ms | errors |\n|---:|---|---:|---|---|---|---|---:|---:|"
            );
            for r in rows {
                let _ = writeln!(
                    out,
                    "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
                    r.rate,
                    r.target,
                    r.achieved,
                    triple(r.first_token_ms),
                    triple(r.first_token_overhead_ms),
                    triple(r.token_gap_ms),
                    triple(r.token_gap_overhead_ms),
                    ms(r.latency_ms.p99),
                    r.errors
                );
            }
            continue;
        }
        let _ = writeln!(
            out,
            "| rate/s | target | achieved/s | p50 ms | p90 ms | p99 ms | p99.9 ms | overhead p50 / p99 / p99.9 ms | errors | CPU % ({names}) | peak RSS MiB ({names}) | machine stalls: count, longest ms | overhead p99 of requests no stall touched, ms |\n|---:|---|---:|---:|---:|---:|---:|---|---:|---|---|---|---:|"
        );
        for r in rows {
            let _ = writeln!(
                out,
                "| {} | {} | {:.0}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.rate,
                r.target,
                r.achieved,
                if r.saturated() { " (saturated)" } else { "" },
                ms(r.latency_ms.p50),
                ms(r.latency_ms.p90),
                ms(r.latency_ms.p99),
                ms(r.latency_ms.p999),
                triple(r.overhead_ms),
                r.errors,
                usage(&r.cpu_percent, &present),
                usage(&r.peak_rss_mib, &present),
                match (r.machine_stalls, r.machine_longest_ms) {
                    (Some(n), Some(longest)) if r.set_aside > 0 =>
                        format!("{n:.0}, {longest:.1} ({} set aside)", r.set_aside),
                    (Some(n), Some(longest)) => format!("{n:.0}, {longest:.1}"),
                    _ => String::new(),
                },
                r.untouched_overhead_ms.map_or(String::new(), |o| ms(o.p99)),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n### Memory\n\n| process | idle RSS MiB |{} \n|---|---:|{}",
        summary.streams.as_ref().map_or(String::new(), |s| format!(
            " RSS MiB with {} open streams ({} open, {} failed) |",
            s.requested, s.open, s.failed
        )),
        if summary.streams.is_some() {
            "---:|"
        } else {
            ""
        }
    );
    let mut names: Vec<&String> = summary.idle_rss_mib.keys().collect();
    if let Some(s) = &summary.streams {
        names.extend(s.rss_mib.keys());
    }
    names.sort();
    names.dedup();
    for name in names {
        let idle = summary
            .idle_rss_mib
            .get(name)
            .map_or("".into(), |v| format!("{v:.1}"));
        let open = summary
            .streams
            .as_ref()
            .map(|s| {
                s.rss_mib
                    .get(name)
                    .map_or("| ".into(), |v| format!("| {v:.1} "))
            })
            .unwrap_or_default();
        let _ = writeln!(out, "| {name} | {idle} {open}|");
    }
    if let Some(error) = summary
        .streams
        .as_ref()
        .and_then(|s| s.first_error.as_ref())
    {
        let _ = writeln!(
            out,
            "\nFirst stream failure: `{}`",
            error
                .replace('`', "'")
                .chars()
                .take(300)
                .collect::<String>()
        );
    }
    out
}

/// Replaces what lies between the markers in `document` (or appends the markers).
pub fn splice(document: &str, generated: &str) -> String {
    const BEGIN: &str = "<!-- benchmarks:begin (generated by scripts/bench.sh; do not edit) -->";
    const END: &str = "<!-- benchmarks:end -->";
    match (document.find(BEGIN), document.find(END)) {
        (Some(b), Some(e)) if b < e => {
            format!("{}{BEGIN}\n{generated}\n{}", &document[..b], &document[e..])
        }
        _ => format!("{document}\n{BEGIN}\n{generated}\n{END}\n"),
    }
}

// ---------------------------------------------------------------- SVG

/// p99 latency (log scale) against achieved throughput, one line per target.
pub fn chart(summary: &Summary) -> String {
    let series: Vec<(&str, &str, &str, &str)> = vec![
        (
            scenarios::OPENAI,
            "upstream",
            "fake upstream alone",
            "#888888",
        ),
        (
            scenarios::OPENAI,
            "gateway",
            "gateway: OpenAI-compatible (s2)",
            "#1f77b4",
        ),
        (
            scenarios::OPENAI_COMBINED,
            "gateway",
            "combined replica (s2c)",
            "#17becf",
        ),
        (
            scenarios::SEND_MESSAGE,
            "gateway",
            "gateway: send-message, 10 turns (s1)",
            "#2ca02c",
        ),
        (
            scenarios::GRPC,
            "gateway",
            "gateway: gRPC to core (s3)",
            "#9467bd",
        ),
        (scenarios::LITELLM, "litellm", "LiteLLM proxy", "#d62728"),
    ];
    let points = |scenario: &str, target: &str| -> Vec<(f64, f64)> {
        summary
            .rows
            .iter()
            .filter(|r| r.scenario == scenario && r.target == target && r.latency_ms.p99 > 0.0)
            .map(|r| (r.achieved, r.latency_ms.p99))
            .collect()
    };
    let all: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(s, t, _, _)| points(s, t))
        .collect();
    let x_max = all.iter().map(|p| p.0).fold(100.0, f64::max) * 1.05;
    let y_max = all.iter().map(|p| p.1).fold(1.0, f64::max);
    let (y_lo, y_hi) = (-1.0_f64, y_max.log10().ceil().max(1.0));
    let (w, h, left, right, top, bottom) = (860.0, 500.0, 70.0, 250.0, 40.0, 60.0);
    let plot_w = w - left - right;
    let plot_h = h - top - bottom;
    let x = |v: f64| left + v / x_max * plot_w;
    let y = |v: f64| top + plot_h - (v.max(0.1).log10() - y_lo) / (y_hi - y_lo) * plot_h;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">p99 latency vs achieved throughput (open loop, loopback, 2 cores; medians of runs)</text>"#,
        (left + plot_w / 2.0)
    );
    let mut decade = y_lo as i32;
    while decade as f64 <= y_hi {
        let v = 10f64.powi(decade);
        let _ = writeln!(
            svg,
            r##"<line x1="{left}" x2="{}" y1="{:.1}" y2="{:.1}" stroke="#dddddd"/><text x="{}" y="{:.1}" text-anchor="end">{v} ms</text>"##,
            left + plot_w,
            y(v),
            y(v),
            left - 6.0,
            y(v) + 4.0
        );
        decade += 1;
    }
    let step = [100.0, 250.0, 500.0, 1000.0, 2000.0, 2500.0, 5000.0]
        .into_iter()
        .find(|s| x_max / s <= 8.0)
        .unwrap_or(10000.0);
    let mut tick = 0.0;
    while tick <= x_max {
        let _ = writeln!(
            svg,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{top}" y2="{}" stroke="#eeeeee"/><text x="{:.1}" y="{}" text-anchor="middle">{tick}</text>"##,
            x(tick),
            x(tick),
            top + plot_h,
            x(tick),
            top + plot_h + 18.0
        );
        tick += step;
    }
    let _ = writeln!(
        svg,
        r#"<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/><text x="{}" y="{}" text-anchor="middle">achieved throughput (requests/s)</text><text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">p99 latency (ms, log scale)</text>"#,
        left + plot_w / 2.0,
        h - 18.0,
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    for (i, (scenario, target, label, colour)) in series.iter().enumerate() {
        let pts = points(scenario, target);
        if pts.is_empty() {
            continue;
        }
        let path: Vec<String> = pts
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            path.join(" ")
        );
        for (a, b) in &pts {
            let _ = writeln!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                x(*a),
                y(*b)
            );
        }
        let ly = top + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            svg,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}">{label}</text>"#,
            left + plot_w + 12.0,
            left + plot_w + 32.0,
            left + plot_w + 38.0,
            ly + 4.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}
