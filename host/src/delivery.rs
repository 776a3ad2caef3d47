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
    /// Starts delivering: from the delivery's own buffer stream in `source`
    /// (named like the delivery), or from the weir stream the spec names.
    pub fn start(
        spec: DeliverySpec,
        source: Arc<dyn StreamStore>,
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
    /// Where records come from: the delivery's own buffer, or a weir stream.
    source: Arc<dyn StreamStore>,
    /// The stream in `source` to read.
    source_stream: String,
    /// The consumer name in `source`.
    consumer: String,
    transform: Option<TransformerPlugin>,
    instance: Option<TransformerInstance>,
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
                let age = buf.records.first().map_or(Duration::ZERO, |r| {
                    Duration::from_millis(now_ms().saturating_sub(r.arrival_ms).max(0) as u64)
                });
                let due = !buf.records.is_empty()
                    && (buf.planned.is_some()
                        || draining
                        || buf.bytes >= self.spec.buffer_bytes
                        || age >= self.spec.buffer_interval);
                if !due {
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
                self.deliver(&runtime, shard, &batch);
                shards[k].position = last + 1;
                if let Err(e) = self.source.checkpoint(&stream, shard, &self.consumer, last + 1) {
                    tracing::error!(error = %e, "checkpoint failed");
                }
                let _ = std::fs::remove_file(self.plan_file(shard));
                delivered = true;
            }
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

    /// Transforms and writes one delivery: its rows object and its errors object.
    fn deliver(&mut self, runtime: &tokio::runtime::Runtime, shard: u32, batch: &[StoredRecord]) {
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
        let at = batch[0].arrival_ms;
        // Named by shard and sequence range: the same delivery always has the same keys.
        let name = format!("{}-{shard:06}", self.spec.name);
        let extension = if self.spec.gzip { ".gz" } else { "" };
        if let Some(backup) = &self.spec.backup_prefix {
            let mut raw = Vec::new();
            for r in batch {
                raw.extend_from_slice(&r.data);
                raw.push(b'\n');
            }
            let key = format!("{}{name}-{first:020}-{last:020}{extension}", object_prefix(backup, at, None));
            self.put(runtime, &key, raw);
        }
        if !rows.is_empty() {
            let key = format!("{}{name}-{first:020}-{last:020}{extension}", object_prefix(&self.spec.prefix, at, None));
            self.put(runtime, &key, rows);
        }
        if !errors.is_empty() {
            let mut body = Vec::new();
            for e in &errors {
                body.extend_from_slice(e.to_string().as_bytes());
                body.push(b'\n');
            }
            let prefix = object_prefix(&self.spec.error_prefix, at, Some("processing-failed"));
            let key = format!("{prefix}{name}-{first:020}-{last:020}.errors{extension}");
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

/// What one shard of the source has buffered for delivery.
struct ShardBuffer {
    /// Next position to deliver (everything before is checkpointed).
    position: u64,
    records: Vec<StoredRecord>,
    bytes: u64,
    /// A delivery planned before a crash, to redo with the same bounds.
    planned: Option<(u64, u64)>,
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
