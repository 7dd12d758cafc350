//! Validation tests: every kind of bad definition, reported with its path.

use super::*;

/// The `path: message` lines of a document's issues.
fn errors(doc: &str) -> Vec<String> {
    match load(doc) {
        Ok(def) => panic!("expected errors, {} loaded", def.name),
        Err(issues) => issues.iter().map(ToString::to_string).collect(),
    }
}

fn assert_has(doc: &str, expected: &str) {
    let errors = errors(doc);
    assert!(
        errors.iter().any(|e| e == expected),
        "missing {expected:?} in {errors:#?}"
    );
}

const HEAD: &str = "name: t\nversion: 1\nsteps:\n";

#[test]
fn the_brief_example_error_path() {
    let doc = format!(
        "{HEAD}  - {{ id: a, task: x }}\n  - {{ id: b, task: x }}\n  - id: c\n    parallel:\n      - [ {{ id: d, task: x }}, {{ id: e, task: x, retry: {{ multiplier: 0.5 }} }} ]\n      - [ {{ id: f, task: x }} ]\n"
    );
    assert_eq!(
        errors(&doc),
        ["steps[2].parallel[0][1].retry.multiplier: must be >= 1"]
    );
}

#[test]
fn every_error_is_reported_at_once() {
    let doc = r#"
name: Bad Name
version: 0
colour: blue
steps:
  - { id: a, task: x, retry: { max_attempts: 0, initial_delay: 10s, max_delay: 1s, jitter: 2 } }
  - { id: a, wait: soon }
  - { id: c, await: ev }
  - { id: d, task: x, if: "input.x ==" }
  - id: e
    choice: []
  - { id: f, foreach: "input.items", steps: [] }
"#;
    let found = errors(doc);
    let expected = [
        "name: invalid name \"Bad Name\": use 1-64 of a-z 0-9 . _ - starting with a letter or digit",
        "version: must be a whole number >= 1",
        "colour: unknown field",
        "steps[0].retry.max_attempts: must be >= 1",
        "steps[0].retry.jitter: must be between 0 and 1",
        "steps[0].retry.max_delay: must be >= initial_delay",
        "steps[2].timeout: is required: a step that waits needs a timeout (write `never` to wait forever)",
        "steps[4].choice: must not be empty",
        "steps[5].as: is required",
        "steps[5].steps: must not be empty",
    ];
    for e in expected {
        assert!(found.iter().any(|f| f == e), "missing {e:?} in {found:#?}");
    }
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("steps[1].wait: invalid duration \"soon\"")),
        "{found:#?}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.starts_with("steps[3].if: invalid expression")),
        "{found:#?}"
    );
}

#[test]
fn unknown_fields_anywhere() {
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retries: 3 }}\n"),
        "steps[0].retries: unknown field",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ attempts: 3 }} }}\n"),
        "steps[0].retry.attempts: unknown field",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, compensate: {{ task: y, inputs: 1 }} }}\n"),
        "steps[0].compensate.inputs: unknown field",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, human: {{ assignee: x, timeout: 1h, who: y }} }}\n"),
        "steps[0].human.who: unknown field",
    );
}

#[test]
fn duplicate_step_ids_across_nesting() {
    let doc = format!(
        "{HEAD}  - {{ id: a, task: x }}\n  - id: p\n    parallel:\n      - [ {{ id: a, task: x }} ]\n      - [ {{ id: b, task: x }} ]\n"
    );
    assert_has(
        &doc,
        "steps[1].parallel[0][0].id: duplicate step id \"a\" (first at steps[0])",
    );
}

#[test]
fn step_kinds_must_be_exactly_one() {
    assert_has(
        &format!("{HEAD}  - {{ id: a }}\n"),
        "steps[0]: needs one of: task, parallel, choice, foreach, loop, human, await, wait, until, workflow, set, fail, succeed",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, wait: 1s }}\n"),
        "steps[0]: has several kinds (task, wait); a step has exactly one",
    );
}

#[test]
fn bad_durations() {
    for bad in ["ten seconds", "5", "-1s", "1 fortnight"] {
        let errs = errors(&format!(
            "{HEAD}  - {{ id: a, task: x, timeout: \"{bad}\" }}\n"
        ));
        assert!(
            errs[0].starts_with("steps[0].timeout: invalid duration"),
            "{bad}: {errs:?}"
        );
    }
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, timeout: 0s }}\n"),
        "steps[0].timeout: must be greater than 0",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, wait: 12 }}\n"),
        "steps[0].wait: must be a string, got number",
    );
}

#[test]
fn cel_that_does_not_parse() {
    let errs = errors(&format!(
        "{HEAD}  - id: a\n    choice:\n      - when: \"input.x >\"\n        steps: [ {{ id: b, task: x }} ]\n  - {{ id: c, task: x, input: {{ v: \"${{input.}}\", w: \"${{unclosed\" }} }}\n"
    ));
    assert!(
        errs.iter()
            .any(|e| e.starts_with("steps[0].choice[0].when: invalid expression")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e.starts_with("steps[1].input.v: invalid expression")),
        "{errs:?}"
    );
    assert!(
        errs.iter()
            .any(|e| e == "steps[1].input.w: unclosed ${ in template"),
        "{errs:?}"
    );
}

