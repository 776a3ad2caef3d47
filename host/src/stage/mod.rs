//! Stages: a plugin reading a stream. Every stage runs the one loop of
//! [`driver`] (shards, batches, the error policy, checkpoints, hot swaps,
//! the drain); what a batch does is its world's [`Operator`]:
//!
//! - [`transform`]: a transformer's outputs to a stream or sink, its refusals to the dead letters;
//! - [`aggregate`]: records folded into event-time windows, closed windows' results out;
//! - [`notify`]: a notifier's state changes and notifications, one transaction per batch;
//! - a delivery stream's worker (`delivery`) runs the same loop: records
//!   buffered, then written to the lake and loaded into the warehouse.
//!
//! This module holds what they share: counters and status, the handle of a
//! running stage, and where outputs go.

pub mod aggregate;
pub mod bisect;
pub mod driver;
pub mod notify;
pub mod transform;

pub use driver::{BatchError, Driver, Operator};

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;

use crate::manifest::OutputLimits;
use crate::plugin::PluginError;
use crate::sink::{DeadLetter, FileSink, OutRecord};
use crate::stream::{NewRecord, StreamError, StreamStore};
use crate::swap::{CommandReply, PluginVersion, StageCommand, VersionStatus};

/// First restart delay after repeated failures; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long to wait after `streak` failures in a row: the first failure
/// restarts at once, then 1 s, 2 s, 4 s ... up to 30 s.
pub fn backoff_delay(streak: u32) -> Duration {
    if streak < 2 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF.saturating_mul(1 << (streak - 2).min(5)).min(MAX_BACKOFF)
}

/// Where a stage's dead letters go: a sink, or a stream (one JSON record each,
/// the same JSON a sink gets; a delivery stream reading it takes them to the lake).
#[derive(Clone)]
pub enum DeadLetters {
    /// A file sink.
    Sink(Arc<FileSink>),
    /// A stream of the same host.
    Stream {
        /// The store.
        streams: Arc<dyn StreamStore>,
        /// The stream.
        stream: String,
    },
}

impl DeadLetters {
    /// Writes dead letters; they are durable (flushed, or appended) when this returns.
    pub fn write_dead_letters(&self, letters: &[DeadLetter<'_>]) -> Result<(), String> {
        match self {
            DeadLetters::Sink(sink) => sink.write_dead_letters(letters).map_err(|e| e.to_string()),
            DeadLetters::Stream { streams, stream } => {
                let records = letters
                    .iter()
                    .map(|l| NewRecord {
                        source: l.record.source.clone(),
                        key: l.record.key.clone(),
                        event_time_ms: Some(l.record.event_time_ms),
                        data: Bytes::from(l.to_json().to_string()),
                        explicit_hash_key: None,
                        attributes: Vec::new(),
                    })
                    .collect();
                append_waiting(streams.as_ref(), stream, records)
            }
        }
    }

    /// Makes what was written durable (at shutdown).
    pub fn sync(&self) -> Result<(), String> {
        match self {
            DeadLetters::Sink(sink) => sink.sync().map_err(|e| e.to_string()),
            // Appends are durable when they return.
            DeadLetters::Stream { .. } => Ok(()),
        }
    }
}

/// Where a stage's `ok` records go.
pub enum StageOutput {
    /// Appended to a stream of the same host.
    Stream(String),
    /// Written to a sink.
    Sink(Arc<FileSink>),
}

/// The phase a stage is in, as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Processing or waiting for records.
    Running,
    /// Waiting to restart a failing plugin.
    BackingOff,
    /// Stopped by the `stop` error policy; its records wait in the stream.
    Stopped,
    /// Drained at shutdown.
    Finished,
}

