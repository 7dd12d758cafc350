//! [`Cluster`]: the Raft groups of the shards this node replicates, their
//! transport, proposals, and the leadership events that activate shards.

use crate::log_store::LogStore;
use crate::membership::{follow_map, stored_member};
use crate::network::Network;
use crate::state_machine::MetaChange;
use crate::state_machine::ShardMachine;
use crate::transport::{GroupView, Identity, LinkFilter, Transport};
use crate::types::{GroupId, NodeId, Raft, TypeConfig};
use openraft::async_runtime::WatchReceiver;
use openraft::impls::{BasicNode, ProgressResponder};
use openraft::{Config, ServerState};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;
use troupe_storage::{
    ClusterMap, META_GROUP, MemberRecord, MemberState, ShardBatch, Store, WalSyncer,
};

/// How the cluster is laid out and timed.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// This node.
    pub node_id: NodeId,
    /// Every member's Raft address, by id.
    pub members: BTreeMap<NodeId, SocketAddr>,
    /// Shard count.
    pub shards: u32,
    /// Replicas per shard.
    pub replication_factor: usize,
    /// Election timeout range, ms.
    pub election_timeout_ms: (u64, u64),
    /// Heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// Log entries after which a group snapshots and purges its log.
    pub snapshot_after: u64,
    /// fsync log appends before acknowledging them.
    pub sync: bool,
    /// The cluster's shared cookie: peers presenting another are refused.
    pub cookie: Option<String>,
    /// Every first member's addresses, for the first cluster map.
    pub records: Vec<MemberRecord>,
    /// This node joins a running cluster: it forms no group and waits to
    /// be added to them.
    pub join: Option<MemberRecord>,
    /// Most shards whose replicas move at once.
    pub max_moving: usize,
}

impl ClusterConfig {
    /// The first placement of `shard`'s replicas: `replication_factor`
    /// members in id order, starting at the shard's position (spreads
    /// leaders). The metadata group is on every member.
    pub fn replicas(&self, shard: GroupId) -> Vec<NodeId> {
        let ids: Vec<NodeId> = self.members.keys().copied().collect();
        if shard == META_GROUP {
            return ids;
        }
        let count = self.replication_factor.min(ids.len());
        (0..count)
            .map(|k| ids[(shard as usize + k) % ids.len()])
            .collect()
    }
}

/// A change of this node's leadership of a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leadership {
    /// This node leads `shard` in `term` and has applied the term's first
    /// entry: its state is complete, activate the shard.
    Gained {
        /// Shard.
        shard: GroupId,
        /// Term.
        term: u64,
    },
    /// This node no longer leads `shard`: stop its actors at once.
    Lost {
        /// Shard.
        shard: GroupId,
    },
}

/// Why a proposal was not committed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    /// This node does not lead the shard (any more); `leader` may.
    #[error("node does not lead shard {shard} (leader: {leader:?})")]
    NotLeader {
        /// Shard.
        shard: GroupId,
        /// The leader, when known.
        leader: Option<NodeId>,
    },
    /// The group failed (storage or shutdown).
    #[error("replication of shard {shard} failed: {message}")]
    Failed {
        /// Shard.
        shard: GroupId,
        /// What happened.
        message: String,
    },
}

/// How long a proposal waits for a quorum before it is answered
/// `unavailable` (the actor then reloads what is durable).
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's group on this node.
#[derive(Clone)]
pub(crate) struct Group {
    pub(crate) raft: Raft,
    /// The leader id of the term this node leads in, once its state is complete.
    pub(crate) leading: Arc<RwLock<Option<LeaderId>>>,
    /// Queue of the shard's proposer.
    proposals: mpsc::UnboundedSender<Proposal>,
}

type LeaderId = openraft::alias::CommittedLeaderIdOf<TypeConfig>;

/// A batch waiting to be proposed, and who waits for its outcome.
type Proposal = (ShardBatch, oneshot::Sender<Result<u64, ProposeError>>);

/// Proposals of one shard in flight at once.
const PROPOSALS_IN_FLIGHT: usize = 4;

/// Most transitions merged into one Raft entry.
const MERGED_PER_ENTRY: usize = 256;

