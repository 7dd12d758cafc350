//! JSON views of instances and their history, as the API returns them.

use serde_json::{Value as Json, json};
use troupe_engine::engine::{Event, Instance, Millis, StepRun};

/// RFC 3339 time of an engine timestamp.
pub fn time(ms: Millis) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms))
        .to_string()
}

/// `{id, definition, version, status, input, variables, output, error, steps, created_at, updated_at}`.
pub fn instance(inst: &Instance) -> Json {
    let mut steps: Vec<(&String, &StepRun)> = inst.steps.iter().collect();
    steps.sort_by_key(|(_, run)| run.order);
    let steps: Vec<Json> = steps
        .into_iter()
        .map(|(path, run)| {
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
        })
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
        "steps": steps,
        "created_at": time(inst.created_at),
        "updated_at": time(inst.updated_at),
    })
}

/// A short form for listings.
pub fn summary(inst: &Instance) -> Json {
    json!({
        "id": inst.id,
        "definition": inst.definition,
        "version": inst.version,
        "status": inst.status.as_str(),
        "created_at": time(inst.created_at),
        "updated_at": time(inst.updated_at),
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
