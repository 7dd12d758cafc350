//! Commands that talk to a node over its HTTP API.

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// A node's HTTP API.
pub struct Remote {
    base: String,
    client: reqwest::Client,
    json: bool,
}

impl Remote {
    /// `addr` is `host:port` or a URL; `json` prints raw JSON.
    pub fn new(addr: &str, json: bool) -> Self {
        let base = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_owned()
        } else {
            format!("http://{addr}")
        };
        Self {
            base: base.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            json,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<String>,
    ) -> anyhow::Result<Value> {
        // `unavailable` (a shard electing a leader) and `overloaded` answers
        // are retried for up to about ten seconds, backing off to 1 s.
        let mut delay = std::time::Duration::from_millis(100);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let (status, value) = loop {
            let mut request = self
                .client
                .request(method.clone(), format!("{}{path}", self.base));
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let response = request
                .send()
                .await
                .with_context(|| format!("cannot reach a node at {}", self.base))?;
            let status = response.status();
            let text = response.text().await?;
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
            let retryable = status.as_u16() == 503 || status.as_u16() == 429;
            if !retryable || std::time::Instant::now() >= deadline {
                break (status, value);
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(std::time::Duration::from_secs(1));
        };
        if !status.is_success() {
            let details = match &value["details"]["errors"] {
                Value::Array(errors) => errors
                    .iter()
                    .map(|e| {
                        format!(
                            "\n  {}: {}",
                            e["path"].as_str().unwrap_or(""),
                            e["message"].as_str().unwrap_or("")
                        )
                    })
                    .collect(),
                _ => String::new(),
            };
            bail!(
                "{} ({}): {}{details}",
                value["code"].as_str().unwrap_or("error"),
                status.as_u16(),
                value["message"].as_str().unwrap_or("")
            );
        }
        Ok(value)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value)) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            human(value);
        }
    }

    /// `troupe deploy FILE`.
    pub async fn deploy(&self, source: String) -> anyhow::Result<()> {
        let v = self
            .call(reqwest::Method::PUT, "/v1/definitions", Some(source))
            .await?;
        self.print(&v, |v| {
            println!(
                "deployed {} v{}",
                v["name"].as_str().unwrap_or(""),
                v["version"]
            )
        });
        Ok(())
    }

    /// `troupe start DEFINITION`.
    pub async fn start(
        &self,
        definition: &str,
        version: Option<u32>,
        id: Option<String>,
        input: Value,
    ) -> anyhow::Result<()> {
        let body = json!({"definition": definition, "version": version, "id": id, "input": input});
        let v = self
            .call(
                reqwest::Method::POST,
                "/v1/workflows",
                Some(body.to_string()),
            )
            .await?;
        self.print(&v, |v| {
            println!(
                "{} {} ({} v{})",
                v["id"].as_str().unwrap_or(""),
                v["status"].as_str().unwrap_or(""),
                v["definition"].as_str().unwrap_or(""),
                v["version"]
            )
        });
        Ok(())
    }

    /// `troupe signal ID NAME`.
    pub async fn signal(
        &self,
        id: &str,
        name: &str,
        signal_id: Option<String>,
        payload: Value,
    ) -> anyhow::Result<()> {
        let body = json!({"id": signal_id, "payload": payload});
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/workflows/{}/signals/{}", enc(id), enc(name)),
                Some(body.to_string()),
            )
            .await?;
        self.print(&v, |v| {
            if v["duplicate"] == true {
                println!(
                    "signal {} was already delivered",
                    v["id"].as_str().unwrap_or("")
                );
            } else {
                println!("signal {} delivered", v["id"].as_str().unwrap_or(""));
            }
        });
        Ok(())
    }

    /// `troupe show ID`: the instance, its steps and its history.
    pub async fn show(&self, id: &str) -> anyhow::Result<()> {
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/workflows/{}", enc(id)),
                None,
            )
            .await?;
        let h = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/workflows/{}/history", enc(id)),
                None,
            )
            .await?;
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"workflow": v, "history": h}))?
            );
            return Ok(());
        }
        println!(
            "{}  {} v{}  {}",
            v["id"].as_str().unwrap_or(""),
            v["definition"].as_str().unwrap_or(""),
            v["version"],
            v["status"].as_str().unwrap_or("")
        );
        println!(
            "created {}  updated {}",
            v["created_at"].as_str().unwrap_or(""),
            v["updated_at"].as_str().unwrap_or("")
        );
        if !v["error"].is_null() {
            println!(
                "error   {}: {}",
                v["error"]["code"].as_str().unwrap_or(""),
                v["error"]["message"].as_str().unwrap_or("")
            );
        }
        if !v["output"].is_null() {
            println!("output  {}", v["output"]);
        }
        println!("\nSTEPS");
        step_table(&v["steps"]);
        if let Some(counts) = v["step_counts"].as_object() {
            let counts: Vec<String> = counts.iter().map(|(k, n)| format!("{n} {k}")).collect();
            println!("runs: {}", counts.join(", "));
        }
        if let Some(omitted) = v["steps_omitted"].as_u64().filter(|n| *n > 0) {
            println!("({omitted} more runs not shown: troupe steps {id})");
        }
        println!("\nHISTORY");
        history_lines(&h, id);
        Ok(())
    }

    /// `troupe history ID`: one page of an instance's events.
    pub async fn history(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> anyhow::Result<()> {
        let path = page_path(id, "history", limit, cursor);
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        self.print(&v, |v| history_lines(v, id));
        Ok(())
    }

    /// `troupe steps ID`: one page of step runs.
    pub async fn steps(
        &self,
        id: &str,
        limit: usize,
        cursor: Option<String>,
    ) -> anyhow::Result<()> {
        let path = page_path(id, "steps", limit, cursor);
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        self.print(&v, |v| {
            step_table(&v["steps"]);
            if let Some(next) = v["next_cursor"].as_str() {
                println!("next page: --cursor {next}");
            }
        });
        Ok(())
    }

    /// `troupe list`.
    pub async fn list(
        &self,
        status: Option<String>,
        definition: Option<String>,
        limit: usize,
        cursor: Option<String>,
    ) -> anyhow::Result<()> {
        let mut query = vec![format!("limit={limit}")];
        query.extend(status.map(|s| format!("status={}", enc(&s))));
        query.extend(definition.map(|d| format!("definition={}", enc(&d))));
        query.extend(cursor.map(|c| format!("cursor={}", enc(&c))));
        let v = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/workflows?{}", query.join("&")),
                None,
            )
            .await?;
        self.print(&v, |v| {
            let rows: Vec<Vec<String>> = v["workflows"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|w| {
                    vec![
                        text(&w["id"]),
                        format!("{} v{}", text(&w["definition"]), w["version"]),
                        text(&w["status"]),
                        text(&w["updated_at"]),
                    ]
                })
                .collect();
            table(&["ID", "DEFINITION", "STATUS", "UPDATED"], &rows);
            if let Some(next) = v["next_cursor"].as_str() {
                println!("more: --cursor {next}");
            }
        });
        Ok(())
    }

    /// `troupe cancel ID`.
    pub async fn cancel(&self, id: &str, reason: Option<String>) -> anyhow::Result<()> {
        let v = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/workflows/{}/cancel", enc(id)),
                Some(json!({"reason": reason}).to_string()),
            )
            .await?;
        self.print(&v, |v| {
            println!("{} {}", text(&v["id"]), text(&v["status"]))
        });
        Ok(())
    }

    /// `troupe incidents [retry|resolve ID]`.
    pub async fn incidents(&self, action: Option<(&str, &str)>) -> anyhow::Result<()> {
        if let Some((verb, id)) = action {
            let v = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/incidents/{}/{verb}", enc(id)),
                    Some("{}".into()),
                )
                .await?;
            self.print(&v, |v| {
                println!("{} is now {}", text(&v["id"]), text(&v["status"]))
            });
            return Ok(());
        }
        let v = self
            .call(reqwest::Method::GET, "/v1/incidents", None)
            .await?;
        self.print(&v, |v| {
            let rows: Vec<Vec<String>> = v["incidents"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|i| {
                    vec![
                        text(&i["id"]),
                        text(&i["workflow_id"]),
                        text(&i["step"]),
                        text(&i["error"]["code"]),
                        text(&i["opened_at"]),
                    ]
                })
                .collect();
            table(&["ID", "WORKFLOW", "STEP", "ERROR", "OPENED"], &rows);
        });
        Ok(())
    }

    /// `troupe human-tasks [--assignee A]` and `troupe human-tasks complete ID`.
    pub async fn human_tasks(
        &self,
        assignee: Option<String>,
        complete: Option<(&str, Value)>,
    ) -> anyhow::Result<()> {
        if let Some((id, payload)) = complete {
            let body = json!({"payload": payload}).to_string();
            let v = self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/human-tasks/{}/complete", enc(id)),
                    Some(body),
                )
                .await?;
            self.print(&v, |v| {
                println!("{} is now {}", text(&v["id"]), text(&v["status"]))
            });
            return Ok(());
        }
        let path = match assignee {
            Some(a) => format!("/v1/human-tasks?assignee={}", enc(&a)),
            None => "/v1/human-tasks".to_owned(),
        };
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        self.print(&v, |v| {
            let rows: Vec<Vec<String>> = v["human_tasks"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    vec![
                        text(&t["id"]),
                        text(&t["assignee"]),
                        text(&t["workflow_id"]),
                        text(&t["step"]),
                        t["input"].to_string(),
                    ]
                })
                .collect();
            table(&["ID", "ASSIGNEE", "WORKFLOW", "STEP", "INPUT"], &rows);
        });
        Ok(())
    }

    /// `troupe cluster`: nodes, then which node leads each shard.
    pub async fn cluster(&self) -> anyhow::Result<()> {
        let v = self.call(reqwest::Method::GET, "/v1/cluster", None).await?;
        self.print(&v, |v| {
            let rows: Vec<Vec<String>> = v["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let state = if n["state"].is_null() {
                        &n["status"]
                    } else {
                        &n["state"]
                    };
                    vec![
                        n["id"].to_string(),
                        text(state),
                        text(&n["http_addr"]),
                        text(&n["native_addr"]),
                        text(&n["replicas"]),
                        text(&n["leads"]),
                    ]
                })
                .collect();
            table(
                &["NODE", "STATE", "HTTP", "NATIVE", "REPLICAS", "LEADS"],
                &rows,
            );
            let shards: Vec<Vec<String>> = v["shards"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let replicas: Vec<String> = s["replicas"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|r| r.to_string())
                        .collect();
                    vec![
                        s["id"].to_string(),
                        text(&s["leader"]),
                        replicas.join(","),
                        s["term"].to_string(),
                    ]
                })
                .collect();
            if !shards.is_empty() {
                println!();
                table(&["SHARD", "LEADER", "REPLICAS", "TERM"], &shards);
            }
            let moves: Vec<Vec<String>> = v["moves_in_progress"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|m| {
                    let nodes = |v: &Value| -> String {
                        let ids: Vec<String> = v
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|n| n.to_string())
                            .collect();
                        ids.join(",")
                    };
                    vec![m["shard"].to_string(), nodes(&m["from"]), nodes(&m["to"])]
                })
                .collect();
            if !moves.is_empty() {
                println!();
                table(&["MOVING SHARD", "REPLICAS NOW", "PLACED ON"], &moves);
            }
            if !v["epoch"].is_null() {
                println!(
                    "\ncluster map epoch {}; metadata group led by node {} (term {})",
                    v["epoch"],
                    text(&v["metadata"]["leader"]),
                    v["metadata"]["term"]
                );
            }
        });
        Ok(())
    }
}

