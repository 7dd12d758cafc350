//! What callers send to instances, and what they get back.

use crate::Error;
use serde_json::Value as Json;
use std::sync::Arc;
use tokio::sync::oneshot;
use troupe_engine::definition::Definition;
use troupe_engine::engine::EventKind;
use troupe_storage::ParentLink;

/// What a command did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// The event was journaled and its effects carried out.
    Done,
    /// An instance with this id already exists with the same definition and input.
    Existing,
    /// The answer to a start: whether it created the instance, and its view
    /// (rendered by the actor, so the caller needs no read).
    Started {
        /// `false` when the instance already existed.
        created: bool,
        /// The instance's view after the start.
        view: Json,
    },
    /// The event changed nothing (duplicate, stale, not applicable), with why.
    Ignored(String),
}

/// A command for one instance.
#[derive(Debug)]
pub enum Command {
    /// Create and start the instance.
    Start {
        /// Its definition.
        definition: Arc<Definition>,
        /// Start input.
        input: Json,
        /// Parent, for a child workflow.
        parent: Option<ParentLink>,
    },
    /// Apply an event to an existing instance.
    Event(EventKind),
    /// A worker's report, preceded by the attempt's deferred `TaskStarted`
    /// when it has not been applied yet; all applied in one commit. The
    /// answer is about the last event.
    Report(Vec<EventKind>),
    /// Load the instance and redo what may have been lost in a crash.
    Recover,
}

/// Reply channel of a command.
pub type ReplyTo = oneshot::Sender<Result<Applied, Error>>;
