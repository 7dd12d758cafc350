//! A cluster node's wiring: shard transitions are proposed to the shard's
//! Raft group ([`ReplicatedLog`]); a shard's actors run where it is led
//! (activated on [`Leadership`] events); requests and internal commands
//! for a shard led elsewhere go to its leader in one hop ([`Peers`]).

use crate::api::ApiError;
use crate::config::{ClusterSection, Config};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use troupe_actors::{
    Appending, Applied, Command, Error, Remote, RemoteReply, Runtime, ShardLog, WireCommand,
};
use troupe_client::{Client, RetryPolicy};
use troupe_cluster::{Cluster, ClusterConfig, Leadership, LinkFilter, ProposeError};
use troupe_protocol::{ErrorCode, Request, Response};
use troupe_storage::{ShardBatch, Store};

/// Starts this node's Raft groups.
pub async fn start(
    config: &Config,
    section: &ClusterSection,
    store: Store,
    links: LinkFilter,
) -> anyhow::Result<(
    Arc<Cluster>,
    tokio::sync::mpsc::UnboundedReceiver<Leadership>,
)> {
    let me = section
        .member(config.node_id)
        .ok_or_else(|| anyhow::anyhow!("node {} is not a cluster member", config.node_id))?;
    let cluster_config = ClusterConfig {
        node_id: config.node_id,
        members: section
            .members
            .iter()
            .map(|m| (m.id, m.raft_addr))
            .collect(),
        shards: config.shards,
        replication_factor: section.replication_factor,
        election_timeout_ms: (
            section.election_timeout_min.as_millis() as u64,
            section.election_timeout_max.as_millis() as u64,
        ),
        heartbeat_ms: section.heartbeat_interval.as_millis() as u64,
        snapshot_after: section.snapshot_after_entries,
        sync: config.storage.sync,
    };
    Ok(Cluster::start(store, cluster_config, me.raft_addr, links).await?)
}

/// Proposes a shard's transitions to its group.
pub struct ReplicatedLog(pub Arc<Cluster>);

impl ShardLog for ReplicatedLog {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move {
            self.0.propose(batch).await.map_err(|e| match e {
                ProposeError::NotLeader { shard, leader } => Error::new(
                    ErrorCode::Unavailable,
                    format!("shard {shard} is now led by {leader:?}; retry"),
                ),
                ProposeError::Failed { .. } => Error::new(ErrorCode::Unavailable, e.to_string()),
            })
        })
    }
}

/// Activates a shard where this node leads it with complete state and
/// stops its actors at once when the lead is lost.
pub async fn follow_leadership(
    runtime: Runtime,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Leadership>,
) {
    while let Some(event) = events.recv().await {
        match event {
            Leadership::Gained { shard, term } => {
                if let Err(e) = runtime.activate(shard).await {
                    tracing::error!(shard_id = shard, term, error = %e, "activating a led shard failed");
                }
            }
            Leadership::Lost { shard } => {
                let _ = runtime.deactivate(shard).await;
            }
        }
    }
}

/// The other members, reached on their native protocol (requests and
/// internal commands) or HTTP (proxied requests).
pub struct Peers {
    cluster: Arc<Cluster>,
    section: ClusterSection,
    me: u64,
    clients: tokio::sync::Mutex<HashMap<u64, Client>>,
    http: reqwest::Client,
}

impl Peers {
    /// Peers of node `me`.
    pub fn new(cluster: Arc<Cluster>, section: ClusterSection, me: u64) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            section,
            me,
            clients: Default::default(),
            http: reqwest::Client::new(),
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The node leading `shard`, when it is another one.
    pub fn leader_elsewhere(&self, shard: u32) -> Option<u64> {
        self.cluster
            .leader_of(shard)
            .filter(|leader| *leader != self.me)
    }

