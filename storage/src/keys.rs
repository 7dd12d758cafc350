//! Column families and the binary key layout; nothing outside this crate
//! names either. See `docs/storage.md` for the table this mirrors.
//!
//! Every per-instance column family is keyed by `shard (u32 BE)` first, so a
//! shard is one contiguous key range in each of them; cluster-wide data
//! (definitions, published event ids, node metadata) is not shard-scoped.
//! Integers are big-endian so that keys sort numerically; strings that are
//! followed by more key bytes end with `0x00` (ids and names never hold it).

use serde::{Deserialize, Serialize};
use troupe_engine::engine::{InstanceStatus, TimerId, TimerKind};

/// A shard-scoped table (one column family each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Table {
    /// `shard | id` → instance head (rewritten on every transition).
    Instances,
    /// `shard | id` → instance state as of `head.snapshot_events` events.
    Snapshots,
    /// `shard | id 0x00 | path` → a step run archived out of the state.
    Steps,
    /// `shard | id 0x00 | last seq u64` → the events of one transition,
    /// numbered up to `last seq`.
    Journal,
    /// `shard | id 0x00 | kind u8 | attempt u32 | path` → timer record.
    Timers,
    /// Index: `shard | at u64 | id 0x00 | kind u8 | attempt u32 | path` →
    /// timer record (timers in due order, loaded a window at a time).
    TimersDue,
    /// `shard | id 0x00 | path` → outbox record.
    Outbox,
    /// `shard | task id` → human task record.
    HumanTasks,
    /// `shard | incident id` → incident record.
    Incidents,
    /// `shard | name 0x00 | correlation 0x00 | id` → `()`.
    Subscriptions,
    /// `shard | counter name` → i64 little-endian (adding merge).
    Counters,
    /// Index: `shard | status u8 | id` → `()`.
    ByStatus,
    /// Index: `shard | definition 0x00 | id` → `()`.
    ByDefinition,
    /// Index: `shard | !updated_at u64 | id` → `()` (newest first).
    ByUpdated,
    /// Index: `shard | ended_at u64 | id` → `()`: ended instances in the
    /// order they ended, for retention.
    Ended,
    /// Cluster-wide: deployed definitions (the metadata group's state).
    Definitions,
    /// Cluster-wide: the cluster map (the metadata group's state).
    ClusterMap,
}

impl Table {
    /// Every shard-scoped table.
    pub const ALL: [Table; 15] = [
        Table::Instances,
        Table::Snapshots,
        Table::Steps,
        Table::Journal,
        Table::Timers,
        Table::TimersDue,
        Table::Outbox,
        Table::HumanTasks,
        Table::Incidents,
        Table::Subscriptions,
        Table::Counters,
        Table::ByStatus,
        Table::ByDefinition,
        Table::ByUpdated,
        Table::Ended,
    ];

    /// Its column family.
    pub fn cf(self) -> &'static str {
        match self {
            Table::Instances => "instances",
            Table::Snapshots => "snapshots",
            Table::Steps => "steps",
            Table::Journal => "journal",
            Table::Timers => "timers",
            Table::TimersDue => "timers_due",
            Table::Outbox => "outbox",
            Table::HumanTasks => "human_tasks",
            Table::Incidents => "incidents",
            Table::Subscriptions => "subscriptions",
            Table::Counters => "counters",
            Table::ByStatus => "by_status",
            Table::ByDefinition => "by_definition",
            Table::ByUpdated => "by_updated",
            Table::Ended => "ended",
            Table::Definitions => DEFINITIONS,
            Table::ClusterMap => META,
        }
    }
}

/// Deployed definitions: `name 0x00 version u32` → definition record.
pub const DEFINITIONS: &str = "definitions";
/// Published event ids already applied: `event id` → `()`.
pub const EVENTS_SEEN: &str = "events_seen";
/// Node metadata: `key` → value (`shards`, `format`).
pub const META: &str = "meta";
/// Replication log of every group: `group u32 | index u64` → entry.
pub const RAFT_LOG: &str = "raft_log";
/// Per-group replication state: `group u32 | name` → value (vote, last
/// purged, applied, membership).
pub const RAFT_STATE: &str = "raft_state";

/// Every column family.
pub fn all_cfs() -> impl Iterator<Item = &'static str> {
    Table::ALL
        .iter()
        .map(|t| t.cf())
        .chain([DEFINITIONS, EVENTS_SEEN, META, RAFT_LOG, RAFT_STATE])
}