/// A shard's replication state, for `/v1/cluster`.
#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// Shard.
    pub id: GroupId,
    /// Leader, when known.
    pub leader: Option<NodeId>,
    /// Voting replicas.
    pub replicas: Vec<NodeId>,
    /// Where the cluster map places the replicas (preferred leader first).
    pub placement: Vec<NodeId>,
    /// Learners catching up to join the voters.
    pub learners: Vec<NodeId>,
    /// Current term as this node sees it.
    pub term: u64,
    /// Last log index applied here.
    pub applied: Option<u64>,
    /// This node's role.
    pub role: String,
}

/// The Raft groups of this node.
pub struct Cluster {
    pub(crate) config: ClusterConfig,
    pub(crate) store: Store,
    /// What the metadata group applies, until the node takes it.
    meta_changes: std::sync::Mutex<Option<mpsc::UnboundedReceiver<MetaChange>>>,
    pub(crate) transport: Arc<Transport>,
    groups: RwLock<HashMap<GroupId, Group>>,
    syncer: WalSyncer,
    /// Where leadership changes go.
    events: mpsc::UnboundedSender<Leadership>,
    /// The metadata group's changes, for the node.
    changes: mpsc::UnboundedSender<MetaChange>,
    /// Held by a change of the cluster map made here (one at a time).
    pub(crate) map_changes: tokio::sync::Mutex<()>,
    /// Shards this node holds no replica of, as their leaders last
    /// described them.
    pub(crate) elsewhere: RwLock<HashMap<GroupId, GroupView>>,
    /// Raft and the transport run here, apart from the actors, so that
    /// actor load cannot starve heartbeats into elections.
    runtime: std::sync::Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
}