#[test]
fn empty_branches_and_lists() {
    assert_has(
        &format!("{HEAD}  - {{ id: p, parallel: [ [], [ {{ id: b, task: x }} ] ] }}\n"),
        "steps[0].parallel[0]: must not be empty",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: p, parallel: [ [ {{ id: b, task: x }} ] ] }}\n"),
        "steps[0].parallel: needs at least 2 branches",
    );
    assert_has(
        "name: t\nversion: 1\nsteps: []\n",
        "steps: must not be empty",
    );
    assert_has(
        &format!(
            "{HEAD}  - id: c\n    choice:\n      - otherwise: [ {{ id: b, task: x }} ]\n      - when: 'true'\n        steps: [ {{ id: d, task: x }} ]\n"
        ),
        "steps[0].choice[0]: otherwise must be the last branch",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, on_failure: [] }}\n"),
        "steps[0].on_failure: must not be empty",
    );
}

#[test]
fn impossible_retry_policies() {
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ multiplier: 0 }} }}\n"),
        "steps[0].retry.multiplier: must be >= 1",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ max_attempts: -2 }} }}\n"),
        "steps[0].retry.max_attempts: must be >= 1",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ max_attempts: 1.5 }} }}\n"),
        "steps[0].retry.max_attempts: must be a whole number",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ initial_delay: 2m, max_delay: 1m }} }}\n"),
        "steps[0].retry.max_delay: must be >= initial_delay",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, retry: {{ jitter: -0.1 }} }}\n"),
        "steps[0].retry.jitter: must be between 0 and 1",
    );
}

#[test]
fn waits_that_can_never_end() {
    assert_has(
        &format!("{HEAD}  - {{ id: a, human: {{ assignee: x }} }}\n"),
        "steps[0].human.timeout: is required: a step that waits needs a timeout (write `never` to wait forever)",
    );
    assert_has(
        &format!(
            "{HEAD}  - {{ id: a, human: {{ assignee: x, timeout: never, escalate_to: y, escalation_timeout: 1h }} }}\n"
        ),
        "steps[0].human.escalate_to: can never happen with timeout: never",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, human: {{ assignee: x, timeout: 1h, escalate_to: y }} }}\n"),
        "steps[0].human.escalation_timeout: is required with escalate_to",
    );
    // Waiting forever is allowed when written out.
    load(&format!(
        "{HEAD}  - {{ id: a, await: ev, timeout: never }}\n"
    ))
    .unwrap();
}

#[test]
fn placement_rules() {
    assert_has(
        &format!("{HEAD}  - {{ id: a, wait: 1s, compensate: {{ task: y }} }}\n"),
        "steps[0].compensate: only task and workflow steps can be compensated",
    );
    assert_has(
        &format!(
            "{HEAD}  - id: l\n    foreach: 'input.xs'\n    as: x\n    steps: [ {{ id: s, succeed: {{}} }} ]\n"
        ),
        "steps[0].steps[0].succeed: is not allowed inside parallel, foreach or loop",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, output: input }}\n"),
        "steps[0].output: \"input\" is reserved",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: a, task: x, output: 'has space' }}\n"),
        "steps[0].output: invalid variable name \"has space\": use letters, digits and _",
    );
    assert_has(
        &format!("{HEAD}  - {{ id: 'a/b', task: x }}\n"),
        "steps[0].id: invalid step id \"a/b\": use 1-64 of A-Z a-z 0-9 _ -, not only digits",
    );
}

#[test]
fn size_and_depth_limits() {
    let big = format!(
        "{HEAD}  - {{ id: a, task: x, input: \"{}\" }}\n",
        "x".repeat(MAX_DOCUMENT_BYTES)
    );
    assert_eq!(
        errors(&big)[0],
        format!(
            "document is {} bytes; at most {MAX_DOCUMENT_BYTES} are allowed",
            big.len()
        )
    );

    let many: String = (0..=MAX_STEPS)
        .map(|i| format!("  - {{ id: s{i}, task: x }}\n"))
        .collect();
    assert_has(
        &format!("{HEAD}{many}"),
        &format!(
            "steps: has {} steps; at most {MAX_STEPS} are allowed",
            MAX_STEPS + 1
        ),
    );

    let mut nested = "{ id: leaf, task: x }".to_owned();
    for depth in 0..MAX_DEPTH {
        nested = format!("{{ id: c{depth}, choice: [ {{ when: 'true', steps: [ {nested} ] }} ] }}");
    }
    let errs = errors(&format!("{HEAD}  - {nested}\n"));
    assert!(
        errs.iter()
            .any(|e| e.ends_with(&format!("nesting is deeper than {MAX_DEPTH} levels"))),
        "{errs:?}"
    );
}

#[test]
fn garbage_documents() {
    assert!(errors("{ not json")[0].starts_with("invalid JSON"));
    assert!(errors("steps: [unclosed")[0].starts_with("invalid YAML"));
    assert_eq!(
        errors("just a string"),
        [": must be a map, got string"
            .trim_start_matches(": ")
            .to_owned()]
    );
    assert_has("[1, 2]", "must be a map, got list");
}

#[test]
fn json_documents_load_like_yaml() {
    let def = load(r#"{"name": "j", "version": 3, "steps": [{"id": "a", "task": "noop", "input": {"x": "${input.x}"}}]}"#).unwrap();
    assert_eq!(
        (def.name.as_str(), def.version, def.steps.len()),
        ("j", 3, 1)
    );
}

#[test]
fn defaults_are_filled_in() {
    let def = load(&format!("{HEAD}  - {{ id: a, task: x }}\n")).unwrap();
    let StepKind::Task(task) = &def.steps[0].kind else {
        panic!()
    };
    assert_eq!(task.retry, RetryPolicy::default());
    assert_eq!(task.timeouts, Timeouts::default());
}
