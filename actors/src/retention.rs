//! Retention: ten times a second, each active shard deletes the instances that
//! ended more than `retention` ago, oldest first, in batches that go
//! through the shard's log like transitions (so a cluster's replicas
//! delete them too). Ended instances never change, so this races with no
//! actor; a start with a purged id begins a new instance.
//!
//! Deleting is paced by how fast instances end here, smoothed over half a
//! minute, with room to catch up: deleting exactly what ended a retention
//! ago echoed every swing of load (a fast minute made the minute one
//! retention later slow, which made the one after fast again).

use crate::Services;
use std::sync::Weak;
use std::sync::atomic::Ordering;
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

/// How many instances a sweep may delete: the smoothed number that ended
/// per sweep, with headroom so that a backlog drains, and a floor so that
/// one drains on an idle node too.
#[derive(Debug, Default)]
struct Pace {
    /// Instances ended when last asked.
    ended_seen: u64,
    /// Instances ended per sweep, smoothed.
    per_sweep: f64,
}

impl Pace {
    /// Weight of the latest sweep in the smoothed rate (half a minute).
    const SMOOTHING: f64 = 1.0 / 300.0;
    /// Deleting may run this much faster than instances end.
    const HEADROOM: f64 = 1.25;
    /// Deletes per sweep allowed whatever the rate (1,000 a second).
    const FLOOR: f64 = 100.0;

    /// The budget of the next sweep, given how many instances ended here
    /// so far.
    fn budget(&mut self, ended: u64) -> usize {
        let new = ended.saturating_sub(self.ended_seen) as f64;
        self.ended_seen = ended;
        self.per_sweep += (new - self.per_sweep) * Self::SMOOTHING;
        (self.per_sweep * Self::HEADROOM).max(Self::FLOOR) as usize
    }
}

async fn sweep(services: Weak<Services>, retention: Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Per shard, when the last instance purged here had ended: the next
    // look starts there, past the tombstones of those before it.
    let shards = services.upgrade().map_or(0, |s| s.settings.shards);
    let mut purged_up_to: Vec<Millis> = vec![0; shards as usize];
    let mut pace = Pace::default();
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let horizon = crate::now_millis().saturating_sub(retention.as_millis() as Millis);
        let budget = pace.budget(services.ended.load(Ordering::Relaxed));
        // Shared evenly among the shards served here (a cluster node serves
        // some), so that no shard's backlog waits on another's.
        let active = (0..shards)
            .filter(|shard| services.router.is_active(*shard))
            .count();
        let share = budget.div_ceil(active.max(1));
        for (shard, from) in (0..).zip(purged_up_to.iter_mut()) {
            let mut left = share;
            while left > 0 && services.router.is_active(shard) {
                let limit = left.min(PURGE_BATCH);
                match purge_some(&services, shard, from, horizon, limit).await {
                    Ok(n) if n == limit => left -= n,
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

/// Deletes up to `limit` instances of `shard` that ended from `from` on
/// and before `horizon`, and moves `from` to the last one's end; returns
/// how many index entries it went through.
async fn purge_some(
    services: &Services,
    shard: u32,
    from: &mut Millis,
    horizon: Millis,
    limit: usize,
) -> Result<usize, String> {
    let store = services.store.clone();
    let start = *from;
    let (batch, ended, purged) = tokio::task::spawn_blocking(move || {
        let ended = store.ended_before(shard, start, horizon, limit)?;
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

#[cfg(test)]
mod tests {
    use super::Pace;

    #[test]
    fn deletes_are_paced_by_the_smoothed_end_rate_with_headroom() {
        let mut pace = Pace::default();
        assert_eq!(pace.budget(0), 100, "the floor");
        // 1,000 instances end per sweep for a while: the budget climbs to
        // a quarter above it, and no further.
        let mut ended = 0;
        let mut budget = 0;
        for _ in 0..3_000 {
            ended += 1_000;
            budget = pace.budget(ended);
        }
        assert!((1_240..=1_250).contains(&budget), "{budget}");
        // A burst of one sweep moves it by a fraction only.
        ended += 30_000;
        let after_burst = pace.budget(ended);
        assert!(after_burst < budget + 150, "{after_burst}");
        // When nothing ends any more it sinks back to the floor.
        for _ in 0..10_000 {
            budget = pace.budget(ended);
        }
        assert_eq!(budget, 100);
    }
}