/// Counters of a stage, readable while it runs.
#[derive(Debug, Default)]
pub struct StageStats {
    /// Records read from the input.
    pub records_in: AtomicU64,
    /// Records written to the output.
    pub records_out: AtomicU64,
    /// Records the plugin dropped.
    pub dropped: AtomicU64,
    /// Records sent to the dead-letter sink (an aggregator's late records are counted as `late`).
    pub dead_lettered: AtomicU64,
    /// Records discarded by the `skip` policy.
    pub skipped: AtomicU64,
    /// Records an aggregator set aside as later than its allowed lateness (to its `late`
    /// stream, or else its dead letters).
    pub late: AtomicU64,
    /// Revised results an aggregator gave because of late records (panes after the on-time one).
    pub revisions: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
    /// Plugin failures (trap, deadline, memory, error returned, init).
    pub failures: AtomicU64,
    /// Plugin instances created after the first.
    pub restarts: AtomicU64,
    /// Versions swapped in.
    pub swaps: AtomicU64,
    /// Rollbacks, asked for or automatic.
    pub rollbacks: AtomicU64,
    /// Plugin calls that failed, by kind ([`PluginError::code`]).
    plugin_failures: Mutex<BTreeMap<&'static str, u64>>,
    /// How long each batch took, from being read to being done.
    pub batch_seconds: crate::metrics::Seconds,
    /// How long each call into the plugin took.
    pub plugin_seconds: crate::metrics::Seconds,
    /// Every plugin version the stage has run, the active one last.
    versions: Mutex<Vec<Arc<PluginVersion>>>,
    /// An aggregator stage's windows: watermark, open windows and keys, state bytes.
    pub(crate) windows: Mutex<Option<crate::window::WindowMetrics>>,
    phase: Mutex<Option<Phase>>,
    last_error: Mutex<Option<String>>,
    /// Per input shard, the host reading it, when hosts share the streams.
    holders: Mutex<Vec<Option<String>>>,
}

/// A snapshot of a stage's counters.
#[derive(Debug, Clone, Serialize)]
pub struct StageStatus {
    /// Stage name.
    pub name: String,
    /// Plugin name@version.
    pub plugin: String,
    /// Component SHA-256.
    pub plugin_sha256: String,
    /// Phase.
    pub phase: Phase,
    /// Records read.
    pub records_in: u64,
    /// Records written.
    pub records_out: u64,
    /// Records dropped by the plugin.
    pub dropped: u64,
    /// Records dead-lettered.
    pub dead_lettered: u64,
    /// Records skipped by policy.
    pub skipped: u64,
    /// Records set aside as later than the window's allowed lateness (aggregators).
    pub late: u64,
    /// Revised window results late records caused (aggregators).
    pub revisions: u64,
    /// Batches processed.
    pub batches: u64,
    /// Plugin failures.
    pub failures: u64,
    /// Instance restarts.
    pub restarts: u64,
    /// Versions swapped in.
    pub swaps: u64,
    /// Rollbacks, asked for or automatic.
    pub rollbacks: u64,
    /// Plugin calls that failed, by kind (`trap`, `timeout`, `memory-cap`, ...).
    pub plugin_failures: BTreeMap<&'static str, u64>,
    /// The most recent failure.
    pub last_error: Option<String>,
    /// Every plugin version it has run (hot swaps), the active one last.
    pub versions: Vec<VersionStatus>,
    /// An aggregator stage's windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<crate::window::WindowMetrics>,
    /// Per input shard, the host reading it, when several hosts share the
    /// streams (a NATS cluster); empty on one host.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shard_holders: Vec<Option<String>>,
}

impl StageStats {
    /// Counts a failed plugin call by its kind.
    pub(crate) fn plugin_failed(&self, e: &PluginError) {
        if let Ok(mut kinds) = self.plugin_failures.lock() {
            *kinds.entry(e.code()).or_default() += 1;
        }
    }

    /// Runs a call into the plugin, timing it (and counting it if it fails).
    pub(crate) fn plugin_call<T>(&self, call: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
        let started = std::time::Instant::now();
        let result = call();
        self.plugin_seconds.observe(started.elapsed());
        if let Err(e) = &result {
            self.plugin_failed(e);
        }
        result
    }

