//! oha (<https://github.com/hatoo/oha>), a widely used HTTP load generator, run beside our own on
//! scenario 2: the same request to the same running gateway, so a figure of ours that only our
//! generator produces shows up as a difference between the two. oha's overhead is taken against
//! oha's own baseline (the same command against the fake upstream alone at the same rate), never
//! against ours, so each overhead is a difference of two figures of one generator.
//! `scripts/bench.sh` installs one pinned version under `target/tools` and passes its path
//! (`loadgen --oha`).
//!
//! Two ways it runs here:
//! - open loop, `-q <rate> --latency-correction`: oha's latency then runs from the moment its
//!   scheduler released the request, not from when the request was due (its scheduler sleeps on
//!   tokio's millisecond timer and stamps the time it woke), so a stall of oha's own scheduler
//!   is not counted the way ours counts it;
//! - closed loop, no rate limit: `-c` connections each send the next request as soon as the
//!   last one is answered; the figure is the responses per second sustained.
//!
//! Every run waits for the requests still in flight at the deadline (`-w`), so none is counted
//! as aborted; oha's JSON (`--output-format json --stats-success-breakdown`) gives the latency
//! percentiles of the 2xx responses, the status codes and the transport errors.

use std::collections::BTreeMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::scenarios::Percentiles;

/// The oha executable and its version (`oha --version`).
#[derive(Debug, Clone)]
pub struct Oha {
    pub path: PathBuf,
    pub version: String,
    /// Connections (`-c`), open and closed loop alike.
    pub connections: usize,
}

/// One request, sent again and again.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    /// Sent as `-H "name: value"`.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

/// How oha sends.
#[derive(Debug, Clone, Copy)]
pub enum Load {
    /// `-q rate --latency-correction`.
    Open { rate: f64 },
    /// No rate limit: each connection sends again as soon as it is answered.
    Closed,
}

/// What one oha run measured (from its JSON), and what it cost.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// The command line, for the record.
    pub command: String,
    /// 2xx responses.
    pub ok: u64,
    /// Non-2xx responses plus transport errors.
    pub errors: u64,
    /// 2xx responses per second over oha's whole run.
    pub ok_per_sec: f64,
    /// oha's own `requestsPerSec`: every request, answered or not, per second.
    pub requests_per_sec: f64,
    /// oha's own `successRate`: the share of requests that got any HTTP answer.
    pub success_rate: f64,
    /// oha's own `summary.total`, seconds.
    pub seconds: f64,
    /// Latency of the 2xx responses, ms (oha's latency-corrected figure in open loop).
    pub latency_ms: Percentiles,
    /// HTTP status code → responses.
    pub status_codes: BTreeMap<String, u64>,
    /// Transport error → count.
    pub error_distribution: BTreeMap<String, u64>,
    /// oha's own CPU (user + system, from `wait4`), seconds, and its peak RSS, MiB.
    pub cpu_seconds: f64,
    pub peak_rss_mib: f64,
    /// From spawning oha to its exit.
    pub wall_seconds: f64,
}

impl Report {
    /// The first failure, for the step's `first_error`.
    pub fn first_error(&self) -> Option<String> {
        self.status_codes
            .iter()
            .find(|(code, _)| !code.starts_with('2'))
            .map(|(code, n)| format!("HTTP {code} ({n} responses)"))
            .or_else(|| {
                self.error_distribution
                    .iter()
                    .next()
                    .map(|(error, n)| format!("{error} ({n} times)"))
            })
    }
}

impl Oha {
    /// The executable at `path`, whose `--version` must answer.
    pub fn new(path: &Path, connections: usize) -> anyhow::Result<Self> {
        let output = Command::new(path)
            .arg("--version")
            .output()
            .with_context(|| format!("running {} --version", path.display()))?;
        if !output.status.success() {
            bail!("{} --version failed: {}", path.display(), output.status);
        }
        let version = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .last()
            .unwrap_or("unknown")
            .to_string();
        Ok(Self {
            path: path.to_path_buf(),
            version,
            connections,
        })
    }

