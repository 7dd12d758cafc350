//! Workers over real TCP: worker processes (`troupe-echo-worker`) serve task types through the
//! native protocol's task streams, and a plain HTTP worker long-polls.
//! A worker killed mid-task gets its attempt redelivered when the lease
//! ends, and the step completes exactly once; duplicate and late reports
//! are answered and ignored.

mod common;

use common::{TestNode, eventually};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use troupe_client::Client;

/// A `troupe-echo-worker` process serving every task type these tests use.
struct WorkerProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
}

const TASK_TYPES: [&str; 9] = [
    "slow.job",
    "payments.charge",
    "payments.refund",
    "inventory.reserve",
    "inventory.release",
    "warehouse.notify",
    "shipping.dispatch",
    "shipping.cancel",
    "notifications.send",
];

impl WorkerProcess {
    /// `hang`: take tasks and never answer. Otherwise answer, failing the
    /// dispatch of orders to the address "nowhere".
    fn spawn(native: std::net::SocketAddr, hang: bool) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_troupe-echo-worker"));
        command.args(["--addr", &native.to_string()]);
        if hang {
            command.arg("--hang");
        } else {
            command.args([
                "--fail",
                "shipping.dispatch@/customer/address=nowhere:address_invalid",
            ]);
        }
        let mut child = command
            .args(TASK_TYPES)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn troupe-echo-worker");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("task ") {
                    let _ = tx.send(line);
                }
            }
        });
        Self { child, lines }
    }

    /// The next `task <type> <token> <attempt>` line the worker printed.
    fn next_task(&self) -> Vec<String> {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(20))
            .expect("worker reports a task");
        line.split(' ').map(str::to_owned).collect()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SLOW: &str = r#"
