//! Delivery streams (as Kinesis Data Firehose): records put directly are kept
//! in a durable buffer stream, then delivered in batches, by size or age
//! whichever comes first, as objects in the lake, optionally transformed by a
//! plugin. Records the transform fails, or that a failing plugin could not
//! process, are written under the error prefix with the reason. A delivery is
//! acknowledged to the buffer (checkpointed) only after its objects are
//! written; its boundaries are planned durably first, so a delivery retried
//! after a crash writes the same keys again instead of new ones.

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
    /// Starts delivering what `buffers` holds for `spec`.
    pub fn start(
        spec: DeliverySpec,
        buffers: Arc<dyn StreamStore>,
        transform: Option<TransformerPlugin>,
        state_dir: PathBuf,
    ) -> Result<Delivery, DeliveryError> {
        std::fs::create_dir_all(&spec.lake)
            .map_err(|e| DeliveryError::Lake(spec.lake.display().to_string(), e.to_string()))?;
        let lake = LocalFileSystem::new_with_prefix(&spec.lake)
            .map_err(|e| DeliveryError::Lake(spec.lake.display().to_string(), e.to_string()))?;
        std::fs::create_dir_all(&state_dir)
            .map_err(|e| DeliveryError::Lake(state_dir.display().to_string(), e.to_string()))?;
        let spec = Arc::new(spec);
        let stats = Arc::new(DeliveryStats::default());
        let draining = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            spec: spec.clone(),
            buffers,
            transform,
            instance: None,
            lake: Arc::new(lake),
            plan_file: state_dir.join(format!("{}.plan", spec.name)),
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
}

struct Worker {
    spec: Arc<DeliverySpec>,
    buffers: Arc<dyn StreamStore>,
    transform: Option<TransformerPlugin>,
    instance: Option<TransformerInstance>,
    lake: Arc<LocalFileSystem>,
    plan_file: PathBuf,
    stats: Arc<DeliveryStats>,
    draining: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
        let name = self.spec.name.to_string();
        let span = tracing::info_span!("delivery", delivery = %name);
        let _enter = span.enter();
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the delivery's runtime");
                return;
            }
        };
        let mut position = match self.buffers.register_consumer(&name, 0, CONSUMER) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the delivery buffer");
                return;
            }
        };
        // A delivery planned before a crash is redone with the same bounds, so
        // it overwrites the same objects.
        let mut planned = self.read_plan().filter(|(first, _)| *first == position);
        let mut buffer: Vec<StoredRecord> = Vec::new();
        let mut buffered_bytes = 0u64;
        loop {
            let seen = self.buffers.changes(&name).unwrap_or(0);
            let next = buffer.last().map_or(position, |r| r.sequence + 1);
            match self.buffers.read(&name, 0, next, 10_000) {
                Ok(records) => {
                    buffered_bytes += records.iter().map(|r| r.data.len() as u64).sum::<u64>();
                    buffer.extend(records);
                }
                Err(StreamError::Trimmed { oldest, .. }) => {
                    tracing::warn!(expired = oldest - position, "buffered records expired before delivery");
                    position = oldest;
                    buffer.clear();
                    buffered_bytes = 0;
                    continue;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the delivery buffer");
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
            let draining = self.draining.load(Ordering::Relaxed);
            let oldest_age = buffer
                .first()
                .map_or(Duration::ZERO, |r| Duration::from_millis(now_ms().saturating_sub(r.arrival_ms).max(0) as u64));
            let due = !buffer.is_empty()
                && (planned.is_some()
                    || draining
                    || buffered_bytes >= self.spec.buffer_bytes
                    || oldest_age >= self.spec.buffer_interval);
            if due {
                let take = match planned.take() {
                    Some((_, last)) => buffer.iter().take_while(|r| r.sequence <= last).count(),
                    None => self.batch_end(&buffer),
                };
                let batch: Vec<StoredRecord> = buffer.drain(..take).collect();
                buffered_bytes -= batch.iter().map(|r| r.data.len() as u64).sum::<u64>();
                let (Some(first), Some(last)) = (batch.first(), batch.last()) else { continue };
                let (first, last) = (first.sequence, last.sequence);
                self.write_plan(first, last);
                self.deliver(&runtime, &batch);
                position = last + 1;
                if let Err(e) = self.buffers.checkpoint(&name, 0, CONSUMER, position) {
                    tracing::error!(error = %e, "checkpoint failed");
                }
                let _ = std::fs::remove_file(&self.plan_file);
                continue;
            }
            if draining && buffer.is_empty() {
                return;
            }
            let wait = self.spec.buffer_interval.saturating_sub(oldest_age).min(Duration::from_millis(100));
            let _ = self.buffers.wait_change(&name, seen, wait.max(Duration::from_millis(1)));
        }
    }

    /// How many buffered records one delivery takes: up to the size threshold.
    fn batch_end(&self, buffer: &[StoredRecord]) -> usize {
        let mut bytes = 0u64;
        let mut n = 0;
        for r in buffer {
            if n > 0 && bytes + r.data.len() as u64 > self.spec.buffer_bytes {
                break;
            }
            bytes += r.data.len() as u64;
            n += 1;
        }
        n
    }

    fn read_plan(&self) -> Option<(u64, u64)> {
        let text = std::fs::read_to_string(&self.plan_file).ok()?;
        let (first, last) = text.trim().split_once(' ')?;
        Some((first.parse().ok()?, last.parse().ok()?))
    }

    fn write_plan(&self, first: u64, last: u64) {
        let tmp = self.plan_file.with_extension("tmp");
        let result = std::fs::File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(format!("{first} {last}\n").as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.plan_file));
        if let Err(e) = result {
            tracing::warn!(error = %e, "cannot record the delivery plan");
        }
    }

    /// Transforms and writes one delivery: its rows object and its errors object.
    fn deliver(&mut self, runtime: &tokio::runtime::Runtime, batch: &[StoredRecord]) {
        self.stats.records_in.fetch_add(batch.len() as u64, Ordering::Relaxed);
        let mut rows: Vec<u8> = Vec::new();
        let mut delivered = 0u64;
        let mut errors: Vec<serde_json::Value> = Vec::new();
        for chunk in batch.chunks(TRANSFORM_BATCH) {
            match self.transform(chunk) {
                None => {
                    for r in chunk {
                        rows.extend_from_slice(&r.data);
                        rows.push(b'\n');
                    }
                    delivered += chunk.len() as u64;
                }
                Some(Ok(t)) => {
                    for (i, outcome, outputs) in t.per_record() {
                        match outcome {
                            Outcome::Ok(_) => {
                                for o in outputs {
                                    rows.extend_from_slice(o.payload);
                                    rows.push(b'\n');
                                }
                                delivered += 1;
                            }
                            Outcome::Dropped => {}
                            Outcome::ProcessingFailed(reason) => {
                                errors.push(error_entry(&chunk[i], "Transform.ProcessingFailed", reason));
                            }
                        }
                    }
                }
                Some(Err(e)) => {
                    let reason = e.to_string();
                    let code = format!("Transform.{}", e.code());
                    errors.extend(chunk.iter().map(|r| error_entry(r, &code, &reason)));
                }
            }
        }
        let (first, last) = (batch[0].sequence, batch[batch.len() - 1].sequence);
        let partition = hour_partition(batch[0].arrival_ms);
        let name = &self.spec.name;
        let extension = if self.spec.gzip { ".gz" } else { "" };
        if let Some(backup) = &self.spec.backup_prefix {
            let mut raw = Vec::new();
            for r in batch {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            self.put(runtime, &format!("{backup}{partition}{name}-{first:020}-{last:020}{extension}"), raw);
        }
        if !rows.is_empty() {
            let key = format!("{}{partition}{name}-{first:020}-{last:020}{extension}", self.spec.prefix);
            self.put(runtime, &key, rows);
        }
        if !errors.is_empty() {
            let mut body = Vec::new();
            for e in &errors {
                body.extend_from_slice(e.to_string().as_bytes());
                body.push(b'\n');
            }
            let key = format!("{}{partition}{name}-{first:020}-{last:020}.errors{extension}", self.spec.error_prefix);
            self.put(runtime, &key, body);
        }
        self.stats.records_delivered.fetch_add(delivered, Ordering::Relaxed);
        self.stats.records_failed.fetch_add(errors.len() as u64, Ordering::Relaxed);
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
            if let Ok(mut l) = self.stats.last_error.lock() {
                *l = Some(e.to_string());
            }
        }
        Some(result)
    }

    /// Writes an object, retrying with backoff until it is written: a delivery
    /// is never dropped.
    fn put(&self, runtime: &tokio::runtime::Runtime, key: &str, body: Vec<u8>) {
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
        let mut delay = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            match runtime.block_on(self.lake.put(&path, bytes.clone().into())) {
                Ok(_) => {
                    self.stats.objects.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(
                        key,
                        bytes = bytes.len(),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "object delivered"
                    );
                    return;
                }
                Err(e) => {
                    tracing::error!(key, error = %e, retry_in_ms = delay.as_millis() as u64, "writing to the lake failed");
                    if let Ok(mut l) = self.stats.last_error.lock() {
                        *l = Some(format!("writing `{key}`: {e}"));
                    }
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
            }
        }
    }
}