impl Cluster {
    /// Starts the groups of every shard this node replicates, listening for
    /// peers on `listen`. Leadership changes arrive on the returned channel.
    pub async fn start(
        store: Store,
        config: ClusterConfig,
        listen: SocketAddr,
        filter: LinkFilter,
    ) -> std::io::Result<(Arc<Self>, mpsc::UnboundedReceiver<Leadership>)> {
        let mut owned = Background(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("troupe-raft")
                .enable_all()
                .build()?,
        ));
        let runtime = owned.0.as_ref().expect("runtime").handle().clone();
        let stored_map = store.cluster_map().map_err(std::io::Error::other)?;
        let mut peers: HashMap<NodeId, SocketAddr> = config
            .members
            .iter()
            .filter(|(id, _)| **id != config.node_id)
            .map(|(id, addr)| (*id, *addr))
            .collect();
        for member in stored_map.iter().flat_map(|m| &m.members) {
            if let (true, Ok(addr)) = (member.id != config.node_id, member.raft_addr.parse()) {
                peers.insert(member.id, addr);
            }
        }
        let identity = Identity::new(store.clone(), config.cookie.as_deref())?;
        let transport = Transport::new(config.node_id, identity, peers, filter);
        if let Some(map) = &stored_map {
            for removed in map.in_state(MemberState::Removed) {
                transport.remove_peer(removed);
            }
        }
        let listener = runtime
            .spawn(async move { tokio::net::TcpListener::bind(listen).await })
            .await
            .map_err(std::io::Error::other)??;
        runtime.spawn(transport.clone().serve(listener));
        let greeter = transport.clone();
        runtime
            .spawn(async move { greeter.greet_peers().await })
            .await
            .map_err(std::io::Error::other)?
            .map_err(|reason| std::io::Error::other(format!("refused by the cluster: {reason}")))?;
        let syncer = WalSyncer::start(store.clone(), config.sync);
        let (events, leadership) = mpsc::unbounded_channel();
        let (changes, meta_changes) = mpsc::unbounded_channel();
        let me = config.node_id;
        // The groups to run: the shards the stored map places here (and
        // any this node is still a member of while a move finishes), or on
        // a first start the first placement; a joining node only the
        // metadata group until it is placed.
        let mut shards: Vec<GroupId> = match (&stored_map, &config.join) {
            (Some(map), _) => map.shards_on(me),
            (None, Some(_)) => Vec::new(),
            (None, None) => (0..config.shards)
                .filter(|s| config.replicas(*s).contains(&me))
                .collect(),
        };
        for shard in 0..config.shards {
            if !shards.contains(&shard) && stored_member(&store, shard, me) {
                shards.push(shard);
            }
        }
        let form = stored_map.is_none() && config.join.is_none();
        let cluster = Arc::new(Self {
            config,
            store,
            meta_changes: std::sync::Mutex::new(Some(meta_changes)),
            transport,
            groups: RwLock::default(),
            syncer,
            events,
            changes,
            map_changes: tokio::sync::Mutex::default(),
            elsewhere: RwLock::default(),
            handle: runtime,
            runtime: std::sync::Mutex::new(owned.0.take()),
        });
        for shard in shards.into_iter().chain([META_GROUP]) {
            let first = cluster.config.replicas(shard).first() == Some(&me);
            cluster.add_group(shard, form && first).await?;
        }
        cluster
            .runtime()
            .spawn(follow_map(Arc::downgrade(&cluster)));
        Ok((cluster, leadership))
    }

    /// Starts this node's replica of `shard`; `form` makes it the group's
    /// first member (cluster formation only; otherwise its leader adds it).
    pub(crate) async fn add_group(
        self: &Arc<Self>,
        shard: GroupId,
        form: bool,
    ) -> std::io::Result<()> {
        if self.holds(shard) {
            return Ok(());
        }
        let machine = if shard == META_GROUP {
            ShardMachine::meta(self.store.clone(), self.changes.clone())
        } else {
            ShardMachine::new(self.store.clone(), shard)
        };
        let raft = self
            .runtime()
            .spawn(new_group(
                self.config.clone(),
                shard,
                self.store.clone(),
                self.syncer.clone(),
                self.transport.clone(),
                machine,
                form,
            ))
            .await
            .map_err(std::io::Error::other)??;
        self.transport.serve_group(shard, raft.clone());
        let leading = Arc::new(RwLock::new(None));
        let (proposals, queue) = mpsc::unbounded_channel();
        self.runtime()
            .spawn(run_proposer(shard, raft.clone(), leading.clone(), queue));
        self.groups.write().expect("groups lock").insert(
            shard,
            Group {
                raft: raft.clone(),
                leading,
                proposals,
            },
        );
        let lease = Duration::from_millis(self.config.election_timeout_ms.0);
        self.runtime().spawn(watch_leadership(
            Arc::downgrade(self),
            shard,
            raft,
            lease,
            self.events.clone(),
        ));
        tracing::info!(
            shard_id = shard,
            node = self.config.node_id,
            form,
            "replica started"
        );
        Ok(())
    }

    /// Stops this node's replica of `shard` and deletes its data, log and
    /// state: the group's leader removed it.
    pub(crate) async fn drop_group(&self, shard: GroupId) {
        let Some(group) = self.groups.write().expect("groups lock").remove(&shard) else {
            return;
        };
        self.transport.forget_group(shard);
        if group
            .leading
            .write()
            .expect("leading lock")
            .take()
            .is_some()
        {
            let _ = self.events.send(Leadership::Lost { shard });
        }
        let _ = group.raft.shutdown().await;
        let store = self.store.clone();
        let forgotten = tokio::task::spawn_blocking(move || store.forget_group(shard)).await;
        if let Ok(Err(e)) = forgotten {
            tracing::error!(shard_id = shard, error = %e, "deleting a dropped replica failed");
        }
        tracing::info!(
            shard_id = shard,
            node = self.config.node_id,
            "replica dropped"
        );
    }

    /// Every group on this node with its Raft handle.
    pub(crate) fn groups_here(&self) -> Vec<(GroupId, Raft)> {
        self.groups
            .read()
            .expect("groups lock")
            .iter()
            .map(|(shard, g)| (*shard, g.raft.clone()))
            .collect()
    }

    pub(crate) fn group(&self, shard: GroupId) -> Option<Group> {
        self.groups
            .read()
            .expect("groups lock")
            .get(&shard)
            .cloned()
    }

    pub(crate) fn runtime(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// Runs `work` on the replication runtime and waits for it.
    pub async fn on_runtime<T: Send + 'static>(
        self: Arc<Self>,
        work: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.runtime().spawn(work).await.ok()
    }

    /// Starts the control plane on the replication runtime (apart from the
    /// actors, like Raft, so that load cannot starve its pings).
    pub async fn start_control(
        &self,
        config: crate::ControlConfig,
    ) -> std::io::Result<Arc<crate::Control>> {
        self.runtime()
            .spawn(crate::Control::start(config))
            .await
            .map_err(std::io::Error::other)?
    }

    /// The configuration.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// What the metadata group applies here (definitions deployed,
    /// snapshots installed); the first caller takes it.
    pub fn take_meta_changes(&self) -> Option<mpsc::UnboundedReceiver<MetaChange>> {
        self.meta_changes.lock().expect("meta lock").take()
    }

    /// The cluster map as applied here, once the metadata group wrote one.
    pub fn cluster_map(&self) -> Option<ClusterMap> {
        self.store.cluster_map().ok().flatten()
    }

    /// Waits until `group` has applied entry `index` here; false after
    /// `timeout`.
    pub async fn wait_applied(&self, group: GroupId, index: u64, timeout: Duration) -> bool {
        let Some(g) = self.group(group) else {
            return false;
        };
        let mut metrics = g.raft.metrics();
        let reached = async {
            loop {
                let applied = metrics.borrow_watched().last_applied.map(|l| l.index());
                if applied.is_some_and(|a| a >= index) {
                    return;
                }
                if metrics.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        };
        tokio::time::timeout(timeout, reached).await.is_ok()
    }

    /// Waits until `group` has applied here every entry in this node's
    /// log of it (an entry a timed-out proposal left may still commit);
    /// false after [`PROPOSE_TIMEOUT`] (entries of a lost term that will
    /// never commit, or no quorum).
    pub async fn settle(&self, group: GroupId) -> bool {
        let Some(g) = self.group(group) else {
            return false;
        };
        let last = g.raft.metrics().borrow_watched().last_log_index;
        match last {
            Some(index) => self.wait_applied(group, index, PROPOSE_TIMEOUT).await,
            None => true,
        }
    }

    /// Commits `batch` to its group as the group's current leader,
    /// returning the entry's index once a quorum holds it and it is
    /// applied here. Batches proposed while earlier ones are in flight
    /// share one Raft entry.
    pub async fn propose(&self, batch: ShardBatch) -> Result<u64, ProposeError> {
        let shard = batch.shard();
        let not_leader = || ProposeError::NotLeader {
            shard,
            leader: self.leader_of(shard),
        };
        let Some(group) = self.group(shard) else {
            return Err(not_leader());
        };
        if group.leading.read().expect("leading lock").is_none() {
            metrics::counter!(crate::metrics::NOT_LEADER_TOTAL).increment(1);
            return Err(not_leader());
        }
        let (done, outcome) = oneshot::channel();
        if group.proposals.send((batch, done)).is_err() {
            return Err(not_leader());
        }
        outcome.await.unwrap_or_else(|_| Err(not_leader()))
    }

    /// Whether member `node` is up as this node sees it: itself, or a peer
    /// that answered Raft traffic within two election timeouts.
    pub fn is_up(&self, node: NodeId) -> bool {
        node == self.config.node_id
            || self.transport.heard_from(
                node,
                Duration::from_millis(2 * self.config.election_timeout_ms.1),
            )
    }

    /// The metadata group's members: every member not removed (the first
    /// members before there is a map).
    fn meta_members(&self) -> Vec<NodeId> {
        match self.cluster_map() {
            Some(map) => map
                .members
                .iter()
                .filter(|m| m.state != MemberState::Removed)
                .map(|m| m.id)
                .collect(),
            None => self.config.replicas(META_GROUP),
        }
    }

    /// Every shard's replicas as the cluster map places them (the first
    /// placement before there is a map), read once.
    pub fn placements(&self) -> Vec<Vec<NodeId>> {
        match self.cluster_map() {
            Some(map) => map.placement,
            None => (0..self.config.shards)
                .map(|s| self.config.replicas(s))
                .collect(),
        }
    }

    /// Whether this node holds a replica of `group`.
    pub fn holds(&self, group: GroupId) -> bool {
        self.groups
            .read()
            .expect("groups lock")
            .contains_key(&group)
    }

    /// The leader of `shard` as this node knows it: its replica's view,
    /// or for a shard not held here the leader its replicas named last.
    pub fn leader_of(&self, shard: GroupId) -> Option<NodeId> {
        match self.group(shard) {
            Some(g) => g.raft.metrics().borrow_watched().current_leader,
            None => self
                .elsewhere
                .read()
                .expect("elsewhere lock")
                .get(&shard)
                .and_then(|view| view.leader),
        }
    }

    /// Every shard's replication state as this node sees it.
    pub fn status(&self) -> Vec<ShardStatus> {
        self.placements()
            .into_iter()
            .enumerate()
            .map(|(shard, replicas)| self.group_status(shard as GroupId, replicas))
            .collect()
    }

    /// The metadata group's replication state as this node sees it.
    pub fn meta_status(&self) -> ShardStatus {
        self.group_status(META_GROUP, self.meta_members())
    }

    fn group_status(&self, shard: GroupId, replicas: Vec<NodeId>) -> ShardStatus {
        let Some(group) = self.group(shard) else {
            let view = self
                .elsewhere
                .read()
                .expect("elsewhere lock")
                .get(&shard)
                .cloned();
            return ShardStatus {
                id: shard,
                leader: view.as_ref().and_then(|v| v.leader),
                replicas: view
                    .as_ref()
                    .map_or_else(|| replicas.clone(), |v| v.voters.clone()),
                learners: view.map(|v| v.learners).unwrap_or_default(),
                placement: replicas,
                term: 0,
                applied: None,
                role: "none".into(),
            };
        };
        let m = group.raft.metrics().borrow_watched().clone();
        let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
        ShardStatus {
            id: shard,
            leader: m.current_leader,
            learners: m.membership_config.membership().learner_ids().collect(),
            replicas: if voters.is_empty() {
                replicas.clone()
            } else {
                voters
            },
            placement: replicas,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index()),
            role: format!("{:?}", m.state).to_lowercase(),
        }
    }

    /// Stops every group and the Raft runtime, so that nothing holds the
    /// store any more (their state stays on disk).
    pub async fn shutdown(&self) {
        let groups: Vec<Group> = self
            .groups
            .read()
            .expect("groups lock")
            .values()
            .cloned()
            .collect();
        for group in groups {
            let raft = group.raft.clone();
            let _ = self
                .runtime()
                .spawn(async move { raft.shutdown().await })
                .await;
        }
        let runtime = self.runtime.lock().expect("runtime lock").take();
        if let Some(runtime) = runtime {
            let _ = tokio::task::spawn_blocking(move || {
                runtime.shutdown_timeout(std::time::Duration::from_secs(2))
            })
            .await;
        }
    }
}

