//! Node configuration: a TOML file, then `TROUPE_*` environment variables,
//! then command-line flags, each overriding the one before; checked by
//! [`Config::validate`] before anything starts.

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// This node's id, unique in its cluster (a cluster config leaves it
    /// to `--node-id`).
    #[serde(default)]
    pub node_id: u64,
    /// Where RocksDB keeps its files (`{node-id}` is replaced by the node id).
    pub data_dir: PathBuf,
    /// HTTP/JSON API listener (in a cluster: the member's, by default).
    #[serde(default = "defaults::http_addr")]
    pub http_addr: SocketAddr,
    /// Native protocol listener (in a cluster: the member's, by default).
    #[serde(default = "defaults::native_addr")]
    pub native_addr: SocketAddr,
    /// Number of shards instances are spread over; fixed for the data dir's life.
    #[serde(default = "defaults::shards")]
    pub shards: u32,
    /// Storage settings.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Limits that protect the node.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Engine runtime settings.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Definition files deployed at start (YAML or JSON).
    #[serde(default)]
    pub deploy: Vec<PathBuf>,
    /// Replicated cluster (absent: one node owning every shard, no replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
    /// Joins a running cluster through this member's HTTP address
    /// (`--join`): the node is one of `cluster.spares` (or a member
    /// replacing itself) and forms no group of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

/// A replicated cluster: its members and how shards are replicated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ClusterSection {
    /// The members that form the cluster; a node finds its own addresses
    /// here (or in `spares`) by `node-id`.
    pub members: Vec<Member>,
    /// Nodes described but not members at start: each joins a running
    /// cluster with `--join ADDR`.
    #[serde(default)]
    pub spares: Vec<Member>,
    /// Most shards whose replicas move at once (joins, drains, rebalancing).
    #[serde(default = "defaults::max_moving_shards")]
    pub max_moving_shards: usize,
    /// Replicas per shard (at most the member count).
    #[serde(default = "defaults::replication_factor")]
    pub replication_factor: usize,
    /// Election timeout, lower bound (a random timeout in the range is drawn).
    #[serde(
        default = "defaults::election_timeout_min",
        with = "crate::duration_serde"
    )]
    pub election_timeout_min: Duration,
    /// Election timeout, upper bound.
    #[serde(
        default = "defaults::election_timeout_max",
        with = "crate::duration_serde"
    )]
    pub election_timeout_max: Duration,
    /// Leader heartbeat interval (skipped while appends flow).
    #[serde(
        default = "defaults::heartbeat_interval",
        with = "crate::duration_serde"
    )]
    pub heartbeat_interval: Duration,
    /// Log entries after which a shard's group snapshots and purges its log.
    #[serde(default = "defaults::snapshot_after")]
    pub snapshot_after_entries: u64,
    /// The shared secret of the control plane (members authenticate each
    /// other with it); required when members have a `control-addr`.
    #[serde(default)]
    pub cookie: Option<String>,
}

/// One cluster member.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Member {
    /// Node id.
    pub id: u64,
    /// Its HTTP/JSON API.
    pub http_addr: SocketAddr,
    /// Its native protocol listener.
    pub native_addr: SocketAddr,
    /// Its Raft transport listener.
    pub raft_addr: SocketAddr,
    /// Its control plane listener (`ractor_cluster`: discovery,
    /// authentication, failure detection); absent: no control plane.
    #[serde(default)]
    pub control_addr: Option<SocketAddr>,
}

impl ClusterSection {
    /// The first member with `id`.
    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The node with `id`: a first member or a spare.
    pub fn described(&self, id: u64) -> Option<&Member> {
        self.member(id)
            .or_else(|| self.spares.iter().find(|m| m.id == id))
    }
}

/// Storage settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct StorageConfig {
    /// fsync each group commit before acknowledging (turn off only for tests of speed).
    pub sync: bool,
    /// Most instance transitions written in one group commit.
    pub max_batch: usize,
    /// Memory for RocksDB memtables across all column families, MiB.
    pub write_buffer_mb: usize,
    /// RocksDB block cache shared by every column family, MiB.
    pub block_cache_mb: usize,
    /// Most MiB a second that RocksDB flushes and compactions write (0: no
    /// limit), so that they do not starve the fsync of group commits and
    /// their CPU comes spread out rather than in bursts. Unset: 16 on a
    /// single node, 64 on a cluster node (which takes replicas' snapshots
    /// in bursts, and must flush them as fast as they come).
    pub background_write_mb: Option<usize>,
    /// Flushes and compactions bypass the page cache (direct I/O) where the
    /// data dir's file system allows it; elsewhere the node logs a warning
    /// and uses the page cache.
    pub direct_io: bool,
    /// History retention: journal events kept before an instance's latest
    /// snapshot; older ones are dropped when a snapshot is written (the
    /// snapshot includes them, so the outcome does not change). Unset: every
    /// instance keeps its whole history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_retention_events: Option<u64>,
    /// How long an ended instance (completed, failed, compensated or
    /// cancelled) stays readable; then it is deleted whole and its id may
    /// start a new instance. `"never"` keeps every instance.
    #[serde(with = "crate::duration_serde::or_never")]
    pub retention: Option<Duration>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync: true,
            max_batch: 4096,
            write_buffer_mb: 64,
            block_cache_mb: 64,
            background_write_mb: None,
            direct_io: true,
            history_retention_events: None,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
        }
    }
}

