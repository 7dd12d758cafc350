//! Lowering a JSON document into the [`Definition`] model.
//!
//! Structural checks happen here (types, required and unknown fields, values
//! in range, expressions that compile); whole-definition checks (unique ids,
//! limits, placement) live in `validate.rs`.

use super::fields::{Fields, Issues, as_duration, as_string};
use super::model::*;
use crate::expr::{Expr, Template};
use serde_json::Value as Json;
use std::collections::BTreeMap;

/// Keys that select a step's kind; a step has exactly one.
const KIND_KEYS: [&str; 13] = [
    "task", "parallel", "choice", "foreach", "loop", "human", "await", "wait", "until", "workflow",
    "set", "fail", "succeed",
];

/// Names that expressions bind themselves and documents may not reuse.
pub const RESERVED_NAMES: [&str; 3] = ["input", "error", "result"];

/// Lowers a whole document.
pub fn definition(doc: &Json, issues: &mut Issues) -> Option<Definition> {
    let mut f = Fields::of(doc, "", issues)?;
    let name = f.required_string("name", issues);
    if let Some(name) = &name {
        check_name(name, "name", issues);
    }
    let version = match f.require("version", issues) {
        Some(v) => match v.as_u64() {
            Some(n) if (1..=u64::from(u32::MAX)).contains(&n) => Some(n as u32),
            _ => {
                issues.push("version", "must be a whole number >= 1");
                None
            }
        },
        None => None,
    };
    let description = f.string("description", issues);
    let steps = match f.require("steps", issues) {
        Some(v) => step_list(v, "steps", issues),
        None => None,
    };
    let output = f.get("output").and_then(|v| template(v, "output", issues));
    f.finish(issues);
    Some(Definition {
        name: name?,
        version: version?,
        description,
        steps: steps?,
        output,
    })
}

fn check_name(name: &str, path: &str, issues: &mut Issues) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    if !ok {
        issues.push(
            path,
            format!(
                "invalid name {name:?}: use 1-64 of a-z 0-9 . _ - starting with a letter or digit"
            ),
        );
    }
}

/// A non-empty list of steps.
fn step_list(value: &Json, path: &str, issues: &mut Issues) -> Option<Vec<Step>> {
    let Json::Array(items) = value else {
        issues.push(path, "must be a list of steps");
        return None;
    };
    if items.is_empty() {
        issues.push(path, "must not be empty");
        return None;
    }
    let steps: Vec<Option<Step>> = items
        .iter()
        .enumerate()
        .map(|(i, item)| step(item, &format!("{path}[{i}]"), issues))
        .collect();
    steps.into_iter().collect()
}

fn step(value: &Json, path: &str, issues: &mut Issues) -> Option<Step> {
    let mut f = Fields::of(value, path, issues)?;
    let id = f.required_string("id", issues);
    if let Some(id) = &id {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            && !id.chars().all(|c| c.is_ascii_digit());
        if !ok {
            issues.push(
                &f.path_of("id"),
                format!("invalid step id {id:?}: use 1-64 of A-Z a-z 0-9 _ -, not only digits"),
            );
        }
    }
    let condition = f.get("if").and_then(|v| expr(v, &f.path_of("if"), issues));
    let output = f.string("output", issues);
    if let Some(name) = &output {
        check_identifier(name, &f.path_of("output"), issues);
    }

    let kinds: Vec<&str> = KIND_KEYS.into_iter().filter(|k| f.has(k)).collect();
    let kind = match kinds.as_slice() {
        [] => {
            issues.push(path, format!("needs one of: {}", KIND_KEYS.join(", ")));
            None
        }
        [kind] => step_kind(kind, &mut f, issues),
        many => {
            issues.push(
                path,
                format!(
                    "has several kinds ({}); a step has exactly one",
                    many.join(", ")
                ),
            );
            None
        }
    };
    let side_effects = matches!(kinds.as_slice(), ["task"] | ["workflow"]);
    let compensate = match f.get("compensate") {
        Some(_) if !side_effects => {
            issues.push(
                &f.path_of("compensate"),
                "only task and workflow steps can be compensated",
            );
            None
        }
        Some(v) => {
            task_spec(v, &f.path_of("compensate"), "task", issues).map(|task| Compensation { task })
        }
        None => None,
    };
    let on_failure = match f.get("on_failure") {
        Some(_) if !side_effects => {
            issues.push(
                &f.path_of("on_failure"),
                "only task and workflow steps have on_failure",
            );
            None
        }
        Some(v) => step_list(v, &f.path_of("on_failure"), issues),
        None => None,
    };
    f.finish(issues);
    Some(Step {
        id: id?,
        condition,
        kind: kind?,
        output,
        compensate,
        on_failure,
    })
}

