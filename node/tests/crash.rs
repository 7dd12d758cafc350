//! Crash test: a `troupe-node` process running hundreds of instances (timers,
//! retries, parallel branches, signals, compensations in flight) is killed
//! with SIGKILL at random moments and restarted on the same data dir. Every
//! acknowledged start and signal survives, every instance ends in its correct
//! terminal state, and compensations ran in reverse order of completion.

mod common;

use common::world::World;
use common::{Api, NodeProcess as Proc, TempDir};
use serde_json::{Value, json};
use std::collections::HashSet;
use std::time::Duration;
use tokio::task::JoinSet;

const INSTANCES: usize = 200;

/// A tiny deterministic generator for kill moments.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn definition(world: &World) -> String {
    let call = |path: &str| {
        format!(
            r#"{{ method: POST, url: "{}{path}", body: {{ wf: "${{input.wf}}" }} }}"#,
            world.base
        )
    };
    format!(
        r#"
name: crash-flow
version: 1
steps:
  - id: a
    task: http
    input: {a}
    compensate: {{ task: http, input: {undo_a} }}
  - {{ id: nap, wait: 300ms }}
  - id: fan
    parallel:
      - - id: c
          task: http
          input: {c}
          retry: {{ max_attempts: 6, initial_delay: 100ms, max_delay: 1s, jitter: 0.2 }}
          compensate: {{ task: http, input: {undo_c} }}
      - - {{ id: go, await: go, timeout: 5m }}
  - id: end
    choice:
      - when: "input.fail"
        steps: [ {{ id: boom, task: http, input: {boom} }} ]
      - otherwise: [ {{ id: fine, task: noop }} ]
"#,
        a = call("/ok/a"),
        undo_a = call("/ok/undo-a"),
        c = call("/flaky/c/2"),
        undo_c = call("/ok/undo-c"),
        boom = call("/status/400/boom"),
    )
}

fn wf(i: usize) -> String {
    format!("wf-{i:03}")
}

/// Sends every start and signal not yet acknowledged; returns when all are, or
/// when the node goes away.
async fn drive(api: &Api, starts: &mut HashSet<usize>, signals: &mut HashSet<usize>) {
    for chunk in (0..INSTANCES).collect::<Vec<_>>().chunks(20) {
        let mut set = JoinSet::new();
        for &i in chunk {
            let api = api.clone();
            let (start, signal) = (!starts.contains(&i), !signals.contains(&i));
            set.spawn(async move {
                let id = wf(i);
                let mut acked = (false, false);
                if start {
                    let body = json!({"definition": "crash-flow", "id": id, "input": {"wf": id, "fail": i % 2 == 1}});
                    let url = format!("{}/v1/workflows", api.base);
                    if let Ok(r) = api.client.post(url).body(body.to_string()).send().await {
                        acked.0 = matches!(r.status().as_u16(), 200 | 201);
                    }
                }
                if signal && (acked.0 || !start) {
                    let url = format!("{}/v1/workflows/{id}/signals/go", api.base);
                    let body = json!({"id": format!("go-{id}"), "payload": {"n": i}});
                    if let Ok(r) = api.client.post(url).body(body.to_string()).send().await {
                        acked.1 = r.status().as_u16() == 202;
                    }
                }
                (i, acked)
            });
        }
        while let Some(Ok((i, (start, signal)))) = set.join_next().await {
            if start {
                starts.insert(i);
            }
            if signal {
                signals.insert(i);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_nothing_acknowledged() {
    let dir = TempDir::new("crash");
    let world = World::start().await;
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node-id = 1\ndata-dir = \"{}\"\nhttp-addr = \"127.0.0.1:0\"\nnative-addr = \"127.0.0.1:0\"\nshards = 8\n[engine]\npassivate-after = \"200ms\"\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("node.log");
    let mut rng = Lcg(0x0007_e00e);
    let (mut starts, mut signals) = (HashSet::new(), HashSet::new());

    let first = Proc::spawn(&config, &log);
    let (status, body) = first
        .api
        .send("PUT", "/v1/definitions", Some(definition(&world)))
        .await;
    assert_eq!(status, 201, "{body}");
    let mut node = first;
    for round in 0..3 {
        let moment = Duration::from_millis(200 + rng.next(1200));
        let _ = tokio::time::timeout(moment, drive(&node.api, &mut starts, &mut signals)).await;
        node.kill();
        node = Proc::spawn(&config, &log);
        // Everything acknowledged before the kill is there after it.
        for &i in &starts {
            let (status, body) = node.api.get(&format!("/v1/workflows/{}", wf(i))).await;
            assert_eq!(
                status,
                200,
                "round {round}: acknowledged start of {} lost: {body}",
                wf(i)
            );
        }
    }
    drive(&node.api, &mut starts, &mut signals).await;
    assert_eq!((starts.len(), signals.len()), (INSTANCES, INSTANCES));

    for i in 0..INSTANCES {
        let id = wf(i);
        let expected = if i % 2 == 1 {
            "compensated"
        } else {
            "completed"
        };
        let view: Value = common::eventually(60, &format!("{id} to end"), || async {
            let (_, view) = node.api.get(&format!("/v1/workflows/{id}")).await;
            let status = view["status"].as_str().unwrap_or("").to_owned();
            matches!(
                status.as_str(),
                "completed" | "compensated" | "failed" | "cancelled" | "compensation_failed"
            )
            .then_some(view)
        })
        .await;
        assert_eq!(view["status"], expected, "{id}: {view:#}");
        assert_eq!(view["variables"], json!({}), "{id}");
        if expected == "compensated" {
            let calls = world.calls_for(&id);
            let undo_c = calls.iter().position(|p| p == "/ok/undo-c");
            let undo_a = calls.iter().position(|p| p == "/ok/undo-a");
            assert!(
                matches!((undo_c, undo_a), (Some(c), Some(a)) if c < a),
                "{id}: compensations out of order: {calls:?}"
            );
        }
    }
    // Instances by status are counted in the same commits as the transitions,
    // so the counts are exact across the kills.
    let (_, metrics) = node.api.get("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let count = |status: &str| -> f64 {
        let prefix = format!("troupe_workflows{{status=\"{status}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let half = (INSTANCES / 2) as f64;
    assert_eq!(
        (
            count("completed"),
            count("compensated"),
            count("running"),
            count("waiting")
        ),
        (half, half, 0.0, 0.0),
        "{metrics}"
    );
    node.kill();
}
