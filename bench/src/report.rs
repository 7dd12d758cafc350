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
    /// Time to restart after a SIGKILL, when measured.
    pub restart: Option<Duration>,
    /// One page of a rare status among everything stored: median and
    /// slowest, ms.
    pub list_rare: Option<(f64, f64)>,
}

/// Seconds per reported window.
pub const WINDOW_SECS: usize = 10;

/// The values of a JSON array, comma separated (empty if not an array).
fn joined(array: &Value) -> String {
    array.as_array().map_or_else(String::new, |values| {
        values
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    })
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
    let refused = tally
        .errors
        .get(crate::load::START_REFUSED)
        .copied()
        .unwrap_or(0);
    let accepted = tally.started.saturating_sub(refused);
    let expected_finished = if scenario == Scenario::Timers {
        0
    } else {
        accepted
    };
    let memory_per_waiting = match (scenario, node.rss_before, node.rss_after) {
        (Scenario::Timers, Some((before, _)), Some((after, _))) if node.measured > 0 => {
            Some(after.saturating_sub(before) / node.measured)
        }
        _ => None,
    };
    // The whole node's memory over every waiting instance: an upper bound
    // of the slope above, which allocator purging makes noisy.
    let rss_per_waiting = match (scenario, node.rss_after) {
        (Scenario::Timers, Some((after, _))) if tally.ended_ok > 0 => Some(after / tally.ended_ok),
        _ => None,
    };
    let windows = crate::load::window_rates(&tally.per_second, WINDOW_SECS);
    let slowest = windows.iter().copied().fold(f64::INFINITY, f64::min);
    let fastest = windows.iter().copied().fold(0.0, f64::max);
    let samples = &tally.node_per_second;
    let rss_windows = mb_at_window_starts(samples, |s| s.rss);
    let cpu: Vec<f64> = samples.iter().map(|s| s.cpu_s).collect();
    let cpu_windows: Vec<f64> =
        crate::load::window_cpu_per_workflow(&cpu, &tally.per_second, WINDOW_SECS)
            .into_iter()
            .map(|ms| (ms * 1000.0).round() / 1000.0)
            .collect();
    let data_windows = mb_at_window_starts(samples, |s| s.data);
    let steal: Vec<f64> = samples.iter().map(|s| s.steal_s).collect();
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let steal_windows = crate::load::window_steal_percent(&steal, WINDOW_SECS, cores);
    // p99 per window (by scheduled second), to tell a steady queue from
    // a few stalls.
    let p99_windows: Vec<f64> = crate::load::window_p99s(&tally.latency_per_second, WINDOW_SECS)
        .into_iter()
        .map(ms)
        .collect();
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
        "windows": {
            "seconds": WINDOW_SECS,
            "workflows_per_s": windows.iter().map(|w| w.round()).collect::<Vec<_>>(),
            "slowest": if windows.is_empty() { Value::Null } else { json!(slowest.round()) },
            // Four places, so that 79.7% is not checked as 80%.
            "slowest_to_fastest": if fastest > 0.0 { json!((slowest / fastest * 10_000.0).round() / 10_000.0) } else { Value::Null },
            "node_rss_mb": rss_windows,
            "node_data_mb": data_windows,
            "node_cpu_ms_per_workflow": cpu_windows,
            "machine_steal_percent": steal_windows,
            "p99_ms": p99_windows,
        },
        "p99_per_second_ms": tally.latency_per_second.iter().map(|h| ms(h.value_at_quantile(0.99))).collect::<Vec<_>>(),
        "restart_after_kill_s": node.restart.map(|d| (d.as_secs_f64() * 100.0).round() / 100.0),
        "list_rare_page_ms": node.list_rare.map(|(median, max)| json!({"median": (median * 100.0).round() / 100.0, "max": (max * 100.0).round() / 100.0})),
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
        // Null when the node does not say (an older build).
        "data_dir_online_discard": node.after_metrics.contains(ONLINE_DISCARD).then(|| metric(&node.after_metrics, ONLINE_DISCARD, &[]) > 0.0),
        "memory_per_waiting_instance_bytes": memory_per_waiting,
        "node_rss_per_waiting_instance_bytes": rss_per_waiting,
        "correctness": {
            "started": tally.started,
            "refused": refused,
            "ended_as_expected": tally.ended_ok,
            "finished_on_node": finished,
            "lost": accepted.saturating_sub(tally.ended_ok),
            "duplicated": (finished as u64).saturating_sub(expected_finished),
            "ok": tally.ended_ok == accepted && finished as u64 == expected_finished,
        },
    })
}