fn step_kind(kind: &str, f: &mut Fields<'_>, issues: &mut Issues) -> Option<StepKind> {
    match kind {
        "task" => {
            let task_type = f.required_string("task", issues)?;
            Some(StepKind::Task(task_fields(task_type, f, issues)?))
        }
        "parallel" => {
            let path = f.path_of("parallel");
            let Some(Json::Array(branches)) = f.get("parallel") else {
                issues.push(&path, "must be a list of branches, each a list of steps");
                return None;
            };
            if branches.len() < 2 {
                issues.push(&path, "needs at least 2 branches");
            }
            let lowered: Vec<Option<Vec<Step>>> = branches
                .iter()
                .enumerate()
                .map(|(i, b)| step_list(b, &format!("{path}[{i}]"), issues))
                .collect();
            Some(StepKind::Parallel(
                lowered.into_iter().collect::<Option<_>>()?,
            ))
        }
        "choice" => choice(f, issues),
        "foreach" => {
            let items = expr(f.get("foreach")?, &f.path_of("foreach"), issues);
            let var = f.required_string("as", issues);
            if let Some(var) = &var {
                check_identifier(var, &f.path_of("as"), issues);
            }
            let concurrency = f.uint("concurrency", 1, 1000, issues).unwrap_or(1) as u32;
            let steps = match f.require("steps", issues) {
                Some(v) => step_list(v, &f.path_of("steps"), issues),
                None => None,
            };
            Some(StepKind::Foreach(ForeachStep {
                items: items?,
                var: var?,
                concurrency,
                steps: steps?,
            }))
        }
        "loop" => {
            let condition = expr(f.get("loop")?, &f.path_of("loop"), issues);
            let max_iterations = f.uint("max_iterations", 1, u64::MAX, issues);
            let steps = match f.require("steps", issues) {
                Some(v) => step_list(v, &f.path_of("steps"), issues),
                None => None,
            };
            Some(StepKind::Loop(LoopStep {
                condition: condition?,
                max_iterations,
                steps: steps?,
            }))
        }
        "human" => human(f, issues),
        "await" => {
            let name = f.required_string("await", issues);
            let correlation = f
                .get("correlation")
                .and_then(|v| template(v, &f.path_of("correlation"), issues));
            let timeout = deadline(f, "timeout", issues);
            let on_timeout = on_timeout(f, issues);
            Some(StepKind::Await(AwaitStep {
                name: name?,
                correlation,
                timeout: timeout?,
                on_timeout: on_timeout?,
            }))
        }
        "wait" => Some(StepKind::Wait(WaitStep::For(f.duration("wait", issues)?))),
        "until" => Some(StepKind::Wait(WaitStep::Until(expr(
            f.get("until")?,
            &f.path_of("until"),
            issues,
        )?))),
        "workflow" => {
            let name = f.required_string("workflow", issues);
            if let Some(name) = &name {
                check_name(name, &f.path_of("workflow"), issues);
            }
            let version = f
                .uint("version", 1, u64::from(u32::MAX), issues)
                .map(|v| v as u32);
            let input = f
                .get("input")
                .and_then(|v| template(v, &f.path_of("input"), issues));
            Some(StepKind::Workflow(ChildStep {
                name: name?,
                version,
                input,
            }))
        }
        "set" => {
            let path = f.path_of("set");
            let Some(Json::Object(map)) = f.get("set") else {
                issues.push(&path, "must be a map of variable names to values");
                return None;
            };
            if map.is_empty() {
                issues.push(&path, "must set at least one variable");
            }
            let mut vars = BTreeMap::new();
            for (name, value) in map {
                let var_path = format!("{path}.{name}");
                check_identifier(name, &var_path, issues);
                if let Some(t) = template(value, &var_path, issues) {
                    vars.insert(name.clone(), t);
                }
            }
            Some(StepKind::Set(vars))
        }
        "fail" => {
            let value = f.get("fail")?;
            let mut g = Fields::of(value, &f.path_of("fail"), issues)?;
            let code = g.required_string("code", issues);
            let message = g
                .get("message")
                .and_then(|v| template(v, &g.path_of("message"), issues));
            g.finish(issues);
            Some(StepKind::Fail(FailStep {
                code: code?,
                message,
            }))
        }
        "succeed" => {
            let value = f.get("succeed")?;
            if value.is_null() {
                return Some(StepKind::Succeed(None));
            }
            let mut g = Fields::of(value, &f.path_of("succeed"), issues)?;
            let output = g
                .get("output")
                .and_then(|v| template(v, &g.path_of("output"), issues));
            g.finish(issues);
            Some(StepKind::Succeed(output))
        }
        other => unreachable!("unlisted step kind {other}"),
    }
}

