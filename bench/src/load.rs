//! Load generation: closed loop (C workflows in flight) or open loop (a
//! fixed arrival rate, latency counted from each scheduled send time so
//! queueing is not hidden), with a warm-up whose samples are dropped.

use crate::scenario::Scenario;
use hdrhistogram::Histogram;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_client::Client;

/// How load is offered.
#[derive(Debug, Clone)]
pub enum Mode {
    /// This many workflows in flight at all times.
    Closed(usize),
    /// This many workflow starts per second.
    Open(f64),
}

/// What one run saw.
pub struct Tally {
    /// Start-to-complete latency of measured workflows, microseconds.
    pub latency: Histogram<u64>,
    /// Workflows that ended as expected inside the measured window.
    pub completed: u64,
    /// Every workflow started (warm-up included).
    pub started: u64,
    /// Workflows that ended as expected (warm-up included).
    pub ended_ok: u64,
    /// Failures by code.
    pub errors: BTreeMap<String, u64>,
    /// Length of the measured window.
    pub window: Duration,
}

struct Shared {
    latency: Mutex<Histogram<u64>>,
    completed: AtomicU64,
    started: AtomicU64,
    ended_ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl Shared {
    fn error(&self, code: String) {
        *self.errors.lock().expect("errors").entry(code).or_default() += 1;
    }
}

/// Drives one workflow to its end; the error is a code.
async fn one(client: &Client, scenario: Scenario, id: &str, n: u64) -> Result<(), String> {
    let code = |e: troupe_client::Error| {
        e.code()
            .map_or_else(|| "connection".to_owned(), |c| c.as_str().to_owned())
    };
    client
        .start(scenario.name(), Some(id), &scenario.input(n))
        .await
        .map_err(code)?;
    if scenario == Scenario::Signal {
        client
            .signal(id, "go", Some(&format!("{id}-go")), &json!({"n": n}))
            .await
            .map_err(code)?;
    }
    if scenario == Scenario::Timers {
        return Ok(());
    }
    let view = client
        .result(id, Duration::from_secs(60))
        .await
        .map_err(code)?;
    match view["status"].as_str() {
        Some(s) if s == scenario.expected_status() => Ok(()),
        other => Err(format!("ended_{}", other.unwrap_or("unknown"))),
    }
}

/// Runs `mode` for `warmup + duration` (or until `count` workflows started).
pub async fn run(
    clients: &[Client],
    scenario: Scenario,
    mode: &Mode,
    warmup: Duration,
    duration: Duration,
    count: Option<u64>,
    prefix: &str,
) -> Tally {
    let shared = Arc::new(Shared {
        latency: Mutex::new(Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")),
        completed: AtomicU64::new(0),
        started: AtomicU64::new(0),
        ended_ok: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
    });
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    let next = Arc::new(AtomicU64::new(0));
    let limit = count.unwrap_or(u64::MAX);
    let progress = tokio::spawn(report_progress(shared.clone(), begin));
    let record = {
        let shared = shared.clone();
        move |scheduled: Instant, result: Result<(), String>| {
            let done = Instant::now();
            match result {
                Ok(()) => {
                    shared.ended_ok.fetch_add(1, Ordering::Relaxed);
                    if scheduled >= measure_from && done <= end + Duration::from_secs(60) {
                        shared.completed.fetch_add(1, Ordering::Relaxed);
                        let micros = done.duration_since(scheduled).as_micros() as u64;
                        let _ = shared.latency.lock().expect("hist").record(micros.max(1));
                    }
                }
                Err(code) => shared.error(code),
            }
        }
    };
    match *mode {
        Mode::Closed(concurrency) => {
            let mut set = tokio::task::JoinSet::new();
            for c in 0..concurrency {
                let client = clients[c % clients.len()].clone();
                let (next, shared, record, prefix) = (
                    next.clone(),
                    shared.clone(),
                    record.clone(),
                    prefix.to_owned(),
                );
                set.spawn(async move {
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if Instant::now() >= end || n >= limit {
                            return;
                        }
                        shared.started.fetch_add(1, Ordering::Relaxed);
                        let scheduled = Instant::now();
                        let result = one(&client, scenario, &format!("{prefix}-{n}"), n).await;
                        record(scheduled, result);
                    }
                });
            }
            while set.join_next().await.is_some() {}
        }
        Mode::Open(rate) => {
            let mut set = tokio::task::JoinSet::new();
            let interval = Duration::from_secs_f64(1.0 / rate);
            let mut n = 0u64;
            loop {
                let scheduled = begin + interval.mul_f64(n as f64);
                if scheduled >= end || n >= limit {
                    break;
                }
                tokio::time::sleep_until(scheduled.into()).await;
                let client = clients[n as usize % clients.len()].clone();
                let (record, id) = (record.clone(), format!("{prefix}-{n}"));
                shared.started.fetch_add(1, Ordering::Relaxed);
                set.spawn(async move {
                    let result = one(&client, scenario, &id, n).await;
                    record(scheduled, result);
                });
                n += 1;
                while set.try_join_next().is_some() {}
            }
            while set.join_next().await.is_some() {}
        }
    }
    progress.abort();
    let window = Instant::now()
        .min(end)
        .saturating_duration_since(measure_from);
    let latency = shared.latency.lock().expect("hist").clone();
    let errors = shared.errors.lock().expect("errors").clone();
    Tally {
        latency,
        completed: shared.completed.load(Ordering::Relaxed),
        started: shared.started.load(Ordering::Relaxed),
        ended_ok: shared.ended_ok.load(Ordering::Relaxed),
        errors,
        window,
    }
}

/// Prints a progress line every second.
async fn report_progress(shared: Arc<Shared>, begin: Instant) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let ended = shared.ended_ok.load(Ordering::Relaxed);
        let errors: u64 = shared.errors.lock().expect("errors").values().sum();
        eprint!(
            "\r  {:>5.1}s  started {:>8}  ended {:>8}  ({:>6}/s)  errors {:>5}   ",
            begin.elapsed().as_secs_f64(),
            shared.started.load(Ordering::Relaxed),
            ended,
            ended - last,
            errors
        );
        last = ended;
    }
}
