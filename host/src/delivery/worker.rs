//! The delivery worker: the delivery's [`Operator`] in the stage driver,
//! which reads the source's shards (parents before children). It buffers
//! what it is handed per shard, applies the buffering rule, plans each batch,
//! transforms it and writes its backup and rows objects, then hands it to
//! the loader, which loads it and checkpoints the source (the driver's own
//! checkpoint records nothing: a position is durable once its batch loaded).

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use super::lake::{Rows, RowsWriter, Shared, error_entry};
use super::loader::{Loader, Staged};
use super::plans::PendingError;
use super::{Clock, Interrupted};
use crate::lake::object_prefix;
use crate::manifest::{DeliverySpec, ErrorPolicy};
use crate::plugin::{Batch, Outcome, PluginError, Transformed, TransformerInstance, TransformerPlugin};
use crate::stage::Outputs;
use crate::stage::bisect::{BISECT_BUDGET, FailedBatch, Part, Parts, Settle};
use crate::stage::driver::{PLUGIN_TRIES, Reading};
use crate::stage::{BatchError, Driver, Operator, StageStats};
use crate::stream::{StoredRecord, kpl};
use crate::swap::{CommandReply, StageCommand};
use crate::warehouse::{ParsedRows, Warehouse};

/// Records per read of the source.
const READ_BATCH: usize = 10_000;
/// Records per call into the transform plugin.
const TRANSFORM_BATCH: usize = 500;

pub struct Worker {
    shared: Arc<Shared>,
    transform: Option<TransformerPlugin>,
    warehouse: Option<Box<dyn Warehouse>>,
    clock: Clock,
    /// The driver's counters (its phase and last error join the delivery's status).
    driver: Arc<StageStats>,
}

/// The delivery in the driver's loop: buffers, stages, hands to the loader.
struct DeliveryOperator {
    shared: Arc<Shared>,
    transform: Option<TransformerPlugin>,
    instance: Option<TransformerInstance>,
    clock: Clock,
    to_loader: SyncSender<Staged>,
    shards: BTreeMap<u32, ShardBuffer>,
    /// The driver's counters: the transform's call times and failures go there.
    stats: Arc<StageStats>,
}

/// What one shard of the source has buffered for delivery.
struct ShardBuffer {
    /// The position after the last record buffered: a batch redone by the
    /// driver is not buffered twice.
    next: u64,
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
        driver: Arc<StageStats>,
    ) -> Worker {
        Worker { shared, transform, warehouse, clock, driver }
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
        let shared = self.shared.clone();
        let reading = Reading {
            input: shared.source_stream.clone(),
            consumer: shared.consumer.clone(),
            batch_size: READ_BATCH,
            // The operator buffers by its own thresholds.
            batch_wait: Duration::ZERO,
            // A step that fails (a plan not written) waits and is retried.
            on_error: ErrorPolicy::DeadLetter,
            // The operator reports no plugin failures: its transform's go to the error prefix.
            failed_batch: FailedBatch::Whole,
            // The operator buffers stored records (its plans count them) and takes
            // KPL aggregates apart when it stages a batch.
            deaggregate: false,
        };
        let operator = DeliveryOperator {
            shared: shared.clone(),
            transform: self.transform.take(),
            instance: None,
            clock: self.clock.clone(),
            // Dropped with the driver: the loader then finishes what it was handed.
            to_loader,
            shards: BTreeMap::new(),
            stats: self.driver.clone(),
        };
        Driver::new(reading, shared.source.clone(), self.driver.clone(), operator)
            .draining_with(shared.draining.clone())
            .run_here();
        if loader.join().is_err() {
            tracing::error!("the delivery's loader panicked");
        }
    }
}

impl Operator for DeliveryOperator {
    fn open(&mut self) -> Result<Option<Vec<u64>>, String> {
        // The source's consumer checkpoints, written by the loader.
        Ok(None)
    }

