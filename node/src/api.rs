//! The operations of the public API, independent of transport: the HTTP
//! listener (and later the native protocol) are thin layers over these.

use serde::Deserialize;
use serde_json::{Value as Json, json};
use std::sync::atomic::{AtomicU64, Ordering};
use troupe_actors::{Applied, Command, Runtime, Services, view};
use troupe_engine::definition;
use troupe_engine::engine::{EventKind, InstanceStatus, StepRun};
use troupe_protocol::{ErrorCode, stable_hash};
use troupe_storage::{DefinitionRecord, InstanceHead, ListOrder, Store};

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

    /// The same error with structured details.
    pub fn with_details(mut self, details: Json) -> Self {
        self.details = details;
        self
    }
}

impl ApiError {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, ErrorCode::Unavailable | ErrorCode::Overloaded)
    }
}

impl From<troupe_actors::Error> for ApiError {
    fn from(e: troupe_actors::Error) -> Self {
        Self::new(e.code, e.message)
    }
}

impl From<troupe_storage::Error> for ApiError {
    fn from(e: troupe_storage::Error) -> Self {
        troupe_actors::Error::from(e).into()
    }
}

/// Runs a storage scan (or synced write) on the blocking pool, off the
/// async workers.
async fn blocking<T: Send + 'static>(
    rt: &Runtime,
    read: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = rt.services.store.clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("storage task failed: {e}")))?
}

/// API result.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

fn not_found(id: &str) -> ApiError {
    ApiError::new(ErrorCode::WorkflowNotFound, format!("no workflow {id:?}"))
}

/// Deploys a definition document on this node alone; `Ok(true)` when it
/// is new.
pub async fn deploy(rt: &Runtime, source: &str) -> Result<(bool, DefinitionRecord)> {
    let record = definition_record(source)?;
    let (name, version) = (record.name.clone(), record.version);
    let (created, stored) =
        blocking(rt, move |store| Ok(store.deploy_definition(&record)?)).await?;
    check_same(&stored, source)?;
    rt.services.definitions.deployed(&name, version);
    Ok((created, stored))
}

/// Deploys a definition document on this node, or through the cluster's
/// metadata group on a cluster node: its summary, with `created`.
pub async fn deploy_view(
    rt: &Runtime,
    peers: Option<&crate::cluster::Peers>,
    source: &str,
) -> Result<Json> {
    if let Some(peers) = peers {
        return peers.deploy(rt, source).await;
    }
    let (created, record) = deploy(rt, source).await?;
    let mut view = definition_summary(&record);
    view["created"] = Json::Bool(created);
    Ok(view)
}

/// The record of a definition document, once it validates.
pub fn definition_record(source: &str) -> Result<DefinitionRecord> {
    let def = definition::load(source).map_err(|issues| ApiError {
        code: ErrorCode::InvalidDefinition,
        message: format!("definition has {} error(s)", issues.len()),
        details: json!({ "errors": issues }),
    })?;
    Ok(DefinitionRecord {
        name: def.name,
        version: def.version,
        source: source.to_owned(),
        deployed_at: troupe_actors::now_millis(),
    })
}

/// Fails when `stored` (same name and version) holds another document.
pub fn check_same(stored: &DefinitionRecord, source: &str) -> Result<()> {
    if stored.source == source {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::DefinitionConflict,
        format!(
            "{} v{} is already deployed with other content; deploy a new version",
            stored.name, stored.version
        ),
    ))
}

/// One stored definition version, read off the async workers.
pub async fn stored_definition(
    rt: &Runtime,
    name: &str,
    version: u32,
) -> Result<Option<DefinitionRecord>> {
    let name = name.to_owned();
    blocking(rt, move |store| Ok(store.definition(&name, version)?)).await
}

/// Definition metadata (without the source).
pub fn definition_summary(d: &DefinitionRecord) -> Json {
    json!({"name": d.name, "version": d.version, "deployed_at": view::time(d.deployed_at)})
}

/// Every deployed definition version.
pub async fn definitions(rt: &Runtime) -> Result<Json> {
    let all: Vec<Json> = blocking(rt, |store| Ok(store.definitions()?))
        .await?
        .iter()
        .map(definition_summary)
        .collect();
    Ok(json!({ "definitions": all }))
}

