//! Three `troupe-node` processes as a replicated cluster on loopback:
//! under a steady stream of starts through every node, the node leading the
//! most shards is SIGKILLed and restarted; every acknowledged workflow
//! finishes (signals, worker tasks and sagas across the kill included,
//! compensations in reverse order), replicas end identical, and with two of
//! three nodes down nothing is acknowledged until one returns.

mod common;

use common::world::World;
use common::{Api, NodeProcess, TempDir, eventually, free_port, log_tail, nap_flow};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Duration;

const SHARDS: u32 = 8;
const NAP: &str = "300ms";
const COOKIE: &str = "process-test-cookie";

/// Writes the cluster's config file; returns it and each node's HTTP base.
fn write_config(dir: &Path) -> (PathBuf, Vec<String>) {
    let mut members = String::new();
    let mut bases = Vec::new();
    for id in 1..=3 {
        let (http, native, raft, control) = (free_port(), free_port(), free_port(), free_port());
        members.push_str(&format!(
            "[[cluster.members]]\nid = {id}\nhttp-addr = \"127.0.0.1:{http}\"\nnative-addr = \"127.0.0.1:{native}\"\nraft-addr = \"127.0.0.1:{raft}\"\ncontrol-addr = \"127.0.0.1:{control}\"\n"
        ));
        bases.push(format!("http://127.0.0.1:{http}"));
    }
    let text = format!(
        "data-dir = \"{}/node-{{node-id}}\"\nshards = {SHARDS}\n[engine]\npassivate-after = \"500ms\"\n[cluster]\nreplication-factor = 3\nelection-timeout-min = \"300ms\"\nelection-timeout-max = \"600ms\"\nheartbeat-interval = \"100ms\"\nsnapshot-after-entries = 5\ncookie = \"{COOKIE}\"\n{members}",
        dir.display()
    );
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
    /// Three nodes on `dir`, with the nap flow deployed. A port picked
    /// free may be taken by a test beside this one before a node binds it:
    /// then all start again on other ports.
    async fn start(dir: &Path) -> Self {
        let mut failed = String::new();
        for _ in 0..3 {
            let (config, bases) = write_config(dir);
            let mut cluster = Cluster {
                config,
                dir: dir.to_path_buf(),
                bases,
                nodes: vec![None, None, None],
            };
            let all = (1..=3).all(|id| {
                let log = dir.join(format!("node-{id}.log"));
                let args = ["--node-id", &id.to_string()];
                cluster.nodes[id - 1] = NodeProcess::try_spawn_with(&cluster.config, &log, &args);
                if cluster.nodes[id - 1].is_none() {
                    failed = format!("node {id}'s log ends:\n{}", log_tail(&log));
                }
                cluster.nodes[id - 1].is_some()
            });
            if all {
                cluster.api(1).deploy(&nap_flow(NAP)).await;
                return cluster;
            }
            drop(cluster);
            for id in 1..=3 {
                let _ = std::fs::remove_dir_all(dir.join(format!("node-{id}")));
            }
        }
        panic!("no cluster started in three tries; the last {failed}");
    }

    fn start_node(&mut self, id: usize) {
        let log = self.dir.join(format!("node-{id}.log"));
        let node = NodeProcess::spawn_with(&self.config, &log, &["--node-id", &id.to_string()]);
        self.nodes[id - 1] = Some(node);
    }

    fn kill(&mut self, id: usize) {
        self.nodes[id - 1].take().expect("running").kill();
    }

    fn api(&self, id: usize) -> Api {
        Api::new(&self.bases[id - 1])
    }

    fn up(&self) -> Vec<usize> {
        (1..=3).filter(|id| self.nodes[id - 1].is_some()).collect()
    }

    /// Shard → leader, once every shard is led by a running node that has
    /// activated it.
    async fn leaders(&self) -> Vec<u64> {
        eventually(30, "every shard led and active", || async {
            let mut leaders = vec![0u64; SHARDS as usize];
            for id in self.up() {
                let (status, view) = self.api(id).get("/v1/cluster").await;
                if status != 200 {
                    return None;
                }
                for shard in view["active_here"].as_array()? {
                    leaders[shard.as_u64()? as usize] = id as u64;
                }
            }
            leaders.iter().all(|l| *l != 0).then_some(leaders)
        })
        .await
    }

    async fn digests(&self, id: usize) -> Option<Value> {
        let (status, view) = self.api(id).get("/v1/cluster/digests").await;
        (status == 200).then_some(view)
    }
}

