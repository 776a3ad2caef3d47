//! How a plugin call fails, so that the host knows what to do with the records
//! (the `error` variant of the WIT package).

use std::fmt;

/// Why a plugin could not handle a record or a batch.
///
/// - [`Error::BadRecord`]: the record is at fault. The host sets it aside in the
///   stage's dead letters with the reason and goes on with the batch's other
///   records; retrying it would fail again.
/// - [`Error::Transient`]: something outside the records failed and may pass (a
///   state table, a lookup). The host retries the whole batch after a backoff,
///   for as long as it takes, and sets nothing aside.
/// - [`Error::Failed`]: neither of those (a bug). The host tries the batch again,
///   then applies the stage's `on-error` policy.
///
/// A `String` or `&str` converts to [`Error::Failed`], so `?` works on the
/// helpers that return `Result<_, String>`. The host's own functions
/// ([`crate::host`]) return this type already: `?` passes their verdict on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The record is at fault (bad input): dead-lettered with this reason.
    BadRecord(String),
    /// Something outside the records failed and may pass: the batch is retried.
    Transient(String),
    /// The call failed for another reason: tried again, then the stage's `on-error`.
    Failed(String),
}

impl Error {
    /// The record is at fault: say what is wrong with it.
    pub fn bad_record(reason: impl Into<String>) -> Error {
        Error::BadRecord(reason.into())
    }

    /// Something outside the records failed and may pass.
    pub fn transient(reason: impl Into<String>) -> Error {
        Error::Transient(reason.into())
    }

    /// The call failed for a reason that is neither the record's nor passing.
    pub fn failed(reason: impl Into<String>) -> Error {
        Error::Failed(reason.into())
    }

    /// The reason, whatever the kind.
    pub fn message(&self) -> &str {
        match self {
            Error::BadRecord(m) | Error::Transient(m) | Error::Failed(m) => m,
        }
    }

    /// This error of the record at `index` of its batch, as a call's error.
    pub(crate) fn at(self, index: u32) -> CallError {
        match self {
            Error::BadRecord(reason) => CallError::BadRecord { index, reason },
            Error::Transient(m) => CallError::Transient(m),
            Error::Failed(m) => CallError::Failed(m),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadRecord(m) => write!(f, "bad record: {m}"),
            Error::Transient(m) => write!(f, "transient: {m}"),
            Error::Failed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

impl From<String> for Error {
    fn from(message: String) -> Error {
        Error::Failed(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Error {
        Error::Failed(message.to_owned())
    }
}

/// The error of a whole call, as it crosses to the host: a bad record is named
/// by its index in the call's batch.
#[doc(hidden)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// Record `index` is at fault.
    BadRecord {
        /// Its index in the batch.
        index: u32,
        /// Why.
        reason: String,
    },
    /// Retry the batch after a backoff.
    Transient(String),
    /// Try again, then the stage's policy.
    Failed(String),
}

impl From<String> for CallError {
    fn from(message: String) -> CallError {
        CallError::Failed(message)
    }
}

impl CallError {
    /// The error as the plugin's code raised it (the index dropped).
    pub fn into_error(self) -> Error {
        match self {
            CallError::BadRecord { reason, .. } => Error::BadRecord(reason),
            CallError::Transient(m) => Error::Transient(m),
            CallError::Failed(m) => Error::Failed(m),
        }
    }
}
