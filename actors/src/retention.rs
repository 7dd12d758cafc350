//! Retention: ten times a second, each active shard deletes the instances that
//! ended more than `retention` ago, oldest first, in batches that go
//! through the shard's log like transitions (so a cluster's replicas
//! delete them too). Ended instances never change, so this races with no
//! actor; a start with a purged id begins a new instance.
//!
//! Deleting is paced by how fast instances end here, smoothed over half a
//! minute, and runs a few seconds behind the retention horizon, faster
//! when further behind and slower when closer: deleting exactly what ended
//! a retention ago echoed every swing of load (a fast minute made the
//! minute one retention later slow, which made the one after fast again),
//! and so did deleting right at the horizon, where a slow minute left
//! little to delete a retention later.

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
/// per sweep, scaled by how far behind the horizon a shard's deletion runs
/// (see [`Pace::factor`]), and a floor so that a backlog drains on an idle
/// node too.
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
    /// Deletes per sweep allowed whatever the rate (1,000 a second).
    const FLOOR: f64 = 100.0;
    /// How far behind the horizon deletion aims to run, at most: a reserve
    /// of due instances, so that what a slow stretch left to delete is made
    /// up from it instead of showing as a fast stretch a retention later.
    const TARGET_LAG: Millis = 10_000;
    /// The pace moves by the whole end rate per this much lag beyond the
    /// target (or short of it), within 0.75 to 1.5 times the end rate.
    const CATCH_UP: f64 = 40_000.0;

    /// Instances ended per sweep, smoothed, given how many ended here so
    /// far; call once per sweep.
    fn rate(&mut self, ended: u64) -> f64 {
        let new = ended.saturating_sub(self.ended_seen) as f64;
        self.ended_seen = ended;
        self.per_sweep += (new - self.per_sweep) * Self::SMOOTHING;
        self.per_sweep
    }

    /// The pace relative to the end rate for a shard whose deletion runs
    /// `lag` behind the horizon, when it aims at `target`: between three
    /// quarters and one and a half.
    fn factor(lag: Millis, target: Millis) -> f64 {
        let ahead = lag as f64 - target as f64;
        (1.0 + ahead / Self::CATCH_UP).clamp(0.75, 1.5)
    }

    /// The lag aimed at under `retention`: a tenth of it, at most
    /// [`Self::TARGET_LAG`].
    fn target(retention: Duration) -> Millis {
        (retention.as_millis() as Millis / 10).min(Self::TARGET_LAG)
    }

    /// What one of `shards` shards may delete this sweep at `rate`.
    fn share(rate: f64, shards: usize, lag: Millis, target: Millis) -> usize {
        let budget = (rate * Self::factor(lag, target)).max(Self::FLOOR);
        (budget / shards.max(1) as f64).ceil() as usize
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
    let target = Pace::target(retention);
    loop {
        tick.tick().await;
        let Some(services) = services.upgrade() else {
            return;
        };
        let horizon = crate::now_millis().saturating_sub(retention.as_millis() as Millis);
        let rate = pace.rate(services.ended.load(Ordering::Relaxed));
        // Shared evenly among the shards served here (a cluster node serves
        // some), so that no shard's backlog waits on another's.
        let active = (0..shards)
            .filter(|shard| services.router.is_active(*shard))
            .count();
        for (shard, from) in (0..).zip(purged_up_to.iter_mut()) {
            let mut left = Pace::share(rate, active, horizon.saturating_sub(*from), target);
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
    use super::{Duration, Millis, Pace};

    #[test]
    fn deletes_are_paced_by_the_smoothed_end_rate() {
        let mut pace = Pace::default();
        assert_eq!(pace.rate(0), 0.0);
        assert_eq!(Pace::share(0.0, 4, 0, 0), 25, "the floor, shared");
        // 1,000 instances end per sweep for a while: the rate follows.
        let mut ended = 0;
        let mut rate = 0.0;
        for _ in 0..3_000 {
            ended += 1_000;
            rate = pace.rate(ended);
        }
        assert!((990.0..=1_000.0).contains(&rate), "{rate}");
        // A burst of one sweep moves it by a fraction only.
        ended += 30_000;
        assert!(pace.rate(ended) < rate + 100.0);
        // When nothing ends any more it sinks to nothing (the floor stays).
        for _ in 0..10_000 {
            rate = pace.rate(ended);
        }
        assert!(rate < 1.0, "{rate}");
    }

    #[test]
    fn deletion_runs_a_little_behind_the_horizon() {
        let target = Pace::target(Duration::from_secs(60));
        assert_eq!(target, 6_000, "a tenth of the retention");
        assert_eq!(Pace::target(Duration::from_secs(3_600)), Pace::TARGET_LAG);
        // At the aimed lag, the end rate; closer to the horizon, slower
        // (a reserve builds up); further behind, faster, within bounds.
        assert_eq!(Pace::share(10_000.0, 1, target, target), 10_000);
        assert_eq!(Pace::share(10_000.0, 1, 0, target), 8_500);
        assert_eq!(Pace::share(10_000.0, 1, target + 20_000, target), 15_000);
        assert_eq!(Pace::share(10_000.0, 1, Millis::MAX, target), 15_000);
        assert_eq!(Pace::share(10_000.0, 1, target + 10_000, target), 12_500);
        // Split among the shards served.
        assert_eq!(Pace::share(10_000.0, 3, target, target), 3_334);
    }
}
