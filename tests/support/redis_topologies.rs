//! Redis as it is deployed beside the gateway: a Cluster of primaries with replicas, a
//! Sentinel group watching a primary and its replica, and servers that speak only TLS, each
//! optionally behind a password or an ACL user. Every helper starts real `redis-server`
//! processes on free loopback ports and returns only once they are usable (cluster slots
//! covered, replicas in sync, Sentinels aware of each other), so a test can start clients at
//! once. Server output goes to log files in the helper's temporary folder; a failed wait
//! panics with the tail of the logs that explain it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::io::Read as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Process, free_port, listening};

/// How long a cluster node may be unreachable before its peers count it as failing. Short so
/// that a failover takes a few seconds; not shorter, because a node starved of CPU for a moment
/// on a busy two-core runner must not be failed over by mistake.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(2000);

/// How long a Sentinel waits for a PING answer before it judges an instance down; short for
/// the same reason as `CLUSTER_NODE_TIMEOUT`.
pub const SENTINEL_DOWN_AFTER: Duration = Duration::from_millis(1500);

/// How long a Sentinel gives a failover before another may try again (after twice this). Short,
/// so that a split vote in the leader election costs seconds, not the default three minutes.
pub const SENTINEL_FAILOVER_TIMEOUT: Duration = Duration::from_millis(3000);

/// How long starting a topology may take before the test fails.
const START_WITHIN: Duration = Duration::from_secs(40);

/// How long one `redis-cli` call may take: a stuck call must fail the wait, not hang the test.
const CLI_TIMEOUT: Duration = Duration::from_secs(10);

const POLL: Duration = Duration::from_millis(100);

// ---------------------------------------------------------------- security options

/// Credentials every data node of a topology requires.
#[derive(Clone, Debug)]
pub struct RedisAuth {
    /// An ACL user (`user <name> on >password ~* &* +@all`, the `default` user switched off);
    /// `None` protects the `default` user with `requirepass` instead.
    pub user: Option<String>,
    pub password: String,
}

impl RedisAuth {
    pub fn password(password: &str) -> Self {
        Self {
            user: None,
            password: password.to_string(),
        }
    }

    pub fn acl_user(user: &str, password: &str) -> Self {
        Self {
            user: Some(user.to_string()),
            password: password.to_string(),
        }
    }
}

/// How a topology protects itself. `Default` is plain TCP without credentials.
#[derive(Clone, Debug, Default)]
pub struct TopologyOptions {
    /// Credentials on every data node (primaries and replicas, which also use them to
    /// replicate); Sentinels watch with them and do not require any themselves.
    pub auth: Option<RedisAuth>,
    /// Every port of the topology speaks TLS only, with the server certificate of this
    /// material; nodes replicate, gossip and watch each other over TLS too.
    pub tls: Option<TlsMaterial>,
    /// Clients must present a certificate the material's CA signed (`tls-auth-clients yes`).
    pub require_client_cert: bool,
}

impl TopologyOptions {
    /// The `redis-cli` that can talk to this topology: TLS with the material's CA and client
    /// certificate, and the credentials.
    pub fn cli(&self) -> RedisCli {
        let mut cli = match &self.tls {
            Some(tls) => RedisCli::tls(&tls.ca_cert, Some((&tls.client_cert, &tls.client_key))),
            None => RedisCli::plain(),
        };
        if let Some(auth) = &self.auth {
            cli = cli.auth(auth.user.as_deref(), &auth.password);
        }
        cli
    }

    /// The `redis-cli` Sentinels are asked with: the same transport, no credentials.
    fn sentinel_cli(&self) -> RedisCli {
        Self {
            auth: None,
            ..self.clone()
        }
        .cli()
    }

    /// `redis-server` arguments for a data node on `port` keeping its files in `dir`: how it
    /// listens, its credentials, and nothing on disk.
    fn server_args(&self, port: u16, dir: &Path) -> Vec<String> {
        let port = port.to_string();
        let mut args = flags(&[
            ("bind", "127.0.0.1"),
            ("dir", path_str(dir)),
            ("appendonly", "no"),
            ("save", ""),
            // Replicas sync at once instead of waiting five seconds for more to join.
            ("repl-diskless-sync-delay", "0"),
        ]);
        match &self.tls {
            Some(tls) => args.extend(flags(&[
                ("port", "0"),
                ("tls-port", &port),
                ("tls-cert-file", path_str(&tls.server_cert)),
                ("tls-key-file", path_str(&tls.server_key)),
                ("tls-ca-cert-file", path_str(&tls.ca_cert)),
                ("tls-auth-clients", yes_no(self.require_client_cert)),
                ("tls-replication", "yes"),
            ])),
            None => args.extend(flags(&[("port", &port)])),
        }
        let Some(auth) = &self.auth else {
            return args;
        };
        match &auth.user {
            Some(user) => {
                // One argument per word: redis-server quotes each argument as one word.
                args.extend(["--user", "default", "off"].map(String::from));
                let password = format!(">{}", auth.password);
                args.extend(
                    ["--user", user, "on", &password, "~*", "&*", "+@all"].map(String::from),
                );
                args.extend(flags(&[("masteruser", user)]));
            }
            None => args.extend(flags(&[("requirepass", &auth.password)])),
        }
        args.extend(flags(&[("masterauth", &auth.password)]));
        args
    }
}