/// Header of the markdown table.
pub fn markdown_row_header() -> String {
    "| scenario | load | s | wf/s | slowest 10-s window | transitions/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | node CPU ms/wf | peak RSS MB | fsync p50/p99 ms | errors | exactly once |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into()
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
    let slowest = match r["windows"]["slowest"].as_f64() {
        Some(w) => format!(
            "{w} ({:.1}%)",
            r["windows"]["slowest_to_fastest"].as_f64().unwrap_or(0.0) * 100.0
        ),
        None => "–".into(),
    };
    format!(
        "| {} | {load} | {:.0} | {} | {slowest} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2}/{:.2} | {errors} | {} |",
        r["scenario"].as_str().unwrap_or("?"),
        r["duration_s"].as_f64().unwrap_or(0.0),
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
        cluster: Vec::new(),
        local_cluster: false,
        shards: 16,
        node_toml: String::new(),
        attempts: troupe_client::RetryPolicy::default().attempts,
        connections: 4,
        out: None,
        kill_restart: false,
    }
}

/// A headline run: at least 60 s measured after a 5-s warm-up.
fn sustained(mut run: RunArgs, quick: bool) -> RunArgs {
    if !quick {
        run.duration = Duration::from_secs(60);
        run.warmup = Duration::from_secs(5);
    }
    run
}

