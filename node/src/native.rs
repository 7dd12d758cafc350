//! The native listener: the protocol of `troupe-protocol` over TCP. Each
//! connection reads frames, runs every request as its own task (so answers
//! come back in any order, matched by request id) and writes answers through
//! one writer task. A frame that is oversized or does not decode gets an
//! error frame (id 0) and the connection is closed; nothing else is
//! affected. At most `max_inflight` requests run per connection: beyond
//! that the node stops reading, and the client feels TCP backpressure.

use crate::api::{self, ApiError};
use crate::gather::{self, Listing, encode};
use crate::workers::{self, Report, Subscription};
use serde_json::{Value as Json, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use troupe_actors::Runtime;
use troupe_protocol::frame::{self, FrameError, LENGTH_BYTES};
use troupe_protocol::{
    ClientFrame, ErrorCode, JsonText, ListWorkflows, Page, Request, Response, ServerFrame,
    WireError,
};

/// How long a client should wait after an overload answer.
const RETRY_AFTER_MS: u64 = 200;

/// The wait a retryable answer advises: an overloaded node needs time; a
/// shard changing leader has a new one within a few tens of ms, so the
/// client's own short backoff applies.
fn retry_after(code: ErrorCode) -> Option<u64> {
    match code {
        ErrorCode::Unavailable | ErrorCode::NotLeader => None,
        other => other.is_retryable().then_some(RETRY_AFTER_MS),
    }
}

/// What every connection shares.
#[derive(Clone)]
pub struct NativeState {
    /// The engine.
    pub runtime: Runtime,
    /// This node's id.
    pub node_id: u64,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// Requests in flight per connection.
    pub max_inflight: usize,
    /// The other members (a cluster node only).
    pub peers: Option<std::sync::Arc<crate::cluster::Peers>>,
}

/// Accepts connections until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    state: NativeState,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    // Open connections end with the listener: a stopped node leaves no
    // client talking to it (clients then go elsewhere).
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut stop => {
                connections.abort_all();
                return;
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let state = state.clone();
                    connections.spawn(async move {
                        metrics::gauge!(crate::metrics::NATIVE_CONNECTIONS).increment(1.0);
                        if let Err(e) = connection(stream, state).await {
                            tracing::debug!(%peer, error = %e, "native connection ended");
                        }
                        metrics::gauge!(crate::metrics::NATIVE_CONNECTIONS).decrement(1.0);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "native accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves one connection until the peer closes it or sends a bad frame.
async fn connection(stream: TcpStream, state: NativeState) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let (read, write) = stream.into_split();
    // Buffered: under load many frames arrive together, and one read
    // takes them all instead of two system calls per frame.
    let mut read = BufReader::with_capacity(64 << 10, read);
    let (out, outgoing) = mpsc::channel::<ServerFrame>(state.max_inflight.max(16));
    let writer = tokio::spawn(write_frames(write, outgoing));
    let inflight = Arc::new(Semaphore::new(state.max_inflight));
    let mut streams: HashMap<u64, (u64, JoinHandle<()>)> = HashMap::new();
    let mut buf = Vec::new();
    let result = loop {
        let frame = match read_frame(&mut read, &mut buf, state.max_frame).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(ReadError::Io(e)) => break Err(e),
            Err(ReadError::Frame(e)) => {
                metrics::counter!(crate::metrics::NATIVE_BAD_FRAMES_TOTAL).increment(1);
                // Answer what came before the bad frame, then say why we close.
                let all = u32::try_from(state.max_inflight).unwrap_or(u32::MAX);
                let _ =
                    tokio::time::timeout(Duration::from_secs(5), inflight.acquire_many(all)).await;
                let error = WireError {
                    code: e.code().as_str().to_owned(),
                    message: format!("{e}; closing the connection"),
                    details: "null".into(),
                    retry_after_ms: None,
                };
                let _ = out
                    .send(ServerFrame {
                        id: 0,
                        response: Response::Error(error),
                    })
                    .await;
                break Ok(());
            }
        };
        let ClientFrame { id, request } = frame;
        match request {
            Request::OpenTaskStream {
                worker,
                task_types,
                credit,
            } => match Subscription::open(&state.runtime, task_types, credit) {
                Ok(subscription) => {
                    tracing::debug!(%worker, stream = id, "task stream opened");
                    let waiter = subscription.id();
                    let task = tokio::spawn(push_tasks(
                        state.runtime.clone(),
                        id,
                        subscription,
                        out.clone(),
                    ));
                    if let Some((_, old)) = streams.insert(id, (waiter, task)) {
                        old.abort();
                    }
                }
                Err(e) => {
                    let _ = out.send(answer(id, Err(e))).await;
                }
            },
            Request::AddCredit { stream, credit } => match streams.get(&stream) {
                Some((waiter, _)) => {
                    state.runtime.services.queues.add_credit(*waiter, credit);
                }
                None => {
                    let e = ApiError::new(ErrorCode::NotFound, format!("no task stream {stream}"));
                    let _ = out.send(answer(id, Err(e))).await;
                }
            },
            request => {
                let permit = inflight
                    .clone()
                    .acquire_owned()
                    .await
                    .expect("semaphore is never closed");
                let (state, out) = (state.clone(), out.clone());
                tokio::spawn(async move {
                    let response = handle(&state, request).await;
                    let _ = out.send(answer(id, response)).await;
                    drop(permit);
                });
            }
        }
    };
    for (_, (_, task)) in streams {
        task.abort();
    }
    drop(out);
    let _ = writer.await;
    result
}

enum ReadError {
    Io(std::io::Error),
    Frame(FrameError),
}

/// Reads one frame; `None` on a clean end of stream between frames.
async fn read_frame(
    read: &mut (impl AsyncReadExt + Unpin),
    buf: &mut Vec<u8>,
    max: usize,
) -> Result<Option<ClientFrame>, ReadError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    match read.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(ReadError::Io(e)),
    }
    let len = frame::frame_len(prefix, max).map_err(ReadError::Frame)?;
    buf.resize(len, 0);
    read.read_exact(buf).await.map_err(ReadError::Io)?;
    let frame: ClientFrame = frame::decode_frame(buf).map_err(ReadError::Frame)?;
    if frame.id == 0 {
        let e = troupe_protocol::codec::DecodeError("request id 0 is reserved".into());
        return Err(ReadError::Frame(FrameError::Body(e)));
    }
    Ok(Some(frame))
}

