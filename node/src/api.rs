//! The operations of the public API, independent of transport: the HTTP
//! listener (and later the native protocol) are thin layers over these.

use crate::runtime::{Applied, Command, Failure, Runtime, view};
use crate::store::{DefinitionRecord, Op, keys};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::sync::atomic::{AtomicU64, Ordering};
use troupe_actors::definition;
use troupe_actors::engine::{EventKind, InstanceStatus};
use troupe_protocol::{ErrorCode, shard_of, stable_hash};

/// An API error: a stable code, a message and optional details.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable message.
    pub message: String,
    /// Structured details (e.g. every validation error).
    pub details: Json,
}

impl ApiError {
    /// An error without details.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Json::Null,
        }
    }
}

impl From<Failure> for ApiError {
    fn from(f: Failure) -> Self {
        Self::new(f.code, f.message)
    }
}

impl From<crate::store::Error> for ApiError {
    fn from(e: crate::store::Error) -> Self {
        Failure::from(e).into()
    }
}

/// API result.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::WorkflowNotFound, format!("no workflow {id:?}"))
}

/// Deploys a definition document; `Ok(true)` when it is new.
pub fn deploy(rt: &Runtime, source: &str) -> Result<(bool, DefinitionRecord)> {
    let def = definition::load(source).map_err(|issues| ApiError {
        code: ErrorCode::InvalidDefinition,
        message: format!("definition has {} error(s)", issues.len()),
        details: json!({ "errors": issues }),
    })?;
    let store = &rt.services.store;
    if let Some(existing) = store.definition(&def.name, def.version)? {
        if existing.source == source {
            return Ok((false, existing));
        }
        return Err(ApiError::new(
            ErrorCode::DefinitionConflict,
            format!(
                "{} v{} is already deployed with other content; deploy a new version",
                def.name, def.version
            ),
        ));
    }
    let record = DefinitionRecord {
        name: def.name.clone(),
        version: def.version,
        source: source.to_owned(),
        deployed_at: crate::runtime::now_millis(),
    };
    store.write_now(vec![Op::put(
        keys::DEFINITIONS,
        keys::definition(&def.name, def.version),
        &record,
    )])?;
    rt.services.definitions.deployed(&def.name, def.version);
    Ok((true, record))
}

/// Definition metadata (without the source).
pub fn definition_summary(d: &DefinitionRecord) -> Json {
    json!({"name": d.name, "version": d.version, "deployed_at": view::time(d.deployed_at)})
}

/// Every deployed definition version.
pub fn definitions(rt: &Runtime) -> Result<Json> {
    let all: Vec<Json> = rt
        .services
        .store
        .definitions()?
        .iter()
        .map(definition_summary)
        .collect();
    Ok(json!({ "definitions": all }))
}

/// Versions of one definition, or one version with its source.
pub fn definition(rt: &Runtime, name: &str, version: Option<u32>) -> Result<Json> {
    let store = &rt.services.store;
    let missing = || {
        ApiError::new(
            ErrorCode::DefinitionNotFound,
            format!("no definition {name:?}"),
        )
    };
    match version {
        Some(v) => {
            let d = store.definition(name, v)?.ok_or_else(missing)?;
            let mut out = definition_summary(&d);
            out["source"] = json!(d.source);
            Ok(out)
        }
        None => {
            let versions = store.definition_versions(name)?;
            if versions.is_empty() {
                return Err(missing());
            }
            Ok(
                json!({ "name": name, "versions": versions.iter().map(definition_summary).collect::<Vec<_>>() }),
            )
        }
    }
}

/// `POST /v1/workflows` body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// Definition name.
    pub definition: String,
    /// Version; the latest when absent.
    pub version: Option<u32>,
    /// Instance id; generated when absent.
    pub id: Option<String>,
    /// Input.
    #[serde(default)]
    pub input: Json,
}

/// Checks a caller-chosen instance id.
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() || id.len() > 200 || id.chars().any(char::is_control) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "id must be 1-200 characters without control characters",
        ));
    }
    Ok(())
}

fn generated_id(definition: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let hash = stable_hash(format!("{nanos}/{n}/{}", std::process::id()).as_bytes());
    format!("{definition}-{hash:016x}")
}

