//! Stable error codes: the `code` field of every error Troupe returns.
//!
//! A code's string form is part of the public contract (HTTP JSON, the native
//! protocol, the CLI's exit messages): variants may be added, never renamed.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a request failed, in a form clients can match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request itself is malformed (bad JSON, missing field, bad value).
    InvalidRequest,
    /// Bytes on the native port that are not a frame of a known version;
    /// the node closes that connection.
    MalformedFrame,
    /// A workflow definition failed validation; details list every error.
    InvalidDefinition,
    /// The request body or a payload is larger than the configured limit.
    PayloadTooLarge,
    /// No such route or resource.
    NotFound,
    /// No definition with that name (and version).
    DefinitionNotFound,
    /// No workflow instance with that id.
    WorkflowNotFound,
    /// No task with that token, or the lease is gone.
    TaskNotFound,
    /// No incident with that id.
    IncidentNotFound,
    /// A definition with that name and version already exists with other content.
    DefinitionConflict,
    /// An instance with that id exists with another definition or input.
    WorkflowConflict,
    /// The operation does not apply to the instance in its current state.
    InvalidState,
    /// The node is over its limits; retry after the advertised delay.
    Overloaded,
    /// The node cannot serve right now (starting, draining, no quorum).
    Unavailable,
    /// A routed request reached a node that does not lead the instance's
    /// shard; details name the leader (`leader`, `native_addr`) and the
    /// cluster map's `epoch`. Native protocol only.
    NotLeader,
    /// An unexpected failure inside the node.
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 16] = [
        Self::InvalidRequest,
        Self::MalformedFrame,
        Self::InvalidDefinition,
        Self::PayloadTooLarge,
        Self::NotFound,
        Self::DefinitionNotFound,
        Self::WorkflowNotFound,
        Self::TaskNotFound,
        Self::IncidentNotFound,
        Self::DefinitionConflict,
        Self::WorkflowConflict,
        Self::InvalidState,
        Self::Overloaded,
        Self::Unavailable,
        Self::NotLeader,
        Self::Internal,
    ];

    /// The stable string form, as it appears on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::MalformedFrame => "malformed_frame",
            Self::InvalidDefinition => "invalid_definition",
            Self::PayloadTooLarge => "payload_too_large",
            Self::NotFound => "not_found",
            Self::DefinitionNotFound => "definition_not_found",
            Self::WorkflowNotFound => "workflow_not_found",
            Self::TaskNotFound => "task_not_found",
            Self::IncidentNotFound => "incident_not_found",
            Self::DefinitionConflict => "definition_conflict",
            Self::WorkflowConflict => "workflow_conflict",
            Self::InvalidState => "invalid_state",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
            Self::NotLeader => "not_leader",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status that carries this code.
    pub const fn http_status(self) -> u16 {
        match self {
            Self::InvalidRequest | Self::MalformedFrame | Self::InvalidDefinition => 400,
            Self::NotFound
            | Self::DefinitionNotFound
            | Self::WorkflowNotFound
            | Self::TaskNotFound
            | Self::IncidentNotFound => 404,
            Self::DefinitionConflict | Self::WorkflowConflict | Self::InvalidState => 409,
            Self::PayloadTooLarge => 413,
            Self::Overloaded => 429,
            Self::Unavailable | Self::NotLeader => 503,
            Self::Internal => 500,
        }
    }

    /// The code with this string form.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// Whether sending the same request again later can succeed.
    pub const fn is_retryable(self) -> bool {
        matches!(self, Self::Overloaded | Self::Unavailable | Self::NotLeader)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_form_matches_serde_and_is_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert!((400..600).contains(&code.http_status()));
        }
    }

    #[test]
    fn only_capacity_and_routing_errors_are_retryable() {
        let retryable: Vec<_> = ErrorCode::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(
            retryable,
            [
                ErrorCode::Overloaded,
                ErrorCode::Unavailable,
                ErrorCode::NotLeader
            ]
        );
    }
}
