//! Membership changes: members join, drain and are removed through the
//! cluster map, which the metadata group's leader changes one step at a
//! time; every node follows the map.
//!
//! - Each node starts the replicas the map places on it, learns members'
//!   addresses and refuses removed members.
//! - A shard's leader moves its group to the map's placement: it adds the
//!   new replicas as learners, waits until they caught up (a snapshot
//!   when the log was purged), changes the voters by joint consensus, and
//!   hands leadership to the preferred replica (a transfer, not an
//!   election after a timeout).
//! - A replica its group no longer holds deletes itself.
//! - The metadata leader's placement loop repairs and balances the map,
//!   a few shards at a time ([`crate::placement`]).

use crate::cluster::Cluster;
use crate::placement;
use crate::transport::GroupView;
use crate::types::{GroupId, NodeId, StoredMembership};
use openraft::async_runtime::WatchReceiver;
use openraft::impls::BasicNode;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use troupe_protocol::codec;
use troupe_storage::{ClusterMap, META_GROUP, MemberRecord, MemberState, ShardBatch, Store};

/// Why a change of the cluster map was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChangeError {
    /// Only the metadata group's leader changes the map; `leader` may.
    #[error("this node does not lead the metadata group (leader: {0:?})")]
    NotLeader(Option<NodeId>),
    /// The change does not apply to the map as it is.
    #[error("{0}")]
    Refused(String),
    /// The change could not be made now; a retry may succeed.
    #[error("{0}")]
    Unavailable(String),
}

/// How often the map is read for changes.
const MAP_POLL: Duration = Duration::from_millis(250);
/// How often replicas are moved and the placement stepped.
const MOVE_ROUND: Duration = Duration::from_millis(500);
/// Longest wait for one membership operation of a group.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a joining node to catch up the metadata group.
const JOIN_CATCH_UP: Duration = Duration::from_secs(60);
/// A replica this close to the leader's last entry takes a leadership
/// transfer.
const TRANSFER_SLACK: u64 = 16;
/// A learner this close to the leader's last entry is caught up.
const CAUGHT_UP_SLACK: u64 = 64;
/// Longest wait for led groups to elect another leader at a hand-off.
const HAND_OFF_WAIT: Duration = Duration::from_secs(3);
/// How long a node's links must have been steady before it is handed the
/// leaderships placed on it (moves off a leaving node do not wait).
const SETTLE_BEFORE_LEADING: Duration = Duration::from_secs(3);
/// Least time between two leadership transfers of one shard.
const TRANSFER_PAUSE: Duration = Duration::from_secs(3);

/// What a group's leader knows of its replicas' progress.
struct Progress {
    metrics: openraft::RaftMetrics<crate::types::TypeConfig>,
    /// How recently a replica must have answered to count as there.
    within: Duration,
}

impl Progress {
    fn of(raft: &crate::types::Raft, within: Duration) -> Self {
        Self {
            metrics: raft.metrics().borrow_watched().clone(),
            within,
        }
    }

    /// The last entry `node` is known to hold.
    fn matched(&self, node: NodeId) -> u64 {
        self.metrics
            .replication
            .as_ref()
            .and_then(|r| r.get(&node).cloned().flatten())
            .map_or(0, |l| l.index())
    }

    fn last(&self) -> u64 {
        self.metrics.last_log_index.unwrap_or(0)
    }

    /// Whether `node` acknowledged a heartbeat or an append lately: a
    /// replica that does not answer (stopped, cut off) never gets
    /// leadership, whatever it held when it was last heard.
    fn answering(&self, node: NodeId) -> bool {
        use openraft::Instant as _;
        self.metrics
            .heartbeat
            .as_ref()
            .and_then(|h| h.get(&node).cloned().flatten())
            .is_some_and(|at| at.elapsed() < self.within)
    }

    /// Whether `node` can take leadership now: it answers, and it is at
    /// most [`TRANSFER_SLACK`] entries behind (the target flushes up to
    /// the leader's last entry before it stands).
    fn ready_to_lead(&self, node: NodeId) -> bool {
        self.answering(node) && self.matched(node) + TRANSFER_SLACK >= self.last()
    }
}

