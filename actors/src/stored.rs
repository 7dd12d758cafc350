//! An instance's state on disk: what a transition writes of it, and how it
//! is read back.
//!
//! Every transition writes the instance's head (a few fixed fields) and its
//! journal events. The whole state (the snapshot) is written only when the
//! journal since the last snapshot outweighs the snapshot itself, and when
//! an instance ends (unless it is a short one, a few events): bytes
//! written per event then stay bounded whatever the instance's size, and
//! reading it back replays at most about one snapshot's worth of events.

use crate::{Error, Services};
use std::sync::Arc;
use troupe_engine::definition::Definition;
use troupe_engine::engine::{Instance, apply};
use troupe_protocol::ErrorCode;
use troupe_storage::{InstanceHead, InstanceRecord, StoredInstance};

/// Journal bytes after which a snapshot is taken even of a small instance
/// (so a long-lived one replays a short tail).
pub const MIN_SNAPSHOT_INTERVAL_BYTES: usize = 16 * 1024;

/// Journal bytes of an instance short enough to end without a snapshot
/// (reads of it replay them).
pub const MAX_ENDED_TAIL_BYTES: usize = 4 * 1024;

/// What is on disk of an instance, as far as the next transition cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// Events the stored snapshot includes (0: none).
    pub snapshot_events: u64,
    /// Its encoded size, bytes.
    pub snapshot_bytes: usize,
    /// Journal bytes written after it.
    pub tail_bytes: usize,
    /// Its journal records, while the actor knows them all.
    pub journal: JournalRecords,
}

/// Most journal records of an instance kept track of (a short workflow
/// writes one to a few).
const TRACKED_RECORDS: usize = 6;

/// The keys (last event numbers) of an instance's journal records, as long
/// as its actor wrote every one of them, there are few, and none is gone
/// nor any step run archived: its retention entry then carries them, and
/// deleting the instance reads nothing (see `troupe_storage::EndedRecord`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalRecords {
    last_seqs: [u64; TRACKED_RECORDS],
    /// How many; `None` once unknown.
    len: Option<usize>,
}

impl JournalRecords {
    /// Those of an instance read back from storage: not known.
    pub const UNKNOWN: Self = Self {
        last_seqs: [0; TRACKED_RECORDS],
        len: None,
    };

    /// The keys, when known.
    pub fn known(&self) -> Option<&[u64]> {
        self.len.map(|len| &self.last_seqs[..len])
    }

    /// With one more record, ending with event `last_seq`.
    pub fn with(mut self, last_seq: u64) -> Self {
        match self.len {
            Some(len) if len < TRACKED_RECORDS => {
                self.last_seqs[len] = last_seq;
                self.len = Some(len + 1);
                self
            }
            _ => Self::UNKNOWN,
        }
    }
}

impl Default for JournalRecords {
    /// Those of a new instance: none.
    fn default() -> Self {
        Self {
            last_seqs: [0; TRACKED_RECORDS],
            len: Some(0),
        }
    }
}

impl Persisted {
    /// Whether the transition that writes `tail_bytes` more journal bytes
    /// should write the whole state too: when the journal since the last
    /// snapshot would outweigh it, and when the instance ends, unless it is
    /// a short one (never snapshotted, a few events, history kept whole).
    ///
    /// A short workflow ends without one: its final state (its input and
    /// every step's input and output again) would be most of the bytes it
    /// writes, and reading it back replays its few events: one seek in the
    /// journal, whose prefix bloom filters skip every file without the
    /// instance (without them, each read sought an index in every file and
    /// a soak slid as the data grew). A long-lived one ends with one, so
    /// that reading it replays nothing.
    pub fn snapshot_due(&self, new_tail_bytes: usize, ended: bool, bounded_history: bool) -> bool {
        let tail = self.tail_bytes + new_tail_bytes;
        let short = self.snapshot_events == 0 && tail <= MAX_ENDED_TAIL_BYTES && !bounded_history;
        (ended && !short) || tail >= self.snapshot_bytes.max(MIN_SNAPSHOT_INTERVAL_BYTES)
    }

    /// About what the instance takes on disk, and so in memory, bytes.
    pub fn size(&self) -> usize {
        self.snapshot_bytes + self.tail_bytes
    }
}

/// An instance read back from storage.
pub struct Loaded {
    /// Its state, up to date.
    pub record: InstanceRecord,
    /// Its definition.
    pub definition: Arc<Definition>,
    /// What is on disk of it.
    pub persisted: Persisted,
    /// Its armed timers, with when each is due.
    pub armed: crate::effects::ArmedTimers,
}