    fn shard_added(&mut self, shard: u32, position: u64) -> Result<(), BatchError> {
        let planned = self.shared.plans.pending(shard, position).map_err(|e| {
            self.shared.note_error(e.to_string());
            match e {
                PendingError::Unreadable(e) => BatchError::Fatal(e),
                PendingError::Unavailable(e) => BatchError::Unavailable(e),
            }
        })?;
        self.shards.insert(shard, ShardBuffer { next: position, records: Vec::new(), bytes: 0, planned });
        Ok(())
    }

    fn shard_finished(&mut self, shard: u32) -> Result<(), BatchError> {
        // A parent's records are staged (and checkpointed) before its children's.
        self.stage_due(shard, Due::ShardRead)
    }

    fn process(&mut self, records: &[StoredRecord]) -> Result<(), BatchError> {
        let Some(shard) = records.first().map(|r| r.shard) else { return Ok(()) };
        let buf = self.shards.entry(shard).or_insert_with(|| ShardBuffer::at(records[0].sequence));
        let fresh = &records[records.partition_point(|r| r.sequence < buf.next)..];
        if let Some(last) = fresh.last() {
            buf.next = last.sequence + 1;
            buf.bytes += fresh.iter().map(|r| r.data.len() as u64).sum::<u64>();
            buf.records.extend_from_slice(fresh);
        }
        // A full read means more is waiting: a backlog goes out in batches of
        // the size threshold (one load and commit each), not one per read.
        let backlog = (records.len() >= READ_BATCH).then_some(shard);
        self.stage_all_due(backlog)
    }

    fn idle(&mut self) -> Result<bool, BatchError> {
        // Nothing in the buffers has been checkpointed here: the loader does it.
        self.stage_all_due(None).map(|()| false)
    }

    /// With its plans on this host's disk the delivery stays here; with them on
    /// the cluster it runs on one host at a time and moves when that host stops
    /// renewing it (its plans and checkpoints are fenced by its lease).
    fn sharing(&self) -> crate::stream::Sharing {
        if self.shared.plans.is_shared() { crate::stream::Sharing::Single } else { crate::stream::Sharing::Whole }
    }

    fn checkpoint(&mut self, _positions: &[u64], _shard: Option<u32>) -> Result<(), String> {
        // Read is not delivered: the loader checkpoints each batch once it is loaded.
        Ok(())
    }

    fn command(&mut self, _command: StageCommand) -> CommandReply {
        Err(format!("delivery `{}`: its transform is not hot-swapped", self.shared.spec.name))
    }

    fn close(&mut self) -> Result<(), String> {
        // Draining: everything buffered goes, whatever its size or age.
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        for shard in shards {
            match self.stage_due(shard, Due::ShardRead) {
                Ok(()) | Err(BatchError::Interrupted) => {}
                Err(e) => return Err(format!("{}; the rest is delivered at the next start", e.message())),
            }
        }
        Ok(())
    }
}

impl DeliveryOperator {
    /// Stages what the buffering rule says is due, in every shard; only
    /// full-size batches of a `backlog` shard (one with more to read).
    fn stage_all_due(&mut self, backlog: Option<u32>) -> Result<(), BatchError> {
        let due = if self.shared.draining.load(Ordering::Relaxed) { Due::Draining } else { Due::Thresholds };
        let shards: Vec<u32> = self.shards.keys().copied().collect();
        let result = shards
            .into_iter()
            .try_for_each(|shard| self.stage_due(shard, if backlog == Some(shard) { Due::Size } else { due }));
        let stats = &self.shared.stats;
        stats.records_buffered.store(self.shards.values().map(|s| s.records.len() as u64).sum(), Ordering::Relaxed);
        stats.bytes_buffered.store(self.shards.values().map(|s| s.bytes).sum(), Ordering::Relaxed);
        let oldest = self.shards.values().filter_map(|s| s.records.first()).map(|r| r.arrival_ms).min();
        stats.oldest_buffered_ms.store(oldest.map_or(0, |ms| ms.max(1) as u64), Ordering::Relaxed);
        result
    }

