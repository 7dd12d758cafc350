//! The store on a real RocksDB: shard-scoped batches, indexed listing,
//! pagination, shard export/import/delete, and refusing an old format.

use serde_json::json;
use std::path::{Path, PathBuf};
use troupe_engine::definition;
use troupe_engine::engine::{Event, EventKind, Instance, InstanceStatus, TimerId, TimerKind};
use troupe_storage::{
    Committer, Ended, EndedRecord, Error, HumanTaskRecord, Indexed, InstanceHead, InstanceRecord,
    ListOrder, ListQuery, META_GROUP, ShardBatch, Store, StoreOptions, TimerRecord, human_task_id,
};

struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("troupe-storage-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn open(dir: &Path, shards: u32) -> Result<Store, Error> {
    Store::open(
        dir,
        StoreOptions {
            shards,
            write_buffer_bytes: 8 << 20,
            block_cache_bytes: 8 << 20,
            background_write_bytes_per_sec: 0,
            direct_io: true,
        },
    )
}

fn instance(id: &str, definition: &str, status: InstanceStatus, updated_at: u64) -> InstanceRecord {
    let def = definition::load(&format!(
        "name: {definition}\nversion: 1\nsteps:\n  - {{ id: a, task: noop }}\n"
    ))
    .unwrap();
    let mut state = Instance::blank(&def);
    state.id = id.into();
    state.status = status;
    state.updated_at = updated_at;
    InstanceRecord {
        state,
        parent: None,
    }
}

/// A completed step run, as archived out of an instance's state.
fn step_run() -> troupe_engine::engine::StepRun {
    troupe_engine::engine::StepRun {
        step_id: "a".into(),
        status: troupe_engine::engine::StepStatus::Completed,
        started_at: 1,
        ended_at: Some(2),
        result: Some(json!(7)),
        error: None,
        scopes: vec![],
        write_scope: None,
        order: 0,
        task: None,
        compensation: None,
        fallback: None,
        detail: troupe_engine::engine::RunDetail::None,
    }
}

/// Writes (or rewrites) an instance the way a transition does.
async fn put(
    committer: &Committer,
    shard: u32,
    record: &InstanceRecord,
    previous: Option<Indexed>,
) {
    let mut batch = ShardBatch::new(shard);
    batch.put_head(&InstanceHead::of(record, 0), previous, None);
    batch.count_status(record.state.status, 1);
    if let Some(p) = previous {
        batch.count_status(p.status, -1);
    }
    committer.append(batch).await.unwrap();
}