/// A saga whose last step fails for good: the two before it are
/// compensated, the later first.
fn saga(world: &World) -> String {
    let call = |path: &str| {
        format!(
            r#"{{ method: POST, url: "{}{path}", body: {{ wf: "${{input.wf}}" }} }}"#,
            world.base
        )
    };
    format!(
        r#"
name: saga
version: 1
steps:
  - {{ id: flight, task: http, input: {}, compensate: {{ task: http, input: {} }} }}
  - {{ id: hotel, task: http, input: {}, compensate: {{ task: http, input: {} }} }}
  - {{ id: car, task: http, input: {} }}
"#,
        call("/ok/flight"),
        call("/ok/undo-flight"),
        call("/ok/hotel"),
        call("/ok/undo-hotel"),
        call("/status/400/car"),
    )
}

const SIGNALED: &str = r#"
name: signaled
version: 1
steps:
  - { id: go, await: go, timeout: 5m, output: go }
output: { go: "${go}" }
"#;

/// Sends signal `go` to `id` through `api`, retrying while its shard has no leader.
async fn signal_retrying(api: &Api, id: &str) {
    eventually(30, "the signal is accepted", || async {
        let (status, body) = api
            .post(
                &format!("/v1/workflows/{id}/signals/go"),
                json!({"id": format!("go-{id}"), "payload": {"who": id}}),
            )
            .await;
        assert!(
            status == 202 || status == 503,
            "signal {id}: {status} {body}"
        );
        (status == 202).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_leader_loses_nothing_acknowledged() {
    let dir = TempDir::new("cluster-proc");
    let mut cluster = Cluster::start(dir.path()).await;
    let leaders = cluster.leaders().await;

    // Besides the stream of starts: instances waiting for a signal, worker
    // tasks and sagas, each started before the kill and finished after it.
    let world = World::start().await;
    let api = cluster.api(1);
    api.deploy(SIGNALED).await;
    api.deploy(common::WORKED).await;
    api.deploy(&saga(&world)).await;
    let native = cluster.nodes[0].as_ref().unwrap().native.clone();
    let client = troupe_client::Client::connect(native).await.unwrap();
    let worker = common::upper_worker(&client);
    let (mut signaled, mut worked, mut sagas) = (Vec::new(), Vec::new(), Vec::new());
    for n in 0..8 {
        let id = format!("sig-{n}");
        assert!(api.start_retrying("signaled", &id, json!({})).await);
        signaled.push(id);
    }

    // Steady starts through every node while the busiest leader dies.
    let victim = (1..=3u64)
        .max_by_key(|n| leaders.iter().filter(|l| *l == n).count())
        .unwrap() as usize;
    let mut acknowledged = Vec::new();
    for n in 0..240 {
        if n == 80 {
            cluster.kill(victim);
        }
        let up = cluster.up();
        let via = up[n % up.len()];
        if n % 20 == 0 {
            let (w, g) = (format!("worked-{n}"), format!("saga-{n}"));
            assert!(
                cluster
                    .api(via)
                    .start_retrying("worked", &w, json!({"text": w}))
                    .await
            );
            assert!(
                cluster
                    .api(via)
                    .start_retrying("saga", &g, json!({"wf": g}))
                    .await
            );
            worked.push(w);
            sagas.push(g);
        }
        let id = format!("wf-{n}");
        if cluster
            .api(via)
            .start_retrying("flow", &id, json!({}))
            .await
        {
            acknowledged.push(id);
        }
    }
    assert!(
        acknowledged.len() >= 230,
        "only {} acknowledged",
        acknowledged.len()
    );

    // The survivors see the killed node as down.
    let observer = cluster.api(cluster.up()[0]);
    eventually(10, "the killed node shown down", || async {
        let (_, view) = observer.get("/v1/cluster").await;
        let node = view["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == victim)?
            .clone();
        (node["state"] == "down").then_some(())
    })
    .await;

    // Every acknowledged workflow finishes, read through any survivor.
    let reader = cluster.api(cluster.up()[0]);
    for id in &signaled {
        signal_retrying(&reader, id).await;
    }
    for id in &signaled {
        let view = reader.wait_status(id, "completed").await;
        assert_eq!(view["output"]["go"]["who"], id.as_str(), "{view}");
    }
    for id in &worked {
        let view = reader.wait_status(id, "completed").await;
        assert_eq!(view["output"]["text"], id.to_uppercase(), "{view}");
    }
    for id in &sagas {
        reader.wait_status(id, "compensated").await;
        // Calls are at least once across a failover; their order holds:
        // the failed step, then every undo of the hotel before any undo of
        // the flight.
        let calls = world.calls_for(id);
        let at = |p: &str| -> Vec<usize> {
            let at: Vec<usize> = (0..calls.len()).filter(|i| calls[*i] == p).collect();
            assert!(!at.is_empty(), "{id} never called {p}: {calls:?}");
            at
        };
        let (flight, hotel, car) = (at("/ok/flight"), at("/ok/hotel"), at("/status/400/car"));
        let (undo_hotel, undo_flight) = (at("/ok/undo-hotel"), at("/ok/undo-flight"));
        assert!(flight[0] < hotel[0] && hotel[0] < car[0], "{id}: {calls:?}");
        assert!(car.last() < undo_hotel.first(), "{id}: {calls:?}");
        assert!(undo_hotel.last() < undo_flight.first(), "{id}: {calls:?}");
    }
    worker.abort();
    for id in &acknowledged {
        eventually(30, "acknowledged workflow completes", || async {
            let (status, view) = reader.get(&format!("/v1/workflows/{id}")).await;
            (status == 200 && view["status"] == "completed").then_some(())
        })
        .await;
    }

    // The killed node comes back (from snapshots where its peers purged
    // their logs) and every replica of every shard ends identical.
    cluster.start_node(victim);
    cluster.leaders().await;
    let victim_api = cluster.api(victim);
    eventually(30, "the restarted node installs a snapshot", || async {
        let installed = victim_api
            .metric("troupe_raft_snapshots_installed_total")
            .await;
        (installed > 0.0).then_some(())
    })
    .await;
    eventually(60, "replicas converge", || async {
        let mut all = Vec::new();
        for id in 1..=3 {
            all.push(cluster.digests(id).await?);
        }
        (all[0] == all[1] && all[1] == all[2]).then_some(())
    })
    .await;

    // Two of three down: nothing is acknowledged until one returns, neither
    // at once (the survivor still leads its shards: their commits find no
    // quorum) nor a second later (it has stepped down). A start whose commit
    // failed is not counted as started.
    let survivor = 1 + victim % 3;
    let lonely = cluster.api(survivor);
    let started_before = lonely.metric("troupe_workflows_started_total").await;
    for id in 1..=3 {
        if id != survivor {
            cluster.kill(id);
        }
    }
    for round in ["at-once", "later"] {
        let refusals = (0..2 * SHARDS as usize).map(|n| {
            let lonely = &lonely;
            async move {
                lonely
                    .post(
                        "/v1/workflows",
                        json!({"definition": "flow", "id": format!("alone-{round}-{n}"), "input": {}}),
                    )
                    .await
            }
        });
        for (status, body) in futures_util::future::join_all(refusals).await {
            assert_eq!(status, 503, "acknowledged without a quorum: {body}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        lonely.metric("troupe_workflows_started_total").await,
        started_before,
        "starts refused for want of a quorum were counted as started"
    );
    let back = 1 + survivor % 3;
    cluster.start_node(back);
    cluster.leaders().await;
    assert!(
        lonely
            .start_retrying("flow", "after-quorum", json!({}))
            .await
    );
    eventually(
        30,
        "the workflow after the quorum returned completes",
        || async {
            let (status, view) = lonely.get("/v1/workflows/after-quorum").await;
            (status == 200 && view["status"] == "completed").then_some(())
        },
    )
    .await;
}

/// A Rust client given node 1 keeps working while node 1 is down: requests
/// in flight at the SIGKILL and every request after it go through another
/// member (a stand-in) until node 1 is back. Without the stand-in, requests
/// about shards node 1 led, and requests about no instance, would fail
/// once their retries ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_goes_through_another_member_while_its_own_node_is_down() {
    let dir = TempDir::new("cluster-standin");
    let mut cluster = Cluster::start(dir.path()).await;
    cluster.leaders().await;
    let home = cluster.nodes[0].as_ref().unwrap().native.clone();
    let client = troupe_client::Client::connect(home).await.unwrap();

    // Four callers start workflows back to back across the kill.
    let running = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut callers = tokio::task::JoinSet::new();
    for caller in 0..4 {
        let (client, running) = (client.clone(), running.clone());
        callers.spawn(async move {
            let mut started = Vec::new();
            let mut n = 0;
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("standin-{caller}-{n}");
                if let Err(e) = client.start("flow", Some(&id), &json!({})).await {
                    return Err(format!("{id}: {e}"));
                }
                started.push(id);
                n += 1;
            }
            Ok(started)
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(1);
    cluster.leaders().await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut started = Vec::new();
    while let Some(caller) = callers.join_next().await {
        started.extend(
            caller
                .unwrap()
                .expect("a start failed while node 1 was down"),
        );
    }
    assert!(started.len() > 40, "only {} started", started.len());

    // Requests about no instance, and reads, go through the stand-in too.
    client
        .deploy(&nap_flow("10ms").replace("name: flow", "name: quick"))
        .await
        .expect("a deploy while node 1 is down");
    let page = client
        .list(troupe_client::ListWorkflows::default())
        .await
        .expect("a list while node 1 is down");
    assert!(
        page["workflows"].as_array().is_some_and(|w| !w.is_empty()),
        "{page}"
    );
    for id in &started {
        let view = client.result(id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(view["status"], "completed", "{view}");
    }

    // Node 1 returns, and the client goes on through it.
    cluster.start_node(1);
    cluster.leaders().await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let view = client
        .start("quick", Some("after-return"), &json!({}))
        .await
        .unwrap();
    assert_eq!(view["created"], true, "{view}");
    let view = client
        .result("after-return", Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(view["status"], "completed", "{view}");
}

/// Runs `troupe-node --config config --node-id id`, expecting it to be
/// refused: returns its log once it exits (fails after 30 s).
fn run_refused(config: &Path, id: usize) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_troupe-node"))
        .args([
            "--config",
            config.to_str().unwrap(),
            "--node-id",
            &id.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn troupe-node");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("node {id} was not refused");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = child.wait().unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(
        !status.success(),
        "a refused node exits with an error: {log}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_with_another_cookie_or_a_lost_data_dir_are_refused() {
    let dir = TempDir::new("cluster-refuse");
    let mut cluster = Cluster::start(dir.path()).await;
    let config = cluster.config.clone();
    cluster.leaders().await;
    // The control plane links every member: each sees the others up.
    for id in 1..=3 {
        let api = cluster.api(id);
        eventually(20, "every member up on the control plane", || async {
            let (_, view) = api.get("/v1/cluster").await;
            let nodes = view["nodes"].as_array()?;
            nodes.iter().all(|n| n["state"] == "active").then_some(())
        })
        .await;
    }

    // Node 3 restarted with another cookie is refused and exits.
    cluster.kill(3);
    let text = std::fs::read_to_string(&config).unwrap();
    let other = dir.path().join("other-cookie.toml");
    std::fs::write(&other, text.replace(COOKIE, "not-the-cookie")).unwrap();
    let log = run_refused(&other, 3);
    assert!(log.contains("another cluster cookie"), "{log}");
    // The control plane sees it down meanwhile.
    let observer = cluster.api(1);
    eventually(10, "node 3 shown down", || async {
        let (_, view) = observer.get("/v1/cluster").await;
        let node = view["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == 3)?
            .clone();
        (node["state"] == "down").then_some(())
    })
    .await;

    // Node 3 on a wiped data dir is refused too: it would vote with no
    // memory of its votes.
    std::fs::remove_dir_all(dir.path().join("node-3")).unwrap();
    let log = run_refused(&config, 3);
    assert!(log.contains("refused by the cluster"), "{log}");
    assert!(log.contains("another data dir"), "{log}");

    // The right cookie and the original data dir are welcome: nodes 1 and
    // 2 still serve, and a restarted node 2 rejoins and serves.
    cluster.kill(2);
    cluster.start_node(2);
    let api = cluster.api(2);
    assert!(
        api.start_retrying("flow", "after-refusals", json!({}))
            .await
    );
    eventually(30, "the workflow completes", || async {
        let (status, view) = api.get("/v1/workflows/after-refusals").await;
        (status == 200 && view["status"] == "completed").then_some(())
    })
    .await;
}
