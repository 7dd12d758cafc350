//! [`ShardBatch`]: everything one or more transitions of a shard write, as a
//! plain value. It is built from engine state with typed methods (callers
//! never see a key), can be encoded with the wire codec and applied on any
//! replica identically: applying it reads nothing.

use crate::codec;
use crate::keys::{self, Table};
use crate::records::{
    ClusterMap, DefinitionRecord, EndedRecord, HumanTaskRecord, IncidentRecord, InstanceHead,
    OutboxRecord, TimerRecord,
};
use serde::{Deserialize, Serialize};
use troupe_engine::engine::{Event, Instance, InstanceStatus, Millis, StepRun, TimerId};

/// One write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum BatchOp {
    Put {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    Delete {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Removes every key in `[from, to)`.
    DeleteRange {
        table: Table,
        #[serde(with = "serde_bytes")]
        from: Vec<u8>,
        #[serde(with = "serde_bytes")]
        to: Vec<u8>,
    },
    /// Adds to a little-endian i64 counter.
    Add {
        table: Table,
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        delta: i64,
    },
}

/// What an instance's snapshot was indexed under before a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indexed {
    /// Status then.
    pub status: InstanceStatus,
    /// Last update then.
    pub updated_at: Millis,
}

impl Indexed {
    /// How `head` is indexed.
    pub fn of(head: &InstanceHead) -> Self {
        Self {
            status: head.status,
            updated_at: head.updated_at,
        }
    }
}

/// Writes to one shard, applied atomically.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardBatch {
    shard: u32,
    ops: Vec<BatchOp>,
}

impl ShardBatch {
    /// An empty batch for `shard`.
    pub fn new(shard: u32) -> Self {
        Self {
            shard,
            ops: Vec::new(),
        }
    }

    /// The shard it writes to.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// Number of writes.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether it writes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Adds every write of `other` (same shard) after this batch's.
    pub fn extend(&mut self, other: ShardBatch) {
        debug_assert_eq!(self.shard, other.shard, "batches of one shard");
        self.ops.extend(other.ops);
    }

    /// Encodes the batch (for a replication log).
    pub fn to_bytes(&self) -> Vec<u8> {
        troupe_protocol::codec::encode(self)
    }

