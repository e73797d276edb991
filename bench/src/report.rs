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
    /// Every run's own figures (the medians above are taken over these).
    #[serde(default)]
    pub per_run: Vec<RunFigure>,
}

/// One run's figures of one (scenario, target, rate).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFigure {
    /// 1 for the first run.
    pub run: usize,
    pub achieved: f64,
    pub errors: u64,
    pub saturated: bool,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Target − that run's own baseline at the rate.
    pub overhead_p50_ms: Option<f64>,
    pub overhead_p99_ms: Option<f64>,
    /// Steps measured by oha: the status codes it got.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub status_codes: BTreeMap<String, u64>,
}

/// oha's closed-loop throughput of one (scenario, target), medians over the runs, and every run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedLoopRow {
    pub scenario: String,
    pub target: String,
    pub connections: usize,
    /// 2xx responses per second.
    pub ok_per_sec: f64,
    pub errors: f64,
    pub latency_ms: Percentiles,
    pub cpu_percent: BTreeMap<String, f64>,
    pub per_run: Vec<ClosedLoopFigure>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClosedLoopFigure {
    pub run: usize,
    pub ok_per_sec: f64,
    pub ok: u64,
    pub errors: u64,
    pub latency_ms: Percentiles,
    pub status_codes: BTreeMap<String, u64>,
    pub machine_stalls: Option<u64>,
    pub machine_longest_ms: Option<f64>,
}

/// How fast this boot of the machine ran the same work: the fake upstream's CPU per request
/// (user + system from `/proc/<pid>/stat`, 10-ms ticks) over one run's steps against it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuReference {
    pub run: usize,
    /// Which steps: the open-loop baselines of scenario 2 (or, when scenario 2 did not run,
    /// of every non-streaming scenario against the fake upstream).
    pub basis: String,
    pub requests: u64,
    pub cpu_seconds: f64,
    pub us_per_request: Option<f64>,
    /// oha's closed-loop runs against the upstream alone (absent without oha).
    pub closed_loop_requests: u64,
    pub closed_loop_cpu_seconds: f64,
    pub closed_loop_us_per_request: Option<f64>,
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
    /// Runs summarised.
    #[serde(default)]
    pub runs: usize,
    pub rows: Vec<Row>,
    #[serde(default)]
    pub closed_loop: Vec<ClosedLoopRow>,
    #[serde(default)]
    pub cpu_reference: Vec<CpuReference>,
    #[serde(default)]
    pub oha_failures: Vec<String>,
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
    matches!(target, "upstream" | "redis" | scenarios::OHA_UPSTREAM)
}

/// Whether a step on `candidate` is the baseline of a step on `target`: oha's steps against
/// oha's own run on the fake upstream alone, so that each overhead is the difference of two
/// figures of one generator; ours against the fake upstream or Redis measured by ours.
fn is_baseline_of(target: &str, candidate: &str) -> bool {
    match target {
        scenarios::OHA => candidate == scenarios::OHA_UPSTREAM,
        _ => matches!(candidate, "upstream" | "redis"),
    }
}

