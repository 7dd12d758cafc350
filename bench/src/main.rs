//! `troupe-bench`: load-tests a Troupe node and reports what it measured.
//!
//! `troupe-bench run` runs one scenario against a node it starts itself
//! (fresh data dir, durability on) or a running node; `troupe-bench suite`
//! runs the standard set and writes `docs/benchmarks.md`; `troupe-bench
//! soak` runs `noop` for ten minutes (closed loop, or open with `--rate`)
//! and adds its timeline there; `troupe-bench probe` measures how steady
//! the machine itself is.

mod big;
mod cluster;
mod load;
mod probe;
mod report;
mod scenario;
mod target;

use clap::{Parser, Subcommand};
use load::Mode;
use scenario::Scenario;
use std::path::PathBuf;
use std::time::Duration;
use target::Target;
use troupe_client::{Client, Worker};

#[derive(Parser)]
#[command(name = "troupe-bench", about = "Load-test a Troupe node")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct RunArgs {
    /// What each workflow does.
    #[arg(long, value_enum, default_value = "noop")]
    scenario: Scenario,
    /// Closed loop: workflows in flight.
    #[arg(long, conflicts_with = "rate")]
    concurrency: Option<usize>,
    /// Open loop: starts per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Measured time.
    #[arg(long, default_value = "10s", value_parser = humantime_duration)]
    duration: Duration,
    /// Time before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime_duration)]
    warmup: Duration,
    /// Stop after this many workflows.
    #[arg(long)]
    count: Option<u64>,
    /// Load a running node at this native address instead of starting one.
    #[arg(long, requires = "http")]
    native: Option<String>,
    /// HTTP base URL of that node (for its metrics).
    #[arg(long)]
    http: Option<String>,
    /// Load a running cluster: its members' native addresses, comma
    /// separated; connections and workers are spread over all of them.
    #[arg(long, conflicts_with = "native", value_delimiter = ',')]
    cluster: Vec<String>,
    /// Start a local three-node cluster (replication factor 3, fsync on)
    /// and load it through all three nodes.
    #[arg(long, conflicts_with_all = ["native", "cluster"])]
    local_cluster: bool,
    /// Shards of the node this harness starts.
    #[arg(long, default_value_t = 16)]
    shards: u32,
    /// More TOML for the node this harness starts (other limits, say).
    #[arg(long, default_value = "", conflicts_with_all = ["native", "cluster", "local_cluster"])]
    node_toml: String,
    /// Tries per request: the client retries `overloaded` and
    /// `unavailable` answers with backoff, as applications would (1: none,
    /// to see every refusal).
    #[arg(long, default_value_t = troupe_client::RetryPolicy::default().attempts)]
    attempts: u32,
    /// Client connections.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Write the JSON result here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// After the run, SIGKILL the node (one this harness started) and
    /// time its restart on the same data dir.
    #[arg(long)]
    kill_restart: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs one scenario.
    Run(RunArgs),
    /// Raises the open-loop rate until p99 passes the SLO or a backlog
    /// builds (fewer completions than arrivals): the knee.
    Sweep {
        #[command(flatten)]
        run: RunArgs,
        /// p99 start-to-complete latency objective, milliseconds.
        #[arg(long, default_value_t = 25.0)]
        slo_ms: f64,
        /// First rate, workflows/s.
        #[arg(long, default_value_t = 250.0)]
        start_rate: f64,
        /// Factor between rates.
        #[arg(long, default_value_t = 1.25)]
        factor: f64,
    },
    /// Runs the standard suite and updates docs/benchmarks.md.
    Suite {
        /// Where to write the markdown summary.
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: PathBuf,
        /// Where to write the JSON results.
        #[arg(long, default_value = "bench/results/latest.json")]
        json: PathBuf,
        /// Shorter runs (for a smoke test).
        #[arg(long)]
        quick: bool,
    },
    /// One workflow whose `foreach` runs many `noop` items: items/s, and
    /// the rate over the last tenth against the first.
    Bigmap {
        /// Items.
        #[arg(long, default_value_t = 100_000)]
        items: u64,
        /// Items in flight.
        #[arg(long, default_value_t = 1000)]
        concurrency: u32,
        /// Shards of the node this harness starts.
        #[arg(long, default_value_t = 16)]
        shards: u32,
    },
    /// One workflow that loops over a 1-ms durable timer many times: the
    /// iteration rate at the end against the start.
    Longlived {
        /// Iterations.
        #[arg(long, default_value_t = 100_000)]
        iterations: u64,
        /// Shards of the node this harness starts.
        #[arg(long, default_value_t = 16)]
        shards: u32,
    },
    /// Starts a local three-node cluster, offers open-loop `noop` load
    /// through two nodes, and SIGKILLs the node leading the most shards:
    /// the longest any workflow waited, and that none was lost.
    Failover {
        /// Starts per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Load before the kill.
        #[arg(long, default_value = "10s", value_parser = humantime_duration)]
        before: Duration,
        /// Load after the kill.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        after: Duration,
        /// Shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
        /// Instances waiting on an hour-long timer, started (at full speed)
        /// before the load: a new leader's activation must not grow with
        /// them.
        #[arg(long, default_value_t = 0)]
        waiting: u64,
    },
    /// Starts a local three-node cluster and offers open-loop `noop` load
    /// while an operator changes it (a node joins; a node is drained and
    /// removed; every node restarts in turn): failed requests, the p99
    /// before and during, how long it took.
    Operate {
        /// The change.
        #[arg(long, value_enum)]
        operation: cluster::Operation,
        /// Starts per second.
        #[arg(long, default_value_t = 500.0)]
        rate: f64,
        /// Load measured before the change.
        #[arg(long, default_value = "20s", value_parser = humantime_duration)]
        before: Duration,
        /// Load measured while the change runs (it must end inside).
        #[arg(long, default_value = "60s", value_parser = humantime_duration)]
        during: Duration,
        /// Shards.
        #[arg(long, default_value_t = 16)]
        shards: u32,
    },
    /// How steady the machine is without Troupe: memory-bound work per
    /// 10-s window on each thread (run it on an otherwise idle machine).
    Probe {
        /// Measured time.
        #[arg(long, default_value = "120s", value_parser = humantime_duration)]
        duration: Duration,
        /// Threads (one per core to load the whole machine).
        #[arg(long, default_value_t = 1)]
        threads: usize,
        /// Working set per thread, MiB (larger than the caches).
        #[arg(long, default_value_t = 32)]
        mib: usize,
        /// Share of each second each thread works (below 1 to run beside
        /// a load test).
        #[arg(long, default_value_t = 1.0)]
        duty: f64,
    },
    /// A long noop run (closed loop, or open with --rate); writes
    /// throughput, p99 and memory per window to docs/benchmarks.md.
    Soak {
        /// Measured time.
        #[arg(long, default_value = "10m", value_parser = humantime_duration)]
        duration: Duration,
        /// Workflows in flight (closed loop).
        #[arg(long, default_value_t = 256, conflicts_with = "rate")]
        concurrency: usize,
        /// Open loop at this many starts per second instead; written to the
        /// `soak-open` section.
        #[arg(long)]
        rate: Option<f64>,
        /// Where to write the markdown summary.
        #[arg(long, default_value = "docs/benchmarks.md")]
        markdown: PathBuf,
        /// Where to write the JSON result [default: bench/results/soak.json,
        /// or soak-open.json with --rate].
        #[arg(long)]
        json: Option<PathBuf>,
        /// The node's `storage.retention` (ended instances are deleted this
        /// long after they end) instead of its default of a week, so that
        /// the data stops growing within the soak.
        #[arg(long, value_parser = humantime_duration)]
        retention: Option<Duration>,
    },
}

