//! Delivery streams (as Kinesis Data Firehose): records put directly are kept
//! in a durable buffer stream, then delivered in batches, by size or age
//! whichever comes first, as objects in the lake, optionally transformed by a
//! plugin. Records the transform fails, or that a failing plugin could not
//! process, are written under the error prefix with the reason. A delivery is
//! acknowledged to the buffer (checkpointed) only after its objects are
//! written; its boundaries are planned durably first, so a delivery retried
//! after a crash writes the same keys again instead of new ones.
//!
//! With a warehouse, the rows object is the staged object: once written, its
//! rows are bulk-loaded (see [`crate::warehouse`]), exactly once thanks to the
//! warehouse's ledger. Writes and loads are retried with backoff for their
//! retry durations; past them the records (or the staged object) are listed
//! under the error prefix. Nothing is dropped: a delivery interrupted by a
//! shutdown is redone at the next start.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use object_store::ObjectStoreExt as _;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use serde::Serialize;
use serde_json::json;

use crate::manifest::DeliverySpec;
use crate::plugin::{Batch, Outcome, PluginError, TransformerInstance, TransformerPlugin};
use crate::stream::{StoredRecord, StreamError, StreamStore, now_ms};
use crate::warehouse::{Warehouse, WarehouseError};

/// The time in milliseconds since the epoch; injected so tests control buffering ages.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// The buffer stream's consumer name.
const CONSUMER: &str = "delivery";
/// Records per call into the transform plugin.
const TRANSFORM_BATCH: usize = 500;
/// Longest wait between retries of a failed object write.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Counters of a delivery stream.
#[derive(Debug, Default)]
pub struct DeliveryStats {
    records_in: AtomicU64,
    records_delivered: AtomicU64,
    records_failed: AtomicU64,
    objects: AtomicU64,
    records_buffered: AtomicU64,
    rows_loaded: AtomicU64,
    rows_rejected: AtomicU64,
    loads_failed: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `GET /v1/pipeline` shows of a delivery stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryStatus {
    /// Its name.
    pub name: String,
    /// Records taken from its buffer.
    pub records_in: u64,
    /// Records written to the lake.
    pub records_delivered: u64,
    /// Records written under the error prefix.
    pub records_failed: u64,
    /// Objects written.
    pub objects: u64,
    /// Records read from the source and waiting for their delivery.
    pub records_buffered: u64,
    /// Rows loaded into the warehouse.
    pub rows_loaded: u64,
    /// Rows the warehouse table refused (listed under the error prefix).
    pub rows_rejected: u64,
    /// Staged objects not loaded within the retry duration (listed under the error prefix).
    pub loads_failed: u64,
    /// The most recent failure.
    pub last_error: Option<String>,
}

/// A running delivery stream.
pub struct Delivery {
    /// Its settings.
    pub spec: Arc<DeliverySpec>,
    stats: Arc<DeliveryStats>,
    draining: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Delivery {
    /// Starts delivering: from the delivery's own buffer stream in `source`
    /// (named like the delivery), or from the weir stream the spec names.
    pub fn start(
        spec: DeliverySpec,
        source: Arc<dyn StreamStore>,
        transform: Option<TransformerPlugin>,
        state_dir: PathBuf,
    ) -> Result<Delivery, DeliveryError> {
        Self::start_with_clock(spec, source, transform, state_dir, Arc::new(now_ms))
    }

    /// [`Delivery::start`] with the clock that decides when a buffer is old enough.
    pub fn start_with_clock(
        spec: DeliverySpec,
        source: Arc<dyn StreamStore>,
        transform: Option<TransformerPlugin>,
        state_dir: PathBuf,
        clock: Clock,
    ) -> Result<Delivery, DeliveryError> {
        // A table that does not fit is a configuration error; a database that
        // is down is not: loads wait for it.
        let warehouse = match &spec.warehouse {
            None => None,
            Some(w) => match crate::warehouse::connect(w) {
                Ok(w) => Some(w),
                Err(e) if e.is_retryable() => {
                    tracing::warn!(delivery = %spec.name, error = %e, "warehouse unavailable; loads will retry");
                    None
                }
                Err(e) => return Err(DeliveryError::Warehouse(spec.name.to_string(), e)),
            },
        };
        std::fs::create_dir_all(&spec.lake)
            .map_err(|e| DeliveryError::Lake(spec.lake.display().to_string(), e.to_string()))?;
        let lake = LocalFileSystem::new_with_prefix(&spec.lake)
            .map_err(|e| DeliveryError::Lake(spec.lake.display().to_string(), e.to_string()))?;
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| DeliveryError::Lake(state_dir.display().to_string(), e.to_string()))?;
        let spec = Arc::new(spec);
        let stats = Arc::new(DeliveryStats::default());
        let draining = Arc::new(AtomicBool::new(false));
        let (source_stream, consumer) = match &spec.source_stream {
            Some(stream) => (stream.to_string(), format!("delivery-{}", spec.name)),
            None => (spec.name.to_string(), CONSUMER.to_owned()),
        };
        let worker = Worker {
            spec: spec.clone(),
            source,
            source_stream,
            consumer,
            transform,
            instance: None,
            warehouse,
            clock,
            lake: Arc::new(lake),
            state_dir,
            stats: stats.clone(),
            draining: draining.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(format!("delivery-{}", spec.name))
            .spawn(move || worker.run())
            .map_err(|e| DeliveryError::Lake(String::new(), e.to_string()))?;
        Ok(Delivery { spec, stats, draining, thread: Mutex::new(Some(thread)) })
    }

    /// Its counters.
    pub fn status(&self) -> DeliveryStatus {
        let s = &self.stats;
        DeliveryStatus {
            name: self.spec.name.to_string(),
            records_in: s.records_in.load(Ordering::Relaxed),
            records_delivered: s.records_delivered.load(Ordering::Relaxed),
            records_failed: s.records_failed.load(Ordering::Relaxed),
            objects: s.objects.load(Ordering::Relaxed),
            records_buffered: s.records_buffered.load(Ordering::Relaxed),
            rows_loaded: s.rows_loaded.load(Ordering::Relaxed),
            rows_rejected: s.rows_rejected.load(Ordering::Relaxed),
            loads_failed: s.loads_failed.load(Ordering::Relaxed),
            last_error: s.last_error.lock().ok().and_then(|l| l.clone()),
        }
    }

    /// Delivers everything buffered, whatever its size or age, then stops.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take())
            && thread.join().is_err()
        {
            tracing::error!(delivery = %self.spec.name, "delivery thread panicked");
        }
    }
}

/// Why a delivery stream could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The lake directory is not usable.
    #[error("lake `{0}` is not usable: {1}")]
    Lake(String, String),
    /// The warehouse table does not fit the manifest.
    #[error("delivery `{0}`: {1}")]
    Warehouse(String, WarehouseError),
}

