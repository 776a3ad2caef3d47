//! Delivery streams (as Kinesis Data Firehose): records put directly are kept
//! in a durable buffer stream (or read from a weir stream), then delivered in
//! batches, by size or age whichever comes first, as objects in the lake,
//! optionally transformed by a plugin and loaded into a warehouse table.
//!
//! Each delivery has a worker thread and a loader (one lane per load the
//! database takes at once), so that one batch is transformed and staged while
//! the previous ones load:
//! - the worker ([`worker`]) reads, plans the batch's bounds durably
//!   ([`plans`]), transforms, and writes the backup and rows objects;
//! - the loader ([`loader`]) loads the staged rows into the warehouse (exactly
//!   once, thanks to the warehouse's ledger), writes the errors object, then
//!   checkpoints the source.
//!
//! A batch redone after a crash has the same bounds, hence the same keys, so
//! its objects are overwritten rather than duplicated. Writes and loads are
//! retried with backoff for their retry durations; past them the records (or
//! the staged object) are listed under the error prefix with the reason.
//! Nothing is dropped: a delivery interrupted by a shutdown is redone at the
//! next start.

mod lake;
mod loader;
mod plans;
pub mod redrive;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::manifest::DeliverySpec;
use crate::plugin::TransformerPlugin;
use crate::stage::{Phase, StageStats};
use crate::stream::StreamStore;
use crate::warehouse::WarehouseError;

/// The buffer stream's consumer name.
const CONSUMER: &str = "delivery";

pub use crate::stream::Clock;
pub use plans::PlanPlace;

/// Counters of a delivery stream.
#[derive(Debug, Default)]
struct DeliveryStats {
    records_in: AtomicU64,
    records_delivered: AtomicU64,
    records_failed: AtomicU64,
    objects: AtomicU64,
    records_buffered: AtomicU64,
    bytes_buffered: AtomicU64,
    /// Arrival (ms since the Unix epoch) of the oldest buffered record; 0: none.
    oldest_buffered_ms: AtomicU64,
    rows_loaded: AtomicU64,
    rows_duplicate: AtomicU64,
    rows_rejected: AtomicU64,
    loads_failed: AtomicU64,
    retries: AtomicU64,
    last_error: Mutex<Option<String>>,
}

/// What `GET /v1/pipeline` shows of a delivery stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeliveryStatus {
    /// Its name.
    pub name: String,
    /// Whether it is reading, waiting to retry a step that failed, or drained.
    pub phase: Phase,
    /// Records taken from its buffer.
    pub records_in: u64,
    /// Records put again whose id its buffer held (`deduplicate`): stored once.
    pub records_duplicate: u64,
    /// Records written to the lake.
    pub records_delivered: u64,
    /// Records written under the error prefix.
    pub records_failed: u64,
    /// Objects written.
    pub objects: u64,
    /// Records read from the source and waiting for their delivery.
    pub records_buffered: u64,
    /// Bytes of those records.
    pub bytes_buffered: u64,
    /// How long the oldest of them has waited, in ms.
    pub buffer_age_ms: u64,
    /// Rows loaded into the warehouse.
    pub rows_loaded: u64,
    /// Rows not loaded because the table held their `key` already.
    pub rows_duplicate: u64,
    /// Rows the warehouse table refused (listed under the error prefix).
    pub rows_rejected: u64,
    /// Staged objects not loaded within the retry duration (listed under the error prefix).
    pub loads_failed: u64,
    /// Lake writes and warehouse loads that failed and were tried again.
    pub retries: u64,
    /// The most recent failure.
    pub last_error: Option<String>,
    /// Which host reads each shard of its source, when hosts share the streams
    /// (empty on one host).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shard_holders: Vec<String>,
}

/// A running delivery stream.
pub struct Delivery {
    /// Its settings.
    pub spec: Arc<DeliverySpec>,
    stats: Arc<DeliveryStats>,
    /// The counters of its reading loop (the stage driver's).
    driver: Arc<StageStats>,
    draining: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// What the worker shares, and its transform: a redrive stages and loads with them.
    shared: Arc<lake::Shared>,
    transform: Option<TransformerPlugin>,
}

impl Delivery {
    /// Starts delivering: from the delivery's own buffer stream in `source`
    /// (named like the delivery), or from the weir stream the spec names.
    pub fn start(
        spec: DeliverySpec,
        source: Arc<dyn StreamStore>,
        transform: Option<TransformerPlugin>,
        plans: impl Into<PlanPlace>,
    ) -> Result<Delivery, DeliveryError> {
        Self::start_with_clock(spec, source, transform, plans, crate::stream::system_clock())
    }

