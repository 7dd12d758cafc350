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
use troupe_client::{Client, ErrorCode};

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
    /// The same, by the second of the measured window each was scheduled in.
    pub latency_per_second: Vec<Histogram<u64>>,
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
    /// Measured completions in each second of the measured window.
    pub per_second: Vec<u64>,
    /// The node as sampled at the end of each measured second.
    pub node_per_second: Vec<NodeSample>,
}

/// What the harness can see of a node it started, at one moment.
#[derive(Debug, Clone, Copy)]
pub struct NodeSample {
    /// Resident memory, bytes.
    pub rss: u64,
    /// Bytes of files in its data dir.
    pub data: u64,
    /// CPU time used so far, seconds.
    pub cpu_s: f64,
    /// CPU time the machine's hypervisor has taken from it so far (steal,
    /// all cores), seconds; 0 where the kernel does not say.
    pub steal_s: f64,
}

/// Samples the node, when the harness started it.
pub type NodeProbe = Arc<dyn Fn() -> Option<NodeSample> + Send + Sync>;

struct Shared {
    latency: Mutex<Histogram<u64>>,
    latency_per_second: Mutex<Vec<Histogram<u64>>>,
    completed: AtomicU64,
    started: AtomicU64,
    ended_ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    per_second: Mutex<Vec<u64>>,
    samples: Mutex<Vec<NodeSample>>,
}

impl Shared {
    fn error(&self, code: String) {
        *self.errors.lock().expect("errors").entry(code).or_default() += 1;
    }
}

/// Drives one workflow to its end; the error is a code.
/// How a start refused as `overloaded` is counted among errors: nothing
/// was created, so it is neither lost nor expected to end.
pub const START_REFUSED: &str = "start_refused";

async fn one(client: &Client, scenario: Scenario, id: &str, n: u64) -> Result<(), String> {
    let code = |e: troupe_client::Error| {
        e.code()
            .map_or_else(|| "connection".to_owned(), |c| c.as_str().to_owned())
    };
    // A start refused as overloaded created nothing: the node refuses
    // before it takes a start. Counted apart, it is a refusal, not a loss.
    let start_code = |e: troupe_client::Error| match e.code() {
        Some(ErrorCode::Overloaded) => START_REFUSED.to_owned(),
        _ => code(e),
    };
    let (name, input, wait) = (scenario.name(), scenario.input(n), Duration::from_secs(60));
    let view = match scenario {
        Scenario::Timers => {
            client
                .start(name, Some(id), &input)
                .await
                .map_err(start_code)?;
            return Ok(());
        }
        Scenario::Signal => {
            client
                .start(name, Some(id), &input)
                .await
                .map_err(start_code)?;
            client
                .signal(id, "go", Some(&format!("{id}-go")), &json!({"n": n}))
                .await
                .map_err(code)?;
            client.result(id, wait).await.map_err(code)?
        }
        // One request when the workflow ends within its start (`noop`
        // steps run inline), as any client of short workflows would do;
        // only its start can be refused as overloaded (the read of a
        // result never is).
        _ => client
            .run(name, Some(id), &input, wait)
            .await
            .map_err(start_code)?,
    };
    match view["status"].as_str() {
        Some(s) if s == scenario.expected_status() => Ok(()),
        other => Err(format!("ended_{}", other.unwrap_or("unknown"))),
    }
}

/// What one load run offers.
pub struct Plan<'a> {
    /// What each workflow does.
    pub scenario: Scenario,
    /// How load is offered.
    pub mode: &'a Mode,
    /// Time before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Stop after this many workflows.
    pub count: Option<u64>,
    /// Instance id prefix.
    pub prefix: &'a str,
}

/// Runs `plan.mode` for `warmup + duration` (or until `count` workflows
/// started), sampling the node's memory with `rss`.
pub async fn run(clients: &[Client], plan: Plan<'_>, probe: NodeProbe) -> Tally {
    let Plan {
        scenario,
        mode,
        warmup,
        duration,
        count,
        prefix,
    } = plan;
    let shared = Arc::new(Shared {
        latency: Mutex::new(histogram()),
        latency_per_second: Mutex::new(Vec::new()),
        completed: AtomicU64::new(0),
        started: AtomicU64::new(0),
        ended_ok: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        per_second: Mutex::new(Vec::new()),
        samples: Mutex::new(Vec::new()),
    });
    let begin = Instant::now();
    let measure_from = begin + warmup;
    let end = measure_from + duration;
    let next = Arc::new(AtomicU64::new(0));
    let limit = count.unwrap_or(u64::MAX);
    let progress = tokio::spawn(report_progress(shared.clone(), begin, measure_from, probe));
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
                        let second = scheduled.duration_since(measure_from).as_secs() as usize;
                        let mut by_second = shared.latency_per_second.lock().expect("hist");
                        if by_second.len() <= second {
                            by_second.resize_with(second + 1, histogram);
                        }
                        let _ = by_second[second].record(micros.max(1));
                    }
                    if done >= measure_from && done < end {
                        let second = done.duration_since(measure_from).as_secs() as usize;
                        let mut per_second = shared.per_second.lock().expect("timeline");
                        if per_second.len() <= second {
                            per_second.resize(second + 1, 0);
                        }
                        per_second[second] += 1;
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
    let latency_per_second = shared.latency_per_second.lock().expect("hist").clone();
    let errors = shared.errors.lock().expect("errors").clone();
    let mut per_second = shared.per_second.lock().expect("timeline").clone();
    per_second.resize(window.as_secs() as usize, 0);
    let samples = shared.samples.lock().expect("timeline").clone();
    Tally {
        latency,
        latency_per_second,
        completed: shared.completed.load(Ordering::Relaxed),
        started: shared.started.load(Ordering::Relaxed),
        ended_ok: shared.ended_ok.load(Ordering::Relaxed),
        errors,
        window,
        per_second,
        node_per_second: samples,
    }
}

