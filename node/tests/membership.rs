//! Operators change a running cluster of `troupe-node` processes under a
//! steady stream of starts from a retrying client: two spare nodes join
//! and lead shards, a member is drained until it holds nothing and is
//! removed (and refused when it comes back), a member is SIGKILLed and
//! removed as dead, and every shard returns to full replication. No start
//! fails and every acknowledged workflow finishes.

mod common;

use common::{Api, NodeProcess, TempDir, eventually, free_port, nap_flow};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const SHARDS: u32 = 8;
const NODES: usize = 5;
const FIRST: usize = 3;
const COOKIE: &str = "membership-test-cookie";

/// Three members and two spares.
fn write_config(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut text = format!(
        "data-dir = \"{}/node-{{node-id}}\"\nshards = {SHARDS}\n[engine]\npassivate-after = \"500ms\"\n[cluster]\nreplication-factor = 3\nelection-timeout-min = \"300ms\"\nelection-timeout-max = \"600ms\"\nheartbeat-interval = \"100ms\"\nsnapshot-after-entries = 50\nmax-moving-shards = 2\ncookie = \"{COOKIE}\"\n",
        dir.display()
    );
    let mut bases = Vec::new();
    for id in 1..=NODES {
        let (http, native, raft, control) = (free_port(), free_port(), free_port(), free_port());
        let list = if id <= FIRST { "members" } else { "spares" };
        text.push_str(&format!(
            "[[cluster.{list}]]\nid = {id}\nhttp-addr = \"127.0.0.1:{http}\"\nnative-addr = \"127.0.0.1:{native}\"\nraft-addr = \"127.0.0.1:{raft}\"\ncontrol-addr = \"127.0.0.1:{control}\"\n"
        ));
        bases.push(format!("127.0.0.1:{http}"));
    }
    let path = dir.join("cluster.toml");
    std::fs::write(&path, text).unwrap();
    (path, bases)
}

struct Cluster {
    config: PathBuf,
    dir: PathBuf,
    bases: Vec<String>,
    nodes: Vec<Option<NodeProcess>>,
}

impl Cluster {
    async fn start(dir: &Path) -> Self {
        for _ in 0..3 {
            let (config, bases) = write_config(dir);
            let mut cluster = Cluster {
                config,
                dir: dir.to_path_buf(),
                bases,
                nodes: (0..NODES).map(|_| None).collect(),
            };
            if (1..=FIRST).all(|id| cluster.try_start(id, &[])) {
                cluster.api(1).deploy(&nap_flow("200ms")).await;
                return cluster;
            }
            drop(cluster);
            let _ = std::fs::remove_dir_all(dir);
            std::fs::create_dir_all(dir).unwrap();
        }
        panic!("no free ports for a cluster in three tries");
    }