    /// Stages one shard's batches while they are `due`.
    fn stage_due(&mut self, shard: u32, due: Due) -> Result<(), BatchError> {
        let shared = self.shared.clone();
        loop {
            let now = (self.clock)();
            let Some(buf) = self.shards.get_mut(&shard) else { return Ok(()) };
            if !buf.is_due(buf.age(now), due, &shared.spec) {
                return Ok(());
            }
            if let Some(&(first, last)) = buf.planned.front()
                && buf.next <= last
            {
                // The shard was read to its end short of a batch planned before a restart:
                // the rest of its records are gone (expired). What is left is staged as
                // it is, under the bounds of what is left.
                tracing::warn!(
                    shard,
                    first,
                    last,
                    read_to = buf.next,
                    "a planned batch is staged short: the rest of its records expired"
                );
            }
            let take = match buf.planned.front() {
                Some(&(_, last)) => buf.records.iter().take_while(|r| r.sequence <= last).count(),
                None => batch_end(&buf.records, shared.spec.buffer_bytes),
            };
            if take == 0 {
                // A plan of records already delivered: nothing to redo.
                buf.planned.pop_front();
                continue;
            }
            let (first, last) = (buf.records[0].sequence, buf.records[take - 1].sequence);
            if let Err(e) = shared.plans.write(shard, first, last) {
                // Without its plan a batch redone after a crash could get other bounds (and
                // keys): it waits in the buffer until the plan can be written.
                let message = format!("cannot record the delivery plan of records {first} to {last}: {e}");
                shared.note_error(message.clone());
                return Err(BatchError::Effect(message));
            }
            buf.planned.pop_front();
            let batch: Vec<StoredRecord> = buf.records.drain(..take).collect();
            buf.bytes -= batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
            let Ok(ready) = self.stage(shard, &batch) else {
                tracing::warn!(shard, first, last, "shutdown interrupted a delivery; it is redone at the next start");
                return Err(BatchError::Interrupted);
            };
            if self.to_loader.send(ready).is_err() {
                return Err(BatchError::Interrupted); // the loader stopped: a shutdown interrupted it
            }
        }
    }

    /// Transforms a batch and writes its backup and rows objects.
    fn stage(&mut self, shard: u32, batch: &[StoredRecord]) -> Result<Staged, Interrupted> {
        let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
        // Named by shard and sequence range: the same delivery always has the same keys.
        let name = format!("{}-{shard:06}-{first:020}-{last:020}", self.shared.spec.name);
        self.stage_as(shard, batch, name, true)
    }

