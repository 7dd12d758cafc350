//! Three cluster nodes in one process, with the transport's link filter
//! cutting one node off: a partitioned leader never acknowledges, the
//! majority elects and serves, and the healed node catches up to identical
//! shard state.

mod common;

use common::{Api, TempDir, eventually, free_port, init_tracing, nap_flow};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use troupe_cluster::LinkFilter;
use troupe_node::{Config, Node, TaskHandlers};

const SHARDS: u32 = 4;
const NAP: &str = "200ms";

/// The configs of a `size`-member cluster keeping `replication_factor`
/// replicas of each shard (ports picked now), with data under `dir`.
fn configs(dir: &std::path::Path, size: u64, replication_factor: usize) -> Vec<Config> {
    let ports: Vec<[u16; 3]> = (0..size)
        .map(|_| [free_port(), free_port(), free_port()])
        .collect();
    let members: String = ports
        .iter()
        .enumerate()
        .map(|(i, [http, native, raft])| {
            format!(
                "[[cluster.members]]\nid = {}\nhttp-addr = \"127.0.0.1:{http}\"\nnative-addr = \"127.0.0.1:{native}\"\nraft-addr = \"127.0.0.1:{raft}\"\n",
                i + 1
            )
        })
        .collect();
    (1..=size)
        .map(|id| {
            let text = format!(
                "node-id = {id}\ndata-dir = \"{}/node-{id}\"\nshards = {SHARDS}\n[engine]\npassivate-after = \"300ms\"\n[cluster]\nreplication-factor = {replication_factor}\nelection-timeout-min = \"300ms\"\nelection-timeout-max = \"600ms\"\nheartbeat-interval = \"100ms\"\n{members}",
                dir.display()
            );
            let mut config = Config::from_toml(&text).unwrap();
            let me = config.cluster.as_ref().unwrap().member(id).unwrap().clone();
            config.http_addr = me.http_addr;
            config.native_addr = me.native_addr;
            config
        })
        .collect()
}

struct Member {
    node: Node,
    api: Api,
    links: LinkFilter,
}

async fn cluster(dir: &TempDir) -> Vec<Member> {
    cluster_of(dir, 3, 3).await
}

async fn cluster_of(dir: &TempDir, size: u64, replication_factor: usize) -> Vec<Member> {
    cluster_with(dir, size, replication_factor, |_| {}).await
}

/// A cluster whose configs `tweak` changes before the nodes start.
async fn cluster_with(
    dir: &TempDir,
    size: u64,
    replication_factor: usize,
    tweak: fn(&mut Config),
) -> Vec<Member> {
    init_tracing();
    // A port picked free may be taken by a test running beside this one
    // before the node binds it: then start again on other ports, in new
    // data dirs (a node of the failed try may still hold its RocksDB lock
    // while it stops).
    for attempt in 0..3 {
        let mut members = Vec::new();
        let mut taken = false;
        let data = dir.path().join(format!("try-{attempt}"));
        for mut config in configs(&data, size, replication_factor) {
            tweak(&mut config);
            let links = LinkFilter::default();
            match Node::start_linked(config, TaskHandlers::default(), links.clone()).await {
                Ok(node) => {
                    let api = Api::new(&format!("http://{}", node.http_addr()));
                    members.push(Member { node, api, links });
                }
                Err(e) if format!("{e:#}").contains("Address already in use") => {
                    taken = true;
                    break;
                }
                Err(e) => panic!("node starts: {e:#}"),
            }
        }
        if !taken {
            return members;
        }
        for m in members {
            m.node.shutdown().await;
        }
    }
    panic!("no free ports for a cluster in three tries");
}

/// Shard → leader, once every shard has one that has activated it.
async fn leaders(members: &[Member]) -> Vec<u64> {
    eventually(20, "every shard led and active", || async {
        let mut leaders = vec![0; SHARDS as usize];
        for (i, m) in members.iter().enumerate() {
            for shard in 0..SHARDS {
                if m.node.runtime().router().is_active(shard) {
                    leaders[shard as usize] = i as u64 + 1;
                }
            }
        }
        leaders.iter().all(|l| *l != 0).then_some(leaders)
    })
    .await
}

/// An instance id of `shard`.
fn id_on(shard: u32, n: usize) -> String {
    (0..)
        .map(|k| format!("wf-{n}-{k}"))
        .find(|id| troupe_protocol::shard_of(id, SHARDS) == shard)
        .unwrap()
}

