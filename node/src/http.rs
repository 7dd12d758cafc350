//! The HTTP/JSON listener (axum): routes of brief §4 over [`crate::api`].

use crate::api::{self, ApiError};
use crate::gather;
use crate::workers;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use troupe_actors::Runtime;
use troupe_protocol::ErrorCode;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub runtime: Runtime,
    /// Prometheus exporter.
    pub metrics: PrometheusHandle,
    /// Set once recovery is done and the node serves.
    pub ready: Arc<AtomicBool>,
    /// Node id, for `/v1/cluster`.
    pub node_id: u64,
    /// The other members (a cluster node only).
    pub peers: Option<Arc<crate::cluster::Peers>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body =
            json!({ "code": self.code.as_str(), "message": self.message, "details": self.details });
        let mut response = (status, Json(body)).into_response();
        if self.code.is_retryable() {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

type Reply = Result<Response, ApiError>;

fn ok(status: StatusCode, body: Value) -> Reply {
    Ok((status, Json(body)).into_response())
}

/// A request body within the size limit.
fn body(bytes: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    bytes.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                ErrorCode::PayloadTooLarge,
                "request body is larger than the node's limit",
            )
        } else {
            ApiError::new(ErrorCode::InvalidRequest, rejection.body_text())
        }
    })
}

/// A JSON body of type `T` (an empty body reads as `{}`).
fn json_body<T: DeserializeOwned>(bytes: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body(bytes)?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("invalid JSON body: {e}")))
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.body_text()))
}

/// Builds the router.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/definitions", put(deploy).get(definitions))
        .route("/v1/definitions/{name}", get(definition_versions))
        .route("/v1/definitions/{name}/{version}", get(definition_version))
        .route("/v1/workflows", post(start).get(list))
        .route("/v1/workflows/{id}", get(workflow))
        .route("/v1/workflows/{id}/history", get(history))
        .route("/v1/workflows/{id}/steps", get(steps))
        .route("/v1/workflows/{id}/result", get(result))
        .route("/v1/workflows/{id}/signals/{name}", post(signal))
        .route("/v1/workflows/{id}/cancel", post(cancel))
        .route("/v1/events/{name}", post(publish))
        .route("/v1/human-tasks", get(human_tasks))
        .route("/v1/human-tasks/{id}/complete", post(complete_human_task))
        .route("/v1/incidents", get(incidents))
        .route("/v1/incidents/{id}/retry", post(retry_incident))
        .route("/v1/incidents/{id}/resolve", post(resolve_incident))
        .route("/v1/tasks/poll", post(poll_tasks))
        .route("/v1/tasks/{token}/complete", post(complete_task))
        .route("/v1/tasks/{token}/fail", post(fail_task))
        .route("/v1/tasks/{token}/heartbeat", post(heartbeat_task))
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/digests", get(digests))
        .route("/v1/cluster/join", post(change_membership))
        .route("/v1/cluster/nodes/{node}/drain", post(change_membership))
        .route("/v1/cluster/nodes/{node}/remove", post(change_membership))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_on_leader,
        ))
        .layer(axum::middleware::from_fn(count_request))
        .with_state(state)
}