/// A runtime shut down without blocking when dropped: starting can fail
/// inside an async context, where a plain drop would panic.
struct Background(Option<tokio::runtime::Runtime>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.lock().expect("runtime lock").take() {
            runtime.shutdown_background();
        }
    }
}

async fn new_group(
    config: ClusterConfig,
    shard: GroupId,
    store: Store,
    syncer: WalSyncer,
    transport: Arc<Transport>,
    machine: ShardMachine,
    form: bool,
) -> std::io::Result<Raft> {
    let raft_config = Config {
        cluster_name: "troupe".into(),
        election_timeout_min: config.election_timeout_ms.0,
        election_timeout_max: config.election_timeout_ms.1,
        heartbeat_interval: config.heartbeat_ms,
        // No heartbeat to a follower that acknowledged an append within
        // the interval: under load, appends are the heartbeats.
        heartbeat_min_interval: Some(config.heartbeat_ms),
        // Send entries to followers as soon as they are written here, not
        // once they are synced here: the leader's fsync and the followers'
        // overlap.
        broadcast_submitted_on_append: Some(true),
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_after),
        max_in_snapshot_log_to_keep: 0,
        enable_pre_vote: Some(true),
        // Retry an unreachable peer at a steady pace well inside the
        // election timeout (the default doubles to a second, long enough
        // for a peer that came up late to elect a rival).
        backoff: "100ms 100ms 100ms".into(),
        ..Default::default()
    };
    let raft_config = Arc::new(raft_config.validate().map_err(std::io::Error::other)?);
    let log = LogStore::new(store.clone(), shard, syncer);
    let network = Network::new(transport, shard);
    let raft = Raft::new(config.node_id, raft_config, network, log, machine)
        .await
        .map_err(std::io::Error::other)?;
    // The group's first replica forms it; the others learn its membership
    // from the first leader. (Forming it on every replica makes each one
    // start an election at once, and a late one unseats the first leader.)
    let replicas = config.replicas(shard);
    if form && !raft.is_initialized().await.map_err(std::io::Error::other)? {
        let members: BTreeMap<NodeId, BasicNode> = replicas
            .into_iter()
            .map(|id| (id, BasicNode::new(config.members[&id].to_string())))
            .collect();
        if let Err(e) = raft.initialize(members).await {
            tracing::debug!(shard_id = shard, error = %e, "group already initialized");
        }
    }
    Ok(raft)
}

