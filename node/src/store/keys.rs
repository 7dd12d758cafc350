//! Column families and key layouts. See `docs/storage.md`.

/// Workflow definitions: `name 0x00 version(u32 BE)` → [`super::DefinitionRecord`].
pub const DEFINITIONS: &str = "definitions";
/// Instance snapshots: `id` → [`super::InstanceRecord`].
pub const INSTANCES: &str = "instances";
/// Journal: `shard(u32 BE) id 0x00 seq(u64 BE)` → `engine::Event`.
pub const JOURNAL: &str = "journal";
/// Armed timers: `id 0x00 timer` → [`super::TimerRecord`].
pub const TIMERS: &str = "timers";
/// Open human tasks: `task id` → [`super::HumanTaskRecord`].
pub const HUMAN_TASKS: &str = "human_tasks";
/// Open incidents: `incident id` → [`super::IncidentRecord`].
pub const INCIDENTS: &str = "incidents";
/// Await subscriptions: `name 0x00 correlation 0x00 id` → `()`.
pub const SUBSCRIPTIONS: &str = "subscriptions";
/// Published event ids already applied: `event id` → `()`.
pub const EVENTS_SEEN: &str = "events_seen";
/// Effects that must be carried out at least once (task dispatches, child
/// starts): `id 0x00 path` → [`super::OutboxRecord`]; redone on recovery.
pub const OUTBOX: &str = "outbox";
/// Node metadata: `key` → value (e.g. `shards`).
pub const META: &str = "meta";
/// Counters kept in step with transitions (instances by status):
/// `status/<status>` → i64 little-endian, updated with an adding merge.
pub const COUNTERS: &str = "counters";

/// Every column family.
pub const ALL: [&str; 11] = [
    DEFINITIONS,
    INSTANCES,
    JOURNAL,
    TIMERS,
    HUMAN_TASKS,
    INCIDENTS,
    SUBSCRIPTIONS,
    EVENTS_SEEN,
    OUTBOX,
    META,
    COUNTERS,
];

/// Counter of instances in `status`.
pub fn status_counter(status: &str) -> Vec<u8> {
    format!("status/{status}").into_bytes()
}

/// `a 0x00 b`.
pub fn pair(a: &str, b: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(a.len() + b.len() + 1);
    key.extend_from_slice(a.as_bytes());
    key.push(0);
    key.extend_from_slice(b.as_bytes());
    key
}

/// Definition key.
pub fn definition(name: &str, version: u32) -> Vec<u8> {
    let mut key = pair(name, "");
    key.extend_from_slice(&version.to_be_bytes());
    key
}

/// Prefix of every version of a definition.
pub fn definition_prefix(name: &str) -> Vec<u8> {
    pair(name, "")
}

/// Journal key of event `seq` of instance `id`.
pub fn journal(shard: u32, id: &str, seq: u64) -> Vec<u8> {
    let mut key = journal_prefix(shard, id);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Prefix of an instance's journal.
pub fn journal_prefix(shard: u32, id: &str) -> Vec<u8> {
    let mut key = shard.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key.push(0);
    key
}

/// Subscription key.
pub fn subscription(name: &str, correlation: Option<&str>, id: &str) -> Vec<u8> {
    let mut key = pair(name, correlation.unwrap_or(""));
    key.push(0);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Prefix of the subscriptions for `name` with `correlation`.
pub fn subscription_prefix(name: &str, correlation: Option<&str>) -> Vec<u8> {
    let mut key = pair(name, correlation.unwrap_or(""));
    key.push(0);
    key
}

/// A short stable id for something identified by an instance and a path
/// (human tasks, incidents), safe in URLs.
pub fn short_id(kind: &str, instance: &str, path: &str) -> String {
    let hash = troupe_protocol::stable_hash(format!("{kind}\0{instance}\0{path}").as_bytes());
    format!("{kind}-{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keys_sort_by_instance_then_sequence() {
        let mut keys = vec![
            journal(1, "b", 1),
            journal(1, "a", 300),
            journal(1, "a", 2),
            journal(0, "z", 9),
        ];
        keys.sort();
        assert_eq!(
            keys,
            [
                journal(0, "z", 9),
                journal(1, "a", 2),
                journal(1, "a", 300),
                journal(1, "b", 1)
            ]
        );
        assert!(journal(1, "a", 7).starts_with(&journal_prefix(1, "a")));
        assert!(!journal(1, "ab", 7).starts_with(&journal_prefix(1, "a")));
    }

    #[test]
    fn definition_versions_sort_numerically() {
        assert!(definition("d", 2) < definition("d", 10));
        assert!(definition("d", 10).starts_with(&definition_prefix("d")));
        assert!(!definition("dd", 1).starts_with(&definition_prefix("d")));
    }
}
