//! Standalone Redis against a Redis Cluster under the same gateway: send-message and the
//! OpenAI-compatible path at a few rates on each (the same core, edge and fake upstream), the
//! Redis commands each request costs (`INFO commandstats` deltas summed over the nodes, split
//! by `MONITOR` into the commands the gateway sent and those its scripts ran inside Redis), and
//! what one Redis node sustains at full speed (`redis-benchmark`), for `docs/capacity.md`.

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::load::open_loop;
use crate::redis_topology::{CommandStat, Layout, Monitor, Tally, commandstats_delta};
use crate::scenarios::{
    self, OPENAI, Plan, SEND_MESSAGE, Stack, Step, Target, caller, create_sessions, openai_body,
};

/// The endpoints compared, by scenario name.
pub const ENDPOINTS: [&str; 3] = [SEND_MESSAGE, OPENAI, OPENAI_BUDGETED];

/// How a comparison is shaped beyond the scenarios' [`Plan`].
#[derive(Debug, Clone)]
pub struct Comparison {
    pub layouts: Vec<Layout>,
    /// Rate of the windows that count Redis commands per request (MONITOR runs meanwhile).
    pub count_rate: f64,
    pub count_window: Duration,
    /// How long the gateway is left idle to measure the commands it sends with no traffic.
    pub idle_window: Duration,
    /// `redis-benchmark` repetitions per setting (0: no shard-capacity runs).
    pub capacity_runs: usize,
}

/// Everything one layout measured in one run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LayoutRun {
    pub layout: String,
    pub nodes: usize,
    pub steps: Vec<Step>,
    /// Commands with no traffic at all (cron ticks, connection upkeep), per second.
    pub idle: CommandCount,
    pub endpoints: Vec<EndpointCount>,
    pub capacity: Vec<CapacityRun>,
}

/// Redis commands over one window.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CommandCount {
    pub seconds: f64,
    /// `INFO commandstats` deltas summed over the nodes (`info`, `monitor` and redis-cli's
    /// `command` calls left out). Includes the commands scripts ran.
    pub commandstats: BTreeMap<String, CommandStat>,
    pub monitor: Tally,
}

impl CommandCount {
    pub fn all_commands(&self) -> u64 {
        self.commandstats.values().map(|s| s.calls).sum()
    }
}

/// The Redis commands one endpoint's requests cost.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointCount {
    pub endpoint: String,
    pub requests: u64,
    pub errors: u64,
    pub window: CommandCount,
    pub per_request: PerRequest,
}

/// Per request served, with the idle rate (scaled to the window) taken out.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PerRequest {
    /// Every command `INFO commandstats` counted: those the gateway sent and those its scripts
    /// ran inside Redis.
    pub commandstats: f64,
    /// Commands the gateway sent (MONITOR's client lines): round trips, a script one each.
    pub sent: f64,
    /// Commands scripts ran inside Redis (MONITOR's `lua` lines).
    pub inside_scripts: f64,
    /// Time Redis spent executing the commands the gateway sent, µs (a script's includes its
    /// commands; network and parsing not included).
    pub redis_usec: f64,
}

/// One `redis-benchmark` run against one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapacityRun {
    pub command: String,
    pub clients: usize,
    pub pipeline: usize,
    pub requests: u64,
    pub ops_per_sec: f64,
    /// The node's CPU over the run, % of one core.
    pub redis_cpu_percent: f64,
    pub load_average: String,
}

