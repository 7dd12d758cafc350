//! JSON views of instances and their history, as the API returns them.

use serde_json::{Value as Json, json};
use std::collections::BTreeMap;
use troupe_engine::engine::{Event, Instance, Millis, StepRun, StepStatus};
use troupe_storage::InstanceHead;

/// RFC 3339 time of an engine timestamp.
pub fn time(ms: Millis) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// Most step runs an instance view lists; the rest are counted in
/// `step_counts` and listed page by page by the steps endpoint.
pub const VIEW_STEPS: usize = 100;

/// `{id, definition, version, status, input, variables, output, error,
/// step_counts, steps, steps_omitted, created_at, updated_at}`: `steps` holds
/// every open run and, up to [`VIEW_STEPS`] in all, the most recent others,
/// in the order they were reached.
pub fn instance(inst: &Instance) -> Json {
    let mut runs: Vec<(&String, &StepRun)> = inst.steps.iter().chain(&inst.folded).collect();
    let mut counts: BTreeMap<StepStatus, u64> = inst.archived.clone();
    for (_, run) in &runs {
        *counts.entry(run.status).or_default() += 1;
    }
    let total = runs.len();
    if total > VIEW_STEPS {
        // Open runs first, then the most recently reached.
        runs.sort_by_key(|(_, run)| (run.status.is_settled(), std::cmp::Reverse(run.order)));
        runs.truncate(VIEW_STEPS);
    }
    runs.sort_by_key(|(_, run)| run.order);
    let steps: Vec<Json> = runs
        .into_iter()
        .map(|(path, run)| step(path, run))
        .collect();
    let omitted = counts.values().sum::<u64>() - steps.len() as u64;
    let counts: serde_json::Map<String, Json> = counts
        .into_iter()
        .map(|(status, n)| (status.as_str().to_owned(), json!(n)))
        .collect();
    json!({
        "id": inst.id,
        "definition": inst.definition,
        "version": inst.version,
        "status": inst.status.as_str(),
        "input": inst.input,
        "variables": inst.vars,
        "output": inst.output,
        "error": inst.error,
        "step_counts": counts,
        "steps": steps,
        "steps_omitted": omitted,
        "created_at": time(inst.created_at),
        "updated_at": time(inst.updated_at),
    })
}

/// One step run: `{path, id, status, attempts, started_at, ended_at, ...}`.
pub fn step(path: &str, run: &StepRun) -> Json {
    let attempts = run.task.as_ref().map_or(0, |t| t.attempt);
    let mut step = json!({
        "path": path,
        "id": run.step_id,
        "status": run.status.as_str(),
        "attempts": attempts,
        "started_at": time(run.started_at),
        "ended_at": run.ended_at.map(time),
    });
    if let Some(error) = &run.error {
        step["error"] = json!(error);
    }
    if let Some(progress) = run.task.as_ref().and_then(|t| t.progress.as_ref()) {
        step["progress"] = progress.clone();
    }
    if let Some(c) = &run.compensation {
        step["compensation_attempts"] = json!(c.attempt);
    }
    step
}

/// A short form for listings.
pub fn summary(head: &InstanceHead) -> Json {
    json!({
        "id": head.id,
        "definition": head.definition,
        "version": head.version,
        "status": head.status.as_str(),
        "created_at": time(head.created_at),
        "updated_at": time(head.updated_at),
    })
}

/// `{events: [{seq, at, type, step, attempt, ...}]}`, oldest first.
pub fn history(events: &[(u64, Event)], next: Option<u64>) -> Json {
    let events: Vec<Json> = events
        .iter()
        .map(|(seq, event)| {
            let mut entry = serde_json::to_value(&event.kind).unwrap_or_else(|_| json!({}));
            entry["seq"] = json!(seq);
            entry["at"] = json!(time(event.at));
            if let Some(path) = entry.get("path").cloned() {
                entry["step"] = path;
            }
            if let Some(timer) = entry.get("timer").cloned() {
                entry["step"] = timer["path"].clone();
                entry["attempt"] = timer["attempt"].clone();
            }
            entry
        })
        .collect();
    json!({ "events": events, "next_cursor": next.map(|seq| seq.to_string()) })
}