/// Starts (idempotently) an instance; `Ok(true)` when it was created now.
pub async fn start(rt: &Runtime, request: StartRequest) -> Result<(bool, Json)> {
    let services = &rt.services;
    services.admit_new_work()?;
    let version = match request.version {
        Some(v) => v,
        None => services
            .definitions
            .latest(&services.store, &request.definition)?
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::DefinitionNotFound,
                    format!("no definition {:?}", request.definition),
                )
            })?,
    };
    let def = services
        .definitions
        .get(&services.store, &request.definition, version)?
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::DefinitionNotFound,
                format!("no definition {:?} v{version}", request.definition),
            )
        })?;
    let id = match request.id {
        Some(id) => {
            check_id(&id)?;
            id
        }
        None => generated_id(&def.name),
    };
    let applied = rt
        .router()
        .call(
            &id,
            Command::Start {
                definition: def,
                input: request.input,
                parent: None,
            },
        )
        .await?;
    match applied {
        Applied::Started { created, view } => Ok((created, view)),
        other => Ok((matches!(other, Applied::Done), workflow(rt, &id)?)),
    }
}

/// An instance as stored (its last durable state).
pub fn workflow(rt: &Runtime, id: &str) -> Result<Json> {
    let record = rt
        .services
        .store
        .instance(id)?
        .ok_or_else(|| not_found(id))?;
    Ok(view::instance(&record.state))
}

/// An instance's journal.
pub fn history(rt: &Runtime, id: &str) -> Result<Json> {
    if rt.services.store.instance(id)?.is_none() {
        return Err(not_found(id));
    }
    let shard = shard_of(id, rt.services.settings.shards);
    Ok(view::history(&rt.services.store.history(shard, id)?))
}

/// Listing filters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this status.
    pub status: Option<String>,
    /// Only this definition.
    pub definition: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// Continue after this id.
    pub cursor: Option<String>,
}

/// Instances in id order, filtered, one page at a time.
pub fn list(rt: &Runtime, query: ListQuery) -> Result<Json> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let mut cursor = query.cursor.clone();
    let mut out = Vec::new();
    let mut exhausted = false;
    while out.len() < limit {
        let page = rt.services.store.instances(cursor.as_deref(), 1000)?;
        let Some(last) = page.last() else {
            exhausted = true;
            break;
        };
        cursor = Some(last.state.id.clone());
        for record in page {
            let s = &record.state;
            let wanted = query
                .status
                .as_deref()
                .is_none_or(|st| st == s.status.as_str())
                && query
                    .definition
                    .as_deref()
                    .is_none_or(|d| d == s.definition);
            if wanted {
                out.push(view::summary(s));
                if out.len() == limit {
                    cursor = Some(s.id.clone());
                    break;
                }
            }
        }
    }
    let next = if exhausted { None } else { cursor };
    Ok(json!({ "workflows": out, "next_cursor": next }))
}

/// Signal body.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalRequest {
    /// Deduplication id; generated when absent (no deduplication then).
    pub id: Option<String>,
    /// Payload.
    #[serde(default)]
    pub payload: Json,
}

/// Sends a signal to an instance.
pub async fn signal(rt: &Runtime, id: &str, name: &str, request: SignalRequest) -> Result<Json> {
    let signal_id = request.id.unwrap_or_else(|| generated_id("signal"));
    let event = EventKind::Signal {
        id: signal_id.clone(),
        name: name.to_owned(),
        payload: request.payload,
    };
    let applied = rt.router().call(id, Command::Event(event)).await?;
    Ok(json!({ "id": signal_id, "duplicate": matches!(applied, Applied::Ignored(_)) }))
}

/// Cancels an instance (rolling back completed steps).
pub async fn cancel(rt: &Runtime, id: &str, reason: Option<String>) -> Result<Json> {
    let reason = reason.unwrap_or_else(|| "cancelled through the API".into());
    match rt
        .router()
        .call(id, Command::Event(EventKind::CancelRequested { reason }))
        .await?
    {
        Applied::Ignored(why) => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("cannot cancel: {why}"),
        )),
        _ => workflow(rt, id),
    }
}

/// Published event body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventRequest {
    /// Deduplication id.
    pub id: String,
    /// Correlation key matched against await steps' `correlation`.
    pub correlation_key: Option<String>,
    /// Payload.
    #[serde(default)]
    pub payload: Json,
}