/// Whether `me` is in the membership of `group` stored here (a replica a
/// move has not finished with yet).
pub(crate) fn stored_member(store: &Store, group: GroupId, me: NodeId) -> bool {
    let Ok(Some(bytes)) = store.raft_state(group, "membership") else {
        return false;
    };
    let Ok(stored) = codec::decode::<StoredMembership>(&bytes) else {
        return false;
    };
    let membership = stored.membership();
    membership
        .voter_ids()
        .chain(membership.learner_ids())
        .any(|n| n == me)
}

/// Follows the cluster map: applies each new epoch here and learns the
/// leaders of shards held elsewhere; beside it, [`run_moves`] moves
/// replicas (so that a slow move never holds the map back).
pub(crate) async fn follow_map(cluster: Weak<Cluster>) {
    tokio::spawn(run_moves(cluster.clone()));
    let mut seen = 0;
    let mut tick = tokio::time::interval(MAP_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let Some(map) = cluster.cluster_map() else {
            continue;
        };
        if map.epoch != seen && cluster.apply_map(&map).await {
            seen = map.epoch;
        }
        cluster.learn_leaders(&map).await;
    }
}

/// Every [`MOVE_ROUND`]: moves the groups this node leads towards the
/// map's placement, drops the replicas it no longer holds and, on the
/// metadata leader, takes the next placement step.
async fn run_moves(cluster: Weak<Cluster>) {
    let transfers = Mutex::new(HashMap::new());
    let mut tick = tokio::time::interval(MOVE_ROUND);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(cluster) = cluster.upgrade() else {
            return;
        };
        let Some(map) = cluster.cluster_map() else {
            continue;
        };
        cluster.move_replicas(&map, &transfers).await;
        cluster.drop_unheld(&map).await;
        cluster.place().await;
    }
}

impl Cluster {
    /// Applies a map here: members' addresses, removed members refused,
    /// replicas placed here started; false when one failed to start (the
    /// next poll tries again).
    async fn apply_map(self: &Arc<Self>, map: &ClusterMap) -> bool {
        let me = self.config.node_id;
        for member in &map.members {
            if member.state == MemberState::Removed {
                self.transport.remove_peer(member.id);
            } else if let Ok(addr) = member.raft_addr.parse::<SocketAddr>() {
                self.transport.set_peer(member.id, addr);
            }
        }
        if map
            .member(me)
            .is_some_and(|m| m.state == MemberState::Removed)
        {
            tracing::error!(
                node = me,
                "this node was removed from the cluster; stop it (its data dir cannot rejoin)"
            );
            return true;
        }
        let mut started = true;
        for shard in map.shards_on(me) {
            if let Err(e) = self.add_group(shard, false).await {
                tracing::error!(shard_id = shard, error = %e, "starting a placed replica failed");
                started = false;
            }
        }
        tracing::info!(node = me, epoch = map.epoch, "cluster map applied");
        started
    }

    /// The view of `shard` from its leader, asking `nodes` and then the
    /// leader they name.
    async fn leader_view(&self, shard: GroupId, nodes: &[NodeId]) -> Option<GroupView> {
        let mut asked = BTreeSet::new();
        let mut queue: Vec<NodeId> = nodes.to_vec();
        while let Some(node) = queue.first().copied() {
            queue.remove(0);
            if !asked.insert(node) {
                continue;
            }
            let Ok(view) = self.transport.group_view(node, shard).await else {
                continue;
            };
            if view.leading {
                return Some(view);
            }
            if let Some(leader) = view.leader.filter(|l| !asked.contains(l)) {
                queue.insert(0, leader);
            }
        }
        None
    }

    /// Asks who leads each shard this node holds no replica of, so that
    /// requests for it go to its leader in one hop.
    async fn learn_leaders(&self, map: &ClusterMap) {
        for shard in 0..map.shards {
            if self.holds(shard) {
                continue;
            }
            let view = self
                .leader_view(shard, &map.placement[shard as usize])
                .await;
            let mut elsewhere = self.elsewhere.write().expect("elsewhere lock");
            match view {
                Some(view) => elsewhere.insert(shard, view),
                None => elsewhere.remove(&shard),
            };
        }
    }

