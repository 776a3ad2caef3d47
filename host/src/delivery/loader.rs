//! The delivery loader: takes staged batches from the worker, loads their
//! rows into the warehouse (retrying for its retry duration), writes the
//! errors object, then checkpoints the source and forgets the plan. A batch
//! is checkpointed only once all of it is somewhere: in the lake, in the
//! table, or under the error prefix.
//!
//! Into PostgreSQL two batches load at once, on two connections: one `COPY`
//! keeps one server process busy, and the server has more cores than that.
//! They may commit out of order (the ledger makes each load happen once);
//! checkpoints and plans still advance in the order the batches were staged,
//! so a restart never skips a batch nor re-stages one that was loaded.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use super::Interrupted;
use super::lake::{MAX_RETRY_DELAY, Rows, Shared};
use crate::lake::object_prefix;
use crate::stream::{StreamError, now_ms};
use crate::warehouse::{ParsedRows, Warehouse};

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
    /// ...and their cells.
    pub parsed: ParsedRows,
    /// The rows object, if it was written.
    pub staged_key: Option<String>,
    /// Records delivered to the lake.
    pub delivered: u64,
    /// Error entries so far (transform failures, lake failures).
    pub errors: Vec<serde_json::Value>,
}

/// Batches finished out of order, by ticket, waiting for the ones before them.
/// Lanes check batches in and take them out under one lock, and a batch leaves
/// only once its checkpoint is written: checkpoints are written one at a time,
/// in staged order, never past a batch whose checkpoint failed.
#[derive(Default)]
struct InOrder {
    /// The ticket of the next batch to checkpoint.
    next: u64,
    /// Finished batches from it on: (shard, first, last).
    done: BTreeMap<u64, (u32, u64, u64)>,
}

impl InOrder {
    /// Records batch `ticket` as finished.
    fn finished(&mut self, ticket: u64, batch: (u32, u64, u64)) {
        self.done.insert(ticket, batch);
    }

    /// The next batch to checkpoint, if it is finished (none while an earlier one is unfinished).
    fn front(&self) -> Option<(u32, u64, u64)> {
        self.done.get(&self.next).copied()
    }

