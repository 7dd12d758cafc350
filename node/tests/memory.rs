//! What a node keeps in memory: ended instances leave at once, and waiting
//! ones are shed when the memory budget runs short, so a node with a small
//! budget still takes every start. And on disk: ended instances are deleted
//! after their retention.

mod common;

use common::{Api, TempDir, eventually};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::time::Duration;
use troupe_node::Node;

/// A node that would keep idle instances for an hour, with `limits` TOML.
async fn node(dir: &TempDir, limits: &str) -> (Node, Api) {
    common::node_with(
        dir,
        &format!("[engine]\npassivate-after = \"1h\"\n[limits]\n{limits}\n"),
    )
    .await
}

fn live(node: &Node) -> usize {
    node.runtime().services.live.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_instances_leave_memory_at_once() {
    let dir = TempDir::new("memory-ended");
    let (node, api) = node(&dir, "").await;
    api.deploy("name: three\nversion: 1\nsteps:\n  - { id: a, task: noop }\n  - { id: b, task: noop }\n  - { id: c, task: noop }\n")
        .await;
    for n in 0..50 {
        let view = api
            .start("three", &format!("done-{n}"), json!({"n": n}))
            .await;
        assert_eq!(view["status"], "completed", "{view}");
    }
    // A repeated start, a signal to an ended instance and one to an unknown
    // id each wake an actor; none of them stays.
    let (status, _) = api
        .post(
            "/v1/workflows",
            json!({"definition": "three", "id": "done-0", "input": {"n": 0}}),
        )
        .await;
    assert_eq!(status, 200);
    api.post(
        "/v1/workflows/done-1/signals/late",
        json!({"id": "s1", "payload": {}}),
    )
    .await;
    let (status, _) = api
        .post(
            "/v1/workflows/nobody/signals/x",
            json!({"id": "s2", "payload": {}}),
        )
        .await;
    assert_eq!(status, 404);

    // Awaiting the result of ended (and unknown) instances leaves no waiter.
    for id in ["done-0", "done-49", "nobody"] {
        api.get(&format!("/v1/workflows/{id}/result?wait_ms=100"))
            .await;
    }
    assert_eq!(node.runtime().services.finished.len(), 0, "no waiter left");
    eventually(10, "every actor to leave memory", || async {
        (live(&node) == 0).then_some(())
    })
    .await;
    assert_eq!(node.runtime().services.budget.used(), 0, "nothing charged");
    // Reads of ended instances come from storage.
    assert_eq!(api.workflow("done-49").await["status"], "completed");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_instances_are_shed_when_memory_runs_short() {
    let dir = TempDir::new("memory-shed");
    // About a hundred small live instances fit in 1 MiB.
    let (node, api) = node(&dir, "memory-budget-mb = 1").await;
    api.deploy("name: nap\nversion: 1\nsteps:\n  - { id: nap, wait: 1h }\n")
        .await;
    let budget = node.runtime().services.budget.clone();
    let (mut refused, mut most_live) = (0u32, 0usize);
    for n in 0..600 {
        let id = format!("nap-{n}");
        loop {
            let (status, body) = api
                .post(
                    "/v1/workflows",
                    json!({"definition": "nap", "id": id, "input": {}}),
                )
                .await;
            match status {
                201 => break,
                429 => {
                    refused += 1;
                    assert!(refused < 2_000, "starts refused for good: {body}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("start {id}: {other} {body}"),
            }
        }
        most_live = most_live.max(live(&node));
    }
    eprintln!("refused {refused} times; at most {most_live} live");
    // Admission stops new starts at the limit; what was admitted just
    // before may overshoot it by an instance or two.
    assert!(
        budget.used() <= budget.limit() + (64 << 10),
        "{} bytes charged of {}",
        budget.used(),
        budget.limit()
    );
    assert!(
        most_live < 300,
        "idle instances were kept although memory was short: {most_live} live"
    );
    // Every instance waits, in memory or not, and wakes when addressed.
    for id in ["nap-0", "nap-300", "nap-599"] {
        assert_eq!(api.workflow(id).await["status"], "waiting", "{id}");
    }
    let (status, body) = api.post("/v1/workflows/nap-0/cancel", json!({})).await;
    assert_eq!(status, 200, "{body}");
    api.wait_status("nap-0", "cancelled").await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_instances_are_deleted_after_their_retention_and_waiting_ones_stay() {
    let dir = TempDir::new("memory-retention");
    let (node, api) = common::node_with(&dir, "[storage]\nretention = \"2s\"\n").await;
    api.deploy(
        "name: quick\nversion: 1\nsteps:\n  - { id: a, task: noop }\n  - { id: b, task: noop }\n",
    )
    .await;
    api.deploy("name: doomed\nversion: 1\nsteps:\n  - { id: a, fail: { code: nope } }\n")
        .await;
    api.deploy("name: sleepy\nversion: 1\nsteps:\n  - { id: nap, wait: 1h }\n")
        .await;
    for n in 0..20 {
        let view = api.start("quick", &format!("q-{n}"), json!({"n": n})).await;
        assert_eq!(view["status"], "completed", "{view}");
    }
    assert_eq!(
        api.start("doomed", "d-1", json!({})).await["status"],
        "failed"
    );
    api.start("sleepy", "s-1", json!({})).await;
    // Within its retention an ended instance is readable and its id taken
    // (the one that ended last: on a loaded machine the first may already
    // be past its two seconds).
    assert_eq!(api.workflow("q-19").await["status"], "completed");
    let other_input = json!({"definition": "quick", "id": "q-19", "input": {"n": 99}});
    let (status, body) = api.post("/v1/workflows", other_input.clone()).await;
    assert_eq!(status, 409, "{body}");

    eventually(15, "ended instances to be deleted", || async {
        (api.metric("troupe_instances_purged_total").await == 21.0).then_some(())
    })
    .await;
    // Not a key of them is left (their journal records, named in their
    // retention entries, with the rest).
    let store = node.runtime().services.store.clone();
    let mut left = Vec::new();
    for shard in 0..4 {
        store
            .export_shard(shard, 1 << 20, |entries| {
                left.extend(entries.into_iter().map(|e| e.key).filter(|key| {
                    key.windows(2).any(|w| w == b"q-") || key.windows(3).any(|w| w == b"d-1")
                }));
                Ok(())
            })
            .unwrap();
    }
    drop(store);
    assert!(left.is_empty(), "keys left: {left:?}");
    for id in ["q-0", "q-19", "d-1"] {
        let (status, body) = api.get(&format!("/v1/workflows/{id}")).await;
        assert_eq!(status, 404, "{id}: {body}");
        let (status, _) = api.get(&format!("/v1/workflows/{id}/history")).await;
        assert_eq!(status, 404, "history of {id}");
    }
    let (_, listed) = api.get("/v1/workflows?limit=100").await;
    let ids = common::strings(&listed["workflows"], "id");
    assert_eq!(ids, ["s-1"], "only the waiting instance is listed");
    assert_eq!(api.workflow("s-1").await["status"], "waiting");
    let (_, completed) = api.get("/v1/workflows?status=completed").await;
    assert_eq!(completed["workflows"], json!([]));
    assert_eq!(gauge_of(&api, "completed").await, 0.0);
    assert_eq!(gauge_of(&api, "failed").await, 0.0);
    assert_eq!(gauge_of(&api, "waiting").await, 1.0);

    // The id is free again: the same start now begins a new instance.
    let (status, body) = api.post("/v1/workflows", other_input).await;
    assert_eq!(status, 201, "{body}");
    node.shutdown().await;

    // The deletions were durable, and the counts read at start agree.
    let (node, api) = common::node_with(&dir, "[storage]\nretention = \"never\"\n").await;
    let (status, _) = api.get("/v1/workflows/q-1").await;
    assert_eq!(status, 404);
    assert_eq!(api.workflow("q-19").await["input"], json!({"n": 99}));
    assert_eq!(gauge_of(&api, "completed").await, 1.0);
    node.shutdown().await;
}

/// The node's `troupe_workflows` gauge for `status`.
async fn gauge_of(api: &Api, status: &str) -> f64 {
    let page = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    let text = page.text().await.unwrap();
    let line = format!("troupe_workflows{{status=\"{status}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&line)?.parse::<f64>().ok())
        .unwrap_or(0.0)
}
