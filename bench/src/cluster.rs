//! A local three-node cluster this harness starts (loopback, fresh data
//! dirs, replication factor 3, fsync on, a spare node 4 described), and the
//! scenarios run on it under steady open-loop load: failover (kill -9 the
//! node leading the most shards) and operations (a node joins; a node is
//! drained and removed).

use crate::load::{self, Mode, Plan};
use crate::scenario::Scenario;
use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use troupe_client::Client;

/// Three `troupe-node` processes on loopback.
pub struct LocalCluster {
    dir: PathBuf,
    config: PathBuf,
    children: Vec<Option<Child>>,
    /// Native addresses by node (index = id - 1).
    pub natives: Vec<String>,
    /// HTTP bases by node.
    pub https: Vec<String>,
}

/// A loopback port free right now.
fn free_port() -> anyhow::Result<u16> {
    // Below the kernel's ephemeral range (32768 and up), where the nodes'
    // own outgoing connections would take ports picked there.
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7919).wrapping_add(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos()),
    );
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (seed.wrapping_add(n.wrapping_mul(104_729)) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
}

/// Nodes started as members; node 4 is a spare, started only to join.
const MEMBERS: usize = 3;

impl LocalCluster {
    /// The native addresses of the three members (the spare aside).
    pub fn member_natives(&self) -> &[String] {
        &self.natives[..MEMBERS]
    }

    /// The HTTP bases of the three members.
    pub fn member_https(&self) -> &[String] {
        &self.https[..MEMBERS]
    }