    /// The front batch is checkpointed: the one after it comes next.
    fn checkpointed(&mut self) {
        self.done.remove(&self.next);
        self.next += 1;
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
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

    /// Finishes every staged batch until the worker stops, on as many lanes as
    /// the database takes loads at once.
    pub fn run(self, staged: Receiver<Staged>) {
        let lanes = self.shared.spec.warehouse.as_ref().map_or(1, |w| w.load_lanes());
        let queue = Mutex::new((staged, 0u64));
        let order = Mutex::new(InOrder::default());
        let stop = AtomicBool::new(false);
        let shared = self.shared.clone();
        let mut loaders = vec![self];
        loaders.extend((1..lanes).map(|_| Loader::new(shared.clone(), None)));
        std::thread::scope(|scope| {
            for (lane, mut loader) in loaders.into_iter().enumerate() {
                let (queue, order, stop, span) = (&queue, &order, &stop, tracing::Span::current());
                let spawned = std::thread::Builder::new()
                    .name(format!("delivery-load-{}-{lane}", shared.spec.name))
                    .spawn_scoped(scope, move || span.in_scope(|| loader.lane(queue, order, stop)));
                if let Err(e) = spawned {
                    tracing::error!(error = %e, "cannot start a delivery loader lane");
                }
            }
        });
    }

    /// One lane: takes the next staged batch, finishes it, and hands it to the
    /// in-order checkpoint; until the worker stops or a shutdown interrupts.
    fn lane(&mut self, queue: &Mutex<(Receiver<Staged>, u64)>, order: &Mutex<InOrder>, stop: &AtomicBool) {
        // However this lane ends (a shutdown, a panic), the other lanes stop
        // too: checkpoints could not pass its batch, so theirs would pile up.
        let _stop_all = StopOnDrop(stop);
        while !stop.load(Ordering::Relaxed) {
            let (ticket, batch) = {
                let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                let Ok(batch) = queue.0.recv() else { return };
                queue.1 += 1;
                (queue.1 - 1, batch)
            };
            if stop.load(Ordering::Relaxed) {
                return; // planned, so redone at the next start
            }
            let (shard, first, last) = (batch.shard, batch.first, batch.last);
            if self.finish(batch).is_err() {
                tracing::warn!(shard, first, last, "shutdown interrupted a delivery; it is redone at the next start");
                return; // the worker sees the channel close and stops too
            }
            // Checkpoints are written under the lock: two lanes writing theirs at once
            // could leave the earlier position last on disk, and a restart would then
            // stage the batches after it again, with other bounds and keys.
            let mut in_order = order.lock().unwrap_or_else(|p| p.into_inner());
            in_order.finished(ticket, (shard, first, last));
            while let Some((shard, first, last)) = in_order.front() {
                let mut delay = Duration::from_millis(200);
                let mut lost = false;
                while let Err(e) =
                    self.shared.source.checkpoint(&self.shared.source_stream, shard, &self.shared.consumer, last + 1)
                {
                    if let StreamError::LeaseLost { .. } = e {
                        // The host that took the delivery redoes the batch from its plan (kept);
                        // the warehouse's ledger loads it once.
                        tracing::warn!(shard, first, last, "another host took the delivery over; it redoes this batch");
                        lost = true;
                        break;
                    }
                    self.shared.note_error(format!("writing the checkpoint after records {first} to {last}: {e}"));
                    tracing::error!(error = %e, "checkpoint failed; trying again");
                    if stop.load(Ordering::Relaxed) {
                        return; // the batch stays planned: redone at the next start
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                // The plan goes only once the checkpoint is written: until then a restart
                // redoes the batch with the same bounds, so the ledger loads it once.
                if !lost {
                    self.shared.plans.remove(shard, first);
                }
                in_order.checkpointed();
            }
        }
    }

    /// Loads a batch and writes its errors object; the caller checkpoints it.
    /// Returns how many error entries it wrote.
    pub(super) fn finish(&mut self, batch: Staged) -> Result<usize, Interrupted> {
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
            let key = format!("{prefix}{}.errors{extension}", batch.name);
            shared.put_until_written(&key, body.into())?;
        }
        shared.stats.records_delivered.fetch_add(batch.delivered, Ordering::Relaxed);
        shared.stats.records_failed.fetch_add(errors.len() as u64, Ordering::Relaxed);
        Ok(errors.len())
    }

    /// Loads a staged rows object into the warehouse, retrying for the retry
    /// duration. Returns the error entries of the rows the table refused; if
    /// the load itself failed for good, the staged object is listed under the
    /// error prefix instead.
    fn load(
        &mut self,
        staged_key: &str,
        rows: &Rows,
        parsed: &ParsedRows,
        at: i64,
    ) -> Result<Vec<serde_json::Value>, Interrupted> {
        let shared = self.shared.clone();
        let Some(spec) = &shared.spec.warehouse else { return Ok(Vec::new()) };
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
                    shared.stats.rows_duplicate.fetch_add(loaded.duplicates, Ordering::Relaxed);
                    if loaded.duplicates > 0 {
                        tracing::debug!(
                            staged_key,
                            duplicates = loaded.duplicates,
                            "rows already in the table skipped"
                        );
                    }
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
                                "rawData": base64::engine::general_purpose::STANDARD.encode(rows.line(*i)),
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
                    shared.stats.retries.fetch_add(1, Ordering::Relaxed);
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
            "rows": rows.len(),
        })])
    }
}

#[cfg(test)]
mod tests {
    use super::InOrder;

    #[test]
    fn batches_are_checkpointed_in_staged_order_whatever_order_they_finish_in() {
        // Checks finished batches out while the front one is finished, as a lane does.
        fn take(order: &mut InOrder) -> Vec<(u32, u64, u64)> {
            let mut ready = Vec::new();
            while let Some(batch) = order.front() {
                ready.push(batch);
                order.checkpointed();
            }
            ready
        }
        let mut order = InOrder::default();
        order.finished(1, (0, 10, 19));
        assert_eq!(take(&mut order), vec![], "batch 0 is not finished");
        order.finished(2, (1, 0, 9));
        order.finished(0, (0, 0, 9));
        assert_eq!(take(&mut order), vec![(0, 0, 9), (0, 10, 19), (1, 0, 9)]);
        order.finished(4, (0, 30, 39));
        assert_eq!(take(&mut order), vec![], "a gap: batch 3 is still loading");
        order.finished(3, (0, 20, 29));
        assert_eq!(take(&mut order), vec![(0, 20, 29), (0, 30, 39)]);
    }

    #[test]
    fn a_batch_whose_checkpoint_failed_stays_in_front() {
        let mut order = InOrder::default();
        order.finished(0, (0, 0, 9));
        order.finished(1, (0, 10, 19));
        // The lane stopped before checkpointing batch 0: nothing after it may go first.
        assert_eq!(order.front(), Some((0, 0, 9)));
        order.finished(2, (0, 20, 29));
        assert_eq!(order.front(), Some((0, 0, 9)));
    }
}
