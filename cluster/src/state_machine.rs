//! A shard's state machine: applying a committed entry writes its
//! [`ShardBatch`] to the shard's tables, together with the group's applied
//! position, in one write; followers never run the engine. The shard's
//! tables are its snapshot: building one only records the applied position
//! (so the log before it can be purged), and the key range is exported
//! when a replica needs it.

use crate::log_store::invalid;
use crate::types::{GroupId, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::mpsc;
use troupe_protocol::codec;
use troupe_storage::{ShardBatch, ShardEntry, Store};

/// Bytes of a snapshot: the shard's entries, encoded.
pub type SnapshotData = Vec<u8>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// A change of the metadata group's state, applied here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaChange {
    /// These definitions (name, version) were deployed.
    Deployed(Vec<(String, u32)>),
    /// A snapshot replaced the metadata: reload it all.
    Installed,
    /// The cluster map changed (applied here).
    Map(troupe_storage::ClusterMap),
}

/// The state machine of one shard's group (or of the metadata group).
#[derive(Clone)]
pub struct ShardMachine {
    store: Store,
    shard: GroupId,
    /// Whether a snapshot was built or installed since the node started
    /// (after a restart openraft builds one again if the log was purged).
    snapshotted: Arc<AtomicBool>,
    /// Where the metadata group reports what it applied.
    changes: Option<mpsc::UnboundedSender<MetaChange>>,
}

impl ShardMachine {
    /// The state machine of `shard`.
    pub fn new(store: Store, shard: GroupId) -> Self {
        Self {
            store,
            shard,
            snapshotted: Arc::default(),
            changes: None,
        }
    }

    /// The metadata group's state machine, reporting what it applies.
    pub fn meta(store: Store, changes: mpsc::UnboundedSender<MetaChange>) -> Self {
        Self {
            changes: Some(changes),
            ..Self::new(store, troupe_storage::META_GROUP)
        }
    }

    /// The applied position and membership, read together (an apply may
    /// be writing them meanwhile).
    fn applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let [applied, membership] = self
            .store
            .raft_states(self.shard, ["applied", "membership"])
            .map_err(io::Error::other)?;
        let applied = match applied {
            Some(bytes) => Some(codec::decode(&bytes).map_err(invalid)?),
            None => None,
        };
        let membership = match membership {
            Some(bytes) => codec::decode(&bytes).map_err(invalid)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        // Everything applied is in the shard's tables, durable: the
        // snapshot is them as they stand. Its cost must not grow with the
        // data stored, so only the position is recorded here.
        let (last_log_id, last_membership) = self.applied()?;
        let meta = SnapshotMeta {
            last_log_id,
            last_membership,
        };
        metrics::counter!(crate::metrics::SNAPSHOTS_BUILT_TOTAL).increment(1);
        self.snapshotted.store(true, Ordering::Release);
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData::new(),
        })
    }
}

impl ShardMachine {
    /// The shard's whole key range and the position it was applied to,
    /// read together.
    fn export(&self) -> io::Result<Snapshot> {
        let (last_log_id, last_membership) = self.applied()?;
        let mut entries: Vec<ShardEntry> = Vec::new();
        self.store
            .export_shard(self.shard, 1 << 20, |chunk| {
                entries.extend(chunk);
                Ok(())
            })
            .map_err(io::Error::other)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id,
                last_membership,
            },
            snapshot: codec::encode(&entries),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ShardMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        self.applied()
    }

    async fn apply<S>(&mut self, mut entries: S) -> io::Result<()>
    where
        S: futures_util::Stream<Item = io::Result<EntryResponder<TypeConfig>>>
            + Unpin
            + OptionalSend,
    {
        let mut batches = Vec::new();
        let mut last = None;
        let mut membership = None;
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            match entry.payload {
                EntryPayload::Blank => {}
                EntryPayload::Normal(batch) => batches.push(batch),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                }
            }
            last = Some(entry.log_id);
            responders.extend(responder);
        }
        let mut state = Vec::new();
        if let Some(last) = &last {
            state.push(("applied", codec::encode(last)));
        }
        if let Some(membership) = &membership {
            state.push(("membership", codec::encode(membership)));
        }
        let (deployed, map): (Vec<(String, u32)>, _) = match &self.changes {
            Some(_) => (
                batches
                    .iter()
                    .flat_map(ShardBatch::deployed_definitions)
                    .collect(),
                batches.iter().rev().find_map(ShardBatch::written_map),
            ),
            None => (Vec::new(), None),
        };
        self.store
            .apply_replicated(self.shard, batches, state)
            .map_err(io::Error::other)?;
        if let Some(changes) = &self.changes {
            if !deployed.is_empty() {
                let _ = changes.send(MetaChange::Deployed(deployed));
            }
            if let Some(map) = map {
                let _ = changes.send(MetaChange::Map(map));
            }
        }
        for responder in responders {
            responder.send(());
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<()> {
        let entries: Vec<ShardEntry> = codec::decode(&data).map_err(invalid)?;
        let mut state = vec![("membership", codec::encode(&meta.last_membership))];
        if let Some(last) = &meta.last_log_id {
            state.push(("applied", codec::encode(last)));
        }
        let store = self.store.clone();
        let shard = self.shard;
        tokio::task::spawn_blocking(move || store.install_shard(shard, entries, state))
            .await
            .map_err(io::Error::other)?
            .map_err(io::Error::other)?;
        if let Some(changes) = &self.changes {
            let _ = changes.send(MetaChange::Installed);
        }
        metrics::counter!(crate::metrics::SNAPSHOTS_INSTALLED_TOTAL).increment(1);
        tracing::info!(shard_id = shard, last = ?meta.last_log_id, "snapshot installed");
        self.snapshotted.store(true, Ordering::Release);
        Ok(())
    }

    /// Asked for when a replica needs the snapshot: the tables are exported
    /// now, with the position applied now (at or past the one recorded;
    /// nothing applies meanwhile, this runs on the group's state machine
    /// task).
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        if !self.snapshotted.load(Ordering::Acquire) {
            return Ok(None);
        }
        let this = self.clone();
        let snapshot = tokio::task::spawn_blocking(move || this.export())
            .await
            .map_err(io::Error::other)??;
        Ok(Some(snapshot))
    }
}