name: slow
version: 1
steps:
  - id: job
    task: slow.job
    timeout: 1500ms
    retry: { max_attempts: 3, initial_delay: 50ms }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_task_is_redelivered_and_completes_once() {
    let t = TestNode::start().await;
    t.api.deploy(SLOW).await;
    t.api.start("slow", "job-1", json!({})).await;

    let hanging = WorkerProcess::spawn(t.node.native_addr(), true);
    let first = hanging.next_task();
    assert_eq!((first[1].as_str(), first[3].as_str()), ("slow.job", "1"));
    eventually(5, "step running", || async {
        let view = t.api.workflow("job-1").await;
        (view["steps"][0]["status"] == "running").then_some(())
    })
    .await;
    hanging.kill();

    let healthy = WorkerProcess::spawn(t.node.native_addr(), false);
    let second = healthy.next_task();
    assert_eq!(
        second[3], "2",
        "redelivered as the next attempt after the lease"
    );
    let done = t.api.wait_status("job-1", "completed").await;
    assert_eq!(done["steps"][0]["attempts"], 2);

    // Exactly one completion was journaled.
    let (_, history) = t.api.get("/v1/workflows/job-1/history").await;
    let completions = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "task_completed")
        .count();
    assert_eq!(completions, 1, "{history:#}");

    // The dead worker's late report and a duplicate are answered, and ignored.
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    let late = client
        .complete(&first[2], &json!({"late": true}))
        .await
        .unwrap();
    assert_eq!(late["accepted"], false, "{late}");
    let dup = client
        .complete(&second[2], &json!({"dup": true}))
        .await
        .unwrap();
    assert_eq!(dup["accepted"], false, "{dup}");
    let after = t.api.workflow("job-1").await;
    assert_eq!(after["variables"], done["variables"]);
    assert_eq!(after["output"], done["output"]);
    let bogus = client.complete("zz", &json!(null)).await.unwrap_err();
    assert_eq!(bogus.code(), Some(troupe_client::ErrorCode::TaskNotFound));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_run_order_fulfilment() {
    let t = TestNode::start().await;
    let source = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/order-fulfillment.yaml"
    ))
    .unwrap();
    t.api.deploy(&source).await;
    let workers: Vec<_> = (0..2)
        .map(|_| WorkerProcess::spawn(t.node.native_addr(), false))
        .collect();
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    for n in 0..20 {
        let address = if n % 5 == 4 { "nowhere" } else { "1 Main St" };
        let input = json!({"order_id": format!("o-{n}"), "amount": 10 + n, "customer": {"id": "c", "address": address}});
        let view = client
            .start("order-fulfillment", Some(&format!("order-{n}")), &input)
            .await
            .unwrap();
        assert_eq!(view["created"], true);
    }
    let mut by = std::collections::HashSet::new();
    for n in 0..20 {
        let expected = if n % 5 == 4 {
            "compensated"
        } else {
            "completed"
        };
        let view = t.api.wait_status(&format!("order-{n}"), expected).await;
        if expected == "completed" {
            assert_eq!(view["output"]["order_id"], format!("o-{n}"));
            let key = &view["output"]["shipment"]["key"];
            assert_eq!(*key, format!("order-{n}/dispatch/1"), "{view:#}");
            by.insert(view["output"]["shipment"]["by"].to_string());
        }
    }
    assert_eq!(by.len(), 2, "both worker processes took tasks");
    drop(workers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_worker_long_polls_heartbeats_and_reports() {
    let t = TestNode::start().await;
    t.api
        .deploy(
            r#"
name: beat
version: 1
steps:
  - id: long
    task: long.job
    timeout: { start_to_close: 30s, heartbeat: 400ms }
    retry: { max_attempts: 2, initial_delay: 10ms }
"#,
        )
        .await;
    // A poll with nothing queued waits, then answers empty.
    let (status, empty) = t
        .api
        .post(
            "/v1/tasks/poll",
            json!({"worker": "w", "task_types": ["long.job"], "max": 4, "wait_ms": 100}),
        )
        .await;
    assert_eq!((status, empty["tasks"].as_array().unwrap().len()), (200, 0));

    t.api.start("beat", "beat-1", json!({"n": 1})).await;
    let (_, polled) = t
        .api
        .post(
            "/v1/tasks/poll",
            json!({"worker": "w", "task_types": ["long.job"], "max": 4, "wait_ms": 5000}),
        )
        .await;
    let task = polled["tasks"][0].clone();
    assert_eq!(task["idempotency_key"], "beat-1/long/1", "{polled:#}");
    assert_eq!(task["input"], Value::Null);
    assert_eq!(task["heartbeat_ms"], 400);
    let token = task["token"].as_str().unwrap().to_owned();
    // Heartbeats keep the attempt alive past its heartbeat timeout.
    for n in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, beat) = t
            .api
            .post(
                &format!("/v1/tasks/{token}/heartbeat"),
                json!({"progress": {"done": n}}),
            )
            .await;
        assert_eq!(
            (beat["accepted"].as_bool(), beat["cancelled"].as_bool()),
            (Some(true), Some(false)),
            "{beat}"
        );
    }
    let view = t.api.workflow("beat-1").await;
    assert_eq!(view["steps"][0]["progress"], json!({"done": 3}));
    let (_, failed) = t
        .api
        .post(
            &format!("/v1/tasks/{token}/fail"),
            json!({"code": "flaky", "message": "try again"}),
        )
        .await;
    assert_eq!(failed["accepted"], true);
    // Attempt 2 arrives; it is never heartbeated, so it times out and the
    // workflow fails for good; a heartbeat after that says cancelled.
    let (_, polled) = t
        .api
        .post(
            "/v1/tasks/poll",
            json!({"worker": "w", "task_types": ["long.job"], "max": 1, "wait_ms": 5000}),
        )
        .await;
    let second = polled["tasks"][0]["token"].as_str().unwrap().to_owned();
    assert_eq!(polled["tasks"][0]["attempt"], 2);
    let failed = t.api.wait_status("beat-1", "failed").await;
    assert_eq!(failed["error"]["code"], "heartbeat_timeout", "{failed:#}");
    let (_, beat) = t
        .api
        .post(&format!("/v1/tasks/{second}/heartbeat"), json!({}))
        .await;
    assert_eq!(beat["cancelled"], true, "{beat}");
    let (status, err) = t
        .api
        .post("/v1/tasks/not-a-token/complete", json!({"output": 1}))
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (404, Some("task_not_found"))
    );
    let (status, _) = t
        .api
        .post("/v1/tasks/poll", json!({"worker": "w", "task_types": []}))
        .await;
    assert_eq!(status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_tasks_wait_for_workers_across_a_restart_of_polls() {
    let t = TestNode::start().await;
    t.api.deploy(SLOW).await;
    for n in 0..5 {
        t.api.start("slow", &format!("q-{n}"), json!({})).await;
    }
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    // Credit is respected: two asked, two given, three still queued.
    let two = client
        .poll("w", &["slow.job"], 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(two.len(), 2);
    let rest = client
        .poll("w", &["slow.job"], 10, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(rest.len(), 3);
    for task in two.iter().chain(&rest) {
        let answer = client
            .complete(&task.token, &json!({"ok": 1}))
            .await
            .unwrap();
        assert_eq!(answer["accepted"], true);
    }
    for n in 0..5 {
        t.api.wait_status(&format!("q-{n}"), "completed").await;
    }
    eventually(5, "queue drained", || async {
        let (_, metrics) = t.api.get("/metrics").await;
        metrics
            .as_str()
            .unwrap_or("")
            .contains("troupe_tasks_queued 0")
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_to_start_timeout_withdraws_the_queued_attempt() {
    let t = TestNode::start().await;
    t.api
        .deploy(
            r#"
name: nobody
version: 1
steps:
  - id: wait-for-worker
    task: rare.job
    timeout: { start_to_close: 1m, schedule_to_start: 200ms }
    retry: { max_attempts: 1 }
"#,
        )
        .await;
    t.api.start("nobody", "lonely-1", json!({})).await;
    let failed = t.api.wait_status("lonely-1", "failed").await;
    assert_eq!(
        failed["error"]["code"], "schedule_to_start_timeout",
        "{failed:#}"
    );
    // The withdrawal is carried out right after the failure is durable, so
    // a read can see `failed` a moment before the queue is empty: wait for
    // it, then check that no worker can take the attempt.
    let queues = &t.node.runtime().services.queues;
    eventually(20, "the attempt to leave the queue", || async {
        (queues.queued() == 0).then_some(())
    })
    .await;
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    let late = client
        .poll("w", &["rare.job"], 1, Duration::from_millis(200))
        .await
        .unwrap();
    assert!(
        late.is_empty(),
        "the timed-out attempt left the queue: {late:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_extend_the_lease_past_start_to_close() {
    let t = TestNode::start().await;
    t.api
        .deploy(
            "name: lease\nversion: 1\nsteps:\n  - { id: a, task: long.job, timeout: 600ms, retry: { max_attempts: 1 } }\n",
        )
        .await;
    t.api.start("lease", "lease-1", json!({})).await;
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    let task = client
        .poll("w", &["long.job"], 1, Duration::from_secs(5))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(task.lease_ms, 600);
    // Work for 1.5 s, well past one lease, heartbeating every 200 ms.
    for n in 0..7 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let beat = client
            .heartbeat(&task.token, Some(&json!({"step": n})))
            .await
            .unwrap();
        assert_eq!(beat["accepted"], true, "heartbeat {n}: {beat}");
    }
    let done = client
        .complete(&task.token, &json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(done["accepted"], true, "{done}");
    t.api.wait_status("lease-1", "completed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_leaves_the_deferred_start_pending() {
    let t = TestNode::start().await;
    t.api
        .deploy("name: defer\nversion: 1\nsteps:\n  - { id: a, task: plain.job, timeout: 1m }\n")
        .await;
    t.api.start("defer", "defer-1", json!({})).await;
    let (_, polled) = t
        .api
        .post(
            "/v1/tasks/poll",
            json!({"worker": "w", "task_types": ["plain.job"], "max": 1, "wait_ms": 5000}),
        )
        .await;
    let token = polled["tasks"][0]["token"].as_str().unwrap().to_owned();
    // A failure without a code is refused as invalid...
    let (status, body) = t
        .api
        .post(
            &format!("/v1/tasks/{token}/fail"),
            json!({"code": "", "message": "?"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    // ...and does not use up the attempt's deferred start: the accepted
    // report (or the delay) still journals it.
    let (status, body) = t
        .api
        .post(
            &format!("/v1/tasks/{token}/complete"),
            json!({"output": {}}),
        )
        .await;
    assert_eq!((status, &body["accepted"]), (200, &json!(true)), "{body}");
    let done = t.api.wait_status("defer-1", "completed").await;
    assert_eq!(done["steps"][0]["attempts"], 1);
    let (_, history) = t.api.get("/v1/workflows/defer-1/history").await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["started", "task_started", "task_completed"],
        "{history}"
    );
}