/// `--name value` arguments.
fn flags(pairs: &[(&str, &str)]) -> Vec<String> {
    pairs
        .iter()
        .flat_map(|(name, value)| [format!("--{name}"), value.to_string()])
        .collect()
}

fn yes_no(yes: bool) -> &'static str {
    if yes { "yes" } else { "no" }
}

// ---------------------------------------------------------------- redis-cli

/// A `redis-cli` with its connection flags (TLS, credentials), run against one port at a time.
#[derive(Clone, Debug, Default)]
pub struct RedisCli {
    flags: Vec<String>,
}

impl RedisCli {
    pub fn plain() -> Self {
        Self::default()
    }

    /// TLS trusting `ca`, presenting `client` (certificate, key) when given.
    pub fn tls(ca: &Path, client: Option<(&Path, &Path)>) -> Self {
        let mut flags = vec!["--tls".to_string(), "--cacert".to_string(), path_string(ca)];
        if let Some((cert, key)) = client {
            flags.extend([
                "--cert".to_string(),
                path_string(cert),
                "--key".to_string(),
                path_string(key),
            ]);
        }
        Self { flags }
    }

    pub fn auth(mut self, user: Option<&str>, password: &str) -> Self {
        if let Some(user) = user {
            self.flags.extend(["--user".to_string(), user.to_string()]);
        }
        self.flags.extend([
            "-a".to_string(),
            password.to_string(),
            "--no-auth-warning".to_string(),
        ]);
        self
    }

    /// One command against `127.0.0.1:port`; its raw output, or what went wrong (connection
    /// refused, TLS handshake, an error reply, a timeout).
    pub fn run(&self, port: u16, args: &[&str]) -> Result<String, String> {
        self.run_with(port, &[], args, None)
    }

    /// One command following the cluster's `MOVED`/`ASK` redirections (`redis-cli -c`).
    pub fn run_in_cluster(&self, port: u16, args: &[&str]) -> Result<String, String> {
        self.run_with(port, &["-c"], args, None)
    }

    /// Several commands on one connection (so `WAIT` sees the `SET` before it, or `READONLY`
    /// applies to the `GET` after it): each inner slice one command, no argument with spaces.
    pub fn run_session(&self, port: u16, commands: &[&[&str]]) -> Result<String, String> {
        let script: String = commands
            .iter()
            .map(|command| command.join(" ") + "\n")
            .collect();
        self.run_with(port, &[], &[], Some(script))
    }

    fn run_with(
        &self,
        port: u16,
        mode: &[&str],
        args: &[&str],
        stdin: Option<String>,
    ) -> Result<String, String> {
        let mut command = Command::new("redis-cli");
        command
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-e"])
            .args(&self.flags)
            .args(mode)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        run_bounded(command, stdin, CLI_TIMEOUT)
            .map_err(|e| format!("redis-cli -p {port} {}: {e}", args.join(" ")))
    }
}

/// Runs `command` to its end within `within`; its stdout, or its stdout and stderr when it
/// fails or takes too long (then it is killed).
fn run_bounded(
    mut command: Command,
    stdin: Option<String>,
    within: Duration,
) -> Result<String, String> {
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start: {e}"))?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write as _;
        let _ = pipe.write_all(script.as_bytes());
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let deadline = Instant::now() + within;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    match status {
        Some(status) if status.success() => Ok(stdout),
        Some(status) => Err(format!("{status}: {}{}", stdout.trim(), stderr.trim())),
        None => Err(format!(
            "no answer within {within:?}: {}{}",
            stdout.trim(),
            stderr.trim()
        )),
    }
}

