//! [`Router`]: sends commands to the actor of the shard that owns an
//! instance. In a cluster, a command for a shard led by another node goes
//! there through the [`Remote`] hook (one hop); otherwise a shard that is
//! not active here answers `unavailable`.
//!
//! Starts are admitted into the shards a bounded number at a time (the
//! start gate): the others wait in their callers' tasks, which cost a few
//! hundred bytes each, rather than as instance actors, which cost tens of
//! kilobytes and CPU in every shard's bookkeeping. Without the gate, a
//! short stall (a compaction, a slow disk) let thousands of instances in
//! at once, and the node then spent more per workflow than before the
//! stall and never caught up.

use crate::shard::ShardMsg;
use crate::{Applied, Command, Error};
use ractor::ActorRef;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use troupe_protocol::{ErrorCode, shard_of};

/// The shard actors active on this node, by shard (`None`: not active).
type Slots = Vec<Option<ActorRef<ShardMsg>>>;

/// Longest a command waits for a shard without a leader to get one.
const LEADER_WAIT: Duration = Duration::from_secs(2);

/// Longest a start waits at the start gate before it is refused as
/// overloaded: the node is then truly saturated.
const START_ADMISSION_WAIT: Duration = Duration::from_secs(2);

/// A command's answer from another node.
pub type RemoteReply = Pin<Box<dyn Future<Output = Result<Applied, Error>> + Send + 'static>>;

/// Carries commands to the node leading a shard (set by a cluster node).
pub trait Remote: Send + Sync + 'static {
    /// Whether another node leads `shard` (so its commands go there).
    fn leads_elsewhere(&self, shard: u32) -> bool;
    /// Delivers `command` for instance `id` of `shard` on its leader.
    fn deliver(&self, shard: u32, id: String, command: Command) -> RemoteReply;
}

/// Sends commands to the shard actor owning an instance.
#[derive(Clone)]
pub struct Router {
    slots: Arc<RwLock<Slots>>,
    remote: Arc<OnceLock<Arc<dyn Remote>>>,
    /// Client commands sent to each shard and not yet answered.
    pending: Arc<Vec<AtomicUsize>>,
    max_pending: usize,
    /// Permits for starts inside the shards (the start gate).
    starts: Arc<Semaphore>,
}

/// Counts a client command as pending on its shard until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a start as waiting at the start gate until dropped.
struct WaitingStart;

impl WaitingStart {
    fn new() -> Self {
        metrics::gauge!(crate::metrics::STARTS_WAITING).increment(1.0);
        Self
    }
}

impl Drop for WaitingStart {
    fn drop(&mut self) {
        metrics::gauge!(crate::metrics::STARTS_WAITING).decrement(1.0);
    }
}

impl Router {
    /// A router for `shards` shards, none active yet, that lets at most
    /// `max_starts` starts into the shards at once.
    pub(crate) fn new(shards: u32, max_pending: usize, max_starts: usize) -> Self {
        Self {
            slots: Arc::new(RwLock::new(vec![None; shards as usize])),
            remote: Arc::default(),
            pending: Arc::new((0..shards).map(|_| AtomicUsize::new(0)).collect()),
            max_pending,
            starts: Arc::new(Semaphore::new(max_starts.min(Semaphore::MAX_PERMITS))),
        }
    }

    /// Sends commands for shards led elsewhere through `remote`.
    pub fn set_remote(&self, remote: Arc<dyn Remote>) {
        let _ = self.remote.set(remote);
    }

    /// The remote hook, when `shard` is not active here but led elsewhere.
    fn remote_for(&self, shard: u32) -> Option<&Arc<dyn Remote>> {
        self.remote
            .get()
            .filter(|remote| !self.is_active(shard) && remote.leads_elsewhere(shard))
    }