/// Reads an instance: its snapshot, then its journal tail replayed with its
/// definition. `None` when it does not exist.
pub fn load(services: &Services, shard: u32, id: &str) -> Result<Option<Loaded>, Error> {
    match services.store.load_instance(shard, id)? {
        Some(stored) => replayed(services, id, stored).map(Some),
        None => Ok(None),
    }
}

/// An instance's current state, for a caller that has just read its head
/// (an ended instance then costs one more read).
pub fn read_after(
    services: &Services,
    shard: u32,
    id: &str,
    head: InstanceHead,
) -> Result<InstanceRecord, Error> {
    let stored = services.store.load_instance_after(shard, id, head)?;
    Ok(replayed(services, id, stored)?.record)
}

/// The state a snapshot and a journal tail make.
fn replayed(services: &Services, id: &str, stored: StoredInstance) -> Result<Loaded, Error> {
    let head = stored.head;
    let definition = services
        .definitions
        .get(&services.store, &head.definition, head.version)?
        .ok_or_else(|| {
            Error::new(
                ErrorCode::Internal,
                format!(
                    "definition {} v{} of {id} is gone",
                    head.definition, head.version
                ),
            )
        })?;
    let mut state = stored
        .snapshot
        .unwrap_or_else(|| Instance::blank(&definition));
    for event in &stored.tail {
        // Effects of journaled events were carried out (or are in the
        // outbox) when they were committed.
        apply(&definition, &mut state, event);
    }
    if state.events_applied != head.events {
        return Err(Error::new(
            ErrorCode::Internal,
            format!(
                "{id}: journal replays to {} events, head says {}",
                state.events_applied, head.events
            ),
        ));
    }
    Ok(Loaded {
        record: InstanceRecord {
            state,
            parent: head.parent,
        },
        definition,
        persisted: Persisted {
            snapshot_events: head.snapshot_events,
            snapshot_bytes: stored.snapshot_bytes,
            tail_bytes: stored.tail_bytes,
            journal: JournalRecords::UNKNOWN,
        },
        armed: stored
            .timers
            .into_iter()
            .map(|timer| (timer.timer, timer.at))
            .collect(),
    })
}

/// An instance's current state as stored, or `None`.
pub fn read(services: &Services, shard: u32, id: &str) -> Result<Option<InstanceRecord>, Error> {
    Ok(load(services, shard, id)?.map(|l| l.record))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_instance_ends_without_a_snapshot_unless_its_history_is_bounded() {
        let fresh = Persisted::default();
        assert!(!fresh.snapshot_due(600, true, false));
        assert!(fresh.snapshot_due(600, true, true));
        assert!(!fresh.snapshot_due(600, false, true));
    }

    #[test]
    fn a_long_lived_or_long_instance_ends_with_a_snapshot() {
        let snapshotted = Persisted {
            snapshot_events: 10,
            snapshot_bytes: 1_000_000,
            tail_bytes: 100,
            ..Persisted::default()
        };
        assert!(!snapshotted.snapshot_due(1, false, false));
        assert!(snapshotted.snapshot_due(1, true, false));
        let fresh = Persisted::default();
        assert!(!fresh.snapshot_due(MAX_ENDED_TAIL_BYTES, true, false));
        assert!(fresh.snapshot_due(MAX_ENDED_TAIL_BYTES + 1, true, false));
    }

    #[test]
    fn a_snapshot_is_due_once_the_tail_outweighs_it() {
        let small = Persisted {
            snapshot_events: 10,
            snapshot_bytes: 1_000,
            tail_bytes: MIN_SNAPSHOT_INTERVAL_BYTES - 100,
            ..Persisted::default()
        };
        assert!(!small.snapshot_due(99, false, false));
        assert!(small.snapshot_due(100, false, false));
        let big = Persisted {
            snapshot_bytes: 100_000,
            tail_bytes: 90_000,
            ..small
        };
        assert!(!big.snapshot_due(9_999, false, false));
        assert!(big.snapshot_due(10_000, false, false));
    }

    #[test]
    fn journal_records_are_known_while_few_and_all_seen() {
        let mut records = JournalRecords::default();
        assert_eq!(records.known(), Some(&[][..]));
        for seq in 1..=TRACKED_RECORDS as u64 {
            records = records.with(seq * 3);
        }
        assert_eq!(records.known(), Some(&[3, 6, 9, 12, 15, 18][..]));
        assert_eq!(records.with(21).known(), None, "too many");
        assert_eq!(
            JournalRecords::UNKNOWN.with(1).known(),
            None,
            "stays unknown"
        );
    }
}
