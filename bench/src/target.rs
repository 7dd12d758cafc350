//! The node under load: one this harness starts (fresh data dir, durability
//! on) or one already running, and what can be read about it from outside.

use anyhow::{Context, bail};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A node to load.
pub struct Target {
    /// Native protocol address.
    pub native: String,
    /// HTTP base URL.
    pub http: String,
    /// The other members' HTTP bases, in a cluster (their counters are
    /// added to this node's).
    pub others: Vec<String>,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Target {
    /// Starts `troupe-node` (found beside this binary) on a temporary data
    /// dir with `sync = true`, plus any extra TOML.
    pub fn spawn(shards: u32, extra_toml: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "troupe-bench-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
        ));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("node.toml");
        std::fs::write(
            &config,
            format!(
                "node-id = 1\ndata-dir = \"{}\"\nhttp-addr = \"127.0.0.1:0\"\nnative-addr = \"127.0.0.1:0\"\nshards = {shards}\n\
                 [storage]\nsync = true\n{extra_toml}",
                dir.join("data").display()
            ),
        )?;
        let (child, native, http) = start_node(&dir)?;
        Ok(Self {
            native,
            http,
            others: Vec::new(),
            child: Some(child),
            dir: Some(dir),
        })
    }

    /// Kills the node with SIGKILL and starts it again on the same data
    /// dir; returns how long it took until it answered again.
    pub fn kill_and_restart(&mut self) -> anyhow::Result<Duration> {
        let (Some(child), Some(dir)) = (self.child.as_mut(), self.dir.clone()) else {
            bail!("only a node this harness started can be restarted");
        };
        child.kill()?;
        child.wait()?;
        let begin = std::time::Instant::now();
        let (child, native, http) = start_node(&dir)?;
        let took = begin.elapsed();
        self.child = Some(child);
        self.native = native;
        self.http = http;
        Ok(took)
    }

    /// A node already running.
    pub fn remote(native: String, http: String) -> Self {
        Self {
            native,
            http,
            others: Vec::new(),
            child: None,
            dir: None,
        }
    }

    /// CPU seconds used so far by the node process (when we started it).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.child.as_ref()?.id())
    }

    /// Resident memory now and at its peak, bytes.
    pub fn rss(&self) -> Option<(u64, u64)> {
        rss_of(self.child.as_ref()?.id())
    }

    /// A probe of the node's resident memory, data dir size and CPU time
    /// now (while this process runs).
    pub fn probe(&self) -> crate::load::NodeProbe {
        let pid = self.child.as_ref().map(Child::id);
        let dir = self.dir.as_ref().map(|d| d.join("data"));
        std::sync::Arc::new(move || {
            let (rss, _) = rss_of(pid?)?;
            let data = dir.as_deref().map_or(0, bytes_under);
            let cpu_s = cpu_seconds_of(pid?)?;
            let steal_s = machine_steal_seconds().unwrap_or(0.0);
            Some(crate::load::NodeSample {
                rss,
                data,
                cpu_s,
                steal_s,
            })
        })
    }

    /// The node's Prometheus metrics; in a cluster, followed by the other
    /// members' counters (their quantiles left out), so that sums cover
    /// the whole cluster.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let mut text = reqwest::get(format!("{}/metrics", self.http))
            .await?
            .text()
            .await?;
        for other in &self.others {
            let more = reqwest::get(format!("{other}/metrics"))
                .await?
                .text()
                .await?;
            for line in more.lines().filter(|l| !l.contains("quantile=")) {
                text.push('\n');
                text.push_str(line);
            }
        }
        Ok(text)
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
            // The file system commits that removal (often a gigabyte of
            // table files) with the next fsync: the next run's first
            // commits waited behind it (a 5-s run at a quarter of the peak
            // right after the suite's open loop: p99 57-128 ms, 3 ms
            // alone). It is written back here instead.
            crate::report::settle_disk();
        }
    }
}

/// CPU seconds used so far by process `pid`.
fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// CPU seconds the hypervisor has taken from this machine so far, all
/// cores together (the `steal` column of `/proc/stat`'s `cpu` line).
fn machine_steal_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: f64 = cpu.split_whitespace().nth(7)?.parse().ok()?;
    Some(ticks / 100.0)
}

/// Bytes of the files under `dir` (files that vanish meanwhile count 0).
fn bytes_under(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => bytes_under(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Resident memory of process `pid` now and at its peak, bytes.
fn rss_of(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some((kb("VmRSS:")? * 1024, kb("VmHWM:")? * 1024))
}

/// Starts `troupe-node` (found beside this binary) with `dir/node.toml`;
/// returns once it listens, with its native and HTTP addresses.
fn start_node(dir: &std::path::Path) -> anyhow::Result<(Child, String, String)> {
    let config = dir.join("node.toml");
    let exe = std::env::current_exe()?;
    let node = exe.with_file_name("troupe-node");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("node.log"))?;
    let mut child = Command::new(&node)
        .args(["--config", config.to_str().unwrap_or_default()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", node.display()))?;
    let stdout = child.stdout.take().context("node stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut native = String::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("troupe-node native protocol on ") {
                native = addr.to_owned();
            }
            if let Some(http) = line.strip_prefix("troupe-node listening on ") {
                let _ = tx.send((native.clone(), http.to_owned()));
            }
        }
    });
    let Ok((native, http)) = rx.recv_timeout(Duration::from_secs(300)) else {
        let _ = child.kill();
        bail!(
            "troupe-node did not start; see {}",
            dir.join("node.log").display()
        );
    };
    Ok((child, native, http))
}

/// Sums a metric's samples whose labels contain every `(key, value)`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let (metric_name, rest) = key.split_once('{').unwrap_or((key, ""));
            (metric_name == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}