    /// Deletes the replicas here that the map no longer places here once
    /// their group's leader no longer counts them.
    async fn drop_unheld(&self, map: &ClusterMap) {
        let me = self.config.node_id;
        for shard in 0..map.shards {
            let placed = &map.placement[shard as usize];
            if placed.contains(&me) || !self.holds(shard) {
                continue;
            }
            let Some(view) = self.leader_view(shard, placed).await else {
                continue;
            };
            if !view.voters.contains(&me) && !view.learners.contains(&me) {
                self.drop_group(shard).await;
            }
        }
    }

    /// Moves each group this node leads one step towards the map's
    /// placement.
    async fn move_replicas(&self, map: &ClusterMap, transfers: &Mutex<HashMap<GroupId, Instant>>) {
        for shard in 0..map.shards {
            let Some(group) = self.group(shard) else {
                continue;
            };
            if group.leading.read().expect("leading lock").is_none() {
                continue;
            }
            let target = &map.placement[shard as usize];
            let outcome = tokio::time::timeout(
                CHANGE_TIMEOUT,
                self.move_group(shard, target, map, transfers),
            )
            .await;
            match outcome {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(shard_id = shard, error = %e, "moving replicas"),
                Err(_) => tracing::warn!(shard_id = shard, "moving replicas timed out"),
            }
        }
    }

    async fn move_group(
        &self,
        shard: GroupId,
        target: &[NodeId],
        map: &ClusterMap,
        transfers: &Mutex<HashMap<GroupId, Instant>>,
    ) -> Result<(), String> {
        let me = self.config.node_id;
        let Some(group) = self.group(shard) else {
            return Ok(());
        };
        let raft = &group.raft;
        let view = GroupView::of(raft);
        if view.joint || target.is_empty() {
            return Ok(());
        }
        let wanted: BTreeSet<NodeId> = target.iter().copied().collect();
        let voters: BTreeSet<NodeId> = view.voters.iter().copied().collect();
        let members: BTreeSet<NodeId> = voters
            .union(&view.learners.iter().copied().collect())
            .copied()
            .collect();
        // New replicas first join as learners and catch up.
        let missing: Vec<NodeId> = wanted.difference(&members).copied().collect();
        for node in &missing {
            let Some(record) = map.member(*node) else {
                continue;
            };
            raft.add_learner(*node, BasicNode::new(record.raft_addr.clone()), false)
                .await
                .map_err(|e| e.to_string())?;
            metrics::counter!(crate::metrics::MOVES_STARTED_TOTAL).increment(1);
            tracing::info!(
                shard_id = shard,
                node = me,
                learner = node,
                "replica move started"
            );
        }
        if !missing.is_empty() {
            return Ok(());
        }
        if voters != wanted {
            let progress = Progress::of(raft, self.lease());
            if !wanted
                .difference(&voters)
                .all(|n| progress.matched(*n) + CAUGHT_UP_SLACK >= progress.last())
            {
                return Ok(());
            }
            if !wanted.contains(&me) {
                // Hand the shard to a replica that stays; it finishes the move.
                let stays: Vec<NodeId> = voters.intersection(&wanted).copied().collect();
                if let Some(to) = stays.iter().find(|n| progress.ready_to_lead(**n)) {
                    self.transfer(shard, *to, transfers).await;
                }
                if !stays.is_empty() {
                    return Ok(());
                }
            }
            raft.change_membership(wanted.clone(), false)
                .await
                .map_err(|e| e.to_string())?;
            metrics::counter!(crate::metrics::MOVES_COMPLETED_TOTAL).increment(1);
            tracing::info!(shard_id = shard, node = me, voters = ?wanted, "replica move completed");
            return Ok(());
        }
        let extra: BTreeSet<NodeId> = view
            .learners
            .iter()
            .copied()
            .filter(|n| !wanted.contains(n))
            .collect();
        if !extra.is_empty() {
            raft.change_membership(openraft::ChangeMembers::RemoveNodes(extra), false)
                .await
                .map_err(|e| e.to_string())?;
            return Ok(());
        }
        if target[0] != me
            && self.settled(target[0])
            && Progress::of(raft, self.lease()).ready_to_lead(target[0])
        {
            self.transfer(shard, target[0], transfers).await;
        }
        Ok(())
    }

