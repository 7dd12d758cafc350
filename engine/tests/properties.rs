//! Property tests: any interleaving of outcomes ends in a terminal state,
//! compensations run in reverse order of completion, and replaying the
//! journal always rebuilds the identical state (checked after every event by
//! the simulator).

mod common;

use common::*;
use proptest::prelude::*;
use serde_json::{Value as Json, json};
use troupe_engine::definition::Definition;
use troupe_engine::engine::*;

const WIDE: &str = r#"
name: wide
version: 1
steps:
  - { id: first, task: t.first, compensate: { task: undo.first, retry: { max_attempts: 2, jitter: 0 } }, retry: { max_attempts: 2 } }
  - id: fan
    parallel:
      - - { id: x, task: t.x, compensate: { task: undo.x }, timeout: { start_to_close: 1m, heartbeat: 10s } }
        - { id: nap, wait: 5m }
      - - id: each
          foreach: "input.items"
          as: item
          concurrency: 2
          steps:
            - { id: z, task: t.z, input: "${item}", compensate: { task: undo.z }, retry: { max_attempts: 3, initial_delay: 1s } }
      - - { id: cb, await: ready, correlation: "${input.key}", timeout: 1h, on_timeout: continue }
  - id: pick
    choice:
      - when: "input.items.size() > 2"
        steps: [ { id: big, task: t.big, compensate: { task: undo.big }, on_failure: [ { id: soft, task: noop } ] } ]
      - otherwise: [ { id: small, task: t.small } ]
  - id: again
    loop: "iteration < 2"
    steps: [ { id: l, task: t.l, input: "${iteration}", compensate: { task: undo.l } } ]
  - { id: approve, human: { assignee: ops, timeout: 1h, escalate_to: leads, escalation_timeout: 1h }, on_timeout: fail }
  - { id: child, workflow: sub, compensate: { task: undo.child } }
  - { id: last, task: t.last, retry: { max_attempts: 1 } }
"#;

fn definitions() -> Vec<(Definition, Json)> {
    vec![
        (load(WIDE), json!({"items": [1, 2, 3], "key": "k"})),
        (load(WIDE), json!({"items": [], "key": "k"})),
        (
            example("order-fulfillment"),
            json!({"order_id": "o-1", "amount": 10, "customer": "c"}),
        ),
        (
            example("travel-booking"),
            json!({"trip_id": "t-1", "traveller": {"name": "A"}, "origin": "LHR", "destination": "JFK", "depart_on": "2026-09-14", "return_on": "2026-09-21"}),
        ),
        (
            example("employee-onboarding"),
            json!({"name": "N", "email": "e@x", "department": "d", "role": "r", "start_date": "2026-07-01", "remote": true, "address": "x"}),
        ),
        (
            example("loan-approval"),
            json!({"applicant": {"name": "A"}, "amount": 60000}),
        ),
        (
            example("insurance-claim"),
            json!({"claim_id": "c", "policy_id": "p", "amount": 5000, "claimant": "x"}),
        ),
    ]
}

/// Every action available to the world right now.
fn actions(sim: &Sim) -> Vec<EventKind> {
    let mut out = Vec::new();
    for t in sim.tasks.values() {
        let (path, attempt) = (t.path.clone(), t.attempt);
        let output = json!({"booking_id": "b", "score": 10, "approved": true});
        out.push(EventKind::TaskCompleted {
            path: path.clone(),
            attempt,
            output,
        });
        let error = ErrorInfo::new("flaky", "transient");
        out.push(EventKind::TaskFailed {
            path: path.clone(),
            attempt,
            error,
            retryable: true,
        });
        let error = ErrorInfo::new("broken", "permanent");
        out.push(EventKind::TaskFailed {
            path: path.clone(),
            attempt,
            error,
            retryable: false,
        });
        out.push(EventKind::TaskStarted {
            path: path.clone(),
            attempt,
        });
        out.push(EventKind::TaskHeartbeat {
            path,
            attempt,
            progress: None,
        });
    }
    for path in sim.humans.keys() {
        out.push(EventKind::HumanCompleted {
            path: path.clone(),
            payload: json!({"approved": out.len() % 2 == 0}),
        });
    }
    for (name, _) in &sim.subscriptions {
        out.push(EventKind::Signal {
            id: format!("s{}", sim.events.len()),
            name: name.clone(),
            payload: json!("hi"),
        });
    }
    for path in sim.children.keys() {
        if sim
            .inst
            .steps
            .get(path)
            .is_some_and(|r| r.status == StepStatus::Running)
        {
            out.push(EventKind::ChildEnded {
                path: path.clone(),
                outcome: Ok(json!({"child": true})),
            });
            out.push(EventKind::ChildEnded {
                path: path.clone(),
                outcome: Err(ErrorInfo::new("child_failed", "no")),
            });
        }
    }
    for path in &sim.incidents {
        out.push(EventKind::IncidentRetried { path: path.clone() });
        out.push(EventKind::IncidentResolved { path: path.clone() });
    }
    if sim.inst.rollback.is_none() {
        out.push(EventKind::CancelRequested {
            reason: "random".into(),
        });
    }
    out
}