/// A delivery stopped by a shutdown before it finished; it is redone at the next start.
struct Interrupted;

struct Worker {
    spec: Arc<DeliverySpec>,
    /// Where records come from: the delivery's own buffer, or a weir stream.
    source: Arc<dyn StreamStore>,
    /// The stream in `source` to read.
    source_stream: String,
    /// The consumer name in `source`.
    consumer: String,
    transform: Option<TransformerPlugin>,
    instance: Option<TransformerInstance>,
    /// Connected on first use if the database was down at start.
    warehouse: Option<Box<dyn Warehouse>>,
    clock: Clock,
    lake: Arc<LocalFileSystem>,
    state_dir: PathBuf,
    stats: Arc<DeliveryStats>,
    draining: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let span = tracing::info_span!("delivery", delivery = %self.spec.name);
        let _enter = span.enter();
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the delivery's runtime");
                return;
            }
        };
        let stream = self.source_stream.clone();
        let mut shards: Vec<ShardBuffer> = Vec::new();
        loop {
            let seen = self.source.changes(&stream).unwrap_or(0);
            let lineage = match self.source.lineage(&stream) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the delivery's source");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            };
            // Shards opened by resharding join in; a planned delivery is redone first.
            while shards.len() < lineage.len() {
                let shard = shards.len() as u32;
                match self.source.register_consumer(&stream, shard, &self.consumer) {
                    Ok(position) => {
                        let planned = self.read_plan(shard).filter(|(first, _)| *first == position);
                        shards.push(ShardBuffer { position, records: Vec::new(), bytes: 0, planned });
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the delivery's source");
                        return;
                    }
                }
            }
            let draining = self.draining.load(Ordering::Relaxed);
            let mut delivered = false;
            let mut wait = Duration::from_millis(100);
            let mut left = false;
            for k in 0..shards.len() {
                // A parent's records are delivered before its children's.
                let parents_done = lineage[k]
                    .parents
                    .iter()
                    .all(|&p| lineage[p as usize].closed_at.is_some_and(|end| shards[p as usize].position >= end));
                if !parents_done {
                    left = true;
                    continue;
                }
                let shard = k as u32;
                let buf = &mut shards[k];
                let next = buf.records.last().map_or(buf.position, |r| r.sequence + 1);
                match self.source.read(&stream, shard, next, 10_000) {
                    Ok(records) => {
                        buf.bytes += records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                        buf.records.extend(records);
                    }
                    Err(StreamError::Trimmed { oldest, .. }) => {
                        tracing::warn!(expired = oldest - buf.position, "records expired before delivery");
                        *buf = ShardBuffer { position: oldest, records: Vec::new(), bytes: 0, planned: None };
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "cannot read the delivery's source");
                        continue;
                    }
                }
                let age = buf.age((self.clock)());
                if !buf.is_due(age, draining, &self.spec) {
                    left |= !buf.records.is_empty();
                    wait = wait.min(self.spec.buffer_interval.saturating_sub(age));
                    continue;
                }
                let take = match buf.planned.take() {
                    Some((_, last)) => buf.records.iter().take_while(|r| r.sequence <= last).count(),
                    None => batch_end(&buf.records, self.spec.buffer_bytes),
                };
                let batch: Vec<StoredRecord> = buf.records.drain(..take).collect();
                buf.bytes -= batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else { continue };
                let (first, last) = (first.sequence, last.sequence);
                self.write_plan(shard, first, last);
                if self.deliver(&runtime, shard, &batch).is_err() {
                    tracing::warn!(
                        shard,
                        first,
                        last,
                        "shutdown interrupted a delivery; it is redone at the next start"
                    );
                    return;
                }
                shards[k].position = last + 1;
                if let Err(e) = self.source.checkpoint(&stream, shard, &self.consumer, last + 1) {
                    tracing::error!(error = %e, "checkpoint failed");
                }
                let _ = std::fs::remove_file(self.plan_file(shard));
                delivered = true;
            }
            let buffered = shards.iter().map(|s| s.records.len() as u64).sum();
            self.stats.records_buffered.store(buffered, Ordering::Relaxed);
            if delivered {
                continue;
            }
            if draining && !left {
                return;
            }
            let _ = self.source.wait_change(&stream, seen, wait.max(Duration::from_millis(1)));
        }
    }

    fn plan_file(&self, shard: u32) -> PathBuf {
        self.state_dir.join(format!("{}.{shard}.plan", self.spec.name))
    }

    fn read_plan(&self, shard: u32) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(self.plan_file(shard)).ok()?;
        let (first, last) = text.trim().split_once(' ')?;
        Some((first.parse().ok()?, last.parse().ok()?))
    }

    fn write_plan(&self, shard: u32, first: u64, last: u64) {
        let plan = self.plan_file(shard);
        let tmp = plan.with_extension("tmp");
        let result = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{first} {last}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &plan));
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record the delivery plan");
        }
    }

    /// Transforms and writes one delivery: its backup, its rows object (loaded
    /// into the warehouse if there is one) and its errors object.
    fn deliver(
        &mut self,
        runtime: &tokio::runtime::Runtime,
        shard: u32,
        batch: &[StoredRecord],
    ) -> Result<(), Interrupted> {
        self.stats.records_in.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut rows = Rows::default();
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
        let name = format!("{}-{shard:06}-{first:020}-{last:020}", self.spec.name);
        let extension = if self.spec.gzip { ".gz" } else { "" };
        if let Some(backup) = &self.spec.backup_prefix {
            let mut raw = Vec::new();
            for r in batch {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            let key = format!("{}{name}{extension}", object_prefix(backup, at, None));
            if let Err(failure) = self.put(runtime, &key, raw)? {
                errors.extend(
                    batch.iter().map(|r| error_entry(r, "Lake.BackupFailed", &failure.message, failure.attempts)),
                );
            }
        }
        let mut delivered = transformed.len() as u64;
        if !rows.is_empty() {
            let key = format!("{}{name}{extension}", object_prefix(&self.spec.prefix, at, None));
            match self.put(runtime, &key, rows.bytes.clone())? {
                Ok(()) => {
                    if self.spec.warehouse.is_some() {
                        errors.extend(self.load(&key, &rows, at)?);
                    }
                }
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
        if !errors.is_empty() {
            let mut body = Vec::new();
            for e in &errors {
                body.extend_from_slice(e.to_string().as_bytes());
                body.push(b'\n');
            }
            let prefix = object_prefix(&self.spec.error_prefix, at, Some("processing-failed"));
            self.put_until_written(runtime, &format!("{prefix}{name}.errors{extension}"), body)?;
        }
        self.stats.records_delivered.fetch_add(delivered, Ordering::Relaxed);
        self.stats.records_failed.fetch_add(errors.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Loads a staged rows object into the warehouse, retrying for the retry
    /// duration. Returns the error entries of the rows the table refused; if
    /// the load itself failed for good, the staged object is listed under the
    /// error prefix instead.
    fn load(&mut self, staged_key: &str, rows: &Rows, at: i64) -> Result<Vec<serde_json::Value>, Interrupted> {
        let Some(spec) = self.spec.warehouse.clone() else { return Ok(Vec::new()) };
        let lines = rows.lines();
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0u32;
        let failure = loop {
            attempts += 1;
            let result = match self.warehouse.as_mut() {
                Some(w) => w.load(staged_key, &lines),
                None => {
                    crate::warehouse::connect(&spec).and_then(|w| self.warehouse.insert(w).load(staged_key, &lines))
                }
            };
            match result {
                Ok(loaded) => {
                    if loaded.already_loaded {
                        tracing::info!(staged_key, "staged object was loaded before the restart; not loaded again");
                    }
                    self.stats.rows_loaded.fetch_add(loaded.rows, Ordering::Relaxed);
                    self.stats.rows_rejected.fetch_add(loaded.rejected.len() as u64, Ordering::Relaxed);
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
                    self.note_error(format!("loading `{staged_key}`: {e}"));
                    if self.draining.load(Ordering::Relaxed) && e.is_retryable() {
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
        self.stats.loads_failed.fetch_add(1, Ordering::Relaxed);
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

    /// Runs the transform over a chunk (`None` without a transform). A plugin
    /// that failed is replaced before the next chunk.
    fn transform(&mut self, chunk: &[StoredRecord]) -> Option<Result<crate::plugin::Transformed, PluginError>> {
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
            self.note_error(e.to_string());
        }
        Some(result)
    }

    /// Writes an object, retrying with backoff for the retry duration. The
    /// inner error says why it was not written.
    fn put(
        &self,
        runtime: &tokio::runtime::Runtime,
        key: &str,
        body: Vec<u8>,
    ) -> Result<Result<(), WriteFailure>, Interrupted> {
        self.write(runtime, key, body, Some(self.spec.retry_duration))
    }

    /// Writes an object under the error prefix: retried until written, as
    /// there is nowhere else to put it.
    fn put_until_written(
        &self,
        runtime: &tokio::runtime::Runtime,
        key: &str,
        body: Vec<u8>,
    ) -> Result<(), Interrupted> {
        self.write(runtime, key, body, None).map(|_| ())
    }

    fn write(
        &self,
        runtime: &tokio::runtime::Runtime,
        key: &str,
        body: Vec<u8>,
        retry_for: Option<Duration>,
    ) -> Result<Result<(), WriteFailure>, Interrupted> {
        let payload = if self.spec.gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            match gz.write_all(&body).and_then(|()| gz.finish()) {
                Ok(compressed) => compressed,
                Err(e) => {
                    tracing::error!(error = %e, "gzip failed; writing uncompressed");
                    body
                }
            }
        } else {
            body
        };
        let path = ObjectPath::from(key);
        let bytes = Bytes::from(payload);
        let started = Instant::now();
        let mut delay = Duration::from_millis(200);
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let attempt = Instant::now();
            match runtime.block_on(self.lake.put(&path, bytes.clone().into())) {
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
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }

    fn note_error(&self, message: String) {
        if let Ok(mut l) = self.stats.last_error.lock() {
            *l = Some(message);
        }
    }
}

/// An object not written within the retry duration.
struct WriteFailure {
    attempts: u32,
    message: String,
}

/// Newline-delimited rows, and where each ends.
#[derive(Default)]
struct Rows {
    bytes: Vec<u8>,
    ends: Vec<usize>,
}

impl Rows {
    fn push(&mut self, row: &[u8]) {
        self.bytes.extend_from_slice(row);
        self.ends.push(self.bytes.len());
        self.bytes.push(b'\n');
    }

    fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn lines(&self) -> Vec<&[u8]> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let line = &self.bytes[start..end];
                start = end + 1;
                line
            })
            .collect()
    }
}

/// A failed record as Firehose writes it under the error prefix.
fn error_entry(r: &StoredRecord, code: &str, message: &str, attempts: u32) -> serde_json::Value {
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

/// What one shard of the source has buffered for delivery.
struct ShardBuffer {
    /// Next position to deliver (everything before is checkpointed).
    position: u64,
    records: Vec<StoredRecord>,
    bytes: u64,
    /// A delivery planned before a crash, to redo with the same bounds.
    planned: Option<(u64, u64)>,
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
            && (self.planned.is_some() || draining || self.bytes >= spec.buffer_bytes || age >= spec.buffer_interval)
    }
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

/// The key prefix of an object delivered at `ms` (UTC). A prefix without
/// expressions gets `YYYY/MM/DD/HH/` appended, as in Firehose; one with
/// expressions is expanded instead: `!{timestamp:PATTERN}` (tokens `yyyy`,
/// `MM`, `dd`, `HH`, `mm`, `ss`; anything else is literal) and
/// `!{firehose:error-output-type}`. Only deterministic expressions exist, so a
/// redone delivery gets the same keys.
pub fn object_prefix(prefix: &str, ms: i64, error_type: Option<&str>) -> String {
    // RFC 3339: 2026-11-26T14:03:12.345Z
    let t = crate::sink::format_ms(ms);
    let (year, month, day, hour, minute, second) = (&t[0..4], &t[5..7], &t[8..10], &t[11..13], &t[14..16], &t[17..19]);
    if !prefix.contains("!{") {
        return format!("{prefix}{year}/{month}/{day}/{hour}/");
    }
    let mut out = String::new();
    let mut rest = prefix;
    while let Some(start) = rest.find("!{") {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}') else {
            out.push_str(&rest[start..]);
            return out;
        };
        let expression = &rest[start + 2..start + end];
        match expression.split_once(':') {
            Some(("timestamp", pattern)) => {
                out.push_str(
                    &pattern
                        .replace("yyyy", year)
                        .replace("MM", month)
                        .replace("dd", day)
                        .replace("HH", hour)
                        .replace("mm", minute)
                        .replace("ss", second),
                );
            }
            Some(("firehose", "error-output-type")) => out.push_str(error_type.unwrap_or("")),
            _ => out.push_str(&rest[start..=start + end]),
        }
        rest = &rest[start + end + 1..];
    }
    out.push_str(rest);
    out
}

/// Checks the expressions of a prefix; the error says what is allowed.
pub fn check_prefix(prefix: &str) -> Result<(), String> {
    let mut rest = prefix;
    while let Some(start) = rest.find("!{") {
        let Some(end) = rest[start..].find('}') else {
            return Err(format!("`{}` is not closed with `}}`", &rest[start..]));
        };
        let expression = &rest[start + 2..start + end];
        match expression.split_once(':') {
            Some(("timestamp", pattern)) if !pattern.is_empty() => {}
            Some(("firehose", "error-output-type")) => {}
            _ => {
                return Err(format!(
                    "`!{{{expression}}}` is not supported: use !{{timestamp:yyyy/MM/dd/HH}} (tokens yyyy MM dd HH mm ss) or !{{firehose:error-output-type}}"
                ));
            }
        }
        rest = &rest[start + end + 1..];
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Name;
    use crate::stream::{DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy, NewRecord};

    fn spec(lake: &std::path::Path) -> DeliverySpec {
        DeliverySpec {
            name: Name::parse("d").expect("name"),
            transform: None,
            buffer_bytes: 1 << 20,
            buffer_interval: Duration::from_secs(900),
            lake: lake.to_owned(),
            prefix: String::new(),
            error_prefix: "errors/".into(),
            backup_prefix: None,
            source_stream: None,
            gzip: false,
            retry_duration: Duration::from_secs(60),
            warehouse: None,
        }
    }

    fn store(dir: &std::path::Path) -> Arc<dyn StreamStore> {
        Arc::new(
            DiskStreams::open(
                &dir.join("buffers"),
                &[DiskStreamSpec::new("d", 1000, FsyncPolicy::Never)],
                Arc::new(FileSyncer),
            )
            .expect("open"),
        )
    }

    fn records(n: usize, size: usize) -> Vec<NewRecord> {
        (0..n)
            .map(|i| NewRecord {
                key: String::new(),
                event_time_ms: None,
                data: Bytes::from(format!("{i:0size$}")),
                explicit_hash_key: None,
            })
            .collect()
    }

    fn wait_for(delivery: &Delivery, what: &str, check: impl Fn(&DeliveryStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check(&delivery.status()) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {:?}", delivery.status());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn buffers_are_delivered_at_the_size_threshold_or_at_the_interval_whichever_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let buffers = store(dir.path());
        let mut spec = spec(&dir.path().join("lake"));
        spec.buffer_bytes = 1024;
        spec.buffer_interval = Duration::from_secs(60);
        // Time stands still unless the test moves it.
        let now = Arc::new(std::sync::atomic::AtomicI64::new(now_ms()));
        let clock: Clock = {
            let now = now.clone();
            Arc::new(move || now.load(Ordering::Relaxed))
        };
        let delivery =
            Delivery::start_with_clock(spec, buffers.clone(), None, dir.path().join("state"), clock).expect("start");

        // 500 bytes: under the size threshold, and younger than the interval.
        buffers.append("d", records(10, 50)).expect("append");
        wait_for(&delivery, "the records to be buffered", |s| s.records_buffered == 10);
        assert_eq!(delivery.status().objects, 0, "neither threshold is reached");

        // The interval passes (the records arrived a little after the clock
        // was read, hence the extra second): delivered without another record.
        now.fetch_add(61_000, Ordering::Relaxed);
        wait_for(&delivery, "the interval-triggered delivery", |s| s.objects == 1);
        assert_eq!(delivery.status().records_delivered, 10);

        // 1100 bytes at once, with the clock back at the present and standing still: one delivery of
        // the 1000 bytes that fit the threshold; the other 2 records wait.
        now.store(now_ms(), Ordering::Relaxed);
        buffers.append("d", records(22, 50)).expect("append");
        wait_for(&delivery, "the size-triggered delivery", |s| s.records_delivered == 30);
        assert_eq!(delivery.status().objects, 2);
        wait_for(&delivery, "the rest to be buffered", |s| s.records_buffered == 2);
        delivery.drain();
    }

    #[test]
    fn a_delivery_planned_before_a_crash_is_redone_with_the_same_bounds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let buffers: Arc<dyn StreamStore> = Arc::new(
            DiskStreams::open(
                &dir.path().join("buffers"),
                &[DiskStreamSpec::new("d", 1000, FsyncPolicy::Never)],
                Arc::new(FileSyncer),
            )
            .expect("open"),
        );
        let records: Vec<NewRecord> = (0..5)
            .map(|i| NewRecord {
                key: String::new(),
                event_time_ms: None,
                data: Bytes::from(format!("r{i}")),
                explicit_hash_key: None,
            })
            .collect();
        buffers.append("d", records).expect("append");
        // As if the host died after planning records 0..=2 and before checkpointing them.
        let state = dir.path().join("state");
        std::fs::create_dir_all(&state).expect("state dir");
        std::fs::write(state.join("d.0.plan"), "0 2\n").expect("plan");
        let delivery = Delivery::start(spec(&dir.path().join("lake")), buffers, None, state.clone()).expect("start");
        delivery.drain();
        let mut keys: Vec<String> = std::fs::read_dir(dir.path().join("lake"))
            .expect("lake")
            .flat_map(|e| e.ok())
            .flat_map(|hour| walk(&hour.path()))
            .collect();
        keys.sort();
        let names: Vec<&str> = keys.iter().filter_map(|k| k.rsplit('/').next()).collect();
        assert_eq!(
            names,
            vec![
                "d-000000-00000000000000000000-00000000000000000002",
                "d-000000-00000000000000000003-00000000000000000004"
            ]
        );
        assert!(!state.join("d.0.plan").exists(), "the plan is gone once delivered");
    }

    #[test]
    fn a_delivery_loaded_but_not_checkpointed_before_a_crash_is_not_loaded_twice() {
        let dir = tempfile::tempdir().expect("tempdir");
        let buffers = store(dir.path());
        let db = dir.path().join("w.db");
        let mut spec = spec(&dir.path().join("lake"));
        spec.warehouse = Some(crate::warehouse::WarehouseSpec {
            database: crate::warehouse::Database::Sqlite(db.clone()),
            table: "t".into(),
            columns: vec![crate::warehouse::ColumnMap { column: "n".into(), field: "n".into() }],
            retry_duration: Duration::from_secs(1),
        });
        let rows = |from: usize, to: usize| -> Vec<NewRecord> {
            (from..to)
                .map(|i| NewRecord {
                    key: String::new(),
                    event_time_ms: None,
                    data: Bytes::from(format!("{{\"n\":{i}}}")),
                    explicit_hash_key: None,
                })
                .collect()
        };
        buffers.append("d", rows(0, 5)).expect("append");
        let state = dir.path().join("state");
        Delivery::start(spec.clone(), buffers.clone(), None, state.clone()).expect("start").drain();
        // As if the host died after the load committed and before the checkpoint:
        // the position goes back and the plan is still there.
        buffers.checkpoint("d", 0, CONSUMER, 0).expect("rewind");
        std::fs::write(state.join("d.0.plan"), "0 4\n").expect("plan");
        buffers.append("d", rows(5, 7)).expect("append");
        let delivery = Delivery::start(spec, buffers, None, state).expect("restart");
        delivery.drain();
        assert_eq!(delivery.status().rows_loaded, 2, "only the new records are loaded");
        let connection = rusqlite::Connection::open(&db).expect("open");
        let loaded: Vec<i64> = connection
            .prepare("SELECT n FROM t ORDER BY n")
            .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
            .expect("rows");
        assert_eq!(loaded, vec![0, 1, 2, 3, 4, 5, 6]);
    }

    fn walk(path: &std::path::Path) -> Vec<String> {
        if path.is_file() {
            return vec![path.display().to_string()];
        }
        std::fs::read_dir(path).into_iter().flatten().flat_map(|e| e.ok()).flat_map(|e| walk(&e.path())).collect()
    }

    #[test]
    fn objects_are_partitioned_by_hour_in_utc_or_by_the_prefix_expressions() {
        let ms = crate::sink::system_ms(humantime::parse_rfc3339("2026-11-26T14:03:12Z").expect("time"));
        assert_eq!(object_prefix("rows/", ms, None), "rows/2026/11/26/14/");
        assert_eq!(
            object_prefix("rows/year=!{timestamp:yyyy}/month=!{timestamp:MM}/day=!{timestamp:dd}/", ms, None),
            "rows/year=2026/month=11/day=26/"
        );
        assert_eq!(object_prefix("t=!{timestamp:HH-mm-ss}/", ms, None), "t=14-03-12/");
        assert_eq!(
            object_prefix(
                "errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/",
                ms,
                Some("processing-failed")
            ),
            "errors/processing-failed/2026/11/26/"
        );
        assert_eq!(check_prefix("rows/!{timestamp:yyyy}/"), Ok(()));
        let err = check_prefix("rows/!{firehose:random-string}/").expect_err("random keys would not be deterministic");
        assert!(err.contains("is not supported"), "{err}");
        assert!(check_prefix("rows/!{timestamp:yyyy").is_err());
    }
}
