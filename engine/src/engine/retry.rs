//! Exponential backoff with deterministic jitter.

use crate::definition::RetryPolicy;
use std::time::Duration;
use troupe_protocol::stable_hash;

/// Delay before the attempt after `attempt` (1-based):
/// `min(initial * multiplier^(attempt-1), max) * (1 + jitter * u)`, with `u`
/// in `[-1, 1]` hashed from instance, path and attempt so replays agree.
pub fn backoff_delay(policy: &RetryPolicy, instance: &str, path: &str, attempt: u32) -> Duration {
    let exponent = attempt.saturating_sub(1).min(1024) as i32;
    let base = policy.initial_delay.as_secs_f64() * policy.multiplier.powi(exponent);
    let capped = base.min(policy.max_delay.as_secs_f64());
    let hash = stable_hash(format!("{instance}/{path}/{attempt}").as_bytes());
    let unit = (hash >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
    let factor = 1.0 + policy.jitter * (2.0 * unit - 1.0);
    Duration::from_secs_f64((capped * factor).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            multiplier: 2.0,
            jitter,
            non_retryable: vec![],
        }
    }

    #[test]
    fn grows_exponentially_up_to_the_cap() {
        let p = policy(0.0);
        let delays: Vec<u64> = (1..=8)
            .map(|a| backoff_delay(&p, "i", "s", a).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60]);
    }

    #[test]
    fn jitter_is_bounded_and_deterministic() {
        let p = policy(0.1);
        for attempt in 1..=6 {
            let d = backoff_delay(&p, "wf-1", "charge", attempt).as_secs_f64();
            let base = (2f64.powi(attempt as i32 - 1)).min(60.0);
            assert!(
                d >= base * 0.9 - 1e-9 && d <= base * 1.1 + 1e-9,
                "{d} vs {base}"
            );
            assert_eq!(
                backoff_delay(&p, "wf-1", "charge", attempt),
                backoff_delay(&p, "wf-1", "charge", attempt)
            );
        }
        let spread: std::collections::HashSet<_> = (0..20)
            .map(|i| backoff_delay(&p, &format!("wf-{i}"), "charge", 1))
            .collect();
        assert!(spread.len() > 10, "jitter should differ across instances");
    }
}