fn check(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn no_errors(r: &Value) -> bool {
    r["errors"].as_object().is_some_and(|e| e.is_empty())
}

fn steady(r: &Value) -> bool {
    r["windows"]["slowest_to_fastest"].as_f64() >= Some(0.8)
}

/// Runs the standard suite and writes the JSON results and the markdown.
pub async fn suite(markdown: &Path, json_path: &Path, quick: bool) -> anyhow::Result<()> {
    settle_disk();
    let started = std::time::Instant::now();
    let mut results = Vec::new();
    let c1 = run(&args(Scenario::Noop, Some(1), None, quick)).await?;
    let peak = run(&sustained(
        args(Scenario::Noop, Some(256), None, quick),
        quick,
    ))
    .await?;
    let peak_rate = peak["workflows_per_s"].as_f64().unwrap_or(100.0).max(2.0);
    let open80 = run(&sustained(
        args(Scenario::Noop, None, Some((peak_rate * 0.8).round()), quick),
        quick,
    ))
    .await?;
    let mut half = args(Scenario::Noop, None, Some((peak_rate / 2.0).round()), quick);
    half.duration = Duration::from_secs(if quick { 2 } else { 20 });
    let half = run(&half).await?;
    results.extend([c1.clone(), peak.clone(), open80.clone(), half.clone()]);
    let mut knee_args = args(Scenario::Noop, None, None, quick);
    knee_args.duration = Duration::from_secs(if quick { 1 } else { 5 });
    knee_args.warmup = Duration::from_secs(1);
    let (knee, sweep) = crate::sweep(&knee_args, 25.0, (peak_rate / 4.0).round(), 1.25).await?;
    results.extend(sweep);
    let workers = run(&sustained(
        args(Scenario::Workers, Some(256), None, quick),
        quick,
    ))
    .await?;
    results.push(workers.clone());
    for (scenario, c) in [
        (Scenario::Saga, 64),
        (Scenario::Fanout, 32),
        (Scenario::Signal, 64),
    ] {
        results.push(run(&args(scenario, Some(c), None, quick)).await?);
    }
    let mut timers = args(Scenario::Timers, Some(256), None, quick);
    let waiting = if quick { 4_000 } else { 1_000_000 };
    timers.count = Some(waiting);
    timers.duration = Duration::from_secs(900);
    timers.kill_restart = true;
    let timers = run(&timers).await?;
    results.push(timers.clone());
    let (items, iterations) = if quick {
        (4_000, 500)
    } else {
        (100_000, 100_000)
    };
    let bigmap = crate::big::bigmap(items, 1000, 16).await?;
    let longlived = crate::big::longlived(iterations, 16).await?;

    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let all = serde_json::json!({ "runs": results, "big": [bigmap.clone(), longlived.clone()] });
    std::fs::write(json_path, serde_json::to_string_pretty(&all)?)?;
    let table: Vec<String> = results.iter().map(markdown_row).collect();
    let per_waiting = &timers["memory_per_waiting_instance_bytes"];
    let rss_per_waiting = timers["node_rss_per_waiting_instance_bytes"]
        .as_u64()
        .unwrap_or(u64::MAX);
    let timers_rss = timers["node_peak_rss_mb"].as_u64().unwrap_or(u64::MAX);
    let windows = |r: &Value| {
        format!(
            "slowest {} of [{}] wf/s per 10 s",
            r["windows"]["slowest"],
            joined(&r["windows"]["workflows_per_s"])
        )
    };
    let targets = [
        format!(
            "| noop c=256: peak ≥ 9,000 wf/s (before this round), slowest 10-s window ≥ 80% of the fastest, no refusal | {} wf/s; {} | {} |",
            peak["workflows_per_s"],
            windows(&peak),
            check(
                peak["workflows_per_s"].as_f64() >= Some(9000.0)
                    && steady(&peak)
                    && no_errors(&peak)
            )
        ),
        format!(
            "| external workers c=256: ≥ 3,500 wf/s, slowest window ≥ 80%, no refusal | {} wf/s; {} | {} |",
            workers["workflows_per_s"],
            windows(&workers),
            check(
                workers["workflows_per_s"].as_f64() >= Some(3500.0)
                    && steady(&workers)
                    && no_errors(&workers)
            )
        ),
        format!(
            "| open loop at 80% of peak ({}/s) for 60 s: p99 < 25 ms, no error | p99 {} ms (per 10-s window: {}), {} errors | {} |",
            open80["load"]["rate"],
            open80["latency_ms"]["p99"],
            joined(&open80["windows"]["p99_ms"]),
            open80["errors"]
                .as_object()
                .map_or(0, |e| e.values().filter_map(Value::as_u64).sum::<u64>()),
            check(open80["latency_ms"]["p99"].as_f64() < Some(25.0) && no_errors(&open80))
        ),
        format!(
            "| p99 < 25 ms at half peak ({}/s) | {} ms | {} |",
            half["load"]["rate"],
            half["latency_ms"]["p99"],
            check(half["latency_ms"]["p99"].as_f64() < Some(25.0))
        ),
        format!(
            "| p50 < 2 ms at c=1 | {} ms | {} |",
            c1["latency_ms"]["p50"],
            check(c1["latency_ms"]["p50"].as_f64() < Some(2.0))
        ),
        format!(
            "| {waiting} waiting instances started at full speed: no refusal, peak RSS < 1 GB | {} refused, peak RSS {timers_rss} MB | {} |",
            timers["errors"]
                .as_object()
                .map_or(0, |e| e.values().filter_map(Value::as_u64).sum::<u64>()),
            check(no_errors(&timers) && timers_rss < 1024)
        ),
        format!(
            "| restart after SIGKILL with {waiting} waiting instances (until the node listens) | {} s | |",
            timers["restart_after_kill_s"]
        ),
        format!(
            "| a page of the 10 `failed` among {waiting} stored instances, over HTTP: < 50 ms | median {} ms, slowest {} ms | {} |",
            timers["list_rare_page_ms"]["median"],
            timers["list_rare_page_ms"]["max"],
            check(timers["list_rare_page_ms"]["max"].as_f64() < Some(50.0))
        ),
        format!(
            "| < 1 KB per passivated waiting instance (the node's whole RSS over the instances waiting, an upper bound; the slope between half and all of them beside it) | {rss_per_waiting} B (slope {per_waiting} B) | {} |",
            check(rss_per_waiting < 1024)
        ),
        format!(
            "| bigmap: one `foreach` over {} `noop` items (concurrency 1000): ≥ 20,000 items/s, last tenth within 20% of the first | {} items/s; first tenth {}/s, last tenth {}/s | {} |",
            bigmap["total"],
            bigmap["per_s"],
            bigmap["first_tenth_per_s"],
            bigmap["last_tenth_per_s"],
            check(
                bigmap["per_s"].as_f64() >= Some(20_000.0)
                    && bigmap["last_over_first"].as_f64() >= Some(0.8)
            )
        ),
        format!(
            "| longlived: one `loop` over a 1-ms timer, {} iterations: last tenth within 20% of the first; reading it old costs what it cost young | first tenth {}/s, last tenth {}/s; read at a tenth {} ms, at the end {} ms | {} |",
            longlived["total"],
            longlived["first_tenth_per_s"],
            longlived["last_tenth_per_s"],
            longlived["read_young_ms"],
            longlived["read_old_ms"],
            check(
                longlived["last_over_first"].as_f64() >= Some(0.8)
                    && longlived["read_old_ms"].as_f64()
                        <= longlived["read_young_ms"].as_f64().map(|y| 1.5 * y + 1.0)
            )
        ),
        format!(
            "| exactly once in every run | {} of {} runs | {} |",
            results
                .iter()
                .filter(|r| r["correctness"]["ok"] == true)
                .count(),
            results.len(),
            check(results.iter().all(|r| r["correctness"]["ok"] == true))
        ),
        format!(
            "| (knee: highest open-loop rate with p99 ≤ 25 ms and no backlog, 5-s runs, a miss run twice) | {knee} wf/s | |"
        ),
    ];
    let generated = format!(
        "Produced by `make bench` (`troupe-bench suite`) on {date}, in {secs:.0} s.\n\n\
         - Machine: {machine}\n\
         - Node: one `troupe-node` started by the harness with the default settings, 16 shards, `sync = true` (every group commit fsynced before acknowledging), fresh data dir on the local disk ({mount}); load generator and workers on the same machine, native protocol, 4 client connections.\n\
         - Runs: the headline runs (noop and workers at c=256, open loop at 80% of peak) measure {long} s after a {long_warm}-s warm-up, the others {dur} s after {warm} s; rates are also given per 10-s window. Latency is start-to-complete as the client sees it (`Client::run`: the start's answer when the workflow ended within it, as `noop` steps let it; otherwise start, then await the result), in open-loop runs counted from each scheduled send time.\n\n\
         ### Targets\n\n| target | measured | |\n|---|---|---|\n{targets}\n\n\
         ### All runs\n\n{header}\n{table}\n\n\
         ### Big instances\n\n{big}\n\n\
         Raw results: `bench/results/latest.json`.",
        date = today(),
        secs = started.elapsed().as_secs_f64(),
        machine = machine(),
        mount = data_dir_mount(&results),
        warm = if quick { 1 } else { 2 },
        dur = if quick { 2 } else { 10 },
        long = if quick { 2 } else { 60 },
        long_warm = if quick { 1 } else { 5 },
        targets = targets.join("\n"),
        header = markdown_row_header(),
        table = table.join("\n"),
        big = big_table(&[&bigmap, &longlived]),
    );
    write_section(markdown, "results", &generated)?;
    eprintln!("wrote {} and {}", markdown.display(), json_path.display());
    Ok(())
}

/// The big-instance runs as a markdown table.
fn big_table(runs: &[&Value]) -> String {
    let mut out = String::from(
        "| scenario | size | s | per s | first tenth /s | last tenth /s | last / first | journal MB (B/event) | snapshots MB (B/event) | read at a tenth ms | read at the end ms | peak RSS MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|",
    );
    for r in runs {
        out.push_str(&format!(
            "\n| {} | {} {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} |",
            r["scenario"].as_str().unwrap_or("?"),
            r["total"],
            r["unit"].as_str().unwrap_or(""),
            r["seconds"],
            r["per_s"],
            r["first_tenth_per_s"],
            r["last_tenth_per_s"],
            r["last_over_first"],
            r["journal_mb"],
            r["journal_bytes_per_event"],
            r["snapshot_mb"],
            r["snapshot_bytes_per_event"],
            r["read_young_ms"],
            r["read_old_ms"],
            r["node_peak_rss_mb"],
        ));
    }
    out
}

/// Writes back what is pending (the build's output, a removed data dir),
/// so that the next run's fsyncs do not wait behind it.
pub(crate) fn settle_disk() {
    let _ = std::process::Command::new("sync").status();
    std::thread::sleep(Duration::from_secs(2));
}

/// How a soak loads the node.
#[derive(Clone, Copy, Debug)]
pub enum SoakLoad {
    /// Closed loop: this many workflows in flight, so the rate shows what
    /// the node sustains as its data grows.
    Closed(usize),
    /// Open loop: this many starts per second whatever the node does, so
    /// latency and memory show whether a steady load wears it down.
    Open(f64),
}

impl SoakLoad {
    /// The markdown section and default JSON file of this kind of soak.
    pub fn name(self) -> &'static str {
        match self {
            Self::Closed(_) => "soak",
            Self::Open(_) => "soak-open",
        }
    }

    fn describe(self) -> String {
        match self {
            Self::Closed(concurrency) => format!("closed loop, c={concurrency}"),
            Self::Open(rate) => format!("open loop, {rate:.0} starts/s"),
        }
    }

    /// The command that runs this soak.
    fn command(self, retention: Option<Duration>) -> String {
        let mut command = match self {
            Self::Closed(_) => "troupe-bench soak".to_owned(),
            Self::Open(rate) => format!("troupe-bench soak --rate {rate:.0}"),
        };
        if let Some(retention) = retention {
            command.push_str(&format!(" --retention {}s", retention_secs(retention)));
        }
        command
    }
}