    /// [`DeliveryOperator::stage`], its objects named `name`; with `backup`, its raw backup too.
    fn stage_as(
        &mut self,
        shard: u32,
        batch: &[StoredRecord],
        name: String,
        backup: bool,
    ) -> Result<Staged, Interrupted> {
        let shared = self.shared.clone();
        let spec = &shared.spec;
        let mut errors: Vec<serde_json::Value> = Vec::new();
        // KPL aggregates are delivered as their user records; a broken one goes under the error prefix.
        let records = unpack(batch, &mut errors);
        shared.stats.records_in.fetch_add((records.len() + errors.len()) as u64, Ordering::Relaxed);
        // Rows are usually a few times larger than the records they come from.
        let input_bytes: usize = records.iter().map(|r| r.data.len()).sum();
        let mut rows = RowsWriter::with_capacity(records.len(), input_bytes * 4);
        // Records whose rows are in `rows`, to list under the error prefix if the rows cannot be written.
        let mut transformed: Vec<&StoredRecord> = Vec::new();
        let mut out =
            Transforming { rows: &mut rows, transformed: &mut transformed, errors: &mut errors, batch_bytes: 0 };
        for chunk in records.chunks(TRANSFORM_BATCH) {
            self.transform_chunk(chunk, &mut out);
        }
        let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
        let at = batch[0].arrival_ms;
        let extension = if spec.gzip { ".gz" } else { "" };
        if let Some(backup) = spec.backup_prefix.as_ref().filter(|_| backup) {
            let mut raw = Vec::new();
            for r in batch {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            let key = format!("{}{name}{extension}", object_prefix(backup, at, None));
            if let Err(failure) = shared.put(&key, raw.into())? {
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
            match shared.put(&key, rows.bytes.clone())? {
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

    /// Runs the transform over a chunk (as it is without a transform) into `out`.
    /// A chunk the plugin fails on is settled ([`bisect`](crate::stage::bisect))
    /// unless the transform's `failed-batch` is `whole`: only the records it fails
    /// on alone go to the error prefix.
    fn transform_chunk<'a>(&mut self, chunk: &'a [StoredRecord], out: &mut Transforming<'_, 'a>) {
        let Some(transform) = &self.shared.spec.transform else {
            for r in chunk {
                out.rows.push(&r.data);
            }
            out.transformed.extend(chunk);
            return;
        };
        let settle = Settle { how: transform.failed_batch, tries: PLUGIN_TRIES, budget: BISECT_BUDGET };
        let failure = match self.transform(chunk) {
            Ok(t) => return out.add(&self.shared.spec, chunk, &t),
            Err(e) if e.fails_the_batch() && settle.how == FailedBatch::Bisect && chunk.len() > 1 => e,
            Err(e) => return out.give_up(chunk, &format!("Transform.{}", e.code()), &e.to_string()),
        };
        tracing::warn!(error = %failure, records = chunk.len(), "the transform failed on a chunk; it is tried in halves");
        let message = failure.to_string();
        let mut parts = TransformParts { operator: self, chunk, out, code: failure.code() };
        match settle.run(&mut parts, chunk.len(), message) {
            Ok(()) => {}
            Err(never) => match never {},
        }
    }

    /// Runs the transform over some records. A plugin that failed is replaced
    /// before the next call; a failure it calls transient is tried again after a
    /// backoff, [`PLUGIN_TRIES`] times in all (as Firehose retries its transform).
    fn transform(&mut self, chunk: &[StoredRecord]) -> Result<Transformed, PluginError> {
        let Some(plugin) = self.transform.as_ref() else {
            return Err(PluginError::Contract("the delivery has no transform".to_owned()));
        };
        let mut batch = Batch::with_capacity(chunk.len(), chunk.iter().map(|r| r.data.len()).sum());
        for r in chunk {
            batch.push_with_attributes(&r.key, r.event_time_ms, &r.data, &r.attributes);
        }
        let mut tries = 0;
        let result = loop {
            tries += 1;
            let instance = match self.instance.take() {
                Some(i) => Ok(i),
                None => plugin.instantiate(),
            };
            let result = instance.and_then(|mut i| {
                let r = self.stats.plugin_call(|| i.transform(&batch));
                if !matches!(&r, Err(e) if e.poisons_instance()) {
                    self.instance = Some(i);
                }
                r
            });
            match result {
                Err(PluginError::Transient(e)) if tries < PLUGIN_TRIES => {
                    tracing::warn!(error = %e, tries, "the transform reported a transient failure; it is tried again");
                    std::thread::sleep(crate::stage::backoff_delay(tries + 1));
                }
                other => break other,
            }
        };
        if let Err(e) = &result {
            tracing::error!(error_code = e.code(), records = chunk.len(), "the transform failed");
            self.shared.note_error(e.to_string());
        }
        result
    }
}

/// Stages records from the error area again (a redrive) under `name`: through
/// the transform, into the lake; the caller loads them. Nothing is buffered,
/// planned or checkpointed: the delivery's reading goes on as it was.
pub(super) fn stage_again(
    shared: Arc<Shared>,
    transform: Option<TransformerPlugin>,
    stats: Arc<StageStats>,
    records: &[StoredRecord],
    name: String,
) -> Result<Staged, Interrupted> {
    // Not used: the caller loads the batch itself.
    let (to_loader, _) = std::sync::mpsc::sync_channel(0);
    let clock = crate::stream::system_clock();
    let mut operator =
        DeliveryOperator { shared, transform, instance: None, clock, to_loader, shards: BTreeMap::new(), stats };
    // Their backup was written when they first came, or is listed on its own (`Lake.BackupFailed`).
    operator.stage_as(0, records, name, false)
}

/// A batch with its KPL aggregates taken apart into their user records (as it is
/// when it holds none); a broken aggregate is listed in `errors` (`KPL.Corrupt`).
fn unpack<'a>(batch: &'a [StoredRecord], errors: &mut Vec<serde_json::Value>) -> std::borrow::Cow<'a, [StoredRecord]> {
    if !batch.iter().any(|r| r.data.starts_with(&kpl::MAGIC)) {
        return std::borrow::Cow::Borrowed(batch);
    }
    let mut out = Vec::with_capacity(batch.len());
    for record in batch {
        match kpl::contents(record) {
            kpl::Contents::Plain => out.push(record.clone()),
            kpl::Contents::Aggregated(users) => out.extend(users),
            kpl::Contents::Corrupt(reason) => errors.push(error_entry(record, "KPL.Corrupt", &reason, 1)),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// What a batch's transform has given so far: rows, the records they came
/// from, and error entries for the error prefix.
struct Transforming<'o, 'a> {
    rows: &'o mut RowsWriter,
    /// Records whose rows are in `rows`, to list under the error prefix if the rows cannot be written.
    transformed: &'o mut Vec<&'a StoredRecord>,
    errors: &'o mut Vec<serde_json::Value>,
    /// Output bytes so far, for `limits.output-batch-size`.
    batch_bytes: u64,
}

impl<'a> Transforming<'_, 'a> {
    /// Adds what the transform made of `chunk`. A record whose outputs break
    /// the transform's output limits goes to the error prefix
    /// (`Transform.OutputLimit`), and none of its outputs is written.
    fn add(&mut self, spec: &DeliverySpec, chunk: &'a [StoredRecord], t: &Transformed) {
        let limits = spec.transform.as_ref().map(|t| t.output_limits).unwrap_or_default();
        for (i, outcome, outputs) in t.per_record() {
            match outcome {
                Outcome::Ok(_) => {
                    let given = Outputs::of(outputs.iter().map(|o| o.payload.len()));
                    if let Err(reason) = given.check(&limits, &mut self.batch_bytes) {
                        self.errors.push(error_entry(&chunk[i], "Transform.OutputLimit", &reason, 1));
                        continue;
                    }
                    for o in outputs.iter() {
                        self.rows.push(o.payload);
                    }
                    self.transformed.push(&chunk[i]);
                }
                Outcome::Dropped => {}
                Outcome::ProcessingFailed(reason) => {
                    self.errors.push(error_entry(&chunk[i], "Transform.ProcessingFailed", reason, 1));
                }
            }
        }
    }

    /// Lists records the transform failed on under the error prefix.
    fn give_up(&mut self, records: &[StoredRecord], code: &str, reason: &str) {
        self.errors.extend(records.iter().map(|r| error_entry(r, code, reason, 1)));
    }
}

/// A chunk the transform failed on, settled part by part.
struct TransformParts<'w, 'o, 'a> {
    operator: &'w mut DeliveryOperator,
    chunk: &'a [StoredRecord],
    out: &'w mut Transforming<'o, 'a>,
    /// The code of the last failure, for the error prefix.
    code: &'static str,
}

impl Parts for TransformParts<'_, '_, '_> {
    type Stop = std::convert::Infallible;

    fn attempt(&mut self, part: Range<usize>) -> Result<Part, Self::Stop> {
        let records = &self.chunk[part];
        match self.operator.transform(records) {
            Ok(t) => {
                self.out.add(&self.operator.shared.spec, records, &t);
                Ok(Part::Done)
            }
            Err(e) => {
                self.code = e.code();
                Ok(Part::Failed(e.to_string()))
            }
        }
    }

    fn give_up(&mut self, part: Range<usize>, reason: &str) -> Result<(), Self::Stop> {
        self.out.give_up(&self.chunk[part], &format!("Transform.{}", self.code), reason);
        Ok(())
    }

    fn before_retry(&mut self, failures: u32) {
        std::thread::sleep(crate::stage::backoff_delay(failures));
    }

    fn hurry(&self) -> bool {
        self.operator.shared.draining.load(Ordering::Relaxed)
    }
}

impl ShardBuffer {
    /// An empty buffer reading from `position`, with nothing planned.
    fn at(position: u64) -> ShardBuffer {
        ShardBuffer { next: position, records: Vec::new(), bytes: 0, planned: VecDeque::new() }
    }

    /// How long the oldest buffered record has waited at `now_ms`.
    fn age(&self, now_ms: i64) -> Duration {
        self.records
            .first()
            .map_or(Duration::ZERO, |r| Duration::from_millis(now_ms.saturating_sub(r.arrival_ms).max(0) as u64))
    }

    /// The buffering rule: deliver when the size or the age threshold is
    /// reached, whichever first, and everything when draining. A batch planned
    /// before a crash goes as soon as all of it is buffered, with its bounds,
    /// even when draining (the driver reads on until the input's end); only a
    /// shard read to its end lets it go short.
    fn is_due(&self, age: Duration, due: Due, spec: &DeliverySpec) -> bool {
        if self.records.is_empty() {
            return false;
        }
        if let Some(&(_, last)) = self.planned.front() {
            return self.next > last || due == Due::ShardRead;
        }
        match due {
            Due::Size => self.bytes >= spec.buffer_bytes,
            Due::Thresholds => self.bytes >= spec.buffer_bytes || age >= spec.buffer_interval,
            Due::Draining | Due::ShardRead => true,
        }
    }
}

/// Why a shard's buffer is looked at: what may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// Batches that reached the size or age threshold.
    Thresholds,
    /// More is waiting in the shard (a read came back full): only batches
    /// that reached the size threshold; the age threshold waits for the rest.
    Size,
    /// Shutting down: everything buffered, but a planned batch only whole.
    Draining,
    /// The shard was read to its end (finished by resharding, or drained): everything.
    ShardRead,
}

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn spec() -> DeliverySpec {
        DeliverySpec {
            buffer_bytes: 100,
            buffer_interval: Duration::from_millis(10),
            ..crate::delivery::tests::spec(Path::new("lake"))
        }
    }