    /// Records the version a stage starts with.
    pub(crate) fn start_version(&self, version: Arc<PluginVersion>) {
        if let Ok(mut versions) = self.versions.lock() {
            versions.push(version);
        }
    }

    /// The version running now.
    pub(crate) fn active_version(&self) -> Option<Arc<PluginVersion>> {
        self.versions.lock().ok().and_then(|v| v.last().cloned())
    }

    fn versions(&self) -> Vec<VersionStatus> {
        self.versions.lock().map(|v| v.iter().map(|v| v.status()).collect()).unwrap_or_default()
    }

    /// The phase it is in.
    pub(crate) fn phase(&self) -> Phase {
        self.phase.lock().ok().and_then(|p| *p).unwrap_or(Phase::Running)
    }

    /// The most recent failure.
    pub(crate) fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|l| l.clone())
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Some(phase);
        }
    }

    /// Who reads each input shard, as the last lease round found.
    pub(crate) fn set_holders(&self, holders: Vec<Option<String>>) {
        if let Ok(mut h) = self.holders.lock() {
            *h = holders;
        }
    }

    pub(crate) fn holders(&self) -> Vec<Option<String>> {
        let holders = self.holders.lock().map(|h| h.clone()).unwrap_or_default();
        // One host: nobody is named.
        if holders.iter().all(Option::is_none) { Vec::new() } else { holders }
    }

    pub(crate) fn set_error(&self, e: String) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e);
        }
    }
}

/// A running stage.
pub struct StageHandle {
    /// Its counters.
    pub stats: Arc<StageStats>,
    name: String,
    commands: Mutex<Sender<(StageCommand, Sender<CommandReply>)>>,
    /// The stream it reads.
    pub input: String,
    /// The stream it writes, if it writes to one.
    pub output_stream: Option<String>,
    draining: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl StageHandle {
    /// The handle of a stage running on `thread` ([`Driver::spawn`]).
    pub(crate) fn running(
        name: String,
        stats: Arc<StageStats>,
        commands: Sender<(StageCommand, Sender<CommandReply>)>,
        input: String,
        output_stream: Option<String>,
        draining: Arc<AtomicBool>,
        thread: std::thread::JoinHandle<()>,
    ) -> StageHandle {
        StageHandle {
            stats,
            name,
            commands: Mutex::new(commands),
            input,
            output_stream,
            draining,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A snapshot of its counters.
    pub fn status(&self) -> StageStatus {
        let s = &self.stats;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let versions = s.versions();
        let active = versions.last();
        StageStatus {
            name: self.name.clone(),
            plugin: active.map(|v| v.plugin.clone()).unwrap_or_default(),
            plugin_sha256: active.map(|v| v.sha256.clone()).unwrap_or_default(),
            phase: s.phase(),
            records_in: get(&s.records_in),
            records_out: get(&s.records_out),
            dropped: get(&s.dropped),
            dead_lettered: get(&s.dead_lettered),
            late: get(&s.late),
            revisions: get(&s.revisions),
            skipped: get(&s.skipped),
            batches: get(&s.batches),
            failures: get(&s.failures),
            restarts: get(&s.restarts),
            swaps: get(&s.swaps),
            rollbacks: get(&s.rollbacks),
            plugin_failures: s.plugin_failures.lock().map(|k| k.clone()).unwrap_or_default(),
            last_error: s.last_error(),
            versions,
            windows: s.windows.lock().ok().and_then(|w| *w),
            shard_holders: s.holders(),
        }
    }

    /// Hands a command to the stage and waits (at most `timeout`) for it to
    /// be applied at the next batch boundary.
    pub fn command(&self, command: StageCommand, timeout: Duration) -> CommandReply {
        let (reply, answer) = std::sync::mpsc::channel();
        let sent = self.commands.lock().map_err(|_| "the stage is not running".to_owned())?.send((command, reply));
        if sent.is_err() {
            return Err(format!("stage `{}` is not running", self.name));
        }
        match answer.recv_timeout(timeout) {
            Ok(reply) => reply,
            Err(_) => Err(format!("stage `{}` did not reach a batch boundary within {timeout:?}", self.name)),
        }
    }

    /// Asks the stage to finish the records already in its input, then stop,
    /// and waits for it. Later calls return at once.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            tracing::error!(stage = %self.name, "stage thread panicked");
        }
    }
}

/// What one input gave: how many outputs, the largest, and their bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Outputs {
    pub(crate) count: usize,
    pub(crate) largest: usize,
    pub(crate) bytes: u64,
}

