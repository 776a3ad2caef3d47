//! What the worker and the loader of a delivery share, and the lake writes
//! both make: retried with backoff for the delivery's retry duration (or,
//! under the error prefix, until written, as there is nowhere else to go).

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;

use super::plans::Plans;
use super::{DeliveryStats, Interrupted};
use crate::manifest::DeliverySpec;
use crate::stream::{StoredRecord, StreamStore, now_ms};

/// Longest wait between retries of a failed write or load.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// The settings, stores and counters of one delivery stream.
pub struct Shared {
    pub spec: Arc<DeliverySpec>,
    pub lake: crate::lake::Lake,
    pub stats: Arc<DeliveryStats>,
    pub draining: Arc<AtomicBool>,
    /// Where records come from: the delivery's own buffer, or a weir stream.
    pub source: Arc<dyn StreamStore>,
    /// The stream in `source` to read.
    pub source_stream: String,
    /// The consumer name in `source`.
    pub consumer: String,
    pub plans: Plans,
}

/// An object not written within the retry duration.
pub struct WriteFailure {
    pub attempts: u32,
    pub message: String,
}

impl Shared {
    /// Writes an object, retrying with backoff for the retry duration. The
    /// inner error says why it was not written.
    pub fn put(&self, key: &str, body: Bytes) -> Result<Result<(), WriteFailure>, Interrupted> {
        self.write(key, body, Some(self.spec.retry_duration))
    }

    /// Writes an object under the error prefix: retried until written.
    pub fn put_until_written(&self, key: &str, body: Bytes) -> Result<(), Interrupted> {
        self.write(key, body, None).map(|_| ())
    }

    fn write(
        &self,
        key: &str,
        body: Bytes,
        retry_for: Option<Duration>,
    ) -> Result<Result<(), WriteFailure>, Interrupted> {
        let bytes = if self.spec.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            match gz.write_all(&body).and_then(|()| gz.finish()) {
                Ok(compressed) => Bytes::from(compressed),
                Err(e) => {
                    tracing::error!(error = %e, "gzip failed; writing uncompressed");
                    body
                }
            }
        } else {
            body
        };
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = Instant::now();
            let written = match crate::io::block_on(self.lake.put(key, bytes.clone())) {
                Ok(result) => result.map_err(|e| e.to_string()),
                Err(e) => Err(format!("cannot start the I/O runtime: {e}")),
            };
            match written {
                Ok(_) => {
                    self.stats.objects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        key,
                        bytes = bytes.len(),
                        elapsed_ms = attempt.elapsed().as_millis() as u64,
                        "object delivered"
                    );
                    return Ok(Ok(()));
                }
                Err(e) => {
                    self.note_error(format!("writing `{key}`: {e}"));
                    if self.draining.load(Ordering::Relaxed) {
                        return Err(Interrupted);
                    }
                    if retry_for.is_some_and(|limit| started.elapsed() + delay > limit) {
                        return Ok(Err(WriteFailure { attempts, message: e.to_string() }));
                    }
                    tracing::error!(key, error = %e, retry_in_ms = delay.as_millis() as u64, "writing to the lake failed");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    /// Keeps the most recent failure for the status.
    pub fn note_error(&self, message: String) {
        if let Ok(mut l) = self.stats.last_error.lock() {
            *l = Some(message);
        }
    }
}

/// A failed record as Firehose writes it under the error prefix.
pub fn error_entry(r: &StoredRecord, code: &str, message: &str, attempts: u32) -> serde_json::Value {
    json!({
        "attemptsMade": attempts,
        "arrivalTimestamp": r.arrival_ms,
        "errorCode": code,
        "errorMessage": message,
        "attemptEndingTimestamp": now_ms(),
        "rawData": base64::engine::general_purpose::STANDARD.encode(&r.data),
        "sequenceNumber": r.sequence.to_string(),
    })
}

/// A batch's rows as the worker writes them: newline-delimited, and where each ends.
#[derive(Default)]
pub struct RowsWriter {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl RowsWriter {
    /// Room for `rows` rows of `bytes` in all (an estimate: reserved, not touched).
    pub fn with_capacity(rows: usize, bytes: usize) -> RowsWriter {
        RowsWriter { bytes: Vec::with_capacity(bytes), ends: Vec::with_capacity(rows) }
    }

    pub fn push(&mut self, row: &[u8]) {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
        self.bytes.push(b'\n');
    }

    pub fn finish(self) -> Rows {
        Rows { bytes: Bytes::from(self.bytes), ends: self.ends }
    }
}

/// A batch's rows: the body of its rows object (shared with the loader, not copied).
#[derive(Default)]
pub struct Rows {
    pub bytes: Bytes,
    ends: Vec<usize>,
}

impl Rows {
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Row `i`, without its newline.
    pub fn line(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            i => self.ends[i - 1] + 1,
        };
        &self.bytes[start..self.ends[i]]
    }

    pub fn lines(&self) -> Vec<&[u8]> {
        (0..self.len()).map(|i| self.line(i)).collect()
    }
}