#[tokio::test]
async fn listing_reads_through_the_indexes_in_order_and_by_page() {
    let dir = Dir::new("list");
    let store = open(&dir.0, 4).unwrap();
    let committer = Committer::start(store.clone(), false, 64);
    for n in 0..40u64 {
        let status = if n % 10 == 3 {
            InstanceStatus::Failed
        } else {
            InstanceStatus::Completed
        };
        let def = if n % 2 == 0 { "even" } else { "odd" };
        let id = format!("i-{n:02}");
        let shard = troupe_protocol::shard_of(&id, 4);
        put(
            &committer,
            shard,
            &instance(&id, def, status, 1000 + n),
            None,
        )
        .await;
    }
    // One instance fails later: its old index entries must go.
    let moved = instance("i-00", "even", InstanceStatus::Failed, 5000);
    let shard = troupe_protocol::shard_of("i-00", 4);
    let previous = Indexed {
        status: InstanceStatus::Completed,
        updated_at: 1000,
    };
    put(&committer, shard, &moved, Some(previous)).await;

    let ids = |page: &troupe_storage::Page| -> Vec<String> {
        page.items.iter().map(|r| r.id.clone()).collect()
    };
    let failed = store
        .list(&ListQuery {
            status: Some(InstanceStatus::Failed),
            limit: 10,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&failed), ["i-00", "i-03", "i-13", "i-23", "i-33"]);
    assert_eq!(failed.next, None);

    let first = store
        .list(&ListQuery {
            definition: Some("odd".into()),
            limit: 3,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&first), ["i-01", "i-03", "i-05"]);
    let second = store
        .list(&ListQuery {
            definition: Some("odd".into()),
            limit: 3,
            cursor: first.next.clone(),
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&second), ["i-07", "i-09", "i-11"]);

    let newest = store
        .list(&ListQuery {
            order: ListOrder::NewestFirst,
            limit: 3,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&newest), ["i-00", "i-39", "i-38"]);
    let older = store
        .list(&ListQuery {
            order: ListOrder::NewestFirst,
            limit: 2,
            cursor: newest.next.clone(),
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(ids(&older), ["i-37", "i-36"]);

    let all = store
        .list(&ListQuery {
            limit: 1000,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(all.items.len(), 40);
    assert!(all.items.windows(2).all(|w| w[0].id < w[1].id));
    // One shard's part of the listing, as a node holding only that shard
    // answers a cluster-wide listing.
    let own = store
        .list(&ListQuery {
            limit: 1000,
            shards: Some(vec![shard]),
            ..ListQuery::default()
        })
        .unwrap();
    let expected: Vec<String> = ids(&all)
        .into_iter()
        .filter(|id| troupe_protocol::shard_of(id, 4) == shard)
        .collect();
    assert!(!expected.is_empty() && expected.len() < 40);
    assert_eq!(ids(&own), expected);
    let counted: i64 = (0..4)
        .flat_map(|s| store.status_counts(s).unwrap())
        .filter(|(s, _)| *s == InstanceStatus::Failed)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(counted, 5);
}

#[tokio::test]
async fn a_shard_moves_whole_between_stores_and_leaves_nothing_behind() {
    let (a, b) = (Dir::new("move-a"), Dir::new("move-b"));
    let (from, to) = (open(&a.0, 2).unwrap(), open(&b.0, 2).unwrap());
    let committer = Committer::start(from.clone(), false, 64);
    let id = (0..)
        .map(|n| format!("w-{n}"))
        .find(|id| troupe_protocol::shard_of(id, 2) == 1)
        .unwrap();
    let other = (0..)
        .map(|n| format!("w-{n}"))
        .find(|id| troupe_protocol::shard_of(id, 2) == 0)
        .unwrap();
    let mut batch = ShardBatch::new(1);
    let record = instance(&id, "d", InstanceStatus::Waiting, 7);
    batch.put_head(&InstanceHead::of(&record, 1), None, None);
    batch.put_snapshot(&record.state);
    let event = Event {
        at: 7,
        kind: EventKind::CancelRequested { reason: "x".into() },
    };
    batch.append_events(&id, 1, &[&event]);
    let timer = TimerId {
        kind: TimerKind::Wait,
        path: "nap".into(),
        attempt: 0,
    };
    batch.arm_timer(
        &TimerRecord {
            instance: id.clone(),
            timer: timer.clone(),
            at: 99,
        },
        None,
    );
    batch.put_human_task(&HumanTaskRecord {
        id: human_task_id(1, &id, "ask"),
        instance: id.clone(),
        path: "ask".into(),
        assignee: "ops".into(),
        input: json!({"q": 1}),
        escalated: false,
        created_at: 7,
    });
    batch.subscribe("paid", Some("o-1"), &id);
    batch.count_status(InstanceStatus::Waiting, 1);
    committer.append(batch).await.unwrap();
    put(
        &committer,
        0,
        &instance(&other, "d", InstanceStatus::Waiting, 8),
        None,
    )
    .await;

    let digest = from.shard_digest(1).unwrap();
    let mut chunks = 0;
    from.export_shard(1, 64, |entries| {
        chunks += 1;
        to.import_shard(1, entries)
    })
    .unwrap();
    assert!(chunks > 1, "small chunks");
    assert_eq!(to.shard_digest(1).unwrap(), digest, "the copy is exact");
    assert_eq!(to.instance_head(1, &id).unwrap().unwrap().id, id);
    assert_eq!(to.timers(1).unwrap()[0].timer, timer);
    assert_eq!(to.history(1, &id, None, 10).unwrap().len(), 1);
    let task_id = human_task_id(1, &id, "ask");
    assert_eq!(to.human_task(&task_id).unwrap().unwrap().assignee, "ops");
    assert_eq!(
        to.subscribers("paid", Some("o-1"), None).unwrap(),
        vec![id.clone()]
    );
    assert_eq!(to.status_counts(1).unwrap(), [(InstanceStatus::Waiting, 1)]);
    assert!(
        to.instance_head(0, &other).unwrap().is_none(),
        "only shard 1 moved"
    );

    // An import cannot write outside its shard.
    let mut stray = Vec::new();
    from.export_shard(0, 1 << 20, |entries| {
        stray.extend(entries);
        Ok(())
    })
    .unwrap();
    assert!(matches!(to.import_shard(1, stray), Err(Error::Import(_))));

    from.delete_shard(1).unwrap();
    assert!(from.instance_head(1, &id).unwrap().is_none());
    assert!(from.timers(1).unwrap().is_empty());
    assert!(from.human_task(&task_id).unwrap().is_none());
    assert!(
        from.instance_head(0, &other).unwrap().is_some(),
        "shard 0 untouched"
    );
}

#[test]
fn a_data_dir_of_the_old_format_is_refused_untouched() {
    let dir = Dir::new("format");
    {
        // Format 1: the column families of the unscoped layout.
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = rocksdb::DB::open_cf(&options, &dir.0, ["instances", "journal", "meta"]).unwrap();
        db.put_cf(db.cf_handle("instances").unwrap(), b"old", b"\x01{}")
            .unwrap();
    }
    let err = open(&dir.0, 4).err().expect("refused");
    assert!(
        matches!(
            err,
            Error::Format {
                found: 1,
                expected: troupe_storage::FORMAT
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("empty data dir"), "{err}");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &dir.0).unwrap();
    assert!(
        !cfs.iter().any(|cf| cf == "by_status"),
        "nothing was created: {cfs:?}"
    );
    // Format 2: shard-scoped, but whole-instance snapshots on every write.
    let two = Dir::new("format-2");
    {
        let mut options = rocksdb::Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let cfs = ["instances", "journal", "by_status", "meta"];
        drop(rocksdb::DB::open_cf(&options, &two.0, cfs).unwrap());
    }
    let err = open(&two.0, 4).err().expect("refused");
    assert!(matches!(err, Error::Format { found: 2, .. }), "{err}");
    let cfs = rocksdb::DB::list_cf(&rocksdb::Options::default(), &two.0).unwrap();
    assert!(
        !cfs.iter().any(|cf| cf == "snapshots"),
        "untouched: {cfs:?}"
    );
    // A store of this format reopens, and keeps its shard count.
    let fresh = Dir::new("format-fresh");
    drop(open(&fresh.0, 4).unwrap());
    assert!(open(&fresh.0, 4).is_ok());
    assert!(matches!(
        open(&fresh.0, 8),
        Err(Error::Shards {
            found: 4,
            configured: 8
        })
    ));
}

#[tokio::test]
async fn an_instance_loads_as_its_snapshot_plus_the_journal_after_it() {
    let dir = Dir::new("tail");
    let store = open(&dir.0, 2).unwrap();
    let committer = Committer::start(store.clone(), false, 64);
    let mut record = instance("t-1", "d", InstanceStatus::Running, 1);
    let event = |n: u64| Event {
        at: n,
        kind: EventKind::CancelRequested {
            reason: format!("r{n}"),
        },
    };
    // Events 1-3 with a snapshot at 2, then event 3 alone.
    let mut batch = ShardBatch::new(1);
    batch.append_events("t-1", 1, &[&event(1), &event(2)]);
    record.state.events_applied = 2;
    batch.put_snapshot(&record.state);
    batch.put_head(&InstanceHead::of(&record, 2), None, None);
    committer.append(batch).await.unwrap();
    let mut batch = ShardBatch::new(1);
    let tail_bytes = batch.append_events("t-1", 3, &[&event(3)]);
    record.state.events_applied = 3;
    batch.put_head(&InstanceHead::of(&record, 2), None, None);
    let run = step_run();
    batch.archive_run("t-1", "each/0/a", &run);
    batch.archive_run("t-1", "each/1/a", &run);
    committer.append(batch).await.unwrap();

    let stored = store.load_instance(1, "t-1").unwrap().unwrap();
    assert_eq!(stored.head.events, 3);
    assert_eq!(stored.snapshot.unwrap().events_applied, 2);
    assert_eq!(
        stored.tail,
        vec![event(3)],
        "only the events after the snapshot"
    );
    assert_eq!(stored.tail_bytes, tail_bytes);
    assert!(store.load_instance(0, "t-1").unwrap().is_none());
    let steps = store.archived_steps(1, "t-1", None, 10).unwrap();
    assert_eq!(
        steps.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>(),
        ["each/0/a", "each/1/a"]
    );
    let after = store
        .archived_steps(1, "t-1", Some("each/0/a"), 10)
        .unwrap();
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].1, run);
}

/// Journals that are prefixes of one another (`x`, `xx`, `xxx`), spread
/// over memtables and table files: each instance reads back its own events
/// and no other's, whether ended without a snapshot (its whole journal) or
/// paged as history, and a shard's export still holds every event.
#[tokio::test]
async fn each_instance_reads_exactly_its_own_journal_from_memtables_and_files() {
    let dir = Dir::new("journal-prefix");
    let store = open(&dir.0, 1).unwrap();
    let committer = Committer::start(store.clone(), false, 64);
    let event = |id: &str, n: u64| Event {
        at: n,
        kind: EventKind::CancelRequested {
            reason: format!("{id}/{n}"),
        },
    };
    let ids: Vec<String> = (1..=4)
        .map(|n| "x".repeat(n))
        .chain((0..200).map(|n| format!("i-{n}")))
        .collect();
    let mut events = std::collections::BTreeMap::new();
    // Three rounds of events, flushed after the first two: every journal is
    // split between two table files and the memtable.
    for round in 0..3u64 {
        for id in &ids {
            let mut batch = ShardBatch::new(0);
            let first = round * 3 + 1;
            let record: Vec<Event> = (first..first + 3).map(|n| event(id, n)).collect();
            batch.append_events(id, first, &record.iter().collect::<Vec<_>>());
            let mut record = instance(id, "d", InstanceStatus::Running, round);
            record.state.events_applied = round * 3 + 3;
            if round == 2 {
                record.state.status = InstanceStatus::Completed;
            }
            batch.put_head(&InstanceHead::of(&record, 0), None, None);
            committer.append(batch).await.unwrap();
            *events.entry(id.clone()).or_insert(0) += 3;
        }
        if round < 2 {
            store.flush().unwrap();
        }
    }
    for id in &ids {
        let stored = store.load_instance(0, id).unwrap().unwrap();
        assert!(stored.snapshot.is_none());
        let expected: Vec<Event> = (1..=9).map(|n| event(id, n)).collect();
        assert_eq!(stored.tail, expected, "{id}: its own events, all of them");
        let first = store.history(0, id, None, 4).unwrap();
        let rest = store.history(0, id, Some(4), 100).unwrap();
        let seqs: Vec<u64> = first.iter().chain(&rest).map(|(seq, _)| *seq).collect();
        assert_eq!(seqs, (1..=9).collect::<Vec<_>>(), "{id}: history pages");
        let inside: Vec<u64> = store
            .history(0, id, Some(4), 2)
            .unwrap()
            .iter()
            .map(|(seq, _)| *seq)
            .collect();
        assert_eq!(
            inside,
            [5, 6],
            "{id}: a page that starts and ends inside a record"
        );
    }
    assert!(
        store
            .load_instance(0, "x".repeat(5).as_str())
            .unwrap()
            .is_none()
    );
    assert!(store.history(0, "xxxxx", None, 10).unwrap().is_empty());
    let mut journal = 0;
    store
        .export_shard(0, 1 << 16, |chunk| {
            journal += chunk.iter().filter(|e| e.table.cf() == "journal").count();
            Ok(())
        })
        .unwrap();
    assert_eq!(journal, ids.len() * 3, "the export holds every record");

    // History retention drops the records that end at or before its limit;
    // the one that straddles it stays whole.
    let mut batch = ShardBatch::new(0);
    batch.drop_history("xx", 4);
    committer.append(batch).await.unwrap();
    let kept: Vec<u64> = store
        .history(0, "xx", None, 100)
        .unwrap()
        .iter()
        .map(|(seq, _)| *seq)
        .collect();
    assert_eq!(kept, (4..=9).collect::<Vec<_>>());
    let x = store.history(0, "x", None, 100).unwrap();
    assert_eq!(x.len(), 9, "a neighbour's journal is untouched");
}

#[test]
fn the_metadata_group_moves_definitions_and_the_cluster_map_and_nothing_else() {
    let (a, b) = (Dir::new("meta-a"), Dir::new("meta-b"));
    let (from, to) = (open(&a.0, 2).unwrap(), open(&b.0, 2).unwrap());
    let record = |version| troupe_storage::DefinitionRecord {
        name: "flow".into(),
        version,
        source: format!("v{version}"),
        deployed_at: 1,
    };
    let member = |id| troupe_storage::MemberRecord {
        id,
        state: troupe_storage::MemberState::Active,
        raft_addr: format!("127.0.0.1:{}", 9000 + id),
        http_addr: format!("127.0.0.1:{}", 8000 + id),
        native_addr: format!("127.0.0.1:{}", 7000 + id),
        control_addr: None,
    };
    let map = troupe_storage::ClusterMap {
        epoch: 1,
        members: vec![member(1), member(2), member(3)],
        shards: 2,
        replication_factor: 3,
        placement: vec![vec![1, 2, 3], vec![2, 3, 1]],
    };
    let mut batches = vec![
        ShardBatch::deploy(&record(1)),
        ShardBatch::deploy(&record(2)),
    ];
    batches.push(ShardBatch::cluster_map(&map));
    assert_eq!(
        batches[1].deployed_definitions(),
        vec![("flow".to_owned(), 2)]
    );
    from.apply_replicated(META_GROUP, batches, vec![]).unwrap();
    // A shard's entry on the receiving side is left alone by the install.
    let mut shard = ShardBatch::new(0);
    shard.arm_timer(
        &TimerRecord {
            instance: "w".into(),
            timer: TimerId {
                kind: TimerKind::Wait,
                path: "nap".into(),
                attempt: 0,
            },
            at: 5,
        },
        None,
    );
    to.apply_replicated(0, vec![shard], vec![]).unwrap();
    to.apply_replicated(META_GROUP, vec![ShardBatch::deploy(&record(9))], vec![])
        .unwrap();

    let mut exported = Vec::new();
    from.export_shard(META_GROUP, 1 << 20, |chunk| {
        exported.extend(chunk);
        Ok(())
    })
    .unwrap();
    assert_eq!(exported.len(), 3, "two definitions and the map");
    to.install_shard(META_GROUP, exported, vec![]).unwrap();
    let versions: Vec<u32> = to
        .definition_versions("flow")
        .unwrap()
        .iter()
        .map(|d| d.version)
        .collect();
    assert_eq!(versions, vec![1, 2], "the install replaced the definitions");
    assert_eq!(to.cluster_map().unwrap(), Some(map));
    assert_eq!(to.timers(0).unwrap().len(), 1, "shard data untouched");
    assert!(to.incarnation().is_ok(), "node metadata untouched");

    // The metadata group's log (group u32::MAX) truncates without overflow.
    to.log_append(META_GROUP, vec![(1, b"a".to_vec()), (2, b"b".to_vec())])
        .unwrap();
    to.log_truncate_from(META_GROUP, 2).unwrap();
    assert_eq!(to.log_last(META_GROUP).unwrap().map(|(i, _)| i), Some(1));
}

#[test]
fn timers_are_read_by_due_window_and_rearming_or_cancelling_leaves_no_stale_entry() {
    let dir = Dir::new("due");
    let store = open(&dir.0, 2).unwrap();
    let timer = |path: &str| TimerId {
        kind: TimerKind::Wait,
        path: path.into(),
        attempt: 0,
    };
    let record = |id: &str, path: &str, at| TimerRecord {
        instance: id.into(),
        timer: timer(path),
        at,
    };
    let mut batch = ShardBatch::new(1);
    batch.arm_timer(&record("a", "x", 10), None);
    batch.arm_timer(&record("b", "y", 1_000), None);
    batch.arm_timer(&record("c", "z", 50), None);
    store.apply_replicated(1, vec![batch], vec![]).unwrap();
    let mut batch = ShardBatch::new(1);
    // a moves from 10 to 60; c is withdrawn.
    batch.arm_timer(&record("a", "x", 60), Some(10));
    batch.cancel_timer("c", &timer("z"), Some(50));
    store.apply_replicated(1, vec![batch], vec![]).unwrap();

    let ats = |after, until| -> Vec<u64> {
        store
            .timers_due(1, after, until)
            .unwrap()
            .iter()
            .map(|t| t.at)
            .collect()
    };
    assert_eq!(ats(None, 59), Vec::<u64>::new(), "nothing stale is left");
    assert_eq!(ats(None, 60), vec![60]);
    assert_eq!(
        ats(Some(60), 999),
        Vec::<u64>::new(),
        "the window excludes its start"
    );
    assert_eq!(ats(Some(60), 1_000), vec![1_000]);
    assert_eq!(ats(None, u64::MAX), vec![60, 1_000]);
    assert!(
        store.timers_due(0, None, u64::MAX).unwrap().is_empty(),
        "per shard"
    );
    assert_eq!(store.timers(1).unwrap().len(), 2);
}

#[test]
fn a_forgotten_group_leaves_no_data_log_or_state_and_spares_its_neighbours() {
    let dir = Dir::new("forget");
    let store = open(&dir.0, 3).unwrap();
    let timer = |instance: &str| TimerRecord {
        instance: instance.into(),
        timer: TimerId {
            kind: TimerKind::Wait,
            path: "nap".into(),
            attempt: 0,
        },
        at: 5,
    };
    for shard in 0..3 {
        let mut batch = ShardBatch::new(shard);
        batch.arm_timer(&timer(&format!("w-{shard}")), None);
        store
            .apply_replicated(shard, vec![batch], vec![("applied", vec![1])])
            .unwrap();
        store
            .log_append(shard, vec![(1, vec![7]), (2, vec![8])])
            .unwrap();
        store.put_raft_state(shard, "vote", &[1], true).unwrap();
    }
    let before: Vec<u64> = [0, 2]
        .iter()
        .map(|s| store.shard_digest(*s).unwrap())
        .collect();
    store.forget_group(1).unwrap();
    assert!(store.timers(1).unwrap().is_empty());
    assert_eq!(store.log_last(1).unwrap(), None);
    assert_eq!(store.raft_state(1, "vote").unwrap(), None);
    assert_eq!(store.raft_state(1, "applied").unwrap(), None);
    let after: Vec<u64> = [0, 2]
        .iter()
        .map(|s| store.shard_digest(*s).unwrap())
        .collect();
    assert_eq!(before, after);
    for shard in [0, 2] {
        assert_eq!(store.timers(shard).unwrap().len(), 1);
        assert_eq!(store.log_last(shard).unwrap().map(|(i, _)| i), Some(2));
        assert_eq!(store.raft_state(shard, "vote").unwrap(), Some(vec![1]));
    }
    assert!(store.forget_group(META_GROUP).is_err());
}

#[tokio::test]
async fn rocksdb_memory_is_reported_and_stays_within_its_budgets() {
    let dir = Dir::new("memory");
    let store = open(&dir.0, 4).unwrap();
    let committer = Committer::start(store.clone(), false, 64);
    let padding = "x".repeat(1_000);
    // About 30 MB through 8-MiB memtables: several flushes, then reads
    // through the 8-MiB block cache.
    let ids: Vec<String> = (0..30_000)
        .map(|i| format!("mem-{i:05}-{padding}"))
        .collect();
    for chunk in ids.chunks(500) {
        let mut batch = ShardBatch::new(1);
        for id in chunk {
            let record = instance(id, "memory", InstanceStatus::Completed, 1);
            batch.put_head(&InstanceHead::of(&record, 0), None, None);
        }
        committer.append(batch).await.unwrap();
    }
    let written = store.memory().unwrap();
    assert!(written.memtables > 0, "{written:?}");
    // The budget starts flushes; a memtable being flushed counts until its
    // file is written, so the bound is twice the budget, whatever the data.
    // Flushes run in the background and writes do not wait for them, and
    // RocksDB starts them on a write: on a slow machine the bound holds once
    // they have caught up, with writes still coming.
    let mut settled = written;
    for i in 0..100 {
        if settled.memtables <= 16 << 20 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let mut batch = ShardBatch::new(1);
        let record = instance(
            &format!("mem-late-{i}"),
            "memory",
            InstanceStatus::Completed,
            1,
        );
        batch.put_head(&InstanceHead::of(&record, 0), None, None);
        committer.append(batch).await.unwrap();
        settled = store.memory().unwrap();
    }
    assert!(
        settled.memtables <= 16 << 20,
        "{written:?} then {settled:?}"
    );
    for id in ids.iter().step_by(7) {
        assert!(store.instance_head(1, id).unwrap().is_some());
    }
    let read = store.memory().unwrap();
    assert!(read.block_cache > 0, "{read:?}");
    assert!(read.block_cache <= 8 << 20, "{read:?}");
    assert!(read.block_cache_pinned <= read.block_cache, "{read:?}");
}

#[tokio::test]
async fn flushed_files_show_as_background_work() {
    let dir = Dir::new("background");
    let store = open(&dir.0, 2).unwrap();
    let idle = store.background_work().unwrap();
    assert_eq!(idle.level0_files, 0, "{idle:?}");
    assert_eq!(idle.write_stall, 0, "{idle:?}");
    let committer = Committer::start(store.clone(), false, 64);
    // Two flushes: level 0 compacts at four files, so both stay there.
    for round in 0..2 {
        let mut batch = ShardBatch::new(1);
        for i in 0..100 {
            let record = instance(&format!("bg-{round}-{i}"), "bg", InstanceStatus::Running, 1);
            batch.put_head(&InstanceHead::of(&record, 0), None, None);
        }
        committer.append(batch).await.unwrap();
        store.flush().unwrap();
    }
    let flushed = store.background_work().unwrap();
    assert_eq!(flushed.level0_files, 2, "{flushed:?}");
    assert_eq!(flushed.write_stall, 0, "{flushed:?}");
}

#[tokio::test]
async fn flushes_and_compactions_bypass_the_page_cache_and_their_tables_read_back() {
    let dir = Dir::new("direct-io");
    let store = open(&dir.0, 2).unwrap();
    assert!(
        store.direct_io(),
        "the temp dir's file system allows direct I/O"
    );
    // RocksDB records the options it was opened with in OPTIONS-* files.
    let options = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("OPTIONS-")
        })
        .max()
        .map(|path| std::fs::read_to_string(path).unwrap())
        .unwrap();
    assert!(options.contains("use_direct_io_for_flush_and_compaction=true"));
    assert!(!dir.0.join("DIRECT_IO_PROBE").exists());

    let committer = Committer::start(store.clone(), false, 64);
    for n in 0..150u64 {
        let id = format!("d-{n:03}");
        let shard = troupe_protocol::shard_of(&id, 2);
        let record = instance(&id, "direct", InstanceStatus::Completed, n);
        put(&committer, shard, &record, None).await;
    }
    // Written by a flush (direct I/O), read back after a reopen.
    store.flush().unwrap();
    drop(committer);
    drop(store);
    let store = open(&dir.0, 2).unwrap();
    let page = store
        .list(&ListQuery {
            definition: Some("direct".into()),
            limit: 200,
            ..ListQuery::default()
        })
        .unwrap();
    assert_eq!(page.items.len(), 150);
    assert_eq!(page.items[149].id, "d-149");
}

/// Retention: instances that ended before the horizon are found oldest
/// first and deleted whole (head, snapshot, journal, step runs, index
/// entries, status count), whether their entry says what to delete or
/// they are read to find it; instances that ended later, are still waiting,
/// or only share a prefix of the id keep every key.
#[tokio::test]
async fn ended_instances_past_the_horizon_are_purged_whole_and_nothing_else() {
    let dir = Dir::new("retention");
    let store = open(&dir.0, 1).unwrap();
    let committer = Committer::start(store.clone(), false, 64);
    let event = Event {
        at: 1,
        kind: EventKind::CancelRequested { reason: "r".into() },
    };
    // Each instance runs, then (but for `xxx`) ends with a snapshot and two
    // journal records; `x`'s entry lists them, the others archived a run
    // (so their entries cannot say all there is).
    let run = |id: &str, ended: Option<(InstanceStatus, u64)>| {
        let mut batch = ShardBatch::new(0);
        let running = instance(id, "d", InstanceStatus::Running, 1);
        batch.put_head(&InstanceHead::of(&running, 0), None, Some(&[2]));
        batch.count_status(InstanceStatus::Running, 1);
        batch.append_events(id, 1, &[&event, &event]);
        if let Some((status, at)) = ended {
            let done = instance(id, "d", status, at);
            batch.append_events(id, 3, &[&event]);
            batch.put_snapshot(&done.state);
            let tracked = id == "x";
            if !tracked {
                batch.archive_run(id, "each/0/a", &step_run());
            }
            let previous = Indexed::of(&InstanceHead::of(&running, 0));
            let journal: &[u64] = &[2, 3];
            batch.put_head(
                &InstanceHead::of(&done, 3),
                Some(previous),
                tracked.then_some(journal),
            );
            batch.count_status(InstanceStatus::Running, -1);
            batch.count_status(status, 1);
        }
        batch
    };
    for (id, ended) in [
        ("x", Some((InstanceStatus::Completed, 100))),
        ("xx", Some((InstanceStatus::Failed, 300))),
        ("xxx", None),
        ("y", Some((InstanceStatus::Cancelled, 150))),
    ] {
        committer.append(run(id, ended)).await.unwrap();
    }
    let everything = |store: &Store| {
        let mut keys = Vec::new();
        store
            .export_shard(0, 1 << 20, |entries| {
                keys.extend(entries.into_iter().map(|e| e.key));
                Ok(())
            })
            .unwrap();
        keys
    };
    let before = everything(&store);

    let ids = |ended: Vec<Ended>| -> Vec<(u64, String)> {
        ended.into_iter().map(|e| (e.at, e.id)).collect()
    };
    let due = store.ended_before(0, 0, 200, 10).unwrap();
    assert_eq!(
        due[0].record,
        Some(EndedRecord {
            status: InstanceStatus::Completed,
            definition: "d".into(),
            snapshot: true,
            journal: vec![2, 3],
        })
    );
    assert_eq!(due[1].record, None, "y archived a run");
    assert_eq!(
        ids(due.clone()),
        [(100, "x".to_owned()), (150, "y".to_owned())]
    );
    assert_eq!(store.ended_before(0, 0, 200, 1).unwrap().len(), 1, "limit");
    assert_eq!(
        ids(store.ended_before(0, 101, 200, 10).unwrap()),
        [(150, "y".to_owned())],
        "from"
    );
    let mut batch = ShardBatch::new(0);
    let mut purged = Vec::new();
    for entry in &due {
        purged.push(store.purge_ended(&mut batch, entry).unwrap());
    }
    assert_eq!(
        purged,
        [
            Some(InstanceStatus::Completed),
            Some(InstanceStatus::Cancelled)
        ]
    );
    committer.append(batch).await.unwrap();

    for id in ["x", "y"] {
        assert!(store.instance_head(0, id).unwrap().is_none(), "{id}");
        assert!(store.history(0, id, None, 10).unwrap().is_empty(), "{id}");
        assert!(store.archived_steps(0, id, None, 10).unwrap().is_empty());
    }
    let after = everything(&store);
    // Keys naming `id` (no other byte of these keys spells a letter).
    let of = |keys: &[Vec<u8>], id: &str| {
        keys.iter()
            .filter(|key| key.windows(id.len()).any(|w| w == id.as_bytes()))
            .count()
    };
    assert_eq!(
        of(&after, "xx"),
        of(&before, "xx"),
        "xx and xxx keep every key"
    );
    assert_eq!(of(&after, "y"), 0, "nothing of y is left");
    assert_eq!(
        of(&after, "x") - of(&after, "xx"),
        0,
        "nothing of x is left"
    );
    // Head, snapshot, two journal records and four index entries each, and
    // y's step run (the status counters stay, counted down).
    assert_eq!(before.len() - after.len(), 2 * 8 + 1);
    assert_eq!(
        store.status_counts(0).unwrap(),
        [
            (InstanceStatus::Running, 1),
            (InstanceStatus::Completed, 0),
            (InstanceStatus::Failed, 1),
            (InstanceStatus::Cancelled, 0)
        ]
    );
    assert!(store.ended_before(0, 0, 200, 10).unwrap().is_empty());
    assert_eq!(
        ids(store.ended_before(0, 0, 301, 10).unwrap()),
        [(300, "xx".into())]
    );

    // A stale entry without a record (its instance gone) only loses itself.
    let mut batch = ShardBatch::new(0);
    let stale = Ended {
        at: 150,
        id: "y".into(),
        record: None,
    };
    assert_eq!(store.purge_ended(&mut batch, &stale).unwrap(), None);
    assert_eq!(batch.len(), 1);
}
