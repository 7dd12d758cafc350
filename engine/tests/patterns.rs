//! Table-driven tests of every pattern: each row feeds one event and asserts
//! the exact effects (timer cancellations aside) and the instance status.

mod common;

use common::*;
use serde_json::{Value as Json, json};
use troupe_engine::engine::*;

/// One row: what happens, then what the engine must do.
enum Act {
    Complete(&'static str, Json),
    Fail(&'static str, &'static str, bool),
    Fire(TimerKind, &'static str),
    Started(&'static str),
    Heartbeat(&'static str),
    Signal(&'static str, &'static str, Json),
    Child(&'static str, Result<Json, &'static str>),
    Cancel,
    RetryIncident(&'static str),
    ResolveIncident(&'static str),
    Advance(u64),
}

use Act::*;
use InstanceStatus::*;

/// Starts `yaml` with `input`, checks the start's effects, then each row.
fn table(
    yaml: &str,
    input: Json,
    start: &[&str],
    rows: Vec<(Act, &[&str], InstanceStatus)>,
) -> Sim {
    let mut sim = Sim::start(load(yaml), input);
    assert_eq!(show(&sim.log, T0), start, "effects of start");
    for (i, (act, expected, status)) in rows.into_iter().enumerate() {
        let outcome = match act {
            Complete(path, output) => sim.complete(path, output),
            Fail(path, code, retryable) => sim.fail(path, code, retryable),
            Fire(kind, path) => sim.fire(kind, path),
            Started(path) => {
                let attempt = sim.task(path).attempt;
                sim.apply(EventKind::TaskStarted {
                    path: path.into(),
                    attempt,
                })
            }
            Heartbeat(path) => {
                let attempt = sim.task(path).attempt;
                sim.apply(EventKind::TaskHeartbeat {
                    path: path.into(),
                    attempt,
                    progress: None,
                })
            }
            Signal(id, name, payload) => sim.signal(id, name, payload),
            Child(path, outcome) => sim.apply(EventKind::ChildEnded {
                path: path.into(),
                outcome: outcome.map_err(|code| ErrorInfo::new(code, "child failed")),
            }),
            Cancel => sim.apply(EventKind::CancelRequested {
                reason: "customer asked".into(),
            }),
            RetryIncident(path) => sim.apply(EventKind::IncidentRetried { path: path.into() }),
            ResolveIncident(path) => sim.apply(EventKind::IncidentResolved { path: path.into() }),
            Advance(ms) => {
                sim.now += ms;
                Outcome::default()
            }
        };
        let now = sim.now;
        assert_eq!(show(&outcome.effects, now), expected, "effects of row {i}");
        assert_eq!(sim.status(), status, "status after row {i}");
    }
    sim
}

const S2C: &str = "+300000ms";

fn arm(kind: &str, path: &str, after: &str) -> String {
    format!("arm {kind} {path} {after}")
}

#[test]
fn sequence_runs_steps_in_order_and_maps_data() {
    let yaml = r#"
name: seq
version: 1
steps:
  - { id: a, task: t.a, input: { n: "${input.n}" }, output: a_out }
  - { id: b, task: t.b, input: { prev: "${a_out.v + 1}" }, output: b_out }
output: { total: "${b_out.v}" }
"#;
    let sim = table(
        yaml,
        json!({"n": 1}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![
            (
                Complete("a", json!({"v": 41})),
                &["dispatch b#1 t.b", &arm("StartToClose", "b#1", S2C)],
                Running,
            ),
            (
                Complete("b", json!({"v": 7})),
                &["finished completed"],
                Completed,
            ),
        ],
    );
    assert_eq!(sim.inst.output, Some(json!({"total": 7})));
    let b = sim.log.iter().find_map(|e| match e {
        Effect::DispatchTask(t) if t.path == "b" => Some(t.clone()),
        _ => None,
    });
    let b = b.unwrap();
    assert_eq!(b.input, json!({"prev": 42}));
    assert_eq!(b.idempotency_key, "wf-1/b/1");
    assert_eq!(sim.step_status("a"), StepStatus::Completed);
}

#[test]
fn parallel_waits_for_every_branch() {
    let yaml = r#"
name: par
version: 1
steps:
  - id: fan
    output: both
    parallel:
      - [ { id: x, task: t.x } ]
      - [ { id: y, task: t.y }, { id: z, task: t.z } ]
  - { id: after, task: t.after }
"#;
    let sim = table(
        yaml,
        json!({}),
        &[
            "dispatch fan/0/x#1 t.x",
            &arm("StartToClose", "fan/0/x#1", S2C),
            "dispatch fan/1/y#1 t.y",
            &arm("StartToClose", "fan/1/y#1", S2C),
        ],
        vec![
            (
                Complete("fan/1/y", json!(2)),
                &[
                    "dispatch fan/1/z#1 t.z",
                    &arm("StartToClose", "fan/1/z#1", S2C),
                ],
                Running,
            ),
            (Complete("fan/1/z", json!(3)), &[], Running),
            (
                Complete("fan/0/x", json!(1)),
                &[
                    "dispatch after#1 t.after",
                    &arm("StartToClose", "after#1", S2C),
                ],
                Running,
            ),
            (
                Complete("after", json!(null)),
                &["finished completed"],
                Completed,
            ),
        ],
    );
    assert_eq!(
        sim.inst.vars["both"],
        json!([1, 3]),
        "a parallel's result lists each branch's last result"
    );
}

#[test]
fn choice_takes_first_matching_branch_or_otherwise_or_skips() {
    let yaml = r#"
name: route
version: 1
steps:
  - id: route
    choice:
      - when: "input.country == 'US'"
        steps: [ { id: domestic, task: ship.domestic } ]
      - when: "input.country == 'CA'"
        steps: [ { id: north, task: ship.north } ]
      - otherwise: [ { id: intl, task: ship.intl } ]
  - id: only-big
    choice:
      - when: "input.amount > 100"
        steps: [ { id: big, task: t.big } ]
"#;
    for (country, path, task) in [
        ("US", "route/0/domestic", "ship.domestic"),
        ("CA", "route/1/north", "ship.north"),
        ("FR", "route/2/intl", "ship.intl"),
    ] {
        let sim = table(
            yaml,
            json!({"country": country, "amount": 5}),
            &[
                &format!("dispatch {path}#1 {task}"),
                &arm("StartToClose", &format!("{path}#1"), S2C),
            ],
            vec![(
                Complete(Box::leak(path.to_owned().into_boxed_str()), json!(1)),
                &["finished completed"],
                Completed,
            )],
        );
        assert_eq!(sim.step_status("route"), StepStatus::Completed);
        assert_eq!(
            sim.step_status("only-big"),
            StepStatus::Skipped,
            "no branch and no otherwise: skipped"
        );
    }
}

#[test]
fn foreach_runs_items_within_its_concurrency_and_scopes_outputs() {
    let yaml = r#"
name: each
version: 1
steps:
  - id: lines
    foreach: "input.lines"
    as: line
    concurrency: 2
    output: picked
    steps:
      - { id: pick, task: warehouse.pick, input: { sku: "${line.sku}" }, output: got }
      - { id: pack, task: warehouse.pack, input: { got: "${got}" } }
"#;
    let p = |i: usize, s: &str| format!("lines/{i}/{s}");
    let sim = table(
        yaml,
        json!({"lines": [{"sku": "a"}, {"sku": "b"}, {"sku": "c"}]}),
        &[
            "dispatch lines/0/pick#1 warehouse.pick",
            &arm("StartToClose", "lines/0/pick#1", S2C),
            "dispatch lines/1/pick#1 warehouse.pick",
            &arm("StartToClose", "lines/1/pick#1", S2C),
        ],
        vec![
            (
                Complete("lines/1/pick", json!("B")),
                &[
                    "dispatch lines/1/pack#1 warehouse.pack",
                    &arm("StartToClose", "lines/1/pack#1", S2C),
                ],
                Running,
            ),
            (
                Complete("lines/1/pack", json!("packed-b")),
                &[
                    "dispatch lines/2/pick#1 warehouse.pick",
                    &arm("StartToClose", "lines/2/pick#1", S2C),
                ],
                Running,
            ),
            (
                Complete("lines/0/pick", json!("A")),
                &[
                    "dispatch lines/0/pack#1 warehouse.pack",
                    &arm("StartToClose", "lines/0/pack#1", S2C),
                ],
                Running,
            ),
            (
                Complete("lines/2/pick", json!("C")),
                &[
                    "dispatch lines/2/pack#1 warehouse.pack",
                    &arm("StartToClose", "lines/2/pack#1", S2C),
                ],
                Running,
            ),
            (Complete("lines/0/pack", json!("packed-a")), &[], Running),
            (
                Complete("lines/2/pack", json!("packed-c")),
                &["finished completed"],
                Completed,
            ),
        ],
    );
    let pack_inputs: Vec<Json> = sim
        .log
        .iter()
        .filter_map(|e| match e {
            Effect::DispatchTask(t) if t.task_type == "warehouse.pack" => Some(t.input.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(
        pack_inputs,
        [
            json!({"got": "B"}),
            json!({"got": "A"}),
            json!({"got": "C"})
        ],
        "each iteration sees its own `got`"
    );
    assert_eq!(
        sim.inst.vars["picked"],
        json!(["packed-a", "packed-b", "packed-c"])
    );
    assert!(
        !sim.inst.vars.contains_key("got"),
        "iteration outputs stay in the iteration"
    );
    let _ = p;
}

#[test]
fn foreach_over_an_empty_list_completes_at_once() {
    let yaml = "name: e\nversion: 1\nsteps:\n  - { id: l, foreach: 'input.xs', as: x, steps: [ { id: s, task: t } ] }\n";
    table(yaml, json!({"xs": []}), &["finished completed"], vec![]);
}

#[test]
fn retries_back_off_exponentially_then_fail_for_good() {
    let yaml = r#"
name: retry
version: 1
steps:
  - id: a
    task: t.a
    retry: { max_attempts: 3, initial_delay: 1s, max_delay: 60s, multiplier: 2, jitter: 0 }
"#;
    let sim = table(
        yaml,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![
            (
                Fail("a", "unavailable", true),
                &["arm Retry a#1 +1000ms"],
                Running,
            ),
            (
                Fire(TimerKind::Retry, "a"),
                &["dispatch a#2 t.a", &arm("StartToClose", "a#2", S2C)],
                Running,
            ),
            (
                Fail("a", "unavailable", true),
                &["arm Retry a#2 +2000ms"],
                Running,
            ),
            (
                Fire(TimerKind::Retry, "a"),
                &["dispatch a#3 t.a", &arm("StartToClose", "a#3", S2C)],
                Running,
            ),
            (Fail("a", "unavailable", true), &["finished failed"], Failed),
        ],
    );
    assert_eq!(sim.step_status("a"), StepStatus::Failed);
    let error = sim.inst.error.clone().unwrap();
    assert_eq!(
        (error.code.as_str(), error.step.as_deref()),
        ("unavailable", Some("a"))
    );
}

#[test]
fn permanent_errors_skip_remaining_retries() {
    let yaml = r#"
name: perm
version: 1
steps:
  - { id: a, task: t.a, retry: { max_attempts: 5, non_retryable: [card_declined] } }
"#;
    table(
        yaml,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![(
            Fail("a", "card_declined", true),
            &["finished failed"],
            Failed,
        )],
    );
    table(
        yaml,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![(Fail("a", "bad_input", false), &["finished failed"], Failed)],
    );
}

#[test]
fn retry_jitter_is_deterministic_per_instance_step_and_attempt() {
    let yaml = "name: j\nversion: 1\nsteps:\n  - { id: a, task: t, retry: { max_attempts: 3, initial_delay: 10s, jitter: 0.5 } }\n";
    let mut sim = Sim::start(load(yaml), json!({}));
    let out = sim.fail("a", "x", true);
    let Some(Effect::ArmTimer { at, .. }) = out
        .effects
        .iter()
        .find(|e| matches!(e, Effect::ArmTimer { .. }))
    else {
        panic!()
    };
    let policy = troupe_engine::definition::RetryPolicy {
        initial_delay: std::time::Duration::from_secs(10),
        jitter: 0.5,
        ..Default::default()
    };
    let expected = backoff_delay(&policy, "wf-1", "a", 1).as_millis() as u64;
    assert_eq!(*at - sim.now, expected);
    assert!((5000..=15000).contains(&expected));
}

#[test]
fn timeouts_end_attempts_and_count_as_transient() {
    let yaml = r#"
name: timeouts
version: 1
steps:
  - id: a
    task: t.a
    retry: { max_attempts: 4, initial_delay: 1s, jitter: 0 }
    timeout: { start_to_close: 30s, schedule_to_start: 5s, heartbeat: 10s }
"#;
    let sim = table(
        yaml,
        json!({}),
        &[
            "dispatch a#1 t.a",
            "arm StartToClose a#1 +30000ms",
            "arm ScheduleToStart a#1 +5000ms",
        ],
        vec![
            (
                Fire(TimerKind::ScheduleToStart, "a"),
                &["cancel a#1", "arm Retry a#1 +1000ms"],
                Running,
            ),
            (
                Fire(TimerKind::Retry, "a"),
                &[
                    "dispatch a#2 t.a",
                    "arm StartToClose a#2 +30000ms",
                    "arm ScheduleToStart a#2 +5000ms",
                ],
                Running,
            ),
            (
                Started("a"),
                &[
                    "arm Heartbeat a#2 +10000ms",
                    "arm StartToClose a#2 +30000ms",
                ],
                Running,
            ),
            (Advance(4000), &[], Running),
            (
                Heartbeat("a"),
                &[
                    "arm Heartbeat a#2 +10000ms",
                    "arm StartToClose a#2 +30000ms",
                ],
                Running,
            ),
            (
                Fire(TimerKind::Heartbeat, "a"),
                &["cancel a#2", "arm Retry a#2 +2000ms"],
                Running,
            ),
            (
                Fire(TimerKind::Retry, "a"),
                &[
                    "dispatch a#3 t.a",
                    "arm StartToClose a#3 +30000ms",
                    "arm ScheduleToStart a#3 +5000ms",
                ],
                Running,
            ),
            (
                Started("a"),
                &[
                    "arm Heartbeat a#3 +10000ms",
                    "arm StartToClose a#3 +30000ms",
                ],
                Running,
            ),
            (
                Fire(TimerKind::StartToClose, "a"),
                &["cancel a#3", "arm Retry a#3 +4000ms"],
                Running,
            ),
        ],
    );
    let error = sim.inst.steps["a"].error.clone().unwrap();
    assert_eq!(error.code, START_TO_CLOSE_TIMEOUT);
    assert_eq!(sim.step_status("a"), StepStatus::Retrying);
}

#[test]
fn a_heartbeat_keeps_a_stale_heartbeat_timer_from_firing() {
    let yaml = "name: hb\nversion: 1\nsteps:\n  - { id: a, task: t, timeout: { start_to_close: 1h, heartbeat: 10s } }\n";
    let mut sim = Sim::start(load(yaml), json!({}));
    sim.apply(EventKind::TaskStarted {
        path: "a".into(),
        attempt: 1,
    });
    let first = TimerId {
        kind: TimerKind::Heartbeat,
        path: "a".into(),
        attempt: 1,
    };
    sim.now += 8_000;
    sim.apply(EventKind::TaskHeartbeat {
        path: "a".into(),
        attempt: 1,
        progress: Some(serde_json::json!({"done": 40})),
    });
    let progress = sim.inst.steps["a"].task.as_ref().unwrap().progress.clone();
    assert_eq!(progress, Some(serde_json::json!({"done": 40})));
    sim.now += 3_000; // the first arming's due time has passed, the deadline has not
    let outcome = sim.apply(EventKind::TimerFired { timer: first });
    assert!(outcome.ignored.is_some(), "deadline moved by the heartbeat");
    assert_eq!(sim.step_status("a"), StepStatus::Running);
}

#[test]
fn pickup_and_heartbeats_extend_the_lease() {
    let yaml = "name: lease\nversion: 1\nsteps:\n  - { id: a, task: t, timeout: 10s, retry: { max_attempts: 1 } }\n";
    let mut sim = Sim::start(load(yaml), json!({}));
    let lease = TimerId {
        kind: TimerKind::StartToClose,
        path: "a".into(),
        attempt: 1,
    };
    sim.now += 5_000; // picked up after 5 s in the queue: the lease starts now
    sim.apply(EventKind::TaskStarted {
        path: "a".into(),
        attempt: 1,
    });
    sim.now += 7_000; // 12 s after dispatch, 7 s into the lease
    sim.apply(EventKind::TaskHeartbeat {
        path: "a".into(),
        attempt: 1,
        progress: None,
    });
    let early = sim.apply(EventKind::TimerFired {
        timer: lease.clone(),
    });
    assert!(early.ignored.is_some(), "the dispatch-time arming is stale");
    sim.now += 9_000; // 9 s after the heartbeat: still within the lease
    assert!(
        sim.apply(EventKind::TimerFired {
            timer: lease.clone()
        })
        .ignored
        .is_some()
    );
    assert_eq!(sim.step_status("a"), StepStatus::Running);
    sim.now += 1_000; // 10 s after the last heartbeat
    let outcome = sim.apply(EventKind::TimerFired { timer: lease });
    assert!(outcome.ignored.is_none());
    assert_eq!(
        sim.inst.error.as_ref().unwrap().code,
        START_TO_CLOSE_TIMEOUT
    );
}

const SAGA: &str = r#"
name: saga
version: 1
steps:
  - { id: a, task: t.a, output: a_out, compensate: { task: undo.a, input: { id: "${result.id}" } } }
  - { id: b, task: t.b, compensate: { task: undo.b } }
  - { id: c, task: t.c }
  - { id: d, task: t.d, compensate: { task: undo.d } }
"#;

#[test]
fn saga_compensates_completed_steps_in_reverse_order() {
    let sim = table(
        SAGA,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![
            (
                Complete("a", json!({"id": "A1"})),
                &["dispatch b#1 t.b", &arm("StartToClose", "b#1", S2C)],
                Running,
            ),
            (
                Complete("b", json!({})),
                &["dispatch c#1 t.c", &arm("StartToClose", "c#1", S2C)],
                Running,
            ),
            (
                Fail("c", "boom", false),
                &[
                    "dispatch b/compensate#1 undo.b",
                    &arm("StartToClose", "b/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Complete("b/compensate", json!(null)),
                &[
                    "dispatch a/compensate#1 undo.a",
                    &arm("StartToClose", "a/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Complete("a/compensate", json!(null)),
                &["finished compensated"],
                Compensated,
            ),
        ],
    );
    assert_eq!(sim.compensated_order, ["b", "a"]);
    let undo_a = sim.log.iter().find_map(|e| match e {
        Effect::DispatchTask(t) if t.path == "a/compensate" => Some(t.clone()),
        _ => None,
    });
    let undo_a = undo_a.unwrap();
    assert_eq!(
        undo_a.input,
        json!({"id": "A1"}),
        "`result` is the compensated step's result"
    );
    assert_eq!(undo_a.idempotency_key, "wf-1/a/compensate/1");
    assert_eq!(
        [
            sim.step_status("a"),
            sim.step_status("b"),
            sim.step_status("c")
        ],
        [
            StepStatus::Compensated,
            StepStatus::Compensated,
            StepStatus::Failed
        ]
    );
    assert!(!sim.inst.steps.contains_key("d"));
    assert_eq!(sim.inst.error.clone().unwrap().code, "boom");
}

#[test]
fn compensations_are_retried_then_open_an_incident() {
    let yaml = r#"
name: inc
version: 1
steps:
  - { id: a, task: t.a, compensate: { task: undo.a, retry: { max_attempts: 2, initial_delay: 1s, jitter: 0 } } }
  - { id: b, task: t.b, compensate: { task: undo.b, retry: { max_attempts: 1 } } }
  - { id: c, task: t.c }
"#;
    let sim = table(
        yaml,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![
            (
                Complete("a", json!(1)),
                &["dispatch b#1 t.b", &arm("StartToClose", "b#1", S2C)],
                Running,
            ),
            (
                Complete("b", json!(2)),
                &["dispatch c#1 t.c", &arm("StartToClose", "c#1", S2C)],
                Running,
            ),
            (
                Fail("c", "boom", false),
                &[
                    "dispatch b/compensate#1 undo.b",
                    &arm("StartToClose", "b/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Fail("b/compensate", "down", true),
                &["incident b down"],
                CompensationFailed,
            ),
            (
                RetryIncident("b"),
                &[
                    "close incident b",
                    "dispatch b/compensate#2 undo.b",
                    &arm("StartToClose", "b/compensate#2", S2C),
                ],
                Compensating,
            ),
            (
                Fail("b/compensate", "down", true),
                &["incident b down"],
                CompensationFailed,
            ),
            (
                ResolveIncident("b"),
                &[
                    "close incident b",
                    "dispatch a/compensate#1 undo.a",
                    &arm("StartToClose", "a/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Fail("a/compensate", "down", true),
                &["arm Retry a/compensate#1 +1000ms"],
                Compensating,
            ),
            (
                Fire(TimerKind::Retry, "a/compensate"),
                &[
                    "dispatch a/compensate#2 undo.a",
                    &arm("StartToClose", "a/compensate#2", S2C),
                ],
                Compensating,
            ),
            (
                Complete("a/compensate", json!(null)),
                &["finished compensated"],
                Compensated,
            ),
        ],
    );
    assert!(sim.incidents.is_empty());
}

#[test]
fn rollback_spans_parallel_branches_and_foreach_iterations_in_completion_order() {
    let yaml = r#"
name: wide
version: 1
steps:
  - id: fan
    parallel:
      - [ { id: x, task: t.x, compensate: { task: undo.x } } ]
      - [ { id: y, task: t.y, compensate: { task: undo.y } } ]
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 3
    steps: [ { id: z, task: t.z, compensate: { task: undo.z } } ]
  - { id: last, task: t.last }
"#;
    let mut sim = Sim::start(load(yaml), json!({"items": [1, 2, 3]}));
    sim.complete("fan/1/y", json!(null));
    sim.complete("fan/0/x", json!(null));
    sim.complete("each/2/z", json!(null));
    sim.complete("each/0/z", json!(null));
    sim.complete("each/1/z", json!(null));
    sim.fail("last", "boom", false);
    sim.complete_everything();
    assert_eq!(
        sim.compensated_order,
        ["each/1/z", "each/0/z", "each/2/z", "fan/0/x", "fan/1/y"]
    );
    assert_eq!(sim.finished, Some(Compensated));
}

#[test]
fn a_failing_branch_cancels_in_flight_work_and_compensates_late_completions() {
    let yaml = r#"
name: late
version: 1
steps:
  - { id: first, task: t.first, compensate: { task: undo.first } }
  - id: fan
    parallel:
      - [ { id: slow, task: t.slow, compensate: { task: undo.slow } } ]
      - [ { id: bad, task: t.bad } ]
"#;
    table(
        yaml,
        json!({}),
        &[
            "dispatch first#1 t.first",
            &arm("StartToClose", "first#1", S2C),
        ],
        vec![
            (
                Complete("first", json!(null)),
                &[
                    "dispatch fan/0/slow#1 t.slow",
                    &arm("StartToClose", "fan/0/slow#1", S2C),
                    "dispatch fan/1/bad#1 t.bad",
                    &arm("StartToClose", "fan/1/bad#1", S2C),
                ],
                Running,
            ),
            (
                Fail("fan/1/bad", "boom", false),
                &["cancel fan/0/slow#1"],
                Compensating,
            ),
            // The cancelled task still completes: its side effect happened, and
            // as the latest completion it is undone first.
            (
                Complete("fan/0/slow", json!(null)),
                &[
                    "dispatch fan/0/slow/compensate#1 undo.slow",
                    &arm("StartToClose", "fan/0/slow/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Complete("fan/0/slow/compensate", json!(null)),
                &[
                    "dispatch first/compensate#1 undo.first",
                    &arm("StartToClose", "first/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Complete("first/compensate", json!(null)),
                &["finished compensated"],
                Compensated,
            ),
        ],
    );
}

#[test]
fn rollback_waits_for_in_flight_tasks_to_settle() {
    let yaml = r#"
name: settle
version: 1
steps:
  - id: fan
    parallel:
      - [ { id: slow, task: t.slow, compensate: { task: undo.slow } } ]
      - [ { id: bad, task: t.bad } ]
"#;
    table(
        yaml,
        json!({}),
        &[
            "dispatch fan/0/slow#1 t.slow",
            &arm("StartToClose", "fan/0/slow#1", S2C),
            "dispatch fan/1/bad#1 t.bad",
            &arm("StartToClose", "fan/1/bad#1", S2C),
        ],
        vec![
            (
                Fail("fan/1/bad", "boom", false),
                &["cancel fan/0/slow#1"],
                Compensating,
            ),
            // The cancelled attempt times out: no retry during rollback, nothing to undo.
            (
                Fire(TimerKind::StartToClose, "fan/0/slow"),
                &["cancel fan/0/slow#1", "finished failed"],
                Failed,
            ),
        ],
    );
}

#[test]
fn cancel_rolls_back_and_ends_cancelled() {
    let sim = table(
        SAGA,
        json!({}),
        &["dispatch a#1 t.a", &arm("StartToClose", "a#1", S2C)],
        vec![
            (
                Complete("a", json!({"id": 1})),
                &["dispatch b#1 t.b", &arm("StartToClose", "b#1", S2C)],
                Running,
            ),
            (Cancel, &["cancel b#1"], Compensating),
            (
                Fail("b", "cancelled", false),
                &[
                    "dispatch a/compensate#1 undo.a",
                    &arm("StartToClose", "a/compensate#1", S2C),
                ],
                Compensating,
            ),
            (
                Complete("a/compensate", json!(null)),
                &["finished cancelled"],
                Cancelled,
            ),
        ],
    );
    assert_eq!(sim.inst.error.clone().unwrap().code, CANCELLED);
    let again = Sim::start(load(SAGA), json!({}));
    let mut again = again;
    again.apply(EventKind::CancelRequested { reason: "x".into() });
    let second = again.apply(EventKind::CancelRequested { reason: "x".into() });
    assert!(second.ignored.is_some(), "cancelling twice is a no-op");
}

#[test]
fn await_takes_signals_sent_before_or_after_and_times_out() {
    let yaml = r#"
name: callback
version: 1
steps:
  - { id: submit, task: vendor.submit }
  - { id: vendor, await: vendor.processed, correlation: "${input.order}", timeout: 7d, output: reply }
"#;
    let sim = table(
        yaml,
        json!({"order": "o-9"}),
        &[
            "dispatch submit#1 vendor.submit",
            &arm("StartToClose", "submit#1", S2C),
        ],
        vec![
            (
                Complete("submit", json!(null)),
                &[
                    "subscribe vendor.processed Some(\"o-9\")",
                    "arm AwaitTimeout vendor#0 +604800000ms",
                ],
                Waiting,
            ),
            (Signal("sig-1", "other", json!(1)), &[], Waiting),
            (
                Signal("sig-2", "vendor.processed", json!({"ok": true})),
                &[
                    "unsubscribe vendor.processed Some(\"o-9\")",
                    "finished completed",
                ],
                Completed,
            ),
        ],
    );
    assert_eq!(sim.inst.vars["reply"], json!({"ok": true}));

    // Sent before the step is reached: buffered, consumed on arrival.
    let mut early = Sim::start(load(yaml), json!({"order": "o-9"}));
    early.signal("s1", "vendor.processed", json!("early"));
    let out = early.complete("submit", json!(null));
    assert_eq!(show(&out.effects, early.now), ["finished completed"]);
    assert_eq!(early.inst.vars["reply"], json!("early"));
    assert!(
        early
            .signal("s1", "vendor.processed", json!("dup"))
            .ignored
            .is_some()
    );

    // Nobody answers: the timeout path (fail by default).
    let mut late = Sim::start(load(yaml), json!({"order": "o-9"}));
    late.complete("submit", json!(null));
    let out = late.fire(TimerKind::AwaitTimeout, "vendor");
    assert_eq!(
        show(&out.effects, late.now),
        [
            "unsubscribe vendor.processed Some(\"o-9\")",
            "finished failed"
        ]
    );
    assert_eq!(late.inst.error.clone().unwrap().code, TIMEOUT);
}

#[test]
fn human_task_escalates_then_takes_its_timeout_path() {
    let yaml = r#"
name: approval
version: 1
steps:
  - id: approve
    human: { assignee: managers, input: { amount: "${input.amount}" }, timeout: 48h, escalate_to: directors, escalation_timeout: 24h }
    output: decision
    on_timeout:
      - { id: auto-reject, set: { decision_by: timeout } }
  - { id: record, task: t.record, input: "${decision_by}" }
"#;
    table(
        yaml,
        json!({"amount": 10}),
        &[
            "human approve -> managers",
            "arm HumanTimeout approve#0 +172800000ms",
        ],
        vec![
            (
                Fire(TimerKind::HumanTimeout, "approve"),
                &[
                    "escalate approve -> directors",
                    "arm HumanEscalation approve#0 +86400000ms",
                ],
                Waiting,
            ),
            (
                Fire(TimerKind::HumanEscalation, "approve"),
                &[
                    "close human approve",
                    "dispatch record#1 t.record",
                    &arm("StartToClose", "record#1", S2C),
                ],
                Running,
            ),
            (
                Complete("record", json!(null)),
                &["finished completed"],
                Completed,
            ),
        ],
    );
    // Decided in time.
    let mut sim = Sim::start(load(yaml), json!({"amount": 10}));
    sim.human("approve", json!({"approved": true}));
    assert_eq!(sim.inst.vars["decision"], json!({"approved": true}));
    assert!(
        sim.human("approve", json!({"approved": false}))
            .ignored
            .is_some(),
        "decided once"
    );
}

#[test]
fn durable_timers_wait_for_a_duration_or_until_a_time() {
    let yaml = r#"
name: timers
version: 1
steps:
  - { id: cool-down, wait: 10m }
  - { id: until, until: "input.at" }
  - { id: done, task: t.done }
"#;
    table(
        yaml,
        json!({"at": "2023-11-15T00:00:00Z"}),
        &["arm Wait cool-down#0 +600000ms"],
        vec![
            // 2023-11-15T00:00:00Z is 1700006400000 ms; T0 + 10m = 1700000600000.
            (
                Fire(TimerKind::Wait, "cool-down"),
                &["arm Wait until#0 +5800000ms"],
                Waiting,
            ),
            (
                Fire(TimerKind::Wait, "until"),
                &[
                    "dispatch done#1 t.done",
                    &arm("StartToClose", "done#1", S2C),
                ],
                Running,
            ),
        ],
    );
}

#[test]
fn child_workflows_are_started_and_awaited() {
    let yaml = r#"
name: parent
version: 1
steps:
  - { id: pay, task: t.pay, compensate: { task: undo.pay } }
  - { id: ship, workflow: shipping, version: 2, input: { to: "${input.to}" }, output: shipped }
"#;
    let sim = table(
        yaml,
        json!({"to": "Oslo"}),
        &["dispatch pay#1 t.pay", &arm("StartToClose", "pay#1", S2C)],
        vec![
            (
                Complete("pay", json!(null)),
                &["start child wf-1/ship shipping"],
                Waiting,
            ),
            (
                Child("ship", Ok(json!({"tracking": "T1"}))),
                &["finished completed"],
                Completed,
            ),
        ],
    );
    assert_eq!(sim.inst.vars["shipped"], json!({"tracking": "T1"}));
    let failing = table(
        yaml,
        json!({"to": "Oslo"}),
        &["dispatch pay#1 t.pay", &arm("StartToClose", "pay#1", S2C)],
        vec![
            (
                Complete("pay", json!(null)),
                &["start child wf-1/ship shipping"],
                Waiting,
            ),
            (
                Child("ship", Err("no_carrier")),
                &[
                    "dispatch pay/compensate#1 undo.pay",
                    &arm("StartToClose", "pay/compensate#1", S2C),
                ],
                Compensating,
            ),
        ],
    );
    assert_eq!(failing.inst.error.clone().unwrap().code, "no_carrier");
    // Cancelling the parent cancels the child and waits for it to end.
    let mut cancelled = Sim::start(load(yaml), json!({"to": "Oslo"}));
    cancelled.complete("pay", json!(null));
    let out = cancelled.apply(EventKind::CancelRequested { reason: "x".into() });
    assert_eq!(
        show(&out.effects, cancelled.now),
        ["cancel child wf-1/ship"]
    );
    assert_eq!(
        cancelled.status(),
        Compensating,
        "waiting for the child to end"
    );
    cancelled.apply(EventKind::ChildEnded {
        path: "ship".into(),
        outcome: Err(ErrorInfo::new(CANCELLED, "cancelled")),
    });
    assert_eq!(cancelled.out(), ["pay/compensate"]);
    cancelled.complete("pay/compensate", json!(null));
    assert_eq!(cancelled.finished, Some(Cancelled));
}

#[test]
fn set_fail_and_succeed_steps() {
    let yaml = r#"
name: small
version: 1
steps:
  - { id: init, set: { total: "${input.a + input.b}", label: "sum ${input.a}" } }
  - id: check
    choice:
      - when: "total > 10"
        steps: [ { id: too-big, fail: { code: limit_exceeded, message: "total ${total} over 10" } } ]
      - when: "total == 0"
        steps: [ { id: nothing, succeed: { output: { empty: true } } } ]
  - { id: work, task: t.work, input: "${total}" }
output: { total: "${total}", label: "${label}" }
"#;
    let sim = table(yaml, json!({"a": 20, "b": 1}), &["finished failed"], vec![]);
    let error = sim.inst.error.clone().unwrap();
    assert_eq!(
        (error.code.as_str(), error.message.as_str()),
        ("limit_exceeded", "total 21 over 10")
    );
    let sim = table(
        yaml,
        json!({"a": 0, "b": 0}),
        &["finished completed"],
        vec![],
    );
    assert_eq!(sim.inst.output, Some(json!({"empty": true})));
    let sim = table(
        yaml,
        json!({"a": 2, "b": 3}),
        &[
            "dispatch work#1 t.work",
            &arm("StartToClose", "work#1", S2C),
        ],
        vec![(
            Complete("work", json!(null)),
            &["finished completed"],
            Completed,
        )],
    );
    assert_eq!(sim.inst.output, Some(json!({"total": 5, "label": "sum 2"})));
}

#[test]
fn on_failure_steps_replace_a_failed_step() {
    let yaml = r#"
name: fallback
version: 1
steps:
  - id: score
    task: fraud.score
    retry: { max_attempts: 1 }
    output: fraud
    on_failure:
      - { id: assume-worst, task: noop, input: { score: 100, why: "${error.code}" } }
  - { id: route, task: t.route, input: "${fraud.score}" }
"#;
    let sim = table(
        yaml,
        json!({}),
        &[
            "dispatch score#1 fraud.score",
            &arm("StartToClose", "score#1", S2C),
        ],
        vec![(
            Fail("score", "scoring_down", true),
            &[
                "dispatch score/on_failure/assume-worst#1 noop",
                &arm("StartToClose", "score/on_failure/assume-worst#1", S2C),
            ],
            Running,
        )],
    );
    // The simulator completed the noop like the node does; the walk went on.
    assert_eq!(
        sim.inst.vars["fraud"],
        json!({"score": 100, "why": "scoring_down"})
    );
    assert_eq!(sim.task("route").input, json!(100));
    assert_eq!(sim.step_status("score"), StepStatus::Failed);
}

#[test]
fn guards_skip_steps_and_expression_errors_fail_for_good() {
    let yaml = r#"
name: guard
version: 1
steps:
  - { id: laptop, if: "input.remote", task: it.ship }
  - { id: next, task: t.next, input: "${input.missing.field}", retry: { max_attempts: 5 } }
"#;
    let sim = table(yaml, json!({"remote": false}), &["finished failed"], vec![]);
    assert_eq!(sim.step_status("laptop"), StepStatus::Skipped);
    assert_eq!(
        sim.inst.steps["next"].error.clone().unwrap().code,
        EXPRESSION_ERROR
    );
}

#[test]
fn duplicate_late_and_unknown_reports_are_ignored() {
    let mut sim = Sim::start(load(SAGA), json!({}));
    let attempt = sim.task("a").attempt;
    sim.complete("a", json!({"id": 1}));
    let dup = sim.apply(EventKind::TaskCompleted {
        path: "a".into(),
        attempt,
        output: json!(2),
    });
    assert!(dup.ignored.is_some() && dup.effects.is_empty());
    let wrong_attempt = sim.apply(EventKind::TaskCompleted {
        path: "b".into(),
        attempt: 7,
        output: json!(2),
    });
    assert!(wrong_attempt.ignored.is_some());
    let unknown = sim.apply(EventKind::TaskFailed {
        path: "zzz".into(),
        attempt: 1,
        error: ErrorInfo::new("x", "y"),
        retryable: true,
    });
    assert!(unknown.ignored.is_some());
    let stale = sim.apply(EventKind::TimerFired {
        timer: TimerId {
            kind: TimerKind::StartToClose,
            path: "a".into(),
            attempt: 1,
        },
    });
    assert!(
        stale.ignored.is_some(),
        "a timeout for a completed attempt is stale"
    );
    assert_eq!(sim.inst.vars["a_out"], json!({"id": 1}));
    sim.complete_everything();
    let after_end = sim.apply(EventKind::Signal {
        id: "s".into(),
        name: "n".into(),
        payload: json!(null),
    });
    assert!(
        after_end.ignored.is_some(),
        "a finished instance takes no more events"
    );
}

#[test]
fn finished_iterations_leave_the_state_and_still_compensate() {
    let yaml = r#"
name: big
version: 1
steps:
  - id: each
    foreach: "input.items"
    as: item
    concurrency: 4
    steps:
      - { id: pick, task: t.pick, input: "${item}" }
      - { id: book, task: t.book, input: "${item}", compensate: { task: undo.book, input: "${item}" } }
  - { id: last, task: t.last, retry: { max_attempts: 1 } }
"#;
    let items: Vec<Json> = (0..60).map(|i| json!(i)).collect();
    let mut sim = Sim::start(load(yaml), json!({ "items": items }));
    let mut booked = Vec::new();
    while let Some(path) = sim.out().into_iter().find(|p| p.starts_with("each/")) {
        let input = sim.task(&path).input.clone();
        if path.ends_with("/book") {
            booked.push(input.clone());
        }
        sim.complete(&path, input);
        // Only running iterations keep their runs: at most 4 iterations of
        // 2 steps, plus the foreach itself.
        assert!(
            sim.inst.steps.len() <= 1 + 4 * 2,
            "{:?}",
            sim.inst.steps.keys()
        );
    }
    let each = &sim.inst.steps["each"];
    assert_eq!(each.status, StepStatus::Completed);
    assert_eq!(each.result, Some(Json::Array(items.clone())));
    // The 60 `pick` runs were archived; the 60 compensable `book` runs wait
    // in `folded` for a rollback.
    assert_eq!(sim.inst.archived.get(&StepStatus::Completed), Some(&60));
    assert_eq!(sim.inst.folded.len(), 60);
    sim.fail("last", "boom", false);
    let mut undone = Vec::new();
    while let Some(path) = sim.out().into_iter().next() {
        undone.push(sim.task(&path).input.clone());
        sim.complete(&path, json!({}));
    }
    booked.reverse();
    assert_eq!(undone, booked, "compensated in reverse order of completion");
    assert_eq!(sim.status(), InstanceStatus::Compensated);
}

#[test]
fn loop_repeats_while_its_condition_holds_and_folds_each_iteration() {
    let yaml = r#"
name: renew
version: 1
steps:
  - { id: init, set: { renewals: 0 } }
  - id: monthly
    loop: "renewals < 3"
    output: summary
    steps:
      - { id: nap, wait: 30d }
      - { id: charge, task: billing.charge, input: { n: "${iteration}" }, compensate: { task: billing.refund } }
      - { id: count, set: { renewals: "${renewals + 1}" } }
"#;
    let mut sim = Sim::start(load(yaml), json!({}));
    for i in 0..3 {
        let (timer, _) = sim.fire_next_timer().expect("a nap per iteration");
        assert_eq!(timer.path, format!("monthly/{i}/nap"));
        assert_eq!(
            sim.task(&format!("monthly/{i}/charge")).input,
            json!({"n": i})
        );
        sim.complete(&format!("monthly/{i}/charge"), json!({"ok": i}));
        // Only the foreach-like body of the running iteration stays.
        assert!(sim.inst.steps.len() <= 2 + 3, "{:?}", sim.inst.steps.keys());
    }
    assert_eq!(sim.status(), InstanceStatus::Completed);
    assert_eq!(sim.inst.vars["renewals"], json!(3));
    assert_eq!(
        sim.inst.vars["summary"],
        json!({"iterations": 3, "last": {"renewals": 3}})
    );
    // Naps and counts were archived; charges wait for a rollback.
    assert_eq!(sim.inst.archived.get(&StepStatus::Completed), Some(&6));
    assert_eq!(sim.inst.folded.len(), 3);
}

#[test]
fn loop_that_never_waits_is_bounded() {
    let spin = r#"
name: spin
version: 1
steps:
  - { id: init, set: { n: 0 } }
  - id: forever
    loop: "true"
    steps: [ { id: inc, set: { n: "${n + 1}" } } ]
"#;
    let sim = Sim::start(load(spin), json!({}));
    assert_eq!(sim.status(), InstanceStatus::Failed);
    assert_eq!(sim.inst.error.as_ref().unwrap().code, "loop_spin");
    let capped = r#"
name: capped
version: 1
steps:
  - { id: init, set: { n: 0 } }
  - id: five
    loop: "true"
    max_iterations: 5000
    steps: [ { id: inc, set: { n: "${n + 1}" } } ]
"#;
    let sim = Sim::start(load(capped), json!({}));
    assert_eq!(sim.status(), InstanceStatus::Completed);
    assert_eq!(sim.inst.vars["n"], json!(5000));
}