/// Versions of one definition, or one version with its source.
pub async fn definition(rt: &Runtime, name: &str, version: Option<u32>) -> Result<Json> {
    let name_owned = name.to_owned();
    let found = blocking(rt, move |store| match version {
        Some(v) => Ok(store.definition(&name_owned, v)?.into_iter().collect()),
        None => Ok(store.definition_versions(&name_owned)?),
    })
    .await?;
    let missing = || {
        ApiError::new(
            ErrorCode::DefinitionNotFound,
            format!("no definition {name:?}"),
        )
    };
    match version {
        Some(_) => {
            let d = found.into_iter().next().ok_or_else(missing)?;
            let mut out = definition_summary(&d);
            out["source"] = json!(d.source);
            Ok(out)
        }
        None => {
            if found.is_empty() {
                return Err(missing());
            }
            Ok(
                json!({ "name": name, "versions": found.iter().map(definition_summary).collect::<Vec<_>>() }),
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
        other => Ok((matches!(other, Applied::Done), workflow(rt, &id).await?)),
    }
}

/// Refuses reads of a shard this node does not serve (its state here may be
/// stale or gone).
fn serving(rt: &Runtime, shard: u32) -> Result<()> {
    if rt.router().is_active(shard) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("shard {shard} is not active on this node; retry"),
        ))
    }
}

/// Runs a storage read that needs the node's services (definitions to
/// replay a journal tail) on the blocking pool.
async fn blocking_services<T: Send + 'static>(
    rt: &Runtime,
    read: impl FnOnce(&Services) -> Result<T> + Send + 'static,
) -> Result<T> {
    let services = rt.services.clone();
    tokio::task::spawn_blocking(move || read(&services))
        .await
        .map_err(|e| ApiError::new(ErrorCode::Internal, format!("storage task failed: {e}")))?
}

/// An instance as stored (its last durable state): a summary with step
/// counts, its open runs and the most recent others.
pub async fn workflow(rt: &Runtime, id: &str) -> Result<Json> {
    let shard = rt.router().shard_of(id);
    serving(rt, shard)?;
    let head = rt
        .services
        .store
        .instance_head(shard, id)?
        .ok_or_else(|| not_found(id))?;
    view_after(rt, shard, id, head).await
}

/// The view of an instance whose head was just read.
async fn view_after(rt: &Runtime, shard: u32, id: &str, head: InstanceHead) -> Result<Json> {
    let record = if head.status.is_terminal() {
        // Ended: one more point read (usually from the memtable or the
        // block cache), cheaper inline than a hop to the blocking pool;
        // most reads are of results.
        troupe_actors::read_instance_after(&rt.services, shard, id, head)?
    } else {
        // Snapshot plus journal tail, replayed: off the async workers.
        let owned = id.to_owned();
        blocking_services(rt, move |services| {
            Ok(troupe_actors::read_instance_after(
                services, shard, &owned, head,
            )?)
        })
        .await?
    };
    Ok(view::instance(&record.state))
}

/// Step list page size when none is asked for, and the most one page holds.
const STEPS_PAGE: (usize, usize) = (100, 1000);

/// One page of an instance's step runs in path order, after path `cursor`:
/// the runs in its state and those archived out of it.
pub async fn steps(
    rt: &Runtime,
    id: &str,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Json> {
    let limit = limit.unwrap_or(STEPS_PAGE.0).clamp(1, STEPS_PAGE.1);
    let shard = rt.router().shard_of(id);
    serving(rt, shard)?;
    let (owned, cursor) = (id.to_owned(), cursor.map(str::to_owned));
    let page = blocking_services(rt, move |services| {
        let Some(record) = troupe_actors::read_instance(services, shard, &owned)? else {
            return Ok(None);
        };
        let after = cursor.as_deref();
        let archived = services.store.archived_steps(shard, &owned, after, limit)?;
        let state = &record.state;
        let mut runs: Vec<(String, StepRun)> = state
            .steps
            .iter()
            .chain(&state.folded)
            .filter(|(path, _)| after.is_none_or(|a| path.as_str() > a))
            .map(|(p, r)| (p.clone(), r.clone()))
            .chain(archived)
            .collect();
        runs.sort_by(|a, b| a.0.cmp(&b.0));
        runs.truncate(limit);
        Ok(Some(runs))
    })
    .await?
    .ok_or_else(|| not_found(id))?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(path, _)| path.clone()))
        .flatten();
    let steps: Vec<Json> = page.iter().map(|(p, r)| view::step(p, r)).collect();
    Ok(json!({ "steps": steps, "next_cursor": next }))
}

/// History page size when none is asked for, and the most one page holds.
const HISTORY_PAGE: (usize, usize) = (1000, 10_000);