fn humantime_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) =
        text.split_at(text.find(|c: char| c.is_alphabetic()).unwrap_or(text.len()));
    let n: f64 = number
        .parse()
        .map_err(|_| format!("bad duration {text:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {text:?}")),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Run(args) => {
            let result = run(&args).await?;
            println!("{}", report::markdown_row_header());
            println!("{}", report::markdown_row(&result));
            if let Some(out) = &args.out {
                std::fs::write(out, serde_json::to_string_pretty(&result)?)?;
            }
        }
        Cmd::Sweep {
            run,
            slo_ms,
            start_rate,
            factor,
        } => {
            let (knee, results) = sweep(&run, slo_ms, start_rate, factor).await?;
            println!("{}", report::markdown_row_header());
            for r in &results {
                println!("{}", report::markdown_row(r));
            }
            println!("knee: {knee} workflows/s within p99 {slo_ms} ms");
            if let Some(out) = &run.out {
                std::fs::write(out, serde_json::to_string_pretty(&results)?)?;
            }
        }
        Cmd::Suite {
            markdown,
            json,
            quick,
        } => report::suite(&markdown, &json, quick).await?,
        Cmd::Bigmap {
            items,
            concurrency,
            shards,
        } => {
            let result = big::bigmap(items, concurrency, shards).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Cmd::Longlived { iterations, shards } => {
            let result = big::longlived(iterations, shards).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Cmd::Soak {
            duration,
            concurrency,
            rate,
            markdown,
            json,
            retention,
        } => {
            let load = rate.map_or(
                report::SoakLoad::Closed(concurrency),
                report::SoakLoad::Open,
            );
            let json = json.unwrap_or_else(|| format!("bench/results/{}.json", load.name()).into());
            report::soak(&markdown, &json, duration, load, retention).await?
        }
        Cmd::Probe {
            duration,
            threads,
            mib,
            duty,
        } => {
            let result =
                tokio::task::spawn_blocking(move || probe::run(duration, threads, mib, duty));
            println!("{}", serde_json::to_string_pretty(&result.await?)?);
        }
        Cmd::Failover {
            rate,
            before,
            after,
            shards,
            waiting,
        } => {
            let result = cluster::failover(rate, before, after, shards, waiting).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Cmd::Operate {
            operation,
            rate,
            before,
            during,
            shards,
        } => {
            let result = cluster::operate(operation, rate, before, during, shards).await?;
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
    }
    Ok(())
}

/// Open-loop runs at rising rates; returns the highest rate that kept p99
/// within `slo_ms` with no backlog, and every run. A rate that misses is
/// run once more before the sweep stops: one short run can land on a
/// single compaction's stall.
async fn sweep(
    base: &RunArgs,
    slo_ms: f64,
    start_rate: f64,
    factor: f64,
) -> anyhow::Result<(f64, Vec<serde_json::Value>)> {
    let (mut rate, mut knee, mut results) = (start_rate, 0.0, Vec::new());
    let mut retried = false;
    loop {
        let mut args = base.clone();
        args.rate = Some(rate.round());
        args.concurrency = None;
        let r = run(&args).await?;
        let p99 = r["latency_ms"]["p99"].as_f64().unwrap_or(f64::MAX);
        let achieved = r["workflows_per_s"].as_f64().unwrap_or(0.0);
        let errors = r["errors"].as_object().is_some_and(|e| !e.is_empty());
        let kept_up = achieved >= 0.9 * rate.round() && !errors;
        results.push(r);
        if p99 > slo_ms || !kept_up {
            if retried {
                return Ok((knee, results));
            }
            retried = true;
            continue;
        }
        retried = false;
        knee = rate.round();
        rate *= factor.max(1.01);
    }
}

/// Among everything stored, ten instances fail; returns how long one page
/// of the `failed` ones takes over HTTP (median and slowest of five).
async fn list_rare(client: &Client, http: &str) -> anyhow::Result<(f64, f64)> {
    client
        .deploy("name: bench-rare\nversion: 1\nsteps:\n  - { id: x, fail: { code: rare } }\n")
        .await?;
    let run = std::process::id();
    for n in 0..10 {
        let id = format!("bench-rare-{run}-{n}");
        client
            .start("bench-rare", Some(&id), &serde_json::json!({}))
            .await?;
        client.result(&id, Duration::from_secs(10)).await?;
    }
    let url = format!("{http}/v1/workflows?status=failed&limit=10");
    let mut times = Vec::new();
    for _ in 0..5 {
        let begin = std::time::Instant::now();
        let page: serde_json::Value = reqwest::get(&url).await?.json().await?;
        times.push(begin.elapsed().as_secs_f64() * 1000.0);
        let found = page["workflows"].as_array().map_or(0, Vec::len);
        anyhow::ensure!(found == 10, "listed {found} failed instances, not 10");
    }
    times.sort_by(f64::total_cmp);
    Ok((times[2], times[4]))
}

/// Runs one scenario and returns its JSON result.
async fn run(args: &RunArgs) -> anyhow::Result<serde_json::Value> {
    let local = if args.local_cluster {
        let local = cluster::LocalCluster::spawn(args.shards)?;
        local.leaders().await?;
        Some(local)
    } else {
        None
    };
    let members = match &local {
        Some(local) => local.member_natives().to_vec(),
        None => args.cluster.clone(),
    };
    let mut target = match (&args.native, &args.http, members.first(), &local) {
        (_, _, Some(first), Some(local)) => {
            let mut target = Target::remote(first.clone(), local.https[0].clone());
            target.others = local.member_https()[1..].to_vec();
            target
        }
        (_, http, Some(first), None) => {
            Target::remote(first.clone(), http.clone().unwrap_or_default())
        }
        (Some(native), Some(http), None, _) => Target::remote(native.clone(), http.clone()),
        _ => Target::spawn(args.shards, &args.node_toml)?,
    };
    let scenario = args.scenario;
    let members = if members.is_empty() {
        vec![target.native.clone()]
    } else {
        members
    };
    let mut clients = Vec::new();
    for n in 0..args.connections.max(members.len()) {
        let retry = troupe_client::RetryPolicy {
            attempts: args.attempts.max(1),
            ..Default::default()
        };
        let client = Client::connect(members[n % members.len()].clone()).await?;
        clients.push(client.with_retry(retry));
    }
    clients[0].deploy(&scenario.definition()).await?;
    if let Some(task_type) = scenario.worker_task() {
        // Each worker streams from every member of a cluster.
        for w in 0..2 {
            let worker = Worker::new(&clients[0], &format!("bench-{w}"))
                .concurrency(512)
                .handle(task_type, |task| async move { Ok(task.input) });
            tokio::spawn(worker.run());
        }
    }
    let mode = match (args.concurrency, args.rate) {
        (_, Some(rate)) => Mode::Open(rate),
        (c, None) => Mode::Closed(c.unwrap_or(1)),
    };
    let before_metrics = target.metrics().await.unwrap_or_default();
    let before_cpu = target.cpu_seconds();
    let mut before_rss = target.rss();
    let prefix = format!("{}-{}", scenario.name(), std::process::id());
    eprintln!("{} {:?}", scenario.name(), mode);
    // Waiting instances are measured as a slope: fill half, let them
    // passivate, measure; add the other half, measure again. The first half
    // absorbs fixed costs (RocksDB memtables up to their cap, allocator pools).
    let timers = scenario == Scenario::Timers;
    let first = match (timers, args.count) {
        (true, Some(count)) => {
            let half = Some(count / 2);
            let fill = format!("{prefix}-fill");
            let plan = load::Plan {
                scenario,
                mode: &mode,
                warmup: args.warmup,
                duration: args.duration,
                count: half,
                prefix: &fill,
            };
            let tally = load::run(&clients, plan, target.probe()).await;
            tokio::time::sleep(Duration::from_secs(8)).await;
            before_rss = target.rss();
            Some(tally)
        }
        _ => None,
    };
    let count = match &first {
        Some(f) => args.count.map(|c| c - f.started),
        None => args.count,
    };
    let plan = load::Plan {
        scenario,
        mode: &mode,
        warmup: args.warmup,
        duration: args.duration,
        count,
        prefix: &prefix,
    };
    let mut tally = load::run(&clients, plan, target.probe()).await;
    eprintln!();
    if timers {
        // Let the waiting instances passivate before measuring memory.
        tokio::time::sleep(Duration::from_secs(8)).await;
    }
    let measured = tally.ended_ok;
    if let Some(first) = first {
        tally.started += first.started;
        tally.ended_ok += first.ended_ok;
        for (code, n) in first.errors {
            *tally.errors.entry(code).or_default() += n;
        }
    }
    let after_metrics = target.metrics().await.unwrap_or_default();
    let after_cpu = target.cpu_seconds();
    let after_rss = target.rss();
    let list_rare = if timers {
        Some(list_rare(&clients[0], &target.http).await?)
    } else {
        None
    };
    let restart = if args.kill_restart {
        drop(clients);
        eprintln!("SIGKILL and restart");
        Some(target.kill_and_restart()?)
    } else {
        None
    };
    Ok(report::result(
        scenario,
        &mode,
        args,
        &tally,
        report::NodeSide {
            measured,
            before_metrics,
            after_metrics,
            cpu: before_cpu.zip(after_cpu).map(|(a, b)| b - a),
            rss_before: before_rss,
            rss_after: after_rss,
            restart,
            list_rare,
        },
    ))
}
