//! Shards as units: one moves between two nodes' data dirs through export
//! and import and its instances carry on there; shards are activated and
//! deactivated on a running node under load without losing acknowledged
//! work.

mod common;

use common::{Api, TempDir, eventually};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use troupe_node::Node;
use troupe_protocol::shard_of;

const SHARDS: u32 = 4;

async fn node(dir: &TempDir) -> (Node, Api) {
    common::node_with(dir, "[engine]\npassivate-after = \"300ms\"\n").await
}

/// An id of `prefix` that lands on `shard`.
fn id_on(prefix: &str, shard: u32) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|id| shard_of(id, SHARDS) == shard)
        .expect("some id lands on every shard")
}

const DEFINITIONS: &str = r#"
name: nap
version: 1
steps:
  - { id: nap, wait: 1500ms }
  - { id: done, task: noop }
---
name: ask
version: 1
steps:
  - { id: ask, human: { assignee: ops, timeout: 1h } }
---
name: work
version: 1
steps:
  - { id: job, task: outside.work, timeout: 1h }
---
name: undo
version: 1
steps:
  - { id: charge, task: noop, compensate: { task: outside.refund, retry: { max_attempts: 1 } } }
  - { id: hold, await: never, timeout: 1h }
"#;

async fn deploy_all(api: &Api) {
    for doc in DEFINITIONS.split("---") {
        api.deploy(doc.trim()).await;
    }
}