    /// Decodes a batch written by [`ShardBatch::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, troupe_protocol::codec::DecodeError> {
        troupe_protocol::codec::decode(bytes)
    }

    fn put<T: Serialize + ?Sized>(&mut self, table: Table, key: Vec<u8>, value: &T) -> usize {
        self.put_encoded(table, key, codec::encode(value))
    }

    /// Like [`Self::put`], for a record of a fixed shape (see `codec`).
    fn put_compact<T: Serialize + ?Sized>(&mut self, table: Table, key: Vec<u8>, value: &T) {
        self.put_encoded(table, key, codec::encode_compact(value));
    }

    fn put_encoded(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) -> usize {
        let size = value.len();
        self.ops.push(BatchOp::Put { table, key, value });
        size
    }

    /// A batch of the metadata group deploying `record`.
    pub fn deploy(record: &DefinitionRecord) -> Self {
        let mut batch = Self::new(keys::META_GROUP);
        batch.put(
            Table::Definitions,
            keys::definition(&record.name, record.version),
            record,
        );
        batch
    }

    /// A batch of the metadata group replacing the cluster map.
    pub fn cluster_map(map: &ClusterMap) -> Self {
        let mut batch = Self::new(keys::META_GROUP);
        batch.put(Table::ClusterMap, keys::CLUSTER_MAP.to_vec(), map);
        batch
    }

    /// The definitions this batch deploys (as `name`, `version`).
    pub fn deployed_definitions(&self) -> Vec<(String, u32)> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                BatchOp::Put {
                    table: Table::Definitions,
                    value,
                    ..
                } => codec::decode::<DefinitionRecord>(value).ok(),
                _ => None,
            })
            .map(|record| (record.name, record.version))
            .collect()
    }

    /// The cluster map this batch writes, if it writes one.
    pub fn written_map(&self) -> Option<ClusterMap> {
        self.ops.iter().rev().find_map(|op| match op {
            BatchOp::Put {
                table: Table::ClusterMap,
                value,
                ..
            } => codec::decode::<ClusterMap>(value).ok(),
            _ => None,
        })
    }

    pub(crate) fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.ops.push(BatchOp::Delete { table, key });
    }

    /// Journals the events of one transition of instance `id`, numbered
    /// from `first_seq` on, as one record keyed by its last number (a key
    /// per event made flushes and compactions handle four keys for a
    /// three-step workflow). Returns its encoded size; nothing is written
    /// for no event.
    pub fn append_events(&mut self, id: &str, first_seq: u64, events: &[&Event]) -> usize {
        if events.is_empty() {
            return 0;
        }
        let last = first_seq + events.len() as u64 - 1;
        let key = keys::journal(self.shard, id, last);
        self.put_encoded(Table::Journal, key, crate::journal::encode(events))
    }

    /// Writes an instance's head and keeps its index entries in step;
    /// `previous` is how it was indexed before (`None` for a new instance).
    /// `journal` lists the keys (last event numbers) of every journal record
    /// of the instance, when known: an ended instance's retention entry then
    /// says everything deleting it takes (see [`EndedRecord`]).
    pub fn put_head(
        &mut self,
        head: &InstanceHead,
        previous: Option<Indexed>,
        journal: Option<&[u64]>,
    ) {
        let shard = self.shard;
        let id = head.id.as_str();
        self.put_compact(Table::Instances, keys::instance(shard, id), head);
        let now = Indexed::of(head);
        if previous.is_none() {
            self.put_compact(
                Table::ByDefinition,
                keys::by_definition(shard, &head.definition, id),
                &(),
            );
        }
        if previous.map(|p| p.status) != Some(now.status) {
            if let Some(p) = previous {
                self.delete(Table::ByStatus, keys::by_status(shard, p.status, id));
            }
            self.put_compact(Table::ByStatus, keys::by_status(shard, now.status, id), &());
        }
        if now.status.is_terminal() && !previous.is_some_and(|p| p.status.is_terminal()) {
            let key = keys::ended(shard, now.updated_at, id);
            match journal {
                Some(journal) => self.put_compact(
                    Table::Ended,
                    key,
                    &EndedRecord {
                        status: now.status,
                        definition: head.definition.clone(),
                        snapshot: head.snapshot_events > 0,
                        journal: journal.to_vec(),
                    },
                ),
                None => self.put_compact(Table::Ended, key, &()),
            }
        }
        if previous.map(|p| p.updated_at) != Some(now.updated_at) {
            if let Some(p) = previous {
                self.delete(Table::ByUpdated, keys::by_updated(shard, p.updated_at, id));
            }
            self.put_compact(
                Table::ByUpdated,
                keys::by_updated(shard, now.updated_at, id),
                &(),
            );
        }
    }

    /// Drops instance `id`'s journal records whose events all come before
    /// or at `seq` (history retention: a snapshot includes them); a record
    /// that straddles `seq` stays whole.
    pub fn drop_history(&mut self, id: &str, seq: u64) {
        self.ops.push(BatchOp::DeleteRange {
            table: Table::Journal,
            from: keys::journal(self.shard, id, 0),
            to: keys::journal(self.shard, id, seq + 1),
        });
    }

    /// Writes an instance's whole state (its head must say how many events
    /// it includes). Returns its encoded size.
    pub fn put_snapshot(&mut self, state: &Instance) -> usize {
        let key = keys::instance(self.shard, &state.id);
        self.put(Table::Snapshots, key, state)
    }

    /// Keeps a step run that left an instance's state, for its step list.
    pub fn archive_run(&mut self, id: &str, path: &str, run: &StepRun) {
        self.put(Table::Steps, keys::step(self.shard, id, path), run);
    }

    /// Stores an armed timer.
    /// `replaces`: when the same timer was armed before, when it was due.
    pub fn arm_timer(&mut self, timer: &TimerRecord, replaces: Option<Millis>) {
        let key = keys::timer(self.shard, &timer.instance, &timer.timer);
        self.put_compact(Table::Timers, key, timer);
        if let Some(old) = replaces.filter(|old| *old != timer.at) {
            let due = keys::timer_due(self.shard, old, &timer.instance, &timer.timer);
            self.delete(Table::TimersDue, due);
        }
        let due = keys::timer_due(self.shard, timer.at, &timer.instance, &timer.timer);
        self.put_compact(Table::TimersDue, due, timer);
    }

    /// Removes a timer that was due at `at` (`None`: not stored).
    pub fn cancel_timer(&mut self, id: &str, timer: &TimerId, at: Option<Millis>) {
        let Some(at) = at else {
            return;
        };
        self.delete(Table::Timers, keys::timer(self.shard, id, timer));
        self.delete(Table::TimersDue, keys::timer_due(self.shard, at, id, timer));
    }

    /// Stores an effect to carry out at least once.
    pub fn put_outbox(&mut self, id: &str, path: &str, record: &OutboxRecord) {
        self.put(Table::Outbox, keys::outbox(self.shard, id, path), record);
    }

    /// Removes an outbox entry.
    pub fn delete_outbox(&mut self, id: &str, path: &str) {
        self.delete(Table::Outbox, keys::outbox(self.shard, id, path));
    }

    /// Stores (or rewrites) an open human task; its id must come from
    /// [`human_task_id`] for this shard.
    pub fn put_human_task(&mut self, task: &HumanTaskRecord) {
        let key = keys::by_id(self.shard, &task.id);
        self.put(Table::HumanTasks, key, task);
    }

    /// Removes the human task of `instance` at `path`.
    pub fn delete_human_task(&mut self, instance: &str, path: &str) {
        let id = human_task_id(self.shard, instance, path);
        self.delete(Table::HumanTasks, keys::by_id(self.shard, &id));
    }

    /// Stores an open incident; its id must come from [`incident_id`].
    pub fn put_incident(&mut self, incident: &IncidentRecord) {
        let key = keys::by_id(self.shard, &incident.id);
        self.put(Table::Incidents, key, incident);
    }

    /// Removes the incident of `instance` at `path`.
    pub fn delete_incident(&mut self, instance: &str, path: &str) {
        let id = incident_id(self.shard, instance, path);
        self.delete(Table::Incidents, keys::by_id(self.shard, &id));
    }

    /// Routes events `name` with `correlation` to instance `id`.
    pub fn subscribe(&mut self, name: &str, correlation: Option<&str>, id: &str) {
        let key = keys::subscription(self.shard, name, correlation, id);
        self.put_compact(Table::Subscriptions, key, &());
    }

    /// Stops routing events `name` with `correlation` to `id`.
    pub fn unsubscribe(&mut self, name: &str, correlation: Option<&str>, id: &str) {
        let key = keys::subscription(self.shard, name, correlation, id);
        self.delete(Table::Subscriptions, key);
    }

    /// Adds `delta` to the shard's count of instances in `status`.
    pub fn count_status(&mut self, status: InstanceStatus, delta: i64) {
        let key = keys::status_counter(self.shard, status);
        self.ops.push(BatchOp::Add {
            table: Table::Counters,
            key,
            delta,
        });
    }

    /// Puts the writes into a RocksDB batch.
    pub(crate) fn write_to(self, store: &crate::Store, batch: &mut rocksdb::WriteBatch) {
        for op in self.ops {
            match op {
                BatchOp::Put { table, key, value } => {
                    batch.put_cf(store.cf(table.cf()), key, value)
                }
                BatchOp::Delete { table, key } => batch.delete_cf(store.cf(table.cf()), key),
                BatchOp::DeleteRange { table, from, to } => {
                    batch.delete_range_cf(store.cf(table.cf()), from, to)
                }
                BatchOp::Add { table, key, delta } => {
                    batch.merge_cf(store.cf(table.cf()), key, delta.to_le_bytes())
                }
            }
        }
    }
}