/// In a cluster, reads of an instance (`GET /v1/workflows/{id}[/...]`) are
/// answered by the leader of its shard, where its state is current and its
/// end is awaited, and so are decisions on human tasks and incidents (their
/// ids name their shard): proxied there in one hop. Other commands need no
/// proxy: the router carries them to the leader.
async fn read_on_leader(
    State(s): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let leader = match &s.peers {
        Some(peers) if !request.headers().contains_key(crate::cluster::FORWARDED) => {
            led_shard(&s, request.method(), request.uri().path())
                .and_then(|shard| peers.leader_elsewhere(shard))
                .map(|leader| (peers.clone(), leader))
        }
        _ => None,
    };
    let Some((peers, leader)) = leader else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return ApiError::new(ErrorCode::InvalidRequest, e.to_string()).into_response(),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    match peers
        .proxy(
            leader,
            method,
            &path_and_query(&parts.uri),
            content_type,
            body,
        )
        .await
    {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// The shard whose leader answers this request, if one does.
fn led_shard(s: &AppState, method: &axum::http::Method, path: &str) -> Option<u32> {
    use axum::http::Method;
    if method == Method::GET {
        return instance_in_path(path).map(|id| s.runtime.router().shard_of(&id));
    }
    if method != Method::POST {
        return None;
    }
    let id_before = |prefix: &str, ends: &[&str]| -> Option<String> {
        let rest = path.strip_prefix(prefix)?;
        let (id, action) = rest.split_once('/')?;
        ends.contains(&action).then(|| id.to_owned())
    };
    if let Some(id) = id_before("/v1/human-tasks/", &["complete"]) {
        return troupe_storage::human_task_shard(&id);
    }
    id_before("/v1/incidents/", &["retry", "resolve"])
        .and_then(|id| troupe_storage::incident_shard(&id))
}

/// The instance id of `/v1/workflows/{id}[/...]`, percent-decoded.
fn instance_in_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v1/workflows/")?;
    let raw = rest.split('/').next().filter(|id| !id.is_empty())?;
    let mut out = Vec::with_capacity(raw.len());
    let bytes = raw.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Counts each request by route (its pattern, never the ids in it) and
/// status class.
async fn count_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics::counter!(crate::metrics::HTTP_REQUESTS_TOTAL, "route" => route, "status" => class)
        .increment(1);
    response
}

async fn deploy(State(s): State<AppState>, bytes: Result<Bytes, BytesRejection>) -> Reply {
    let bytes = body(bytes)?;
    let source = std::str::from_utf8(&bytes)
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "body is not UTF-8"))?;
    let mut view = api::deploy_view(&s.runtime, s.peers.as_deref(), source).await?;
    let created = view
        .as_object_mut()
        .and_then(|o| o.remove("created"))
        .and_then(|c| c.as_bool())
        .unwrap_or(false);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    ok(status, view)
}

async fn definitions(State(s): State<AppState>) -> Reply {
    ok(StatusCode::OK, api::definitions(&s.runtime).await?)
}

async fn definition_versions(State(s): State<AppState>, Path(name): Path<String>) -> Reply {
    ok(
        StatusCode::OK,
        api::definition(&s.runtime, &name, None).await?,
    )
}

async fn definition_version(
    State(s): State<AppState>,
    Path((name, version)): Path<(String, String)>,
) -> Reply {
    let version = version
        .parse()
        .map_err(|_| ApiError::new(ErrorCode::InvalidRequest, "version must be a whole number"))?;
    ok(
        StatusCode::OK,
        api::definition(&s.runtime, &name, Some(version)).await?,
    )
}

async fn start(State(s): State<AppState>, bytes: Result<Bytes, BytesRejection>) -> Reply {
    let (created, view) = api::start(&s.runtime, json_body(bytes)?).await?;
    ok(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        view,
    )
}

/// The peers to gather a cross-shard request from: a cluster node's
/// (unless the request already names its shards).
fn gathering(s: &AppState, shards: &Option<String>) -> Option<Arc<crate::cluster::Peers>> {
    s.peers.clone().filter(|_| shards.is_none())
}

/// The request's path and query, for asking other nodes the same.
fn path_and_query(uri: &axum::http::Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |p| p.as_str().to_owned())
}

async fn list(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    q: Result<Query<api::ListQuery>, QueryRejection>,
) -> Reply {
    let q = query(q)?;
    let Some(peers) = gathering(&s, &q.shards) else {
        return ok(StatusCode::OK, api::list(&s.runtime, q).await?);
    };
    let listing = match q.order.as_deref() {
        Some("newest") => gather::Listing::NewestWorkflows,
        _ => gather::Listing::Workflows,
    };
    let limit = api::list_limit(q.limit);
    let page = gather::list(&peers, listing, &path_and_query(&uri), limit, |shards| {
        api::list(
            &s.runtime,
            api::ListQuery {
                shards: api::shards_param(shards),
                ..q
            },
        )
    })
    .await?;
    ok(StatusCode::OK, page)
}

