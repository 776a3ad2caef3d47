//! How the disk store words its failures: I/O errors, and damage in its files
//! with the file and offset.

use std::path::Path;

use crate::StreamError;

pub(super) fn io_failed(stream: &str, what: &str, e: &std::io::Error) -> StreamError {
    StreamError::Failed { stream: stream.to_owned(), reason: format!("{what}: {e}") }
}

pub(super) fn corrupt(path: &Path, offset: u64, reason: String) -> StreamError {
    StreamError::Corrupt { file: path.display().to_string(), offset, reason }
}
