//! The delivery loader: takes staged batches from the worker in order, loads
//! their rows into the warehouse (retrying for its retry duration), writes
//! the errors object, then checkpoints the source and forgets the plan. A
//! batch is checkpointed only once all of it is somewhere: in the lake, in
//! the table, or under the error prefix.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use super::lake::{MAX_RETRY_DELAY, Rows, Shared};
use super::{Interrupted, object_prefix};
use crate::stream::now_ms;
use crate::warehouse::{Row, Warehouse, parse_rows};

/// A batch whose objects are written, on its way to the warehouse and the checkpoint.
pub struct Staged {
    pub shard: u32,
    pub first: u64,
    pub last: u64,
    /// Arrival of its first record: the time partition of its keys.
    pub at: i64,
    /// `<delivery>-<shard>-<first>-<last>`, the name of its objects.
    pub name: String,
    /// Its rows, when a warehouse loads them...
    pub rows: Rows,
    /// ...and their cells, unless the loader reads them (see the worker).
    pub parsed: Vec<Row>,
    /// The rows object, if it was written.
    pub staged_key: Option<String>,
    /// Records delivered to the lake.
    pub delivered: u64,
    /// Error entries so far (transform failures, lake failures).
    pub errors: Vec<serde_json::Value>,
}

pub struct Loader {
    shared: Arc<Shared>,
    /// Connected on first use if the database was down at start.
    warehouse: Option<Box<dyn Warehouse>>,
}

impl Loader {
    pub fn new(shared: Arc<Shared>, warehouse: Option<Box<dyn Warehouse>>) -> Loader {
        Loader { shared, warehouse }
    }

    /// Finishes every staged batch in order until the worker stops.
    pub fn run(mut self, staged: Receiver<Staged>) {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the delivery loader's runtime");
                return;
            }
        };
        for batch in staged {
            let (shard, first, last) = (batch.shard, batch.first, batch.last);
            if self.finish(&runtime, batch).is_err() {
                tracing::warn!(shard, first, last, "shutdown interrupted a delivery; it is redone at the next start");
                return; // the worker sees the channel close and stops too
            }
        }
    }

    fn finish(&mut self, runtime: &tokio::runtime::Runtime, batch: Staged) -> Result<(), Interrupted> {
        let shared = self.shared.clone();
        let mut errors = batch.errors;
        if let Some(key) = &batch.staged_key
            && shared.spec.warehouse.is_some()
        {
            errors.extend(self.load(key, &batch.rows, &batch.parsed, batch.at)?);
        }
        if !errors.is_empty() {
            let mut body = Vec::new();
            for e in &errors {
                body.extend_from_slice(e.to_string().as_bytes());
                body.push(b'\n');
            }
            let prefix = object_prefix(&shared.spec.error_prefix, batch.at, Some("processing-failed"));
            let extension = if shared.spec.gzip { ".gz" } else { "" };
            shared.put_until_written(runtime, &format!("{prefix}{}.errors{extension}", batch.name), body)?;
        }
        shared.stats.records_delivered.fetch_add(batch.delivered, Ordering::Relaxed);
        shared.stats.records_failed.fetch_add(errors.len() as u64, Ordering::Relaxed);
        let next = batch.last + 1;
        if let Err(e) = shared.source.checkpoint(&shared.source_stream, batch.shard, &shared.consumer, next) {
            tracing::error!(error = %e, "checkpoint failed");
        }
        shared.plans.remove(batch.shard, batch.first);
        Ok(())
    }

    /// Loads a staged rows object into the warehouse, retrying for the retry
    /// duration. Returns the error entries of the rows the table refused; if
    /// the load itself failed for good, the staged object is listed under the
    /// error prefix instead.
    fn load(
        &mut self,
        staged_key: &str,
        rows: &Rows,
        parsed: &[Row],
        at: i64,
    ) -> Result<Vec<serde_json::Value>, Interrupted> {
        let shared = self.shared.clone();
        let Some(spec) = &shared.spec.warehouse else { return Ok(Vec::new()) };
        let lines = rows.lines();
        let parsed_here;
        let parsed = if parsed.len() == lines.len() {
            parsed
        } else {
            parsed_here = parse_rows(&lines, &spec.columns);
            &parsed_here
        };
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0u32;
        let failure = loop {
            attempts += 1;
            let result = match self.warehouse.as_mut() {
                Some(w) => w.load(staged_key, parsed),
                None => crate::warehouse::connect(spec).and_then(|w| self.warehouse.insert(w).load(staged_key, parsed)),
            };
            match result {
                Ok(loaded) => {
                    if loaded.already_loaded {
                        tracing::info!(staged_key, "staged object was loaded before the restart; not loaded again");
                    }
                    shared.stats.rows_loaded.fetch_add(loaded.rows, Ordering::Relaxed);
                    shared.stats.rows_rejected.fetch_add(loaded.rejected.len() as u64, Ordering::Relaxed);
                    let now = now_ms();
                    return Ok(loaded
                        .rejected
                        .iter()
                        .map(|(i, reason)| {
                            json!({
                                "attemptsMade": attempts,
                                "arrivalTimestamp": at,
                                "errorCode": "Warehouse.RowRejected",
                                "errorMessage": format!("table `{}` refused the row: {reason}", spec.table),
                                "attemptEndingTimestamp": now,
                                "rawData": base64::engine::general_purpose::STANDARD.encode(lines[*i]),
                                "stagedObject": staged_key,
                            })
                        })
                        .collect());
                }
                Err(e) => {
                    shared.note_error(format!("loading `{staged_key}`: {e}"));
                    if shared.draining.load(Ordering::Relaxed) && e.is_retryable() {
                        return Err(Interrupted);
                    }
                    if !e.is_retryable() || started.elapsed() + delay > spec.retry_duration {
                        break e;
                    }
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "warehouse load failed");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        };
        tracing::error!(error = %failure, attempts, "staged object not loaded; listed under the error prefix");
        shared.stats.loads_failed.fetch_add(1, Ordering::Relaxed);
        Ok(vec![json!({
            "attemptsMade": attempts,
            "arrivalTimestamp": at,
            "errorCode": failure.code(),
            "errorMessage": failure.to_string(),
            "attemptEndingTimestamp": now_ms(),
            "stagedObject": staged_key,
            "table": spec.table,
            "rows": lines.len(),
        })])
    }
}