/// How disruptive an action is; choices pick mostly progress, sometimes
/// trouble, rarely disaster, so runs get deep before they end.
fn severity(action: &EventKind) -> usize {
    match action {
        EventKind::TaskCompleted { .. }
        | EventKind::HumanCompleted { .. }
        | EventKind::Signal { .. }
        | EventKind::IncidentResolved { .. }
        | EventKind::ChildEnded { outcome: Ok(_), .. } => 0,
        EventKind::TaskFailed {
            retryable: true, ..
        }
        | EventKind::IncidentRetried { .. }
        | EventKind::TaskStarted { .. }
        | EventKind::TaskHeartbeat { .. } => 1,
        EventKind::TaskFailed {
            retryable: false, ..
        }
        | EventKind::ChildEnded {
            outcome: Err(_), ..
        } => 2,
        _ => 3,
    }
}

/// Picks an action with `byte`: 0-199 progress, 200-239 trouble (or a
/// timer), 240-251 permanent failures, 252-255 cancel.
fn choose(sim: &mut Sim, byte: u8) -> Option<EventKind> {
    let wanted = match byte {
        0..200 => 0,
        200..240 => 1,
        240..252 => 2,
        _ => 3,
    };
    if wanted == 1 && byte.is_multiple_of(2) && !sim.timers.is_empty() {
        sim.fire_next_timer();
        return None;
    }
    let available = actions(sim);
    let same: Vec<&EventKind> = available.iter().filter(|a| severity(a) == wanted).collect();
    let pool: Vec<&EventKind> = if same.is_empty() {
        available.iter().filter(|a| severity(a) == 0).collect()
    } else {
        same
    };
    if pool.is_empty() {
        assert!(
            sim.fire_next_timer().is_some(),
            "stuck: nothing to do and no timer armed\n{:#?}",
            sim.inst
        );
        return None;
    }
    Some(pool[byte as usize % pool.len()].clone())
}

fn perform(sim: &mut Sim, action: EventKind) {
    if let EventKind::TaskCompleted { path, .. } | EventKind::TaskFailed { path, .. } = &action {
        sim.tasks.remove(path);
    }
    if let EventKind::ChildEnded { path, .. } = &action {
        sim.children.remove(path);
    }
    if let EventKind::HumanCompleted { path, .. } = &action {
        sim.humans.remove(path);
    }
    let optional = matches!(
        action,
        EventKind::TaskStarted { .. } | EventKind::TaskHeartbeat { .. }
    );
    let outcome = sim.apply(action);
    assert!(
        optional || outcome.ignored.is_none(),
        "the world only offers applicable actions: {:?}",
        outcome.ignored
    );
}

/// Drives `sim` with `choices` until it ends; once the choices run out the
/// world only makes progress, so every run must finish.
fn drive(sim: &mut Sim, choices: &[u8]) {
    let mut choices = choices.iter().copied();
    for _ in 0..2000 {
        if sim.finished.is_some() {
            return;
        }
        let byte = choices.next().unwrap_or(0);
        if let Some(action) = choose(sim, byte) {
            perform(sim, action);
        }
    }
    panic!("did not finish in 2000 events: {:?}", sim.inst.status);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn every_interleaving_reaches_a_terminal_state(which in 0usize..7, choices in prop::collection::vec(any::<u8>(), 0..200)) {
        let (def, input) = definitions().swap_remove(which);
        let mut sim = Sim::start(def, input);
        drive(&mut sim, &choices);
        let status = sim.finished.expect("finished");
        prop_assert!(status.is_terminal());
        prop_assert_eq!(sim.inst.status, status);
        // Every compensable completion was undone unless the instance completed.
        let undone = sim.inst.steps.values().filter(|r| r.status == StepStatus::Completed)
            .filter(|r| sim.def.step(&r.step_id).is_some_and(|s| s.compensate.is_some()))
            .count();
        if status != InstanceStatus::Completed {
            prop_assert_eq!(undone, 0, "a completed step was left without compensation");
        } else {
            prop_assert!(sim.compensated_order.is_empty());
        }
        prop_assert!(sim.tasks.keys().all(|p| !sim.inst.steps.get(p.trim_end_matches("/compensate")).is_some_and(|r| r.task.as_ref().is_some_and(|t| t.phase.in_flight()))),
            "a finished instance has nothing in flight");
    }

    #[test]
    fn replaying_any_prefix_rebuilds_the_state_seen_then(which in 0usize..7, choices in prop::collection::vec(any::<u8>(), 0..80), cut in any::<prop::sample::Index>()) {
        let (def, input) = definitions().swap_remove(which);
        let mut sim = Sim::start(def.clone(), input);
        let mut snapshots = vec![(sim.events.len(), sim.inst.clone())];
        let mut rest: &[u8] = &choices;
        while sim.finished.is_none() && !rest.is_empty() {
            let n = rest.len().min(4);
            drive_some(&mut sim, &rest[..n]);
            rest = &rest[n..];
            snapshots.push((sim.events.len(), sim.inst.clone()));
        }
        let (len, state) = &snapshots[cut.index(snapshots.len())];
        prop_assert_eq!(&replay(&def, &sim.events[..*len]), state);
    }
}

/// A few choices' worth of driving (without forcing the end).
fn drive_some(sim: &mut Sim, choices: &[u8]) {
    for &byte in choices {
        if sim.finished.is_some() {
            return;
        }
        if let Some(action) = choose(sim, byte) {
            perform(sim, action);
        }
    }
}