    pub(crate) fn arguments(
        &self,
        request: &Request,
        load: Load,
        duration: Duration,
    ) -> Vec<String> {
        let mut args = vec![
            "--no-tui".to_string(),
            "--output-format".into(),
            "json".into(),
            "--stats-success-breakdown".into(),
            "-c".into(),
            self.connections.to_string(),
            "-z".into(),
            format!("{}ms", duration.as_millis().max(1)),
            "-w".into(),
            "-t".into(),
            "20s".into(),
            "-m".into(),
            "POST".into(),
        ];
        if let Load::Open { rate } = load {
            args.extend([
                "-q".into(),
                format!("{rate}"),
                "--latency-correction".into(),
            ]);
        }
        for (name, value) in &request.headers {
            args.extend(["-H".into(), format!("{name}: {value}")]);
        }
        args.extend([
            "-d".into(),
            String::from_utf8_lossy(&request.body).into_owned(),
            request.url.clone(),
        ]);
        args
    }

    /// Runs oha once (blocking: call it from `spawn_blocking`) and reads its JSON.
    pub fn run(&self, request: &Request, load: Load, duration: Duration) -> anyhow::Result<Report> {
        let args = self.arguments(request, load, duration);
        let started = Instant::now();
        let mut child = Command::new(&self.path)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", self.path.display()))?;
        let pid = child.id();
        let mut stderr = child.stderr.take().context("oha's stderr")?;
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let mut stdout = Vec::new();
        child
            .stdout
            .take()
            .context("oha's stdout")?
            .read_to_end(&mut stdout)?;
        let (status, cpu_seconds, peak_rss_mib) = reap(pid)?;
        let wall_seconds = started.elapsed().as_secs_f64();
        let stderr = stderr.join().unwrap_or_default();
        if status != 0 {
            bail!(
                "oha exited with status {status}: {}",
                stderr.trim().chars().take(400).collect::<String>()
            );
        }
        let json: Value = serde_json::from_slice(&stdout).with_context(|| {
            format!(
                "oha's output is not JSON: {}",
                String::from_utf8_lossy(&stdout)
                    .chars()
                    .take(400)
                    .collect::<String>()
            )
        })?;
        let mut report = parse(&json)?;
        report.command = command_line(&self.path, &args);
        report.cpu_seconds = cpu_seconds;
        report.peak_rss_mib = peak_rss_mib;
        report.wall_seconds = (wall_seconds * 1000.0).round() / 1000.0;
        Ok(report)
    }
}

/// How the command is quoted in the JSON (the body and the key's secret shortened).
fn command_line(path: &Path, args: &[String]) -> String {
    let mut out = path.display().to_string();
    for arg in args {
        let shown = if arg.starts_with("authorization: Bearer ") {
            "authorization: Bearer …".to_string()
        } else if arg.starts_with('{') && arg.len() > 60 {
            format!("{}…", arg.chars().take(60).collect::<String>())
        } else {
            arg.clone()
        };
        if shown.contains(' ') || shown.contains('"') {
            out.push_str(&format!(" '{shown}'"));
        } else {
            out.push(' ');
            out.push_str(&shown);
        }
    }
    out
}

/// Waits for the child `pid`: its exit status, CPU seconds (user + system) and peak RSS (MiB),
/// from `wait4` (the child is gone once it exits, so `/proc` no longer has it).
fn reap(pid: u32) -> anyhow::Result<(i32, f64, f64)> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data that wait4 fills in; an all-zero one is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child `pid`, writing into the two locals above.
        let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if reaped == pid as libc::pid_t {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            bail!("waiting for oha: {error}");
        }
    }
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((
        code,
        seconds(usage.ru_utime) + seconds(usage.ru_stime),
        usage.ru_maxrss as f64 / 1024.0,
    ))
}

