//! Error codes the engine itself produces on steps and instances.

/// A CEL expression failed at run time.
pub const EXPRESSION_ERROR: &str = "expression_error";
/// An attempt ran longer than its start-to-close timeout.
pub const START_TO_CLOSE_TIMEOUT: &str = "start_to_close_timeout";
/// No worker picked an attempt up within its schedule-to-start timeout.
pub const SCHEDULE_TO_START_TIMEOUT: &str = "schedule_to_start_timeout";
/// A running attempt stopped heartbeating.
pub const HEARTBEAT_TIMEOUT: &str = "heartbeat_timeout";
/// An await or human step passed its deadline.
pub const TIMEOUT: &str = "timeout";
/// The step was interrupted because the instance rolled back.
pub const CANCELLED: &str = "cancelled";
/// A loop without `max_iterations` ran too many iterations that waited on nothing.
pub const LOOP_SPIN: &str = "loop_spin";
