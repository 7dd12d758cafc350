//! A local HTTP server standing in for the outside world: services that
//! succeed, fail a few times, fail for good, and a log of every call.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::any;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// One call the world received.
#[derive(Debug, Clone)]
pub struct Call {
    pub path: String,
    pub idempotency_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    failures_left: HashMap<String, u32>,
}

/// The running world.
#[derive(Clone)]
pub struct World {
    pub base: String,
    inner: Arc<Mutex<Inner>>,
}

impl World {
    /// Starts the server on a free loopback port.
    pub async fn start() -> Self {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/ok/{name}", any(ok))
            .route("/flaky/{name}/{times}", any(flaky))
            .route("/status/{code}/{name}", any(status))
            .route("/slow/{name}", any(slow))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, inner }
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Paths of calls whose body has `"wf": wf`, in order.
    pub fn calls_for(&self, wf: &str) -> Vec<String> {
        self.calls()
            .into_iter()
            .filter(|c| c.body["wf"] == wf)
            .map(|c| c.path)
            .collect()
    }
}

fn record(inner: &Mutex<Inner>, path: String, headers: &HeaderMap, body: &str) {
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    let idempotency_key = headers
        .get("idempotency-key")
        .map(|v| v.to_str().unwrap().to_owned());
    inner.lock().unwrap().calls.push(Call {
        path,
        idempotency_key,
        body,
    });
}

async fn ok(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    record(&inner, format!("/ok/{name}"), &headers, &body);
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    (
        StatusCode::OK,
        json!({"service": name, "key": key, "id": format!("{name}-1")}).to_string(),
    )
}

/// Answers 200 after a minute (a task that is still running when its
/// instance rolls back).
async fn slow(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    record(&inner, format!("/slow/{name}"), &headers, &body);
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    (StatusCode::OK, json!({"service": name}).to_string())
}

/// Fails with 503 the first `times` calls per (name, body.wf), then succeeds.
async fn flaky(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((name, times)): Path<(String, u32)>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    record(&inner, format!("/flaky/{name}"), &headers, &body);
    let wf = serde_json::from_str::<Value>(&body)
        .ok()
        .and_then(|b| b["wf"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut guard = inner.lock().unwrap();
    let left = guard
        .failures_left
        .entry(format!("{name}/{wf}"))
        .or_insert(times);
    if *left > 0 {
        *left -= 1;
        return (StatusCode::SERVICE_UNAVAILABLE, "try later".into());
    }
    (StatusCode::OK, json!({"service": name}).to_string())
}

async fn status(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((code, name)): Path<(u16, String)>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    record(&inner, format!("/status/{code}/{name}"), &headers, &body);
    (
        StatusCode::from_u16(code).unwrap(),
        json!({"error": name}).to_string(),
    )
}
