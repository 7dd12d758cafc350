//! Metric names of the replication layer.

/// Shard snapshots built for lagging replicas or log purging.
pub const SNAPSHOTS_BUILT_TOTAL: &str = "troupe_raft_snapshots_built_total";
/// Shard snapshots installed from another replica.
pub const SNAPSHOTS_INSTALLED_TOTAL: &str = "troupe_raft_snapshots_installed_total";
/// Snapshot bytes sent to other replicas.
pub const SNAPSHOT_BYTES_SENT_TOTAL: &str = "troupe_raft_snapshot_bytes_sent_total";
/// Leadership changes seen on this node, by shard.
pub const LEADER_CHANGES_TOTAL: &str = "troupe_raft_leader_changes_total";
/// Proposals refused because this node does not lead the shard.
pub const NOT_LEADER_TOTAL: &str = "troupe_raft_not_leader_total";
/// Transitions merged into each Raft entry proposed here.
pub const ENTRY_TRANSITIONS: &str = "troupe_raft_entry_transitions";
/// Control-plane link events, by `event` (ready, closed).
pub const CONTROL_LINKS_TOTAL: &str = "troupe_cluster_control_links_total";
/// Members seen going up or down by the failure detector, by `state`.
pub const MEMBER_CHANGES_TOTAL: &str = "troupe_cluster_member_changes_total";
/// Replica moves started here (a learner added to a group this node leads).
pub const MOVES_STARTED_TOTAL: &str = "troupe_cluster_moves_started_total";
/// Replica moves completed here (the group's voters changed).
pub const MOVES_COMPLETED_TOTAL: &str = "troupe_cluster_moves_completed_total";
/// Leadership transfers started here.
pub const LEADER_TRANSFERS_TOTAL: &str = "troupe_cluster_leader_transfers_total";