/// Publishes an event: every instance awaiting `name` with this correlation resumes.
pub async fn publish(rt: &Runtime, name: &str, request: EventRequest) -> Result<Json> {
    let store = &rt.services.store;
    if store.event_seen(&request.id)? {
        return Ok(json!({ "id": request.id, "duplicate": true, "delivered": 0 }));
    }
    let waiting = store.subscribers(name, request.correlation_key.as_deref())?;
    let mut delivered = 0;
    for instance in &waiting {
        let event = EventKind::Signal {
            id: request.id.clone(),
            name: name.to_owned(),
            payload: request.payload.clone(),
        };
        if let Applied::Done = rt.router().call(instance, Command::Event(event)).await? {
            delivered += 1;
        }
    }
    store.write_now(vec![Op::put(keys::EVENTS_SEEN, request.id.as_bytes(), &())])?;
    Ok(json!({ "id": request.id, "duplicate": false, "delivered": delivered }))
}

/// Open human tasks, optionally for one assignee.
pub fn human_tasks(rt: &Runtime, assignee: Option<&str>) -> Result<Json> {
    let tasks: Vec<Json> = rt
        .services
        .store
        .human_tasks()?
        .into_iter()
        .filter(|t| assignee.is_none_or(|a| a == t.assignee))
        .map(|t| {
            json!({"id": t.id, "workflow_id": t.instance, "step": t.path, "assignee": t.assignee,
                   "input": t.input, "escalated": t.escalated, "created_at": view::time(t.created_at)})
        })
        .collect();
    Ok(json!({ "human_tasks": tasks }))
}

/// Completes a human task with a decision.
pub async fn complete_human_task(rt: &Runtime, task_id: &str, payload: Json) -> Result<Json> {
    let task = rt.services.store.human_task(task_id)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::TaskNotFound,
            format!("no open human task {task_id:?}"),
        )
    })?;
    let event = EventKind::HumanCompleted {
        path: task.path.clone(),
        payload,
    };
    match rt
        .router()
        .call(&task.instance, Command::Event(event))
        .await?
    {
        Applied::Ignored(why) => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("human task is closed: {why}"),
        )),
        _ => workflow(rt, &task.instance),
    }
}

/// Open incidents.
pub fn incidents(rt: &Runtime) -> Result<Json> {
    let incidents: Vec<Json> = rt
        .services
        .store
        .incidents()?
        .into_iter()
        .map(|i| json!({"id": i.id, "workflow_id": i.instance, "step": i.path, "error": i.error, "opened_at": view::time(i.opened_at)}))
        .collect();
    Ok(json!({ "incidents": incidents }))
}

/// Retries (`retry == true`) or resolves an incident.
pub async fn settle_incident(rt: &Runtime, incident_id: &str, retry: bool) -> Result<Json> {
    let incident = rt.services.store.incident(incident_id)?.ok_or_else(|| {
        ApiError::new(
            ErrorCode::IncidentNotFound,
            format!("no open incident {incident_id:?}"),
        )
    })?;
    let path = incident.path.clone();
    let event = if retry {
        EventKind::IncidentRetried { path }
    } else {
        EventKind::IncidentResolved { path }
    };
    match rt
        .router()
        .call(&incident.instance, Command::Event(event))
        .await?
    {
        Applied::Ignored(why) => Err(ApiError::new(
            ErrorCode::InvalidState,
            format!("incident is closed: {why}"),
        )),
        _ => workflow(rt, &incident.instance),
    }
}

/// The cluster as this node sees it.
pub fn cluster(rt: &Runtime, node_id: u64) -> Json {
    let shards = rt.services.settings.shards;
    json!({"nodes": [{"id": node_id, "status": "up", "shards": shards}], "shards": shards})
}

/// An instance's view once it has ended, waiting up to `wait` for that; the
/// view says `status` either way.
pub async fn await_workflow(rt: &Runtime, id: &str, wait: std::time::Duration) -> Result<Json> {
    let ended = rt.services.finished.wait(id);
    let view = workflow(rt, id)?;
    let terminal = serde_json::from_value::<InstanceStatus>(view["status"].clone())
        .is_ok_and(InstanceStatus::is_terminal);
    if terminal || wait.is_zero() {
        rt.services.finished.forget_closed(id);
        return Ok(view);
    }
    let waited = tokio::time::timeout(wait.min(std::time::Duration::from_secs(60)), ended).await;
    rt.services.finished.forget_closed(id);
    match waited {
        Ok(Ok(view)) => Ok(view),
        _ => workflow(rt, id),
    }
}
