//! Shared by the tests that run the built `fjord` binary and real Kafka clients as processes:
//! brokers from generated TOML files (free loopback ports chosen at run time, data in a
//! temporary directory), external clients with a time bound, skipping when a client is
//! missing (unless `FJORD_REQUIRE_CLIENTS` is set, as CI does).
#![allow(
    clippy::disallowed_methods,
    reason = "these tests drive real processes and wait on real time"
)]
#![allow(dead_code, reason = "each test file uses a part of this module")]

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The external clients the tests drive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tool {
    Kcat,
    KafkaPython,
    ConfluentKafka,
}

impl Tool {
    fn available(self) -> bool {
        let (prog, args): (&str, &[&str]) = match self {
            Tool::Kcat => ("kcat", &["-V"]),
            Tool::KafkaPython => ("python3", &["-c", "import kafka"]),
            Tool::ConfluentKafka => ("python3", &["-c", "import confluent_kafka"]),
        };
        Command::new(prog)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn install_hint(self) -> &'static str {
        match self {
            Tool::Kcat => "kcat (apt-get install kcat)",
            Tool::KafkaPython => "kafka-python (pip install kafka-python)",
            Tool::ConfluentKafka => "confluent-kafka (pip install confluent-kafka)",
        }
    }
}

/// True if every tool is installed. If one is missing: panics when `FJORD_REQUIRE_CLIENTS`
/// is set (CI), else prints why the test is skipped and returns false.
pub fn clients_available(test: &str, tools: &[Tool]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|t| !t.available())
        .map(|t| t.install_hint())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var("FJORD_REQUIRE_CLIENTS").is_ok_and(|v| !v.is_empty() && v != "0");
    assert!(
        !required,
        "{test}: missing {} and FJORD_REQUIRE_CLIENTS is set",
        missing.join(", ")
    );
    eprintln!(
        "SKIP {test}: missing {} (set FJORD_REQUIRE_CLIENTS=1 to fail instead)",
        missing.join(", ")
    );
    false
}

/// One free loopback address (see [`free_ports`]) for a listener the test binds later.
pub fn free_addr() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], free_ports(1)[0]))
}