    /// A buffer holding records `from..to` of shard 0, with `planned` from before a restart.
    fn buffer(from: u64, to: u64, planned: &[(u64, u64)]) -> ShardBuffer {
        let records: Vec<StoredRecord> = (from..to)
            .map(|sequence| StoredRecord {
                shard: 0,
                sequence,
                key: String::new(),
                event_time_ms: 0,
                arrival_ms: 0,
                data: bytes::Bytes::from_static(b"0123456789"),
                source: None,
                attributes: Vec::new(),
            })
            .collect();
        ShardBuffer { next: to, bytes: records.len() as u64 * 10, records, planned: planned.iter().copied().collect() }
    }

    #[test]
    fn a_planned_batch_goes_only_whole_unless_its_shard_was_read_to_the_end() {
        let spec = spec();
        let old = Duration::from_secs(3600);
        // Records 0..5 of a batch planned as 0..=9: the rest is still to be read.
        let partial = buffer(0, 5, &[(0, 9)]);
        assert!(!partial.is_due(old, Due::Thresholds, &spec), "thresholds do not cut a planned batch");
        assert!(!partial.is_due(old, Due::Draining, &spec), "nor does a drain that is still reading");
        assert!(partial.is_due(old, Due::ShardRead, &spec), "a shard read to its end has no more of it");
        let whole = buffer(0, 10, &[(0, 9)]);
        assert!(whole.is_due(Duration::ZERO, Due::Thresholds, &spec), "a whole planned batch goes at once");
        // Without a plan: size or age, and everything when draining.
        let fresh = buffer(0, 1, &[]);
        assert!(!fresh.is_due(Duration::ZERO, Due::Thresholds, &spec));
        assert!(fresh.is_due(old, Due::Thresholds, &spec));
        assert!(fresh.is_due(Duration::ZERO, Due::Draining, &spec));
        // With more to read, only a full-size batch goes, however old.
        assert!(!fresh.is_due(old, Due::Size, &spec), "a backlog is not cut by age");
        assert!(buffer(0, 10, &[]).is_due(Duration::ZERO, Due::Size, &spec));
    }
}