/// The baseline step measured beside `step` in the same run (none for oha's steps in a JSON
/// written before oha had a baseline of its own).
fn baseline<'a>(run: &'a Run, step: &Step) -> Option<&'a Step> {
    run.steps.iter().find(|s| {
        s.scenario == step.scenario
            && s.rate == step.rate
            && is_baseline_of(&step.target, &s.target)
    })
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
        let found: Vec<(usize, &Run, &Step)> = runs
            .iter()
            .enumerate()
            .flat_map(|(i, run)| run.steps.iter().map(move |s| (i + 1, run, s)))
            .filter(|(_, _, s)| s.scenario == scenario && s.target == target && s.rate == rate)
            .collect();
        let steps: Vec<&Step> = found.iter().map(|(_, _, s)| *s).collect();
        let differences = |pick: &dyn Fn(&Step) -> Option<Percentiles>| -> Option<Percentiles> {
            if is_baseline(&target) {
                return None;
            }
            let diffs: Vec<Percentiles> = found
                .iter()
                .filter_map(|(_, run, step)| {
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
                .map(|(_, run, step)| {
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
            per_run: found
                .iter()
                .map(|(i, run, step)| {
                    let overhead = (!is_baseline(&target))
                        .then(|| baseline(run, step))
                        .flatten()
                        .map(|base| minus(&step.latency_ms, &base.latency_ms));
                    RunFigure {
                        run: *i,
                        achieved: step.achieved,
                        errors: step.errors,
                        saturated: step.saturated(),
                        latency_p50_ms: step.latency_ms.p50,
                        latency_p99_ms: step.latency_ms.p99,
                        overhead_p50_ms: overhead.map(|o| o.p50),
                        overhead_p99_ms: overhead.map(|o| o.p99),
                        status_codes: step
                            .oha
                            .as_ref()
                            .map(|o| o.status_codes.clone())
                            .unwrap_or_default(),
                    }
                })
                .collect(),
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
        runs: runs.len(),
        closed_loop: closed_loop_rows(runs),
        cpu_reference: runs
            .iter()
            .enumerate()
            .map(|(i, run)| cpu_reference(i + 1, run))
            .collect(),
        oha_failures: runs
            .iter()
            .enumerate()
            .flat_map(|(i, run)| {
                run.oha_failures
                    .iter()
                    .map(move |f| format!("run {}: {f}", i + 1))
            })
            .collect(),
        idle_rss_mib: median_map(runs.iter().map(|r| &r.idle_rss_mib).collect()),
        streams,
        rows,
        verdicts: Vec::new(),
    };
    summary.verdicts = verdicts(&summary);
    summary
}

fn closed_loop_rows(runs: &[Run]) -> Vec<ClosedLoopRow> {
    let mut keys: Vec<(String, String)> = Vec::new();
    for c in runs.iter().flat_map(|r| &r.closed_loop) {
        let key = (c.scenario.clone(), c.target.clone());
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.into_iter()
        .map(|(scenario, target)| {
            let found: Vec<(usize, &scenarios::ClosedLoop)> = runs
                .iter()
                .enumerate()
                .flat_map(|(i, run)| run.closed_loop.iter().map(move |c| (i + 1, c)))
                .filter(|(_, c)| c.scenario == scenario && c.target == target)
                .collect();
            ClosedLoopRow {
                connections: found.first().map_or(0, |(_, c)| c.connections),
                ok_per_sec: median(found.iter().map(|(_, c)| c.report.ok_per_sec).collect()),
                errors: median(found.iter().map(|(_, c)| c.report.errors as f64).collect()),
                latency_ms: median_percentiles(
                    &found
                        .iter()
                        .map(|(_, c)| c.report.latency_ms)
                        .collect::<Vec<_>>(),
                )
                .unwrap_or_default(),
                cpu_percent: median_map(found.iter().map(|(_, c)| &c.usage.cpu_percent).collect()),
                per_run: found
                    .iter()
                    .map(|(i, c)| ClosedLoopFigure {
                        run: *i,
                        ok_per_sec: c.report.ok_per_sec,
                        ok: c.report.ok,
                        errors: c.report.errors,
                        latency_ms: c.report.latency_ms,
                        status_codes: c.report.status_codes.clone(),
                        machine_stalls: c.machine.as_ref().map(|m| m.stalls),
                        machine_longest_ms: c.machine.as_ref().map(|m| m.longest_ms),
                    })
                    .collect(),
                scenario,
                target,
            }
        })
        .collect()
}

/// The fake upstream's CPU per request in one run (see [`CpuReference`]).
fn cpu_reference(run_number: usize, run: &Run) -> CpuReference {
    let upstream_steps = |keep: &dyn Fn(&Step) -> bool| -> (u64, f64) {
        run.steps
            .iter()
            .filter(|s| s.target == "upstream" && keep(s))
            .filter_map(|s| Some((s.ok, *s.usage.cpu_seconds.get("upstream")?)))
            .fold((0, 0.0), |(n, cpu), (ok, used)| (n + ok, cpu + used))
    };
    let openai =
        |s: &Step| s.scenario == scenarios::OPENAI || s.scenario == scenarios::OPENAI_COMBINED;
    let (mut basis, (mut requests, mut cpu_seconds)) = (
        "open-loop baselines of scenario 2 (split and combined), every rate",
        upstream_steps(&openai),
    );
    if requests == 0 {
        basis = "open-loop baselines of every non-streaming scenario against the fake upstream, every rate";
        (requests, cpu_seconds) = upstream_steps(&|s| s.scenario != scenarios::STREAMING);
    }
    let (closed_requests, closed_cpu) = run
        .closed_loop
        .iter()
        .filter(|c| c.target == "upstream")
        .filter_map(|c| Some((c.report.ok, *c.usage.cpu_seconds.get("upstream")?)))
        .fold((0, 0.0), |(n, cpu), (ok, used)| (n + ok, cpu + used));
    let per_request =
        |n: u64, cpu: f64| (n > 0).then(|| (cpu * 1e6 / n as f64 * 10.0).round() / 10.0);
    CpuReference {
        run: run_number,
        basis: basis.into(),
        requests,
        cpu_seconds: (cpu_seconds * 100.0).round() / 100.0,
        us_per_request: per_request(requests, cpu_seconds),
        closed_loop_requests: closed_requests,
        closed_loop_cpu_seconds: (closed_cpu * 100.0).round() / 100.0,
        closed_loop_us_per_request: per_request(closed_requests, closed_cpu),
    }
}

fn row<'a>(summary: &'a Summary, scenario: &str, target: &str, rate: f64) -> Option<&'a Row> {
    summary
        .rows
        .iter()
        .find(|r| r.scenario == scenario && r.target == target && r.rate == rate)
}

/// Figures of every run, in run order, as "0.35, 0.58, …".
fn every_run(figures: impl Iterator<Item = String>) -> String {
    figures.collect::<Vec<_>>().join(", ")
}

/// A p99 overhead bound at one rate, judged in every run: met only if every run measured the
/// step, none saturated, and every run's overhead p99 is below the bound.
fn overhead_target(
    summary: &Summary,
    scenario: &str,
    rate: f64,
    bound_ms: f64,
    name: &str,
) -> Verdict {
    let target =
        format!("{name}: overhead p99 below {bound_ms} ms at {rate} requests/s, in every run");
    let Some(r) = row(summary, scenario, "gateway", rate) else {
        return Verdict {
            target,
            measured: "not measured (the sweep did not reach this rate)".into(),
            met: false,
        };
    };
    let p99_of = |f: &RunFigure| f.overhead_p99_ms.unwrap_or(f64::INFINITY);
    let runs = every_run(r.per_run.iter().map(|f| match f.saturated {
        true => format!(
            "{:.3} (saturated: {:.0}/s, {} errors)",
            p99_of(f),
            f.achieved,
            f.errors
        ),
        false => format!("{:.3}", p99_of(f)),
    }));
    let missing = summary.runs.saturating_sub(r.per_run.len());
    let worst = r
        .per_run
        .iter()
        .max_by(|a, b| p99_of(a).total_cmp(&p99_of(b)));
    let met = missing == 0
        && !r.per_run.is_empty()
        && r.per_run
            .iter()
            .all(|f| !f.saturated && p99_of(f) < bound_ms);
    let median = r.overhead_ms.map_or(f64::NAN, |o| o.p99);
    let mut measured = format!("median {median:.3} ms; every run: {runs} ms");
    if let Some(w) = worst {
        let p99 = p99_of(w);
        if p99 < bound_ms {
            let _ = write!(
                measured,
                "; worst run {}: {p99:.3} ms, {:.3} ms to spare",
                w.run,
                bound_ms - p99
            );
        } else {
            let _ = write!(
                measured,
                "; worst run {}: {p99:.3} ms, over by {:.3} ms ({:.1}×)",
                w.run,
                p99 - bound_ms,
                p99 / bound_ms
            );
        }
    }
    if missing > 0 {
        let _ = write!(
            measured,
            "; measured in only {} of {} runs (the sweep stopped before this rate in the others)",
            r.per_run.len(),
            summary.runs
        );
    }
    if let (Some(stalls), Some(untouched)) = (r.machine_stalls, r.untouched_overhead_ms) {
        let _ = write!(
            measured,
            "; the machine stalled {stalls:.0} times in the step (median), and the requests no stall touched had overhead p99 {:.3} ms",
            untouched.p99
        );
    }
    if let (n @ 1.., Some(first)) = (r.set_aside, r.first_attempt_overhead_ms) {
        let _ = write!(
            measured,
            "; {n} attempt(s) at this step or its baseline set aside because the machine stalled ≥ {} ms (with the first attempts instead: {:.3} ms)",
            scenarios::REPEAT_AFTER_STALL_MS,
            first.p99
        );
    }
    if let Some(o) = row(summary, scenario, scenarios::OHA, rate) {
        match o.overhead_ms {
            Some(overhead) => {
                let _ = write!(
                    measured,
                    "; oha at the same rate, against oha's own baseline (not judged): median {:.3} ms, every run: {} ms",
                    overhead.p99,
                    every_run(
                        o.per_run
                            .iter()
                            .map(|f| f.overhead_p99_ms.map_or("–".into(), |v| format!("{v:.3}")))
                    )
                );
            }
            None => {
                let _ = write!(
                    measured,
                    "; oha at the same rate (not judged): {NO_OHA_BASELINE}, so no oha overhead (gateway p99 median {:.3} ms)",
                    o.latency_ms.p99
                );
            }
        }
    }
    Verdict {
        target,
        measured,
        met,
    }
}

/// Said where oha's overhead would be, for runs recorded before oha measured its own baseline.
const NO_OHA_BASELINE: &str = "no oha baseline recorded";

/// oha's closed-loop throughput through the gateway, judged in every run: met only if every
/// run sustained at least `min_per_sec` 2xx responses a second with at most 1 % errors.
fn throughput_target(summary: &Summary, scenario: &str, min_per_sec: f64, name: &str) -> Verdict {
    let found = |target: &str| {
        summary
            .closed_loop
            .iter()
            .find(|c| c.scenario == scenario && c.target == target)
    };
    let Some(r) = found("gateway") else {
        let target = format!(
            "{name}: closed-loop throughput (oha, no rate limit) at least {min_per_sec:.0} requests/s, in every run"
        );
        return Verdict {
            target,
            measured: "not measured: oha did not run (see the line “Second load generator” above)"
                .into(),
            met: false,
        };
    };
    let target = format!(
        "{name}: closed-loop throughput (oha, {} connections, no rate limit) at least {min_per_sec:.0} requests/s, in every run",
        r.connections
    );
    let sustained =
        |f: &ClosedLoopFigure| f.ok_per_sec >= min_per_sec && f.errors * 100 <= f.ok + f.errors;
    let missing = summary.runs.saturating_sub(r.per_run.len());
    let met = missing == 0 && !r.per_run.is_empty() && r.per_run.iter().all(sustained);
    let mut measured = format!(
        "median {:.0}/s; every run: {} /s",
        r.ok_per_sec,
        every_run(r.per_run.iter().map(|f| format!("{:.0}", f.ok_per_sec)))
    );
    if let Some(w) = r
        .per_run
        .iter()
        .min_by(|a, b| a.ok_per_sec.total_cmp(&b.ok_per_sec))
    {
        let _ = write!(
            measured,
            "; worst run {}: {:.0}/s ({:+.0}/s against the target)",
            w.run,
            w.ok_per_sec,
            w.ok_per_sec - min_per_sec
        );
    }
    if r.per_run.iter().any(|f| f.errors > 0) {
        let _ = write!(
            measured,
            "; errors every run: {}",
            every_run(r.per_run.iter().map(|f| f.errors.to_string()))
        );
    }
    if missing > 0 {
        let _ = write!(
            measured,
            "; measured in only {} of {} runs",
            r.per_run.len(),
            summary.runs
        );
    }
    if let Some(u) = found("upstream") {
        let _ = write!(
            measured,
            "; the fake upstream alone under the same load: median {:.0}/s",
            u.ok_per_sec
        );
    }
    Verdict {
        target,
        measured,
        met,
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
        throughput_target(
            summary,
            scenarios::OPENAI_COMBINED,
            10_000.0,
            "Scenario 2, combined replica",
        ),
        throughput_target(
            summary,
            scenarios::OPENAI,
            8_000.0,
            "Scenario 2, split edge and core",
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

/// The figures of `names` in order, `–` for a process not measured in that step (oha runs only
/// in its own steps), so the columns stay aligned.
fn usage(map: &BTreeMap<String, f64>, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| map.get(*n).map_or("–".into(), |v| format!("{v:.0}")))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// The generated part of `docs/benchmarks.md`; `callgrind`, when given, the instruction counts
/// of `scripts/profile.sh callgrind` to print beside the tables.
pub fn markdown(summary: &Summary, meta: &str, callgrind: Option<&Callgrind>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{meta}");
    let _ = writeln!(out, "{}\n", speed_reference(summary));
    let _ = writeln!(
        out,
        "### Targets\n\nEach target is judged in every run: it is met only if every run meets it, and the worst run is named.\n\n| target | measured (median; every run; the worst) | |\n|---|---|---|"
    );
    for v in &summary.verdicts {
        let _ = writeln!(
            out,
            "| {} | {} | {} |",
            v.target,
            v.measured,
            if v.met { "met" } else { "**MISSED**" }
        );
    }
    if let Some(callgrind) = callgrind {
        out.push_str(&callgrind_section(callgrind));
    }
    let procs = [
        "loadgen", "oha", "upstream", "redis", "core", "edge", "replica", "litellm",
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
                match r.overhead_ms {
                    None if r.target == scenarios::OHA => NO_OHA_BASELINE.into(),
                    overhead => triple(overhead),
                },
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
        let combined_follows = summary
            .rows
            .iter()
            .any(|r| r.scenario == scenarios::OPENAI_COMBINED);
        if scenario == scenarios::OPENAI_COMBINED
            || (scenario == scenarios::OPENAI && !combined_follows)
        {
            out.push_str(&two_generators(summary));
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

/// The machine's speed in this run: the fake upstream's CPU per request (see [`CpuReference`]).
fn speed_reference(summary: &Summary) -> String {
    let open: Vec<&CpuReference> = summary
        .cpu_reference
        .iter()
        .filter(|c| c.us_per_request.is_some())
        .collect();
    let Some(first) = open.first() else {
        return "- Speed of this boot: not measured (no step against the fake upstream alone)."
            .into();
    };
    let us = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.1}"));
    let mut line = format!(
        "- Speed of this boot (measured in this run, so that tables from different boots can be told apart): the fake upstream alone used **{} µs of CPU per request** (median) over its {} (every run: {} µs; {} requests and {:.2} s of CPU in all; user + system time from `/proc/<pid>/stat`, 10-ms ticks)",
        us(median_of(open.iter().map(|c| c.us_per_request))),
        first.basis,
        every_run(open.iter().map(|c| us(c.us_per_request))),
        open.iter().map(|c| c.requests).sum::<u64>(),
        open.iter().map(|c| c.cpu_seconds).sum::<f64>(),
    );
    let closed: Vec<&CpuReference> = summary
        .cpu_reference
        .iter()
        .filter(|c| c.closed_loop_us_per_request.is_some())
        .collect();
    if !closed.is_empty() {
        let _ = write!(
            line,
            ", and {} µs per request under oha's closed loop (every run: {} µs; {} requests)",
            us(median_of(
                closed.iter().map(|c| c.closed_loop_us_per_request)
            )),
            every_run(closed.iter().map(|c| us(c.closed_loop_us_per_request))),
            closed.iter().map(|c| c.closed_loop_requests).sum::<u64>(),
        );
    }
    line.push('.');
    line
}

/// How a scenario-2 target is named in the tables of both generators.
fn topology(scenario: &str, target: &str) -> &'static str {
    match (scenario, target) {
        (_, "upstream") if scenario == scenarios::OPENAI => {
            "fake upstream alone (before the split pair)"
        }
        (_, "upstream") => "fake upstream alone (before the combined replica)",
        _ if scenario == scenarios::OPENAI => "split edge and core",
        _ => "combined replica",
    }
}

/// Status codes over the runs: `200: 5999, 6000, 6001`.
fn status_codes_every_run<'a>(
    runs: impl Iterator<Item = &'a BTreeMap<String, u64>> + Clone,
) -> String {
    let mut codes: Vec<&String> = runs.clone().flat_map(|m| m.keys()).collect();
    codes.sort();
    codes.dedup();
    codes
        .into_iter()
        .map(|code| {
            format!(
                "{code}: {}",
                every_run(
                    runs.clone()
                        .map(|m| m.get(code).copied().unwrap_or(0).to_string())
                )
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figure of every run's overhead, as "median (run 1, run 2, …)"; `–` for a run without one.
fn overhead_every_run(
    row: &Row,
    pick: fn(&Percentiles) -> f64,
    of_run: fn(&RunFigure) -> Option<f64>,
) -> Option<String> {
    let median = row.overhead_ms.as_ref().map(pick)?;
    Some(format!(
        "{} ({})",
        ms(median),
        every_run(row.per_run.iter().map(|f| of_run(f).map_or("–".into(), ms)))
    ))
}

/// Scenario 2 through our generator and oha side by side, and oha's closed-loop throughput.
fn two_generators(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Scenario 2 measured by two load generators: ours and oha\n"
    );
    let oha_rows: Vec<&Row> = summary
        .rows
        .iter()
        .filter(|r| {
            r.target == scenarios::OHA
                && (r.scenario == scenarios::OPENAI || r.scenario == scenarios::OPENAI_COMBINED)
        })
        .collect();
    if oha_rows.is_empty() && summary.closed_loop.is_empty() {
        let _ = writeln!(
            out,
            "oha was not run (see the line “Second load generator” above): the scenario-2 figures come from our generator alone."
        );
    }
    if !oha_rows.is_empty() {
        let without_baseline = oha_rows.iter().any(|o| o.overhead_ms.is_none());
        let _ = writeln!(
            out,
            "At every rate, right after our generator's steps (the fake upstream alone, then the gateway), oha runs the same open-loop command (`-q <rate> --latency-correction`, connections as the line “Second load generator” above says, the same length, warm-up, request body and headers) twice: against the fake upstream alone, then against the same running gateway. Each generator's overhead is its own gateway figure minus its own upstream-alone figure at that rate in the same run, so no overhead mixes the two generators. oha's latency runs from when its scheduler released the request (its timer ticks in milliseconds), ours from when the request was due; oha opens its connections during the step, ours are already open.{}\n\n| rate/s | topology | ours: overhead p50 ms, median (every run) | ours: overhead p99 ms, median (every run) | oha: overhead p50 ms, median (every run) | oha: overhead p99 ms, median (every run) | ours: upstream alone p50 / p99 ms | ours: gateway p50 / p99 ms | oha: upstream alone p50 / p99 ms | oha: gateway p50 / p99 ms | oha: gateway 2xx/s, median (every run) | oha: gateway status codes (every run) | oha: errors, gateway / upstream alone | CPU % oha / upstream / core / edge / replica (oha at the gateway) |\n|---:|---|---|---|---|---|---|---|---|---|---|---|---|---|",
            if without_baseline {
                " These runs were recorded before oha measured its own baseline: where it is missing the oha overhead cells say so, and no oha figure is taken against ours."
            } else {
                ""
            }
        );
        let p50 = |p: &Percentiles| p.p50;
        let p99 = |p: &Percentiles| p.p99;
        let latency = |r: Option<&Row>| {
            r.map_or("–".into(), |r| {
                format!("{} / {}", ms(r.latency_ms.p50), ms(r.latency_ms.p99))
            })
        };
        for o in &oha_rows {
            let ours = row(summary, &o.scenario, "gateway", o.rate);
            let ours_upstream = row(summary, &o.scenario, "upstream", o.rate);
            let oha_upstream = row(summary, &o.scenario, scenarios::OHA_UPSTREAM, o.rate);
            let ours_overhead = |pick, of_run| {
                ours.and_then(|r| overhead_every_run(r, pick, of_run))
                    .unwrap_or_else(|| "–".into())
            };
            let oha_overhead = |pick, of_run| {
                overhead_every_run(o, pick, of_run).unwrap_or_else(|| NO_OHA_BASELINE.into())
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0}{} ({}) | {} | {} / {} | {} |",
                o.rate,
                topology(&o.scenario, "gateway"),
                ours_overhead(p50, |f| f.overhead_p50_ms),
                ours_overhead(p99, |f| f.overhead_p99_ms),
                oha_overhead(p50, |f| f.overhead_p50_ms),
                oha_overhead(p99, |f| f.overhead_p99_ms),
                latency(ours_upstream),
                latency(ours),
                oha_upstream.map_or(NO_OHA_BASELINE.into(), |r| latency(Some(r))),
                latency(Some(o)),
                o.achieved,
                if o.saturated() { " (saturated)" } else { "" },
                every_run(o.per_run.iter().map(|f| format!("{:.0}", f.achieved))),
                status_codes_every_run(o.per_run.iter().map(|f| &f.status_codes)),
                o.errors,
                oha_upstream.map_or("–".into(), |r| r.errors.to_string()),
                usage(
                    &o.cpu_percent,
                    &["oha", "upstream", "core", "edge", "replica"]
                ),
            );
        }
    }
    if !summary.closed_loop.is_empty() {
        let connections = summary.closed_loop[0].connections;
        let _ = writeln!(
            out,
            "\n#### Closed loop: what oha sustains with {connections} connections and no rate limit\n\nEach connection sends its next request as soon as the last is answered, for the step's length; the figure is 2xx responses per second over oha's whole run. oha shares the two cores with everything else, so this is the throughput of the whole machine, generator included.\n\n| target | 2xx responses/s, median (every run) | errors (every run) | p50 / p99 ms (median) | status codes (every run) | CPU % oha / upstream / core / edge / replica | machine stalls (every run) |\n|---|---|---|---|---|---|---|"
        );
        for c in &summary.closed_loop {
            let _ = writeln!(
                out,
                "| {} | {:.0} ({}) | {} | {} / {} | {} | {} | {} |",
                topology(&c.scenario, &c.target),
                c.ok_per_sec,
                every_run(c.per_run.iter().map(|f| format!("{:.0}", f.ok_per_sec))),
                every_run(c.per_run.iter().map(|f| f.errors.to_string())),
                ms(c.latency_ms.p50),
                ms(c.latency_ms.p99),
                status_codes_every_run(c.per_run.iter().map(|f| &f.status_codes)),
                usage(
                    &c.cpu_percent,
                    &["oha", "upstream", "core", "edge", "replica"]
                ),
                every_run(c.per_run.iter().map(|f| {
                    match (f.machine_stalls, f.machine_longest_ms) {
                        (Some(n), Some(longest)) => format!("{n} (longest {longest:.1} ms)"),
                        _ => "–".into(),
                    }
                })),
            );
        }
    }
    if !summary.oha_failures.is_empty() {
        let _ = writeln!(out, "\noha failed:\n");
        for failure in &summary.oha_failures {
            let _ = writeln!(
                out,
                "- `{}`",
                failure
                    .replace('`', "'")
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
    }
    out
}

/// The instruction counts of `scripts/profile.sh callgrind`, read back from its Markdown.
#[derive(Debug, Clone)]
pub struct Callgrind {
    /// The file, as named in the document.
    pub path: String,
    /// Its "Generated … by …" line.
    pub generated: String,
    /// The commit that last changed the file, if it is committed.
    pub commit: Option<String>,
    /// Per scenario heading, the "process | instructions per request" rows.
    pub scenarios: Vec<(String, Vec<(String, String)>)>,
}

/// Reads the summary tables (`| process | instructions per request |`) of each scenario of
/// `docs/benchmarks/callgrind.md`; `None` when it has none.
pub fn parse_callgrind(path: &str, text: &str, commit: Option<String>) -> Option<Callgrind> {
    let generated = text
        .lines()
        .find(|l| l.starts_with("Generated"))
        .unwrap_or("")
        .trim()
        .trim_end_matches(':')
        .to_string();
    let mut scenarios: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut heading: Option<String> = None;
    let mut in_table = false;
    for line in text.lines() {
        let line = line.trim();
        if let Some(title) = line.strip_prefix("## ") {
            heading = Some(title.trim().to_string());
            in_table = false;
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if line.starts_with('|') && cells == ["process", "instructions per request"] {
            if let Some(title) = heading.take() {
                scenarios.push((title, Vec::new()));
                in_table = true;
            }
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            in_table = false;
        } else if let (true, Some((_, rows))) = (
            cells.len() == 2 && !cells[1].starts_with("--") && !cells[1].starts_with(":-"),
            scenarios.last_mut(),
        ) {
            rows.push((cells[0].to_string(), cells[1].to_string()));
        }
    }
    scenarios.retain(|(_, rows)| !rows.is_empty());
    (!scenarios.is_empty()).then(|| Callgrind {
        path: path.to_string(),
        generated,
        commit,
        scenarios,
    })
}

fn callgrind_section(c: &Callgrind) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\n### Instructions per request (callgrind; not measured in this run)\n\nFrom `{}` ({}{}): user-space instructions per request, requests sent one at a time under valgrind. They do not depend on the machine's speed or load, so they compare builds across boots, where the latency tables compare only runs of one boot.\n",
        c.path,
        if c.generated.is_empty() {
            "no generation line".to_string()
        } else {
            format!("\"{}\"", c.generated)
        },
        c.commit
            .as_deref()
            .map_or(", not committed".to_string(), |h| format!(
                ", last committed in {h}"
            ))
    );
    let mut processes: Vec<&str> = Vec::new();
    for (_, rows) in &c.scenarios {
        for (process, _) in rows {
            if !processes.contains(&process.as_str()) {
                processes.push(process);
            }
        }
    }
    let _ = writeln!(
        out,
        "| process | {} |\n|---|{}",
        c.scenarios
            .iter()
            .map(|(title, _)| title.as_str())
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(c.scenarios.len())
    );
    for process in processes {
        let _ = writeln!(
            out,
            "| {process} | {} |",
            c.scenarios
                .iter()
                .map(|(_, rows)| rows
                    .iter()
                    .find(|(p, _)| p == process)
                    .map_or("", |(_, v)| v.as_str()))
                .collect::<Vec<_>>()
                .join(" | ")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oha;
    use crate::processes::Usage;
    use crate::scenarios::ClosedLoop;

    fn step(scenario: &str, target: &str, rate: f64, p99: f64) -> Step {
        Step {
            scenario: scenario.into(),
            target: target.into(),
            rate,
            achieved: rate,
            sent: rate as u64,
            ok: rate as u64,
            errors: 0,
            first_error: None,
            latency_ms: Percentiles {
                p50: p99 / 2.0,
                p90: p99,
                p99,
                p999: p99,
            },
            first_token_ms: None,
            token_gap_ms: None,
            usage: Usage::default(),
            slowest: Vec::new(),
            machine: None,
            set_aside: Vec::new(),
            oha: None,
        }
    }

    fn run(gateway_p99: f64, closed_loop_per_sec: f64) -> Run {
        let mut report = oha::Report {
            ok: closed_loop_per_sec as u64,
            ok_per_sec: closed_loop_per_sec,
            ..oha::Report::default()
        };
        report.status_codes.insert("200".into(), report.ok);
        Run {
            steps: vec![
                step(scenarios::OPENAI, "upstream", 2000.0, 0.1),
                step(scenarios::OPENAI, "gateway", 2000.0, gateway_p99),
                step(scenarios::OPENAI, scenarios::OHA_UPSTREAM, 2000.0, 0.3),
                step(scenarios::OPENAI, scenarios::OHA, 2000.0, 0.5),
            ],
            closed_loop: vec![ClosedLoop {
                scenario: scenarios::OPENAI.into(),
                target: "gateway".into(),
                connections: 64,
                report,
                usage: Usage::default(),
                machine: None,
            }],
            ..Run::default()
        }
    }

    fn verdict<'a>(summary: &'a Summary, starts: &str) -> &'a Verdict {
        summary
            .verdicts
            .iter()
            .find(|v| v.target.starts_with(starts))
            .unwrap()
    }

    #[test]
    fn an_overhead_target_is_met_only_if_every_run_meets_it_and_names_the_worst() {
        let met = summarise(&[run(0.4, 9000.0), run(0.6, 9000.0), run(0.5, 9000.0)]);
        let v = verdict(&met, "Scenario 2 (OpenAI-compatible, stateless): overhead");
        assert!(v.met, "{}", v.measured);
        assert!(v.measured.contains("every run: 0.300, 0.500, 0.400 ms"));
        // The median (0.4 ms) is well below 1 ms, but one run is not.
        let missed = summarise(&[run(0.4, 9000.0), run(1.3, 9000.0), run(0.5, 9000.0)]);
        let v = verdict(
            &missed,
            "Scenario 2 (OpenAI-compatible, stateless): overhead",
        );
        assert!(!v.met);
        assert!(v.measured.starts_with("median 0.400 ms"), "{}", v.measured);
        assert!(
            v.measured.contains("worst run 2: 1.200 ms"),
            "{}",
            v.measured
        );
        assert!(
            v.measured
                .contains("oha at the same rate, against oha's own baseline"),
            "{}",
            v.measured
        );
        let document = markdown(&missed, "meta", None);
        assert!(document.contains("| **MISSED** |"));
    }

    #[test]
    fn oha_s_overhead_is_taken_against_oha_s_own_baseline_never_against_ours() {
        let runs = [run(0.4, 9000.0), run(0.6, 9000.0)];
        let summary = summarise(&runs);
        let oha = row(&summary, scenarios::OPENAI, scenarios::OHA, 2000.0).unwrap();
        // oha at the gateway (p99 0.5, p50 0.25) minus oha at the upstream (0.3, 0.15); our
        // baseline (0.1) plays no part.
        let overhead = oha.overhead_ms.unwrap();
        assert!((overhead.p99 - 0.2).abs() < 1e-9, "{overhead:?}");
        assert!((overhead.p50 - 0.1).abs() < 1e-9, "{overhead:?}");
        assert!(
            oha.per_run
                .iter()
                .all(|f| (f.overhead_p99_ms.unwrap() - 0.2).abs() < 1e-9)
        );
        let base = row(&summary, scenarios::OPENAI, scenarios::OHA_UPSTREAM, 2000.0).unwrap();
        assert!(base.overhead_ms.is_none());
        // Ours stays against our own baseline.
        let ours = row(&summary, scenarios::OPENAI, "gateway", 2000.0).unwrap();
        assert!((ours.overhead_ms.unwrap().p99 - 0.4).abs() < 1e-9);
        let v = verdict(
            &summary,
            "Scenario 2 (OpenAI-compatible, stateless): overhead",
        );
        assert!(
            v.measured.contains(
                "oha at the same rate, against oha's own baseline (not judged): median 0.200 ms, every run: 0.200, 0.200 ms"
            ),
            "{}",
            v.measured
        );
        let document = markdown(&summary, "meta", None);
        assert!(
            document.contains(
                "| 2000 | split edge and core | 0.200 (0.150, 0.250) | 0.400 (0.300, 0.500) | 0.100 (0.100, 0.100) | 0.200 (0.200, 0.200) | 0.050 / 0.100 | 0.250 / 0.500 | 0.150 / 0.300 | 0.250 / 0.500 |"
            ),
            "{document}"
        );
        assert!(!document.contains(NO_OHA_BASELINE));
    }

    #[test]
    fn runs_recorded_before_oha_had_its_own_baseline_say_so() {
        let mut old = run(0.4, 9000.0);
        old.steps.retain(|s| s.target != scenarios::OHA_UPSTREAM);
        // As an old JSON has it: read back through serde.
        let old: Run = serde_json::from_value(serde_json::to_value(&old).unwrap()).unwrap();
        let summary = summarise(&[old]);
        let oha = row(&summary, scenarios::OPENAI, scenarios::OHA, 2000.0).unwrap();
        assert!(oha.overhead_ms.is_none());
        assert!(oha.per_run[0].overhead_p99_ms.is_none());
        let v = verdict(
            &summary,
            "Scenario 2 (OpenAI-compatible, stateless): overhead",
        );
        assert!(v.met, "{}", v.measured);
        assert!(
            v.measured.contains("no oha baseline recorded"),
            "{}",
            v.measured
        );
        let document = markdown(&summary, "meta", None);
        assert!(
            document.contains(
                "| 2000 | split edge and core | 0.150 (0.150) | 0.300 (0.300) | no oha baseline recorded | no oha baseline recorded | 0.050 / 0.100 | 0.200 / 0.400 | no oha baseline recorded | 0.250 / 0.500 |"
            ),
            "{document}"
        );
        assert!(
            document.contains(
                "| 2000 | oha | 2000 | 0.250 | 0.500 | 0.500 | 0.500 | no oha baseline recorded | 0 |"
            ),
            "{document}"
        );
    }

    #[test]
    fn a_throughput_target_is_judged_in_every_run() {
        let summary = summarise(&[run(0.4, 8500.0), run(0.4, 7900.0)]);
        let v = verdict(&summary, "Scenario 2, split edge and core: closed-loop");
        assert!(!v.met);
        assert!(
            v.measured.contains("every run: 8500, 7900 /s"),
            "{}",
            v.measured
        );
        assert!(v.measured.contains("worst run 2: 7900/s"), "{}", v.measured);
        // Never measured: missed, and says why.
        let v = verdict(&summary, "Scenario 2, combined replica: closed-loop");
        assert!(!v.met);
        assert!(v.measured.contains("oha did not run"));
    }

    #[test]
    fn the_callgrind_summary_tables_are_read_per_scenario() {
        let text = "# Instructions per request (callgrind)\n\nGenerated 2026-12-07 01:54 UTC by `scripts/profile.sh callgrind`:\nrelease binaries\n\n## Scenario 2, `POST /v1/chat/completions` (stateless)\n\n| process | instructions per request |\n|---|---:|\n| core | 300,722 |\n| edge | 167,798 |\n\n**core**, by crate:\n\n| crate | per request | share |\n|---|---:|---:|\n| `libc` | 74,156 | 24.7 % |\n\n## Scenario 1, send-message\n\n| process | instructions per request |\n|---|---:|\n| core | 577,625 |\n";
        let c =
            parse_callgrind("docs/benchmarks/callgrind.md", text, Some("abc1234".into())).unwrap();
        assert_eq!(
            c.generated,
            "Generated 2026-12-07 01:54 UTC by `scripts/profile.sh callgrind`"
        );
        assert_eq!(c.scenarios.len(), 2);
        assert_eq!(c.scenarios[0].1.len(), 2);
        let section = callgrind_section(&c);
        assert!(
            section.contains("| core | 300,722 | 577,625 |"),
            "{section}"
        );
        assert!(section.contains("| edge | 167,798 |  |"), "{section}");
        assert!(section.contains("last committed in abc1234"));
    }
}