/// The node settings a soak names: its defaults, or a retention of its own.
fn soak_settings(retention: Option<Duration>) -> String {
    match retention {
        None => "default settings".to_owned(),
        Some(r) => format!(
            "default settings but `storage.retention = \"{}s\"` (ended instances deleted that long after they end)",
            retention_secs(r)
        ),
    }
}

/// A soak's retention in whole seconds, as the node is given it.
fn retention_secs(retention: Duration) -> u64 {
    retention.as_secs().max(1)
}

/// MiB of `bytes` at the start of each window, from the node's samples.
fn mb_at_window_starts(
    samples: &[crate::load::NodeSample],
    bytes: impl Fn(&crate::load::NodeSample) -> u64,
) -> Vec<u64> {
    samples
        .iter()
        .step_by(WINDOW_SECS)
        .map(|s| bytes(s) >> 20)
        .collect()
}

/// A long `noop` run (the soak): throughput, p99 latency, the node's
/// memory and the size of its data per window, written to its own section
/// of the markdown.
pub async fn soak(
    markdown: &Path,
    json_path: &Path,
    duration: Duration,
    load: SoakLoad,
    retention: Option<Duration>,
) -> anyhow::Result<()> {
    settle_disk();
    let mut run_args = match load {
        SoakLoad::Closed(concurrency) => args(Scenario::Noop, Some(concurrency), None, false),
        SoakLoad::Open(rate) => args(Scenario::Noop, None, Some(rate), false),
    };
    if let Some(retention) = retention {
        run_args.node_toml = format!("retention = \"{}s\"\n", retention_secs(retention));
    }
    run_args.duration = duration;
    run_args.warmup = soak_warmup(retention);
    let r = run(&run_args).await?;
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(json_path, serde_json::to_string_pretty(&r)?)?;
    let column = |name: &str| r["windows"][name].as_array().cloned().unwrap_or_default();
    let (rates, p99s, rss, data, cpu, steal) = (
        column("workflows_per_s"),
        column("p99_ms"),
        column("node_rss_mb"),
        column("node_data_mb"),
        column("node_cpu_ms_per_workflow"),
        column("machine_steal_percent"),
    );
    let cell = |values: &[Value], i: usize| values.get(i).map_or("–".to_owned(), Value::to_string);
    let rows: Vec<String> = (0..rates.len())
        .map(|i| {
            format!(
                "| {}–{} s | {} | {} | {} | {} | {} | {} |",
                i * WINDOW_SECS,
                (i + 1) * WINDOW_SECS,
                cell(&rates, i),
                cell(&p99s, i),
                cell(&cpu, i),
                cell(&steal, i),
                cell(&rss, i),
                cell(&data, i),
            )
        })
        .collect();
    let generated = format!(
        "Produced by `make soak` (`{command}`) on {date}: {load}, `noop`, {mins:.0} min measured after a {warmup}-s warm-up ({why}), one node with {settings} and `sync = true`, data dir on the local disk ({mount}); machine: {machine}.\n\n\
         Mean {mean} wf/s; slowest 10-s window {slowest} wf/s ({ratio:.0}% of the fastest); p99 {p99} ms (worst window's p99 {worst_p99} ms); {errors} errors; exactly once: {ok}; peak RSS {peak} MB; data dir {data_end} MB at the start of the last window.\n\n\
         | window | wf/s | p99 ms | node CPU ms per workflow | machine CPU taken by its host (steal), % | node RSS at its start, MB | data dir at its start, MB |\n|---|---|---|---|---|---|---|\n{rows}\n\n\
         Raw result: `{json}`.",
        command = load.command(retention),
        settings = soak_settings(retention),
        date = today(),
        load = load.describe(),
        mins = duration.as_secs_f64() / 60.0,
        warmup = run_args.warmup.as_secs(),
        why = if retention.is_some() {
            "the retention plus two minutes: deletions and compactions at their steady pace"
        } else {
            "two minutes: compactions at their steady pace"
        },
        machine = machine(),
        mount = data_dir_mount(std::slice::from_ref(&r)),
        mean = r["workflows_per_s"],
        slowest = r["windows"]["slowest"],
        ratio = r["windows"]["slowest_to_fastest"].as_f64().unwrap_or(0.0) * 100.0,
        p99 = r["latency_ms"]["p99"],
        worst_p99 = p99s
            .iter()
            .filter_map(Value::as_f64)
            .fold(0.0_f64, f64::max),
        errors = r["errors"]
            .as_object()
            .map_or(0, |e| e.values().filter_map(Value::as_u64).sum::<u64>()),
        ok = if r["correctness"]["ok"] == true {
            "yes"
        } else {
            "NO"
        },
        peak = r["node_peak_rss_mb"],
        data_end = data.last().map_or("–".to_owned(), Value::to_string),
        rows = rows.join("\n"),
        json = json_path.display(),
    );
    write_section(markdown, load.name(), &generated)?;
    eprintln!("wrote {} and {}", markdown.display(), json_path.display());
    Ok(())
}