/// `input`, `retry` and `timeout` of a task step or compensation.
fn task_fields(task_type: String, f: &mut Fields<'_>, issues: &mut Issues) -> Option<TaskStep> {
    if task_type.trim().is_empty() {
        issues.push(&f.path_of("task"), "must name a task type");
    }
    let input = f
        .get("input")
        .and_then(|v| template(v, &f.path_of("input"), issues));
    let retry = match f.get("retry") {
        Some(v) => retry(v, &f.path_of("retry"), issues)?,
        None => RetryPolicy::default(),
    };
    let timeouts = match f.get("timeout") {
        Some(v) => timeouts(v, &f.path_of("timeout"), issues)?,
        None => Timeouts::default(),
    };
    Some(TaskStep {
        task_type,
        input,
        retry,
        timeouts,
    })
}

/// A standalone task map such as `compensate: {task, input, retry, timeout}`.
fn task_spec(value: &Json, path: &str, key: &'static str, issues: &mut Issues) -> Option<TaskStep> {
    let mut f = Fields::of(value, path, issues)?;
    let task_type = f.required_string(key, issues);
    let spec = task_fields(task_type.clone().unwrap_or_default(), &mut f, issues);
    f.finish(issues);
    task_type.and(spec)
}

fn retry(value: &Json, path: &str, issues: &mut Issues) -> Option<RetryPolicy> {
    let mut f = Fields::of(value, path, issues)?;
    let d = RetryPolicy::default();
    let before = issues.0.len();
    let max_attempts = f
        .uint("max_attempts", 1, 1000, issues)
        .map_or(d.max_attempts, |n| n as u32);
    let initial_delay = f
        .duration("initial_delay", issues)
        .unwrap_or(d.initial_delay);
    let max_delay = f.duration("max_delay", issues).unwrap_or(d.max_delay);
    let multiplier = f.number("multiplier", issues).unwrap_or(d.multiplier);
    let jitter = f.number("jitter", issues).unwrap_or(d.jitter);
    let non_retryable = match f.get("non_retryable") {
        Some(Json::Array(codes)) => codes
            .iter()
            .enumerate()
            .filter_map(|(i, c)| as_string(c, &format!("{path}.non_retryable[{i}]"), issues))
            .collect(),
        Some(_) => {
            issues.push(&f.path_of("non_retryable"), "must be a list of error codes");
            Vec::new()
        }
        None => Vec::new(),
    };
    if multiplier < 1.0 {
        issues.push(&f.path_of("multiplier"), "must be >= 1");
    }
    if !(0.0..=1.0).contains(&jitter) {
        issues.push(&f.path_of("jitter"), "must be between 0 and 1");
    }
    if max_delay < initial_delay {
        issues.push(&f.path_of("max_delay"), "must be >= initial_delay");
    }
    f.finish(issues);
    (issues.0.len() == before).then_some(RetryPolicy {
        max_attempts,
        initial_delay,
        max_delay,
        multiplier,
        jitter,
        non_retryable,
    })
}

fn timeouts(value: &Json, path: &str, issues: &mut Issues) -> Option<Timeouts> {
    let positive = |d: std::time::Duration, p: &str, issues: &mut Issues| {
        if d.is_zero() {
            issues.push(p, "must be greater than 0");
        }
        d
    };
    if value.is_string() {
        let d = as_duration(value, path, issues)?;
        return Some(Timeouts {
            start_to_close: positive(d, path, issues),
            ..Timeouts::default()
        });
    }
    let mut f = Fields::of(value, path, issues)?;
    let start_to_close = f
        .duration("start_to_close", issues)
        .map(|d| positive(d, &format!("{path}.start_to_close"), issues))
        .unwrap_or(Timeouts::DEFAULT_START_TO_CLOSE);
    let schedule_to_start = f
        .duration("schedule_to_start", issues)
        .map(|d| positive(d, &format!("{path}.schedule_to_start"), issues));
    let heartbeat = f
        .duration("heartbeat", issues)
        .map(|d| positive(d, &format!("{path}.heartbeat"), issues));
    f.finish(issues);
    Some(Timeouts {
        start_to_close,
        schedule_to_start,
        heartbeat,
    })
}