    async fn client(&self, node: u64) -> Result<Client, ApiError> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&node) {
            return Ok(client.clone());
        }
        let member = self.section.member(node).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("node {node} is unknown"))
        })?;
        let client = Client::connect(member.native_addr.to_string())
            .await
            .map_err(|e| unreachable(node, e))?
            .with_retry(RetryPolicy::none());
        clients.insert(node, client.clone());
        Ok(client)
    }

    /// Sends `request` to node `node` and returns its answer.
    pub async fn forward(&self, node: u64, request: Request) -> Result<Response, ApiError> {
        let client = self.client(node).await?;
        client.request(request, false).await.map_err(|e| match e {
            troupe_client::Error::Node {
                code,
                message,
                details,
                ..
            } => ApiError::new(code, message).with_details(details),
            other => unreachable(node, other),
        })
    }

    /// Proxies an HTTP request to node `node`'s HTTP API.
    pub async fn proxy(
        &self,
        node: u64,
        method: reqwest::Method,
        path_and_query: &str,
        content_type: Option<String>,
        body: axum::body::Bytes,
    ) -> Result<axum::response::Response, ApiError> {
        let member = self.section.member(node).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("node {node} is unknown"))
        })?;
        let url = format!("http://{}{}", member.http_addr, path_and_query);
        let mut request = self
            .http
            .request(method, url)
            .header(FORWARDED, self.me.to_string())
            .body(body);
        if let Some(content_type) = content_type {
            request = request.header(reqwest::header::CONTENT_TYPE, content_type);
        }
        let response = request.send().await.map_err(|e| unreachable(node, e))?;
        let status = axum::http::StatusCode::from_u16(response.status().as_u16())
            .unwrap_or(axum::http::StatusCode::BAD_GATEWAY);
        let mut builder = axum::response::Response::builder().status(status);
        for name in [reqwest::header::CONTENT_TYPE, reqwest::header::RETRY_AFTER] {
            if let Some(value) = response.headers().get(&name) {
                builder = builder.header(name.as_str(), value.as_bytes());
            }
        }
        let bytes = response.bytes().await.map_err(|e| unreachable(node, e))?;
        builder
            .body(axum::body::Body::from(bytes))
            .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()))
    }

    /// Deploys `source` on every other member (best effort: a member that is
    /// down loads the definitions deployed at start and is told again by the
    /// next deploy).
    pub async fn deploy_everywhere(&self, source: &str) {
        for member in &self.section.members {
            if member.id == self.me {
                continue;
            }
            let request = Request::DeployHere {
                source: source.to_owned(),
            };
            if let Err(e) = self.forward(member.id, request).await {
                tracing::warn!(node = member.id, error = %e.message, "deploy not replicated to node");
            }
        }
    }

    /// `GET /v1/cluster`: members and every shard's leader and replicas.
    pub fn status(&self, runtime: &Runtime) -> Json {
        let shards = self.cluster.status();
        let mut leading: BTreeMap<u64, usize> = BTreeMap::new();
        for shard in &shards {
            if let Some(leader) = shard.leader {
                *leading.entry(leader).or_default() += 1;
            }
        }
        let nodes: Vec<Json> = self
            .section
            .members
            .iter()
            .map(|m| {
                json!({
                    "id": m.id,
                    "http_addr": m.http_addr.to_string(),
                    "native_addr": m.native_addr.to_string(),
                    "raft_addr": m.raft_addr.to_string(),
                    "state": if self.cluster.is_up(m.id) { "active" } else { "down" },
                    "leads": leading.get(&m.id).copied().unwrap_or(0),
                    "this": m.id == self.me,
                })
            })
            .collect();
        let active: Vec<u32> = (0..self.cluster.config().shards)
            .filter(|s| runtime.router().is_active(*s))
            .collect();
        json!({
            "node": self.me,
            "replication_factor": self.section.replication_factor,
            "nodes": nodes,
            "shards": shards,
            "active_here": active,
        })
    }
}

/// Header marking a request another node already forwarded (never forwarded twice).
pub const FORWARDED: &str = "x-troupe-forwarded-by";

fn unreachable(node: u64, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        ErrorCode::Unavailable,
        format!("node {node}, which leads the shard, is unreachable: {e}; retry"),
    )
}

/// The router's way to the leaders of shards led elsewhere.
pub struct PeerRemote(pub Arc<Peers>);

impl Remote for PeerRemote {
    fn leads_elsewhere(&self, shard: u32) -> bool {
        self.0.leader_elsewhere(shard).is_some()
    }

    fn deliver(&self, shard: u32, id: String, command: Command) -> RemoteReply {
        let wire = serde_json::to_string(&WireCommand::from(command));
        let peers = self.0.clone();
        Box::pin(async move {
            let command = wire.map_err(|e| Error::new(ErrorCode::Internal, e.to_string()))?;
            // A leader that just died is still named until the others elect
            // another: retry `unavailable` answers for a short while.
            let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT;
            loop {
                let Some(leader) = peers.leader_elsewhere(shard) else {
                    return Err(Error::new(
                        ErrorCode::Unavailable,
                        format!("shard {shard} has no leader elsewhere; retry"),
                    ));
                };
                let request = Request::Deliver {
                    id: id.clone(),
                    command: command.clone(),
                };
                let failure = match peers.forward(leader, request).await {
                    Ok(Response::Json(text)) => {
                        return serde_json::from_str::<Applied>(&text)
                            .map_err(|e| Error::new(ErrorCode::Internal, e.to_string()));
                    }
                    Ok(other) => {
                        return Err(Error::new(
                            ErrorCode::Internal,
                            format!("unexpected answer {other:?}"),
                        ));
                    }
                    Err(e) => Error::new(e.code, e.message),
                };
                if failure.code != ErrorCode::Unavailable || tokio::time::Instant::now() >= deadline
                {
                    return Err(failure);
                }
                tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            }
        })
    }
}

/// How long a command for a shard whose leader is unreachable waits for a new one.
const LEADER_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