/// Proposes a shard's batches: one Raft entry for all the batches queued
/// when a slot frees up, at most [`PROPOSALS_IN_FLIGHT`] entries at once.
/// Under load, entries grow instead of multiplying; alone, a batch goes
/// out at once.
async fn run_proposer(
    shard: GroupId,
    raft: Raft,
    leading: Arc<RwLock<Option<LeaderId>>>,
    mut queue: mpsc::UnboundedReceiver<Proposal>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some((mut batch, first)) = queue.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut waiting = vec![first];
        while waiting.len() < MERGED_PER_ENTRY {
            let Ok((more, done)) = queue.try_recv() else {
                break;
            };
            batch.extend(more);
            waiting.push(done);
        }
        metrics::histogram!(crate::metrics::ENTRY_TRANSITIONS).record(waiting.len() as f64);
        let (raft, leader) = (raft.clone(), *leading.read().expect("leading lock"));
        let span = tracing::debug_span!(
            "propose",
            shard,
            node = *raft.node_id(),
            term = leader.map(|l| l.term),
            transitions = waiting.len()
        );
        tokio::spawn(
            async move {
                let outcome = write_entry(shard, &raft, leader, batch).await;
                for done in waiting {
                    let _ = done.send(outcome.clone());
                }
                drop(slot);
            }
            .instrument(span),
        );
    }
}

