//! The Redis the gateway under test stores its state in: one standalone server, or a Redis
//! Cluster of primaries (no replicas) created with `redis-cli --cluster create`; and what the
//! nodes say about the commands they ran, from `INFO commandstats` and from `MONITOR`, which
//! tells the commands a client sent from those a script ran inside Redis.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::{Deserialize, Serialize};

use crate::processes::{self, Process};

/// Where the gateway's state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Layout {
    Standalone,
    /// A Redis Cluster of this many primaries, no replicas.
    Cluster(usize),
}

impl Layout {
    pub fn name(self) -> String {
        match self {
            Self::Standalone => "standalone".into(),
            Self::Cluster(primaries) => format!("cluster-{primaries}"),
        }
    }
}

/// Running Redis servers, killed when dropped.
pub struct RedisDeployment {
    pub layout: Layout,
    pub nodes: Vec<Process>,
    dir: Option<PathBuf>,
}

impl Drop for RedisDeployment {
    fn drop(&mut self) {
        self.nodes.clear();
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl RedisDeployment {
    pub fn start(layout: Layout, work_dir: &Path) -> anyhow::Result<Self> {
        match layout {
            Layout::Standalone => Ok(Self {
                layout,
                nodes: vec![processes::redis()?],
                dir: None,
            }),
            Layout::Cluster(primaries) => start_cluster(primaries, work_dir),
        }
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The one address a standalone client (the admission scenario) talks to.
    pub fn first_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.nodes[0].port)
    }

    /// How the core is told where Redis is.
    pub fn core_env(&self) -> (&'static str, String) {
        match self.layout {
            Layout::Standalone => ("OPENCLAW_REDIS_URL", self.first_url()),
            Layout::Cluster(_) => (
                "OPENCLAW_REDIS_CLUSTER_NODES",
                self.ports()
                    .iter()
                    .map(|p| format!("127.0.0.1:{p}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        }
    }

    /// Names and pids for the CPU meter: `redis`, then `redis-2`, `redis-3`, … per node.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let name = if i == 0 {
                    "redis".to_string()
                } else {
                    format!("redis-{}", i + 1)
                };
                (name, n.pid())
            })
            .collect()
    }

    /// `INFO commandstats` of every node: command → calls.
    pub fn commandstats(&self) -> anyhow::Result<Vec<BTreeMap<String, CommandStat>>> {
        self.ports()
            .into_iter()
            .map(|port| Ok(parse_commandstats(&cli(port, &["INFO", "commandstats"])?)))
            .collect()
    }
}

/// A node is also bound on its port + 10000 (the cluster bus). Both come from below the
/// kernel's ephemeral range, as in `tests/support/redis_topologies.rs`: the other processes
/// of the benchmark take their free ports and their outgoing connections from that range, so
/// neither can take a bus port a node is about to bind.
fn cluster_node_port(handed_out: &mut Vec<u16>) -> anyhow::Result<u16> {
    const BUS_OFFSET: u16 = 10000;
    const LOWEST: u16 = 10000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let highest = ephemeral_low.saturating_sub(BUS_OFFSET + 1);
    if highest <= LOWEST + 1000 {
        bail!("the ephemeral port range starts at {ephemeral_low}: no room for cluster ports");
    }
    let mut seed = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    for _ in 0..1000 {
        // xorshift: enough to keep concurrent runs apart.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let port = LOWEST + (seed % u64::from(highest - LOWEST)) as u16;
        let bus = port + BUS_OFFSET;
        if handed_out.contains(&port) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            handed_out.push(port);
            return Ok(port);
        }
    }
    bail!("no free loopback port pair (port, port + {BUS_OFFSET}) for a cluster node")
}

