//! A cluster node's wiring: shard transitions are proposed to the shard's
//! Raft group ([`ReplicatedLog`]); a shard's actors run where it is led
//! (activated on [`Leadership`] events); requests and internal commands
//! for a shard led elsewhere go to its leader in one hop ([`Peers`]).

use crate::api::{self, ApiError};
use crate::config::{ClusterSection, Config};
use serde_json::{Value as Json, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use troupe_actors::{
    Appending, Applied, Command, Error, Remote, RemoteReply, Runtime, Settling, ShardLog,
    WireCommand,
};
use troupe_client::{Client, RetryPolicy};
use troupe_cluster::{
    ChangeError, Cluster, ClusterConfig, Control, ControlConfig, Leadership, LinkFilter,
    MetaChange, ProposeError,
};
use troupe_protocol::{ErrorCode, Request, Response};
use troupe_storage::{META_GROUP, MemberRecord, MemberState, ShardBatch, Store};

/// A member's record in the cluster map, from its config entry.
fn record(member: &crate::config::Member) -> MemberRecord {
    MemberRecord {
        id: member.id,
        state: MemberState::Active,
        raft_addr: member.raft_addr.to_string(),
        http_addr: member.http_addr.to_string(),
        native_addr: member.native_addr.to_string(),
        control_addr: member.control_addr.map(|a| a.to_string()),
    }
}

/// Starts this node's Raft groups and, when members have control
/// addresses, its control plane.
pub async fn start(
    config: &Config,
    section: &ClusterSection,
    store: Store,
    links: LinkFilter,
) -> anyhow::Result<(
    Arc<Cluster>,
    Option<Arc<Control>>,
    tokio::sync::mpsc::UnboundedReceiver<Leadership>,
)> {
    let me = section.described(config.node_id).ok_or_else(|| {
        anyhow::anyhow!(
            "node {} is not described in the cluster config",
            config.node_id
        )
    })?;
    // A spare joins once; after that its data dir holds the cluster map.
    let joined = store.cluster_map()?.is_some();
    if section.member(config.node_id).is_none() && config.join.is_none() && !joined {
        anyhow::bail!(
            "node {} is a spare: start it with --join ADDR (a member's HTTP address)",
            config.node_id
        );
    }
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
        cookie: section.cookie.clone(),
        records: section.members.iter().map(record).collect(),
        join: config.join.as_ref().map(|_| MemberRecord {
            state: MemberState::Joining,
            ..record(me)
        }),
        max_moving: section.max_moving_shards,
    };
    let (cluster, leadership) = Cluster::start(store, cluster_config, me.raft_addr, links).await?;
    let control = match me.control_addr {
        None => None,
        Some(listen) => {
            let control_config = ControlConfig {
                node_id: config.node_id,
                listen,
                cookie: section.cookie.clone().unwrap_or_default(),
                members: control_members(&cluster, section),
                down_after: 2 * section.election_timeout_max,
            };
            Some(cluster.start_control(control_config).await?)
        }
    };
    Ok((cluster, control, leadership))
}

/// The control addresses of the members, by the cluster map when there
/// is one (removed members left out), else the config.
fn control_members(
    cluster: &Cluster,
    section: &ClusterSection,
) -> BTreeMap<u64, std::net::SocketAddr> {
    match cluster.cluster_map() {
        Some(map) => map
            .members
            .iter()
            .filter(|m| m.state != MemberState::Removed)
            .filter_map(|m| Some((m.id, m.control_addr.as_ref()?.parse().ok()?)))
            .collect(),
        None => section
            .members
            .iter()
            .filter_map(|m| Some((m.id, m.control_addr?)))
            .collect(),
    }
}