/// Whether the column family `cf` is read one key at a time (and so gains
/// from a bloom filter); the others are only ever iterated or deleted from.
pub fn read_by_key(cf: &str) -> bool {
    [
        Table::Instances,
        Table::Snapshots,
        Table::HumanTasks,
        Table::Incidents,
        Table::Counters,
    ]
    .iter()
    .any(|t| t.cf() == cf)
        || [DEFINITIONS, EVENTS_SEEN, META, RAFT_STATE].contains(&cf)
}

/// Key of entry `index` of `group`'s replication log.
pub fn raft_log(group: u32, index: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(12);
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The first key past every entry of `group`'s log (the metadata group is
/// `u32::MAX`, so not `group + 1`).
pub fn raft_log_end(group: u32) -> Vec<u8> {
    let mut key = raft_log(group, u64::MAX);
    key.push(0);
    key
}

/// Key of `group`'s replication state value `name`.
pub fn raft_state(group: u32, name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + name.len());
    key.extend_from_slice(&group.to_be_bytes());
    key.extend_from_slice(name.as_bytes());
    key
}

/// The group of the cluster's metadata (definitions and the cluster map);
/// never a shard.
pub const META_GROUP: u32 = u32::MAX;

/// Key of the cluster map in [`META`].
pub const CLUSTER_MAP: &[u8] = b"cluster_map";

/// What a group's snapshot holds: `(table, first key, first key past)`.
pub fn group_ranges(group: u32) -> Vec<(Table, Vec<u8>, Vec<u8>)> {
    if group == META_GROUP {
        // Definition names are UTF-8, which never holds 0xff.
        let mut past_map = CLUSTER_MAP.to_vec();
        past_map.push(0);
        return vec![
            (Table::Definitions, Vec::new(), vec![0xff]),
            (Table::ClusterMap, CLUSTER_MAP.to_vec(), past_map),
        ];
    }
    Table::ALL
        .iter()
        .map(|table| (*table, shard_start(group), shard_end(group)))
        .collect()
}

/// The first key of `shard` in any shard-scoped table.
pub fn shard_start(shard: u32) -> Vec<u8> {
    shard.to_be_bytes().to_vec()
}

/// The first key past `shard` (shards are far fewer than `u32::MAX`).
pub fn shard_end(shard: u32) -> Vec<u8> {
    (shard + 1).to_be_bytes().to_vec()
}

fn with_shard(shard: u32, capacity: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(4 + capacity);
    key.extend_from_slice(&shard.to_be_bytes());
    key
}

fn push_str0(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(s.as_bytes());
    key.push(0);
}

/// Snapshot key of an instance.
pub fn instance(shard: u32, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, id.len());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Prefix of everything of one instance in the tables keyed `shard | id 0x00 ...`.
pub fn instance_prefix(shard: u32, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, id.len() + 1);
    push_str0(&mut key, id);
    key
}

/// The `shard | id 0x00` prefix of a key of a table keyed by instance then
/// more (the journal's prefix extractor: its bloom filters are built over
/// these, so that reading one instance's events skips files without any).
/// The whole key when it has no such prefix.
pub fn instance_prefix_of(key: &[u8]) -> &[u8] {
    match key
        .get(4..)
        .and_then(|rest| rest.iter().position(|b| *b == 0))
    {
        Some(end) => &key[..4 + end + 1],
        None => key,
    }
}

/// Whether `key` starts with an instance prefix ([`instance_prefix_of`]).
pub fn has_instance_prefix(key: &[u8]) -> bool {
    key.get(4..).is_some_and(|rest| rest.contains(&0))
}

/// Key of an archived step run.
pub fn step(shard: u32, id: &str, path: &str) -> Vec<u8> {
    let mut key = instance_prefix(shard, id);
    key.extend_from_slice(path.as_bytes());
    key
}

