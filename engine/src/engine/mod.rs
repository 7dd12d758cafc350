//! The pure instance state machine.
//!
//! [`apply`] takes a definition, an instance and one [`Event`], mutates the
//! instance and returns the [`Effect`]s to carry out. It reads no clock (time
//! is `Event::at`), does no I/O and draws no randomness (retry jitter is
//! hashed from instance id, step path and attempt), so replaying an
//! instance's events ([`replay`]) rebuilds the identical state.
//!
//! Progress is re-derived by walking the definition against the recorded step
//! runs after every event (`drive.rs`): handlers only record what happened to
//! one run, and the walk starts whatever should run next, completes
//! containers, and starts a rollback when a failure reaches the top. The walk
//! is a fixpoint, so a `foreach` advances only the iteration the event
//! touched; finished `foreach` and `loop` iterations are folded out of the
//! state, and an event costs the same whatever the instance's size or age.

mod codes;
mod drive;
mod effect;
mod event;
mod machine;
mod retry;
mod rollback;
mod scope;
mod state;
mod tasks;
mod waits;

pub use codes::*;
pub use effect::{Effect, TaskDispatch, TimerId, TimerKind};
pub use event::{Event, EventKind};
pub use machine::{Outcome, apply, redrive_all, replay};
pub use retry::backoff_delay;
pub use state::*;
