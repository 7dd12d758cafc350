//! An instance's state on disk: what a transition writes of it, and how it
//! is read back.
//!
//! Every transition writes the instance's head (a few fixed fields) and its
//! journal events. The whole state (the snapshot) is written only when the
//! instance ends, or when the journal since the last snapshot outweighs the
//! snapshot itself: bytes written per event then stay bounded whatever the
//! instance's size, and reading it back replays at most about one
//! snapshot's worth of events.

use crate::{Error, Services};
use std::sync::Arc;
use troupe_engine::definition::Definition;
use troupe_engine::engine::{Instance, apply};
use troupe_protocol::ErrorCode;
use troupe_storage::{InstanceHead, InstanceRecord, StoredInstance};

/// Journal bytes after which a snapshot is taken even of a small instance
/// (so a long-lived one replays a short tail).
pub const MIN_SNAPSHOT_INTERVAL_BYTES: usize = 16 * 1024;

/// What is on disk of an instance, as far as the next transition cares.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Persisted {
    /// Events the stored snapshot includes (0: none).
    pub snapshot_events: u64,
    /// Its encoded size, bytes.
    pub snapshot_bytes: usize,
    /// Journal bytes written after it.
    pub tail_bytes: usize,
}

impl Persisted {
    /// Whether the transition that writes `tail_bytes` more journal bytes
    /// should write the whole state too: when the instance ended (reads of
    /// ended instances then replay nothing), or when the journal since the
    /// last snapshot would outweigh it.
    ///
    /// The final snapshot is most of what a short workflow writes (its
    /// input and every step's input and output again), but ending without
    /// it was tried and undone: awaiting a result then read the journal
    /// with an iterator over every level instead of one filtered point
    /// read, and a 10-minute soak slid from 9,000 to 2,200 wf/s as the
    /// data grew. Dropping it needs a cheap result read first.
    pub fn snapshot_due(&self, new_tail_bytes: usize, ended: bool) -> bool {
        ended
            || self.tail_bytes + new_tail_bytes
                >= self.snapshot_bytes.max(MIN_SNAPSHOT_INTERVAL_BYTES)
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