impl Remote {
    /// Drains or removes node `node` (`action`).
    pub async fn change_membership(&self, node: u64, action: &str) -> anyhow::Result<()> {
        let path = format!("/v1/cluster/nodes/{node}/{action}");
        let v = self
            .call(reqwest::Method::POST, &path, Some("{}".into()))
            .await?;
        self.print(&v, |v| {
            println!(
                "node {node}: {action} accepted; cluster map epoch {}",
                v["epoch"]
            );
            println!("follow it with `troupe cluster status`");
        });
        Ok(())
    }
}

fn text(v: &Value) -> String {
    v.as_str().map_or_else(
        || {
            if v.is_null() {
                String::new()
            } else {
                v.to_string()
            }
        },
        str::to_owned,
    )
}

/// Percent-encodes a path or query component.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Prints rows under headers, columns padded to fit.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count()).min(60);
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| (*h).to_owned()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// Step runs (`[{path, status, attempts, error}]`) as a table.
fn step_table(steps: &Value) {
    let rows: Vec<Vec<String>> = steps
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            vec![
                text(&s["path"]),
                text(&s["status"]),
                s["attempts"].to_string(),
                s["error"]["code"].as_str().unwrap_or("").to_owned(),
            ]
        })
        .collect();
    table(&["PATH", "STATUS", "ATTEMPTS", "ERROR"], &rows);
}

/// A page of history events, a line each, and how to get the next page.
fn history_lines(page: &Value, id: &str) {
    for e in page["events"].as_array().into_iter().flatten() {
        let step = e["step"]
            .as_str()
            .map(|s| format!(" {s}"))
            .unwrap_or_default();
        let attempt = e["attempt"]
            .as_u64()
            .map(|a| format!("#{a}"))
            .unwrap_or_default();
        let code = e["error"]["code"]
            .as_str()
            .map(|c| format!(" ({c})"))
            .unwrap_or_default();
        println!(
            "{:>4}  {}  {}{step}{attempt}{code}",
            e["seq"],
            text(&e["at"]),
            text(&e["type"])
        );
    }
    if let Some(next) = page["next_cursor"].as_str() {
        println!("(more events: troupe history {id} --cursor {next})");
    }
}

/// `/v1/workflows/{id}/{list}?limit=&cursor=`.
fn page_path(id: &str, list: &str, limit: usize, cursor: Option<String>) -> String {
    let mut path = format!("/v1/workflows/{}/{list}?limit={limit}", enc(id));
    if let Some(cursor) = cursor {
        path.push_str(&format!("&cursor={}", enc(&cursor)));
    }
    path
}