/// Limits that protect the node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest HTTP request body.
    pub max_body_bytes: usize,
    /// Largest native-protocol frame.
    pub max_frame_bytes: usize,
    /// Memory for live instances and tasks waiting for workers, MiB. Above
    /// three quarters of it idle instances are passivated, least recently
    /// used first; when it is spent, new starts are refused as overloaded.
    /// Idle and ended instances are not in memory and cost nothing here.
    pub memory_budget_mb: usize,
    /// Client commands pending per shard before new ones are refused.
    pub max_pending_per_shard: usize,
    /// Starts let into the shards at once; the others wait their turn (at
    /// most two seconds, then are refused as overloaded). Bounds the
    /// instances a burst or a stall brings into memory at once.
    pub max_starts_in_flight: usize,
    /// Worker tasks waiting for a worker before new starts are refused.
    pub max_queued_tasks: usize,
    /// Requests in flight on one native connection before the node stops
    /// reading from it (the client then feels TCP backpressure).
    pub max_inflight_per_connection: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1 << 20,
            max_frame_bytes: troupe_protocol::frame::DEFAULT_MAX_FRAME,
            memory_budget_mb: 128,
            max_pending_per_shard: 2_000,
            max_starts_in_flight: 128,
            max_queued_tasks: 200_000,
            max_inflight_per_connection: 1_024,
        }
    }
}

/// Engine runtime settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct EngineConfig {
    /// An instance with nothing in flight is dropped from memory after this long.
    #[serde(with = "crate::duration_serde")]
    pub passivate_after: Duration,
    /// Restarts of a crashing instance actor allowed within `restart-window`.
    pub restart_budget: u32,
    /// Window of the restart budget.
    #[serde(with = "crate::duration_serde")]
    pub restart_window: Duration,
    /// Timers due within this window are held in memory; later ones stay
    /// on disk until the window reaches them (a shard's activation reads
    /// only this window, whatever the number of waiting instances).
    #[serde(with = "crate::duration_serde")]
    pub timer_window: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            passivate_after: Duration::from_secs(2),
            restart_budget: 5,
            restart_window: Duration::from_secs(60),
            timer_window: Duration::from_secs(60),
        }
    }
}

mod defaults {
    use std::net::SocketAddr;
    use std::time::Duration;

    pub fn shards() -> u32 {
        16
    }
    pub fn replication_factor() -> usize {
        3
    }
    pub fn election_timeout_min() -> Duration {
        Duration::from_millis(300)
    }
    pub fn election_timeout_max() -> Duration {
        Duration::from_millis(600)
    }
    pub fn heartbeat_interval() -> Duration {
        Duration::from_millis(100)
    }
    pub fn snapshot_after() -> u64 {
        10_000
    }
    pub fn max_moving_shards() -> usize {
        2
    }
    pub fn http_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 8080))
    }
    pub fn native_addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 7070))
    }
}

/// Command-line overrides (`None` leaves the file's value).
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct Overrides {
    /// `--node-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<u64>,
    /// `--data-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `--http-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    /// `--native-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_addr: Option<SocketAddr>,
    /// `--join`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
}