/// The figures of oha's JSON (`--output-format json --stats-success-breakdown`, 1.16).
pub fn parse(json: &Value) -> anyhow::Result<Report> {
    let number = |v: &Value| v.as_f64();
    let counts = |v: &Value| -> BTreeMap<String, u64> {
        v.as_object()
            .map(|o| {
                o.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let summary = &json["summary"];
    let seconds = number(&summary["total"]).context("oha's JSON has no summary.total")?;
    let status_codes = counts(&json["statusCodeDistribution"]);
    let error_distribution = counts(&json["errorDistribution"]);
    let ok: u64 = status_codes
        .iter()
        .filter(|(code, _)| code.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    let not_ok: u64 = status_codes
        .iter()
        .filter(|(code, _)| !code.starts_with('2'))
        .map(|(_, n)| n)
        .sum();
    // The 2xx responses' percentiles (seconds); oha writes null where there were none.
    let percentiles = if json["latencyPercentilesSuccessful"].is_object() {
        &json["latencyPercentilesSuccessful"]
    } else {
        &json["latencyPercentiles"]
    };
    let ms = |key: &str| {
        number(&percentiles[key])
            .map(|s| (s * 1e6).round() / 1e3)
            .unwrap_or(0.0)
    };
    Ok(Report {
        command: String::new(),
        ok,
        errors: not_ok + error_distribution.values().sum::<u64>(),
        ok_per_sec: ((ok as f64 / seconds.max(1e-3)) * 10.0).round() / 10.0,
        requests_per_sec: number(&summary["requestsPerSec"]).unwrap_or(0.0),
        success_rate: number(&summary["successRate"]).unwrap_or(0.0),
        seconds,
        latency_ms: Percentiles {
            p50: ms("p50"),
            p90: ms("p90"),
            p99: ms("p99"),
            p999: ms("p99.9"),
        },
        status_codes,
        error_distribution,
        cpu_seconds: 0.0,
        peak_rss_mib: 0.0,
        wall_seconds: 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_json_of_oha_1_16_gives_2xx_latency_status_codes_and_errors() {
        let json = json!({
            "summary": {"successRate": 1.0, "total": 2.0, "requestsPerSec": 1001.5},
            "latencyPercentiles": {"p50": 0.0009, "p90": 0.002, "p99": 0.004, "p99.9": 0.01},
            "latencyPercentilesSuccessful": {"p50": 0.0004, "p90": 0.0005, "p99": 0.0009, "p99.9": 0.0021},
            "statusCodeDistribution": {"200": 1990, "429": 10},
            "errorDistribution": {"connection closed": 3}
        });
        let report = parse(&json).unwrap();
        assert_eq!(report.ok, 1990);
        assert_eq!(report.errors, 13);
        assert_eq!(report.ok_per_sec, 995.0);
        assert_eq!(report.latency_ms.p50, 0.4);
        assert_eq!(report.latency_ms.p99, 0.9);
        assert_eq!(report.latency_ms.p999, 2.1);
        assert_eq!(report.first_error().unwrap(), "HTTP 429 (10 responses)");
    }

    #[test]
    fn an_open_loop_run_limits_the_rate_and_corrects_latency_and_hides_the_key() {
        let oha = Oha {
            path: "oha".into(),
            version: "1.16.0".into(),
            connections: 64,
        };
        let request = Request {
            url: "http://127.0.0.1:1/v1/chat/completions".into(),
            headers: vec![("authorization".into(), "Bearer secret".into())],
            body: Bytes::from_static(b"{}"),
        };
        let args = oha.arguments(
            &request,
            Load::Open { rate: 2000.0 },
            Duration::from_secs(3),
        );
        let joined = args.join(" ");
        assert!(joined.contains("-q 2000 --latency-correction"));
        assert!(joined.contains("-c 64 -z 3000ms -w"));
        assert!(joined.ends_with("-d {} http://127.0.0.1:1/v1/chat/completions"));
        let closed = oha.arguments(&request, Load::Closed, Duration::from_secs(3));
        assert!(!closed.iter().any(|a| a == "-q"));
        assert!(!command_line(Path::new("oha"), &args).contains("secret"));
    }
}
