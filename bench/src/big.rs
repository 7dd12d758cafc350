//! One big instance rather than many small ones: `bigmap` (a `foreach` over
//! many `noop` items) and `longlived` (a `loop` over a short timer for many
//! iterations). Both check that the cost of an event does not grow with the
//! instance: the rate over the last tenth against the first.

use crate::target::{Target, metric};
use anyhow::{Context, ensure};
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use troupe_client::Client;

/// Progress samples: (seconds since start, items done).
type Samples = Vec<(f64, f64)>;

/// Time at which `done` reached `level`, interpolated between samples.
fn time_at(samples: &Samples, level: f64) -> f64 {
    let mut prev = (0.0, 0.0);
    for &(t, done) in samples {
        if done >= level {
            let span = (done - prev.1).max(1e-9);
            return prev.0 + (t - prev.0) * (level - prev.1) / span;
        }
        prev = (t, done);
    }
    prev.0
}

/// A finished big-instance run.
struct Run {
    samples: Samples,
    /// Seconds until the last item was done.
    elapsed: f64,
    /// Seconds until the result was read.
    to_result: f64,
    result: Value,
    /// Read time of the instance (ms) once a tenth was done.
    young_read_ms: f64,
}

/// Runs one instance to its end while sampling `progress` (a reading of
/// the node's metrics) every 50 ms.
async fn run_one(
    target: &Target,
    client: &Client,
    definition: &str,
    id: &str,
    input: &Value,
    total: f64,
    progress: impl Fn(&str) -> f64,
) -> anyhow::Result<Run> {
    let base = progress(&target.metrics().await?);
    let begin = Instant::now();
    client.start(definition, Some(id), input).await?;
    let mut samples = vec![(0.0, 0.0)];
    let mut young_read_ms = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let done = progress(&target.metrics().await?) - base;
        samples.push((begin.elapsed().as_secs_f64(), done));
        if done >= total {
            break;
        }
        if young_read_ms.is_none() && done >= total / 10.0 {
            young_read_ms = Some(read_ms(&target.http, id).await?);
        }
        ensure!(
            begin.elapsed() < Duration::from_secs(1800),
            "{id}: {done} of {total} after 30 minutes"
        );
    }
    let elapsed = begin.elapsed().as_secs_f64();
    let result = client.result(id, Duration::from_secs(600)).await?;
    Ok(Run {
        samples,
        elapsed,
        to_result: begin.elapsed().as_secs_f64(),
        result,
        young_read_ms: young_read_ms.unwrap_or(0.0),
    })
}

/// The figures of one big-instance run.
fn report(name: &str, unit: &str, total: f64, run: &Run, target: &Target, metrics: &str) -> Value {
    let (samples, elapsed, to_result) = (&run.samples, run.elapsed, run.to_result);
    let tenth = total / 10.0;
    let first = tenth / time_at(samples, tenth).max(1e-9);
    let last = tenth / (time_at(samples, total) - time_at(samples, total - tenth)).max(1e-9);
    let journal = metric(metrics, "troupe_journal_bytes_total", &[]);
    let snapshots = metric(metrics, "troupe_snapshot_bytes_total", &[]);
    let events = metric(metrics, "troupe_transitions_total", &[]).max(1.0);
    json!({
        "scenario": name,
        "unit": unit,
        "total": total,
        "seconds": (elapsed * 100.0).round() / 100.0,
        "seconds_to_result": (to_result * 100.0).round() / 100.0,
        "per_s": (total / elapsed).round(),
        "first_tenth_per_s": first.round(),
        "last_tenth_per_s": last.round(),
        "last_over_first": ((last / first) * 100.0).round() / 100.0,
        "journal_mb": (journal / 1e5).round() / 10.0,
        "snapshot_mb": (snapshots / 1e5).round() / 10.0,
        "journal_bytes_per_event": (journal / events).round(),
        "snapshot_bytes_per_event": (snapshots / events).round(),
        "node_peak_rss_mb": target.rss().map(|(_, peak)| peak / (1 << 20)),
        "read_young_ms": run.young_read_ms,
    })
}