/// Asks the cluster, through member `through` (its HTTP address), to admit
/// this node (which proves it holds the cluster's cookie by its digest, as
/// the Raft handshake does), until it is admitted or refused for good.
pub async fn join(through: String, record: MemberRecord, cookie: Option<String>) {
    let digest = cookie.map_or(0, |c| troupe_protocol::stable_hash(c.as_bytes()));
    let http = reqwest::Client::new();
    let url = format!("http://{through}/v1/cluster/join");
    loop {
        let answer = http
            .post(&url)
            .json(&json!({
                "id": record.id,
                "raft_addr": record.raft_addr,
                "http_addr": record.http_addr,
                "native_addr": record.native_addr,
                "control_addr": record.control_addr,
                "cluster": digest,
            }))
            .timeout(std::time::Duration::from_secs(90))
            .send()
            .await;
        match answer {
            Ok(response) if response.status().is_success() => {
                tracing::info!(node = record.id, through, "joined the cluster");
                return;
            }
            Ok(response) if response.status().is_client_error() => {
                let body = response.text().await.unwrap_or_default();
                tracing::error!(node = record.id, through, %body, "the cluster refused this node");
                return;
            }
            Ok(response) => {
                tracing::info!(node = record.id, through, status = %response.status(), "join not done yet; retrying")
            }
            Err(e) => {
                tracing::info!(node = record.id, through, error = %e, "join not sent; retrying")
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

/// Proposes a shard's transitions to its group.
pub struct ReplicatedLog(pub Arc<Cluster>);

impl ShardLog for ReplicatedLog {
    fn append(&self, batch: ShardBatch) -> Appending<'_> {
        Box::pin(async move {
            self.0
                .propose(batch)
                .await
                .map(|_| ())
                .map_err(|e| match e {
                    ProposeError::NotLeader { shard, leader } => Error::new(
                        ErrorCode::Unavailable,
                        format!("shard {shard} is now led by {leader:?}; retry"),
                    ),
                    ProposeError::Failed { .. } => {
                        Error::new(ErrorCode::Unavailable, e.to_string())
                    }
                })
        })
    }

    fn settle(&self, shard: u32) -> Settling<'_> {
        Box::pin(async move {
            if !self.0.settle(shard).await {
                tracing::debug!(shard_id = shard, "the shard's log did not settle in time");
            }
        })
    }
}

/// Activates a shard where this node leads it with complete state and
/// stops its actors at once when the lead is lost. Each change runs in a
/// span carrying `shard`, `term` and `node`, so that a failover reads the
/// same on every node's log.
pub async fn follow_leadership(
    runtime: Runtime,
    node: u64,
    mut events: tokio::sync::mpsc::UnboundedReceiver<Leadership>,
) {
    use tracing::Instrument;
    while let Some(event) = events.recv().await {
        match event {
            Leadership::Gained { shard, term } => {
                let span = tracing::info_span!("activate", shard, term, node);
                if let Err(e) = runtime.activate(shard).instrument(span.clone()).await {
                    span.in_scope(|| tracing::error!(error = %e, "activating a led shard failed"));
                }
            }
            Leadership::Lost { shard } => {
                let span = tracing::info_span!("deactivate", shard, node);
                let _ = runtime.deactivate(shard).instrument(span).await;
            }
        }
    }
}

/// The other members, reached on their native protocol (requests and
/// internal commands) or HTTP (proxied requests).
pub struct Peers {
    cluster: Arc<Cluster>,
    control: Option<Arc<Control>>,
    section: ClusterSection,
    me: u64,
    clients: tokio::sync::Mutex<HashMap<u64, Client>>,
    http: reqwest::Client,
    /// Held by the deploy under way on the metadata leader.
    deploys: tokio::sync::Mutex<()>,
}

impl Peers {
    /// Peers of node `me`.
    pub fn new(
        cluster: Arc<Cluster>,
        control: Option<Arc<Control>>,
        section: ClusterSection,
        me: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            control,
            section,
            me,
            clients: Default::default(),
            http: reqwest::Client::new(),
            deploys: Default::default(),
        })
    }

    /// The cluster.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// Whether member `node` is up: by the control plane's failure
    /// detector where there is one, else by Raft traffic.
    pub fn is_up(&self, node: u64) -> bool {
        match &self.control {
            Some(control) => control.state(node) == troupe_cluster::MemberState::Up,
            None => self.cluster.is_up(node),
        }
    }

    /// Hands the shards this node leads to other replicas (a node stopped
    /// on purpose leaves no election behind).
    pub async fn hand_off(&self) {
        let cluster = self.cluster.clone();
        let _ = cluster
            .clone()
            .on_runtime(async move { cluster.hand_off().await })
            .await;
    }

    /// Stops the control plane and every Raft group.
    pub async fn shutdown(&self) {
        if let Some(control) = &self.control {
            control.shutdown();
        }
        self.cluster.shutdown().await;
    }

    /// A node's HTTP and native addresses: from the cluster map (members
    /// that joined are there), else from the config.
    fn addresses(&self, node: u64) -> Option<(String, String)> {
        if let Some(member) = self
            .cluster
            .cluster_map()
            .and_then(|m| m.member(node).cloned())
        {
            return Some((member.http_addr, member.native_addr));
        }
        self.section
            .described(node)
            .map(|m| (m.http_addr.to_string(), m.native_addr.to_string()))
    }

    /// The node leading `shard`, when it is another one.
    pub fn leader_elsewhere(&self, shard: u32) -> Option<u64> {
        self.cluster
            .leader_of(shard)
            .filter(|leader| *leader != self.me)
    }

    /// The answer to a routed request for `shard`, which `leader` leads.
    pub fn not_leader(&self, shard: u32, leader: u64) -> ApiError {
        let native_addr = self.addresses(leader).map(|(_, native)| native);
        ApiError::new(
            ErrorCode::NotLeader,
            format!(
                "node {} does not lead shard {shard}; node {leader} does",
                self.me
            ),
        )
        .with_details(json!({
            "shard": shard,
            "leader": leader,
            "native_addr": native_addr,
            "epoch": self.cluster.cluster_map().map_or(0, |m| m.epoch),
        }))
    }

    async fn client(&self, node: u64) -> Result<Client, ApiError> {
        let mut clients = self.clients.lock().await;
        if let Some(client) = clients.get(&node) {
            return Ok(client.clone());
        }
        let (_, native_addr) = self.addresses(node).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("node {node} is unknown"))
        })?;
        let client = Client::connect(native_addr)
            .await
            .map_err(|e| unreachable(node, e))?
            .without_routing()
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

    /// Which node answers for each shard in a request that spans them all:
    /// this node for its own, else the shard's leader as last known, else a
    /// replica that is up, else its first replica.
    pub fn shard_holders(&self) -> Result<crate::gather::Holders, ApiError> {
        let (mut mine, mut elsewhere) = (Vec::new(), BTreeMap::<u64, Vec<u32>>::new());
        for (shard, replicas) in self.cluster.placements().into_iter().enumerate() {
            let shard = shard as u32;
            if self.cluster.holds(shard) {
                mine.push(shard);
                continue;
            }
            let holder = self
                .cluster
                .leader_of(shard)
                .filter(|leader| replicas.contains(leader))
                .or_else(|| replicas.iter().copied().find(|node| self.is_up(*node)))
                .or_else(|| replicas.first().copied())
                .ok_or_else(|| crate::gather::no_replica(shard))?;
            elsewhere.entry(holder).or_default().push(shard);
        }
        Ok((mine, elsewhere))
    }

    /// `GET path_and_query` on node `node`'s HTTP API, as JSON.
    pub async fn get_json(&self, node: u64, path_and_query: &str) -> Result<Json, ApiError> {
        let response = self
            .proxy(
                node,
                reqwest::Method::GET,
                path_and_query,
                None,
                Default::default(),
            )
            .await?;
        json_answer(response).await
    }

    /// `POST path_and_query` with a JSON body on node `node`'s HTTP API.
    pub async fn post_json(
        &self,
        node: u64,
        path_and_query: &str,
        body: &Json,
    ) -> Result<Json, ApiError> {
        let response = self
            .proxy(
                node,
                reqwest::Method::POST,
                path_and_query,
                Some("application/json".into()),
                body.to_string().into(),
            )
            .await?;
        json_answer(response).await
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
        let (http_addr, _) = self.addresses(node).ok_or_else(|| {
            ApiError::new(ErrorCode::Unavailable, format!("node {node} is unknown"))
        })?;
        let url = format!("http://{http_addr}{path_and_query}");
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

    /// Deploys `source` through the metadata group: its leader checks it
    /// against what is deployed and proposes it; any other node forwards it
    /// there. Answers (the definition's summary and `created`) once a
    /// quorum holds it and every member that answers has applied it.
    pub async fn deploy(&self, rt: &Runtime, source: &str) -> Result<Json, ApiError> {
        let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT;
        loop {
            let failure = match self.cluster.leader_of(META_GROUP) {
                Some(leader) if leader == self.me => {
                    match self.deploy_as_leader(rt, source).await {
                        Err(e) if e.code == ErrorCode::Unavailable => e,
                        done => return done,
                    }
                }
                Some(leader) => {
                    let request = Request::DeployAsLeader {
                        source: source.to_owned(),
                    };
                    match self.forward(leader, request).await {
                        Ok(Response::Json(text)) => {
                            return serde_json::from_str(&text)
                                .map_err(|e| ApiError::new(ErrorCode::Internal, e.to_string()));
                        }
                        Ok(other) => {
                            return Err(ApiError::new(
                                ErrorCode::Internal,
                                format!("unexpected answer {other:?}"),
                            ));
                        }
                        Err(e) if e.code == ErrorCode::Unavailable => e,
                        Err(e) => return Err(e),
                    }
                }
                None => ApiError::new(
                    ErrorCode::Unavailable,
                    "the cluster's metadata group has no leader; retry",
                ),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// [`Peers::deploy`] on the metadata group's leader (`unavailable`
    /// elsewhere).
    pub async fn deploy_as_leader(&self, rt: &Runtime, source: &str) -> Result<Json, ApiError> {
        let record = api::definition_record(source)?;
        // One deploy at a time, so that two of one version cannot both
        // pass the check below.
        let _one_at_a_time = self.deploys.lock().await;
        let existing = api::stored_definition(rt, &record.name, record.version).await?;
        let (created, stored) = match existing {
            Some(stored) => {
                api::check_same(&stored, source)?;
                (false, stored)
            }
            None => {
                let index = self
                    .cluster
                    .propose(ShardBatch::deploy(&record))
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
                rt.services
                    .definitions
                    .deployed(&record.name, record.version);
                self.await_members(index).await;
                (true, record)
            }
        };
        let mut view = api::definition_summary(&stored);
        view["created"] = Json::Bool(created);
        Ok(view)
    }

    /// Waits (a bounded time) until every other member that answers has
    /// applied the metadata group's entry `index`, so that a start sent to
    /// any node right after a deploy finds the definition. (Every member is
    /// asked: one just started may not be seen up yet; one that is down
    /// fails at once.)
    async fn await_members(&self, index: u64) {
        let waits = self
            .member_ids()
            .into_iter()
            .filter(|id| *id != self.me)
            .map(|id| async move {
                let outcome = self.forward(id, Request::AwaitMeta { index }).await;
                if let Err(e) = outcome {
                    tracing::warn!(node = id, error = %e.message, "member has not applied a deploy yet");
                }
            });
        futures_util::future::join_all(waits).await;
    }

    /// Answers [`Request::AwaitMeta`]: waits until this node applied the
    /// metadata group's entry `index`.
    pub async fn await_meta(&self, index: u64) -> Result<(), ApiError> {
        if self
            .cluster
            .wait_applied(META_GROUP, index, META_APPLY_WAIT)
            .await
        {
            return Ok(());
        }
        Err(ApiError::new(
            ErrorCode::Unavailable,
            format!("metadata entry {index} not applied here yet"),
        ))
    }

    /// `GET /v1/cluster`: members and every shard's leader and replicas.
    pub fn status(&self, runtime: &Runtime) -> Json {
        let shards = self.cluster.status();
        let mut leading: BTreeMap<u64, usize> = BTreeMap::new();
        let mut holding: BTreeMap<u64, usize> = BTreeMap::new();
        for shard in &shards {
            if let Some(leader) = shard.leader {
                *leading.entry(leader).or_default() += 1;
            }
            for node in &shard.placement {
                *holding.entry(*node).or_default() += 1;
            }
        }
        let moving: Vec<Json> = shards
            .iter()
            .filter(|s| {
                let (mut voters, mut placed) = (s.replicas.clone(), s.placement.clone());
                voters.sort_unstable();
                placed.sort_unstable();
                voters != placed || !s.learners.is_empty()
            })
            .map(|s| json!({"shard": s.id, "from": s.replicas, "to": s.placement, "learners": s.learners}))
            .collect();
        let members: Vec<MemberRecord> = match self.cluster.cluster_map() {
            Some(map) => map.members,
            None => self.section.members.iter().map(record).collect(),
        };
        let nodes: Vec<Json> = members
            .iter()
            .map(|m| {
                let state = match m.state {
                    MemberState::Removed => "removed",
                    _ if !self.is_up(m.id) => "down",
                    other => other.as_str(),
                };
                json!({
                    "id": m.id,
                    "http_addr": m.http_addr,
                    "native_addr": m.native_addr,
                    "raft_addr": m.raft_addr,
                    "control_addr": m.control_addr,
                    "state": state,
                    "membership": m.state.as_str(),
                    "replicas": holding.get(&m.id).copied().unwrap_or(0),
                    "leads": leading.get(&m.id).copied().unwrap_or(0),
                    "this": m.id == self.me,
                })
            })
            .collect();
        let active: Vec<u32> = (0..self.cluster.config().shards)
            .filter(|s| runtime.router().is_active(*s))
            .collect();
        let meta = self.cluster.meta_status();
        json!({
            "node": self.me,
            "epoch": self.cluster.cluster_map().map_or(0, |m| m.epoch),
            "metadata": {"leader": meta.leader, "term": meta.term, "applied": meta.applied},
            "replication_factor": self.section.replication_factor,
            "nodes": nodes,
            "shards": shards,
            "moves_in_progress": moving,
            "active_here": active,
        })
    }

    /// The ids of the members (the cluster map's, removed ones aside).
    fn member_ids(&self) -> Vec<u64> {
        match self.cluster.cluster_map() {
            Some(map) => map
                .members
                .iter()
                .filter(|m| m.state != MemberState::Removed)
                .map(|m| m.id)
                .collect(),
            None => self.section.members.iter().map(|m| m.id).collect(),
        }
    }

    /// Keeps the control plane's members in step with the cluster map.
    pub fn follow_members(&self) {
        if let Some(control) = &self.control {
            control.set_members(control_members(&self.cluster, &self.section));
        }
    }

    /// A change of membership (`join`, `drain`, `remove`), made on the
    /// metadata group's leader: here, or proxied there.
    pub async fn change(&self, path: &str, body: Json) -> Result<Json, ApiError> {
        // A malformed request is refused here, leader or not.
        let change = MemberChange::parse(path, &body)?;
        let deadline = tokio::time::Instant::now() + LEADER_CHANGE_WAIT;
        loop {
            let failure = match self.cluster.leader_of(META_GROUP) {
                Some(leader) if leader == self.me => match self.change_here(&change).await {
                    Err(e) if e.code == ErrorCode::Unavailable => e,
                    done => return done,
                },
                Some(leader) => match self.post_json(leader, path, &body).await {
                    Err(e) if e.code == ErrorCode::Unavailable => e,
                    done => return done,
                },
                None => ApiError::new(
                    ErrorCode::Unavailable,
                    "the cluster's metadata group has no leader; retry",
                ),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    async fn change_here(&self, change: &MemberChange) -> Result<Json, ApiError> {
        let outcome = match change {
            MemberChange::Join(record, digest) => self.cluster.join(record.clone(), *digest).await,
            MemberChange::Drain(node) => self.cluster.drain(*node).await,
            MemberChange::Remove(node) => self.cluster.remove(*node).await,
        };
        match outcome {
            Ok(map) => Ok(json!({
                "epoch": map.epoch,
                "nodes": map.members.iter().map(|m| json!({"id": m.id, "state": m.state.as_str()})).collect::<Vec<_>>(),
            })),
            Err(ChangeError::NotLeader(_)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                "this node no longer leads the metadata group; retry",
            )),
            Err(ChangeError::Refused(message)) => {
                Err(ApiError::new(ErrorCode::InvalidState, message))
            }
            Err(ChangeError::Unavailable(message)) => {
                Err(ApiError::new(ErrorCode::Unavailable, message))
            }
        }
    }
}

/// A change of membership asked through the HTTP API.
enum MemberChange {
    /// Admit this node, which presents this cookie digest.
    Join(MemberRecord, u64),
    Drain(u64),
    Remove(u64),
}

impl MemberChange {
    /// The change `POST path` with `body` asks for.
    fn parse(path: &str, body: &Json) -> Result<Self, ApiError> {
        let invalid = |m: String| ApiError::new(ErrorCode::InvalidRequest, m);
        let parts: Vec<&str> = path.trim_start_matches("/v1/cluster/").split('/').collect();
        match parts[..] {
            ["join"] => {
                let field = |name: &str| -> Result<String, ApiError> {
                    body[name]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| invalid(format!("join: {name} is required")))
                };
                let record = MemberRecord {
                    id: body["id"]
                        .as_u64()
                        .filter(|id| *id > 0)
                        .ok_or_else(|| invalid("join: id (>= 1) is required".into()))?,
                    state: MemberState::Joining,
                    raft_addr: field("raft_addr")?,
                    http_addr: field("http_addr")?,
                    native_addr: field("native_addr")?,
                    control_addr: body["control_addr"].as_str().map(str::to_owned),
                };
                let digest = body["cluster"].as_u64().ok_or_else(|| {
                    invalid("join: cluster (the cookie's digest) is required".into())
                })?;
                Ok(Self::Join(record, digest))
            }
            ["nodes", node, action] => {
                let node: u64 = node
                    .parse()
                    .map_err(|_| invalid(format!("{node:?} is not a node id")))?;
                match action {
                    "drain" => Ok(Self::Drain(node)),
                    "remove" => Ok(Self::Remove(node)),
                    other => Err(invalid(format!("no cluster action {other:?}"))),
                }
            }
            _ => Err(ApiError::new(ErrorCode::NotFound, "no such route")),
        }
    }
}

/// A proxied HTTP answer: its JSON body, or the error it carries.
pub async fn json_answer(response: axum::response::Response) -> Result<Json, ApiError> {
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    let value: Json = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("another node answered non-JSON: {e}"),
        )
    })?;
    if status.is_success() {
        return Ok(value);
    }
    let code = value["code"]
        .as_str()
        .and_then(ErrorCode::parse)
        .unwrap_or(ErrorCode::Internal);
    let message = value["message"].as_str().unwrap_or_default().to_owned();
    Err(ApiError::new(code, message).with_details(value["details"].clone()))
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
        use tracing::Instrument;
        metrics::counter!(crate::metrics::FORWARDED_TOTAL).increment(1);
        let wire = serde_json::to_string(&WireCommand::from(command));
        let peers = self.0.clone();
        let span = tracing::debug_span!("forward", shard, node = peers.me);
        Box::pin(
            async move {
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
                    if failure.code != ErrorCode::Unavailable
                        || tokio::time::Instant::now() >= deadline
                    {
                        return Err(failure);
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(25)).await;
                }
            }
            .instrument(span),
        )
    }
}