fn per_request(window: &CommandCount, idle: &CommandCount, requests: u64) -> PerRequest {
    let scale = if idle.seconds > 0.0 {
        window.seconds / idle.seconds
    } else {
        0.0
    };
    let n = requests.max(1) as f64;
    let net = |w: f64, i: f64| ((w - i * scale) / n).max(0.0);
    let idle_usec: u64 = idle.commandstats.values().map(|s| s.usec).sum();
    let sent_usec: u64 = window
        .commandstats
        .iter()
        .filter(|(name, _)| sent_by_clients(name, &window.monitor))
        .map(|(_, s)| s.usec)
        .sum();
    PerRequest {
        commandstats: net(window.all_commands() as f64, idle.all_commands() as f64),
        sent: net(
            window.monitor.client_total() as f64,
            idle.monitor.client_total() as f64,
        ),
        inside_scripts: net(
            window.monitor.script_total() as f64,
            idle.monitor.script_total() as f64,
        ),
        redis_usec: net(sent_usec as f64, idle_usec as f64),
    }
}

/// Whether clients sent `command` (a `commandstats` name) during the window: only those count
/// towards Redis time per request, since a script's time already includes its commands'.
fn sent_by_clients(command: &str, tally: &Tally) -> bool {
    let upper = command
        .split('|')
        .next()
        .unwrap_or(command)
        .to_ascii_uppercase();
    tally.commands.get("client").is_some_and(|c| {
        c.keys()
            .any(|shape| shape.split(' ').next() == Some(&upper))
    })
}

fn snapshot(stack: &Stack) -> anyhow::Result<Vec<BTreeMap<String, CommandStat>>> {
    stack.redis.commandstats()
}

/// Counts the commands over `work`, MONITOR on every node meanwhile.
async fn count_commands<F, Fut>(
    stack: &Stack,
    work: F,
) -> anyhow::Result<(CommandCount, Fut::Output)>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future,
{
    let before = snapshot(stack)?;
    let started = Instant::now();
    let monitor = Monitor::start(&stack.redis.ports())?;
    let output = work().await;
    // The settle script goes out after the reply; let the last ones land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tally = monitor.stop();
    let after = snapshot(stack)?;
    let seconds = started.elapsed().as_secs_f64();
    let mut commandstats = commandstats_delta(&before, &after);
    commandstats.retain(|name, _| name != "monitor" && !name.starts_with("command"));
    Ok((
        CommandCount {
            seconds,
            commandstats,
            monitor: tally,
        },
        output,
    ))
}

