//! Whole-definition checks that need more than one step in view.
//!
//! They walk the raw document rather than the lowered model, so that they
//! still report (for example) a duplicate id next to a step that failed to
//! parse: validation returns every error at once.

use super::fields::Issues;
use serde_json::Value as Json;
use std::collections::HashMap;

/// Most steps a definition may hold, nested ones included.
pub const MAX_STEPS: usize = 1000;
/// Deepest nesting of step lists (a top-level step is at depth 1).
pub const MAX_DEPTH: usize = 16;

/// Checks unique ids, limits and placement rules, reporting with `steps[..]` paths.
pub fn check(doc: &Json, issues: &mut Issues) {
    let Some(steps) = doc.get("steps") else {
        return;
    };
    let mut walk = Walk {
        ids: HashMap::new(),
        count: 0,
        issues,
    };
    walk.list(steps, "steps", 1, false);
    if walk.count > MAX_STEPS {
        walk.issues.push(
            "steps",
            format!("has {} steps; at most {MAX_STEPS} are allowed", walk.count),
        );
    }
}

struct Walk<'a, 'i> {
    ids: HashMap<&'a str, String>,
    count: usize,
    issues: &'i mut Issues,
}

impl<'a> Walk<'a, '_> {
    fn list(&mut self, steps: &'a Json, path: &str, depth: usize, in_concurrent: bool) {
        let Json::Array(steps) = steps else { return };
        if depth > MAX_DEPTH {
            self.issues
                .push(path, format!("nesting is deeper than {MAX_DEPTH} levels"));
            return;
        }
        for (i, step) in steps.iter().enumerate() {
            self.step(step, &format!("{path}[{i}]"), depth, in_concurrent);
        }
    }

    fn step(&mut self, step: &'a Json, path: &str, depth: usize, in_concurrent: bool) {
        let Json::Object(fields) = step else { return };
        self.count += 1;
        if let Some(Json::String(id)) = fields.get("id") {
            match self.ids.get(id.as_str()) {
                Some(first) => self.issues.push(
                    &format!("{path}.id"),
                    format!("duplicate step id {id:?} (first at {first})"),
                ),
                None => {
                    self.ids.insert(id, path.to_owned());
                }
            }
        }
        if in_concurrent && fields.contains_key("succeed") {
            self.issues.push(
                &format!("{path}.succeed"),
                "is not allowed inside parallel, foreach or loop",
            );
        }
        let nested = depth + 1;
        if let Some(Json::Array(branches)) = fields.get("parallel") {
            for (b, branch) in branches.iter().enumerate() {
                self.list(branch, &format!("{path}.parallel[{b}]"), nested, true);
            }
        }
        if let Some(Json::Array(branches)) = fields.get("choice") {
            for (b, branch) in branches.iter().enumerate() {
                for key in ["steps", "otherwise"] {
                    if let Some(list) = branch.get(key) {
                        self.list(
                            list,
                            &format!("{path}.choice[{b}].{key}"),
                            nested,
                            in_concurrent,
                        );
                    }
                }
            }
        }
        if (fields.contains_key("foreach") || fields.contains_key("loop"))
            && let Some(body) = fields.get("steps")
        {
            self.list(body, &format!("{path}.steps"), nested, true);
        }
        for key in ["on_failure", "on_timeout"] {
            if let Some(list) = fields.get(key) {
                self.list(list, &format!("{path}.{key}"), nested, in_concurrent);
            }
        }
    }
}
