//! Retention: ten times a second, each active shard deletes the instances that
//! ended more than `retention` ago, oldest first, in batches that go
//! through the shard's log like transitions (so a cluster's replicas
//! delete them too). Ended instances never change, so this races with no
//! actor; a start with a purged id begins a new instance.

use crate::Services;
use std::sync::Weak;
use std::time::Duration;
use troupe_engine::engine::{InstanceStatus, Millis};
use troupe_storage::ShardBatch;

/// How often each shard looks for instances past retention: often, so
/// that deleting comes in small pieces (a second's worth of ended
/// instances at once was a burst of CPU that showed in the latency of
/// everything else).
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// Most instances deleted in one batch (one log entry in a cluster).
const PURGE_BATCH: usize = 256;

/// Starts the sweeper (until the services are dropped).
pub(crate) fn start(services: Weak<Services>, retention: Duration) {
    tokio::spawn(sweep(services, retention));
}

async fn sweep(services: Weak<Services>, retention: Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per shard, when the last instance purged here had ended: the next
    // look starts there, past the tombstones of those before it.
    let shards = services.upgrade().map_or(0, |s| s.settings.shards);
    let mut purged_up_to: Vec<Millis> = vec![0; shards as usize];
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let horizon = crate::now_millis().saturating_sub(retention.as_millis() as Millis);
        for (shard, from) in (0..).zip(purged_up_to.iter_mut()) {
            while services.router.is_active(shard) {
                match purge_some(&services, shard, from, horizon).await {
                    Ok(n) if n == PURGE_BATCH => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(shard_id = shard, %error, "deleting instances past retention");
                        break;
                    }
                }
            }
        }
    }
}

/// Deletes up to [`PURGE_BATCH`] instances of `shard` that ended from
/// `from` on and before `horizon`, and moves `from` to the last one's end;
/// returns how many index entries it went through.
async fn purge_some(
    services: &Services,
    shard: u32,
    from: &mut Millis,
    horizon: Millis,
) -> Result<usize, String> {
    let store = services.store.clone();
    let start = *from;
    let (batch, ended, purged) = tokio::task::spawn_blocking(move || {
        let ended = store.ended_before(shard, start, horizon, PURGE_BATCH)?;
        let mut batch = ShardBatch::new(shard);
        let mut purged = Vec::new();
        for entry in &ended {
            purged.extend(store.purge_ended(&mut batch, entry)?);
        }
        Ok::<_, troupe_storage::Error>((batch, ended, purged))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let Some(last) = ended.last().map(|entry| entry.at) else {
        return Ok(0);
    };
    services
        .log
        .append(batch)
        .await
        .map_err(|e| e.to_string())?;
    *from = last;
    count_purged(&purged);
    Ok(ended.len())
}

fn count_purged(purged: &[InstanceStatus]) {
    metrics::counter!(crate::metrics::INSTANCES_PURGED_TOTAL).increment(purged.len() as u64);
    for status in purged {
        metrics::gauge!(crate::metrics::WORKFLOWS, "status" => status.as_str()).decrement(1.0);
    }
}