    /// Whether `node`'s links with this node have been steady for
    /// [`SETTLE_BEFORE_LEADING`]: a node that is stopping (its links
    /// break), or that just started and is still replaying, is not handed
    /// its preferred leaderships (a transfer to a stopping node stalls the
    /// shard until an election; one to a node still catching up is slow).
    fn settled(&self, node: NodeId) -> bool {
        self.transport
            .steady_for(node)
            .is_none_or(|steady| steady >= SETTLE_BEFORE_LEADING)
    }

    /// How recently a replica must have answered its leader to be handed
    /// leadership: the election timeout's lower bound.
    fn lease(&self) -> Duration {
        Duration::from_millis(self.config.election_timeout_ms.0)
    }

    /// Hands `shard`'s leadership to `to`, at most once per
    /// [`TRANSFER_PAUSE`].
    async fn transfer(
        &self,
        shard: GroupId,
        to: NodeId,
        transfers: &Mutex<HashMap<GroupId, Instant>>,
    ) {
        {
            let mut last = transfers.lock().expect("transfers lock");
            if last
                .get(&shard)
                .is_some_and(|at| at.elapsed() < TRANSFER_PAUSE)
            {
                return;
            }
            last.insert(shard, Instant::now());
        }
        let Some(group) = self.group(shard) else {
            return;
        };
        tracing::info!(
            shard_id = shard,
            node = self.config.node_id,
            to,
            "leadership transfer"
        );
        metrics::counter!(crate::metrics::LEADER_TRANSFERS_TOTAL).increment(1);
        if let Err(e) = group.raft.trigger().transfer_leader(to).await {
            tracing::warn!(shard_id = shard, to, error = %e, "leadership transfer failed");
        }
    }