/// One page of an instance's journal: events after sequence number
/// `cursor`, at most `limit`.
pub async fn history(
    rt: &Runtime,
    id: &str,
    cursor: Option<&str>,
    limit: Option<usize>,
) -> Result<Json> {
    let after = match cursor {
        None => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                "cursor must be a sequence number",
            )
        })?),
    };
    let limit = limit.unwrap_or(HISTORY_PAGE.0).clamp(1, HISTORY_PAGE.1);
    let (shard, owned) = (rt.router().shard_of(id), id.to_owned());
    serving(rt, shard)?;
    let page = blocking(rt, move |store| {
        if store.instance_head(shard, &owned)?.is_none() {
            return Ok(None);
        }
        Ok(Some(store.history(shard, &owned, after, limit)?))
    })
    .await?
    .ok_or_else(|| not_found(id))?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|(seq, _)| *seq))
        .flatten();
    Ok(view::history(&page, next))
}

/// The page size of an instance listing: 100 by default, at most 1000.
pub fn list_limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(100).clamp(1, 1000)
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
    /// Continue where the previous page ended (its `next_cursor`).
    pub cursor: Option<String>,
    /// `id` (default) or `newest` (most recently updated first).
    pub order: Option<String>,
    /// Only these shards, comma-separated (a cluster node gathering a
    /// listing asks each holder for its part).
    pub shards: Option<String>,
}

/// Instances filtered by status and definition, in id order or (with
/// `order=newest`) most recently updated first, one page at a time, read
/// through the secondary indexes.
pub async fn list(rt: &Runtime, query: ListQuery) -> Result<Json> {
    let limit = list_limit(query.limit);
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(
            serde_json::from_value::<InstanceStatus>(json!(s)).map_err(|_| {
                ApiError::new(ErrorCode::InvalidRequest, format!("unknown status {s:?}"))
            })?,
        ),
    };
    let order = match query.order.as_deref() {
        None | Some("id") => ListOrder::Id,
        Some("newest") => ListOrder::NewestFirst,
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("order must be id or newest, not {other:?}"),
            ));
        }
    };
    let query = troupe_storage::ListQuery {
        status,
        definition: query.definition,
        order,
        cursor: query.cursor,
        limit,
        shards: parse_shards(query.shards.as_deref())?,
    };
    let page = blocking(rt, move |store| Ok(store.list(&query)?)).await?;
    let out: Vec<Json> = page.items.iter().map(view::summary).collect();
    Ok(json!({ "workflows": out, "next_cursor": page.next }))
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
        _ => workflow(rt, id).await,
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

/// Shards as a `shards` parameter.
pub fn shards_param(shards: Option<Vec<u32>>) -> Option<String> {
    shards.map(|s| s.iter().map(u32::to_string).collect::<Vec<_>>().join(","))
}

/// A `shards` parameter: comma-separated shard numbers.
pub fn parse_shards(text: Option<&str>) -> Result<Option<Vec<u32>>> {
    let Some(text) = text else { return Ok(None) };
    text.split(',')
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("shards must be comma-separated shard numbers, not {text:?}"),
                )
            })
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// Publishes an event: every instance awaiting `name` with this
/// correlation in `shards` (all when `None`) resumes.
pub async fn publish(
    rt: &Runtime,
    name: &str,
    request: EventRequest,
    shards: Option<Vec<u32>>,
) -> Result<Json> {
    let (event_id, owned, correlation) = (
        request.id.clone(),
        name.to_owned(),
        request.correlation_key.clone(),
    );
    let waiting = blocking(rt, move |store| {
        if store.event_seen(&event_id)? {
            return Ok(None);
        }
        Ok(Some(store.subscribers(
            &owned,
            correlation.as_deref(),
            shards.as_deref(),
        )?))
    })
    .await?;
    let Some(waiting) = waiting else {
        return Ok(json!({ "id": request.id, "duplicate": true, "delivered": 0 }));
    };
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
    let event_id = request.id.clone();
    blocking(rt, move |store| Ok(store.mark_event_seen(&event_id)?)).await?;
    Ok(json!({ "id": request.id, "duplicate": false, "delivered": delivered }))
}

/// Most human tasks or incidents in one page, and the default.
const SIDE_PAGE: (usize, usize) = (100, 1000);

/// The page size of a human-task or incident listing.
pub fn side_limit(asked: Option<usize>) -> usize {
    asked.unwrap_or(SIDE_PAGE.0).clamp(1, SIDE_PAGE.1)
}