    fn try_start(&mut self, id: usize, more: &[&str]) -> bool {
        let log = self.dir.join(format!("node-{id}.log"));
        let mut args = vec!["--node-id".to_owned(), id.to_string()];
        args.extend(more.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.nodes[id - 1] = NodeProcess::try_spawn_with(&self.config, &log, &args);
        self.nodes[id - 1].is_some()
    }

    fn join(&mut self, id: usize) {
        let through = self.bases[0].clone();
        assert!(
            self.try_start(id, &["--join", &through]),
            "node {id} starts"
        );
    }

    fn api(&self, id: usize) -> Api {
        Api::new(&format!("http://{}", self.bases[id - 1]))
    }

    fn up(&self) -> Vec<usize> {
        (1..=NODES)
            .filter(|id| self.nodes[id - 1].is_some())
            .collect()
    }

    async fn status(&self, via: usize) -> Value {
        eventually(10, "the cluster status", || async {
            let (status, view) = self.api(via).get("/v1/cluster").await;
            (status == 200).then_some(view)
        })
        .await
    }

    async fn post(&self, via: usize, path: &str) -> (u16, Value) {
        self.api(via).post(path, json!({})).await
    }
}

/// The node entry of `id` in a status view.
fn node(view: &Value, id: u64) -> Value {
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Whether every shard's voters are where the map places them, each on
/// `factor` nodes, with none on `absent`.
fn settled(view: &Value, factor: usize, absent: &[u64]) -> bool {
    let moving = view["moves_in_progress"]
        .as_array()
        .is_none_or(|m| !m.is_empty());
    !moving
        && view["shards"].as_array().unwrap().iter().all(|s| {
            let replicas = s["replicas"].as_array().unwrap();
            replicas.len() == factor
                && s["leader"].is_u64()
                && replicas
                    .iter()
                    .all(|r| !absent.contains(&r.as_u64().unwrap()))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_join_drain_and_leave_under_load_without_a_failed_start() {
    let dir = TempDir::new("membership");
    let mut cluster = Cluster::start(dir.path()).await;

    // A retrying client starts workflows through the first node until told
    // to stop; every start must be acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (api, stop) = (cluster.api(1), stop.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("wf-{n}");
                assert!(
                    api.start_retrying("flow", &id, json!({})).await,
                    "start {id} was never acknowledged"
                );
                acknowledged.push(id);
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acknowledged
        })
    };

    eventually(60, "every shard led", || async {
        settled(&cluster.status(1).await, 3, &[]).then_some(())
    })
    .await;

    // A join must name the node's addresses and prove the cluster's cookie.
    let (status, body) = cluster
        .api(2)
        .post("/v1/cluster/join", json!({"id": 9}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request")),
        "{body}"
    );
    let stranger = json!({"id": 9, "raft_addr": "127.0.0.1:1", "http_addr": "127.0.0.1:2",
                          "native_addr": "127.0.0.1:3", "cluster": 12345});
    let (status, body) = cluster.api(2).post("/v1/cluster/join", stranger).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("cookie"),
        "{body}"
    );
    let (status, body) = cluster.post(1, "/v1/cluster/nodes/7/drain").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state")),
        "{body}"
    );

    // A worker given node 1 before the joins must serve the shards the new
    // nodes come to lead.
    cluster.api(1).deploy(common::WORKED).await;
    let native = cluster.nodes[0].as_ref().unwrap().native.clone();
    let client = troupe_client::Client::connect(native).await.unwrap();
    let worker = common::upper_worker(&client);

    // A spare that never joined does not start on its own.
    assert!(
        !cluster.try_start(5, &[]),
        "a spare starts only with --join"
    );
    let said = std::fs::read_to_string(dir.path().join("node-5.log")).unwrap();
    assert!(said.contains("start it with --join"), "{said}");

    // Two spares join; the placement gives them replicas and leaders.
    cluster.join(4);
    cluster.join(5);
    let view = eventually(
        120,
        "the joined nodes hold replicas and lead shards",
        || async {
            let view = cluster.status(1).await;
            let ready = [4, 5].iter().all(|id| {
                let n = node(&view, *id);
                n["state"] == "active"
                    && n["replicas"].as_u64() >= Some(4)
                    && n["leads"].as_u64() >= Some(1)
            });
            (ready && settled(&view, 3, &[])).then_some(view)
        },
    )
    .await;
    assert!(view["epoch"].as_u64().unwrap() > 1);
    for id in [4u64, 5] {
        // Activation follows the leadership a moment later.
        eventually(10, "a joined node runs the shards it leads", || async {
            let (_, here) = cluster.api(id as usize).get("/v1/cluster").await;
            let active = here["active_here"].as_array()?;
            (!active.is_empty()).then_some(())
        })
        .await;
    }

    // A joined node restarts like any member, without --join.
    cluster.nodes[3].take().unwrap().kill();
    assert!(cluster.try_start(4, &[]), "node 4 restarts");
    eventually(60, "node 4 back", || async {
        let view = cluster.status(4).await;
        (node(&view, 4)["state"] == "active" && settled(&view, 3, &[])).then_some(())
    })
    .await;

    let worked: Vec<String> = (0..SHARDS)
        .map(|shard| {
            (0..)
                .map(|k| format!("worked-{k}"))
                .find(|id| troupe_protocol::shard_of(id, SHARDS) == shard)
                .unwrap()
        })
        .collect();
    for id in &worked {
        assert!(
            cluster
                .api(2)
                .start_retrying("worked", id, json!({"text": id}))
                .await
        );
    }
    for id in &worked {
        let view = cluster.api(1).wait_status(id, "completed").await;
        assert_eq!(view["output"]["text"], id.to_uppercase(), "{view}");
    }

    // Draining node 2 moves everything off it; it keeps serving meanwhile.
    let (status, body) = cluster.post(3, "/v1/cluster/nodes/2/drain").await;
    assert_eq!(status, 200, "{body}");
    eventually(120, "node 2 holds nothing", || async {
        let view = cluster.status(1).await;
        let n = node(&view, 2);
        (n["state"] == "draining" && n["replicas"] == 0 && settled(&view, 3, &[2])).then_some(())
    })
    .await;
    eventually(20, "node 2 dropped its replicas", || async {
        let (_, here) = cluster.api(2).get("/v1/cluster").await;
        let held = here["shards"]
            .as_array()?
            .iter()
            .filter(|s| s["role"] != "none")
            .count();
        (held == 0).then_some(())
    })
    .await;
    let (status, body) = cluster.post(1, "/v1/cluster/nodes/2/remove").await;
    assert_eq!(status, 200, "{body}");
    cluster.nodes[1].take().unwrap().kill();
    let log = dir.path().join("node-2.log");
    assert!(!cluster.try_start(2, &[]), "a removed node does not start");
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(said.contains("was removed from the cluster"), "{said}");

    // A member dies for good: removed as dead, its replicas are re-created.
    let (status, body) = cluster.post(1, "/v1/cluster/nodes/3/remove").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state")),
        "an up member holding replicas is drained first: {body}"
    );
    cluster.nodes[2].take().unwrap().kill();
    eventually(30, "node 3 removed as dead", || async {
        let (status, _) = cluster.post(1, "/v1/cluster/nodes/3/remove").await;
        (status == 200).then_some(())
    })
    .await;
    eventually(120, "every shard back at full replication", || async {
        let view = cluster.status(1).await;
        settled(&view, 3, &[2, 3]).then_some(())
    })
    .await;