/// Journal key of the record whose last event is `seq`.
pub fn journal(shard: u32, id: &str, seq: u64) -> Vec<u8> {
    let mut key = instance_prefix(shard, id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The sequence number a journal key ends with.
pub fn journal_seq(key: &[u8]) -> Option<u64> {
    let at = key.len().checked_sub(8)?;
    key[at..].try_into().ok().map(u64::from_be_bytes)
}

/// The one-byte code of a timer kind in timer keys (stable: never reuse one).
pub fn timer_kind_code(kind: TimerKind) -> u8 {
    match kind {
        TimerKind::Retry => 1,
        TimerKind::StartToClose => 2,
        TimerKind::ScheduleToStart => 3,
        TimerKind::Heartbeat => 4,
        TimerKind::Wait => 5,
        TimerKind::AwaitTimeout => 6,
        TimerKind::HumanTimeout => 7,
        TimerKind::HumanEscalation => 8,
    }
}

/// Timer key.
pub fn timer(shard: u32, id: &str, timer: &TimerId) -> Vec<u8> {
    let mut key = instance_prefix(shard, id);
    key.push(timer_kind_code(timer.kind));
    key.extend_from_slice(&timer.attempt.to_be_bytes());
    key.extend_from_slice(timer.path.as_bytes());
    key
}

/// Due-order key of a timer of instance `id` due at `at`.
pub fn timer_due(shard: u32, at: u64, id: &str, timer: &TimerId) -> Vec<u8> {
    let mut key = with_shard(shard, 8 + id.len() + 6 + timer.path.len());
    key.extend_from_slice(&at.to_be_bytes());
    push_str0(&mut key, id);
    key.push(timer_kind_code(timer.kind));
    key.extend_from_slice(&timer.attempt.to_be_bytes());
    key.extend_from_slice(timer.path.as_bytes());
    key
}

/// The first due-order key of `shard` at `at`.
pub fn timer_due_from(shard: u32, at: u64) -> Vec<u8> {
    let mut key = with_shard(shard, 8);
    key.extend_from_slice(&at.to_be_bytes());
    key
}

/// Outbox key of the effect at `path`.
pub fn outbox(shard: u32, id: &str, path: &str) -> Vec<u8> {
    let mut key = instance_prefix(shard, id);
    key.extend_from_slice(path.as_bytes());
    key
}

/// Key of a human task or incident by its id.
pub fn by_id(shard: u32, id: &str) -> Vec<u8> {
    instance(shard, id)
}

/// Subscription key.
pub fn subscription(shard: u32, name: &str, correlation: Option<&str>, id: &str) -> Vec<u8> {
    let mut key = subscription_prefix(shard, name, correlation);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Prefix of the subscriptions of one shard for `name` with `correlation`.
pub fn subscription_prefix(shard: u32, name: &str, correlation: Option<&str>) -> Vec<u8> {
    let correlation = correlation.unwrap_or("");
    let mut key = with_shard(shard, name.len() + correlation.len() + 2);
    push_str0(&mut key, name);
    push_str0(&mut key, correlation);
    key
}

/// Counter of instances in `status`.
pub fn status_counter(shard: u32, status: InstanceStatus) -> Vec<u8> {
    let mut key = with_shard(shard, 20);
    key.extend_from_slice(b"status/");
    key.extend_from_slice(status.as_str().as_bytes());
    key
}

/// The one-byte code of a status in index keys (stable: never reuse one).
pub fn status_code(status: InstanceStatus) -> u8 {
    match status {
        InstanceStatus::Running => 1,
        InstanceStatus::Waiting => 2,
        InstanceStatus::Completed => 3,
        InstanceStatus::Failed => 4,
        InstanceStatus::Compensating => 5,
        InstanceStatus::Compensated => 6,
        InstanceStatus::CompensationFailed => 7,
        InstanceStatus::Cancelled => 8,
    }
}

/// Status index key (or, with an empty id, the prefix of one status).
pub fn by_status(shard: u32, status: InstanceStatus, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, 1 + id.len());
    key.push(status_code(status));
    key.extend_from_slice(id.as_bytes());
    key
}

/// Definition index key (or, with an empty id, the prefix of one definition).
pub fn by_definition(shard: u32, definition: &str, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, definition.len() + 1 + id.len());
    push_str0(&mut key, definition);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Recency index key: newest first within a shard.
pub fn by_updated(shard: u32, updated_at: u64, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, 8 + id.len());
    key.extend_from_slice(&(!updated_at).to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// Retention index key: when an instance ended, then its id.
pub fn ended(shard: u32, ended_at: u64, id: &str) -> Vec<u8> {
    let mut key = with_shard(shard, 8 + id.len());
    key.extend_from_slice(&ended_at.to_be_bytes());
    key.extend_from_slice(id.as_bytes());
    key
}

/// The end time and id in a retention index key.
pub fn parse_ended(key: &[u8]) -> Option<(u64, String)> {
    let ended_at = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    let id = String::from_utf8(key.get(12..)?.to_vec()).ok()?;
    Some((ended_at, id))
}

/// The update time and id in a recency index key.
pub fn parse_by_updated(key: &[u8]) -> Option<(u64, String)> {
    let inverted = u64::from_be_bytes(key.get(4..12)?.try_into().ok()?);
    let id = String::from_utf8(key.get(12..)?.to_vec()).ok()?;
    Some((!inverted, id))
}

/// Definition key.
pub fn definition(name: &str, version: u32) -> Vec<u8> {
    let mut key = definition_prefix(name);
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Prefix of every version of a definition.
pub fn definition_prefix(name: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(name.len() + 5);
    push_str0(&mut key, name);
    key
}

/// A short stable id for something of an instance at a path (human tasks,
/// incidents), safe in URLs, naming its shard so it is found in one read.
pub fn short_id(kind: &str, shard: u32, instance: &str, path: &str) -> String {
    let hash = troupe_protocol::stable_hash(format!("{kind}\0{instance}\0{path}").as_bytes());
    format!("{kind}-{shard:x}-{hash:016x}")
}

/// The shard named by an id made by [`short_id`].
pub fn shard_of_short_id(kind: &str, id: &str) -> Option<u32> {
    let rest = id.strip_prefix(kind)?.strip_prefix('-')?;
    let (shard, hash) = rest.split_once('-')?;
    (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(shard, 16).ok())?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is an on-disk format: these bytes must never change
    /// without a format version bump and a migration.
    #[test]
    fn key_layout_is_pinned() {
        assert_eq!(instance(3, "ab"), b"\0\0\0\x03ab");
        assert_eq!(journal(1, "a", 2), b"\0\0\0\x01a\0\0\0\0\0\0\0\0\x02");
        let t = TimerId {
            kind: TimerKind::HumanEscalation,
            path: "x/1".into(),
            attempt: 7,
        };
        assert_eq!(timer(2, "i", &t), b"\0\0\0\x02i\0\x08\0\0\0\x07x/1");
        assert_eq!(
            timer_due(2, 258, "i", &t),
            b"\0\0\0\x02\0\0\0\0\0\0\x01\x02i\0\x08\0\0\0\x07x/1"
        );
        assert_eq!(timer_due_from(2, 258), b"\0\0\0\x02\0\0\0\0\0\0\x01\x02");
        assert_eq!(outbox(0, "i", "p"), b"\0\0\0\0i\0p");
        assert_eq!(step(0, "i", "e/1/p"), b"\0\0\0\0i\0e/1/p");
        assert_eq!(
            subscription(5, "paid", Some("o-1"), "i"),
            b"\0\0\0\x05paid\0o-1\0i"
        );
        assert_eq!(subscription_prefix(5, "paid", None), b"\0\0\0\x05paid\0\0");
        assert_eq!(
            by_status(1, InstanceStatus::Failed, "z"),
            b"\0\0\0\x01\x04z"
        );
        assert_eq!(by_definition(1, "d", "z"), b"\0\0\0\x01d\0z");
        assert_eq!(
            by_updated(1, 1, "z"),
            b"\0\0\0\x01\xff\xff\xff\xff\xff\xff\xff\xfez"
        );
        assert_eq!(ended(1, 258, "z"), b"\0\0\0\x01\0\0\0\0\0\0\x01\x02z");
        assert_eq!(parse_ended(&ended(1, 258, "z")), Some((258, "z".into())));
        assert_eq!(
            status_counter(1, InstanceStatus::Waiting),
            b"\0\0\0\x01status/waiting"
        );
        assert_eq!(definition("d", 258), b"d\0\0\0\x01\x02");
    }

    #[test]
    fn shards_are_contiguous_ranges() {
        assert!(journal(1, "zzz", u64::MAX) < shard_end(1));
        assert!(instance(1, "") >= shard_start(1));
        assert!(instance(2, "") >= shard_end(1));
    }

    #[test]
    fn journal_keys_sort_by_instance_then_sequence() {
        let mut keys = vec![journal(1, "b", 1), journal(1, "a", 300), journal(1, "a", 2)];
        keys.sort();
        assert_eq!(
            keys,
            [journal(1, "a", 2), journal(1, "a", 300), journal(1, "b", 1)]
        );
        assert!(!journal(1, "ab", 7).starts_with(&instance_prefix(1, "a")));
        assert_eq!(journal_seq(&journal(1, "a", 300)), Some(300));
        assert_eq!(journal_seq(b"short"), None);
    }

    #[test]
    fn recency_index_sorts_newest_first() {
        assert!(by_updated(0, 10, "a") < by_updated(0, 9, "a"));
        assert_eq!(
            parse_by_updated(&by_updated(0, 42, "id-1")),
            Some((42, "id-1".into()))
        );
    }

    #[test]
    fn short_ids_name_their_shard() {
        let id = short_id("human", 11, "order-1", "approve");
        assert!(id.starts_with("human-b-"), "{id}");
        assert_eq!(shard_of_short_id("human", &id), Some(11));
        assert_eq!(shard_of_short_id("incident", &id), None);
        assert_eq!(shard_of_short_id("human", "human-zz-1"), None);
    }

    #[test]
    fn definition_versions_sort_numerically() {
        assert!(definition("d", 2) < definition("d", 10));
        assert!(definition("d", 10).starts_with(&definition_prefix("d")));
        assert!(!definition("dd", 1).starts_with(&definition_prefix("d")));
    }
}