async fn workflow(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    ok(StatusCode::OK, api::workflow(&s.runtime, &id).await?)
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WaitQuery {
    #[serde(default)]
    wait_ms: u64,
}

async fn result(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Reply {
    let wait = std::time::Duration::from_millis(query(q)?.wait_ms);
    ok(
        StatusCode::OK,
        api::await_workflow(&s.runtime, &id, wait).await?,
    )
}

/// `?cursor=&limit=` of the paginated lists.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    cursor: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Reply {
    let page = query(q)?;
    ok(
        StatusCode::OK,
        api::history(&s.runtime, &id, page.cursor.as_deref(), page.limit).await?,
    )
}

async fn steps(
    State(s): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Reply {
    let page = query(q)?;
    ok(
        StatusCode::OK,
        api::steps(&s.runtime, &id, page.cursor.as_deref(), page.limit).await?,
    )
}

async fn signal(
    State(s): State<AppState>,
    Path((id, name)): Path<(String, String)>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    ok(
        StatusCode::ACCEPTED,
        api::signal(&s.runtime, &id, &name, json_body(bytes)?).await?,
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let body: CancelBody = json_body(bytes)?;
    ok(
        StatusCode::OK,
        api::cancel(&s.runtime, &id, body.reason).await?,
    )
}

/// `?shards=` of the requests that span shards.
#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShardsQuery {
    shards: Option<String>,
}

async fn publish(
    State(s): State<AppState>,
    Path(name): Path<String>,
    q: Result<Query<ShardsQuery>, QueryRejection>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let q = query(q)?;
    let body: Value = json_body(bytes)?;
    let request: api::EventRequest = serde_json::from_value(body.clone())
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("invalid JSON body: {e}")))?;
    let answer = match gathering(&s, &q.shards) {
        Some(peers) => {
            gather::publish(&peers, &name, &body, |shards| {
                api::publish(&s.runtime, &name, request, shards)
            })
            .await?
        }
        None => {
            let shards = api::parse_shards(q.shards.as_deref())?;
            api::publish(&s.runtime, &name, request, shards).await?
        }
    };
    ok(StatusCode::ACCEPTED, answer)
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AssigneeQuery {
    assignee: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
    shards: Option<String>,
}

async fn human_tasks(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    q: Result<Query<AssigneeQuery>, QueryRejection>,
) -> Reply {
    let q = query(q)?;
    let local = |shards| {
        api::human_tasks(
            &s.runtime,
            q.assignee.as_deref(),
            q.cursor.as_deref(),
            q.limit,
            shards,
        )
    };
    let page = match gathering(&s, &q.shards) {
        Some(peers) => {
            let (listing, limit) = (gather::Listing::HumanTasks, api::side_limit(q.limit));
            gather::list(&peers, listing, &path_and_query(&uri), limit, local).await?
        }
        None => local(api::parse_shards(q.shards.as_deref())?).await?,
    };
    ok(StatusCode::OK, page)
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    #[serde(default)]
    payload: Value,
}

async fn complete_human_task(
    State(s): State<AppState>,
    Path(id): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let body: DecisionBody = json_body(bytes)?;
    ok(
        StatusCode::OK,
        api::complete_human_task(&s.runtime, &id, body.payload).await?,
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct IncidentsQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    shards: Option<String>,
}

async fn incidents(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    q: Result<Query<IncidentsQuery>, QueryRejection>,
) -> Reply {
    let q = query(q)?;
    let local = |shards| api::incidents(&s.runtime, q.cursor.as_deref(), q.limit, shards);
    let page = match gathering(&s, &q.shards) {
        Some(peers) => {
            let (listing, limit) = (gather::Listing::Incidents, api::side_limit(q.limit));
            gather::list(&peers, listing, &path_and_query(&uri), limit, local).await?
        }
        None => local(api::parse_shards(q.shards.as_deref())?).await?,
    };
    ok(StatusCode::OK, page)
}

async fn retry_incident(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    ok(
        StatusCode::OK,
        api::settle_incident(&s.runtime, &id, true).await?,
    )
}

async fn resolve_incident(State(s): State<AppState>, Path(id): Path<String>) -> Reply {
    ok(
        StatusCode::OK,
        api::settle_incident(&s.runtime, &id, false).await?,
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PollBody {
    worker: String,
    task_types: Vec<String>,
    #[serde(default = "one")]
    max: u32,
    #[serde(default)]
    wait_ms: u64,
}

fn one() -> u32 {
    1
}

async fn poll_tasks(State(s): State<AppState>, bytes: Result<Bytes, BytesRejection>) -> Reply {
    let body: PollBody = json_body(bytes)?;
    let wait = std::time::Duration::from_millis(body.wait_ms);
    tracing::trace!(worker = %body.worker, "poll");
    let tasks = workers::poll(&s.runtime, body.task_types, body.max, wait).await?;
    let tasks: Vec<Value> = tasks.iter().map(workers::assignment_json).collect();
    ok(StatusCode::OK, json!({ "tasks": tasks }))
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CompleteBody {
    #[serde(default)]
    output: Value,
}

async fn complete_task(
    State(s): State<AppState>,
    Path(token): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let body: CompleteBody = json_body(bytes)?;
    let report = workers::Report::Complete(body.output);
    ok(
        StatusCode::OK,
        workers::report(&s.runtime, &token, report).await?,
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FailBody {
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default = "yes")]
    retryable: bool,
}

fn yes() -> bool {
    true
}

async fn fail_task(
    State(s): State<AppState>,
    Path(token): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let body: FailBody = json_body(bytes)?;
    let report = workers::Report::Fail {
        code: body.code,
        message: body.message,
        retryable: body.retryable,
    };
    ok(
        StatusCode::OK,
        workers::report(&s.runtime, &token, report).await?,
    )
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeartbeatBody {
    progress: Option<Value>,
}

async fn heartbeat_task(
    State(s): State<AppState>,
    Path(token): Path<String>,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let body: HeartbeatBody = json_body(bytes)?;
    let report = workers::Report::Heartbeat(body.progress);
    ok(
        StatusCode::OK,
        workers::report(&s.runtime, &token, report).await?,
    )
}

async fn cluster(State(s): State<AppState>) -> Reply {
    let status = match &s.peers {
        Some(peers) => peers.status(&s.runtime),
        None => api::cluster(&s.runtime, s.node_id),
    };
    ok(StatusCode::OK, status)
}

/// Joins, drains or removes a member (made on the metadata leader).
async fn change_membership(
    State(s): State<AppState>,
    uri: axum::http::Uri,
    bytes: Result<Bytes, BytesRejection>,
) -> Reply {
    let Some(peers) = &s.peers else {
        return Err(ApiError::new(
            ErrorCode::InvalidState,
            "this node is not in a cluster: membership does not change",
        ));
    };
    let body: Value = json_body(bytes)?;
    ok(StatusCode::OK, peers.change(uri.path(), body).await?)
}

/// A digest of each shard's state on this node, to compare replicas.
async fn digests(State(s): State<AppState>) -> Reply {
    let store = s.runtime.services.store.clone();
    let digests = tokio::task::spawn_blocking(move || {
        (0..store.shards())
            .map(|shard| store.shard_digest(shard).map(|d| format!("{d:016x}")))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))??;
    ok(StatusCode::OK, json!({ "shards": digests }))
}

async fn metrics(State(s): State<AppState>) -> Response {
    if let Ok(memory) = s.runtime.services.store.memory() {
        troupe_storage::metrics::record_memory(&memory);
    }
    if let Ok(work) = s.runtime.services.store.background_work() {
        troupe_storage::metrics::record_background_work(&work);
    }
    let mut response = s.metrics.render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

async fn readyz(State(s): State<AppState>) -> Reply {
    if s.ready.load(Ordering::Acquire) {
        ok(StatusCode::OK, json!({"ready": true}))
    } else {
        Err(ApiError::new(ErrorCode::Unavailable, "node is starting"))
    }
}
