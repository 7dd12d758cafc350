//! What callers send to instances, and what they get back.

use crate::Error;
use serde_json::Value as Json;
use std::sync::Arc;
use tokio::sync::oneshot;
use troupe_engine::definition::Definition;
use troupe_engine::engine::EventKind;
use troupe_storage::ParentLink;

/// What a command did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

/// A command as it travels to the node leading the instance's shard: the
/// definition by name and version (each node loads its own copy).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub enum WireCommand {
    /// [`Command::Start`].
    Start {
        /// Definition name.
        definition: String,
        /// Definition version.
        version: u32,
        /// Start input.
        input: Json,
        /// Parent, for a child workflow.
        parent: Option<ParentLink>,
    },
    /// [`Command::Event`].
    Event(EventKind),
    /// [`Command::Report`].
    Report(Vec<EventKind>),
    /// [`Command::Recover`].
    Recover,
}

impl From<Command> for WireCommand {
    fn from(command: Command) -> Self {
        match command {
            Command::Start {
                definition,
                input,
                parent,
            } => WireCommand::Start {
                definition: definition.name.clone(),
                version: definition.version,
                input,
                parent,
            },
            Command::Event(kind) => WireCommand::Event(kind),
            Command::Report(kinds) => WireCommand::Report(kinds),
            Command::Recover => WireCommand::Recover,
        }
    }
}

impl WireCommand {
    /// The command, with its definition loaded from `services`.
    pub fn into_command(self, services: &crate::Services) -> Result<Command, Error> {
        Ok(match self {
            WireCommand::Start {
                definition,
                version,
                input,
                parent,
            } => {
                let found = services
                    .definitions
                    .get(&services.store, &definition, version)?;
                let definition = found.ok_or_else(|| {
                    Error::new(
                        troupe_protocol::ErrorCode::DefinitionNotFound,
                        format!("definition {definition} v{version} is not deployed on this node"),
                    )
                })?;
                Command::Start {
                    definition,
                    input,
                    parent,
                }
            }
            WireCommand::Event(kind) => Command::Event(kind),
            WireCommand::Report(kinds) => Command::Report(kinds),
            WireCommand::Recover => Command::Recover,
        })
    }
}
