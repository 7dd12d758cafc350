//! `troupe`: the command-line interface.
//!
//! Today it validates definitions offline (`troupe validate FILE...`); the
//! commands that talk to a node arrive with the node's API.

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files, json } => match validate(&files, json) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::from(2)
            }
        },
    }
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
