//! A local three-node cluster this harness starts (loopback, fresh data
//! dirs, replication factor 3, fsync on), and the failover scenario: kill
//! -9 the node leading the most shards under steady open-loop load.

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

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl LocalCluster {
    /// Starts three nodes with `shards` shards, every shard on all three.
    pub fn spawn(shards: u32) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("troupe-bench-cluster-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut members = String::new();
        let (mut natives, mut https) = (Vec::new(), Vec::new());
        for id in 1..=3 {
            let (http, native, raft) = (free_port()?, free_port()?, free_port()?);
            let control = free_port()?;
            members.push_str(&format!(
                "[[cluster.members]]\nid = {id}\nhttp-addr = \"127.0.0.1:{http}\"\n\
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
            children: vec![None, None, None],
            natives,
            https,
        };
        for id in 1..=3 {
            cluster.start(id)?;
        }
        Ok(cluster)
    }

    /// Starts node `id` (again).
    pub fn start(&mut self, id: usize) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?.with_file_name("troupe-node");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("node-{id}.log")))?;
        let mut child = Command::new(&exe)
            .args(["--config", self.config.to_str().unwrap_or_default()])
            .args(["--node-id", &id.to_string()])
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
        for id in 1..=3 {
            self.kill(id);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
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
    for (i, native) in cluster.natives.iter().enumerate() {
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
    for native in &cluster.natives {
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
