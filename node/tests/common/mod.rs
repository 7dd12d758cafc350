//! Shared helpers for node tests: an in-process node, an HTTP client, a
//! stand-in for the outside world, and waiting on conditions.
#![allow(dead_code, missing_docs)]

pub mod world;

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use troupe_node::{Config, Node};

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("troupe-{label}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // A failed test keeps its nodes' data and logs for inspection.
        if std::thread::panicking() {
            eprintln!("kept {} (the test failed)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The last 40 lines of a node's log, to say why it did not start.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A config for a test node in `dir`, listening on a free loopback port.
pub fn config(dir: &Path) -> Config {
    Config::from_toml(&format!(
        r#"
node-id = 1
data-dir = "{}"
http-addr = "127.0.0.1:0"
native-addr = "127.0.0.1:0"
shards = 4
[engine]
passivate-after = "300ms"
"#,
        dir.join("data").display()
    ))
    .unwrap()
}

/// A `troupe-node` process.
pub struct NodeProcess {
    pub child: std::process::Child,
    pub api: Api,
    pub native: String,
}

impl NodeProcess {
    /// Starts `troupe-node --config config` and waits for its addresses.
    pub fn spawn(config: &Path, log: &Path) -> Self {
        Self::spawn_with(config, log, &[])
    }

    /// [`NodeProcess::spawn`] with more flags (`--node-id N`).
    pub fn spawn_with(config: &Path, log: &Path, args: &[&str]) -> Self {
        Self::try_spawn_with(config, log, args).unwrap_or_else(|| {
            panic!(
                "node {args:?} did not announce its addresses; its log ends:\n{}",
                log_tail(log)
            )
        })
    }

    /// [`NodeProcess::spawn_with`], or `None` when the node exits before
    /// it listens (a port taken meanwhile, say).
    pub fn try_spawn_with(config: &Path, log: &Path, args: &[&str]) -> Option<Self> {
        use std::io::{BufRead, BufReader};
        use std::process::{Command, Stdio};
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_troupe-node"))
            .args(["--config", config.to_str().unwrap()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn troupe-node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut native = String::new();
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("troupe-node native protocol on ") {
                    native = addr.to_owned();
                }
                if let Some(addr) = line.strip_prefix("troupe-node listening on ") {
                    let _ = tx.send((addr.to_owned(), native.clone()));
                }
            }
        });
        let Ok((base, native)) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        };
        Some(Self {
            child,
            api: Api::new(&base),
            native,
        })
    }

    /// Resident memory of the process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        let kb: u64 = self
            .status_field("VmRSS:")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS in kB");
        kb * 1024
    }

    /// Whether the kernel may back the process with transparent huge pages.
    pub fn huge_pages_enabled(&self) -> bool {
        self.status_field("THP_enabled:") != "0"
    }

    /// A field of the process's `/proc` status, trimmed.
    fn status_field(&self, key: &str) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let value = status.lines().find_map(|l| l.strip_prefix(key));
        value
            .unwrap_or_else(|| panic!("{key} in /proc status"))
            .trim()
            .to_owned()
    }

    /// SIGTERM, and waits for the node to stop (it hands off what it
    /// leads first).
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "node {pid} did not stop on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no goodbye.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// A test never leaves a node running behind it, whatever way it ends.
impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An in-process node with a client.
pub struct TestNode {
    pub node: Node,
    pub api: Api,
    _dir: TempDir,
}

/// Logs of in-process nodes go to the test's output (shown when it fails),
/// so that a flake leaves its story behind. `RUST_LOG` overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,openraft=error,ractor_cluster=warn")
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

impl TestNode {
    pub async fn start() -> Self {
        init_tracing();
        let dir = TempDir::new("node");
        let node = Node::start(config(dir.path())).await.expect("node starts");
        let api = Api::new(&format!("http://{}", node.http_addr()));
        Self {
            node,
            api,
            _dir: dir,
        }
    }
}

/// An in-process node on `dir` with 4 shards and the config sections in
/// `tail` (e.g. `[engine]` settings), and a client for its HTTP API.
pub async fn node_with(dir: &TempDir, tail: &str) -> (Node, Api) {
    init_tracing();
    let config = Config::from_toml(&format!(
        "node-id = 1\ndata-dir = \"{}\"\nhttp-addr = \"127.0.0.1:0\"\nnative-addr = \"127.0.0.1:0\"\nshards = 4\n{tail}",
        dir.path().join("data").display()
    ))
    .unwrap();
    let node = Node::start(config).await.expect("node starts");
    let api = Api::new(&format!("http://{}", node.http_addr()));
    (node, api)
}