    worker.abort();
    stop.store(true, Ordering::Relaxed);
    let acknowledged = load.await.unwrap();
    assert!(acknowledged.len() > 50, "load ran: {}", acknowledged.len());
    let up = cluster.up();
    for (n, id) in acknowledged.iter().enumerate() {
        cluster
            .api(up[n % up.len()])
            .wait_status(id, "completed")
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_under_load_fails_no_start() {
    let dir = TempDir::new("rolling");
    let mut cluster = Cluster::start(dir.path()).await;
    eventually(30, "every shard led", || async {
        settled(&cluster.status(1).await, 3, &[]).then_some(())
    })
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (bases, stop) = (cluster.bases.clone(), stop.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut n = 0;
            // Until told to stop, and at least 40 starts (a restart of
            // three nodes can take less time than that on a fast machine).
            while !stop.load(Ordering::Relaxed) || n < 40 {
                // Round robin over the members, as a load balancer would.
                let api = Api::new(&format!("http://{}", bases[n % FIRST]));
                let id = format!("rr-{n}");
                assert!(
                    api.start_retrying("flow", &id, json!({})).await,
                    "start {id} was never acknowledged"
                );
                acknowledged.push(id);
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            acknowledged
        })
    };
    for id in [2, 3, 1] {
        let before = cluster.status(id).await;
        let led = node(&before, id as u64)["leads"].as_u64().unwrap_or(0);
        cluster.nodes[id - 1].take().unwrap().terminate();
        let said = std::fs::read_to_string(dir.path().join(format!("node-{id}.log"))).unwrap();
        if led > 0 {
            assert!(
                said.contains("leadership handed off"),
                "node {id} handed off: {said}"
            );
        }
        assert!(cluster.try_start(id, &[]), "node {id} starts again");
        // Its preferred leaderships come back to it by transfer.
        eventually(60, "the restarted node leads again", || async {
            let view = cluster.status(id).await;
            let leads = node(&view, id as u64)["leads"].as_u64().unwrap_or(0);
            (settled(&view, 3, &[]) && leads >= led.min(1)).then_some(())
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let acknowledged = load.await.unwrap();
    assert!(acknowledged.len() > 20, "load ran: {}", acknowledged.len());
    for (n, id) in acknowledged.iter().enumerate() {
        cluster
            .api(1 + n % FIRST)
            .wait_status(id, "completed")
            .await;
    }
}
