//! Whole-definition checks that need more than one step in view.

use super::fields::Issues;
use super::model::{Definition, Step, StepKind};
use std::collections::HashMap;

/// Most steps a definition may hold, nested ones included.
pub const MAX_STEPS: usize = 1000;
/// Deepest nesting of step lists (a top-level step is at depth 1).
pub const MAX_DEPTH: usize = 16;

/// Checks unique ids, limits and placement rules, reporting with `steps[..]` paths.
pub fn check(definition: &Definition, issues: &mut Issues) {
    let mut walk = Walk {
        ids: HashMap::new(),
        count: 0,
        issues,
    };
    walk.list(&definition.steps, "steps", 1, false);
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
    fn list(&mut self, steps: &'a [Step], path: &str, depth: usize, in_concurrent: bool) {
        if depth > MAX_DEPTH {
            self.issues
                .push(path, format!("nesting is deeper than {MAX_DEPTH} levels"));
            return;
        }
        for (i, step) in steps.iter().enumerate() {
            self.step(step, &format!("{path}[{i}]"), depth, in_concurrent);
        }
    }

    fn step(&mut self, step: &'a Step, path: &str, depth: usize, in_concurrent: bool) {
        self.count += 1;
        if let Some(first) = self.ids.get(step.id.as_str()) {
            self.issues.push(
                &format!("{path}.id"),
                format!("duplicate step id {:?} (first at {first})", step.id),
            );
        } else {
            self.ids.insert(&step.id, path.to_owned());
        }
        if in_concurrent && matches!(step.kind, StepKind::Succeed(_)) {
            self.issues.push(
                &format!("{path}.succeed"),
                "is not allowed inside parallel or foreach",
            );
        }
        match &step.kind {
            StepKind::Parallel(branches) => {
                for (b, branch) in branches.iter().enumerate() {
                    self.list(branch, &format!("{path}.parallel[{b}]"), depth + 1, true);
                }
            }
            StepKind::Choice(choice) => {
                for (b, branch) in choice.branches.iter().enumerate() {
                    self.list(
                        &branch.steps,
                        &format!("{path}.choice[{b}].steps"),
                        depth + 1,
                        in_concurrent,
                    );
                }
                if let Some(otherwise) = &choice.otherwise {
                    let b = choice.branches.len();
                    self.list(
                        otherwise,
                        &format!("{path}.choice[{b}].otherwise"),
                        depth + 1,
                        in_concurrent,
                    );
                }
            }
            StepKind::Foreach(each) => {
                self.list(&each.steps, &format!("{path}.steps"), depth + 1, true)
            }
            StepKind::Human(h) => self.timeout_steps(&h.on_timeout, path, depth, in_concurrent),
            StepKind::Await(a) => self.timeout_steps(&a.on_timeout, path, depth, in_concurrent),
            StepKind::Task(_)
            | StepKind::Wait(_)
            | StepKind::Workflow(_)
            | StepKind::Set(_)
            | StepKind::Fail(_)
            | StepKind::Succeed(_) => {}
        }
        if let Some(fallback) = &step.on_failure {
            self.list(
                fallback,
                &format!("{path}.on_failure"),
                depth + 1,
                in_concurrent,
            );
        }
    }

    fn timeout_steps(
        &mut self,
        action: &'a super::model::TimeoutAction,
        path: &str,
        depth: usize,
        in_concurrent: bool,
    ) {
        if let super::model::TimeoutAction::Steps(steps) = action {
            self.list(
                steps,
                &format!("{path}.on_timeout"),
                depth + 1,
                in_concurrent,
            );
        }
    }
}
