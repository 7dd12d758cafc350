//! The Raft type configuration: what a group replicates and how nodes are named.

use troupe_storage::ShardBatch;

/// A node's id (as in the cluster config).
pub type NodeId = u64;

/// A Raft group's id: the shard it replicates.
pub type GroupId = u32;

openraft::declare_raft_types!(
    /// Troupe's groups replicate shard batches: many transitions of one
    /// shard per entry, applied identically on every replica.
    pub TypeConfig:
        D = ShardBatch,
        R = (),
        NodeId = NodeId,
        Node = openraft::impls::BasicNode,
);

/// A group's Raft handle.
pub type Raft = openraft::Raft<TypeConfig, crate::state_machine::ShardMachine>;
/// An entry of a group's log.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// A log position.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A group's membership as applied.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// A snapshot's metadata.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