/// A small HTTP/JSON client.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    pub async fn send(&self, method: &str, path: &str, body: Option<String>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// The sum of a metric's samples (every label set) on the node's
    /// Prometheus page; 0 when absent.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.send("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.send("POST", path, Some(body.to_string())).await
    }

    /// Deploys a YAML definition, asserting success (a cluster's
    /// metadata group may still be electing: 503s are retried).
    pub async fn deploy(&self, yaml: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, body) = self
                .send("PUT", "/v1/definitions", Some(yaml.to_owned()))
                .await;
            if status == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            assert!(status == 201 || status == 200, "deploy: {status} {body}");
            return;
        }
    }

    /// Starts an instance, asserting success; returns its view.
    pub async fn start(&self, definition: &str, id: &str, input: Value) -> Value {
        let (status, body) = self
            .post(
                "/v1/workflows",
                json!({"definition": definition, "id": id, "input": input}),
            )
            .await;
        assert_eq!(status, 201, "start {id}: {body}");
        body
    }

    pub async fn workflow(&self, id: &str) -> Value {
        let (status, body) = self.get(&format!("/v1/workflows/{}", encode(id))).await;
        assert_eq!(status, 200, "get {id}: {body}");
        body
    }

    /// Starts an instance, retrying `unavailable` answers (a cluster
    /// electing a leader) for a bounded time as a client would; returns
    /// whether it was acknowledged.
    pub async fn start_retrying(&self, definition: &str, id: &str, input: Value) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let body = json!({"definition": definition, "id": id, "input": input}).to_string();
        while Instant::now() < deadline {
            let sent = self
                .client
                .post(format!("{}/v1/workflows", self.base))
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            if let Ok(response) = sent {
                match response.status().as_u16() {
                    200 | 201 => return true,
                    503 => {}
                    other => panic!("start {id}: {other} {}", response.text().await.unwrap()),
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// Waits until the instance's status is `status` (retrying
    /// `unavailable` answers); returns its view.
    pub async fn wait_status(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, view) = self.get(&format!("/v1/workflows/{}", encode(id))).await;
            assert!(code == 200 || code == 503, "get {id}: {code} {view}");
            if view["status"] == status {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "{id} never became {status}: {view:#}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One task of type `upper` (a worker upper-cases the text).
pub const WORKED: &str = r#"
name: worked
version: 1
steps:
  - { id: shout, task: upper, input: { text: "${input.text}" }, output: shouted }
output:
  text: "${shouted.text}"
"#;

/// A worker for the `upper` tasks of [`WORKED`], through `client`.
pub fn upper_worker(
    client: &troupe_client::Client,
) -> tokio::task::JoinHandle<Result<(), troupe_client::Error>> {
    let worker = troupe_client::Worker::new(client, "upper").handle("upper", |task| async move {
        let text = task.input["text"]
            .as_str()
            .unwrap_or_default()
            .to_uppercase();
        Ok(json!({ "text": text }))
    });
    tokio::spawn(worker.run())
}

/// A loopback port free right now (for configs that name their peers' ports).
///
/// Tests run side by side in separate processes, and a node stopped by one
/// of them keeps its ports in its config for its restart: each port handed
/// out is claimed in a shared directory for as long as the test process
/// lives, so another test never picks a port of a node that is down.
pub fn free_port() -> u16 {
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
        if claim_port(port) && std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Claims `port` for this process: false when a live test process holds it.
fn claim_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("troupe-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let claim = dir.join(port.to_string());
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&claim)
        {
            Ok(mut file) => {
                use std::io::Write;
                return write!(file, "{}", std::process::id()).is_ok();
            }
            Err(_) => {
                // Held by a process that has ended: take it over.
                let holder = std::fs::read_to_string(&claim).unwrap_or_default();
                let alive = if holder.is_empty() {
                    // Being written, unless left so by a crash long ago.
                    std::fs::metadata(&claim)
                        .and_then(|m| m.modified())
                        .is_ok_and(|at| at.elapsed().is_ok_and(|age| age.as_secs() < 10))
                } else {
                    Path::new(&format!("/proc/{}", holder.trim())).exists()
                };
                if alive {
                    return false;
                }
                let _ = std::fs::remove_file(&claim);
            }
        }
    }
    false
}

/// A workflow of two `noop` steps around a durable timer of `nap`.
pub fn nap_flow(nap: &str) -> String {
    format!(
        "name: flow\nversion: 1\nsteps:\n  - {{ id: a, task: noop }}\n  - {{ id: nap, wait: {nap} }}\n  - {{ id: b, task: noop }}\n"
    )
}

/// The string `field` of every element of the JSON array `list`.
pub fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    list.as_array()
        .unwrap_or_else(|| panic!("not an array: {list}"))
        .iter()
        .map(|item| {
            item[field]
                .as_str()
                .unwrap_or_else(|| panic!("no {field} in {item}"))
        })
        .collect()
}

/// Percent-encodes a path segment.
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Polls `check` until it returns `Some`, or panics after `secs`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
