//! `troupe`: the command-line interface.
//!
//! Offline commands: `troupe validate FILE...` checks definitions, and
//! `troupe simulate FILE` dry-runs one through the engine. The others talk to
//! a node (`--addr` or `TROUPE_ADDR`) over its HTTP API; `--json` prints the
//! raw answers for scripts.

mod remote;
mod simulate;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use troupe_engine::definition::{self, Definition};

#[derive(Parser)]
#[command(name = "troupe", version, about = "Troupe workflow orchestration CLI")]
struct Cli {
    /// Node to talk to (`host:port` or URL).
    #[arg(
        long,
        global = true,
        env = "TROUPE_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    addr: String,
    /// Print raw JSON answers.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check workflow definition files (YAML or JSON) offline.
    Validate {
        /// Definition files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Dry-run a definition through the engine with a simulated world.
    ///
    /// Tasks complete with their input, people approve with
    /// `{"approved": true}`, signals and children answer `null`, incidents
    /// are resolved, and timers fire in simulated time. Exits 0 when the
    /// instance completes, 3 when it ends otherwise.
    Simulate {
        /// Definition file.
        file: PathBuf,
        /// Start input: JSON, or `@file`.
        #[arg(long, default_value = "{}")]
        input: String,
        /// `PATH=JSON`: what the task, person, signal or child at PATH answers.
        /// A human PATH answering `"timeout"` never decides.
        #[arg(long = "respond", value_name = "PATH=JSON")]
        responses: Vec<String>,
        /// `PATH=CODE`: the task at PATH fails for good with CODE.
        #[arg(long = "fail", value_name = "PATH=CODE")]
        failures: Vec<String>,
        /// Cancel the instance after this many events.
        #[arg(long)]
        cancel_after: Option<usize>,
    },
    /// Deploy a definition file to the node.
    Deploy {
        /// Definition file (YAML or JSON).
        file: PathBuf,
    },
    /// Start a workflow instance (idempotent with --id).
    Start {
        /// Definition name.
        definition: String,
        /// Instance id; generated when absent.
        #[arg(long)]
        id: Option<String>,
        /// Definition version; the latest when absent.
        #[arg(long)]
        version: Option<u32>,
        /// Input: JSON, or `@file`.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// Send a signal to an instance.
    Signal {
        /// Instance id.
        id: String,
        /// Signal name.
        name: String,
        /// Payload: JSON, or `@file`.
        #[arg(long, default_value = "null")]
        payload: String,
        /// Deduplication id.
        #[arg(long)]
        signal_id: Option<String>,
    },
    /// Show an instance, its steps and its history.
    Show {
        /// Instance id.
        id: String,
    },
    /// Page through an instance's history, oldest event first.
    History {
        /// Instance id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Continue from a previous page (a sequence number).
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Page through every step run of an instance (big ones included), in
    /// path order.
    Steps {
        /// Instance id.
        id: String,
        /// Page size.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Continue from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// List instances.
    List {
        /// Only this status.
        #[arg(long)]
        status: Option<String>,
        /// Only this definition.
        #[arg(long)]
        definition: Option<String>,
        /// Page size.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue from a previous page.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Cancel an instance (rolling back completed steps).
    Cancel {
        /// Instance id.
        id: String,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List incidents, or retry / resolve one.
    Incidents {
        #[command(subcommand)]
        action: Option<IncidentAction>,
    },
    /// List human tasks, or complete one.
    HumanTasks {
        /// Only tasks for this assignee.
        #[arg(long)]
        assignee: Option<String>,
        #[command(subcommand)]
        action: Option<HumanAction>,
    },
    /// Show the cluster's nodes and shards, or change its membership.
    Cluster {
        #[command(subcommand)]
        action: Option<ClusterAction>,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Nodes, shards, and moves in progress (the default).
    Status,
    /// Move every replica and leadership off a node (it keeps serving).
    Drain {
        /// Node id.
        node: u64,
    },
    /// Remove a drained node, or one that is down for good.
    Remove {
        /// Node id.
        node: u64,
    },
}

#[derive(Subcommand)]
enum IncidentAction {
    /// Retry the failed compensation.
    Retry {
        /// Incident id.
        id: String,
    },
    /// Mark the failed compensation as done by hand and continue the rollback.
    Resolve {
        /// Incident id.
        id: String,
    },
}

#[derive(Subcommand)]
enum HumanAction {
    /// Complete a human task with a decision.
    Complete {
        /// Human task id.
        id: String,
        /// Decision: JSON, or `@file`.
        #[arg(long, default_value = "{}")]
        payload: String,
    },
}

fn main() -> ExitCode {
    quiet_on_closed_stdout();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files } => validate(&files, cli.json).map(|ok| if ok { 0 } else { 1 }),
        Command::Simulate {
            file,
            input,
            responses,
            failures,
            cancel_after,
        } => simulate_file(&file, &input, &responses, &failures, cancel_after),
        remote => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            runtime
                .block_on(run_remote(remote::Remote::new(&cli.addr, cli.json), remote))
                .map(|()| 0)
        }
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run_remote(node: remote::Remote, command: Command) -> anyhow::Result<()> {
    match command {
        Command::Deploy { file } => {
            node.deploy(
                std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?,
            )
            .await
        }
        Command::Start {
            definition,
            id,
            version,
            input,
        } => {
            node.start(&definition, version, id, simulate::read_input(&input)?)
                .await
        }
        Command::Signal {
            id,
            name,
            payload,
            signal_id,
        } => {
            node.signal(&id, &name, signal_id, simulate::read_input(&payload)?)
                .await
        }
        Command::Show { id } => node.show(&id).await,
        Command::Steps { id, limit, cursor } => node.steps(&id, limit, cursor).await,
        Command::History { id, limit, cursor } => node.history(&id, limit, cursor).await,
        Command::List {
            status,
            definition,
            limit,
            cursor,
        } => node.list(status, definition, limit, cursor).await,
        Command::Cancel { id, reason } => node.cancel(&id, reason).await,
        Command::Incidents { action } => match &action {
            Some(IncidentAction::Retry { id }) => node.incidents(Some(("retry", id))).await,
            Some(IncidentAction::Resolve { id }) => node.incidents(Some(("resolve", id))).await,
            None => node.incidents(None).await,
        },
        Command::HumanTasks { assignee, action } => match action {
            Some(HumanAction::Complete { id, payload }) => {
                node.human_tasks(None, Some((&id, simulate::read_input(&payload)?)))
                    .await
            }
            None => node.human_tasks(assignee, None).await,
        },
        Command::Cluster { action } => match action {
            None | Some(ClusterAction::Status) => node.cluster().await,
            Some(ClusterAction::Drain { node: id }) => node.change_membership(id, "drain").await,
            Some(ClusterAction::Remove { node: id }) => node.change_membership(id, "remove").await,
        },
        Command::Validate { .. } | Command::Simulate { .. } => {
            unreachable!("offline commands are handled in main")
        }
    }
}

fn simulate_file(
    file: &std::path::Path,
    input: &str,
    responses: &[String],
    failures: &[String],
    cancel_after: Option<usize>,
) -> anyhow::Result<u8> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let def = definition::load(&text).map_err(|issues| {
        let lines: Vec<String> = issues.iter().map(ToString::to_string).collect();
        anyhow::anyhow!("{} is not valid:\n{}", file.display(), lines.join("\n"))
    })?;
    let mut script = simulate::Script {
        cancel_after,
        ..Default::default()
    };
    for (path, value) in simulate::pairs(responses, "--respond")? {
        let value =
            serde_json::from_str(&value).with_context(|| format!("--respond {path}: not JSON"))?;
        script.responses.insert(path, value);
    }
    script.failures.extend(simulate::pairs(failures, "--fail")?);
    let inst = simulate::run(&def, simulate::read_input(input)?, &script)?;
    println!("status: {}", inst.status.as_str());
    if let Some(output) = &inst.output {
        println!("output: {output}");
    }
    if let Some(error) = &inst.error {
        println!(
            "error: {} ({}) at {}",
            error.code,
            error.message,
            error.step.as_deref().unwrap_or("-")
        );
    }
    Ok(simulate::exit_code(inst.status))
}

/// Validates each file; prints a summary or every error. Returns whether all are valid.
fn validate(files: &[PathBuf], json: bool) -> anyhow::Result<bool> {
    let mut all_ok = true;
    let mut report = Vec::new();
    for file in files {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        let shown = file.display().to_string();
        match definition::load(&text) {
            Ok(def) => {
                if json {
                    report.push(serde_json::json!({"file": shown, "valid": true, "name": def.name, "version": def.version}));
                } else {
                    println!("{shown}: ok: {}", summary(&def));
                }
            }
            Err(issues) => {
                all_ok = false;
                if json {
                    report
                        .push(serde_json::json!({"file": shown, "valid": false, "errors": issues}));
                } else {
                    for issue in &issues {
                        println!("{shown}: {issue}");
                    }
                    eprintln!("{shown}: {} error(s)", issues.len());
                }
            }
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(all_ok)
}

/// `order-fulfillment v1: 6 steps (4 task, 1 parallel, ...)`.
fn summary(def: &Definition) -> String {
    let steps = def.all_steps();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for step in &steps {
        *kinds.entry(step.kind_name()).or_default() += 1;
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    format!(
        "{} v{}: {} steps ({})",
        def.name,
        def.version,
        steps.len(),
        kinds.join(", ")
    )
}

/// `troupe show x | head` closes stdout early; Rust then panics in
/// `println!`. Exit quietly instead, as command-line tools do.
fn quiet_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}
