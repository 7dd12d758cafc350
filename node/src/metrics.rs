//! Metric names of the listeners, and the Prometheus exporter that every
//! crate's metrics are described to.

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

pub use troupe_actors::metrics::{OVERLOADED_TOTAL, TASK_REPORTS_TOTAL, TASKS_LEASED_TOTAL};

/// HTTP requests, by route and status class.
pub const HTTP_REQUESTS_TOTAL: &str = "troupe_http_requests_total";
/// Open native-protocol connections.
pub const NATIVE_CONNECTIONS: &str = "troupe_native_connections";
/// Native-protocol connections closed for a malformed or oversized frame.
pub const NATIVE_BAD_FRAMES_TOTAL: &str = "troupe_native_bad_frames_total";

/// Commands for a shard led elsewhere, handed to its leader (one hop).
pub const FORWARDED_TOTAL: &str = "troupe_cluster_forwarded_total";

/// Installs the Prometheus recorder once per process and describes every metric.
pub fn install() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
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
