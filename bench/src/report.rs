//! Results: one JSON object per run, markdown rows, and the standard suite
//! that writes `docs/benchmarks.md` (between its results markers, keeping
//! the hand-written findings around them).

use crate::load::{Mode, Tally};
use crate::scenario::Scenario;
use crate::target::metric;
use crate::{RunArgs, run};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

/// What was read from the node around a run.
pub struct NodeSide {
    /// Waiting instances added between the two RSS readings.
    pub measured: u64,
    pub before_metrics: String,
    pub after_metrics: String,
    pub cpu: Option<f64>,
    pub rss_before: Option<(u64, u64)>,
    pub rss_after: Option<(u64, u64)>,
}

fn ms(micros: u64) -> f64 {
    (micros as f64 / 1000.0 * 100.0).round() / 100.0
}

/// The JSON result of a run.
pub fn result(
    scenario: Scenario,
    mode: &Mode,
    args: &RunArgs,
    tally: &Tally,
    node: NodeSide,
) -> Value {
    let secs = tally.window.as_secs_f64().max(1e-9);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        metric(&node.after_metrics, name, labels) - metric(&node.before_metrics, name, labels)
    };
    let transitions = delta("troupe_transitions_total", &[]);
    let finished = delta(
        "troupe_workflows_finished_total",
        &[("definition", scenario.name())],
    );
    let quantile = |q: &str| {
        metric(
            &node.after_metrics,
            "troupe_journal_commit_seconds",
            &[("quantile", q)],
        ) * 1000.0
    };
    let h = &tally.latency;
    let expected_finished = if scenario == Scenario::Timers {
        0
    } else {
        tally.started
    };
    let memory_per_waiting = match (scenario, node.rss_before, node.rss_after) {
        (Scenario::Timers, Some((before, _)), Some((after, _))) if node.measured > 0 => {
            Some(after.saturating_sub(before) / node.measured)
        }
        _ => None,
    };
    json!({
        "scenario": scenario.name(),
        "load": match mode {
            Mode::Closed(c) => json!({"mode": "closed", "concurrency": c}),
            Mode::Open(r) => json!({"mode": "open", "rate": r}),
        },
        "warmup_s": args.warmup.as_secs_f64(),
        "duration_s": secs,
        "completed": tally.completed,
        "workflows_per_s": (tally.completed as f64 / secs).round(),
        "transitions_per_s": (transitions / secs).round(),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5)), "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)), "p999": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
        },
        "errors": tally.errors,
        "node_cpu_ms_per_workflow": node.cpu.map(|c| (c * 1000.0 / tally.ended_ok.max(1) as f64 * 1000.0).round() / 1000.0),
        "node_peak_rss_mb": node.rss_after.map(|(_, peak)| peak / (1 << 20)),
        "fsync_ms": {"p50": quantile("0.5"), "p99": quantile("0.99")},
        "memory_per_waiting_instance_bytes": memory_per_waiting,
        "correctness": {
            "started": tally.started,
            "ended_as_expected": tally.ended_ok,
            "finished_on_node": finished,
            "lost": tally.started.saturating_sub(tally.ended_ok),
            "duplicated": (finished as u64).saturating_sub(expected_finished),
            "ok": tally.ended_ok == tally.started && finished as u64 == expected_finished,
        },
    })
}

/// Header of the markdown table.
pub fn markdown_row_header() -> String {
    "| scenario | load | wf/s | transitions/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | node CPU ms/wf | peak RSS MB | fsync p50/p99 ms | errors | exactly once |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into()
}

/// One run as a markdown row.
pub fn markdown_row(r: &Value) -> String {
    let load = match r["load"]["mode"].as_str() {
        Some("open") => format!("open {}/s", r["load"]["rate"]),
        _ => format!("closed c={}", r["load"]["concurrency"]),
    };
    let errors: u64 = r["errors"]
        .as_object()
        .map_or(0, |e| e.values().filter_map(Value::as_u64).sum());
    let l = &r["latency_ms"];
    format!(
        "| {} | {load} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2}/{:.2} | {errors} | {} |",
        r["scenario"].as_str().unwrap_or("?"),
        r["workflows_per_s"],
        r["transitions_per_s"],
        l["p50"],
        l["p90"],
        l["p99"],
        l["p999"],
        l["max"],
        r["node_cpu_ms_per_workflow"],
        r["node_peak_rss_mb"],
        r["fsync_ms"]["p50"].as_f64().unwrap_or(0.0),
        r["fsync_ms"]["p99"].as_f64().unwrap_or(0.0),
        if r["correctness"]["ok"] == true {
            "yes"
        } else {
            "NO"
        },
    )
}

fn args(scenario: Scenario, concurrency: Option<usize>, rate: Option<f64>, quick: bool) -> RunArgs {
    RunArgs {
        scenario,
        concurrency,
        rate,
        duration: Duration::from_secs(if quick { 2 } else { 10 }),
        warmup: Duration::from_secs(if quick { 1 } else { 2 }),
        count: None,
        native: None,
        http: None,
        shards: 16,
        connections: 4,
        out: None,
    }
}

