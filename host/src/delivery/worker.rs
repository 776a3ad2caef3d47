//! The delivery worker: reads the source's shards (parents before children),
//! applies the buffering rule, plans each batch, transforms it and writes its
//! backup and rows objects, then hands it to the loader.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use super::lake::{Rows, RowsWriter, Shared, error_entry};
use super::loader::{Loader, Staged};
use super::{Clock, Interrupted, object_prefix};
use crate::manifest::DeliverySpec;
use crate::plugin::{Batch, Outcome, PluginError, Transformed, TransformerInstance, TransformerPlugin};
use crate::stream::{StoredRecord, StreamError};
use crate::warehouse::{ParsedRows, Warehouse};

/// Records per read of the source.
const READ_BATCH: usize = 10_000;
/// Records per call into the transform plugin.
const TRANSFORM_BATCH: usize = 500;

pub struct Worker {
    shared: Arc<Shared>,
    transform: Option<TransformerPlugin>,
    instance: Option<TransformerInstance>,
    warehouse: Option<Box<dyn Warehouse>>,
    clock: Clock,
}

/// What one shard of the source has buffered for delivery.
struct ShardBuffer {
    /// Next position to stage (everything before is staged or checkpointed).
    position: u64,
    records: Vec<StoredRecord>,
    bytes: u64,
    /// Batches planned before a crash, to redo with the same bounds first.
    planned: VecDeque<(u64, u64)>,
}

impl Worker {
    pub fn new(
        shared: Arc<Shared>,
        transform: Option<TransformerPlugin>,
        warehouse: Option<Box<dyn Warehouse>>,
        clock: Clock,
    ) -> Worker {
        Worker { shared, transform, instance: None, warehouse, clock }
    }