async fn digests(members: &[Member], shard: u32) -> Vec<u64> {
    members
        .iter()
        .map(|m| m.node.runtime().services.store.shard_digest(shard).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn any_node_serves_and_a_partitioned_leader_never_acknowledges() {
    let dir = TempDir::new("cluster");
    let members = cluster(&dir).await;
    members[0].api.deploy(&nap_flow(NAP)).await;
    let leaders = leaders(&members).await;

    // Any node takes any start and any read; the leader runs it.
    for (n, m) in members.iter().enumerate() {
        for shard in 0..SHARDS {
            let id = id_on(shard, n);
            assert!(m.api.start_retrying("flow", &id, json!({})).await);
        }
    }
    for (n, _) in members.iter().enumerate() {
        for shard in 0..SHARDS {
            let id = id_on(shard, n);
            members[(n + 1) % 3].api.wait_status(&id, "completed").await;
        }
    }

    // Cut the leader of shard 0 off from the others.
    let shard = 0;
    let old = leaders[shard as usize];
    let others: Vec<u64> = (1..=3).filter(|n| *n != old).collect();
    for m in &members {
        for other in &others {
            m.links.cut_both(old, *other);
        }
    }
    // The cut-off leader cannot commit: a start there is not acknowledged.
    let cut_off = &members[old as usize - 1];
    let lost = id_on(shard, 100);
    let (status, body) = cut_off
        .api
        .post(
            "/v1/workflows",
            json!({"definition": "flow", "id": lost, "input": {}}),
        )
        .await;
    assert!(
        status >= 500,
        "a partitioned leader acknowledged: {status} {body}"
    );

    // The majority elects a new leader and serves the shard.
    let majority = &members[others[0] as usize - 1];
    let served = id_on(shard, 200);
    eventually(15, "the majority serves shard 0", || async {
        let (status, _) = majority
            .api
            .post(
                "/v1/workflows",
                json!({"definition": "flow", "id": served, "input": {}}),
            )
            .await;
        (status == 201 || status == 200).then_some(())
    })
    .await;
    majority.api.wait_status(&served, "completed").await;
    let new_leader = members[others[0] as usize - 1]
        .node
        .peers()
        .unwrap()
        .cluster()
        .leader_of(shard);
    assert!(
        new_leader.is_some_and(|l| l != old),
        "leader {new_leader:?}"
    );
    assert!(
        !cut_off.node.runtime().router().is_active(shard) || {
            // Stepping down takes one missed round of heartbeats.
            tokio::time::sleep(Duration::from_secs(2)).await;
            !cut_off.node.runtime().router().is_active(shard)
        }
    );

    // Healed, the old leader catches up: every replica of every shard ends
    // with identical state.
    for m in &members {
        m.links.heal();
    }
    for shard in 0..SHARDS {
        eventually(20, "replicas converge", || async {
            let d = digests(&members, shard).await;
            (d[0] == d[1] && d[1] == d[2]).then_some(())
        })
        .await;
    }
    // Healing may move the shard's leader again: a read meanwhile is
    // answered 503 (retry), as the contract says, until it is active.
    majority.api.wait_status(&served, "completed").await;
    for m in members {
        m.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_given_one_node_serves_every_shard() {
    let dir = TempDir::new("cluster-worker");
    let members = cluster(&dir).await;
    members[0].api.deploy(common::WORKED).await;
    leaders(&members).await;
    let client = troupe_client::Client::connect(members[0].node.native_addr().to_string())
        .await
        .unwrap();
    let worker = common::upper_worker(&client);
    let ids: Vec<String> = (0..SHARDS).map(|shard| id_on(shard, 7)).collect();
    for id in &ids {
        assert!(
            members[2]
                .api
                .start_retrying("worked", id, json!({"text": id}))
                .await
        );
    }
    for id in &ids {
        let view = members[1].api.wait_status(id, "completed").await;
        assert_eq!(view["output"]["text"], id.to_uppercase(), "{view}");
    }
    worker.abort();
    for m in members {
        m.node.shutdown().await;
    }
}

/// Deploys through `api` until one is accepted (the metadata group may be
/// electing); returns the HTTP status.
async fn deploy_retrying(api: &Api, yaml: &str) -> u16 {
    eventually(15, "a deploy accepted", || async {
        let (status, _) = api
            .send("PUT", "/v1/definitions", Some(yaml.to_owned()))
            .await;
        (status != 503).then_some(status)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deploys_go_through_the_metadata_group_and_reach_a_member_that_was_cut_off() {
    let dir = TempDir::new("cluster-meta");
    let members = cluster(&dir).await;
    leaders(&members).await;
    // The metadata group wrote the first cluster map: epoch 1 everywhere.
    for m in &members {
        eventually(10, "the cluster map", || async {
            let (_, view) = m.api.get("/v1/cluster").await;
            (view["epoch"] == 1).then_some(())
        })
        .await;
    }

    // Node 3 is cut off; a deploy made on node 1 is held by the majority.
    for m in &members {
        m.links.cut_both(3, 1);
        m.links.cut_both(3, 2);
    }
    let flow = nap_flow(NAP);
    assert_eq!(deploy_retrying(&members[0].api, &flow).await, 201);
    let stored = |m: &Member| {
        m.node
            .runtime()
            .services
            .store
            .definition("flow", 1)
            .unwrap()
    };
    assert!(
        stored(&members[1]).is_some(),
        "the majority holds the deploy"
    );
    assert!(
        stored(&members[2]).is_none(),
        "a cut-off member cannot have it"
    );
    // The same version with other content is refused, from any node: the
    // metadata leader checks every deploy.
    let other = flow.replace(NAP, "300ms");
    assert_eq!(deploy_retrying(&members[1].api, &other).await, 409);
    assert_eq!(deploy_retrying(&members[1].api, &flow).await, 200);

    // Healed, node 3 applies the deploy and starts the definition's
    // instances as leader of its shards.
    for m in &members {
        m.links.heal();
    }
    eventually(20, "node 3 holds the deploy", || async {
        stored(&members[2]).map(|_| ())
    })
    .await;
    let (status, body) = members[2].api.get("/v1/definitions/flow").await;
    assert_eq!(status, 200, "{body}");
    let leaders = leaders(&members).await;
    for shard in 0..SHARDS {
        let id = id_on(shard, 9);
        assert!(members[2].api.start_retrying("flow", &id, json!({})).await);
        let view = members[2].api.wait_status(&id, "completed").await;
        assert_eq!(
            view["status"], "completed",
            "shard {shard} led by {}",
            leaders[shard as usize]
        );
    }
    for m in members {
        m.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rust_client_sends_each_instance_to_its_shard_leader() {
    let dir = TempDir::new("cluster-route");
    let members = cluster(&dir).await;
    members[0].api.deploy(&nap_flow("10ms")).await;
    let leaders = leaders(&members).await;
    let forwarded = || members[0].api.metric("troupe_cluster_forwarded_total");

    // Starts and reads through node 1's client reach every shard's leader
    // directly: nothing is forwarded between nodes.
    let client = troupe_client::Client::connect(members[0].node.native_addr().to_string())
        .await
        .unwrap();
    let before = forwarded().await;
    for shard in 0..SHARDS {
        let id = id_on(shard, 11);
        client.start("flow", Some(&id), &json!({})).await.unwrap();
        let view = client.result(&id, Duration::from_secs(10)).await.unwrap();
        assert_eq!(view["status"], "completed", "{view}");
    }
    assert_eq!(forwarded().await, before, "a start was forwarded");
    // The same through HTTP on node 1 is forwarded for shards it does not lead.
    for shard in 0..SHARDS {
        assert!(
            members[0]
                .api
                .start_retrying("flow", &id_on(shard, 12), json!({}))
                .await
        );
    }
    let elsewhere = leaders.iter().filter(|l| **l != 1).count() as f64;
    assert!(forwarded().await - before >= elsewhere);

    // A routed request to a node that does not lead the shard is answered
    // `not_leader`, naming the leader.
    let shard = (0..SHARDS).find(|s| leaders[*s as usize] != 1).unwrap();
    let leader = leaders[shard as usize];
    let request = troupe_protocol::Request::Routed(Box::new(troupe_protocol::Request::Workflow {
        id: id_on(shard, 11),
    }));
    let direct = client
        .clone()
        .without_routing()
        .with_retry(troupe_client::RetryPolicy::none());
    match direct.request(request, true).await {
        Err(troupe_client::Error::Node { code, details, .. }) => {
            assert_eq!(code, troupe_client::ErrorCode::NotLeader);
            assert_eq!(details["leader"], leader);
            let member = &members[leader as usize - 1];
            assert_eq!(
                details["native_addr"],
                member.node.native_addr().to_string()
            );
        }
        other => panic!("expected not_leader, got {other:?}"),
    }
    for m in members {
        m.node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listings_and_events_span_the_shards_when_each_node_holds_only_some() {
    // One replica per shard: every node holds a part of the shards, and
    // lists, human tasks and published events must reach the others.
    let dir = TempDir::new("cluster-gather");
    let members = cluster_of(&dir, 3, 1).await;
    leaders(&members).await;
    let flow = r#"
name: gathered
version: 1
steps:
  - id: approve
    human: { assignee: ann, timeout: 1h }
  - { id: paid, await: paid, correlation: "${input.order}", timeout: 1h }
"#;
    deploy_retrying(&members[0].api, flow).await;
    let ids: Vec<String> = (0..SHARDS).map(|shard| id_on(shard, 0)).collect();
    for (n, id) in ids.iter().enumerate() {
        let api = &members[n % members.len()].api;
        assert!(
            api.start_retrying("gathered", id, json!({"order": "o-1"}))
                .await
        );
    }
    let mut sorted = ids.clone();
    sorted.sort();
    for m in &members {
        let (status, all) = m.api.get("/v1/workflows?limit=100").await;
        assert_eq!(status, 200, "{all}");
        let listed = common::strings(&all["workflows"], "id");
        assert_eq!(listed, sorted, "every shard's instances, in id order");
        assert!(all["next_cursor"].is_null());
    }
    // Page by page from one node: the cursor carries across the shards.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/workflows?limit=1&cursor={}", common::encode(c)),
            None => "/v1/workflows?limit=1".into(),
        };
        let (_, page) = members[1].api.get(&path).await;
        paged.extend(
            page["workflows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(paged, sorted);
    let (_, newest) = members[2]
        .api
        .get("/v1/workflows?order=newest&limit=2")
        .await;
    assert_eq!(newest["workflows"].as_array().unwrap().len(), 2);
    assert!(newest["next_cursor"].is_string());

    // Every human task, from any node; each completed through a node that
    // may not hold its shard.
    let tasks = eventually(10, "a human task per instance", || async {
        let (_, list) = members[0].api.get("/v1/human-tasks?assignee=ann").await;
        let tasks = list["human_tasks"].as_array().cloned().unwrap_or_default();
        (tasks.len() == ids.len()).then_some(tasks)
    })
    .await;
    for (n, task) in tasks.iter().enumerate() {
        let id = task["id"].as_str().unwrap();
        let api = &members[n % members.len()].api;
        let (status, body) = api
            .post(
                &format!("/v1/human-tasks/{id}/complete"),
                json!({"payload": {}}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Publishing on one node reaches the waiting instances of every shard
    // (published again until each has reached its await step).
    let delivered = std::sync::atomic::AtomicU64::new(0);
    eventually(10, "the event delivered on every shard", || async {
        let (status, body) = members[1]
            .api
            .post(
                "/v1/events/paid",
                json!({"id": format!("paid-{}", rand_suffix()), "correlation_key": "o-1"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        let total = delivered.fetch_add(body["delivered"].as_u64().unwrap(), Ordering::SeqCst)
            + body["delivered"].as_u64().unwrap();
        (total == ids.len() as u64).then_some(())
    })
    .await;
    for id in &ids {
        members[0].api.wait_status(id, "completed").await;
    }
    for m in members {
        m.node.shutdown().await;
    }
}

/// A suffix that differs from call to call.
/// Retention's deletions go through each shard's replication group: every
/// replica deletes the same keys and the shards stay identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_replica_deletes_instances_past_retention() {
    let dir = TempDir::new("cluster-retention");
    let members = cluster_with(&dir, 3, 3, |config| {
        config.storage.retention = Some(Duration::from_secs(1));
    })
    .await;
    leaders(&members).await;
    deploy_retrying(
        &members[0].api,
        "name: quick\nversion: 1\nsteps:\n  - { id: a, task: noop }\n",
    )
    .await;
    deploy_retrying(&members[0].api, &nap_flow("1h")).await;
    let ended: Vec<String> = (0..SHARDS).map(|shard| id_on(shard, 0)).collect();
    let waiting: Vec<String> = (0..SHARDS).map(|shard| id_on(shard, 1)).collect();
    for (n, (done, wait)) in ended.iter().zip(&waiting).enumerate() {
        let api = &members[n % members.len()].api;
        assert!(api.start_retrying("quick", done, json!({})).await);
        assert!(api.start_retrying("flow", wait, json!({})).await);
    }
    eventually(
        20,
        "every replica to delete the ended instances",
        || async {
            let gone = members.iter().all(|m| {
                let store = &m.node.runtime().services.store;
                (0..SHARDS).all(|shard| {
                    store
                        .instance_head(shard, &ended[shard as usize])
                        .unwrap()
                        .is_none()
                })
            });
            gone.then_some(())
        },
    )
    .await;
    for shard in 0..SHARDS {
        let digests = eventually(10, "replicas to agree", || async {
            let d = digests(&members, shard).await;
            d.iter().all(|x| *x == d[0]).then_some(d)
        })
        .await;
        assert_eq!(digests.len(), 3);
        for m in &members {
            let store = &m.node.runtime().services.store;
            let head = store
                .instance_head(shard, &waiting[shard as usize])
                .unwrap();
            assert!(
                head.is_some(),
                "the waiting instance stays on every replica"
            );
        }
    }
    for m in members {
        m.node.shutdown().await;
    }
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}