/// One run: every layout in turn, each with its own Redis, core, edge and upstream.
pub async fn run(
    plan: &Plan,
    comparison: &Comparison,
    log: &dyn Fn(&str),
) -> anyhow::Result<Vec<LayoutRun>> {
    let mut runs = Vec::new();
    for &layout in &comparison.layouts {
        log(&format!("{}: starting", layout.name()));
        // A process that lost its free port to another between the check and its bind exits at
        // start; once more, on other ports, before giving up.
        let stack = match scenarios::start(plan, layout).await {
            Ok(stack) => stack,
            Err(error) => {
                log(&format!(
                    "{}: start failed ({error:#}); again",
                    layout.name()
                ));
                scenarios::start(plan, layout).await?
            }
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut result = scenarios::Run::default();
        let openai = Target::Http {
            url: stack.edge_url("/v1/chat/completions"),
            auth: Some(stack.key.clone()),
            body: openai_body("zai/glm-4.7-flash", false),
            streamed: false,
        };
        scenarios::sweep(
            plan,
            &stack,
            OPENAI,
            "gateway",
            &plan.rates,
            openai.clone(),
            &mut result,
            &|line| log(&format!("{}: {line}", layout.name())),
        )
        .await;
        scenarios::send_message(
            plan,
            &stack,
            SEND_MESSAGE,
            &stack.edge_url(""),
            &mut result,
            &|line| log(&format!("{}: {line}", layout.name())),
        )
        .await?;

        let (idle, ()) =
            count_commands(&stack, || tokio::time::sleep(comparison.idle_window)).await?;
        log(&format!(
            "{}: idle {:.1} s: {} commands ({} sent, {} inside scripts)",
            layout.name(),
            idle.seconds,
            idle.all_commands(),
            idle.monitor.client_total(),
            idle.monitor.script_total()
        ));
        let sessions = Arc::new(
            create_sessions(&stack, (comparison.count_rate as usize).clamp(64, 4000)).await?,
        );
        let send = Target::Sessions {
            base: stack.edge_url(""),
            auth: stack.key.clone(),
            sessions,
            body: Bytes::from(
                json!({"message": {"role": "user", "content": "Thanks. Please draft the e-mail announcing it."}, "maxTokens": 32})
                    .to_string(),
            ),
        };
        let mut endpoints = Vec::new();
        for (endpoint, target) in [
            (SEND_MESSAGE, send),
            (OPENAI, openai.clone()),
            (OPENAI_BUDGETED, openai),
        ] {
            if endpoint == OPENAI_BUDGETED {
                // The same calls by a key with a budget: it is checked in the admission script
                // and settled in the settle script, so the commands sent must not change.
                give_a_budget(&stack).await?;
            }
            let call = caller(
                target,
                stack.http.clone(),
                u64::MAX - endpoints.len() as u64,
            );
            let (window, outcome) = count_commands(&stack, || {
                open_loop(
                    comparison.count_rate,
                    comparison.count_window,
                    plan.max_in_flight,
                    Duration::from_secs(20),
                    call,
                )
            })
            .await?;
            let per_request = per_request(&window, &idle, outcome.ok);
            log(&format!(
                "{}: {endpoint}: {} requests ({} errors): per request {:.2} commands in commandstats = {:.2} sent + {:.2} inside scripts; {:.1} µs in Redis",
                layout.name(),
                outcome.ok,
                outcome.errors,
                per_request.commandstats,
                per_request.sent,
                per_request.inside_scripts,
                per_request.redis_usec
            ));
            endpoints.push(EndpointCount {
                endpoint: endpoint.to_string(),
                requests: outcome.ok,
                errors: outcome.errors,
                window,
                per_request,
            });
        }
        let capacity = if layout == Layout::Standalone && comparison.capacity_runs > 0 {
            shard_capacity(&stack, &endpoints, comparison.capacity_runs, log)?
        } else {
            Vec::new()
        };
        runs.push(LayoutRun {
            layout: layout.name(),
            nodes: stack.redis.nodes.len(),
            steps: result.steps,
            idle,
            endpoints,
            capacity,
        });
    }
    Ok(runs)
}

// ---------------------------------------------------------------- shard capacity

/// `redis-benchmark` settings: 50 connections one command at a time (many clients, no
/// pipelining), and 4 connections with 16 commands outstanding each (a few gateway replicas,
/// each multiplexing its requests' commands on one connection, as the gateway does).
const CAPACITY_SETTINGS: [(usize, usize); 2] = [(50, 1), (4, 16)];

/// What one node sustains at full speed: `PING` (the cost of a command itself: read, parse,
/// reply) and the limiter's admission script as the gateway sent it, its reservation id made
/// unique per call (`__rand_int__`), on the one key the gateway used (one tenant's hot slot).
fn shard_capacity(
    stack: &Stack,
    endpoints: &[EndpointCount],
    runs: usize,
    log: &dyn Fn(&str),
) -> anyhow::Result<Vec<CapacityRun>> {
    let node = &stack.redis.nodes[0];
    let mut commands: Vec<(String, Vec<String>)> = vec![("PING".into(), vec!["PING".into()])];
    let admission = endpoints.iter().find_map(|e| {
        e.window
            .monitor
            .samples
            .iter()
            .find(|(shape, _)| shape.starts_with("EVALSHA") && shape.contains(":log"))
    });
    match admission {
        Some((shape, words)) => {
            let keys = words
                .get(2)
                .and_then(|n| n.parse::<usize>().ok())
                .context("the admission script's key count")?;
            let mut words = words.clone();
            if let Some(reservation) = words.get_mut(3 + keys) {
                *reservation = "bench-__rand_int__".into();
            }
            commands.push((format!("admission script ({shape})"), words));
        }
        None => log("no admission script seen: shard capacity measured with PING only"),
    }
    let mut results = Vec::new();
    for i in 0..runs {
        for (name, words) in &commands {
            for (clients, pipeline) in CAPACITY_SETTINGS {
                // A few seconds each at the rates this machine reaches.
                let requests: u64 = match (name == "PING", pipeline > 1) {
                    (true, false) => 300_000,
                    (true, true) => 2_000_000,
                    (false, false) => 100_000,
                    (false, true) => 200_000,
                };
                let cpu_before = crate::processes::cpu_seconds(node.pid());
                let started = Instant::now();
                let output = Command::new("redis-benchmark")
                    .args(["-h", "127.0.0.1", "-p", &node.port.to_string()])
                    .args(["-c", &clients.to_string(), "-P", &pipeline.to_string()])
                    .args(["-n", &requests.to_string(), "-r", "100000000", "-q"])
                    .args(words)
                    .stdin(Stdio::null())
                    .output()
                    .context("running redis-benchmark")?;
                let wall = started.elapsed().as_secs_f64();
                let cpu = crate::processes::cpu_seconds(node.pid()) - cpu_before;
                let text = String::from_utf8_lossy(&output.stdout);
                let Some(ops) = requests_per_second(&text) else {
                    bail!(
                        "redis-benchmark printed no rate: {text} {}",
                        String::from_utf8_lossy(&output.stderr)
                    );
                };
                let run = CapacityRun {
                    command: name.clone(),
                    clients,
                    pipeline,
                    requests,
                    ops_per_sec: ops,
                    redis_cpu_percent: (1000.0 * cpu / wall).round() / 10.0,
                    load_average: std::fs::read_to_string("/proc/loadavg")
                        .unwrap_or_default()
                        .split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" "),
                };
                log(&format!(
                    "shard capacity, round {}: {} -c {} -P {}: {:.0} ops/s, redis {:.0} % of a core (load {})",
                    i + 1,
                    run.command,
                    clients,
                    pipeline,
                    run.ops_per_sec,
                    run.redis_cpu_percent,
                    run.load_average
                ));
                results.push(run);
            }
        }
    }
    Ok(results)
}