/// `bigmap`: one workflow whose `foreach` runs `items` `noop` items,
/// `concurrency` at a time.
pub async fn bigmap(items: u64, concurrency: u32, shards: u32) -> anyhow::Result<Value> {
    let target = Target::spawn(shards, "")?;
    let client = Client::connect(target.native.clone()).await?;
    client
        .deploy(&format!(
            "name: bench-bigmap\nversion: 1\nsteps:\n  - id: each\n    foreach: \"input.items\"\n    as: item\n    concurrency: {concurrency}\n    output: results\n    steps: [ {{ id: one, task: noop, input: \"${{item}}\" }} ]\n"
        ))
        .await?;
    let list: Vec<u64> = (0..items).collect();
    eprintln!("bigmap: {items} items, concurrency {concurrency}");
    let noops = |m: &str| metric(m, "troupe_tasks_dispatched_total", &[("task_type", "noop")]);
    let run = run_one(
        &target,
        &client,
        "bench-bigmap",
        "bigmap-1",
        &json!({ "items": list }),
        items as f64,
        noops,
    )
    .await?;
    let result = &run.result;
    let results = result["output"]["results"]
        .as_array()
        .context("bigmap ended without results")?;
    ensure!(
        results.len() as u64 == items
            && results
                .iter()
                .enumerate()
                .all(|(i, v)| v.as_u64() == Some(i as u64)),
        "bigmap results are not the items in order: {}",
        result["status"]
    );
    let metrics = target.metrics().await?;
    let mut report = report("bigmap", "items", items as f64, &run, &target, &metrics);
    report["read_old_ms"] = json!(read_ms(&target.http, "bigmap-1").await?);
    Ok(report)
}

/// Median time of five reads of instance `id` over HTTP, milliseconds (a
/// passivated instance is loaded from its snapshot and journal tail).
async fn read_ms(http: &str, id: &str) -> anyhow::Result<f64> {
    let url = format!("{http}/v1/workflows/{id}");
    let mut times = Vec::new();
    for _ in 0..5 {
        let begin = Instant::now();
        let view: Value = reqwest::get(&url).await?.json().await?;
        times.push(begin.elapsed().as_secs_f64() * 1000.0);
        ensure!(view["id"] == id, "read {id}: {view}");
    }
    times.sort_by(f64::total_cmp);
    Ok((times[2] * 100.0).round() / 100.0)
}

/// `longlived`: one workflow whose `loop` waits on a 1-ms durable timer,
/// `iterations` times. Reports the iteration rate over the first and last
/// tenth, and how long reading the instance takes at a tenth and at the end.
pub async fn longlived(iterations: u64, shards: u32) -> anyhow::Result<Value> {
    let target = Target::spawn(shards, "")?;
    let client = Client::connect(target.native.clone()).await?;
    client
        .deploy(&format!(
            "name: bench-longlived\nversion: 1\nsteps:\n  - {{ id: init, set: {{ beats: 0 }} }}\n  - id: tick\n    loop: \"beats < {iterations}\"\n    steps:\n      - {{ id: nap, wait: 1ms }}\n      - {{ id: beat, set: {{ beats: \"${{beats + 1}}\" }} }}\n"
        ))
        .await?;
    eprintln!("longlived: {iterations} iterations of a 1-ms timer");
    let fired = |m: &str| metric(m, "troupe_timers_fired_total", &[]);
    let run = run_one(
        &target,
        &client,
        "bench-longlived",
        "longlived-1",
        &json!({}),
        iterations as f64,
        fired,
    )
    .await?;
    ensure!(
        run.result["output"]["beats"] == json!(iterations),
        "longlived ended with {}",
        run.result["output"]
    );
    let metrics = target.metrics().await?;
    let mut report = report(
        "longlived",
        "iterations",
        iterations as f64,
        &run,
        &target,
        &metrics,
    );
    report["read_old_ms"] = json!(read_ms(&target.http, "longlived-1").await?);
    Ok(report)
}