    /// In a cluster, waits a little while `shard` has no leader (an election
    /// under way), so that a failover costs callers a short wait rather
    /// than an error.
    async fn await_leader(&self, shard: u32) {
        let Some(remote) = self.remote.get() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        while !self.is_active(shard)
            && !remote.leads_elsewhere(shard)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The shard count.
    pub fn shards(&self) -> u32 {
        self.pending.len() as u32
    }

    /// The shard of instance `id`.
    pub fn shard_of(&self, id: &str) -> u32 {
        shard_of(id, self.shards())
    }

    /// The actor of an active shard.
    pub(crate) fn actor(&self, shard: u32) -> Option<ActorRef<ShardMsg>> {
        self.slots.read().expect("router lock")[shard as usize].clone()
    }

    /// Makes `actor` the owner of `shard` (or, with `None`, deactivates it).
    pub(crate) fn set(&self, shard: u32, actor: Option<ActorRef<ShardMsg>>) {
        self.slots.write().expect("router lock")[shard as usize] = actor;
    }

    /// Every active shard actor.
    pub(crate) fn active(&self) -> Vec<ActorRef<ShardMsg>> {
        self.slots
            .read()
            .expect("router lock")
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// Whether `shard` is active on this node.
    pub fn is_active(&self, shard: u32) -> bool {
        self.actor(shard).is_some()
    }

    /// Sends a command without waiting. A command for a shard that is not
    /// active here is dropped: whoever activates the shard redoes what it
    /// stands for (timers, outbox).
    pub fn cast(&self, id: &str, command: Command) {
        let index = self.shard_of(id);
        if let Some(remote) = self.remote_for(index) {
            let reply = remote.deliver(index, id.to_owned(), command);
            tokio::spawn(async move {
                if let Err(e) = reply.await {
                    tracing::debug!(error = %e, "remote delivery failed");
                }
            });
            return;
        }
        if let Some(shard) = self.actor(index) {
            let _ = shard.cast(ShardMsg::Deliver {
                id: id.to_owned(),
                command,
                reply: None,
            });
        }
    }

    /// Sends a command and waits until it is durable (or refused). When the
    /// shard already has its limit of commands pending, the command is
    /// refused as overloaded, except worker reports: they finish work, so
    /// they are always let through. A start waits for room at the start
    /// gate, and is refused as overloaded when none comes within
    /// [`START_ADMISSION_WAIT`]. A shard that is not active here answers
    /// `unavailable`.
    pub async fn call(&self, id: &str, command: Command) -> Result<Applied, Error> {
        let index = self.shard_of(id);
        self.await_leader(index).await;
        if let Some(remote) = self.remote_for(index) {
            return remote.deliver(index, id.to_owned(), command).await;
        }
        self.call_here(id, command).await
    }

    /// [`Router::call`] on this node only (a command another node
    /// forwarded): waits a little for a shard this node is about to lead.
    pub async fn call_here(&self, id: &str, command: Command) -> Result<Applied, Error> {
        let index = self.shard_of(id);
        self.await_leader(index).await;
        let pending = &self.pending[index as usize];
        let bounded = !matches!(command, Command::Report(_));
        if bounded && pending.load(Ordering::Relaxed) >= self.max_pending {
            metrics::counter!(crate::metrics::OVERLOADED_TOTAL, "limit" => "shard_pending")
                .increment(1);
            return Err(Error::new(
                ErrorCode::Overloaded,
                format!(
                    "shard {index} has {} commands pending; retry later",
                    self.max_pending
                ),
            ));
        }
        pending.fetch_add(1, Ordering::Relaxed);
        let _pending = Pending(pending);
        let _admitted = match command {
            Command::Start { .. } => Some(self.admit_start().await?),
            _ => None,
        };
        let (reply, wait) = oneshot::channel();
        let inactive = || {
            Error::new(
                ErrorCode::Unavailable,
                format!("shard {index} is not active on this node; retry"),
            )
        };
        let shard = self.actor(index).ok_or_else(inactive)?;
        shard
            .cast(ShardMsg::Deliver {
                id: id.to_owned(),
                command,
                reply: Some(reply),
            })
            .map_err(|_| inactive())?;
        match tokio::time::timeout(Duration::from_secs(30), wait).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::new(
                ErrorCode::Unavailable,
                "instance stopped before answering; retry",
            )),
            Err(_) => Err(Error::new(
                ErrorCode::Unavailable,
                "timed out waiting for the instance; retry",
            )),
        }
    }

    /// Waits for room at the start gate; the permit lets the start in
    /// until it is answered.
    async fn admit_start(&self) -> Result<OwnedSemaphorePermit, Error> {
        if let Ok(permit) = Arc::clone(&self.starts).try_acquire_owned() {
            return Ok(permit);
        }
        let admitted = {
            let _waiting = WaitingStart::new();
            let permit = Arc::clone(&self.starts).acquire_owned();
            tokio::time::timeout(START_ADMISSION_WAIT, permit).await
        };
        match admitted {
            Ok(permit) => Ok(permit.expect("the start gate is never closed")),
            Err(_) => {
                metrics::counter!(crate::metrics::OVERLOADED_TOTAL, "limit" => "start_gate")
                    .increment(1);
                Err(Error::new(
                    ErrorCode::Overloaded,
                    format!(
                        "no room for a new instance within {} s; retry later",
                        START_ADMISSION_WAIT.as_secs()
                    ),
                ))
            }
        }
    }
}