/// A failed record as Firehose writes it under the error prefix.
fn error_entry(r: &StoredRecord, code: &str, message: &str) -> serde_json::Value {
    json!({
        "attemptsMade": 1,
        "arrivalTimestamp": r.arrival_ms,
        "errorCode": code,
        "errorMessage": message,
        "attemptEndingTimestamp": now_ms(),
        "rawData": base64::engine::general_purpose::STANDARD.encode(&r.data),
        "sequenceNumber": r.sequence.to_string(),
    })
}

/// `YYYY/MM/DD/HH/` of a time, UTC.
fn hour_partition(ms: i64) -> String {
    let text = crate::sink::format_ms(ms);
    // RFC 3339: 2026-11-26T14:03:12.345Z
    format!("{}/{}/{}/{}/", &text[0..4], &text[5..7], &text[8..10], &text[11..13])
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
            gzip: false,
        }
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
        std::fs::write(state.join("d.plan"), "0 2\n").expect("plan");
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
            vec!["d-00000000000000000000-00000000000000000002", "d-00000000000000000003-00000000000000000004"]
        );
        assert!(!state.join("d.plan").exists(), "the plan is gone once delivered");
    }

    fn walk(path: &std::path::Path) -> Vec<String> {
        if path.is_file() {
            return vec![path.display().to_string()];
        }
        std::fs::read_dir(path).into_iter().flatten().flat_map(|e| e.ok()).flat_map(|e| walk(&e.path())).collect()
    }

    #[test]
    fn objects_are_partitioned_by_hour_in_utc() {
        let ms = crate::sink::system_ms(humantime::parse_rfc3339("2026-11-26T14:03:12Z").expect("time"));
        assert_eq!(hour_partition(ms), "2026/11/26/14/");
    }
}
