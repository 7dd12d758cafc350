//! Storage errors, saying whether a retry can help.

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB reported an error.
    #[error("rocksdb: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// A stored value could not be decoded.
    #[error("corrupt value in {cf}: {source}")]
    Corrupt {
        /// Column family.
        cf: &'static str,
        /// Decoding error.
        source: crate::codec::Error,
    },
    /// A record another one names is not there.
    #[error("missing in {cf}: {what}")]
    Missing {
        /// Column family.
        cf: &'static str,
        /// What was looked for.
        what: &'static str,
    },
    /// The data dir was created with another shard count.
    #[error("data dir has {found} shards, config says {configured}; the shard count cannot change")]
    Shards {
        /// In the data dir.
        found: u32,
        /// In the config.
        configured: u32,
    },
    /// The data dir holds another storage format.
    #[error(
        "data dir holds storage format {found}, this node reads format {expected} only; \
         start it on an empty data dir (see docs/storage.md, \"Format versions\")"
    )]
    Format {
        /// In the data dir.
        found: u32,
        /// What this build reads.
        expected: u32,
    },
    /// A group commit failed; nothing in it was written.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The group committer is gone (node shutting down).
    #[error("storage is shutting down")]
    Closed,
    /// A shard's export could not be imported.
    #[error("bad shard import: {0}")]
    Import(String),
}

impl Error {
    /// Whether trying again later can succeed (the failure is not in the
    /// data or the configuration).
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Rocks(e) => matches!(
                e.kind(),
                rocksdb::ErrorKind::Busy
                    | rocksdb::ErrorKind::TimedOut
                    | rocksdb::ErrorKind::TryAgain
                    | rocksdb::ErrorKind::Incomplete
                    | rocksdb::ErrorKind::ShutdownInProgress
            ),
            Error::Closed => true,
            Error::Commit(_) => true,
            Error::Corrupt { .. } | Error::Missing { .. } | Error::Shards { .. } => false,
            Error::Format { .. } => false,
            Error::Import(_) => false,
        }
    }
}

/// Storage result.
pub type Result<T, E = Error> = std::result::Result<T, E>;
