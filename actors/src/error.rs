//! The one error type of the actors: a stable code and a message; the code
//! says whether a retry can help.

use troupe_protocol::ErrorCode;

/// Why a command was refused or failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Error {
    /// Stable code.
    pub code: ErrorCode,
    /// What happened.
    pub message: String,
}

impl Error {
    /// A failure with `code`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self.code, ErrorCode::Unavailable | ErrorCode::Overloaded)
    }
}

impl From<troupe_storage::Error> for Error {
    fn from(e: troupe_storage::Error) -> Self {
        let code = if e.is_retryable() {
            ErrorCode::Unavailable
        } else {
            ErrorCode::Internal
        };
        Self::new(code, e.to_string())
    }
}

/// Result of the actors' operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