impl Outputs {
    /// The outputs of these payload sizes.
    pub(crate) fn of(sizes: impl Iterator<Item = usize>) -> Outputs {
        let mut outputs = Outputs::default();
        sizes.for_each(|size| outputs.add(size));
        outputs
    }

    /// One more output, of `size` bytes.
    pub(crate) fn add(&mut self, size: usize) {
        self.count += 1;
        self.largest = self.largest.max(size);
        self.bytes += size as u64;
    }

    /// Checks them against a stage's output limits, counting them into `batch_bytes`
    /// when they pass; the reason, saying what the plugin tried, when they do not.
    pub(crate) fn check(&self, limits: &OutputLimits, batch_bytes: &mut u64) -> Result<(), String> {
        if self.count > limits.per_record {
            return Err(format!(
                "the plugin gave {} outputs; limits.outputs-per-record is {}",
                self.count, limits.per_record
            ));
        }
        if self.largest as u64 > limits.record_bytes {
            return Err(format!(
                "the plugin gave an output of {} bytes; limits.output-record-size is {} bytes",
                self.largest, limits.record_bytes
            ));
        }
        if *batch_bytes + self.bytes > limits.batch_bytes {
            return Err(format!(
                "{} bytes of outputs would take the batch's past limits.output-batch-size ({} bytes)",
                self.bytes, limits.batch_bytes
            ));
        }
        *batch_bytes += self.bytes;
        Ok(())
    }
}

/// Writes a stage's output records to its sink or stream.
pub(crate) fn write_output(
    streams: &dyn StreamStore,
    output: &StageOutput,
    out: &[OutRecord<'_>],
) -> Result<(), String> {
    match output {
        StageOutput::Sink(sink) => sink.write(out).map_err(|e| e.to_string()),
        StageOutput::Stream(stream) => {
            let records = out
                .iter()
                .map(|r| NewRecord {
                    source: r.source.cloned(),
                    key: r.key.to_owned(),
                    event_time_ms: Some(r.event_time_ms),
                    data: Bytes::copy_from_slice(r.payload),
                    explicit_hash_key: None,
                    attributes: r.attributes.to_vec(),
                })
                .collect();
            append_waiting(streams, stream, records)
        }
    }
}

/// Appends to a stream, treating a full or throttled stream as backpressure,
/// not an error: waits, and appends what is left.
pub(crate) fn append_waiting(streams: &dyn StreamStore, stream: &str, records: Vec<NewRecord>) -> Result<(), String> {
    let mut rest = records;
    while !rest.is_empty() {
        let results = streams.append(stream, rest.clone()).map_err(|e| e.to_string())?;
        let mut left = Vec::new();
        for (record, result) in rest.into_iter().zip(results) {
            match result {
                Ok(_) => {}
                Err(StreamError::Full { .. } | StreamError::Throttled { .. }) => left.push(record),
                Err(e) => return Err(e.to_string()),
            }
        }
        rest = left;
        if !rest.is_empty() {
            std::thread::sleep(driver::IDLE_POLL);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_plugin_is_restarted_with_doubling_backoff_capped_at_30s() {
        let delays: Vec<u64> = (1..=9).map(|streak| backoff_delay(streak).as_secs()).collect();
        assert_eq!(delays, vec![0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