/// Runs the standard suite and writes the JSON results and the markdown.
pub async fn suite(markdown: &Path, json_path: &Path, quick: bool) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    let c1 = run(&args(Scenario::Noop, Some(1), None, quick)).await?;
    let peak = run(&args(Scenario::Noop, Some(256), None, quick)).await?;
    let peak_rate = peak["workflows_per_s"].as_f64().unwrap_or(100.0).max(2.0);
    let half = run(&args(
        Scenario::Noop,
        None,
        Some((peak_rate / 2.0).round()),
        quick,
    ))
    .await?;
    results.extend([c1.clone(), peak.clone(), half.clone()]);
    let mut knee_args = args(Scenario::Noop, None, None, quick);
    knee_args.duration = Duration::from_secs(if quick { 1 } else { 5 });
    knee_args.warmup = Duration::from_secs(1);
    let (knee, sweep) = crate::sweep(&knee_args, 25.0, (peak_rate / 4.0).round(), 1.25).await?;
    results.extend(sweep);
    let workers = run(&args(Scenario::Workers, Some(256), None, quick)).await?;
    results.push(workers.clone());
    for (scenario, c) in [
        (Scenario::Saga, 64),
        (Scenario::Fanout, 32),
        (Scenario::Signal, 64),
    ] {
        results.push(run(&args(scenario, Some(c), None, quick)).await?);
    }
    let mut timers = args(Scenario::Timers, Some(64), None, quick);
    timers.count = Some(if quick { 4_000 } else { 200_000 });
    timers.duration = Duration::from_secs(120);
    let timers = run(&timers).await?;
    results.push(timers.clone());

    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&results)?)?;
    let table: Vec<String> = results.iter().map(markdown_row).collect();
    let check = |met: bool| if met { "met" } else { "missed" };
    let per_waiting = timers["memory_per_waiting_instance_bytes"]
        .as_u64()
        .unwrap_or(0);
    let targets = [
        format!(
            "| ≥ 6,000 wf/s, noop | {} wf/s | {} |",
            peak["workflows_per_s"],
            check(peak["workflows_per_s"].as_f64() >= Some(6000.0))
        ),
        format!(
            "| ≥ 3,000 wf/s, external workers | {} wf/s | {} |",
            workers["workflows_per_s"],
            check(workers["workflows_per_s"].as_f64() >= Some(3000.0))
        ),
        format!(
            "| p50 < 2 ms at c=1 | {} ms | {} |",
            c1["latency_ms"]["p50"],
            check(c1["latency_ms"]["p50"].as_f64() < Some(2.0))
        ),
        format!(
            "| p99 < 25 ms at half peak ({} /s) | {} ms | {} |",
            half["load"]["rate"],
            half["latency_ms"]["p99"],
            check(half["latency_ms"]["p99"].as_f64() < Some(25.0))
        ),
        format!(
            "| < 1 KB per passivated waiting instance | {per_waiting} B | {} |",
            check(per_waiting < 1024)
        ),
        format!(
            "| (knee: highest open-loop rate with p99 ≤ 25 ms and no backlog) | {knee} wf/s | |"
        ),
    ];
    let generated = format!(
        "<!-- results:begin (written by `make bench`; edit outside the markers) -->\n\
         Produced by `make bench` (`troupe-bench suite`) on {date}, in {secs:.0} s.\n\n\
         - Machine: {machine}\n\
         - Node: one `troupe-node` started by the harness, 16 shards, `sync = true` (every group commit fsynced before acknowledging), fresh data dir on the local disk; load generator and workers on the same machine, native protocol, 4 client connections.\n\
         - Runs: {warm} s warm-up, then {dur} s measured; latency is start-to-complete as the client sees it (start, then await the result), in the open-loop run counted from each scheduled send time.\n\n\
         ### Targets\n\n| target | measured | |\n|---|---|---|\n{targets}\n\n\
         ### All runs\n\n{header}\n{table}\n\n\
         Raw results: `bench/results/latest.json`.\n<!-- results:end -->",
        date = today(),
        secs = started.elapsed().as_secs_f64(),
        machine = machine(),
        warm = if quick { 1 } else { 2 },
        dur = if quick { 2 } else { 10 },
        targets = targets.join("\n"),
        header = markdown_row_header(),
        table = table.join("\n"),
    );
    let old = std::fs::read_to_string(markdown).unwrap_or_else(|_| {
        "# Benchmarks\n\n<!-- results:begin -->\n<!-- results:end -->\n".into()
    });
    let updated = match (
        old.find("<!-- results:begin"),
        old.find("<!-- results:end -->"),
    ) {
        (Some(b), Some(e)) => format!(
            "{}{generated}{}",
            &old[..b],
            &old[e + "<!-- results:end -->".len()..]
        ),
        _ => format!("{old}\n{generated}\n"),
    };
    std::fs::write(markdown, updated)?;
    eprintln!("wrote {} and {}", markdown.display(), json_path.display());
    Ok(())
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<u64>()
                    .unwrap_or(0)
                    / (1 << 20)
            })
        })
        .unwrap_or(0);
    format!("{cores} cores ({cpu}), {mem} GiB RAM, Linux")
}