/// Polls one task of `task_type` over HTTP.
async fn poll(api: &Api, task_type: &str) -> Value {
    let (status, body) = api
        .post(
            "/v1/tasks/poll",
            json!({"worker": "t", "task_types": [task_type], "max": 1, "wait_ms": 5000}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["tasks"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_moves_to_another_data_dir_and_its_instances_continue() {
    let (dir_a, dir_b) = (TempDir::new("move-a"), TempDir::new("move-b"));
    let (a, api_a) = node(&dir_a).await;
    let (b, api_b) = node(&dir_b).await;
    deploy_all(&api_a).await;
    deploy_all(&api_b).await;
    let shard = 2;
    let (nap, ask, work, undo) = (
        id_on("nap", shard),
        id_on("ask", shard),
        id_on("work", shard),
        id_on("undo", shard),
    );
    for (def, id) in [
        ("nap", &nap),
        ("ask", &ask),
        ("work", &work),
        ("undo", &undo),
    ] {
        api_a.start(def, id, json!({})).await;
    }
    // The compensation of `undo` fails for good: an incident opens.
    api_a
        .post(&format!("/v1/workflows/{undo}/cancel"), json!({}))
        .await;
    let refund = poll(&api_a, "outside.refund").await;
    let token = refund["token"].as_str().unwrap();
    api_a
        .post(
            &format!("/v1/tasks/{token}/fail"),
            json!({"code": "refund_refused", "message": "no", "retryable": false}),
        )
        .await;
    api_a.wait_status(&undo, "compensation_failed").await;
    api_a.wait_status(&ask, "waiting").await;

    // Move the shard: stop it on A, copy its state to B, start it there.
    let (ra, rb) = (a.runtime(), b.runtime());
    ra.deactivate(shard).await.unwrap();
    rb.deactivate(shard).await.unwrap();
    let (from, to) = (ra.services.store.clone(), rb.services.store.clone());
    let digest = from.shard_digest(shard).unwrap();
    from.export_shard(shard, 4096, |entries| to.import_shard(shard, entries))
        .unwrap();
    assert_eq!(to.shard_digest(shard).unwrap(), digest);
    from.delete_shard(shard).unwrap();
    rb.activate(shard).await.unwrap();
    let (status, _) = api_a.get(&format!("/v1/workflows/{nap}")).await;
    assert_eq!(status, 503, "A no longer serves the shard");

    // On B: the timer fires, the worker's task is delivered again, the
    // human task and the incident are there.
    api_b.wait_status(&nap, "completed").await;
    let task = poll(&api_b, "outside.work").await;
    assert_eq!(task["workflow_id"], work.as_str(), "{task}");
    let token = task["token"].as_str().unwrap();
    let (status, body) = api_b
        .post(
            &format!("/v1/tasks/{token}/complete"),
            json!({"output": {}}),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    api_b.wait_status(&work, "completed").await;
    let (_, tasks) = api_b.get("/v1/human-tasks?assignee=ops").await;
    let human = tasks["human_tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["workflow_id"] == ask.as_str())
        .cloned()
        .expect("the human task moved");
    let (status, _) = api_b
        .post(
            &format!("/v1/human-tasks/{}/complete", human["id"].as_str().unwrap()),
            json!({"payload": {"ok": true}}),
        )
        .await;
    assert_eq!(status, 200);
    api_b.wait_status(&ask, "completed").await;
    let (_, incidents) = api_b.get("/v1/incidents").await;
    assert!(
        incidents["incidents"]
            .as_array()
            .unwrap()
            .iter()
            .any(|i| i["workflow_id"] == undo.as_str()),
        "{incidents}"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_come_and_go_under_load_without_losing_acknowledged_work() {
    let dir = TempDir::new("toggle");
    let (node, api) = node(&dir).await;
    api.deploy("name: three\nversion: 1\nsteps:\n  - { id: a, task: noop }\n  - { id: w, wait: 50ms }\n  - { id: c, task: noop }\n")
        .await;
    let runtime = node.runtime().clone();
    let stop = Arc::new(AtomicBool::new(false));
    let toggler = {
        let (runtime, stop) = (runtime.clone(), stop.clone());
        tokio::spawn(async move {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let shard = round % SHARDS;
                runtime.deactivate(shard).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                runtime.activate(shard).await.unwrap();
                tokio::time::sleep(Duration::from_millis(30)).await;
                round += 1;
            }
            round
        })
    };
    // Four clients start workflows; an `unavailable` answer is retried.
    let mut clients = tokio::task::JoinSet::new();
    for c in 0..4 {
        let api = api.clone();
        clients.spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..60 {
                let id = format!("t-{c}-{n}");
                loop {
                    let (status, body) = api
                        .post(
                            "/v1/workflows",
                            json!({"definition": "three", "id": id, "input": {}}),
                        )
                        .await;
                    match status {
                        200 | 201 => break,
                        503 => tokio::time::sleep(Duration::from_millis(10)).await,
                        other => panic!("start {id}: {other} {body}"),
                    }
                }
                acknowledged.push(id);
            }
            acknowledged
        });
    }
    let mut acknowledged = Vec::new();
    while let Some(ids) = clients.join_next().await {
        acknowledged.extend(ids.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = toggler.await.unwrap();
    assert!(rounds >= 2, "shards moved while load ran ({rounds} rounds)");
    for shard in 0..SHARDS {
        runtime.activate(shard).await.unwrap();
    }
    for id in &acknowledged {
        eventually(30, &format!("{id} to complete"), || async {
            let (status, body) = api.get(&format!("/v1/workflows/{id}")).await;
            (status == 200 && body["status"] == "completed").then_some(())
        })
        .await;
    }
    assert_eq!(acknowledged.len(), 240);
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_due_when_a_shard_activates_all_fire() {
    let dir = TempDir::new("shards-due");
    let (first, api) = node(&dir).await;
    api.deploy("name: short\nversion: 1\nsteps:\n  - { id: nap, wait: 200ms }\n  - { id: done, task: noop }\n")
        .await;
    let ids: Vec<String> = (0..300).map(|n| format!("due-{n}")).collect();
    for id in &ids {
        api.start("short", id, json!({})).await;
    }
    first.shutdown().await;
    // Every timer is past due when the shards activate again: each fires
    // as its shard comes up, none into a shard not yet routed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (second, api) = node(&dir).await;
    eventually(20, "every instance to complete", || async {
        let (_, page) = api.get("/v1/workflows?status=waiting&limit=5").await;
        page["workflows"]
            .as_array()
            .unwrap()
            .is_empty()
            .then_some(())
    })
    .await;
    for id in ids.iter().step_by(37) {
        assert_eq!(api.workflow(id).await["status"], "completed", "{id}");
    }
    second.shutdown().await;
}

/// A node whose timer window is one second.
async fn windowed(dir: &TempDir) -> (Node, Api) {
    common::node_with(
        dir,
        "[engine]\npassivate-after = \"300ms\"\ntimer-window = \"1s\"\n",
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_past_the_window_wait_on_disk_and_fire_when_it_reaches_them() {
    let dir = TempDir::new("shards-window");
    let (first, api) = windowed(&dir).await;
    api.deploy(
        "name: soon\nversion: 1\nsteps:\n  - { id: nap, wait: 3s }\n  - { id: done, task: noop }\n",
    )
    .await;
    api.deploy("name: later\nversion: 1\nsteps:\n  - { id: nap, wait: 1h }\n")
        .await;
    for n in 0..20 {
        api.start("soon", &format!("soon-{n}"), json!({})).await;
        api.start("later", &format!("later-{n}"), json!({})).await;
    }
    // Every timer was past the window when armed: none is in memory. The
    // 3-s ones are read back as the window reaches them, and fire.
    eventually(30, "every 3-s wait to complete", || async {
        let (_, page) = api
            .get("/v1/workflows?definition=soon&status=completed&limit=50")
            .await;
        (page["workflows"].as_array()?.len() == 20).then_some(())
    })
    .await;
    // The hour-long timers never came into memory.
    eventually(5, "no timer held in memory", || async {
        (api.metric("troupe_timers_armed").await == 0.0).then_some(())
    })
    .await;
    let (_, waiting) = api
        .get("/v1/workflows?definition=later&status=waiting&limit=50")
        .await;
    assert_eq!(waiting["workflows"].as_array().unwrap().len(), 20);

    // Activation reads only the window: after a restart, still nothing.
    first.shutdown().await;
    let (second, api) = windowed(&dir).await;
    api.deploy(
        "name: soon\nversion: 1\nsteps:\n  - { id: nap, wait: 3s }\n  - { id: done, task: noop }\n",
    )
    .await;
    api.start("soon", "soon-after-restart", json!({})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.metric("troupe_timers_armed").await, 0.0);
    api.wait_status("soon-after-restart", "completed").await;
    second.shutdown().await;
}
