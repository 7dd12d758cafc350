//! Metric names of the actors, described once.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
use troupe_engine::engine::InstanceStatus;

/// Instances started, by definition.
pub const WORKFLOWS_STARTED_TOTAL: &str = "troupe_workflows_started_total";
/// Instances that reached a terminal state, by definition and status.
pub const WORKFLOWS_FINISHED_TOTAL: &str = "troupe_workflows_finished_total";
/// Instances by current status (this node's view since start).
pub const WORKFLOWS: &str = "troupe_workflows";
/// Durable transitions (journaled events).
pub const TRANSITIONS_TOTAL: &str = "troupe_transitions_total";
/// Journal bytes written (encoded events).
pub const JOURNAL_BYTES_TOTAL: &str = "troupe_journal_bytes_total";
/// Instance snapshots written (whole states).
pub const SNAPSHOTS_TOTAL: &str = "troupe_snapshots_total";
/// Instance snapshot bytes written.
pub const SNAPSHOT_BYTES_TOTAL: &str = "troupe_snapshot_bytes_total";
/// Time from a transition's commit request to durability.
pub const TRANSITION_SECONDS: &str = "troupe_transition_commit_seconds";
/// Task attempts dispatched, by task type.
pub const TASKS_DISPATCHED_TOTAL: &str = "troupe_tasks_dispatched_total";
/// Duration of in-node task attempts, by task type and outcome.
pub const TASK_SECONDS: &str = "troupe_task_seconds";
/// Retry attempts dispatched.
pub const RETRIES_TOTAL: &str = "troupe_retries_total";
/// Compensations started.
pub const COMPENSATIONS_TOTAL: &str = "troupe_compensations_total";
/// Incidents opened.
pub const INCIDENTS_OPENED_TOTAL: &str = "troupe_incidents_opened_total";
/// Timers armed and not yet fired.
pub const TIMERS_ARMED: &str = "troupe_timers_armed";
/// Timers fired.
pub const TIMERS_FIRED_TOTAL: &str = "troupe_timers_fired_total";
/// Instance actors in memory.
pub const INSTANCES_LIVE: &str = "troupe_instances_live";
/// Bytes charged to the memory budget (live instances and queued tasks).
pub const MEMORY_BUDGET_USED_BYTES: &str = "troupe_memory_budget_used_bytes";
/// Rounds of passivating idle instances because memory was short.
pub const MEMORY_SHEDS_TOTAL: &str = "troupe_memory_sheds_total";
/// Ended instances deleted after their retention.
pub const INSTANCES_PURGED_TOTAL: &str = "troupe_instances_purged_total";
/// Instance actors restarted after a failure.
pub const INSTANCE_RESTARTS_TOTAL: &str = "troupe_instance_restarts_total";

/// Worker task attempts waiting for a worker.
pub const TASKS_QUEUED: &str = "troupe_tasks_queued";
/// Task attempts handed to workers.
pub const TASKS_LEASED_TOTAL: &str = "troupe_tasks_leased_total";
/// Worker reports (complete, fail, heartbeat), by kind and whether accepted.
pub const TASK_REPORTS_TOTAL: &str = "troupe_task_reports_total";
/// Starts waiting at the start gate for room in the shards.
pub const STARTS_WAITING: &str = "troupe_starts_waiting";
/// Requests refused because the node was over a limit, by limit.
pub const OVERLOADED_TOTAL: &str = "troupe_overloaded_total";

/// Describes this crate's metrics to the installed recorder.
pub fn describe() {
    describe_counter!(WORKFLOWS_STARTED_TOTAL, "Workflow instances started");
    describe_counter!(
        WORKFLOWS_FINISHED_TOTAL,
        "Workflow instances that reached a terminal state"
    );
    describe_gauge!(
        WORKFLOWS,
        "Workflow instances by status (counted durably with each transition)"
    );
    describe_counter!(TRANSITIONS_TOTAL, "Durable transitions (journaled events)");
    describe_counter!(
        JOURNAL_BYTES_TOTAL,
        Unit::Bytes,
        "Journal bytes written (encoded events)"
    );
    describe_counter!(
        SNAPSHOTS_TOTAL,
        "Instance snapshots written: when an instance ends, or when its journal since the last one outweighs it"
    );
    describe_counter!(
        SNAPSHOT_BYTES_TOTAL,
        Unit::Bytes,
        "Instance snapshot bytes written"
    );
    describe_histogram!(
        TRANSITION_SECONDS,
        Unit::Seconds,
        "Time for a transition to become durable"
    );
    describe_counter!(TASKS_DISPATCHED_TOTAL, "Task attempts dispatched");
    describe_histogram!(
        TASK_SECONDS,
        Unit::Seconds,
        "Duration of task attempts run inside the node"
    );
    describe_counter!(RETRIES_TOTAL, "Retry attempts dispatched");
    describe_counter!(COMPENSATIONS_TOTAL, "Compensations started");
    describe_counter!(INCIDENTS_OPENED_TOTAL, "Incidents opened");
    describe_gauge!(TIMERS_ARMED, "Durable timers armed");
    describe_counter!(TIMERS_FIRED_TOTAL, "Durable timers fired");
    describe_gauge!(INSTANCES_LIVE, "Instance actors held in memory");
    describe_gauge!(
        STARTS_WAITING,
        "Starts waiting at the start gate for room in the shards"
    );
    describe_gauge!(
        MEMORY_BUDGET_USED_BYTES,
        Unit::Bytes,
        "Bytes charged to the memory budget by live instances and queued tasks"
    );
    describe_counter!(
        MEMORY_SHEDS_TOTAL,
        "Rounds of passivating idle instances because the memory budget was above its soft mark"
    );
    describe_counter!(
        INSTANCE_RESTARTS_TOTAL,
        "Instance actors restarted after a failure"
    );
    describe_counter!(
        INSTANCES_PURGED_TOTAL,
        "Ended instances deleted after their retention"
    );
    describe_gauge!(TASKS_QUEUED, "Worker task attempts waiting for a worker");
    describe_counter!(TASKS_LEASED_TOTAL, "Task attempts handed to workers");
    describe_counter!(
        TASK_REPORTS_TOTAL,
        "Worker reports, by kind and whether they were accepted"
    );
    describe_counter!(
        OVERLOADED_TOTAL,
        "Requests refused because the node was over a limit"
    );
}

/// Sets the status gauges from the durable counts (at start).
pub fn status_counts(counts: &[(InstanceStatus, i64)], sign: f64) {
    for (status, n) in counts {
        metrics::gauge!(WORKFLOWS, "status" => status.as_str()).increment(sign * *n as f64);
    }
}

/// Moves one instance between status gauges.
pub fn status_moved(from: Option<InstanceStatus>, to: InstanceStatus) {
    if let Some(from) = from {
        metrics::gauge!(WORKFLOWS, "status" => from.as_str()).decrement(1.0);
    }
    metrics::gauge!(WORKFLOWS, "status" => to.as_str()).increment(1.0);
}