fn start_cluster(primaries: usize, work_dir: &Path) -> anyhow::Result<RedisDeployment> {
    let dir = work_dir.join(format!("cluster-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut handed_out = Vec::new();
    let mut nodes = Vec::new();
    for i in 0..primaries {
        let port = cluster_node_port(&mut handed_out)?;
        let nodes_conf = dir.join(format!("nodes-{i}.conf"));
        let mut command = Command::new("redis-server");
        command.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.display().to_string(),
            "--save",
            "",
            "--appendonly",
            "no",
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            &nodes_conf.display().to_string(),
            "--cluster-node-timeout",
            "5000",
        ]);
        nodes.push(processes::spawn_listening(
            "redis",
            command,
            port,
            Duration::from_secs(10),
        )?);
    }
    let deployment = RedisDeployment {
        layout: Layout::Cluster(primaries),
        nodes,
        dir: Some(dir),
    };
    let addresses: Vec<String> = deployment
        .ports()
        .iter()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
    let created = Command::new("redis-cli")
        .arg("--cluster")
        .arg("create")
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli --cluster create")?;
    let output = String::from_utf8_lossy(&created.stdout);
    if !output.contains("All 16384 slots covered") {
        bail!("redis-cli --cluster create failed: {output}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = deployment.ports().into_iter().all(|port| {
            cli(port, &["CLUSTER", "INFO"]).is_ok_and(|info| {
                info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{primaries}"))
            })
        });
        if ready {
            return Ok(deployment);
        }
        if Instant::now() > deadline {
            bail!("the cluster did not reach cluster_state:ok within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One command through `redis-cli` (no cluster redirection: a node answers for itself).
pub fn cli(port: u16, args: &[&str]) -> anyhow::Result<String> {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running redis-cli")?;
    if !output.status.success() {
        bail!(
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// One line of `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct CommandStat {
    pub calls: u64,
    /// Time Redis spent in the command, µs (a script's includes the commands it ran).
    pub usec: u64,
}

fn parse_commandstats(text: &str) -> BTreeMap<String, CommandStat> {
    text.lines()
        .filter_map(|line| {
            let (name, fields) = line.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .and_then(|v| v.parse::<u64>().ok())
            };
            Some((
                name.to_string(),
                CommandStat {
                    calls: field("calls")?,
                    usec: field("usec").unwrap_or(0),
                },
            ))
        })
        .collect()
}

/// `after − before`, per command, summed over the nodes; the `INFO` calls that took the
/// snapshots left out.
pub fn commandstats_delta(
    before: &[BTreeMap<String, CommandStat>],
    after: &[BTreeMap<String, CommandStat>],
) -> BTreeMap<String, CommandStat> {
    let mut delta: BTreeMap<String, CommandStat> = BTreeMap::new();
    for (b, a) in before.iter().zip(after) {
        for (name, stat) in a {
            if name == "info" {
                continue;
            }
            let was = b.get(name).copied().unwrap_or_default();
            let entry = delta.entry(name.clone()).or_default();
            entry.calls += stat.calls.saturating_sub(was.calls);
            entry.usec += stat.usec.saturating_sub(was.usec);
        }
    }
    delta.retain(|_, s| s.calls > 0);
    delta
}

// ---------------------------------------------------------------- MONITOR

/// What `MONITOR` saw on every node while it ran: each command with the shapes of the keys it
/// named, whether a client sent it or a script ran it, and on which node.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tally {
    /// `client` or `script` → `COMMAND key-shape …` → count.
    pub commands: BTreeMap<String, BTreeMap<String, u64>>,
    /// Node port → commands clients sent to it.
    pub client_by_node: BTreeMap<u16, u64>,
    /// Node port → commands scripts ran on it.
    pub script_by_node: BTreeMap<u16, u64>,
    /// The first command of each shape a client sent, word for word (to replay it).
    #[serde(skip)]
    pub samples: BTreeMap<String, Vec<String>>,
}

impl Tally {
    pub fn client_total(&self) -> u64 {
        self.client_by_node.values().sum()
    }

    pub fn script_total(&self) -> u64 {
        self.script_by_node.values().sum()
    }

    fn note(&mut self, port: u16, line: &str) {
        let Some((source, words)) = parse_monitor_line(line) else {
            return;
        };
        let Some(command) = words.first().map(|c| c.to_ascii_uppercase()) else {
            return;
        };
        if command == "MONITOR" {
            return;
        }
        let from_script = source == "lua";
        let keys: Vec<&String> = match command.as_str() {
            "EVALSHA" | "EVAL" | "EVALSHA_RO" | "EVAL_RO" | "FCALL" => {
                let n = words
                    .get(2)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(0);
                words.iter().skip(3).take(n).collect()
            }
            "XREAD" | "XREADGROUP" => words
                .iter()
                .position(|w| w.eq_ignore_ascii_case("STREAMS"))
                .and_then(|i| words.get(i + 1))
                .into_iter()
                .collect(),
            "PING" | "INFO" | "CLUSTER" | "CLIENT" | "READONLY" | "SCRIPT" | "HELLO" | "SELECT"
            | "AUTH" | "TIME" | "COMMAND" | "ASKING" => Vec::new(),
            _ => words.get(1).into_iter().collect(),
        };
        let mut shape = command.clone();
        if command.starts_with("EVAL")
            && let Some(sha) = words.get(1)
        {
            shape.push(' ');
            shape.push_str(&sha.chars().take(8).collect::<String>());
        }
        for key in keys {
            shape.push(' ');
            shape.push_str(&key_shape(key));
        }
        if !from_script && !self.samples.contains_key(&shape) {
            self.samples.insert(shape.clone(), words.clone());
        }
        let source = if from_script { "script" } else { "client" };
        *self
            .commands
            .entry(source.to_string())
            .or_default()
            .entry(shape)
            .or_default() += 1;
        let by_node = if from_script {
            &mut self.script_by_node
        } else {
            &mut self.client_by_node
        };
        *by_node.entry(port).or_default() += 1;
    }
}

/// `+1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "ab12" "1" "k"` → (`127.0.0.1:5000`,
/// the words unquoted); a script's commands say `[0 lua]`.
fn parse_monitor_line(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.strip_prefix('+')?;
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let source = line[open + 1..close].split_whitespace().nth(1)?.to_string();
    let mut words = Vec::new();
    let mut chars = line[close + 1..].chars();
    while let Some(c) = chars.next() {
        if c != '"' {
            continue;
        }
        let mut word = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('x') => {
                        let hex: String = chars.by_ref().take(2).collect();
                        word.push(u8::from_str_radix(&hex, 16).map_or('?', char::from));
                    }
                    Some('n') => word.push('\n'),
                    Some(other) => word.push(other),
                    None => break,
                },
                c => word.push(c),
            }
        }
        words.push(word);
    }
    Some((source, words))
}

