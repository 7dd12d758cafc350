//! `troupe`: the command-line interface.
//!
//! Offline commands: `troupe validate FILE...` checks definitions, and
//! `troupe simulate FILE` dry-runs one through the engine. The commands that
//! talk to a node arrive with the node's API.

mod simulate;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use troupe_actors::definition::{self, Definition};

#[derive(Parser)]
#[command(name = "troupe", version, about = "Troupe workflow orchestration CLI")]
struct Cli {
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
        /// Print a JSON report instead of text.
        #[arg(long)]
        json: bool,
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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Validate { files, json } => {
            validate(&files, json).map(|ok| if ok { 0 } else { 1 })
        }
        Command::Simulate {
            file,
            input,
            responses,
            failures,
            cancel_after,
        } => simulate_file(&file, &input, &responses, &failures, cancel_after),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
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
