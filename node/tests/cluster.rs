//! Three cluster nodes in one process, with the transport's link filter
//! cutting one node off: a partitioned leader never acknowledges, the
//! majority elects and serves, and the healed node catches up to identical
//! shard state.

mod common;

use common::{Api, TempDir, eventually, free_port, init_tracing, nap_flow};
use serde_json::json;
use std::time::Duration;
use troupe_cluster::LinkFilter;
use troupe_node::{Config, Node, TaskHandlers};

const SHARDS: u32 = 4;
const NAP: &str = "200ms";

/// A three-member cluster config (ports picked now) for node `id`.
fn configs(dir: &TempDir) -> Vec<Config> {
    let ports: Vec<[u16; 3]> = (0..3)
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
    (1..=3)
        .map(|id| {
            let text = format!(
                "node-id = {id}\ndata-dir = \"{}/node-{id}\"\nshards = {SHARDS}\n[engine]\npassivate-after = \"300ms\"\n[cluster]\nreplication-factor = 3\nelection-timeout-min = \"300ms\"\nelection-timeout-max = \"600ms\"\nheartbeat-interval = \"100ms\"\n{members}",
                dir.path().display()
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
    init_tracing();
    // A port picked free may be taken by a test running beside this one
    // before the node binds it: then start again on other ports.
    for _ in 0..3 {
        let mut members = Vec::new();
        let mut taken = false;
        for config in configs(dir) {
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
        let _ = std::fs::remove_dir_all(dir.path());
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
    let view = majority.api.workflow(&served).await;
    assert_eq!(view["status"], "completed");
    for m in members {
        m.node.shutdown().await;
    }
}

const WORKED: &str = r#"
name: worked
version: 1
steps:
  - { id: shout, task: upper, input: { text: "${input.text}" }, output: shouted }
output:
  text: "${shouted.text}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_given_one_node_serves_every_shard() {
    let dir = TempDir::new("cluster-worker");
    let members = cluster(&dir).await;
    members[0].api.deploy(WORKED).await;
    leaders(&members).await;
    let client = troupe_client::Client::connect(members[0].node.native_addr().to_string())
        .await
        .unwrap();
    let worker = troupe_client::Worker::new(&client, "upper").handle("upper", |task| async move {
        let text = task.input["text"]
            .as_str()
            .unwrap_or_default()
            .to_uppercase();
        Ok(json!({ "text": text }))
    });
    let worker = tokio::spawn(worker.run());
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