    /// Runs until drained (or interrupted by a shutdown), with the loader beside it.
    pub fn run(mut self) {
        let span = tracing::info_span!("delivery", delivery = %self.shared.spec.name);
        let _enter = span.enter();
        // One batch waits for the loader while the loader's lanes work on theirs: bounded memory.
        let (to_loader, from_worker) = std::sync::mpsc::sync_channel::<Staged>(1);
        let loader = Loader::new(self.shared.clone(), self.warehouse.take());
        let loader_span = span.clone();
        let loader = std::thread::Builder::new()
            .name(format!("delivery-load-{}", self.shared.spec.name))
            .spawn(move || loader_span.in_scope(|| loader.run(from_worker)));
        let loader = match loader {
            Ok(thread) => thread,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the delivery's loader");
                return;
            }
        };
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => self.deliver_all(&runtime, &to_loader),
            Err(e) => tracing::error!(error = %e, "cannot start the delivery's runtime"),
        }
        // The loader finishes what it was handed, then stops.
        drop(to_loader);
        if loader.join().is_err() {
            tracing::error!("the delivery's loader panicked");
        }
    }

    fn deliver_all(&mut self, runtime: &tokio::runtime::Runtime, to_loader: &SyncSender<Staged>) {
        let shared = self.shared.clone();
        let (source, stream, spec) = (&shared.source, &shared.source_stream, &shared.spec);
        let mut shards: Vec<ShardBuffer> = Vec::new();
        loop {
            let seen = source.changes(stream).unwrap_or(0);
            let lineage = match source.lineage(stream) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the delivery's source");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            // Shards opened by resharding join in; planned deliveries are redone first.
            while shards.len() < lineage.len() {
                let shard = shards.len() as u32;
                match source.register_consumer(stream, shard, &shared.consumer) {
                    Ok(position) => {
                        let planned = shared.plans.pending(shard, position);
                        shards.push(ShardBuffer { position, records: Vec::new(), bytes: 0, planned });
                    }
                    Err(e) => {
                        // Never a guessed position: wait and ask again.
                        shared.note_error(format!("cannot read the delivery's source: {e}"));
                        tracing::error!(error = %e, "cannot read the delivery's source; trying again");
                        if shared.draining.load(Ordering::Relaxed) {
                            return;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                        break;
                    }
                }
            }
            if shards.len() < lineage.len() {
                continue;
            }
            let draining = shared.draining.load(Ordering::Relaxed);
            let mut staged = false;
            let mut wait = Duration::from_millis(100);
            let mut left = false;
            for k in 0..shards.len() {
                // A parent's records are staged (and checkpointed) before its children's.
                let positions: Vec<u64> = shards.iter().map(|s| s.position).collect();
                if !crate::stream::parents_finished(&lineage, &positions, k) {
                    left = true;
                    continue;
                }
                let shard = k as u32;
                let buf = &mut shards[k];
                // Whatever is available, up to the size threshold: a backlog
                // goes out in full-size batches (one load and commit each).
                let mut read = Ok(());
                while buf.bytes < spec.buffer_bytes {
                    let next = buf.records.last().map_or(buf.position, |r| r.sequence + 1);
                    match source.read(stream, shard, next, READ_BATCH) {
                        Ok(records) => {
                            let full = records.len() == READ_BATCH;
                            buf.bytes += records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                            buf.records.extend(records);
                            if !full {
                                break;
                            }
                        }
                        Err(e) => {
                            read = Err(e);
                            break;
                        }
                    }
                }
                match read {
                    Ok(()) => {}
                    Err(StreamError::Trimmed { oldest, .. }) => {
                        tracing::warn!(expired = oldest - buf.position, "records expired before delivery");
                        *buf =
                            ShardBuffer { position: oldest, records: Vec::new(), bytes: 0, planned: VecDeque::new() };
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the delivery's source");
                        continue;
                    }
                }
                let age = buf.age((self.clock)());
                if !buf.is_due(age, draining, spec) {
                    left |= !buf.records.is_empty();
                    wait = wait.min(spec.buffer_interval.saturating_sub(age));
                    continue;
                }
                let take = match buf.planned.pop_front() {
                    Some((_, last)) => buf.records.iter().take_while(|r| r.sequence <= last).count(),
                    None => batch_end(&buf.records, spec.buffer_bytes),
                };
                let batch: Vec<StoredRecord> = buf.records.drain(..take).collect();
                buf.bytes -= batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else { continue };
                let (first, last) = (first.sequence, last.sequence);
                if let Err(e) = shared.plans.write(shard, first, last) {
                    // Without its plan a batch redone after a crash could get other bounds (and
                    // keys): it waits, back in the buffer, until the plan can be written.
                    let message = format!("cannot record the delivery plan of records {first} to {last}: {e}");
                    tracing::error!(error = %message, "the batch waits until its plan can be written");
                    shared.note_error(message);
                    let buf = &mut shards[k];
                    buf.bytes += batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                    buf.records.splice(0..0, batch);
                    if draining {
                        return;
                    }
                    std::thread::sleep(PLAN_RETRY);
                    left = true;
                    continue;
                }
                let Ok(ready) = self.stage(runtime, shard, &batch) else {
                    tracing::warn!(
                        shard,
                        first,
                        last,
                        "shutdown interrupted a delivery; it is redone at the next start"
                    );
                    return;
                };
                if to_loader.send(ready).is_err() {
                    return; // the loader stopped: a shutdown interrupted it
                }
                shards[k].position = last + 1;
                staged = true;
            }
            let buffered = shards.iter().map(|s| s.records.len() as u64).sum();
            shared.stats.records_buffered.store(buffered, Ordering::Relaxed);
            if staged {
                continue;
            }
            if draining && !left {
                return;
            }
            let _ = source.wait_change(stream, seen, wait.max(Duration::from_millis(1)));
        }
    }

    /// Transforms a batch and writes its backup and rows objects.
    fn stage(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        shard: u32,
        batch: &[StoredRecord],
    ) -> Result<Staged, Interrupted> {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        shared.stats.records_in.fetch_add(batch.len() as u64, Ordering::Relaxed);
        // Rows are usually a few times larger than the records they come from.
        let input_bytes: usize = batch.iter().map(|r| r.data.len()).sum();
        let mut rows = RowsWriter::with_capacity(batch.len(), input_bytes * 4);
        // Records whose rows are in `rows`, to list under the error prefix if the rows cannot be written.
        let mut transformed: Vec<&StoredRecord> = Vec::new();
        let mut errors: Vec<serde_json::Value> = Vec::new();
        for chunk in batch.chunks(TRANSFORM_BATCH) {
            match self.transform(chunk) {
                None => {
                    for r in chunk {
                        rows.push(&r.data);
                    }
                    transformed.extend(chunk);
                }
                Some(Ok(t)) => {
                    for (i, outcome, outputs) in t.per_record() {
                        match outcome {
                            Outcome::Ok(_) => {
                                for o in outputs {
                                    rows.push(o.payload);
                                }
                                transformed.push(&chunk[i]);
                            }
                            Outcome::Dropped => {}
                            Outcome::ProcessingFailed(reason) => {
                                errors.push(error_entry(&chunk[i], "Transform.ProcessingFailed", reason, 1));
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    let reason = e.to_string();
                    let code = format!("Transform.{}", e.code());
                    errors.extend(chunk.iter().map(|r| error_entry(r, &code, &reason, 1)));
                }
            }
        }
        let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
        let at = batch[0].arrival_ms;
        // Named by shard and sequence range: the same delivery always has the same keys.
        let name = format!("{}-{shard:06}-{first:020}-{last:020}", spec.name);
        let extension = if spec.gzip { ".gz" } else { "" };
        if let Some(backup) = &spec.backup_prefix {
            let mut raw = Vec::new();
            for r in batch {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            let key = format!("{}{name}{extension}", object_prefix(backup, at, None));
            if let Err(failure) = shared.put(runtime, &key, raw.into())? {
                errors.extend(
                    batch.iter().map(|r| error_entry(r, "Lake.BackupFailed", &failure.message, failure.attempts)),
                );
            }
        }
        let mut delivered = transformed.len() as u64;
        let mut staged_key = None;
        let rows = rows.finish();
        if !rows.is_empty() {
            let key = format!("{}{name}{extension}", object_prefix(&spec.prefix, at, None));
            match shared.put(runtime, &key, rows.bytes.clone())? {
                Ok(()) => staged_key = Some(key),
                Err(failure) => {
                    delivered = 0;
                    errors.extend(
                        transformed
                            .iter()
                            .map(|r| error_entry(r, "Lake.WriteFailed", &failure.message, failure.attempts)),
                    );
                }
            }
        }
        // The rows are read into cells here, while the loader loads the previous batch.
        let (rows, parsed) = match (&spec.warehouse, &staged_key) {
            (Some(w), Some(_)) => {
                let parsed = ParsedRows::parse(&rows.lines(), &w.columns);
                (rows, parsed)
            }
            // Nothing to load: the loader only needs the bounds.
            _ => (Rows::default(), ParsedRows::default()),
        };
        Ok(Staged { shard, first, last, at, name, rows, parsed, staged_key, delivered, errors })
    }

    /// Runs the transform over a chunk (`None` without a transform). A plugin
    /// that failed is replaced before the next chunk.
    fn transform(&mut self, chunk: &[StoredRecord]) -> Option<Result<Transformed, PluginError>> {
        let plugin = self.transform.as_ref()?;
        let mut batch = Batch::with_capacity(chunk.len(), chunk.iter().map(|r| r.data.len()).sum());
        for r in chunk {
            batch.push(&r.key, r.event_time_ms, &r.data);
        }
        let instance = match self.instance.take() {
            Some(i) => Ok(i),
            None => plugin.instantiate(),
        };
        let result = instance.and_then(|mut i| {
            let r = i.transform(&batch);
            if !matches!(&r, Err(e) if e.poisons_instance()) {
                self.instance = Some(i);
            }
            r
        });
        if let Err(e) = &result {
            tracing::error!(
                error_code = e.code(),
                records = chunk.len(),
                "transform failed; its records go to the error prefix"
            );
            self.shared.note_error(e.to_string());
        }
        Some(result)
    }
}

impl ShardBuffer {
    /// How long the oldest buffered record has waited at `now_ms`.
    fn age(&self, now_ms: i64) -> Duration {
        self.records
            .first()
            .map_or(Duration::ZERO, |r| Duration::from_millis(now_ms.saturating_sub(r.arrival_ms).max(0) as u64))
    }

    /// The buffering rule: deliver when the size or the age threshold is
    /// reached, whichever first, and everything when draining.
    fn is_due(&self, age: Duration, draining: bool, spec: &DeliverySpec) -> bool {
        !self.records.is_empty()
            && (!self.planned.is_empty() || draining || self.bytes >= spec.buffer_bytes || age >= spec.buffer_interval)
    }
}

/// How long a batch whose plan could not be written waits before another try.
const PLAN_RETRY: Duration = Duration::from_secs(1);

/// How many buffered records one delivery takes: up to the size threshold.
fn batch_end(records: &[StoredRecord], limit: u64) -> usize {
    let mut bytes = 0u64;
    let mut n = 0;
    for r in records {
        if n > 0 && bytes + r.data.len() as u64 > limit {
            break;
        }
        bytes += r.data.len() as u64;
        n += 1;
    }
    n
}