fn choice(f: &mut Fields<'_>, issues: &mut Issues) -> Option<StepKind> {
    let path = f.path_of("choice");
    let Some(Json::Array(items)) = f.get("choice") else {
        issues.push(
            &path,
            "must be a list of {when, steps} branches and an optional {otherwise}",
        );
        return None;
    };
    if items.is_empty() {
        issues.push(&path, "must not be empty");
    }
    let mut branches = Vec::new();
    let mut otherwise = None;
    let mut ok = true;
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let Some(mut g) = Fields::of(item, &item_path, issues) else {
            ok = false;
            continue;
        };
        if g.has("otherwise") {
            if i + 1 != items.len() {
                issues.push(&item_path, "otherwise must be the last branch");
            }
            otherwise = g
                .get("otherwise")
                .and_then(|v| step_list(v, &g.path_of("otherwise"), issues));
            ok &= otherwise.is_some();
        } else {
            let when = match g.require("when", issues) {
                Some(v) => expr(v, &g.path_of("when"), issues),
                None => None,
            };
            let steps = match g.require("steps", issues) {
                Some(v) => step_list(v, &g.path_of("steps"), issues),
                None => None,
            };
            match (when, steps) {
                (Some(when), Some(steps)) => branches.push(ChoiceBranch { when, steps }),
                _ => ok = false,
            }
        }
        g.finish(issues);
    }
    if ok && branches.is_empty() {
        issues.push(&path, "needs at least one `when` branch");
        return None;
    }
    ok.then_some(StepKind::Choice(ChoiceStep {
        branches,
        otherwise,
    }))
}

fn human(f: &mut Fields<'_>, issues: &mut Issues) -> Option<StepKind> {
    let value = f.get("human")?;
    let mut g = Fields::of(value, &f.path_of("human"), issues)?;
    let assignee = g.required_string("assignee", issues);
    let input = g
        .get("input")
        .and_then(|v| template(v, &g.path_of("input"), issues));
    let timeout = deadline(&mut g, "timeout", issues);
    let escalate_to = g.string("escalate_to", issues);
    let escalation_timeout = g.duration("escalation_timeout", issues);
    match (&escalate_to, escalation_timeout, timeout) {
        (Some(_), None, _) => issues.push(
            &g.path_of("escalation_timeout"),
            "is required with escalate_to",
        ),
        (None, Some(_), _) => issues.push(
            &g.path_of("escalate_to"),
            "is required with escalation_timeout",
        ),
        (Some(_), _, Some(Deadline::Never)) => issues.push(
            &g.path_of("escalate_to"),
            "can never happen with timeout: never",
        ),
        _ => {}
    }
    g.finish(issues);
    let on_timeout = on_timeout(f, issues);
    Some(StepKind::Human(HumanStep {
        assignee: assignee?,
        input,
        timeout: timeout?,
        escalate_to,
        escalation_timeout,
        on_timeout: on_timeout?,
    }))
}

/// A required `timeout` that is a duration or `never`.
fn deadline(f: &mut Fields<'_>, key: &'static str, issues: &mut Issues) -> Option<Deadline> {
    let path = f.path_of(key);
    let Some(value) = f.get(key) else {
        issues.push(
            &path,
            "is required: a step that waits needs a timeout (write `never` to wait forever)",
        );
        return None;
    };
    if value.as_str() == Some("never") {
        return Some(Deadline::Never);
    }
    let d = as_duration(value, &path, issues)?;
    if d.is_zero() {
        issues.push(&path, "must be greater than 0");
    }
    Some(Deadline::After(d))
}

fn on_timeout(f: &mut Fields<'_>, issues: &mut Issues) -> Option<TimeoutAction> {
    let path = f.path_of("on_timeout");
    match f.get("on_timeout") {
        None => Some(TimeoutAction::Fail),
        Some(Json::String(s)) if s == "fail" => Some(TimeoutAction::Fail),
        Some(Json::String(s)) if s == "continue" => Some(TimeoutAction::Continue),
        Some(v @ Json::Array(_)) => step_list(v, &path, issues).map(TimeoutAction::Steps),
        Some(_) => {
            issues.push(&path, "must be `fail`, `continue` or a list of steps");
            None
        }
    }
}

fn check_identifier(name: &str, path: &str, issues: &mut Issues) {
    let ok = name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 64;
    if !ok {
        issues.push(
            path,
            format!("invalid variable name {name:?}: use letters, digits and _"),
        );
    } else if RESERVED_NAMES.contains(&name) {
        issues.push(path, format!("{name:?} is reserved"));
    }
}

fn expr(value: &Json, path: &str, issues: &mut Issues) -> Option<Expr> {
    let source = as_string(value, path, issues)?;
    let source = source.trim();
    let source = source
        .strip_prefix("${")
        .and_then(|s| s.strip_suffix('}'))
        .unwrap_or(source);
    match Expr::compile(source) {
        Ok(e) => Some(e),
        Err(msg) => {
            issues.push(path, format!("invalid expression: {msg}"));
            None
        }
    }
}

fn template(value: &Json, path: &str, issues: &mut Issues) -> Option<Template> {
    match Template::parse(value) {
        Ok(t) => Some(t),
        Err(errors) => {
            for (suffix, msg) in errors {
                issues.push(&format!("{path}{suffix}"), msg);
            }
            None
        }
    }
}
