//! Every pattern end to end through a real node over HTTP, with builtin
//! tasks and a local HTTP server standing in for the outside world.

mod common;

use common::world::World;
use common::{TestNode, encode, eventually};
use serde_json::{Value, json};

/// An `http` task step calling the world.
fn call(world: &World, path: &str) -> String {
    format!(
        r#"{{ method: POST, url: "{}{path}", body: {{ wf: "${{input.wf}}" }} }}"#,
        world.base
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_parallel_foreach_and_choice_complete() {
    let t = TestNode::start().await;
    let world = World::start().await;
    let yaml = format!(
        r#"
name: flow
version: 1
steps:
  - {{ id: first, task: http, input: {first}, output: first }}
  - id: fan
    parallel:
      - [ {{ id: left, task: http, input: {left} }} ]
      - [ {{ id: right, task: noop, input: {{ side: right }} }} ]
  - id: lines
    foreach: "input.items"
    as: item
    concurrency: 2
    output: doubled
    steps: [ {{ id: double, task: noop, input: "${{item * 2}}" }} ]
  - id: route
    choice:
      - when: "size(doubled) > 2"
        steps: [ {{ id: big, task: noop, input: big }} ]
      - otherwise: [ {{ id: small, task: noop, input: small }} ]
    output: route
output: {{ status: "${{first.status}}", doubled: "${{doubled}}", route: "${{route}}" }}
"#,
        first = call(&world, "/ok/first"),
        left = call(&world, "/ok/left"),
    );
    t.api.deploy(&yaml).await;
    t.api
        .start(
            "flow",
            "wf-seq",
            json!({"wf": "wf-seq", "items": [1, 2, 3]}),
        )
        .await;
    let done = t.api.wait_status("wf-seq", "completed").await;
    assert_eq!(
        done["output"],
        json!({"status": 200, "doubled": [2, 4, 6], "route": "big"})
    );
    assert_eq!(world.calls_for("wf-seq"), ["/ok/first", "/ok/left"]);
    let first = world
        .calls()
        .into_iter()
        .find(|c| c.path == "/ok/first")
        .unwrap();
    assert_eq!(
        first.idempotency_key.as_deref(),
        Some("wf-seq/first/1"),
        "the idempotency key goes out as a header"
    );
    // Finished foreach iterations leave the instance's state: the view
    // counts them, the steps endpoint lists them.
    let shown = common::strings(&done["steps"], "path");
    assert!(!shown.contains(&"lines/2/double"), "{shown:?}");
    assert_eq!(done["steps_omitted"], json!(3), "{done}");
    assert_eq!(done["step_counts"]["completed"], json!(10), "{done}");
    let (_, first_page) = t.api.get("/v1/workflows/wf-seq/steps?limit=4").await;
    let cursor = first_page["next_cursor"].as_str().unwrap().to_owned();
    let (_, rest) = t
        .api
        .get(&format!("/v1/workflows/wf-seq/steps?cursor={cursor}"))
        .await;
    assert_eq!(rest["next_cursor"], Value::Null);
    let paths: Vec<String> = [&first_page, &rest]
        .iter()
        .flat_map(|page| page["steps"].as_array().unwrap().clone())
        .map(|s| s["path"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted, "pages in path order");
    assert_eq!(paths.len(), 10, "{paths:?}");
    for expected in [
        "first",
        "fan",
        "fan/0/left",
        "fan/1/right",
        "lines/2/double",
        "route/0/big",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_saga_compensation_in_reverse_order() {
    let t = TestNode::start().await;
    let world = World::start().await;
    let yaml = format!(
        r#"
name: saga
version: 1
steps:
  - id: book-flight
    task: http
    input: {flaky}
    retry: {{ max_attempts: 4, initial_delay: 50ms, jitter: 0 }}
    compensate: {{ task: http, input: {undo_flight} }}
  - id: book-hotel
    task: http
    input: {hotel}
    compensate: {{ task: http, input: {undo_hotel} }}
  - id: book-car
    task: http
    input: {car}
"#,
        flaky = call(&world, "/flaky/flight/2"),
        undo_flight = call(&world, "/ok/undo-flight"),
        hotel = call(&world, "/ok/hotel"),
        undo_hotel = call(&world, "/ok/undo-hotel"),
        car = call(&world, "/status/400/car"),
    );
    t.api.deploy(&yaml).await;
    t.api.start("saga", "trip-1", json!({"wf": "trip-1"})).await;
    let done = t.api.wait_status("trip-1", "compensated").await;
    assert_eq!(
        world.calls_for("trip-1"),
        [
            "/flaky/flight",
            "/flaky/flight",
            "/flaky/flight",
            "/ok/hotel",
            "/status/400/car",
            "/ok/undo-hotel",
            "/ok/undo-flight"
        ]
    );
    assert_eq!(done["error"]["code"], "http_4xx");
    let flight = done["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["path"] == "book-flight")
        .unwrap();
    assert_eq!(
        (flight["attempts"].as_u64(), flight["status"].as_str()),
        (Some(3), Some("compensated"))
    );
    // The history has one event per journaled transition, oldest first.
    let (status, history) = t.api.get("/v1/workflows/trip-1/history").await;
    assert_eq!(status, 200);
    let events = history["events"].as_array().unwrap();
    assert_eq!(events[0]["type"], "started");
    assert_eq!(events[0]["seq"], 1);
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "timer_fired" && e["step"] == "book-flight")
    );
    assert_eq!(events.last().unwrap()["type"], "task_completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_events_timers_and_children() {
    let t = TestNode::start().await;
    t.api
        .deploy(
            r#"
name: child
version: 1
steps:
  - { id: nap, wait: 200ms }
  - { id: work, task: noop, input: { from: "${input.who}" }, output: res }
output: "${res}"
"#,
        )
        .await;
    t.api
        .deploy(
            r#"
name: parent
version: 1
steps:
  - { id: go, await: go, timeout: 1m, output: go }
  - { id: vendor, await: vendor.processed, correlation: "${input.order}", timeout: 1m, output: vendor }
  - { id: cool-down, wait: 100ms }
  - { id: kid, workflow: child, input: { who: "${go.who}" }, output: kid }
output: { kid: "${kid}", vendor: "${vendor}" }
"#,
        )
        .await;
    t.api.start("parent", "p-1", json!({"order": "o-77"})).await;
    let (status, reply) = t
        .api
        .post(
            "/v1/workflows/p-1/signals/go",
            json!({"id": "sig-1", "payload": {"who": "ann"}}),
        )
        .await;
    assert_eq!((status, reply["duplicate"].as_bool()), (202, Some(false)));
    let (_, again) = t
        .api
        .post(
            "/v1/workflows/p-1/signals/go",
            json!({"id": "sig-1", "payload": {"who": "bob"}}),
        )
        .await;
    assert_eq!(
        again["duplicate"], true,
        "a repeated signal id is deduplicated"
    );
    // Once the instance awaits the event, publishing it resumes the instance.
    eventually(10, "the vendor step to wait", || async {
        let view = t.api.workflow("p-1").await;
        view["steps"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["path"] == "vendor" && s["status"] == "running")
            .then_some(())
    })
    .await;
    let (status, delivered) = t
        .api
        .post(
            "/v1/events/vendor.processed",
            json!({"id": "ev-1", "correlation_key": "o-77", "payload": {"ok": true}}),
        )
        .await;
    assert_eq!((status, delivered["delivered"].as_u64()), (202, Some(1)));
    let (_, again) = t
        .api
        .post(
            "/v1/events/vendor.processed",
            json!({"id": "ev-1", "correlation_key": "o-77", "payload": {}}),
        )
        .await;
    assert_eq!(again["duplicate"], true);
    let (_, other) = t
        .api
        .post(
            "/v1/events/vendor.processed",
            json!({"id": "ev-2", "correlation_key": "o-78", "payload": {}}),
        )
        .await;
    assert_eq!(
        other["delivered"], 0,
        "another correlation key reaches nobody"
    );
    let done = t.api.wait_status("p-1", "completed").await;
    assert_eq!(
        done["output"],
        json!({"kid": {"from": "ann"}, "vendor": {"ok": true}})
    );
    let child = t.api.workflow("p-1/kid").await;
    assert_eq!(child["status"], "completed");
    let (status, _) = t
        .api
        .get(&format!("/v1/workflows/{}", encode("p-1/kid")))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn human_tasks_escalate_and_complete() {
    let t = TestNode::start().await;
    t.api
        .deploy(
            r#"
name: approval
version: 1
steps:
  - id: approve
    human: { assignee: managers, input: { amount: "${input.amount}" }, timeout: 300ms, escalate_to: directors, escalation_timeout: 1h }
    output: decision
  - { id: record, task: noop, input: "${decision}" }
"#,
        )
        .await;
    t.api
        .start("approval", "loan-1", json!({"amount": 10}))
        .await;
    let task = eventually(10, "escalation", || async {
        let (_, list) = t.api.get("/v1/human-tasks?assignee=directors").await;
        list["human_tasks"]
            .as_array()
            .and_then(|a| a.first().cloned())
    })
    .await;
    assert_eq!(
        (task["workflow_id"].as_str(), task["escalated"].as_bool()),
        (Some("loan-1"), Some(true))
    );
    assert_eq!(task["input"], json!({"amount": 10}));
    let id = task["id"].as_str().unwrap();
    let (status, _) = t
        .api
        .post(
            &format!("/v1/human-tasks/{id}/complete"),
            json!({"payload": {"approved": true}}),
        )
        .await;
    assert_eq!(status, 200);
    let done = t.api.wait_status("loan-1", "completed").await;
    assert_eq!(done["variables"]["decision"], json!({"approved": true}));
    let (status, body) = t
        .api
        .post(
            &format!("/v1/human-tasks/{id}/complete"),
            json!({"payload": {}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("task_not_found"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_and_incidents() {
    let t = TestNode::start().await;
    let world = World::start().await;
    let yaml = format!(
        r#"
name: refund
version: 1
steps:
  - id: charge
    task: http
    input: {charge}
    compensate: {{ task: http, input: {refund}, retry: {{ max_attempts: 1 }} }}
  - {{ id: wait-for-ship, await: shipped, timeout: 1h }}
"#,
        charge = call(&world, "/ok/charge"),
        refund = call(&world, "/status/500/refund"),
    );
    t.api.deploy(&yaml).await;
    t.api
        .start("refund", "order-1", json!({"wf": "order-1"}))
        .await;
    t.api.wait_status("order-1", "waiting").await;
    let (status, _) = t
        .api
        .post(
            "/v1/workflows/order-1/cancel",
            json!({"reason": "customer changed mind"}),
        )
        .await;
    assert_eq!(status, 200);
    t.api.wait_status("order-1", "compensation_failed").await;
    let (_, incidents) = t.api.get("/v1/incidents").await;
    let incident = incidents["incidents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["workflow_id"] == "order-1")
        .cloned()
        .unwrap();
    assert_eq!(
        (
            incident["step"].as_str(),
            incident["error"]["code"].as_str()
        ),
        (Some("charge"), Some("http_5xx"))
    );
    let id = incident["id"].as_str().unwrap();
    let (status, _) = t
        .api
        .post(&format!("/v1/incidents/{id}/retry"), json!({}))
        .await;
    assert_eq!(status, 200);
    t.api.wait_status("order-1", "compensation_failed").await;
    assert_eq!(
        world
            .calls_for("order-1")
            .iter()
            .filter(|p| p.contains("refund"))
            .count(),
        2,
        "retried once"
    );
    let (status, _) = t
        .api
        .post(&format!("/v1/incidents/{id}/resolve"), json!({}))
        .await;
    assert_eq!(status, 200);
    let done = t.api.wait_status("order-1", "cancelled").await;
    assert_eq!(done["error"]["code"], "cancelled");
    let (status, body) = t.api.post("/v1/workflows/order-1/cancel", json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("invalid_state"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_start_listing_and_definitions() {
    let t = TestNode::start().await;
    t.api
        .deploy("name: one\nversion: 1\nsteps:\n  - { id: a, wait: 1h }\n")
        .await;
    t.api
        .deploy("name: one\nversion: 2\nsteps:\n  - { id: a, task: noop }\n")
        .await;
    let (status, _) = t
        .api
        .send(
            "PUT",
            "/v1/definitions",
            Some("name: one\nversion: 2\nsteps:\n  - { id: b, task: noop }\n".into()),
        )
        .await;
    assert_eq!(status, 409, "same name and version with other content");
    let (status, body) = t.api.get("/v1/definitions/one").await;
    assert_eq!(
        (status, body["versions"].as_array().map(Vec::len)),
        (200, Some(2))
    );
    let (status, body) = t.api.get("/v1/definitions/one/1").await;
    assert!(status == 200 && body["source"].as_str().unwrap().contains("wait: 1h"));

    // Latest version by default; pinned when asked.
    let (status, v2) = t
        .api
        .post(
            "/v1/workflows",
            json!({"definition": "one", "id": "i-2", "input": {"n": 1}}),
        )
        .await;
    assert_eq!((status, v2["version"].as_u64()), (201, Some(2)));
    let (status, again) = t
        .api
        .post(
            "/v1/workflows",
            json!({"definition": "one", "id": "i-2", "input": {"n": 1}}),
        )
        .await;
    assert_eq!(
        (status, again["id"].as_str()),
        (200, Some("i-2")),
        "same id and input: the existing instance"
    );
    let (status, conflict) = t
        .api
        .post(
            "/v1/workflows",
            json!({"definition": "one", "id": "i-2", "input": {"n": 2}}),
        )
        .await;
    assert_eq!(
        (status, conflict["code"].as_str()),
        (409, Some("workflow_conflict"))
    );
    for i in 0..5 {
        t.api
            .post(
                "/v1/workflows",
                json!({"definition": "one", "version": 1, "id": format!("w-{i}")}),
            )
            .await;
    }
    t.api.wait_status("i-2", "completed").await;
    let (_, page) = t.api.get("/v1/workflows?status=waiting&limit=2").await;
    let ids: Vec<&str> = page["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-0", "w-1"]);
    let cursor = page["next_cursor"].as_str().unwrap();
    let (_, page) = t
        .api
        .get(&format!(
            "/v1/workflows?status=waiting&limit=10&cursor={cursor}"
        ))
        .await;
    let ids: Vec<&str> = page["workflows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["w-2", "w-3", "w-4"]);
    assert_eq!(page["next_cursor"], Value::Null);
    let (_, completed) = t
        .api
        .get("/v1/workflows?definition=one&status=completed")
        .await;
    assert_eq!(completed["workflows"].as_array().unwrap().len(), 1);
    let (status, metrics) = t.api.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("troupe_workflows_started_total")
    );
    assert!(
        metrics
            .as_str()
            .unwrap()
            .contains("troupe_storage_memory_bytes{held_by=\"block_cache\"}")
    );
    for gauge in [
        "troupe_storage_level0_files ",
        "troupe_storage_pending_compaction_bytes ",
        "troupe_storage_compactions_running ",
        "troupe_storage_write_stall 0",
    ] {
        assert!(metrics.as_str().unwrap().contains(gauge), "{gauge}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_cancels_a_running_builtin_and_does_not_wait_for_its_timeout() {
    let t = TestNode::start().await;
    let world = World::start().await;
    let yaml = format!(
        r#"
name: interrupt
version: 1
steps:
  - id: both
    parallel:
      - - {{ id: slow, task: http, input: {slow}, timeout: {{ start_to_close: 1h }} }}
      - - {{ id: nap, wait: 200ms }}
        - {{ id: boom, fail: {{ code: stop }} }}
"#,
        slow = call(&world, "/slow/x"),
    );
    t.api.deploy(&yaml).await;
    t.api
        .start("interrupt", "int-1", json!({"wf": "int-1"}))
        .await;
    // The running `http` attempt is aborted and reported cancelled, so the
    // rollback ends at once rather than an hour later.
    let done = t.api.wait_status("int-1", "failed").await;
    assert_eq!(done["error"]["code"], "stop", "{done}");
    assert_eq!(world.calls_for("int-1"), ["/slow/x"]);
}
