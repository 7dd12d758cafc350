//! Metric names of the listeners, and the Prometheus exporter that every
//! crate's metrics are described to.

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use troupe_actors::metrics::{OVERLOADED_TOTAL, TASK_REPORTS_TOTAL, TASKS_LEASED_TOTAL};

/// HTTP requests, by route and status class.
pub const HTTP_REQUESTS_TOTAL: &str = "troupe_http_requests_total";
/// Open native-protocol connections.
pub const NATIVE_CONNECTIONS: &str = "troupe_native_connections";
/// Native-protocol connections closed for a malformed or oversized frame.
pub const NATIVE_BAD_FRAMES_TOTAL: &str = "troupe_native_bad_frames_total";

/// Commands for a shard led elsewhere, handed to its leader (one hop).
pub const FORWARDED_TOTAL: &str = "troupe_cluster_forwarded_total";

/// How often histogram samples recorded since the last scrape are folded into
/// their summaries. Until then each sample is held in memory (8 bytes), so a
/// node nobody scrapes would grow with every transition.
const UPKEEP_EVERY: Duration = Duration::from_secs(1);

static UPKEEPS: AtomicU64 = AtomicU64::new(0);

/// Upkeep passes run since the recorder was installed.
pub fn upkeeps() -> u64 {
    UPKEEPS.load(Ordering::Relaxed)
}

/// Installs the Prometheus recorder once per process, describes every metric
/// and starts the upkeep thread (the exporter's low-level recorder has none).
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                        UPKEEPS.fetch_add(1, Ordering::Relaxed);
                    }
                })
                .expect("spawn the metrics upkeep thread");
            troupe_storage::metrics::describe();
            troupe_actors::metrics::describe();
            describe_counter!(
                HTTP_REQUESTS_TOTAL,
                "HTTP requests served, by route and status class"
            );
            describe_gauge!(NATIVE_CONNECTIONS, "Open native-protocol connections");
            describe_counter!(
                NATIVE_BAD_FRAMES_TOTAL,
                "Native connections closed for a malformed or oversized frame"
            );
            describe_counter!(
                FORWARDED_TOTAL,
                "Commands handed to the leader of their shard on another node"
            );
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_samples_are_folded_in_without_a_scrape() {
        install();
        let before = upkeeps();
        for n in 0..100_000 {
            metrics::histogram!(troupe_actors::metrics::TRANSITION_SECONDS).record(n as f64);
        }
        let deadline = std::time::Instant::now() + 10 * UPKEEP_EVERY;
        while upkeeps() < before + 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "no upkeep ran: unscraped samples would pile up"
            );
            std::thread::sleep(UPKEEP_EVERY / 10);
        }
    }
}