/// Writes one entry as leader `leader` and waits until it is applied here.
async fn write_entry(
    shard: GroupId,
    raft: &Raft,
    leader: Option<LeaderId>,
    batch: ShardBatch,
) -> Result<u64, ProposeError> {
    let not_leader = || {
        metrics::counter!(crate::metrics::NOT_LEADER_TOTAL).increment(1);
        ProposeError::NotLeader {
            shard,
            leader: raft.metrics().borrow_watched().current_leader,
        }
    };
    let leader = leader.ok_or_else(not_leader)?;
    let failed = |message: String| ProposeError::Failed { shard, message };
    let (responder, done) = ProgressResponder::<TypeConfig, _>::complete_only();
    raft.write(batch)
        .with_leader(leader)
        .responder(responder)
        .await
        .map_err(|e| failed(e.to_string()))?;
    match tokio::time::timeout(PROPOSE_TIMEOUT, done).await {
        Ok(Ok(Ok(written))) => Ok(written.log_id.index()),
        Ok(Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(_)))) => Err(not_leader()),
        Ok(Ok(Err(other))) => Err(failed(other.to_string())),
        Ok(Err(_)) => Err(not_leader()),
        // Maybe committed later (a retry with the same id is idempotent).
        Err(_) => Err(failed("no quorum answered in time".into())),
    }
}

/// Has the metadata group's first leader write the cluster map of the
/// configured members (epoch 1) when none is there yet.
async fn write_first_map(cluster: Arc<Cluster>) {
    if cluster.cluster_map().is_some() {
        return;
    }
    let config = &cluster.config;
    let map = ClusterMap {
        epoch: 1,
        members: config.records.clone(),
        shards: config.shards,
        replication_factor: config.replication_factor as u32,
        placement: (0..config.shards).map(|s| config.replicas(s)).collect(),
    };
    if let Err(e) = cluster.propose(ShardBatch::cluster_map(&map)).await {
        tracing::warn!(error = %e, "writing the first cluster map failed; the next leader retries");
    }
}

