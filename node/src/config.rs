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
    /// This node's id, unique in its cluster.
    pub node_id: u64,
    /// Where RocksDB keeps its files.
    pub data_dir: PathBuf,
    /// HTTP/JSON API listener.
    pub http_addr: SocketAddr,
    /// Native protocol listener.
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
    /// History retention: journal events kept before an instance's latest
    /// snapshot; older ones are dropped when a snapshot is written (the
    /// snapshot includes them, so the outcome does not change). Unset: every
    /// instance keeps its whole history.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history_retention_events: Option<u64>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            sync: true,
            max_batch: 4096,
            write_buffer_mb: 64,
            block_cache_mb: 64,
            history_retention_events: None,
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
            memory_budget_mb: 256,
            max_pending_per_shard: 2_000,
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
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            passivate_after: Duration::from_secs(2),
            restart_budget: 5,
            restart_window: Duration::from_secs(60),
        }
    }
}

mod defaults {
    pub fn shards() -> u32 {
        16
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
        Ok(())
    }
}
