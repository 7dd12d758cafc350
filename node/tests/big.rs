//! Big instances: a `foreach` over thousands of items writes about as many
//! bytes per event at the end as at the start (snapshots only as often as
//! the journal outweighs them), its view stays a summary, its step list
//! pages, and it survives a restart in the middle.

mod common;

use common::{Api, TempDir, eventually};
use serde_json::{Value, json};
use std::time::Duration;

const BIG: &str = r#"
name: big
version: 1
steps:
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 50
    output: results
    steps: [ { id: double, task: noop, input: "${item * 2}" } ]
"#;

/// Waits (up to a minute) for a restarted foreach to complete, then checks
/// it returned every item in order and completed `runs` step runs.
async fn completes_with(api: &Api, id: &str, items: &[u64], runs: u64) {
    let mut view = Value::Null;
    for _ in 0..600 {
        view = api.workflow(id).await;
        if view["status"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(view["status"], "completed", "{}", view["step_counts"]);
    assert_eq!(view["output"]["results"], json!(items));
    assert_eq!(
        view["step_counts"]["completed"],
        json!(runs),
        "{}",
        view["step_counts"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_foreach_writes_snapshots_in_proportion_to_its_journal() {
    let dir = TempDir::new("big-foreach");
    let (node, api) = common::node_with(&dir, "").await;
    api.deploy(BIG).await;
    let n = 3000;
    let items: Vec<u64> = (0..n).collect();
    api.start("big", "big-1", json!({ "items": items })).await;
    let done = api.wait_status("big-1", "completed").await;
    let doubled: Vec<u64> = items.iter().map(|i| i * 2).collect();
    assert_eq!(done["output"]["results"], json!(doubled));

    // Rewriting the whole state on each transition would write O(n²)
    // snapshot bytes; a snapshot each time the journal outweighs the last
    // one keeps them within a small multiple of the journal (plus the
    // final state, written when the instance ends).
    let journal = api.metric("troupe_journal_bytes_total").await;
    let snapshots = api.metric("troupe_snapshot_bytes_total").await;
    assert!(journal > 0.0);
    assert!(
        snapshots < 3.0 * journal,
        "snapshot bytes {snapshots} against journal bytes {journal}"
    );

    // The view is a summary: counts, and at most 100 runs listed.
    assert_eq!(
        done["step_counts"]["completed"],
        json!(n + 1),
        "{}",
        done["step_counts"]
    );
    assert!(done["steps"].as_array().unwrap().len() <= 100);
    assert_eq!(
        done["steps_omitted"].as_u64().unwrap() + done["steps"].as_array().unwrap().len() as u64,
        n + 1
    );
    // The step list pages through every run, archived ones included.
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/workflows/big-1/steps?limit=1000".to_owned(),
            Some(c) => format!(
                "/v1/workflows/big-1/steps?limit=1000&cursor={}",
                common::encode(c)
            ),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        seen += page["steps"].as_array().unwrap().len();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen as u64, n + 1);
    node.shutdown().await;
}

const SLOW: &str = r#"
name: slow
version: 1
steps:
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 40
    output: results
    steps:
      - { id: nap, wait: 100ms }
      - { id: echo, task: noop, input: "${item}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_foreach_resumes_from_snapshot_and_journal_after_a_restart() {
    let dir = TempDir::new("big-restart");
    let (node, api) = common::node_with(&dir, "").await;
    api.deploy(SLOW).await;
    let items: Vec<u64> = (0..600).collect();
    api.start("slow", "slow-1", json!({ "items": items })).await;
    // Stop it part-way: some iterations folded, some waiting on timers.
    eventually(20, "some iterations to finish", || async {
        let view = api.workflow("slow-1").await;
        let done = view["step_counts"]["completed"].as_u64().unwrap_or(0);
        (done > 100).then_some(())
    })
    .await;
    node.shutdown().await;

    let (node, api) = common::node_with(&dir, "").await;
    // Every iteration ran each step once: 600 naps and 600 echoes, plus
    // the foreach.
    completes_with(&api, "slow-1", &items, 1201).await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_retention_drops_old_events_and_the_instance_carries_on() {
    let dir = TempDir::new("big-retention");
    let (node, api) = common::node_with(&dir, "[storage]\nhistory-retention-events = 50\n").await;
    api.deploy(
        "name: ticker\nversion: 1\nsteps:\n  - { id: init, set: { beats: 0 } }\n  - id: tick\n    loop: \"beats < 400\"\n    steps:\n      - { id: nap, wait: 1ms }\n      - { id: beat, set: { beats: \"${beats + 1}\" } }\n",
    )
    .await;
    api.start("ticker", "tick-1", json!({})).await;
    let done = api.wait_status("tick-1", "completed").await;
    assert_eq!(done["output"]["beats"], json!(400));
    let (_, history) = api.get("/v1/workflows/tick-1/history?limit=10000").await;
    let events = history["events"].as_array().unwrap();
    // 401 events (start, then a timer per iteration); the final snapshot
    // keeps the last 50 before it.
    assert_eq!(events.len(), 50, "kept {}", events.len());
    assert_eq!(events.last().unwrap()["seq"], json!(401));
    node.shutdown().await;
}

const SAGA_MAP: &str = r#"
name: saga-map
version: 1
steps:
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 20
    steps:
      - { id: book, task: noop, input: "${item}", compensate: { task: noop, input: "${item}" } }
      - { id: check, if: "item == size(input.items) - 1", fail: { code: bad_item } }
"#;

const NAP_MAP: &str = r#"
name: nap-map
version: 1
steps:
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 50
    output: results
    steps:
      - { id: nap, wait: 20ms }
      - { id: echo, task: noop, input: "${item}" }
"#;

/// Every event of an instance's history, oldest first.
async fn full_history(api: &Api, id: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => format!("/v1/workflows/{id}/history?limit=10000"),
            Some(c) => format!("/v1/workflows/{id}/history?limit=10000&cursor={c}"),
        };
        let (status, page) = api.get(&path).await;
        assert_eq!(status, 200, "{page}");
        events.extend(page["events"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return events,
        }
    }
}

/// The foreach iteration of a step path `each/<i>/...`.
fn iteration(path: &str) -> u64 {
    path.split('/').nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_big_foreach_compensates_in_reverse_and_survives_sigkill() {
    let dir = TempDir::new("big-kill");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node-id = 1\ndata-dir = \"{}\"\nhttp-addr = \"127.0.0.1:0\"\nnative-addr = \"127.0.0.1:0\"\nshards = 4\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("node.log");
    let node = common::NodeProcess::spawn(&config, &log);
    node.api.deploy(SAGA_MAP).await;
    node.api.deploy(NAP_MAP).await;

    // The last item fails for good: every booked item is undone, newest
    // booking first.
    let items: Vec<u64> = (0..300).collect();
    node.api
        .start("saga-map", "saga-1", json!({ "items": items }))
        .await;
    let done = node.api.wait_status("saga-1", "compensated").await;
    assert_eq!(done["error"]["code"], "bad_item", "{}", done["error"]);
    let history = full_history(&node.api, "saga-1").await;
    let completed = |suffix: &str| -> Vec<u64> {
        history
            .iter()
            .filter(|e| e["type"] == "task_completed")
            .filter_map(|e| e["step"].as_str())
            .filter(|p| p.ends_with(suffix))
            .map(iteration)
            .collect()
    };
    let mut booked = completed("/book");
    let undone = completed("/book/compensate");
    // Bookings still in flight when item 299 failed may have been
    // cancelled instead (at most the other 19 iterations running).
    assert!(booked.len() > 280, "{} booked", booked.len());
    booked.reverse();
    assert_eq!(undone, booked, "compensated in reverse order of booking");

    // A big foreach killed in the middle carries on after a restart.
    let items: Vec<u64> = (0..4000).collect();
    node.api
        .start("nap-map", "nap-1", json!({ "items": items }))
        .await;
    eventually(30, "part of the items to finish", || async {
        let view = node.api.workflow("nap-1").await;
        let n = view["step_counts"]["completed"].as_u64().unwrap_or(0);
        (n > 1000).then_some(())
    })
    .await;
    node.kill();
    let node = common::NodeProcess::spawn(&config, &log);
    completes_with(&node.api, "nap-1", &items, 8001).await;
    node.kill();
}