/// Loopback ports free now (held together so they are distinct, released on return).
///
/// They are drawn at random below the kernel's ephemeral range (32768–60999 on Linux), which
/// other tests' `bind(0)` and every outgoing connection draw from: a port reserved here and
/// released before the broker binds it cannot be handed to them in between.
pub fn free_ports(n: usize) -> Vec<u16> {
    const LOW: u32 = 20_000;
    const HIGH: u32 = 32_000;
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut held: Vec<TcpListener> = Vec::new();
    for _ in 0..10_000 {
        if held.len() == n {
            break;
        }
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let r = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32;
        let port = (LOW + (r as u32) % (HIGH - LOW)) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    assert_eq!(held.len(), n, "no {n} free loopback ports in {LOW}..{HIGH}");
    held.iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit` with `what`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?}: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub child: Child,
    pub name: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Starts `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, cmd: Command, log: &Path) -> Proc {
        let out = append(log);
        let err = out.try_clone().expect("clone log handle");
        Proc::spawn_with(name, cmd, log, out, err)
    }

    /// Starts `cmd` with stdout appended to `out` and stderr to `err` (its log).
    pub fn spawn_split(name: &str, cmd: Command, out: &Path, err: &Path) -> Proc {
        Proc::spawn_with(name, cmd, err, append(out), append(err))
    }

    fn spawn_with(
        name: &str,
        mut cmd: Command,
        log: &Path,
        out: std::fs::File,
        err: std::fs::File,
    ) -> Proc {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        Proc {
            child,
            name: name.to_string(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `signal` (e.g. "TERM", "KILL") with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Waits for the process to exit, at most `limit`.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits at most `limit` for a successful exit; panics with the output otherwise.
    pub fn expect_success(&mut self, limit: Duration) -> String {
        match self.wait(limit) {
            Some(s) if s.success() => self.output(),
            Some(s) => panic!("{} failed ({s}):\n{}", self.name, self.output()),
            None => {
                let _ = self.child.kill();
                panic!(
                    "{} did not finish within {limit:?}:\n{}",
                    self.name,
                    self.output()
                )
            }
        }
    }
}

fn append(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` to completion within `limit`, asserting success; returns its stdout.
pub fn run(name: &str, cmd: Command, limit: Duration) -> String {
    try_run(name, cmd, limit).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `cmd` to completion within `limit`: its stdout, or why it failed with its output.
pub fn try_run(name: &str, mut cmd: Command, limit: Duration) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let out = std::fs::File::create(&out_path).expect("create");
    let err = std::fs::File::create(&err_path).expect("create");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(stdout),
        Some(s) => Err(format!(
            "{name} failed ({s})\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )),
        None => Err(format!(
            "{name} timed out after {limit:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
        )),
    }
}

/// `python3 tests/clients/SCRIPT ARGS` within `limit`: its stdout, or why it failed.
pub fn try_python(script: &str, args: &[&str], limit: Duration) -> Result<String, String> {
    let mut cmd = Command::new("python3");
    cmd.arg(clients_dir().join(script)).args(args);
    let out = try_run(script, cmd, limit)?;
    eprintln!("{script}: {}", out.trim_end());
    Ok(out)
}

pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Settings of a test cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub brokers: u32,
    /// Replicas of new topics and of `__consumer_offsets`.
    pub replication_factor: i16,
    pub offsets_partitions: u32,
}

/// One node's fixed addresses and files.
struct NodeFiles {
    id: u32,
    config: PathBuf,
    kafka: SocketAddr,
    metrics: SocketAddr,
}

/// `fjord broker` processes on loopback, data in a temporary directory.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    nodes: Vec<NodeFiles>,
    procs: Vec<Option<Proc>>,
    restarts: u32,
}

pub const BROKER_START_MAX: Duration = Duration::from_secs(30);

impl Cluster {
    /// One broker: replication factor 1, three `__consumer_offsets` partitions.
    pub fn single() -> Cluster {
        Cluster::start(&ClusterOptions {
            brokers: 1,
            replication_factor: 1,
            offsets_partitions: 3,
        })
    }

    pub fn start(opts: &ClusterOptions) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let n = opts.brokers as usize;
        let ports = free_ports(3 * n);
        let mut voters = String::new();
        for i in 0..n {
            let _ = writeln!(voters, "{} = \"127.0.0.1:{}\"", i + 1, ports[3 * i + 1]);
        }
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = i as u32 + 1;
            let kafka: SocketAddr = format!("127.0.0.1:{}", ports[3 * i]).parse().unwrap();
            let metrics: SocketAddr = format!("127.0.0.1:{}", ports[3 * i + 2]).parse().unwrap();
            let config = dir.path().join(format!("node{id}.toml"));
            let text = format!(
                "node_id = {id}\n\
                 data_dir = \"{data}\"\n\
                 listen = \"{kafka}\"\n\
                 rpc_listen = \"127.0.0.1:{rpc}\"\n\
                 metrics_listen = \"{metrics}\"\n\
                 cluster_id = \"fjord-test\"\n\
                 default_partitions = 1\n\
                 default_replication_factor = {rf}\n\
                 offsets_topic_num_partitions = {op}\n\
                 group_initial_rebalance_delay_ms = 0\n\
                 leader_balance_interval_ms = 600000\n\
                 \n[controller_voters]\n{voters}",
                data = dir.path().join(format!("node{id}")).display(),
                rpc = ports[3 * i + 1],
                rf = opts.replication_factor,
                op = opts.offsets_partitions,
            );
            std::fs::write(&config, text).expect("write config");
            nodes.push(NodeFiles {
                id,
                config,
                kafka,
                metrics,
            });
        }
        let mut cluster = Cluster {
            dir,
            nodes,
            procs: (0..n).map(|_| None).collect(),
            restarts: 0,
        };
        for id in 1..=opts.brokers {
            cluster.spawn(id);
        }
        for id in 1..=opts.brokers {
            cluster.wait_listening(id);
        }
        wait_for("the cluster answers", BROKER_START_MAX, || {
            cluster.fjord_quiet(&["topic", "list"])
        });
        cluster
    }

    fn node(&self, id: u32) -> &NodeFiles {
        &self.nodes[id as usize - 1]
    }

    fn spawn(&mut self, id: u32) {
        let log = self
            .dir
            .path()
            .join(format!("node{id}.{}.log", self.restarts));
        self.restarts += 1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fjord"));
        cmd.arg("broker")
            .arg("--config")
            .arg(&self.node(id).config)
            .env("RUST_LOG", "info");
        self.procs[id as usize - 1] = Some(Proc::spawn(&format!("broker {id}"), cmd, &log));
    }

    fn wait_listening(&mut self, id: u32) {
        let idx = id as usize - 1;
        wait_for(&format!("broker {id} listening"), BROKER_START_MAX, || {
            let p = self.procs[idx].as_mut().expect("running");
            if let Some(s) = p.child.try_wait().expect("try_wait") {
                panic!("broker {id} exited ({s}):\n{}", p.output());
            }
            p.output().contains("listening on").then_some(())
        });
    }

    pub fn live_ids(&self) -> Vec<u32> {
        self.nodes
            .iter()
            .filter(|n| self.procs[n.id as usize - 1].is_some())
            .map(|n| n.id)
            .collect()
    }

    pub fn bootstrap(&self) -> String {
        self.live_ids()
            .iter()
            .map(|id| self.node(*id).kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Every broker, live or not (for clients that must survive failures).
    pub fn bootstrap_all(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.kafka.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn kafka_addr(&self, id: u32) -> SocketAddr {
        self.node(id).kafka
    }

    /// `fjord ARGS --bootstrap-server …` within 20 s; None if it fails.
    fn fjord_quiet(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(env!("CARGO_BIN_EXE_fjord"))
            .args(args)
            .arg("--bootstrap-server")
            .arg(self.bootstrap())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `fjord ARGS --bootstrap-server …`, asserting success.
    pub fn fjord(&self, args: &[&str]) -> String {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fjord"));
        cmd.args(args)
            .arg("--bootstrap-server")
            .arg(self.bootstrap());
        run(
            &format!("fjord {}", args.join(" ")),
            cmd,
            Duration::from_secs(30),
        )
    }

    /// Creates `topic` (retried until enough brokers have registered) and waits until every
    /// partition has a leader and a full ISR.
    pub fn create_topic(&self, topic: &str, partitions: u32, rf: i16) {
        let (p, r) = (partitions.to_string(), rf.to_string());
        wait_for(&format!("{topic} created"), BROKER_START_MAX, || {
            self.fjord_quiet(&[
                "topic",
                "create",
                topic,
                "--partitions",
                &p,
                "--replication-factor",
                &r,
                "--if-not-exists",
            ])
        });
        wait_for(
            &format!("{topic}: every partition led"),
            Duration::from_secs(30),
            || {
                let p = self.partitions(topic)?;
                (p.len() == partitions as usize
                    && p.iter().all(|p| p.leader > 0 && p.isr.len() == rf as usize))
                .then_some(())
            },
        );
    }

    /// Partitions of `topic` as `fjord topic describe` shows them.
    pub fn partitions(&self, topic: &str) -> Option<Vec<PartitionInfo>> {
        let out = self.fjord_quiet(&["topic", "describe", topic])?;
        let mut parts = Vec::new();
        for line in out.lines().filter(|l| l.contains("Partition: ")) {
            let field = |name: &str| -> Option<&str> {
                let rest = line.split(&format!("{name}: ")).nth(1)?;
                rest.split('\t').next()
            };
            let ids = |s: &str| -> Vec<u32> {
                s.split(',').filter_map(|x| x.trim().parse().ok()).collect()
            };
            parts.push(PartitionInfo {
                partition: field("Partition")?.trim().parse().ok()?,
                leader: field("Leader")?.trim().parse().ok()?,
                replicas: ids(field("Replicas")?),
                isr: ids(field("Isr")?),
            });
        }
        Some(parts)
    }

    /// The leader of `topic`/`partition`, once there is one.
    pub fn leader(&self, topic: &str, partition: i32) -> u32 {
        wait_for(
            &format!("a leader of {topic}-{partition}"),
            Duration::from_secs(30),
            || {
                let l = self
                    .partitions(topic)?
                    .into_iter()
                    .find(|p| p.partition == partition)?
                    .leader;
                (l > 0).then_some(l as u32)
            },
        )
    }

    /// `GET /metrics` of broker `id`, None if it does not answer.
    pub fn try_metrics(&self, id: u32) -> Option<String> {
        let addr = self.node(id).metrics;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    /// The value of `metric{node="id",topic="t",partition="p"}` on broker `id`.
    pub fn partition_metric(
        &self,
        id: u32,
        metric: &str,
        topic: &str,
        partition: i32,
    ) -> Option<i64> {
        let body = self.try_metrics(id)?;
        let series =
            format!("{metric}{{node=\"{id}\",topic=\"{topic}\",partition=\"{partition}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse::<f64>().ok())
            .map(|v| v as i64)
    }

    /// SIGKILL: the process dies at once, whatever it had not written is lost.
    pub fn kill(&mut self, id: u32) {
        let mut p = self.procs[id as usize - 1].take().expect("broker runs");
        p.signal("KILL");
        p.wait(Duration::from_secs(10))
            .expect("killed broker exits");
    }

    /// SIGTERM: a graceful stop (leaderships handed over); waits for the exit.
    pub fn terminate(&mut self, id: u32) -> ExitStatus {
        let mut p = self.procs[id as usize - 1].take().expect("broker runs");
        p.signal("TERM");
        p.wait(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("broker {id} ignored SIGTERM for 30 s:\n{}", p.output()))
    }

    /// Starts broker `id` again on its data directory and waits until it listens.
    pub fn restart(&mut self, id: u32) {
        assert!(self.procs[id as usize - 1].is_none(), "broker {id} runs");
        self.spawn(id);
        self.wait_listening(id);
    }

    /// `python3 tests/clients/SCRIPT ARGS` within `limit`; panics with its output and the
    /// brokers' logs on failure.
    pub fn python(&self, script: &str, args: &[&str], limit: Duration) -> String {
        try_python(script, args, limit)
            .unwrap_or_else(|e| panic!("{e}\n=== broker logs\n{}", self.logs()))
    }

    /// The logs of every broker (for failure messages).
    pub fn logs(&self) -> String {
        let mut out = String::new();
        let mut entries: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
        {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            let _ = writeln!(out, "--- {}", path.display());
            for l in tail.into_iter().rev() {
                let _ = writeln!(out, "{l}");
            }
        }
        out
    }
}

#[derive(Clone, Debug)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub replicas: Vec<u32>,
    pub isr: Vec<u32>,
}