/// A soak measures the node in its steady state: from when retention
/// deletes instances as fast as they end and compactions have reached the
/// levels that data fills. Before that an empty database runs faster than
/// any full one will (a third faster in the first minute on two cores),
/// and once deletions start they first make up for that minute (which
/// ended instances faster than any later one), for up to two minutes.
fn soak_warmup(retention: Option<Duration>) -> Duration {
    retention.unwrap_or_default() + Duration::from_secs(120)
}

/// Replaces what stands between `<!-- NAME:begin ... -->` and
/// `<!-- NAME:end -->` in `markdown` (appending the section if missing),
/// keeping the hand-written text around it.
fn write_section(markdown: &Path, name: &str, content: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- {name}:begin");
    let end = format!("<!-- {name}:end -->");
    let section = format!(
        "{begin} (written by `troupe-bench`; edit outside the markers) -->\n{content}\n{end}"
    );
    let old = std::fs::read_to_string(markdown).unwrap_or_else(|_| "# Benchmarks\n".into());
    let updated = match (old.find(&begin), old.find(&end)) {
        (Some(b), Some(e)) => format!("{}{section}{}", &old[..b], &old[e + end.len()..]),
        _ => format!("{}\n{section}\n", old.trim_end()),
    };
    std::fs::write(markdown, updated)?;
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

/// The node's gauge of whether its data dir's file system trims online.
const ONLINE_DISCARD: &str = "troupe_storage_online_discard";

/// How the runs' data dir was mounted, as the nodes reported it.
fn data_dir_mount(results: &[Value]) -> &'static str {
    let reported: Vec<bool> = results
        .iter()
        .filter_map(|r| r["data_dir_online_discard"].as_bool())
        .collect();
    match (reported.contains(&true), reported.contains(&false)) {
        (true, false) => {
            "its file system mounted with online `discard` (fsyncs wait for the trims of deleted files; see docs/operations.md)"
        }
        (false, true) => "its file system mounted without online `discard`",
        (true, true) => "file systems with and without online `discard`",
        (false, false) => "its mount options not reported",
    }
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

#[cfg(test)]
mod tests {
    use super::{SoakLoad, data_dir_mount, soak_settings, write_section};
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn the_mount_line_says_what_the_nodes_reported() {
        let run = |discard: serde_json::Value| json!({ "data_dir_online_discard": discard });
        assert!(data_dir_mount(&[run(json!(true)), run(json!(null))]).contains("with online"));
        assert!(data_dir_mount(&[run(json!(false))]).contains("without"));
        assert!(
            data_dir_mount(&[run(json!(false)), run(json!(true))]).contains("with and without")
        );
        assert!(data_dir_mount(&[run(json!(null))]).contains("not reported"));
    }

    #[test]
    fn sections_are_replaced_and_the_text_around_them_kept() {
        let path = std::env::temp_dir().join(format!("troupe-bench-md-{}.md", std::process::id()));
        std::fs::write(
            &path,
            "# B\n\nnotes\n<!-- soak:begin -->\nold\n<!-- soak:end -->\nafter\n",
        )
        .unwrap();
        write_section(&path, "soak", "new").unwrap();
        write_section(&path, "results", "r1").unwrap();
        write_section(&path, "results", "r2").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(text.starts_with("# B\n\nnotes\n<!-- soak:begin"), "{text}");
        assert!(
            text.contains("-->\nnew\n<!-- soak:end -->\nafter\n"),
            "{text}"
        );
        assert!(!text.contains("old") && !text.contains("r1"), "{text}");
        assert!(
            text.trim_end().ends_with("r2\n<!-- results:end -->"),
            "{text}"
        );
    }

    #[test]
    fn a_soak_names_the_retention_it_ran_with() {
        let minute = Some(Duration::from_secs(60));
        assert_eq!(
            SoakLoad::Open(8000.0).command(minute),
            "troupe-bench soak --rate 8000 --retention 60s"
        );
        assert_eq!(SoakLoad::Closed(256).command(None), "troupe-bench soak");
        assert!(soak_settings(minute).contains("`storage.retention = \"60s\"`"));
        assert_eq!(soak_settings(None), "default settings");
    }

    #[test]
    fn the_two_soaks_write_sections_of_their_own() {
        let path =
            std::env::temp_dir().join(format!("troupe-bench-soaks-{}.md", std::process::id()));
        std::fs::write(&path, "# B\n").unwrap();
        let closed = SoakLoad::Closed(256).name();
        let open = SoakLoad::Open(8000.0).name();
        write_section(&path, closed, "closed 1").unwrap();
        write_section(&path, open, "open 1").unwrap();
        write_section(&path, closed, "closed 2").unwrap();
        write_section(&path, open, "open 2").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert_eq!(text.matches("closed 2").count(), 1, "{text}");
        assert_eq!(text.matches("open 2").count(), 1, "{text}");
        assert!(!text.contains(" 1\n"), "{text}");
    }
}