    /// Starts three nodes with `shards` shards, every shard on all three.
    pub fn spawn(shards: u32) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("troupe-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut members = String::new();
        let (mut natives, mut https) = (Vec::new(), Vec::new());
        for id in 1..=4 {
            let (http, native, raft) = (free_port()?, free_port()?, free_port()?);
            let control = free_port()?;
            let list = if id <= MEMBERS { "members" } else { "spares" };
            members.push_str(&format!(
                "[[cluster.{list}]]\nid = {id}\nhttp-addr = \"127.0.0.1:{http}\"\n\
                 native-addr = \"127.0.0.1:{native}\"\nraft-addr = \"127.0.0.1:{raft}\"\n\
                 control-addr = \"127.0.0.1:{control}\"\n"
            ));
            natives.push(format!("127.0.0.1:{native}"));
            https.push(format!("http://127.0.0.1:{http}"));
        }
        let config = dir.join("cluster.toml");
        std::fs::write(
            &config,
            format!(
                "data-dir = \"{}/node-{{node-id}}\"\nshards = {shards}\n[storage]\nsync = true\n\
                 [cluster]\nreplication-factor = 3\ncookie = \"bench\"\n{members}",
                dir.display()
            ),
        )?;
        let mut cluster = Self {
            dir,
            config,
            children: vec![None, None, None, None],
            natives,
            https,
        };
        for id in 1..=MEMBERS {
            cluster.start(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` (again).
    pub fn start(&mut self, id: usize) -> anyhow::Result<()> {
        self.start_with(id, &[])
    }

    /// Starts spare node `id`, joining the cluster through node 1.
    pub fn join(&mut self, id: usize) -> anyhow::Result<()> {
        let through = self.https[0].trim_start_matches("http://").to_owned();
        self.start_with(id, &["--join", &through])
    }

    fn start_with(&mut self, id: usize, more: &[&str]) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?.with_file_name("troupe-node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut child = Command::new(&exe)
            .args(["--config", self.config.to_str().unwrap_or_default()])
            .args(["--node-id", &id.to_string()])
            .args(more)
            .env("RUST_LOG", "warn,troupe_cluster=info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", exe.display()))?;
        let stdout = child.stdout.take().context("node stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("troupe-node listening on ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(120)).is_err() {
            let _ = child.kill();
            bail!("node {id} did not start; see {}", self.dir.display());
        }
        self.children[id - 1] = Some(child);
        Ok(())
    }

    /// SIGTERMs node `id` and waits until it has stopped.
    pub fn terminate(&mut self, id: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[id - 1].take() {
            let pid = child.id().to_string();
            Command::new("kill").args(["-TERM", &pid]).status()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until every shard is led by an active node; returns shard → leader.
    pub async fn leaders(&self) -> anyhow::Result<Vec<u64>> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut leaders = Vec::new();
            for (i, http) in self.https.iter().enumerate() {
                if self.children[i].is_none() {
                    continue;
                }
                let Ok(response) = reqwest::get(format!("{http}/v1/cluster")).await else {
                    continue;
                };
                let view: serde_json::Value = response.json().await.unwrap_or_default();
                let shards = view["shards"].as_array().map_or(0, Vec::len);
                leaders.resize(leaders.len().max(shards), 0);
                for shard in view["active_here"].as_array().into_iter().flatten() {
                    if let Some(s) = shard.as_u64() {
                        leaders[s as usize] = i as u64 + 1;
                    }
                }
            }
            if !leaders.is_empty() && leaders.iter().all(|l| *l != 0) {
                return Ok(leaders);
            }
            if Instant::now() > deadline {
                bail!("the cluster did not elect a leader for every shard");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for id in 1..=4 {
            self.kill(id);
        }
        if std::env::var_os("KEEP_BENCH_CLUSTER").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("  cluster data and logs kept in {}", self.dir.display());
        }
    }
}

/// Open-loop `noop` load at `rate` on the nodes that survive; after
/// `before` the node leading the most shards is SIGKILLed, then load goes
/// on for `after`. Returns the result as JSON.
pub async fn failover(
    rate: f64,
    before: Duration,
    after: Duration,
    shards: u32,
    waiting: u64,
) -> anyhow::Result<serde_json::Value> {
    let mut cluster = LocalCluster::spawn(shards)?;
    cluster.leaders().await?;
    let stored = if waiting > 0 {
        store_waiting(&cluster, waiting).await?
    } else {
        serde_json::Value::Null
    };
    let leaders = cluster.leaders().await?;
    let victim = (1..=3u64)
        .max_by_key(|n| leaders.iter().filter(|l| *l == n).count())
        .unwrap_or(1) as usize;
    let led = leaders.iter().filter(|l| **l == victim as u64).count();
    let scenario = Scenario::Noop;
    // Clients talk to the survivors: the test is what waiting for new
    // leaders costs, not reconnecting a client.
    let mut clients = Vec::new();
    for (i, native) in cluster.member_natives().iter().enumerate() {
        if i + 1 != victim {
            clients.push(Client::connect(native.clone()).await?);
            clients.push(Client::connect(native.clone()).await?);
        }
    }
    clients[0].deploy(&scenario.definition()).await?;
    let mode = Mode::Open(rate);
    let prefix = format!("failover-{}", std::process::id());
    let plan = Plan {
        scenario,
        mode: &mode,
        warmup: Duration::from_secs(2),
        duration: before + after,
        count: None,
        prefix: &prefix,
    };
    let kill_at = Instant::now() + Duration::from_secs(2) + before;
    let killer = tokio::spawn(async move {
        tokio::time::sleep_until(kill_at.into()).await;
        eprintln!("\n  SIGKILL node {victim} (leads {led} of {shards} shards)");
        cluster.kill(victim);
        let killed = Instant::now();
        let new_leaders = cluster.leaders().await;
        (
            cluster,
            new_leaders,
            killed.elapsed().as_secs_f64() * 1000.0,
        )
    });
    let tally = load::run(&clients, plan, std::sync::Arc::new(|| None)).await;
    eprintln!();
    let (_cluster, new_leaders, reelected_ms) = killer.await?;
    let new_leaders = new_leaders?;
    let ms = |q: f64| tally.latency.value_at_quantile(q) as f64 / 1000.0;
    let lost = tally.started - tally.ended_ok - tally.errors.values().sum::<u64>();
    Ok(serde_json::json!({
        "scenario": "failover",
        "rate": rate,
        "shards": shards,
        "victim": victim,
        "victim_led_shards": led,
        "all_shards_led_again_ms": reelected_ms,
        "new_leaders": new_leaders,
        "started": tally.started,
        "completed": tally.ended_ok,
        "errors": tally.errors,
        "unfinished": lost,
        "latency_ms": {
            "p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999),
            "max": tally.latency.max() as f64 / 1000.0,
        },
        "longest_wait_ms": tally.latency.max() as f64 / 1000.0,
        "waiting_instances": stored,
    }))
}

/// Starts `count` instances that wait an hour, closed loop at c=256 over
/// every member; reports how many and how fast.
async fn store_waiting(cluster: &LocalCluster, count: u64) -> anyhow::Result<serde_json::Value> {
    let scenario = Scenario::Timers;
    let mut clients = Vec::new();
    for native in cluster.member_natives() {
        clients.push(Client::connect(native.clone()).await?);
    }
    clients[0].deploy(&scenario.definition()).await?;
    let mode = Mode::Closed(256);
    let prefix = format!("waiting-{}", std::process::id());
    let plan = Plan {
        scenario,
        mode: &mode,
        warmup: Duration::ZERO,
        duration: Duration::from_secs(24 * 3600),
        count: Some(count),
        prefix: &prefix,
    };
    let began = Instant::now();
    eprintln!("  starting {count} waiting instances");
    let tally = load::run(&clients, plan, std::sync::Arc::new(|| None)).await;
    eprintln!();
    let secs = began.elapsed().as_secs_f64();
    Ok(serde_json::json!({
        "started": tally.started,
        "errors": tally.errors,
        "seconds": secs,
        "per_second": tally.started as f64 / secs,
    }))
}

/// An operator's change of the cluster, measured under load.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Operation {
    /// Node 4 joins the three and takes its share of replicas and leaders.
    Join,
    /// With node 4 joined beforehand, node 2 is drained and removed.
    Drain,
    /// Nodes 1, 2 and 3 are restarted in turn (SIGTERM: each hands off
    /// what it leads; started again; the next waits until it leads again).
    Restart,
}

impl LocalCluster {
    /// `GET /v1/cluster` on node `id`.
    async fn status(&self, id: usize) -> Option<serde_json::Value> {
        let response = reqwest::get(format!("{}/v1/cluster", self.https[id - 1]))
            .await
            .ok()?;
        response.json().await.ok()
    }

    /// Waits until node `id`'s view shows every shard led, nothing moving,
    /// and `done` true of the view.
    async fn settled(
        &self,
        id: usize,
        limit: Duration,
        done: impl Fn(&serde_json::Value) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(view) = self.status(id).await {
                let led = view["shards"]
                    .as_array()
                    .is_some_and(|s| s.iter().all(|s| s["leader"].is_u64()));
                let still = view["moves_in_progress"]
                    .as_array()
                    .is_none_or(|m| !m.is_empty());
                if led && !still && done(&view) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("the cluster did not settle in {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Node `id` in a status view.
fn node_view(view: &serde_json::Value, id: u64) -> serde_json::Value {
    view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or_default()
}

/// Open-loop `noop` load at `rate` (through nodes 1 and 3; through all
/// three for a restart): `before` of it measured alone, then `during` of it
/// while `operation` runs. Reports
/// failed requests, the p99 before and during, and how long the
/// operation took.
pub async fn operate(
    operation: Operation,
    rate: f64,
    before: Duration,
    during: Duration,
    shards: u32,
) -> anyhow::Result<serde_json::Value> {
    let mut cluster = LocalCluster::spawn(shards)?;
    cluster.leaders().await?;
    let settle = Duration::from_secs(300);
    if matches!(operation, Operation::Drain) {
        cluster.join(4)?;
        cluster
            .settled(1, settle, |v| {
                node_view(v, 4)["replicas"].as_u64() > Some(0)
            })
            .await?;
    }
    let scenario = Scenario::Noop;
    let mut clients = Vec::new();
    let via: &[usize] = match operation {
        Operation::Restart => &[1, 2, 3],
        _ => &[1, 3],
    };
    for &id in via {
        for _ in 0..2 {
            clients.push(Client::connect(cluster.natives[id - 1].clone()).await?);
        }
    }
    clients[0].deploy(&scenario.definition()).await?;
    let mode = Mode::Open(rate);
    let prefix = format!("operate-{}", std::process::id());
    let measure = |duration, prefix| Plan {
        scenario,
        mode: &mode,
        warmup: Duration::ZERO,
        duration,
        count: None,
        prefix,
    };
    let quiet_prefix = format!("{prefix}-before");
    eprintln!("  load alone for {before:?}");
    let quiet = load::run(
        &clients,
        measure(before, &quiet_prefix),
        std::sync::Arc::new(|| None),
    )
    .await;
    eprintln!("\n  {operation:?} under load");
    let began = Instant::now();
    let change = async {
        match operation {
            Operation::Join => {
                cluster.join(4)?;
                // Done when node 4 holds its even share: a quarter of the
                // replicas and of the leaders.
                let share = u64::from(shards) / 4;
                cluster
                    .settled(1, settle, |v| {
                        let n = node_view(v, 4);
                        n["state"] == "active"
                            && n["replicas"].as_u64() >= Some(3 * share)
                            && n["leads"].as_u64() >= Some(share)
                    })
                    .await?;
            }
            Operation::Drain => {
                let http = reqwest::Client::new();
                let drain = format!("{}/v1/cluster/nodes/2/drain", cluster.https[0]);
                http.post(&drain)
                    .body("{}")
                    .send()
                    .await?
                    .error_for_status()?;
                cluster
                    .settled(1, settle, |v| node_view(v, 2)["replicas"] == 0)
                    .await?;
                let remove = format!("{}/v1/cluster/nodes/2/remove", cluster.https[0]);
                http.post(&remove)
                    .body("{}")
                    .send()
                    .await?
                    .error_for_status()?;
            }
            Operation::Restart => {
                for id in 1..=3usize {
                    eprintln!("\n  restarting node {id}");
                    cluster.terminate(id)?;
                    cluster.start(id)?;
                    cluster
                        .settled(id, settle, |v| {
                            node_view(v, id as u64)["leads"].as_u64() > Some(0)
                        })
                        .await?;
                }
            }
        }
        anyhow::Ok(began.elapsed())
    };
    // The load runs in its own task: the operation waits on processes
    // (blocking), which must not hold back the sends.
    let busy = {
        let (clients, mode) = (clients.clone(), mode.clone());
        let prefix = format!("{prefix}-during");
        tokio::spawn(async move {
            let plan = Plan {
                scenario,
                mode: &mode,
                warmup: Duration::ZERO,
                duration: during,
                count: None,
                prefix: &prefix,
            };
            load::run(&clients, plan, std::sync::Arc::new(|| None)).await
        })
    };
    let took = tokio::task::block_in_place(|| tokio::runtime::Handle::current().block_on(change));
    let busy = busy.await?;
    eprintln!();
    let took = took?;
    let p99 = |h: &hdrhistogram::Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let failed = |t: &load::Tally| t.errors.values().sum::<u64>();
    // The requests scheduled while the operation ran, not the whole window.
    let mut while_operating = load::histogram();
    let seconds = took.as_secs_f64().ceil() as usize;
    for second in busy.latency_per_second.iter().take(seconds) {
        while_operating.add(second).expect("same bounds");
    }
    Ok(serde_json::json!({
        "scenario": format!("{operation:?}").to_lowercase(),
        "rate": rate,
        "shards": shards,
        "operation_seconds": took.as_secs_f64(),
        "failed_requests": failed(&quiet) + failed(&busy),
        "errors": {"before": quiet.errors, "during": busy.errors},
        "started": quiet.started + busy.started,
        "completed": quiet.ended_ok + busy.ended_ok,
        "p99_before_ms": p99(&quiet.latency),
        "p99_during_ms": p99(&while_operating),
        "p99_whole_window_ms": p99(&busy.latency),
        "max_during_ms": while_operating.max() as f64 / 1000.0,
        "p99_per_second_ms": busy.latency_per_second.iter().map(p99).collect::<Vec<_>>(),
    }))
}