/// A latency histogram in microseconds, up to ten minutes.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram")
}

/// Rates (per second) over consecutive windows of `seconds`; a last,
/// shorter window is left out.
pub fn window_rates(per_second: &[u64], seconds: usize) -> Vec<f64> {
    per_second
        .chunks_exact(seconds.max(1))
        .map(|w| w.iter().sum::<u64>() as f64 / seconds.max(1) as f64)
        .collect()
}

/// p99 latency (microseconds) over consecutive windows of `seconds` of
/// per-second histograms; a last, shorter window counts too.
pub fn window_p99s(per_second: &[Histogram<u64>], seconds: usize) -> Vec<u64> {
    per_second
        .chunks(seconds.max(1))
        .map(|chunk| {
            let mut window = histogram();
            for second in chunk {
                window.add(second).expect("same bounds");
            }
            window.value_at_quantile(0.99)
        })
        .collect()
}

/// The node's CPU milliseconds per completed workflow in each window of
/// `secs` seconds, from CPU time sampled at the end of each second.
pub fn window_cpu_per_workflow(cpu: &[f64], completed: &[u64], secs: usize) -> Vec<f64> {
    let secs = secs.max(1);
    (0..completed.len() / secs)
        .map_while(|w| {
            // From the end of the window's first second to the end of its last.
            let (from, to) = (w * secs, ((w + 1) * secs).min(cpu.len()).checked_sub(1)?);
            let done: u64 = completed.get(from + 1..=to)?.iter().sum();
            Some(if done > 0 {
                (cpu[to] - cpu[from]) * 1000.0 / done as f64
            } else {
                0.0
            })
        })
        .collect()
}

/// The share of the machine's CPU time, in percent, that its hypervisor
/// took (steal) in each window of `secs` seconds, from steal time sampled
/// at the end of each second on a machine of `cores` cores.
pub fn window_steal_percent(steal: &[f64], secs: usize, cores: usize) -> Vec<f64> {
    let secs = secs.max(1);
    (0..steal.len() / secs)
        .map_while(|w| {
            let (from, to) = (w * secs, ((w + 1) * secs).min(steal.len()).checked_sub(1)?);
            let elapsed = (to - from) as f64 * cores.max(1) as f64;
            Some(if elapsed > 0.0 {
                ((steal[to] - steal[from]) / elapsed * 1000.0).round() / 10.0
            } else {
                0.0
            })
        })
        .collect()
}

/// Prints a progress line every second, and samples the node's memory and
/// data dir once per measured second.
async fn report_progress(
    shared: Arc<Shared>,
    begin: Instant,
    measure_from: Instant,
    probe: NodeProbe,
) {
    let mut last = 0;
    let mut tick = tokio::time::interval_at(measure_from.into(), Duration::from_secs(1));
    loop {
        if Instant::now() < measure_from {
            tokio::time::sleep(Duration::from_secs(1).min(measure_from - Instant::now())).await;
        } else {
            tick.tick().await;
            if let Some(sample) = probe() {
                shared.samples.lock().expect("timeline").push(sample);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::{
        histogram, window_cpu_per_workflow, window_p99s, window_rates, window_steal_percent,
    };

    #[test]
    fn steal_is_a_share_of_the_whole_machine_per_window() {
        // Two cores; 0.1 s stolen per second, then 0.4 s. Like the CPU per
        // workflow, a window runs from the end of its first second.
        let steal = [0.1, 0.2, 0.3, 0.7, 1.1, 1.5];
        assert_eq!(window_steal_percent(&steal, 3, 2), [5.0, 20.0]);
        assert!(window_steal_percent(&steal, 10, 2).is_empty());
    }

    #[test]
    fn cpu_per_workflow_is_taken_window_by_window() {
        // 1 ms per workflow for two seconds, then 2 ms.
        let cpu = [1.0, 2.0, 3.0, 5.0, 7.0];
        let completed = [1000, 1000, 1000, 1000, 1000];
        assert_eq!(window_cpu_per_workflow(&cpu, &completed, 2), [1.0, 2.0]);
        assert!(window_cpu_per_workflow(&[], &completed, 2).is_empty());
        assert!(window_cpu_per_workflow(&cpu, &completed, 10).is_empty());
    }

    #[test]
    fn windows_average_whole_windows_only() {
        let per_second = [10, 10, 20, 20, 5];
        assert_eq!(window_rates(&per_second, 2), vec![10.0, 20.0]);
        assert!(window_rates(&per_second, 10).is_empty());
    }

    #[test]
    fn a_stall_shows_in_its_own_window_only() {
        let second = |micros: u64| {
            let mut h = histogram();
            h.record_n(micros, 100).expect("record");
            h
        };
        let mut seconds = vec![second(2_000), second(2_000), second(3_000)];
        seconds[2].record_n(300_000, 5).expect("record");
        seconds.push(second(1_000));
        let windows = window_p99s(&seconds, 2);
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0], 2_000, "{windows:?}");
        assert!(windows[1].abs_diff(300_000) < 500, "{windows:?}");
    }
}