/// Writes answers, flushing whenever no more are immediately ready.
async fn write_frames(
    write: tokio::net::tcp::OwnedWriteHalf,
    mut outgoing: mpsc::Receiver<ServerFrame>,
) -> std::io::Result<()> {
    let mut write = BufWriter::with_capacity(64 << 10, write);
    while let Some(frame) = outgoing.recv().await {
        write.write_all(&frame::encode_frame(&frame)).await?;
        while let Ok(frame) = outgoing.try_recv() {
            write.write_all(&frame::encode_frame(&frame)).await?;
        }
        write.flush().await?;
    }
    write.shutdown().await
}

/// Pushes the attempts a stream's subscription receives, leased one by one.
async fn push_tasks(
    runtime: Runtime,
    stream: u64,
    mut subscription: Subscription,
    out: mpsc::Sender<ServerFrame>,
) {
    while let Some(task) = subscription.next().await {
        let mut tasks = vec![task];
        tasks.extend(std::iter::from_fn(|| subscription.try_next()));
        let frame = ServerFrame {
            id: stream,
            response: Response::Tasks(
                tasks
                    .into_iter()
                    .map(|t| workers::lease(&runtime, t))
                    .collect(),
            ),
        };
        if out.send(frame).await.is_err() {
            return;
        }
    }
}

