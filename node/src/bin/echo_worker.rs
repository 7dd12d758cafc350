//! `troupe-echo-worker`: a stand-in worker for drills and demos. It serves
//! the task types it is given over the native protocol and answers each
//! task with `{by, attempt, key}` (its pid, the attempt, the idempotency
//! key). `--fail TYPE@POINTER=VALUE:CODE` fails, for good, the tasks of
//! TYPE whose input has VALUE at the JSON pointer; `--hang` takes tasks and never answers (a
//! stuck worker, to kill). Every task taken is printed as
//! `task <type> <token> <attempt>`.
//!
//! ```sh
//! troupe-echo-worker --addr 127.0.0.1:7070 payments.charge inventory.reserve
//! ```

use clap::Parser;
use serde_json::{Value, json};
use std::io::Write;
use troupe_client::{Client, Task, TaskError, Worker};

#[derive(Parser)]
#[command(name = "troupe-echo-worker", about = "A stand-in worker that echoes")]
struct Args {
    /// Native address of the node.
    #[arg(long, default_value = "127.0.0.1:7070")]
    addr: String,
    /// Worker name.
    #[arg(long, default_value = "echo")]
    name: String,
    /// Tasks run at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Take tasks and never answer.
    #[arg(long)]
    hang: bool,
    /// `TYPE@POINTER=VALUE:CODE`: fail tasks of TYPE whose input has VALUE at POINTER.
    #[arg(long)]
    fail: Option<String>,
    /// Task types served.
    #[arg(required = true)]
    task_types: Vec<String>,
}

/// A rule for failing tasks.
#[derive(Clone)]
struct FailRule {
    task_type: String,
    pointer: String,
    value: String,
    code: String,
}

fn parse_rule(text: &str) -> Option<FailRule> {
    let (task_type, rest) = text.split_once('@')?;
    let (pointer, rest) = rest.split_once('=')?;
    let (value, code) = rest.rsplit_once(':')?;
    Some(FailRule {
        task_type: task_type.into(),
        pointer: pointer.into(),
        value: value.into(),
        code: code.into(),
    })
}

async fn answer(task: Task, hang: bool, fail: Option<FailRule>) -> Result<Value, TaskError> {
    let line = format!("task {} {} {}\n", task.task_type, task.token, task.attempt);
    let _ = std::io::stdout().lock().write_all(line.as_bytes());
    let _ = std::io::stdout().flush();
    if hang {
        std::future::pending::<()>().await;
    }
    if let Some(rule) = fail
        && rule.task_type == task.task_type
        && task.input.pointer(&rule.pointer).and_then(Value::as_str) == Some(rule.value.as_str())
    {
        let message = format!("{} is {}", rule.pointer, rule.value);
        return Err(TaskError::permanent(rule.code, message));
    }
    Ok(json!({"by": std::process::id(), "attempt": task.attempt, "key": task.idempotency_key}))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fail = match &args.fail {
        Some(text) => Some(parse_rule(text).ok_or_else(|| {
            anyhow::anyhow!(
                "--fail takes TYPE@POINTER=VALUE:CODE, e.g. shipping.dispatch@/customer/address=nowhere:address_invalid"
            )
        })?),
        None => None,
    };
    let client = Client::connect(args.addr.clone()).await?;
    let mut worker = Worker::new(&client, &args.name).concurrency(args.concurrency);
    for task_type in &args.task_types {
        let (hang, fail) = (args.hang, fail.clone());
        worker = worker.handle(task_type, move |task| answer(task, hang, fail.clone()));
    }
    worker.run().await?;
    Ok(())
}
