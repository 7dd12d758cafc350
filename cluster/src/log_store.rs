//! A group's Raft log in the node's RocksDB (through the storage crate):
//! appends are written at once and made durable by the node-wide
//! [`WalSyncer`], which syncs once for every group's appends that arrived
//! meanwhile. Votes are synced before they are answered.

use crate::types::{Entry, GroupId, LogId, TypeConfig, Vote};
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use troupe_protocol::codec;
use troupe_storage::{Store, WalSyncer};

/// One group's log.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    group: GroupId,
    syncer: WalSyncer,
}

impl LogStore {
    /// The log of `group`.
    pub fn new(store: Store, group: GroupId, syncer: WalSyncer) -> Self {
        Self {
            store,
            group,
            syncer,
        }
    }

    fn state<T: serde::de::DeserializeOwned>(&self, name: &str) -> io::Result<Option<T>> {
        match self
            .store
            .raft_state(self.group, name)
            .map_err(io::Error::other)?
        {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(invalid),
            None => Ok(None),
        }
    }
}

pub(crate) fn invalid(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.to_string())
}

fn decode_entry(bytes: &[u8]) -> io::Result<Entry> {
    codec::decode(bytes).map_err(invalid)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(&x) => x,
            Bound::Excluded(&x) => x + 1,
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(&x) => x.saturating_add(1),
            Bound::Excluded(&x) => x,
            Bound::Unbounded => u64::MAX,
        };
        self.store
            .log_entries(self.group, from, to)
            .map_err(io::Error::other)?
            .iter()
            .map(|(_, bytes)| decode_entry(bytes))
            .collect()
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.state("vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let purged: Option<LogId> = self.state("purged")?;
        let last = match self.store.log_last(self.group).map_err(io::Error::other)? {
            Some((_, bytes)) => Some(decode_entry(&bytes)?.log_id),
            None => purged,
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.store
            .put_raft_state(self.group, "vote", &codec::encode(vote), true)
            .map_err(io::Error::other)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index(), codec::encode(&entry)))
            .collect();
        self.store
            .log_append(self.group, entries)
            .map_err(io::Error::other)?;
        self.syncer.flush(Box::new(move |result| {
            callback.io_completed(result.map_err(io::Error::other));
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        let from = last.map_or(0, |id| id.index() + 1);
        self.store
            .log_truncate_from(self.group, from)
            .map_err(io::Error::other)
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        self.store
            .log_purge(self.group, upto.index(), codec::encode(&upto))
            .map_err(io::Error::other)
    }
}