fn answer(id: u64, result: api::Result<Response>) -> ServerFrame {
    let response = result.unwrap_or_else(|e| {
        let retry_after_ms = retry_after(e.code);
        Response::Error(WireError {
            code: e.code.as_str().to_owned(),
            message: e.message,
            details: e.details.to_string(),
            retry_after_ms,
        })
    });
    ServerFrame { id, response }
}

fn json_text(text: &JsonText, what: &str) -> api::Result<Json> {
    if text.is_empty() {
        return Ok(Json::Null);
    }
    serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} is not JSON: {e}"),
        )
    })
}

fn json(value: Json) -> api::Result<Response> {
    Ok(Response::Json(value.to_string()))
}

fn limit(page: &Page) -> Option<usize> {
    page.limit.map(|l| l as usize)
}

/// How long a routed request refused while its shard changes leader waits
/// for the change to settle.
const ROUTED_LEADER_WAIT: Duration = Duration::from_millis(500);

/// Where a shard whose leader is changing went, as a routed request on
/// this node sees it.
enum Settled {
    /// Another node leads it: the client is told which, and follows at once.
    Elsewhere(ApiError),
    /// It is active here (again, or at last): the request can run again.
    Here,
}

/// Waits up to [`ROUTED_LEADER_WAIT`] until `shard` is led elsewhere or
/// active here.
async fn leader_settled(
    state: &NativeState,
    peers: &crate::cluster::Peers,
    shard: u32,
) -> Option<Settled> {
    let deadline = tokio::time::Instant::now() + ROUTED_LEADER_WAIT;
    loop {
        if let Some(leader) = peers.leader_elsewhere(shard) {
            return Some(Settled::Elsewhere(peers.not_leader(shard, leader)));
        }
        if state.runtime.router().is_active(shard) {
            return Some(Settled::Here);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs one request through the same operations as the HTTP listener.
async fn handle(state: &NativeState, request: Request) -> api::Result<Response> {
    let rt = &state.runtime;
    let request = match request {
        Request::Routed(inner) => {
            if let (Some(peers), Some(id)) = (&state.peers, inner.instance()) {
                let shard = rt.router().shard_of(id);
                if let Some(leader) = peers.leader_elsewhere(shard) {
                    return Err(peers.not_leader(shard, leader));
                }
                // Refused while the shard changes leader: name the new
                // leader, or run once more when the shard is active here.
                let result = Box::pin(handle(state, (*inner).clone())).await;
                return match result {
                    // (Refused with the shard still active here: not a
                    // change of leader, e.g. no quorum.)
                    Err(e) if e.code == ErrorCode::Unavailable && !rt.router().is_active(shard) => {
                        match leader_settled(state, peers, shard).await {
                            Some(Settled::Elsewhere(not_leader)) => Err(not_leader),
                            Some(Settled::Here) => Box::pin(handle(state, *inner)).await,
                            None => Err(e),
                        }
                    }
                    other => other,
                };
            }
            *inner
        }
        other => other,
    };
    if let Some(peers) = &state.peers
        && let Some((leader, path, body)) = led_elsewhere(state, peers, &request)
    {
        let value = match body {
            None => peers.get_json(leader, &path).await?,
            Some(body) => peers.post_json(leader, &path, &body).await?,
        };
        return json(value);
    }
    match request {
        Request::Deploy { source } => {
            json(api::deploy_view(rt, state.peers.as_deref(), &source).await?)
        }
        Request::Definitions => json(api::definitions(rt).await?),
        Request::Definition { name, version } => json(api::definition(rt, &name, version).await?),
        Request::Start(start) => {
            let request = api::StartRequest {
                definition: start.definition,
                version: start.version,
                id: start.id,
                input: json_text(&start.input, "input")?,
            };
            let (created, mut view) = api::start(rt, request).await?;
            view["created"] = Json::Bool(created);
            json(view)
        }
        Request::Workflow { id } => json(api::workflow(rt, &id).await?),
        Request::History { id, page } => {
            json(api::history(rt, &id, page.cursor.as_deref(), limit(&page)).await?)
        }
        Request::Steps { id, page } => {
            json(api::steps(rt, &id, page.cursor.as_deref(), limit(&page)).await?)
        }
        Request::List(ListWorkflows {
            status,
            definition,
            limit,
            cursor,
        }) => {
            let path = query_path(
                "/v1/workflows",
                &[
                    ("status", status.clone()),
                    ("definition", definition.clone()),
                    ("limit", limit.map(|l| l.to_string())),
                    ("cursor", cursor.clone()),
                ],
            );
            let query = api::ListQuery {
                status,
                definition,
                limit: limit.map(|l| l as usize),
                cursor,
                order: None,
                shards: None,
            };
            let Some(peers) = &state.peers else {
                return json(api::list(rt, query).await?);
            };
            let limit = api::list_limit(query.limit);
            json(
                gather::list(peers, Listing::Workflows, &path, limit, |shards| {
                    api::list(
                        rt,
                        api::ListQuery {
                            shards: api::shards_param(shards),
                            ..query
                        },
                    )
                })
                .await?,
            )
        }
        Request::Signal {
            workflow,
            name,
            signal_id,
            payload,
        } => {
            let request = api::SignalRequest {
                id: signal_id,
                payload: json_text(&payload, "payload")?,
            };
            json(api::signal(rt, &workflow, &name, request).await?)
        }
        Request::Cancel { workflow, reason } => json(api::cancel(rt, &workflow, reason).await?),
        Request::Publish {
            name,
            event_id,
            correlation_key,
            payload,
        } => {
            let body = json!({
                "id": event_id,
                "correlation_key": correlation_key,
                "payload": json_text(&payload, "payload")?,
            });
            let request: api::EventRequest = serde_json::from_value(body.clone())
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
            let local = |shards| api::publish(rt, &name, request, shards);
            match &state.peers {
                Some(peers) => json(gather::publish(peers, &name, &body, local).await?),
                None => json(local(None).await?),
            }
        }
        Request::HumanTasks { assignee, page } => {
            let local = |shards| {
                api::human_tasks(
                    rt,
                    assignee.as_deref(),
                    page.cursor.as_deref(),
                    limit(&page),
                    shards,
                )
            };
            let Some(peers) = &state.peers else {
                return json(local(None).await?);
            };
            let path = query_path(
                "/v1/human-tasks",
                &[
                    ("assignee", assignee.clone()),
                    ("cursor", page.cursor.clone()),
                    ("limit", page.limit.map(|l| l.to_string())),
                ],
            );
            let limit = api::side_limit(limit(&page));
            json(gather::list(peers, Listing::HumanTasks, &path, limit, local).await?)
        }
        Request::CompleteHumanTask { id, payload } => {
            let payload = json_text(&payload, "payload")?;
            json(api::complete_human_task(rt, &id, payload).await?)
        }
        Request::Incidents { page } => {
            let local = |shards| api::incidents(rt, page.cursor.as_deref(), limit(&page), shards);
            let Some(peers) = &state.peers else {
                return json(local(None).await?);
            };
            let path = query_path(
                "/v1/incidents",
                &[
                    ("cursor", page.cursor.clone()),
                    ("limit", page.limit.map(|l| l.to_string())),
                ],
            );
            let limit = api::side_limit(limit(&page));
            json(gather::list(peers, Listing::Incidents, &path, limit, local).await?)
        }
        Request::SettleIncident { id, retry } => json(api::settle_incident(rt, &id, retry).await?),
        Request::Cluster => match &state.peers {
            Some(peers) => json(peers.status(rt)),
            None => json(api::cluster(rt, state.node_id)),
        },
        Request::Deliver { id, command } => {
            let command: troupe_actors::WireCommand = serde_json::from_str(&command)
                .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
            let command = command.into_command(&rt.services)?;
            let applied = rt.router().call_here(&id, command).await?;
            let text = serde_json::to_string(&applied)
                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))?;
            Ok(Response::Json(text))
        }
        Request::DeployAsLeader { source } => match &state.peers {
            Some(peers) => json(peers.deploy_as_leader(rt, &source).await?),
            None => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "not a cluster node",
            )),
        },
        Request::AwaitMeta { index } => match &state.peers {
            Some(peers) => {
                peers.await_meta(index).await?;
                json(Json::Null)
            }
            None => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "not a cluster node",
            )),
        },
        Request::Poll(poll) => {
            let wait = Duration::from_millis(poll.wait_ms);
            let tasks = workers::poll(rt, poll.task_types, poll.max, wait).await?;
            Ok(Response::Tasks(tasks))
        }
        Request::CompleteTask { token, output } => {
            let report = Report::Complete(json_text(&output, "output")?);
            json(workers::report(rt, &token, report).await?)
        }
        Request::FailTask {
            token,
            code,
            message,
            retryable,
        } => {
            let report = Report::Fail {
                code,
                message,
                retryable,
            };
            json(workers::report(rt, &token, report).await?)
        }
        Request::Heartbeat { token, progress } => {
            let progress = progress.map(|p| json_text(&p, "progress")).transpose()?;
            json(workers::report(rt, &token, Report::Heartbeat(progress)).await?)
        }
        Request::AwaitWorkflow { id, wait_ms } => {
            json(api::await_workflow(rt, &id, Duration::from_millis(wait_ms)).await?)
        }
        Request::OpenTaskStream { .. } | Request::AddCredit { .. } => Err(ApiError::new(
            ErrorCode::Internal,
            "stream requests are handled by the connection",
        )),
        Request::Routed(_) => Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a routed request cannot hold another",
        )),
    }
}