impl std::fmt::Display for ShardBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "shard {}: {} writes", self.shard, self.ops.len())
    }
}

/// The id of the human task of `instance` at `path` on `shard`.
pub fn human_task_id(shard: u32, instance: &str, path: &str) -> String {
    keys::short_id("human", shard, instance, path)
}

/// The id of the incident of `instance` at `path` on `shard`.
pub fn incident_id(shard: u32, instance: &str, path: &str) -> String {
    keys::short_id("incident", shard, instance, path)
}

/// The shard of a human task, by its id.
pub fn human_task_shard(id: &str) -> Option<u32> {
    keys::shard_of_short_id("human", id)
}

/// The shard of an incident, by its id.
pub fn incident_shard(id: &str) -> Option<u32> {
    keys::shard_of_short_id("incident", id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_engine::engine::{EventKind, TimerKind};

    #[test]
    fn batches_round_trip_through_the_wire_codec() {
        let mut batch = ShardBatch::new(3);
        let event = Event {
            at: 5,
            kind: EventKind::Signal {
                name: "go".into(),
                id: "s".into(),
                payload: serde_json::json!({"a": [1, 2]}),
            },
        };
        batch.append_events("i", 1, &[&event]);
        batch.cancel_timer(
            "i",
            &TimerId {
                kind: TimerKind::Wait,
                path: "p".into(),
                attempt: 0,
            },
            Some(9),
        );
        batch.count_status(InstanceStatus::Waiting, -1);
        let back = ShardBatch::from_bytes(&batch.to_bytes()).unwrap();
        assert_eq!(back, batch);
        assert_eq!(back.len(), 4, "event, timer and its due entry, counter");
        assert!(ShardBatch::from_bytes(b"\xff\xff").is_err());
    }
}
