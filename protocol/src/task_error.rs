//! How a task attempt failed, as in-process handlers and workers report it.

/// A failed task attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskError {
    /// Error code, matched against the step's `non_retryable` list.
    pub code: String,
    /// Message.
    pub message: String,
    /// `false` when retrying cannot help.
    pub retryable: bool,
}

impl TaskError {
    /// A failure worth retrying.
    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure retrying cannot fix.
    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            retryable: false,
        }
    }
}
