//! A shard's state machine: applying a committed entry writes its
//! [`ShardBatch`] to the shard's tables, together with the group's applied
//! position, in one write; followers never run the engine. A snapshot is
//! the shard's whole key range exported under one RocksDB snapshot.

use crate::log_store::invalid;
use crate::types::{GroupId, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use futures_util::TryStreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use std::io;
use std::sync::{Arc, Mutex};
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
    /// The last snapshot built or installed (rebuilt on demand after a restart).
    current: Arc<Mutex<Option<Snapshot>>>,
    /// Where the metadata group reports what it applied.
    changes: Option<mpsc::UnboundedSender<MetaChange>>,
}

impl ShardMachine {
    /// The state machine of `shard`.
    pub fn new(store: Store, shard: GroupId) -> Self {
        Self {
            store,
            shard,
            current: Arc::default(),
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

    fn applied(&self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let read = |name| -> io::Result<Option<Vec<u8>>> {
            self.store
                .raft_state(self.shard, name)
                .map_err(io::Error::other)
        };
        let applied = match read("applied")? {
            Some(bytes) => Some(codec::decode(&bytes).map_err(invalid)?),
            None => None,
        };
        let membership = match read("membership")? {
            Some(bytes) => codec::decode(&bytes).map_err(invalid)?,
            None => StoredMembership::default(),
        };
        Ok((applied, membership))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ShardMachine {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let this = self.clone();
        let snapshot = tokio::task::spawn_blocking(move || -> io::Result<Snapshot> {
            // The applied position is read with the data: nothing applies
            // while the builder runs (openraft serialises them).
            let (last_log_id, last_membership) = this.applied()?;
            let mut entries: Vec<ShardEntry> = Vec::new();
            this.store
                .export_shard(this.shard, 1 << 20, |chunk| {
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
        })
        .await
        .map_err(io::Error::other)??;
        metrics::counter!(crate::metrics::SNAPSHOTS_BUILT_TOTAL).increment(1);
        *self.current.lock().expect("snapshot lock") = Some(snapshot.clone());
        Ok(snapshot)
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
        *self.current.lock().expect("snapshot lock") = Some(Snapshot {
            meta: meta.clone(),
            snapshot: data,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        Ok(self.current.lock().expect("snapshot lock").clone())
    }
}