    /// [`Delivery::start`] with the clock that decides when a buffer is old enough.
    pub fn start_with_clock(
        spec: DeliverySpec,
        source: Arc<dyn StreamStore>,
        transform: Option<TransformerPlugin>,
        plans: impl Into<PlanPlace>,
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
        let lake = crate::lake::open(&spec.lake).map_err(|e| DeliveryError::Lake(e.lake, e.message))?;
        let (source_stream, consumer) = match &spec.source_stream {
            Some(stream) => (stream.to_string(), format!("delivery-{}", spec.name)),
            None => (spec.name.to_string(), CONSUMER.to_owned()),
        };
        let plans = plans::Plans::open(plans.into(), spec.name.to_string(), &source_stream, &consumer)
            .map_err(|e| DeliveryError::Lake(e.0.display().to_string(), e.1.to_string()))?;
        let spec = Arc::new(spec);
        let stats = Arc::new(DeliveryStats::default());
        let draining = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(lake::Shared {
            spec: spec.clone(),
            lake,
            stats: stats.clone(),
            draining: draining.clone(),
            source,
            source_stream,
            consumer,
            plans,
        });
        let driver = Arc::new(StageStats::default());
        let worker = worker::Worker::new(shared.clone(), transform.clone(), warehouse, clock, driver.clone());
        let thread = std::thread::Builder::new()
            .name(format!("delivery-{}", spec.name))
            .spawn(move || worker.run())
            .map_err(|e| DeliveryError::Lake(String::new(), e.to_string()))?;
        Ok(Delivery { spec, stats, driver, draining, thread: Mutex::new(Some(thread)), shared, transform })
    }

    /// Its lake.
    pub fn lake(&self) -> &crate::lake::Lake {
        &self.shared.lake
    }

    /// How long its batches (read and buffered) and its transform's calls took.
    pub fn times(&self) -> (crate::metrics::Seconds, crate::metrics::Seconds) {
        (self.driver.batch_seconds.clone(), self.driver.plugin_seconds.clone())
    }

    /// Its counters.
    pub fn status(&self) -> DeliveryStatus {
        let s = &self.stats;
        DeliveryStatus {
            name: self.spec.name.to_string(),
            phase: self.driver.phase(),
            records_in: s.records_in.load(Ordering::Relaxed),
            // Counted by the buffer's store; the host fills it in.
            records_duplicate: 0,
            records_delivered: s.records_delivered.load(Ordering::Relaxed),
            records_failed: s.records_failed.load(Ordering::Relaxed),
            objects: s.objects.load(Ordering::Relaxed),
            records_buffered: s.records_buffered.load(Ordering::Relaxed),
            bytes_buffered: s.bytes_buffered.load(Ordering::Relaxed),
            buffer_age_ms: match s.oldest_buffered_ms.load(Ordering::Relaxed) {
                0 => 0,
                oldest => (crate::stream::now_ms().max(0) as u64).saturating_sub(oldest),
            },
            rows_loaded: s.rows_loaded.load(Ordering::Relaxed),
            rows_duplicate: s.rows_duplicate.load(Ordering::Relaxed),
            rows_rejected: s.rows_rejected.load(Ordering::Relaxed),
            loads_failed: s.loads_failed.load(Ordering::Relaxed),
            retries: s.retries.load(Ordering::Relaxed),
            last_error: s.last_error.lock().ok().and_then(|l| l.clone()).or_else(|| self.driver.last_error()),
            shard_holders: self.driver.holders().into_iter().map(Option::unwrap_or_default).collect(),
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
    /// The lake or the state directory is not usable.
    #[error("lake `{0}` is not usable: {1}")]
    Lake(String, String),
    /// The warehouse table does not fit the manifest.
    #[error("delivery `{0}`: {1}")]
    Warehouse(String, WarehouseError),
}

/// A delivery stopped by a shutdown before it finished; it is redone at the next start.
struct Interrupted;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use bytes::Bytes;

    use super::*;
    use crate::manifest::Name;
    use crate::stream::now_ms;
    use crate::stream::{DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy, NewRecord};

    /// A delivery `d` into `lake`, with no transform or warehouse.
    pub(super) fn spec(lake: &std::path::Path) -> DeliverySpec {
        DeliverySpec {
            name: Name::parse("d").expect("name"),
            transform: None,
            buffer_bytes: 1 << 20,
            buffer_interval: Duration::from_secs(900),
            lake: crate::lake::LakeSpec::Local(lake.to_owned()),
            prefix: String::new(),
            error_prefix: "errors/".into(),
            backup_prefix: None,
            source_stream: None,
            gzip: false,
            retry_duration: Duration::from_secs(60),
            warehouse: None,
            deduplicate: None,
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
                source: None,
                key: String::new(),
                event_time_ms: None,
                data: Bytes::from(format!("{i:0size$}")),
                explicit_hash_key: None,
                attributes: Vec::new(),
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
        wait_for(&delivery, "the interval-triggered delivery", |s| s.objects == 1 && s.records_delivered == 10);

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
                source: None,
                key: String::new(),
                event_time_ms: None,
                data: Bytes::from(format!("r{i}")),
                explicit_hash_key: None,
                attributes: Vec::new(),
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
            key: Vec::new(),
            retry_duration: Duration::from_secs(1),
        });
        let rows = |from: usize, to: usize| -> Vec<NewRecord> {
            (from..to)
                .map(|i| NewRecord {
                    source: None,
                    key: String::new(),
                    event_time_ms: None,
                    data: Bytes::from(format!("{{\"n\":{i}}}")),
                    explicit_hash_key: None,
                    attributes: Vec::new(),
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
}