/// A configuration problem, with the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file, environment or flags could not be read into a config.
    #[error("config: {0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range.
    #[error("config: {key}: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `file`, then `TROUPE_*` variables (`TROUPE_HTTP_ADDR`, `TROUPE_STORAGE__SYNC`), then `overrides`.
    pub fn load(file: &Path, overrides: &Overrides) -> Result<Self, Error> {
        let base = file.parent().unwrap_or(Path::new("."));
        let mut config: Config = Figment::new()
            .merge(Toml::file_exact(file))
            .merge(
                Env::prefixed("TROUPE_")
                    .split("__")
                    .map(|k| k.as_str().replace('_', "-").into()),
            )
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        // Relative paths in the file are relative to the file.
        let rebase = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        config.deploy = config.deploy.iter().map(|p| rebase(p)).collect();
        if overrides.data_dir.is_none() {
            config.data_dir = rebase(&config.data_dir);
        }
        let node_id = config.node_id.to_string();
        let data_dir = config
            .data_dir
            .to_string_lossy()
            .replace("{node-id}", &node_id);
        config.data_dir = PathBuf::from(data_dir);
        if let Some(member) = config
            .cluster
            .as_ref()
            .and_then(|c| c.described(config.node_id))
        {
            if overrides.http_addr.is_none() {
                config.http_addr = member.http_addr;
            }
            if overrides.native_addr.is_none() {
                config.native_addr = member.native_addr;
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML string (no environment, no overrides).
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let config: Config = Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// The cap on flush and compaction writes, MiB/s (see
    /// [`StorageConfig::background_write_mb`]).
    pub fn background_write_mb(&self) -> usize {
        let default = if self.cluster.is_some() { 64 } else { 16 };
        self.storage.background_write_mb.unwrap_or(default)
    }

    /// Checks values that parse but make no sense.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |key, message: &str| {
            Err(Error::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.node_id == 0 {
            return invalid("node-id", "must be >= 1");
        }
        if !(1..=4096).contains(&self.shards) {
            return invalid("shards", "must be between 1 and 4096");
        }
        if self.http_addr == self.native_addr && self.http_addr.port() != 0 {
            return invalid("native-addr", "must differ from http-addr");
        }
        if self.storage.max_batch == 0 {
            return invalid("storage.max-batch", "must be >= 1");
        }
        if self.engine.timer_window < Duration::from_secs(1) {
            return invalid("engine.timer-window", "must be >= 1s");
        }
        if self
            .storage
            .retention
            .is_some_and(|r| r < Duration::from_secs(1))
        {
            return invalid("storage.retention", "must be >= 1s (or \"never\")");
        }
        if self.storage.write_buffer_mb < 4 {
            return invalid("storage.write-buffer-mb", "must be >= 4");
        }
        if self.storage.block_cache_mb < 1 {
            return invalid("storage.block-cache-mb", "must be >= 1");
        }
        if self.limits.max_body_bytes < 1024 {
            return invalid("limits.max-body-bytes", "must be >= 1024");
        }
        if self.limits.max_frame_bytes < 1024 {
            return invalid("limits.max-frame-bytes", "must be >= 1024");
        }
        for (name, value) in [
            ("limits.memory-budget-mb", self.limits.memory_budget_mb),
            (
                "limits.max-pending-per-shard",
                self.limits.max_pending_per_shard,
            ),
            ("limits.max-queued-tasks", self.limits.max_queued_tasks),
            (
                "limits.max-starts-in-flight",
                self.limits.max_starts_in_flight,
            ),
            (
                "limits.max-inflight-per-connection",
                self.limits.max_inflight_per_connection,
            ),
        ] {
            if value == 0 {
                return invalid(name, "must be >= 1");
            }
        }
        if self.engine.restart_budget == 0 {
            return invalid("engine.restart-budget", "must be >= 1");
        }
        if let Some(cluster) = &self.cluster {
            if cluster.described(self.node_id).is_none() {
                return invalid(
                    "node-id",
                    &format!(
                        "node {} is not among cluster.members or cluster.spares; start it with \
                         --node-id N",
                        self.node_id
                    ),
                );
            }
            let mut ids: Vec<u64> = cluster
                .members
                .iter()
                .chain(&cluster.spares)
                .map(|m| m.id)
                .collect();
            let described = ids.len();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != described || ids.contains(&0) {
                return invalid(
                    "cluster.members",
                    "ids of members and spares must be unique and >= 1",
                );
            }
            if cluster.max_moving_shards == 0 {
                return invalid("cluster.max-moving-shards", "must be >= 1");
            }
            if !(1..=cluster.members.len()).contains(&cluster.replication_factor) {
                return invalid(
                    "cluster.replication-factor",
                    "must be between 1 and the member count",
                );
            }
            // A heartbeat skipped while appends flow may come up to two
            // intervals and a tick (a quarter interval) late.
            if cluster.election_timeout_min >= cluster.election_timeout_max
                || cluster.heartbeat_interval * 9 / 4 >= cluster.election_timeout_min
            {
                return invalid(
                    "cluster.election-timeout-min",
                    "must be below election-timeout-max and above 2.25 heartbeat intervals",
                );
            }
            let with_control = cluster
                .members
                .iter()
                .chain(&cluster.spares)
                .filter(|m| m.control_addr.is_some())
                .count();
            if with_control != 0 && with_control != cluster.members.len() + cluster.spares.len() {
                return invalid(
                    "cluster.members",
                    "either every member has a control-addr or none has",
                );
            }
            if with_control != 0 && cluster.cookie.as_deref().is_none_or(str::is_empty) {
                return invalid(
                    "cluster.cookie",
                    "members have a control-addr: set the cluster's shared cookie",
                );
            }
            if cluster.snapshot_after_entries == 0 {
                return invalid("cluster.snapshot-after-entries", "must be >= 1");
            }
        }
        Ok(())
    }
}