/// The last `… requests per second` figure `redis-benchmark -q` printed (its lines are
/// rewritten with `\r` as it goes; the final one holds the result).
fn requests_per_second(text: &str) -> Option<f64> {
    text.rsplit(['\r', '\n']).find_map(|line| {
        let (before, _) = line.split_once(" requests per second")?;
        before.rsplit([' ', ':']).next()?.trim().parse::<f64>().ok()
    })
}

// ---------------------------------------------------------------- report

/// The figures side by side, as Markdown, every run listed.
pub fn markdown(runs: &[Vec<LayoutRun>], meta: &str) -> String {
    let mut out = String::new();
    out.push_str(meta);
    out.push_str("\n\n### Latency and throughput, standalone against cluster\n\n");
    out.push_str("Each cell: achieved/s, p50 / p99 ms of the gateway (the fake upstream alone in brackets: p50 / p99), and the CPU time Redis used per request (every node, `/proc`), one entry per run.\n\n");
    let layouts: Vec<String> = runs
        .first()
        .map(|r| r.iter().map(|l| l.layout.clone()).collect())
        .unwrap_or_default();
    out.push_str("| endpoint | rate/s |");
    for layout in &layouts {
        out.push_str(&format!(" {layout} |"));
    }
    out.push_str("\n|---|---:|");
    for _ in &layouts {
        out.push_str("---|");
    }
    out.push('\n');
    let mut rates: Vec<f64> = runs
        .iter()
        .flatten()
        .flat_map(|l| l.steps.iter().map(|s| s.rate))
        .collect();
    rates.sort_by(f64::total_cmp);
    rates.dedup();
    for endpoint in ENDPOINTS {
        for &rate in &rates {
            let mut row = format!("| {} | {rate} |", endpoint_name(endpoint));
            let mut any = false;
            for layout in &layouts {
                let cells: Vec<String> = runs
                    .iter()
                    .filter_map(|run| {
                        let l = run.iter().find(|l| &l.layout == layout)?;
                        let find = |target: &str| {
                            l.steps.iter().find(|s| {
                                s.scenario == endpoint && s.rate == rate && s.target == target
                            })
                        };
                        let g = find("gateway")?;
                        let b = find("upstream");
                        Some(format!(
                            "{:.0}{}, {:.2} / {:.2}{}, Redis {:.0} µs",
                            g.achieved,
                            if g.saturated() { " (saturated)" } else { "" },
                            g.latency_ms.p50,
                            g.latency_ms.p99,
                            b.map(|b| format!(
                                " [{:.2} / {:.2}]",
                                b.latency_ms.p50, b.latency_ms.p99
                            ))
                            .unwrap_or_default(),
                            redis_cpu_usec_per_request(g)
                        ))
                    })
                    .collect();
                any |= !cells.is_empty();
                row.push_str(&format!(" {} |", cells.join("; ")));
            }
            if any {
                out.push_str(&row);
                out.push('\n');
            }
        }
    }
    out.push_str("\n### Redis commands per request\n\n");
    out.push_str("From `INFO commandstats` deltas over a counting window (summed over all nodes), less the gateway's idle rate over the same time, divided by the requests answered; `MONITOR` on every node meanwhile splits them into commands the gateway sent (round trips; a script, `EVALSHA`, is one) and commands its scripts ran inside Redis (which `commandstats` also counts). Redis µs: time Redis spent inside the commands sent (`usec` of `commandstats`) with MONITOR attached, which formats every command, a script's inner ones included, inside that time: an upper bound, not a cost figure (the CPU per request of the latency steps above and the full-speed runs below are). One entry per run.\n\n");
    out.push_str("| endpoint | layout | commandstats commands / request | sent (round trips) / request | run inside scripts / request | Redis µs / request (MONITOR attached) | requests counted |\n|---|---|---|---|---|---|---|\n");
    for endpoint in ENDPOINTS {
        for layout in &layouts {
            let counts: Vec<&EndpointCount> = runs
                .iter()
                .filter_map(|run| {
                    run.iter()
                        .find(|l| &l.layout == layout)?
                        .endpoints
                        .iter()
                        .find(|e| e.endpoint == endpoint)
                })
                .collect();
            let list = |f: &dyn Fn(&PerRequest) -> f64, digits: usize| {
                counts
                    .iter()
                    .map(|c| format!("{:.*}", digits, f(&c.per_request)))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "| {} | {layout} | {} | {} | {} | {} | {} |\n",
                endpoint_name(endpoint),
                list(&|p| p.commandstats, 2),
                list(&|p| p.sent, 2),
                list(&|p| p.inside_scripts, 2),
                list(&|p| p.redis_usec, 1),
                counts
                    .iter()
                    .map(|c| format!("{} ({} errors)", c.requests, c.errors))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    out.push_str("\n### What each request sends, by command and key (first run)\n\n");
    if let Some(first) = runs.first() {
        for l in first {
            for e in &l.endpoints {
                out.push_str(&format!(
                    "**{} on {}** ({} requests; per request, idle rate not taken out):\n\n",
                    endpoint_name(&e.endpoint),
                    l.layout,
                    e.requests
                ));
                for (source, shapes) in &e.window.monitor.commands {
                    for (shape, count) in shapes {
                        let per = *count as f64 / e.requests.max(1) as f64;
                        if per >= 0.005 {
                            out.push_str(&format!("- {source}: `{shape}` {per:.3}\n"));
                        }
                    }
                }
                let nodes: Vec<String> = e
                    .window
                    .monitor
                    .client_by_node
                    .iter()
                    .map(|(port, n)| format!("{port}: {n}"))
                    .collect();
                out.push_str(&format!(
                    "- commands sent, by node: {}\n\n",
                    nodes.join(", ")
                ));
            }
            let idle: Vec<String> = l
                .idle
                .monitor
                .commands
                .iter()
                .flat_map(|(source, shapes)| {
                    shapes.iter().map(move |(shape, n)| {
                        format!("{source} `{shape}` {:.2}/s", *n as f64 / l.idle.seconds)
                    })
                })
                .collect();
            out.push_str(&format!(
                "**Idle, {}** ({:.1} s): {}\n\n",
                l.layout,
                l.idle.seconds,
                idle.join("; ")
            ));
        }
    }
    let capacity: Vec<&CapacityRun> = runs.iter().flatten().flat_map(|l| &l.capacity).collect();
    if !capacity.is_empty() {
        out.push_str("### One Redis node at full speed (`redis-benchmark`, every run)\n\n| command | clients × pipeline | ops/s | Redis CPU % | load average |\n|---|---|---:|---:|---|\n");
        for c in capacity {
            out.push_str(&format!(
                "| {} | {} × {} | {:.0} | {:.0} | {} |\n",
                c.command,
                c.clients,
                c.pipeline,
                c.ops_per_sec,
                c.redis_cpu_percent,
                c.load_average
            ));
        }
    }
    out
}

fn endpoint_name(scenario: &str) -> &'static str {
    match scenario {
        SEND_MESSAGE => "send-message",
        OPENAI => "chat/completions",
        OPENAI_BUDGETED => "chat/completions, key with a budget",
        _ => "other",
    }
}

/// The counting windows' name for chat completions of a key with a spend budget.
const OPENAI_BUDGETED: &str = "s2-budgeted";

/// Gives the benchmark key a daily budget it never reaches, with two thresholds.
async fn give_a_budget(stack: &Stack) -> anyhow::Result<()> {
    let keys: serde_json::Value = stack
        .http
        .get(stack.edge_url("/api/v1/keys"))
        .bearer_auth(crate::processes::INTERNAL_TOKEN)
        .send()
        .await?
        .json()
        .await?;
    let id = keys["data"]["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["name"] == "benchmark"))
        .and_then(|k| k["id"].as_str())
        .context("the benchmark key is not listed")?
        .to_owned();
    let response = stack
        .http
        .patch(stack.edge_url(&format!("/api/v1/keys/{id}")))
        .bearer_auth(crate::processes::INTERNAL_TOKEN)
        .json(
            &json!({"budget": {"limitMicros": 1_000_000_000_000u64, "period": "day",
            "timeZone": "UTC", "thresholds": [0.5, 0.8]}}),
        )
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("setting the benchmark key's budget: {}", response.status());
    }
    // Keys are cached for up to two seconds on the core.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Ok(())
}

/// Redis CPU, µs per gateway request, of a step (all nodes added up).
pub fn redis_cpu_usec_per_request(step: &Step) -> f64 {
    let percent: f64 = step
        .usage
        .cpu_percent
        .iter()
        .filter(|(name, _)| name.starts_with("redis"))
        .map(|(_, p)| p)
        .sum();
    percent * 10_000.0 / step.achieved.max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_final_rate_of_redis_benchmark_is_read() {
        let text = "EVALSHA abc: rps=0.0 (overall: nan) avg_msec=nan\rEVALSHA abc: 31250.00 requests per second, p50=1.2 msec\n";
        assert_eq!(requests_per_second(text), Some(31250.0));
        assert_eq!(
            requests_per_second("PING: 98039.22 requests per second\n"),
            Some(98039.22)
        );
    }

    #[test]
    fn the_idle_rate_is_taken_out_in_proportion_to_the_window() {
        let count = |calls: u64, seconds: f64| CommandCount {
            seconds,
            commandstats: BTreeMap::from([("evalsha".to_string(), CommandStat { calls, usec: 0 })]),
            monitor: Tally::default(),
        };
        let p = per_request(&count(210, 4.0), &count(5, 2.0), 100);
        assert!((p.commandstats - 2.0).abs() < 1e-9);
    }
}
