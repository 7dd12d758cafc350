//! Client errors: the node's answer with its stable code, or what went
//! wrong on the way.

use serde_json::Value as Json;
use troupe_protocol::{ErrorCode, WireError};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node refused the request.
    #[error("{code}: {message}")]
    Node {
        /// Stable code.
        code: ErrorCode,
        /// What happened.
        message: String,
        /// Structured details (e.g. every validation error).
        details: Json,
        /// How long the node asked us to wait before retrying.
        retry_after_ms: Option<u64>,
    },
    /// The connection failed or closed before an answer came.
    #[error("connection: {0}")]
    Connection(String),
    /// The node answered something this client does not understand.
    #[error("protocol: {0}")]
    Protocol(String),
}

impl Error {
    /// The node's code, when the node answered.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Node { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether trying again later may succeed (overload, unavailability,
    /// a broken connection).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Node { code, .. } => code.is_retryable(),
            Self::Connection(_) => true,
            Self::Protocol(_) => false,
        }
    }

    pub(crate) fn from_wire(e: WireError) -> Self {
        let Some(code) = ErrorCode::parse(&e.code) else {
            return Self::Protocol(format!("unknown error code {:?}: {}", e.code, e.message));
        };
        Self::Node {
            code,
            message: e.message,
            details: serde_json::from_str(&e.details).unwrap_or(Json::Null),
            retry_after_ms: e.retry_after_ms,
        }
    }
}
