//! The live instance actors of one shard, in order of last use, with the
//! node-wide count kept exact: an actor leaves the set only through
//! [`LiveSet::remove`], which is also the only place the count goes down.

use crate::instance::WorkflowMsg;
use ractor::{ActorId, ActorRef};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

struct Entry {
    actor: ActorRef<WorkflowMsg>,
    last_use: u64,
}

/// Live actors of a shard and the instances of every actor not yet ended.
pub(super) struct LiveSet {
    live: HashMap<String, Entry>,
    by_use: BTreeMap<u64, String>,
    /// Every spawned actor until its termination is seen (live or stopping).
    ids: HashMap<ActorId, String>,
    tick: u64,
    count: Arc<AtomicUsize>,
}

impl LiveSet {
    /// An empty set that keeps `count` (shared by the node's shards) exact.
    pub fn new(count: Arc<AtomicUsize>) -> Self {
        Self {
            live: HashMap::new(),
            by_use: BTreeMap::new(),
            ids: HashMap::new(),
            tick: 0,
            count,
        }
    }

    /// The live actor of `id`, marked as just used.
    pub fn use_actor(&mut self, id: &str) -> Option<ActorRef<WorkflowMsg>> {
        self.tick += 1;
        let entry = self.live.get_mut(id)?;
        self.by_use.remove(&entry.last_use);
        entry.last_use = self.tick;
        self.by_use.insert(self.tick, id.to_owned());
        Some(entry.actor.clone())
    }

    /// Whether `actor` is the live actor of `id`.
    pub fn is_live(&self, id: &str, actor: &ActorId) -> bool {
        self.live
            .get(id)
            .is_some_and(|e| e.actor.get_id() == *actor)
    }

    /// Adds a freshly spawned actor.
    pub fn insert(&mut self, id: &str, actor: ActorRef<WorkflowMsg>) {
        self.tick += 1;
        self.ids.insert(actor.get_id(), id.to_owned());
        self.by_use.insert(self.tick, id.to_owned());
        let old = self.live.insert(
            id.to_owned(),
            Entry {
                actor,
                last_use: self.tick,
            },
        );
        match old {
            Some(old) => {
                self.by_use.remove(&old.last_use);
            }
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
                metrics::gauge!(crate::metrics::INSTANCES_LIVE).increment(1.0);
            }
        }
    }

    /// Takes `id` out of the live set (its actor may still be stopping).
    pub fn remove(&mut self, id: &str) -> Option<ActorRef<WorkflowMsg>> {
        let entry = self.live.remove(id)?;
        self.by_use.remove(&entry.last_use);
        self.count.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::INSTANCES_LIVE).decrement(1.0);
        Some(entry.actor)
    }

    /// An actor ended: forgets it, and returns the instance it served.
    pub fn ended(&mut self, actor: ActorId) -> Option<String> {
        let id = self.ids.remove(&actor)?;
        if self.is_live(&id, &actor) {
            self.remove(&id);
        }
        Some(id)
    }

    /// Up to `n` of the least recently used live actors; they count as used
    /// now, so that the next call offers others.
    pub fn least_recent(&mut self, n: usize) -> Vec<ActorRef<WorkflowMsg>> {
        let ids: Vec<String> = self.by_use.values().take(n).cloned().collect();
        ids.iter().filter_map(|id| self.use_actor(id)).collect()
    }

    /// Takes every actor out of the live set.
    pub fn drain(&mut self) -> Vec<ActorRef<WorkflowMsg>> {
        let ids: Vec<String> = self.live.keys().cloned().collect();
        ids.iter().filter_map(|id| self.remove(id)).collect()
    }

    /// Live actors in this set.
    pub fn len(&self) -> usize {
        self.live.len()
    }
}