/// A key with its identifiers replaced by `*`: `oc:rl:{3f2a…}:log` → `oc:rl:{*}:log`. A part of
/// the key counts as an identifier when it is 6 or more characters of hex digits, digits and
/// dashes, or when it sits inside a `{…}` hash tag that is not a fixed word.
fn key_shape(key: &str) -> String {
    let mut out = String::new();
    let mut rest = key;
    // Hash tags: keep fixed tags (`{sched}`, `{stats}`), starred otherwise.
    while let Some(open) = rest.find('{') {
        let Some(len) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&star_ids(&rest[..open]));
        let tag = &rest[open + 1..open + len];
        if tag.chars().all(|c| c.is_ascii_lowercase()) {
            out.push_str(&format!("{{{tag}}}"));
        } else {
            out.push_str("{*}");
        }
        rest = &rest[open + len + 1..];
    }
    out.push_str(&star_ids(rest));
    out
}

fn star_ids(text: &str) -> String {
    text.split(':')
        .map(|part| {
            let id_like = part.len() >= 6
                && part
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == '-' || c == '_');
            if id_like { "*" } else { part }
        })
        .collect::<Vec<_>>()
        .join(":")
}

/// `MONITOR` on every node, read by one thread per node until [`Monitor::stop`].
pub struct Monitor {
    streams: Vec<TcpStream>,
    threads: Vec<std::thread::JoinHandle<()>>,
    tally: Arc<Mutex<Tally>>,
}

impl Monitor {
    pub fn start(ports: &[u16]) -> anyhow::Result<Self> {
        let tally = Arc::new(Mutex::new(Tally::default()));
        let mut streams = Vec::new();
        let mut threads = Vec::new();
        for &port in ports {
            let mut stream = TcpStream::connect(("127.0.0.1", port))?;
            stream.write_all(b"MONITOR\r\n")?;
            let mut reader = BufReader::new(stream.try_clone()?);
            let mut ok = String::new();
            reader.read_line(&mut ok)?;
            if !ok.starts_with("+OK") {
                bail!("MONITOR on {port}: {ok}");
            }
            streams.push(stream);
            let tally = tally.clone();
            threads.push(std::thread::spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if let Ok(mut tally) = tally.lock() {
                                tally.note(port, line.trim_end());
                            }
                        }
                    }
                }
            }));
        }
        Ok(Self {
            streams,
            threads,
            tally,
        })
    }

    /// Stops reading (after a moment for the lines already on their way) and returns the tally.
    pub fn stop(self) -> Tally {
        std::thread::sleep(Duration::from_millis(300));
        for stream in &self.streams {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        self.tally.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_monitor_line_names_its_source_and_its_words() {
        let (source, words) = parse_monitor_line(
            r#"+1700000000.123456 [0 127.0.0.1:5000] "EVALSHA" "ab12" "1" "oc:rl:{k\"1}:log""#,
        )
        .unwrap();
        assert_eq!(source, "127.0.0.1:5000");
        assert_eq!(words, ["EVALSHA", "ab12", "1", "oc:rl:{k\"1}:log"]);
        let (source, _) = parse_monitor_line(r#"+1.0 [0 lua] "HGET" "k" "f""#).unwrap();
        assert_eq!(source, "lua");
    }

    #[test]
    fn keys_are_shaped_without_their_identifiers() {
        assert_eq!(key_shape("oc:rl:{0f3a9c2e11}:log"), "oc:rl:{*}:log");
        assert_eq!(key_shape("oc:{sched}:due"), "oc:{sched}:due");
        assert_eq!(key_shape("oc:{stats}:29612345"), "oc:{stats}:*");
        assert_eq!(key_shape("oc:s:{abc-123/def456}:meta"), "oc:s:{*}:meta");
        assert_eq!(key_shape("oc:keyhash:9f86d081884c7d65"), "oc:keyhash:*");
    }

    #[test]
    fn commandstats_are_read_per_command() {
        let stats = parse_commandstats(
            "# Commandstats\r\ncmdstat_evalsha:calls=12,usec=600,usec_per_call=50.00,rejected_calls=0,failed_calls=0\r\ncmdstat_client|setinfo:calls=2,usec=1,usec_per_call=0.5\r\n",
        );
        assert_eq!(stats["evalsha"].calls, 12);
        assert_eq!(stats["evalsha"].usec, 600);
        assert_eq!(stats["client|setinfo"].calls, 2);
    }
}