    /// Hands every group this node leads to another up-to-date voter that
    /// is up, and waits (a bounded time) until each has a new leader: a
    /// node stopping on purpose leaves no election behind it.
    pub async fn hand_off(&self) {
        let me = self.config.node_id;
        let led: Vec<(GroupId, crate::types::Raft)> = self
            .groups_here()
            .into_iter()
            .filter(|(shard, _)| self.leads(*shard))
            .collect();
        let mut handed = Vec::new();
        for (shard, raft) in led {
            let progress = Progress::of(&raft, self.lease());
            let to = GroupView::of(&raft)
                .voters
                .into_iter()
                .filter(|n| *n != me && progress.answering(*n))
                .max_by_key(|n| progress.matched(*n));
            if let Some(to) = to {
                metrics::counter!(crate::metrics::LEADER_TRANSFERS_TOTAL).increment(1);
                let _ = raft.trigger().transfer_leader(to).await;
                tracing::info!(shard_id = shard, node = me, to, "leadership handed off");
                handed.push(raft);
            }
        }
        let moved = async {
            for raft in &handed {
                let mut metrics = raft.metrics();
                while metrics.borrow_watched().current_leader == Some(me) {
                    if metrics.changed().await.is_err() {
                        break;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(HAND_OFF_WAIT, moved).await;
    }

    /// On the metadata leader: the next placement step, when the map
    /// needs one.
    async fn place(&self) {
        if !self.leads(META_GROUP) {
            return;
        }
        let Ok(_one) = self.map_changes.try_lock() else {
            return;
        };
        let Some(map) = self.cluster_map() else {
            return;
        };
        let moving = self.moving_shards(&map).await;
        let Some(next) = placement::next_step(&map, &moving, self.config.max_moving) else {
            return;
        };
        let moved = placement::moved_shards(&map.placement, &next);
        let changed = ClusterMap {
            epoch: map.epoch + 1,
            placement: next,
            ..map
        };
        match self.propose(ShardBatch::cluster_map(&changed)).await {
            Ok(_) => tracing::info!(epoch = changed.epoch, ?moved, "placement step"),
            Err(e) => tracing::warn!(error = %e, "proposing a placement step failed"),
        }
    }

    /// Shards whose group's voters are not (yet) where the map places
    /// them, as their leaders see them (unknown counts as moving).
    pub async fn moving_shards(&self, map: &ClusterMap) -> BTreeSet<u32> {
        let mut moving = BTreeSet::new();
        for shard in 0..map.shards {
            let placed = &map.placement[shard as usize];
            let settled = self.leader_view(shard, placed).await.is_some_and(|view| {
                let voters: BTreeSet<&NodeId> = view.voters.iter().collect();
                !view.joint && voters == placed.iter().collect()
            });
            if !settled {
                moving.insert(shard);
            }
        }
        moving
    }

    /// Whether this node leads `group` with complete state.
    pub fn leads(&self, group: GroupId) -> bool {
        self.group(group)
            .is_some_and(|g| g.leading.read().expect("leading lock").is_some())
    }

    fn meta_leader(&self) -> Result<(), ChangeError> {
        if self.leads(META_GROUP) {
            Ok(())
        } else {
            Err(ChangeError::NotLeader(self.leader_of(META_GROUP)))
        }
    }

    async fn write_map(&self, map: &ClusterMap) -> Result<(), ChangeError> {
        self.propose(ShardBatch::cluster_map(map))
            .await
            .map(|_| ())
            .map_err(|e| ChangeError::Unavailable(e.to_string()))
    }

    fn current_map(&self) -> Result<ClusterMap, ChangeError> {
        self.cluster_map()
            .ok_or_else(|| ChangeError::Unavailable("the cluster map is not written yet".into()))
    }

    /// On the metadata leader: admits `record` to the cluster. It joins
    /// the metadata group as a learner, catches up, becomes a voter, and is
    /// then active: the placement loop gives it replicas and leaders.
    pub async fn join(
        &self,
        record: MemberRecord,
        cookie_digest: u64,
    ) -> Result<ClusterMap, ChangeError> {
        if !self.transport.same_cluster(cookie_digest) {
            return Err(ChangeError::Refused(format!(
                "node {} presents another cluster cookie; start it with the cluster's cookie",
                record.id
            )));
        }
        self.meta_leader()?;
        let _one = self.map_changes.lock().await;
        let map = self.current_map()?;
        match map.member(record.id).map(|m| m.state) {
            Some(MemberState::Removed) => {
                return Err(ChangeError::Refused(format!(
                    "node {} was removed from the cluster; join a new node with another id",
                    record.id
                )));
            }
            Some(MemberState::Active | MemberState::Draining) => return Ok(map),
            Some(MemberState::Joining) | None => {}
        }
        let addr: SocketAddr = record.raft_addr.parse().map_err(|e| {
            ChangeError::Refused(format!("bad raft address {:?}: {e}", record.raft_addr))
        })?;
        self.transport.set_peer(record.id, addr);
        let joining = with_member(
            &map,
            MemberRecord {
                state: MemberState::Joining,
                ..record.clone()
            },
        );
        self.write_map(&joining).await?;
        let meta = self
            .group(META_GROUP)
            .ok_or_else(|| ChangeError::Unavailable("no metadata group here".into()))?
            .raft;
        let node = BasicNode::new(record.raft_addr.clone());
        tokio::time::timeout(JOIN_CATCH_UP, meta.add_learner(record.id, node, true))
            .await
            .map_err(|_| {
                ChangeError::Unavailable(format!("node {} did not catch up in time", record.id))
            })?
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let mut voters: BTreeSet<NodeId> = GroupView::of(&meta).voters.into_iter().collect();
        voters.insert(record.id);
        meta.change_membership(voters, false)
            .await
            .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        let id = record.id;
        let active = with_member(
            &self.current_map()?,
            MemberRecord {
                state: MemberState::Active,
                ..record
            },
        );
        self.write_map(&active).await?;
        tracing::info!(member = id, epoch = active.epoch, "member joined");
        Ok(active)
    }

    /// On the metadata leader, one change at a time: the map and member
    /// `node` in it.
    async fn member_change(
        &self,
        node: NodeId,
    ) -> Result<(tokio::sync::MutexGuard<'_, ()>, ClusterMap, MemberRecord), ChangeError> {
        self.meta_leader()?;
        let one = self.map_changes.lock().await;
        let map = self.current_map()?;
        let member = map
            .member(node)
            .ok_or_else(|| ChangeError::Refused(format!("node {node} is not a member")))?
            .clone();
        Ok((one, map, member))
    }

    /// On the metadata leader: drains member `node`: the placement loop
    /// moves its replicas and leaderships to the others.
    pub async fn drain(&self, node: NodeId) -> Result<ClusterMap, ChangeError> {
        let (_one, map, member) = self.member_change(node).await?;
        match member.state {
            MemberState::Draining => return Ok(map),
            MemberState::Active => {}
            other => {
                return Err(ChangeError::Refused(format!(
                    "node {node} is {}; only an active member drains",
                    other.as_str()
                )));
            }
        }
        let remaining = map.in_state(MemberState::Active).len() - 1;
        if remaining < map.replication_factor as usize {
            return Err(ChangeError::Refused(format!(
                "draining node {node} would leave {remaining} active members for {} replicas \
                 per shard; join a node first",
                map.replication_factor
            )));
        }
        let draining = with_member(
            &map,
            MemberRecord {
                state: MemberState::Draining,
                ..member
            },
        );
        self.write_map(&draining).await?;
        tracing::info!(member = node, epoch = draining.epoch, "member draining");
        Ok(draining)
    }

    /// On the metadata leader: removes member `node` for good: one that was
    /// drained, or one that is down (its replicas are re-created on the
    /// others from the survivors). A member that is up and holds replicas
    /// must be drained first.
    pub async fn remove(&self, node: NodeId) -> Result<ClusterMap, ChangeError> {
        let (_one, map, member) = self.member_change(node).await?;
        if member.state == MemberState::Removed {
            return Ok(map);
        }
        if node == self.config.node_id {
            return Err(ChangeError::Refused(
                "a node does not remove itself while it leads the metadata group; stop it \
                 and remove it from another member"
                    .into(),
            ));
        }
        let held = map.shards_on(node).len();
        if self.is_up(node) && (member.state != MemberState::Draining || held > 0) {
            return Err(ChangeError::Refused(format!(
                "node {node} is up and holds {held} replicas ({}); drain it first, or remove \
                 it once it is down for good",
                member.state.as_str()
            )));
        }
        let meta = self
            .group(META_GROUP)
            .ok_or_else(|| ChangeError::Unavailable("no metadata group here".into()))?
            .raft;
        let view = GroupView::of(&meta);
        if view.voters.contains(&node) || view.learners.contains(&node) {
            let voters: BTreeSet<NodeId> = view.voters.into_iter().filter(|n| *n != node).collect();
            meta.change_membership(voters, false)
                .await
                .map_err(|e| ChangeError::Unavailable(e.to_string()))?;
        }
        let removed = with_member(
            &self.current_map()?,
            MemberRecord {
                state: MemberState::Removed,
                ..member
            },
        );
        self.write_map(&removed).await?;
        self.transport.remove_peer(node);
        tracing::info!(member = node, epoch = removed.epoch, "member removed");
        Ok(removed)
    }
}

/// `map` with `record` in it (added, or replacing the member of its id),
/// one epoch on.
fn with_member(map: &ClusterMap, record: MemberRecord) -> ClusterMap {
    let mut next = map.clone();
    next.epoch += 1;
    match next.members.iter_mut().find(|m| m.id == record.id) {
        Some(member) => *member = record,
        None => {
            next.members.push(record);
            next.members.sort_by_key(|m| m.id);
        }
    }
    next
}
