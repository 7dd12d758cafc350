//! `troupe-bench probe`: how steady the machine itself is, with no Troupe
//! code running. Each thread chases pointers through a random cycle over a
//! working set larger than the caches (every step a cache miss), counting
//! steps per 10-s window; on a shared host the windows of memory-bound
//! work differ as neighbours load its caches and memory, and a node's
//! memory-heavy rate per window can hardly be steadier. With a duty below
//! 1 each thread works only that share of each second, so the probe can
//! run beside a load test (which also moves it, through the caches).

use crate::report::WINDOW_SECS;
use std::time::{Duration, Instant};

/// Steps per window of each thread, and the slowest window's share of the
/// fastest over all of them.
pub fn run(duration: Duration, threads: usize, mib: usize, duty: f64) -> serde_json::Value {
    let duty = duty.clamp(0.01, 1.0);
    let handles: Vec<_> = (0..threads.max(1))
        .map(|seed| std::thread::spawn(move || chase(duration, mib, duty, seed as u64 + 1)))
        .collect();
    let windows: Vec<Vec<u64>> = handles
        .into_iter()
        .map(|h| h.join().expect("probe thread"))
        .collect();
    let ratios: Vec<f64> = windows.iter().map(|w| slowest_to_fastest(w)).collect();
    serde_json::json!({
        "working_set_mib": mib,
        "duty": duty,
        "window_secs": WINDOW_SECS,
        "steps_per_window": windows,
        "slowest_to_fastest": ratios,
    })
}

/// Follows a random cycle through `mib` MiB for `duration`, working
/// `duty` of each second; returns the steps taken in each whole window.
fn chase(duration: Duration, mib: usize, duty: f64, seed: u64) -> Vec<u64> {
    let next = random_cycle((mib << 20) / size_of::<usize>(), seed);
    let (start, mut at, mut windows) = (Instant::now(), 0usize, Vec::new());
    let mut steps = 0u64;
    let mut window_end = start + Duration::from_secs(WINDOW_SECS as u64);
    let mut second = start;
    while start.elapsed() < duration {
        for _ in 0..10_000 {
            at = next[at];
        }
        steps += 10_000;
        if duty < 1.0 && second.elapsed() >= Duration::from_secs_f64(duty) {
            second += Duration::from_secs(1);
            std::thread::sleep(second.saturating_duration_since(Instant::now()));
        }
        if Instant::now() >= window_end {
            windows.push(steps);
            steps = 0;
            window_end += Duration::from_secs(WINDOW_SECS as u64);
        }
    }
    std::hint::black_box(at);
    windows
}

/// A single cycle through `0..n` in random order (Sattolo's algorithm),
/// as "the index after each index".
fn random_cycle(n: usize, mut seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        // xorshift64: enough randomness to defeat the prefetchers.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        order.swap(i, (seed % i as u64) as usize);
    }
    let mut next = vec![0; n];
    for (i, &from) in order.iter().enumerate() {
        next[from] = order[(i + 1) % n];
    }
    next
}

fn slowest_to_fastest(windows: &[u64]) -> f64 {
    let (min, max) = windows
        .iter()
        .fold((u64::MAX, 0), |(lo, hi), &w| (lo.min(w), hi.max(w)));
    if max == 0 {
        0.0
    } else {
        min as f64 / max as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cycle_visits_every_slot_once() {
        let next = random_cycle(1_000, 7);
        let (mut at, mut seen) = (0, vec![false; 1_000]);
        for _ in 0..1_000 {
            assert!(!seen[at], "slot {at} visited twice");
            seen[at] = true;
            at = next[at];
        }
        assert_eq!(at, 0, "back at the start after every slot");
        assert!(seen.iter().all(|s| *s));
    }

    #[test]
    fn the_ratio_is_of_the_slowest_to_the_fastest_window() {
        assert_eq!(slowest_to_fastest(&[80, 100, 90]), 0.8);
        assert_eq!(slowest_to_fastest(&[]), 0.0);
    }
}
