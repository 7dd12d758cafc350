//! The Troupe node: configuration, the HTTP and native listeners, metrics,
//! and the wiring of storage (`troupe-storage`) and actors
//! (`troupe-actors`) into a running server.
//!
//! [`Node::start`] brings a node up from a [`Config`] (tests call it
//! in-process; `troupe-node` calls it from `main`). The engine is pure
//! (`troupe-engine`); the actors journal its events and carry out its
//! effects; this crate only wires and serves them.

pub mod api;
pub mod cluster;
pub mod config;
mod duration_serde;
pub mod gather;
pub mod http;
pub mod metrics;
pub mod native;
pub mod workers;

pub use config::{Config, Overrides};
pub use troupe_actors::{Runtime, TaskError, TaskHandlers, TaskRequest};

use anyhow::Context;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::oneshot;
use troupe_actors::Settings;
use troupe_cluster::LinkFilter;
use troupe_storage::{Committer, Store, StoreOptions};

/// A running node.
pub struct Node {
    runtime: Runtime,
    http_addr: SocketAddr,
    native_addr: SocketAddr,
    peers: Option<Arc<cluster::Peers>>,
    shutdown: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
    native: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Starts a node with only the builtin task types.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        Self::start_with(config, TaskHandlers::default()).await
    }

    /// Starts a node that also runs `handlers` in-process.
    pub async fn start_with(config: Config, handlers: TaskHandlers) -> anyhow::Result<Self> {
        Self::start_linked(config, handlers, LinkFilter::default()).await
    }

    /// Starts a node whose cluster links pass through `links` (partition tests).
    pub async fn start_linked(
        config: Config,
        handlers: TaskHandlers,
        links: LinkFilter,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        let metrics = metrics::install();
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating {}", config.data_dir.display()))?;
        let options = StoreOptions {
            shards: config.shards,
            write_buffer_bytes: config.storage.write_buffer_mb << 20,
            block_cache_bytes: config.storage.block_cache_mb << 20,
            background_write_bytes_per_sec: config.background_write_mb() << 20,
            direct_io: config.storage.direct_io,
        };
        let store = Store::open(&config.data_dir, options)?;
        tracing::info!(
            direct_io = store.direct_io(),
            online_discard = store.online_discard(),
            "storage opened"
        );
        troupe_storage::metrics::record_disk(store.online_discard());
        let settings = Settings {
            shards: config.shards,
            passivate_after: config.engine.passivate_after,
            timer_window: config.engine.timer_window,
            restart_budget: config.engine.restart_budget,
            restart_window: config.engine.restart_window,
            max_pending_per_shard: config.limits.max_pending_per_shard,
            max_starts_in_flight: config.limits.max_starts_in_flight,
            memory_budget_bytes: config.limits.memory_budget_mb << 20,
            max_queued_tasks: config.limits.max_queued_tasks,
            history_retention: config.storage.history_retention_events,
            retention: config.storage.retention,
        };
        let (runtime, peers) = match &config.cluster {
            None => {
                let sync = config.storage.sync;
                let committer = Committer::start(store.clone(), sync, config.storage.max_batch);
                let runtime =
                    Runtime::start(store, Arc::new(committer), settings, handlers).await?;
                (runtime, None)
            }
            Some(section) => {
                let (raft, control, leadership) =
                    cluster::start(&config, section, store.clone(), links).await?;
                let log = Arc::new(cluster::ReplicatedLog(raft.clone()));
                let runtime = Runtime::new(store, log, settings, handlers);
                let peers = cluster::Peers::new(raft, control, section.clone(), config.node_id);
                let remote = Arc::new(cluster::PeerRemote(peers.clone()));
                runtime.router().set_remote(remote);
                tokio::spawn(cluster::follow_leadership(
                    runtime.clone(),
                    config.node_id,
                    leadership,
                ));
                tokio::spawn(cluster::follow_meta(runtime.clone(), peers.clone()));
                (runtime, Some(peers))
            }
        };
        let mut sources = Vec::new();
        for file in &config.deploy {
            let source = std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?;
            sources.push((file.display().to_string(), source));
        }
        match &peers {
            None => {
                for (file, source) in sources {
                    api::deploy(&runtime, &source).await.map_err(|e| {
                        anyhow::anyhow!("deploying {file}: {} {}", e.message, e.details)
                    })?;
                }
            }
            // Deployed through the metadata group once it has a leader.
            Some(peers) => {
                tokio::spawn(cluster::deploy_when_ready(
                    runtime.clone(),
                    peers.clone(),
                    sources,
                ));
            }
        }
        let ready = Arc::new(AtomicBool::new(false));
        let state = http::AppState {
            runtime: runtime.clone(),
            metrics,
            ready: ready.clone(),
            node_id: config.node_id,
            peers: peers.clone(),
        };
        let listener = tokio::net::TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding {}", config.http_addr))?;
        let http_addr = listener.local_addr()?;
        let native_listener = tokio::net::TcpListener::bind(config.native_addr)
            .await
            .with_context(|| format!("binding {}", config.native_addr))?;
        let native_addr = native_listener.local_addr()?;
        let native_state = native::NativeState {
            runtime: runtime.clone(),
            node_id: config.node_id,
            max_frame: config.limits.max_frame_bytes,
            max_inflight: config.limits.max_inflight_per_connection,
            peers: peers.clone(),
        };
        let (shutdown, stop) = oneshot::channel::<()>();
        let (native_shutdown, native_stop) = tokio::sync::watch::channel(false);
        let app = http::router(state, config.limits.max_body_bytes);
        let native = tokio::spawn(async move {
            let mut native_stop = native_stop;
            native::serve(native_listener, native_state, async move {
                let _ = native_stop.changed().await;
            })
            .await;
        });
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stop.await;
                let _ = native_shutdown.send(true);
            });
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "http listener failed");
            }
        });
        ready.store(true, Ordering::Release);
        if let (Some(through), Some(section)) = (&config.join, &config.cluster)
            && let Some(me) = section.described(config.node_id)
        {
            let record = troupe_storage::MemberRecord {
                id: config.node_id,
                state: troupe_storage::MemberState::Joining,
                raft_addr: me.raft_addr.to_string(),
                http_addr: http_addr.to_string(),
                native_addr: native_addr.to_string(),
                control_addr: me.control_addr.map(|a| a.to_string()),
            };
            tokio::spawn(cluster::join(
                through.clone(),
                record,
                section.cookie.clone(),
            ));
        }
        tracing::info!(node_id = config.node_id, %http_addr, %native_addr, shards = config.shards, "node started");
        Ok(Self {
            runtime,
            http_addr,
            native_addr,
            peers,
            shutdown: Some(shutdown),
            server,
            native,
        })
    }

    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where the native protocol listens.
    pub fn native_addr(&self) -> SocketAddr {
        self.native_addr
    }

    /// The engine, for embedding programs.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Hands this node's shard leaderships to other replicas (a cluster
    /// node), stops listening and stops the actors.
    pub async fn shutdown(mut self) {
        if let Some(peers) = &self.peers {
            peers.hand_off().await;
        }
        if let Some(stop) = self.shutdown.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.server).await;
        let _ = (&mut self.native).await;
        self.runtime.stop().await;
        if let Some(peers) = &self.peers {
            peers.shutdown().await;
        }
    }

    /// The cluster's peers (a cluster node only).
    pub fn peers(&self) -> Option<&Arc<cluster::Peers>> {
        self.peers.as_ref()
    }
}
