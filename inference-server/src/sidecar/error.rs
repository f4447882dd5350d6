//! The engine's error type. Each protocol maps it in exactly one place:
//! `From<InferError> for tonic::Status` in `grpc.rs`, `IntoResponse for
//! ApiError` in `http.rs`.

use crate::sidecar::backend::BackendError;
use crate::sidecar::tokenize::TokenizeError;

#[derive(Debug, thiserror::Error)]
pub enum InferError {
    /// A required text is empty.
    #[error("`{param}` must not be empty")]
    EmptyInput { param: &'static str },
    /// A request field is out of bounds or malformed.
    #[error("invalid `{param}`: {message}")]
    InvalidArgument {
        param: &'static str,
        message: String,
    },
    /// Neither an installed task nor one the router knows.
    #[error("unknown task `{0}`")]
    UnknownTask(String),
    /// A known task whose head is not installed.
    #[error(
        "task `{task}` has no trained head: expected {expected} (train it with `vsr train {task}`)"
    )]
    MissingHead { task: String, expected: String },
    /// The task exists but cannot serve this call (e.g. a pair task in Classify).
    #[error("task `{task}` is of kind `{kind}`, which {rpc} does not serve")]
    WrongKind {
        task: String,
        kind: &'static str,
        rpc: &'static str,
    },
    /// A pair/token RPC whose head is not installed yet.
    #[error("{rpc} needs the `{task}` task head, which is not installed (expected {expected})")]
    Unimplemented {
        rpc: &'static str,
        task: String,
        expected: String,
    },
    #[error("unknown candidate set `{0}` (register it with RegisterCandidates first)")]
    UnknownCandidateSet(String),
    /// A request body or message over the size limit.
    #[error("the request is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    /// Too many requests in flight.
    #[error("the inference queue is full, retry later")]
    Overloaded,
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    Tokenize(#[from] TokenizeError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

impl InferError {
    /// A fixed, low-cardinality name for metrics labels and error codes.
    pub fn code(&self) -> &'static str {
        match self {
            InferError::EmptyInput { .. } => "empty_input",
            InferError::InvalidArgument { .. } => "invalid_argument",
            InferError::UnknownTask(_) => "unknown_task",
            InferError::MissingHead { .. } => "missing_head",
            InferError::WrongKind { .. } => "wrong_task_kind",
            InferError::Unimplemented { .. } => "unimplemented",
            InferError::UnknownCandidateSet(_) => "unknown_candidate_set",
            InferError::TooLarge { .. } => "too_large",
            InferError::Overloaded => "overloaded",
            InferError::ShuttingDown => "shutting_down",
            InferError::Tokenize(_) => "tokenizer",
            InferError::Backend(_) => "backend",
        }
    }

    /// The request field at fault, if any.
    pub fn param(&self) -> Option<&'static str> {
        match self {
            InferError::EmptyInput { param } | InferError::InvalidArgument { param, .. } => {
                Some(param)
            }
            InferError::UnknownTask(_)
            | InferError::MissingHead { .. }
            | InferError::WrongKind { .. } => Some("tasks"),
            InferError::UnknownCandidateSet(_) => Some("candidate_sets"),
            _ => None,
        }
    }
}