/// Follows a group's metrics and reports when this node starts leading
/// with complete state (its term's first entry applied) and when it stops,
/// including when a quorum has not answered within `lease` (a partitioned
/// leader stops its actors before the majority can elect another).
async fn watch_leadership(
    cluster: std::sync::Weak<Cluster>,
    shard: GroupId,
    raft: Raft,
    lease: Duration,
    events: mpsc::UnboundedSender<Leadership>,
) {
    use openraft::Instant as _;
    let me = *raft.node_id();
    let mut metrics = raft.metrics();
    let mut led: Option<u64> = None;
    let mut tick = tokio::time::interval(lease / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let (leading_term, leader, acked_ms_ago) = {
            let m = metrics.borrow_and_update();
            let acked_ms_ago = m
                .last_quorum_acked
                .as_ref()
                .map(|at| at.elapsed().as_millis() as u64);
            let alone = m.membership_config.membership().voter_ids().count() <= 1;
            let heard = alone
                || m.last_quorum_acked
                    .as_ref()
                    .is_some_and(|at| at.elapsed() < lease);
            let complete = m.state == ServerState::Leader
                && m.current_leader == Some(me)
                && heard
                && m.last_applied
                    .as_ref()
                    .is_some_and(|l| l.leader_id.term == m.current_term);
            (
                complete.then_some(m.current_term),
                m.current_leader,
                acked_ms_ago,
            )
        };
        if leading_term != led {
            let Some(cluster) = cluster.upgrade() else {
                return;
            };
            let Some(group) = cluster.group(shard) else {
                return;
            };
            if led.is_some() {
                *group.leading.write().expect("leading lock") = None;
                tracing::info!(
                    shard_id = shard,
                    node = me,
                    ?leader,
                    ?acked_ms_ago,
                    "shard leadership lost"
                );
                if shard != META_GROUP {
                    let _ = events.send(Leadership::Lost { shard });
                }
                led = None;
            }
            if let Some(term) = leading_term
                && let Ok(leader) = raft.as_leader()
            {
                *group.leading.write().expect("leading lock") =
                    Some(leader.to_committed_leader_id());
                metrics::counter!(crate::metrics::LEADER_CHANGES_TOTAL).increment(1);
                tracing::info!(shard_id = shard, term, node = me, "shard leadership gained");
                if shard == META_GROUP {
                    tokio::spawn(write_first_map(cluster.clone()));
                } else {
                    let _ = events.send(Leadership::Gained { shard, term });
                }
                led = Some(term);
            }
        }
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tick.tick() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(members: u64, replication_factor: usize) -> ClusterConfig {
        ClusterConfig {
            node_id: 1,
            members: (1..=members)
                .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 9000 + id as u16))))
                .collect(),
            shards: 16,
            replication_factor,
            election_timeout_ms: (300, 600),
            heartbeat_ms: 100,
            snapshot_after: 100,
            sync: false,
            cookie: None,
            records: Vec::new(),
            join: None,
            max_moving: 2,
        }
    }

    #[test]
    fn replicas_rotate_over_the_members_so_leaders_spread() {
        let three = config(3, 3);
        assert_eq!(three.replicas(0), vec![1, 2, 3]);
        assert_eq!(three.replicas(1), vec![2, 3, 1]);
        assert_eq!(three.replicas(5), vec![3, 1, 2]);
        let five = config(5, 3);
        let mut held = BTreeMap::<NodeId, usize>::new();
        for shard in 0..five.shards {
            let replicas = five.replicas(shard);
            assert_eq!(replicas.len(), 3);
            let distinct: std::collections::BTreeSet<_> = replicas.iter().collect();
            assert_eq!(distinct.len(), 3, "{replicas:?}");
            for node in replicas {
                *held.entry(node).or_default() += 1;
            }
        }
        // 48 replicas over 5 nodes: 9 or 10 each.
        assert!(held.values().all(|n| (9..=10).contains(n)), "{held:?}");
        // More replicas asked than members: every member, once.
        assert_eq!(config(2, 3).replicas(0), vec![1, 2]);
    }
}