/// Open human tasks, optionally for one assignee, one page at a time.
pub async fn human_tasks(
    rt: &Runtime,
    assignee: Option<&str>,
    cursor: Option<&str>,
    limit: Option<usize>,
    shards: Option<Vec<u32>>,
) -> Result<Json> {
    let limit = side_limit(limit);
    let (assignee, cursor) = (assignee.map(str::to_owned), cursor.map(str::to_owned));
    let page = blocking(rt, move |store| {
        Ok(
            store.human_tasks(cursor.as_deref(), limit, shards.as_deref(), |t| {
                assignee.as_deref().is_none_or(|a| a == t.assignee)
            })?,
        )
    })
    .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|t| t.id.clone()))
        .flatten();
    let tasks: Vec<Json> = page
        .into_iter()
        .map(|t| {
            json!({"id": t.id, "workflow_id": t.instance, "step": t.path, "assignee": t.assignee,
                   "input": t.input, "escalated": t.escalated, "created_at": view::time(t.created_at)})
        })
        .collect();
    Ok(json!({ "human_tasks": tasks, "next_cursor": next }))
}

/// Completes a human task with a decision.
pub async fn complete_human_task(rt: &Runtime, task_id: &str, payload: Json) -> Result<Json> {
    let owned = task_id.to_owned();
    let task = blocking(rt, move |store| Ok(store.human_task(&owned)?))
        .await?
        .ok_or_else(|| {
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
        _ => workflow(rt, &task.instance).await,
    }
}

/// Open incidents, one page at a time.
pub async fn incidents(
    rt: &Runtime,
    cursor: Option<&str>,
    limit: Option<usize>,
    shards: Option<Vec<u32>>,
) -> Result<Json> {
    let limit = side_limit(limit);
    let cursor = cursor.map(str::to_owned);
    let page = blocking(rt, move |store| {
        Ok(store.incidents(cursor.as_deref(), limit, shards.as_deref())?)
    })
    .await?;
    let next = (page.len() == limit)
        .then(|| page.last().map(|i| i.id.clone()))
        .flatten();
    let incidents: Vec<Json> = page
        .into_iter()
        .map(|i| json!({"id": i.id, "workflow_id": i.instance, "step": i.path, "error": i.error, "opened_at": view::time(i.opened_at)}))
        .collect();
    Ok(json!({ "incidents": incidents, "next_cursor": next }))
}

/// Retries (`retry == true`) or resolves an incident.
pub async fn settle_incident(rt: &Runtime, incident_id: &str, retry: bool) -> Result<Json> {
    let owned = incident_id.to_owned();
    let incident = blocking(rt, move |store| Ok(store.incident(&owned)?))
        .await?
        .ok_or_else(|| {
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
        _ => workflow(rt, &incident.instance).await,
    }
}

/// The cluster as this node sees it: a single node leads every shard.
pub fn cluster(rt: &Runtime, node_id: u64) -> Json {
    let shards = rt.services.settings.shards;
    let list: Vec<Json> = (0..shards)
        .map(|id| json!({"id": id, "leader": node_id, "replicas": [node_id], "term": 0}))
        .collect();
    json!({
        "node": node_id,
        "replication_factor": 1,
        "nodes": [{"id": node_id, "state": "active", "leads": shards, "this": true}],
        "shards": list,
    })
}

/// An instance's view once it has ended, waiting up to `wait` for that; the
/// view says `status` either way.
pub async fn await_workflow(rt: &Runtime, id: &str, wait: std::time::Duration) -> Result<Json> {
    let waiters = &rt.services.finished;
    let ended = waiters.wait(id);
    // Whether it has ended: its head says so (one point read; the whole
    // state is read only to answer).
    let shard = rt.router().shard_of(id);
    let head = serving(rt, shard).and_then(|()| {
        rt.services
            .store
            .instance_head(shard, id)?
            .ok_or_else(|| not_found(id))
    });
    let settled = match &head {
        Ok(head) => head.status.is_terminal() || wait.is_zero(),
        Err(_) => true,
    };
    if settled {
        // Our receiver must be dropped before its entry is forgotten, or the
        // entry stays (one per awaited instance, for good).
        drop(ended);
        waiters.forget_closed(id);
        return view_after(rt, shard, id, head?).await;
    }
    let waited = tokio::time::timeout(wait.min(std::time::Duration::from_secs(60)), ended).await;
    rt.services.finished.forget_closed(id);
    match waited {
        Ok(Ok(view)) => Ok(view),
        _ => workflow(rt, id).await,
    }
}