/// A request answered by the leader of a shard another node leads (a
/// read of an instance, a decision on a human task or incident): that
/// node, and the HTTP path (and body, for a decision) that answers it there.
fn led_elsewhere(
    state: &NativeState,
    peers: &crate::cluster::Peers,
    request: &Request,
) -> Option<(u64, String, Option<Json>)> {
    let page_query = |page: &Page| {
        query_path(
            "",
            &[
                ("cursor", page.cursor.clone()),
                ("limit", page.limit.map(|l| l.to_string())),
            ],
        )
    };
    let router = state.runtime.router();
    let (shard, path, body) = match request {
        Request::CompleteHumanTask { id, payload } => (
            troupe_storage::human_task_shard(id)?,
            format!("/v1/human-tasks/{}/complete", encode(id)),
            Some(json!({ "payload": serde_json::from_str::<Json>(payload).ok()? })),
        ),
        Request::SettleIncident { id, retry } => (
            troupe_storage::incident_shard(id)?,
            format!(
                "/v1/incidents/{}/{}",
                encode(id),
                if *retry { "retry" } else { "resolve" }
            ),
            Some(json!({})),
        ),
        _ => {
            let (id, tail) = match request {
                Request::Workflow { id } => (id, String::new()),
                Request::History { id, page } => (id, format!("/history{}", page_query(page))),
                Request::Steps { id, page } => (id, format!("/steps{}", page_query(page))),
                Request::AwaitWorkflow { id, wait_ms } => {
                    (id, format!("/result?wait_ms={wait_ms}"))
                }
                _ => return None,
            };
            let path = format!("/v1/workflows/{}{tail}", encode(id));
            (router.shard_of(id), path, None)
        }
    };
    let leader = peers.leader_elsewhere(shard)?;
    Some((leader, path, body))
}

/// `path` with the parameters that are set as its query.
fn query_path(path: &str, params: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = params
        .iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", encode(value.as_deref()?))))
        .collect();
    if set.is_empty() {
        path.to_owned()
    } else {
        format!("{path}?{}", set.join("&"))
    }
}