/// How long a member waits to apply a deploy before the deploy answers anyway.
const META_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Deploys the configured definition files through the metadata group,
/// retrying while the cluster has no quorum (at start, members come up one
/// by one).
pub async fn deploy_when_ready(
    runtime: Runtime,
    peers: Arc<Peers>,
    sources: Vec<(String, String)>,
) {
    for (file, source) in sources {
        loop {
            match peers.deploy(&runtime, &source).await {
                Ok(_) => break,
                Err(e) if e.code == ErrorCode::Unavailable => {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(file, error = %e.message, details = %e.details, "deploying a configured definition failed");
                    break;
                }
            }
        }
    }
}

/// Keeps the definition cache and the control plane's members in step
/// with what the metadata group applies.
pub async fn follow_meta(runtime: Runtime, peers: Arc<Peers>) {
    let Some(mut changes) = peers.cluster().take_meta_changes() else {
        return;
    };
    while let Some(change) = changes.recv().await {
        if matches!(change, MetaChange::Map(_) | MetaChange::Installed) {
            peers.follow_members();
        }
        let deployed = match change {
            MetaChange::Map(_) => continue,
            MetaChange::Deployed(deployed) => deployed,
            MetaChange::Installed => match runtime.services.store.definitions() {
                Ok(all) => all.into_iter().map(|d| (d.name, d.version)).collect(),
                Err(e) => {
                    tracing::error!(error = %e, "reading definitions after a metadata snapshot");
                    continue;
                }
            },
        };
        for (name, version) in deployed {
            runtime.services.definitions.deployed(&name, version);
        }
    }
}

/// How long a command for a shard whose leader is unreachable waits for a new one.
const LEADER_CHANGE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