fn drain(pipe: Option<impl std::io::Read + Send + 'static>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

// ---------------------------------------------------------------- processes and waits

/// Starts `redis-server args` with its output in `log`, and waits until it accepts TCP
/// connections on `port`. `Err` when it exits first (usually: the port was taken meanwhile).
fn spawn_server(name: &str, port: u16, args: &[String], log: &Path) -> Result<Process, String> {
    let out = File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out
        .try_clone()
        .map_err(|e| format!("clone {}: {e}", log.display()))?;
    let child = Command::new("redis-server")
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("redis-server must be installed for these tests (apt-get install redis-server)");
    let mut process = Process {
        child,
        port,
        metrics_port: 0,
        name: name.to_string(),
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if listening(port) {
            return Ok(process);
        }
        if let Ok(Some(status)) = process.child.try_wait() {
            return Err(format!(
                "{name} exited before listening on port {port}: {status}\n{}",
                log_tail(log)
            ));
        }
        if Instant::now() >= deadline {
            panic!(
                "{name} did not listen on port {port} within 20 s\n{}",
                log_tail(log)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a server on a port `pick_port` chooses, choosing again when the port turns out to be
/// taken by another process between choosing and binding.
fn spawn_server_on_free_port(
    name: &str,
    dir: &Path,
    pick_port: impl Fn() -> u16,
    args: impl Fn(u16) -> Vec<String>,
) -> Process {
    let mut failures = Vec::new();
    for _ in 0..5 {
        let port = pick_port();
        let log = dir.join(format!("{name}-{port}.log"));
        match spawn_server(name, port, &args(port), &log) {
            Ok(process) => return process,
            Err(e) => failures.push(e),
        }
    }
    panic!(
        "{name} could not start on five free ports:\n{}",
        failures.join("\n")
    );
}

/// The last lines of a server log, for a panic message.
fn log_tail(log: &Path) -> String {
    let mut text = String::new();
    let _ = File::open(log).and_then(|mut f| f.read_to_string(&mut text));
    let lines: Vec<&str> = text.lines().collect();
    let tail = &lines[lines.len().saturating_sub(25)..];
    format!("--- tail of {} ---\n{}", log.display(), tail.join("\n"))
}

/// Polls `check` until it yields, or returns its last complaint once `within` has passed.
fn poll<T>(within: Duration, mut check: impl FnMut() -> Result<T, String>) -> Result<T, String> {
    let deadline = Instant::now() + within;
    loop {
        match check() {
            Ok(value) => return Ok(value),
            Err(last) if Instant::now() >= deadline => return Err(last),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temporary paths are UTF-8")
}

fn path_string(path: &Path) -> String {
    path_str(path).to_string()
}

fn temp_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .expect("temporary folder")
}

/// `field:value` from `INFO` output.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .map(str::trim)
}

// ---------------------------------------------------------------- cluster

/// A cluster node also binds its port + 10000 (the cluster bus). Both come from below the
/// kernel's ephemeral range (32768-60999 by default, so nodes on 10000-22767, buses on
/// 20000-32767): `free_port()` and every outgoing connection get ports from that range, so
/// neither can take a bus port a node is about to bind. `free_port()` itself cannot serve here:
/// Linux gives `bind(0)` with `SO_REUSEADDR` a port from the lower half of the range first,
/// where a port plus 10000 is again an ephemeral port. The choice is random, so that concurrent test processes
/// rarely meet; a node whose ports were taken anyway fails to start and is started elsewhere.
fn cluster_node_port() -> u16 {
    const BUS_OFFSET: u16 = 10000;
    const LOWEST: u16 = 10000;
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let highest = ephemeral_low.saturating_sub(BUS_OFFSET + 1);
    assert!(
        highest > LOWEST + 1000,
        "the ephemeral port range starts at {ephemeral_low}: no room below it for cluster ports"
    );
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = LOWEST + (random_u64() % u64::from(highest - LOWEST)) as u16;
        let bus = port + BUS_OFFSET;
        if handed_out.contains(&port) || handed_out.contains(&bus) {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", bus)).is_ok()
        {
            handed_out.extend([port, bus]);
            return port;
        }
    }
    panic!("no free loopback port pair (port, port + {BUS_OFFSET}) for a cluster node");
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish()
}

/// One line of `CLUSTER NODES`.
#[derive(Clone, Debug)]
struct ClusterNode {
    id: String,
    port: u16,
    flags: Vec<String>,
    /// The id of the primary this node replicates; `None` for a primary.
    primary_id: Option<String>,
    connected: bool,
    /// Owned slot ranges, inclusive.
    slots: Vec<(u16, u16)>,
}

impl ClusterNode {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    fn is_healthy(&self) -> bool {
        !["fail", "fail?", "handshake", "noaddr"]
            .iter()
            .any(|f| self.has(f))
            && self.connected
    }
}

fn parse_cluster_nodes(text: &str) -> Result<Vec<ClusterNode>, String> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let bad = || format!("unexpected CLUSTER NODES line: {line}");
            if fields.len() < 8 {
                return Err(bad());
            }
            // ip:port@cport[,hostname]
            let port = fields[1]
                .split('@')
                .next()
                .and_then(|addr| addr.rsplit(':').next())
                .and_then(|p| p.parse().ok())
                .ok_or_else(bad)?;
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('[')) // slots being migrated
                .map(|s| {
                    let (start, end) = s.split_once('-').unwrap_or((s, s));
                    Some((start.parse().ok()?, end.parse().ok()?))
                })
                .collect::<Option<Vec<(u16, u16)>>>()
                .ok_or_else(bad)?;
            Ok(ClusterNode {
                id: fields[0].to_string(),
                port,
                flags: fields[2].split(',').map(str::to_string).collect(),
                primary_id: (fields[3] != "-").then(|| fields[3].to_string()),
                connected: fields[7] == "connected",
                slots,
            })
        })
        .collect()
}

/// A Redis Cluster on loopback: `primaries` primaries sharing the 16384 slots, each with
/// `replicas_per_primary` replicas. Every node is killed when this drops.
///
/// Nodes run with `cluster-replica-validity-factor 0`, so a replica takes over however long it
/// was cut off from its primary (a test that kills nodes in a row must still see failovers),
/// and `cluster-allow-reads-when-down no` with full coverage required, so that a cluster with
/// an orphaned slot refuses every command and `cluster_state` says whether it can serve.
pub struct RedisCluster {
    nodes: Vec<Process>,
    ids: HashMap<u16, String>,
    killed_at: HashMap<u16, Instant>,
    primaries: usize,
    replicas_per_primary: usize,
    cli: RedisCli,
    options: TopologyOptions,
    dir: tempfile::TempDir,
}

impl RedisCluster {
    /// Plain TCP, no credentials.
    pub fn start(primaries: usize, replicas_per_primary: usize) -> RedisCluster {
        Self::start_with(primaries, replicas_per_primary, &TopologyOptions::default())
    }

    pub fn start_with(
        primaries: usize,
        replicas_per_primary: usize,
        options: &TopologyOptions,
    ) -> RedisCluster {
        assert!(
            primaries >= 3,
            "a Redis Cluster needs at least three primaries"
        );
        let dir = temp_dir("redis-cluster-");
        let count = primaries * (1 + replicas_per_primary);
        let nodes: Vec<Process> = (0..count)
            .map(|_| {
                spawn_server_on_free_port("cluster-node", dir.path(), cluster_node_port, |port| {
                    let nodes_conf = dir.path().join(format!("nodes-{port}.conf"));
                    let mut args = options.server_args(port, dir.path());
                    args.extend(flags(&[
                        ("cluster-enabled", "yes"),
                        ("cluster-config-file", path_str(&nodes_conf)),
                        (
                            "cluster-node-timeout",
                            &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                        ),
                        ("cluster-replica-validity-factor", "0"),
                        ("cluster-allow-reads-when-down", "no"),
                        ("cluster-require-full-coverage", "yes"),
                        ("tls-cluster", yes_no(options.tls.is_some())),
                    ]));
                    args
                })
            })
            .collect();
        let mut cluster = RedisCluster {
            nodes,
            ids: HashMap::new(),
            killed_at: HashMap::new(),
            primaries,
            replicas_per_primary,
            cli: options.cli(),
            options: options.clone(),
            dir,
        };
        cluster.create();
        cluster.wait_until_serving();
        cluster
    }

    fn create(&mut self) {
        let addresses: Vec<String> = self
            .ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let replicas = self.replicas_per_primary.to_string();
        let mut args: Vec<&str> = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", &replicas, "--cluster-yes"]);
        let mut command = Command::new("redis-cli");
        command
            .args(&self.cli.flags)
            .args(&args)
            .stdin(Stdio::null());
        let log = self.dir.path().join("cluster-create.log");
        let result = run_bounded(command, None, START_WITHIN);
        let output = match &result {
            Ok(out) => out.clone(),
            Err(e) => e.clone(),
        };
        let _ = std::fs::write(&log, &output);
        if result.is_err() || !output.contains("All 16384 slots covered") {
            panic!(
                "redis-cli --cluster create failed:\n{}\n{}",
                log_tail(&log),
                self.node_log_tails()
            );
        }
        for port in self.ports() {
            let id = self
                .redis_cli(port, &["CLUSTER", "MYID"])
                .trim()
                .to_string();
            self.ids.insert(port, id);
        }
    }

    /// Until every node sees every other healthy, the slots covered, each primary with its
    /// replicas, and every replica synchronised.
    fn wait_until_serving(&self) {
        let expected_nodes = self.nodes.len();
        let result = poll(START_WITHIN, || {
            for port in self.ports() {
                let info = self.cli.run(port, &["CLUSTER", "INFO"])?;
                if info_field(&info, "cluster_state") != Some("ok") {
                    return Err(format!("{port}: cluster_state is not ok:\n{info}"));
                }
                let nodes = parse_cluster_nodes(&self.cli.run(port, &["CLUSTER", "NODES"])?)?;
                if nodes.len() != expected_nodes || !nodes.iter().all(ClusterNode::is_healthy) {
                    return Err(format!("{port} does not see every node healthy: {nodes:?}"));
                }
                let serving = nodes
                    .iter()
                    .filter(|n| n.has("master") && !n.slots.is_empty())
                    .count();
                let replicas = nodes.iter().filter(|n| n.has("slave")).count();
                if serving != self.primaries
                    || replicas != self.primaries * self.replicas_per_primary
                {
                    return Err(format!(
                        "{port} sees {serving} primaries and {replicas} replicas"
                    ));
                }
                let replication = self.cli.run(port, &["INFO", "replication"])?;
                let in_sync = match info_field(&replication, "role") {
                    Some("slave") => {
                        info_field(&replication, "master_link_status") == Some("up")
                            && info_field(&replication, "master_sync_in_progress") == Some("0")
                    }
                    _ => {
                        info_field(&replication, "connected_slaves")
                            == Some(self.replicas_per_primary.to_string().as_str())
                    }
                };
                if !in_sync {
                    return Err(format!("{port} is not in sync yet:\n{replication}"));
                }
            }
            Ok(())
        });
        if let Err(last) = result {
            panic!(
                "the cluster did not come up within {START_WITHIN:?}: {last}\n{}",
                self.node_log_tails()
            );
        }
    }

    /// Every node, as clients configure their seed list: `127.0.0.1:p1,127.0.0.1:p2,...`.
    pub fn seeds(&self) -> String {
        self.ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every node's port, killed ones included, in start order.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    /// The ports of the nodes not killed.
    pub fn live_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| !self.killed_at.contains_key(p))
            .collect()
    }

    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }

    /// The `redis-cli` that reaches this cluster's nodes (TLS, credentials).
    pub fn cli(&self) -> &RedisCli {
        &self.cli
    }

    /// The current primaries serving slots, as a live node sees them.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .current_nodes()
            .iter()
            .filter(|n| n.has("master") && !n.has("fail") && !n.slots.is_empty())
            .map(|n| n.port)
            .collect();
        ports.sort_unstable();
        ports
    }

    /// The port of the primary currently serving `key`'s slot.
    pub fn primary_for_key(&self, key: &str) -> u16 {
        let port = self.any_live_port();
        let slot: u16 = self
            .redis_cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT answers a number");
        self.current_nodes()
            .iter()
            .find(|n| {
                n.has("master")
                    && !n.has("fail")
                    && n.slots.iter().any(|&(a, b)| (a..=b).contains(&slot))
            })
            .map(|n| n.port)
            .unwrap_or_else(|| panic!("no live primary serves slot {slot} (key {key:?})"))
    }

    /// The replicas of the primary on `primary`, as a live node sees them.
    pub fn replicas_of(&self, primary: u16) -> Vec<u16> {
        let id = &self.ids[&primary];
        self.current_nodes()
            .iter()
            .filter(|n| n.primary_id.as_ref() == Some(id))
            .map(|n| n.port)
            .collect()
    }

    /// SIGKILLs the node on `port`: no goodbye to its peers, as when a machine dies.
    pub fn kill(&mut self, port: u16) {
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("no cluster node on port {port}"));
        node.kill();
        self.killed_at.insert(port, Instant::now());
    }

    /// Waits until the surviving nodes have failed the killed node, a replica has taken over
    /// its slots (when it served any), and every surviving node reports `cluster_state:ok`.
    /// Returns the time from the kill (from this call when the node was not killed by `kill`).
    pub fn wait_for_failover(&self, killed: u16, within: Duration) -> Duration {
        let since = self
            .killed_at
            .get(&killed)
            .copied()
            .unwrap_or_else(Instant::now);
        let killed_id = self.ids[&killed].clone();
        let result = poll(within, || {
            for port in self.live_ports().into_iter().filter(|&p| p != killed) {
                let nodes = parse_cluster_nodes(&self.cli.run(port, &["CLUSTER", "NODES"])?)?;
                let dead = nodes
                    .iter()
                    .find(|n| n.id == killed_id)
                    .ok_or_else(|| format!("{port} no longer lists node {killed}"))?;
                if !dead.has("fail") || !dead.slots.is_empty() {
                    return Err(format!("{port} still sees {killed} as {dead:?}"));
                }
                let info = self.cli.run(port, &["CLUSTER", "INFO"])?;
                if info_field(&info, "cluster_state") != Some("ok") {
                    return Err(format!("{port}: cluster_state is not ok yet"));
                }
            }
            Ok(())
        });
        if let Err(last) = result {
            panic!(
                "no failover of node {killed} within {within:?}: {last}\n{}",
                self.node_log_tails()
            );
        }
        since.elapsed()
    }

    /// `redis-cli` against one node, with the cluster's TLS and credentials; panics with the
    /// node's log when the command fails.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> String {
        self.cli
            .run(port, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.node_log_tail(port)))
    }

    fn any_live_port(&self) -> u16 {
        *self
            .live_ports()
            .first()
            .expect("every node of the cluster was killed")
    }

    fn current_nodes(&self) -> Vec<ClusterNode> {
        let port = self.any_live_port();
        parse_cluster_nodes(&self.redis_cli(port, &["CLUSTER", "NODES"]))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn node_log_tail(&self, port: u16) -> String {
        log_tail(&self.dir.path().join(format!("cluster-node-{port}.log")))
    }

    fn node_log_tails(&self) -> String {
        self.ports()
            .into_iter()
            .map(|p| self.node_log_tail(p))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------- sentinel

/// Key/value entries of `SENTINEL replicas|sentinels|master` raw output.
fn parse_sentinel_entries(text: &str) -> Vec<HashMap<String, String>> {
    let lines: Vec<&str> = text.lines().collect();
    let mut entries: Vec<HashMap<String, String>> = Vec::new();
    for pair in lines.chunks(2) {
        let [key, value] = pair else { break };
        if *key == "name" || entries.is_empty() {
            entries.push(HashMap::new());
        }
        if let Some(entry) = entries.last_mut() {
            entry.insert(key.to_string(), value.to_string());
        }
    }
    entries
}

/// A primary, its replica and three Sentinels watching them under one master name (quorum 2).
/// Every process is killed when this drops.
pub struct SentinelGroup {
    master_name: String,
    /// The primary as started, then its replica.
    data_nodes: Vec<Process>,
    sentinels: Vec<Process>,
    killed: Option<(u16, Instant)>,
    cli: RedisCli,
    sentinel_cli: RedisCli,
    options: TopologyOptions,
    dir: tempfile::TempDir,
}

impl SentinelGroup {
    /// Plain TCP, no credentials.
    pub fn start(master_name: &str) -> SentinelGroup {
        Self::start_with(master_name, &TopologyOptions::default())
    }

    pub fn start_with(master_name: &str, options: &TopologyOptions) -> SentinelGroup {
        let dir = temp_dir("redis-sentinel-");
        let data_args = |port: u16, primary: Option<u16>| {
            let mut args = options.server_args(port, dir.path());
            if let Some(primary) = primary {
                args.extend(["--replicaof", "127.0.0.1", &primary.to_string()].map(String::from));
            }
            args
        };
        let primary = spawn_server_on_free_port("redis-data", dir.path(), free_port, |port| {
            data_args(port, None)
        });
        let replica = spawn_server_on_free_port("redis-data", dir.path(), free_port, |port| {
            data_args(port, Some(primary.port))
        });
        let mut group = SentinelGroup {
            master_name: master_name.to_string(),
            data_nodes: vec![primary, replica],
            sentinels: Vec::new(),
            killed: None,
            cli: options.cli(),
            sentinel_cli: options.sentinel_cli(),
            options: options.clone(),
            dir,
        };
        // Sentinels learn replicas from the primary's INFO, which they ask for at once on
        // connecting and then every ten seconds: a replica in sync before they start is known
        // to them from the first answer.
        group.wait_for_replica_sync();
        for _ in 0..3 {
            let sentinel =
                spawn_server_on_free_port("sentinel", group.dir.path(), free_port, |port| {
                    let conf = group.write_sentinel_conf(port);
                    vec![path_string(&conf), "--sentinel".to_string()]
                });
            group.sentinels.push(sentinel);
        }
        group.wait_until_watching();
        group
    }

    fn write_sentinel_conf(&self, port: u16) -> PathBuf {
        let name = &self.master_name;
        let primary = self.data_nodes[0].port;
        let mut conf = String::new();
        match &self.options.tls {
            Some(tls) => {
                let auth_clients = yes_no(self.options.require_client_cert);
                conf += &format!(
                    "port 0\ntls-port {port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients {auth_clients}\ntls-replication yes\n",
                    tls.server_cert.display(),
                    tls.server_key.display(),
                    tls.ca_cert.display(),
                );
            }
            None => conf += &format!("port {port}\n"),
        }
        conf += &format!(
            "bind 127.0.0.1\ndir {dir}\n\
             sentinel resolve-hostnames no\nsentinel announce-hostnames no\n\
             sentinel monitor {name} 127.0.0.1 {primary} 2\n\
             sentinel down-after-milliseconds {name} {down}\n\
             sentinel failover-timeout {name} {failover}\n\
             sentinel parallel-syncs {name} 1\n",
            dir = self.dir.path().display(),
            down = SENTINEL_DOWN_AFTER.as_millis(),
            failover = SENTINEL_FAILOVER_TIMEOUT.as_millis(),
        );
        if let Some(auth) = &self.options.auth {
            if let Some(user) = &auth.user {
                conf += &format!("sentinel auth-user {name} {user}\n");
            }
            conf += &format!("sentinel auth-pass {name} {}\n", auth.password);
        }
        // Sentinels rewrite their configuration file, so each has its own.
        let path = self.dir.path().join(format!("sentinel-{port}.conf"));
        std::fs::write(&path, conf).expect("write a sentinel configuration");
        path
    }

    fn wait_for_replica_sync(&self) {
        let replica = self.data_nodes[1].port;
        let result = poll(START_WITHIN, || {
            let info = self.cli.run(replica, &["INFO", "replication"])?;
            if info_field(&info, "master_link_status") == Some("up")
                && info_field(&info, "master_sync_in_progress") == Some("0")
            {
                Ok(())
            } else {
                Err(format!("replica {replica} not in sync:\n{info}"))
            }
        });
        if let Err(last) = result {
            panic!(
                "the replica did not sync within {START_WITHIN:?}: {last}\n{}",
                self.log_tails()
            );
        }
    }

    /// Until every Sentinel knows the primary, its replica (link up) and the two other
    /// Sentinels: only then can a quorum agree on a failover.
    fn wait_until_watching(&self) {
        let name = self.master_name.as_str();
        let result = poll(START_WITHIN, || {
            for sentinel in &self.sentinels {
                let port = sentinel.port;
                let replicas = parse_sentinel_entries(
                    &self
                        .sentinel_cli
                        .run(port, &["SENTINEL", "replicas", name])?,
                );
                let replica_ok = replicas.len() == 1
                    && replicas[0].get("flags").map(String::as_str) == Some("slave")
                    && replicas[0].get("master-link-status").map(String::as_str) == Some("ok");
                if !replica_ok {
                    return Err(format!("sentinel {port} sees replicas {replicas:?}"));
                }
                let others = parse_sentinel_entries(
                    &self
                        .sentinel_cli
                        .run(port, &["SENTINEL", "sentinels", name])?,
                );
                if others.len() != 2 {
                    return Err(format!(
                        "sentinel {port} knows {} other sentinels",
                        others.len()
                    ));
                }
                let master = parse_sentinel_entries(
                    &self.sentinel_cli.run(port, &["SENTINEL", "master", name])?,
                );
                if master
                    .first()
                    .and_then(|m| m.get("flags"))
                    .map(String::as_str)
                    != Some("master")
                {
                    return Err(format!("sentinel {port} sees the master as {master:?}"));
                }
            }
            Ok(())
        });
        if let Err(last) = result {
            panic!(
                "the sentinels did not watch {name} within {START_WITHIN:?}: {last}\n{}",
                self.log_tails()
            );
        }
    }

    /// The Sentinels, as clients configure them: `127.0.0.1:p1,127.0.0.1:p2,127.0.0.1:p3`.
    pub fn sentinels(&self) -> String {
        self.sentinel_ports()
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn sentinel_ports(&self) -> Vec<u16> {
        self.sentinels.iter().map(|s| s.port).collect()
    }

    /// The primary's and the replica's ports, as started.
    pub fn data_ports(&self) -> Vec<u16> {
        self.data_nodes.iter().map(|n| n.port).collect()
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    pub fn options(&self) -> &TopologyOptions {
        &self.options
    }

    /// The `redis-cli` that reaches the primary and the replica (TLS, credentials).
    pub fn cli(&self) -> &RedisCli {
        &self.cli
    }

    /// The `redis-cli` that reaches the Sentinels.
    pub fn sentinel_cli(&self) -> &RedisCli {
        &self.sentinel_cli
    }

    /// The primary's port, as the first Sentinel reports it.
    pub fn primary_port(&self) -> u16 {
        let sentinel = self.sentinels[0].port;
        self.master_addr_from(sentinel)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    /// SIGKILLs the current primary; returns its port.
    pub fn kill_primary(&mut self) -> u16 {
        let port = self.primary_port();
        let node = self
            .data_nodes
            .iter_mut()
            .find(|n| n.port == port)
            .unwrap_or_else(|| panic!("the sentinels name {port}, which this group did not start"));
        node.kill();
        self.killed = Some((port, Instant::now()));
        port
    }

    /// Waits until every Sentinel names a new primary, the same one, and that node says it is
    /// a primary. Returns its port and the time since `kill_primary` (or since this call).
    pub fn wait_for_promotion(&self, within: Duration) -> (u16, Duration) {
        let (killed, since) = self
            .killed
            .unwrap_or_else(|| (self.primary_port(), Instant::now()));
        let result = poll(within, || {
            let mut named = Vec::new();
            for sentinel in self.sentinel_ports() {
                named.push(self.master_addr_from(sentinel)?);
            }
            let new = named[0];
            if new == killed || named.iter().any(|&p| p != new) {
                return Err(format!("the sentinels name {named:?} (killed {killed})"));
            }
            let role = self.cli.run(new, &["ROLE"])?;
            if role.lines().next() != Some("master") {
                return Err(format!("{new} is not a primary yet: {role}"));
            }
            Ok(new)
        });
        match result {
            Ok(new) => (new, since.elapsed()),
            Err(last) => panic!(
                "no promotion within {within:?}: {last}\n{}",
                self.log_tails()
            ),
        }
    }

    /// `redis-cli` against a primary or replica, with the group's TLS and credentials.
    pub fn redis_cli(&self, port: u16, args: &[&str]) -> String {
        self.cli
            .run(port, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    /// `redis-cli` against a Sentinel.
    pub fn sentinel_cli_run(&self, port: u16, args: &[&str]) -> String {
        self.sentinel_cli
            .run(port, args)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tails()))
    }

    fn master_addr_from(&self, sentinel: u16) -> Result<u16, String> {
        let out = self.sentinel_cli.run(
            sentinel,
            &["SENTINEL", "get-master-addr-by-name", &self.master_name],
        )?;
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| format!("sentinel {sentinel} answered {out:?}"))
    }

    fn log_tails(&self) -> String {
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "log"))
                    .collect()
            })
            .unwrap_or_default();
        logs.sort();
        logs.iter()
            .map(|log| log_tail(log))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

// ---------------------------------------------------------------- TLS

/// Certificates made with the `openssl` CLI for one test: a CA, a server certificate it signed
/// for `localhost` and 127.0.0.1 (also usable as a client certificate, as Redis nodes present
/// it to each other), a client certificate it signed, and an unrelated second CA with a client
/// certificate of its own, for the failures a wrong trust store or a stranger's certificate
/// must cause. The files live as long as any clone of this value.
#[derive(Clone, Debug)]
pub struct TlsMaterial {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca_cert: PathBuf,
    pub other_ca_key: PathBuf,
    /// A client certificate the other CA signed.
    pub foreign_client_cert: PathBuf,
    pub foreign_client_key: PathBuf,
    dir: Arc<tempfile::TempDir>,
}

/// Extensions for each kind of certificate: webpki-based clients (rustls) reject a CA without
/// `keyCertSign`, a leaf marked as a CA, or a server certificate without a matching SAN.
const OPENSSL_CONF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

impl TlsMaterial {
    pub fn generate() -> TlsMaterial {
        let dir = temp_dir("redis-tls-");
        let path = |name: &str| dir.path().join(name);
        let conf = path("openssl.cnf");
        std::fs::write(&conf, OPENSSL_CONF).expect("write openssl.cnf");
        let openssl = |args: &[&str]| {
            let mut command = Command::new("openssl");
            command.args(args).stdin(Stdio::null());
            if let Err(e) = run_bounded(command, None, Duration::from_secs(30)) {
                panic!("openssl {}: {e}", args.join(" "));
            }
        };
        let new_ca = |name: &str, subject: &str| {
            openssl(&[
                "req",
                "-x509",
                "-new",
                "-config",
                path_str(&conf),
                "-extensions",
                "ca",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "7",
                "-subj",
                subject,
                "-keyout",
                path_str(&path(&format!("{name}.key"))),
                "-out",
                path_str(&path(&format!("{name}.crt"))),
            ]);
        };
        let new_leaf = |name: &str, subject: &str, ca: &str, extensions: &str, serial: &str| {
            let csr = path(&format!("{name}.csr"));
            openssl(&[
                "req",
                "-new",
                "-config",
                path_str(&conf),
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                subject,
                "-keyout",
                path_str(&path(&format!("{name}.key"))),
                "-out",
                path_str(&csr),
            ]);
            openssl(&[
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&path(&format!("{ca}.crt"))),
                "-CAkey",
                path_str(&path(&format!("{ca}.key"))),
                "-set_serial",
                serial,
                "-days",
                "7",
                "-extfile",
                path_str(&conf),
                "-extensions",
                extensions,
                "-out",
                path_str(&path(&format!("{name}.crt"))),
            ]);
        };
        new_ca("ca", "/CN=OpenClaw Redis test CA");
        new_ca("other-ca", "/CN=Unrelated test CA");
        new_leaf("server", "/CN=localhost", "ca", "server", "4097");
        new_leaf("client", "/CN=openclaw-gateway", "ca", "client", "4098");
        new_leaf(
            "foreign-client",
            "/CN=stranger",
            "other-ca",
            "client",
            "4099",
        );
        TlsMaterial {
            ca_cert: path("ca.crt"),
            ca_key: path("ca.key"),
            server_cert: path("server.crt"),
            server_key: path("server.key"),
            client_cert: path("client.crt"),
            client_key: path("client.key"),
            other_ca_cert: path("other-ca.crt"),
            other_ca_key: path("other-ca.key"),
            foreign_client_cert: path("foreign-client.crt"),
            foreign_client_key: path("foreign-client.key"),
            dir: Arc::new(dir),
        }
    }

    /// The folder holding the files (and the logs of servers started with them).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A `redis-cli` trusting this CA and presenting the client certificate.
    pub fn cli(&self) -> RedisCli {
        RedisCli::tls(&self.ca_cert, Some((&self.client_cert, &self.client_key)))
    }

    /// This material with a server certificate the same CA signed for `dns_name` alone (no
    /// `localhost`, no IP): a server presenting it must be refused by a client that checks
    /// names and connects to `localhost` or 127.0.0.1.
    pub fn with_server_cert_for(&self, dns_name: &str) -> TlsMaterial {
        let path = |name: &str| self.dir().join(name);
        let ext = path(&format!("{dns_name}.ext"));
        std::fs::write(
            &ext,
            format!(
                "basicConstraints = critical,CA:FALSE\nkeyUsage = critical,digitalSignature\n\
                 extendedKeyUsage = serverAuth,clientAuth\nsubjectAltName = DNS:{dns_name}\n"
            ),
        )
        .expect("write the extensions file");
        let (key, csr, cert) = (
            path(&format!("{dns_name}.key")),
            path(&format!("{dns_name}.csr")),
            path(&format!("{dns_name}.crt")),
        );
        let steps: [Vec<&str>; 2] = [
            vec![
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-subj",
                "/CN=elsewhere",
                "-keyout",
                path_str(&key),
                "-out",
                path_str(&csr),
            ],
            vec![
                "x509",
                "-req",
                "-in",
                path_str(&csr),
                "-CA",
                path_str(&self.ca_cert),
                "-CAkey",
                path_str(&self.ca_key),
                "-set_serial",
                "4100",
                "-days",
                "7",
                "-extfile",
                path_str(&ext),
                "-out",
                path_str(&cert),
            ],
        ];
        for args in steps {
            let mut command = Command::new("openssl");
            command.args(&args).stdin(Stdio::null());
            if let Err(e) = run_bounded(command, None, Duration::from_secs(30)) {
                panic!("openssl {}: {e}", args.join(" "));
            }
        }
        TlsMaterial {
            server_cert: cert,
            server_key: key,
            ..self.clone()
        }
    }
}

/// A standalone `redis-server` speaking only TLS (`--port 0`) on a free port, with `material`'s
/// server certificate, requiring a client certificate its CA signed when `require_client_cert`.
/// Returns once a TLS client can PING it; its log is in `material.dir()`.
pub fn start_redis_tls(material: &TlsMaterial, require_client_cert: bool) -> Process {
    let options = TopologyOptions {
        auth: None,
        tls: Some(material.clone()),
        require_client_cert,
    };
    let redis = spawn_server_on_free_port("redis-tls", material.dir(), free_port, |port| {
        options.server_args(port, material.dir())
    });
    let log = material.dir().join(format!("redis-tls-{}.log", redis.port));
    let cli = material.cli();
    if let Err(last) = poll(Duration::from_secs(20), || {
        match cli.run(redis.port, &["PING"])? {
            out if out.trim() == "PONG" => Ok(()),
            out => Err(format!("PING answered {out:?}")),
        }
    }) {
        panic!(
            "TLS redis on {} did not answer PING: {last}\n{}",
            redis.port,
            log_tail(&log)
        );
    }
    redis
}
