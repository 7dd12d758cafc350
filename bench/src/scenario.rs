//! The scenarios: a definition each, and what one workflow of it takes.

use serde_json::{Value, json};

/// A load scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Three sequential `noop` tasks.
    Noop,
    /// Three sequential tasks done by external workers over the native protocol.
    Workers,
    /// Two compensable steps, then a failure: both are compensated.
    Saga,
    /// A 10-way parallel fan-out of `noop` tasks.
    Fanout,
    /// Start, wait for a signal, send it, complete.
    Signal,
    /// Instances that wait on a durable timer (memory per waiting instance).
    Timers,
}

impl Scenario {
    /// Definition name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Noop => "bench-noop",
            Self::Workers => "bench-workers",
            Self::Saga => "bench-saga",
            Self::Fanout => "bench-fanout",
            Self::Signal => "bench-signal",
            Self::Timers => "bench-timers",
        }
    }

    /// The status each instance must end in.
    pub fn expected_status(self) -> &'static str {
        match self {
            Self::Saga => "compensated",
            Self::Timers => "waiting",
            _ => "completed",
        }
    }

    /// Task type served by the bench's workers, if any.
    pub fn worker_task(self) -> Option<&'static str> {
        (self == Self::Workers).then_some("bench.step")
    }

    /// The definition, YAML.
    pub fn definition(self) -> String {
        let name = self.name();
        let body = match self {
            Self::Noop => "steps:\n  - { id: a, task: noop, input: { n: \"${input.n}\" } }\n  - { id: b, task: noop }\n  - { id: c, task: noop }\n".to_owned(),
            Self::Workers => "steps:\n  - { id: a, task: bench.step, input: { n: \"${input.n}\" } }\n  - { id: b, task: bench.step }\n  - { id: c, task: bench.step }\n".to_owned(),
            Self::Saga => "steps:\n  - { id: a, task: noop, compensate: { task: noop } }\n  - { id: b, task: noop, compensate: { task: noop } }\n  - { id: c, fail: { code: out_of_stock } }\n".to_owned(),
            Self::Fanout => {
                let branches: String = (0..10)
                    .map(|i| format!("      - - {{ id: t{i}, task: noop }}\n"))
                    .collect();
                format!("steps:\n  - id: fan\n    parallel:\n{branches}")
            }
            Self::Signal => "steps:\n  - { id: go, await: go, timeout: 1m }\n  - { id: a, task: noop }\n".to_owned(),
            Self::Timers => "steps:\n  - { id: nap, wait: 1h }\n".to_owned(),
        };
        format!("name: {name}\nversion: 1\n{body}")
    }

    /// Start input of workflow `n`.
    pub fn input(self, n: u64) -> Value {
        json!({ "n": n })
    }
}
