//! A transform stage: reads batches from its input stream, runs them through
//! its plugin, writes `ok` records to its output and failed records to its
//! dead-letter sink, then checkpoints. A failing plugin is contained: the
//! batch follows the stage's error policy, a broken instance is replaced, and
//! a plugin that keeps failing is restarted with backoff (1 s doubling to 30 s).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::manifest::{ErrorPolicy, StageSpec};
use crate::plugin::{Batch, Outcome, PluginError, TransformerInstance, TransformerPlugin};
use crate::sink::{DeadLetter, DeadLetterOrigin, FileSink, OutRecord};
use crate::stream::{NewRecord, StoredRecord, StreamError, StreamStore};
use crate::swap::{Candidate, PluginVersion, SwapCommand, SwapReply, VersionStatus};

/// First restart delay after repeated failures; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Longest restart delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How often an idle stage looks at the shutdown flag.
const IDLE_POLL: Duration = Duration::from_millis(100);

/// How long to wait after `streak` failures in a row: the first failure
/// restarts at once, then 1 s, 2 s, 4 s ... up to 30 s.
pub fn backoff_delay(streak: u32) -> Duration {
    if streak < 2 {
        return Duration::ZERO;
    }
    FIRST_BACKOFF.saturating_mul(1 << (streak - 2).min(5)).min(MAX_BACKOFF)
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
    /// Records sent to the dead-letter sink.
    pub dead_lettered: AtomicU64,
    /// Records discarded by the `skip` policy.
    pub skipped: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
    /// Plugin failures (trap, deadline, memory, error returned, init).
    pub failures: AtomicU64,
    /// Plugin instances created after the first.
    pub restarts: AtomicU64,
    /// Every plugin version the stage has run, the active one last.
    versions: Mutex<Vec<Arc<PluginVersion>>>,
    /// An aggregator stage's windows: watermark, open windows and keys, state bytes.
    pub(crate) windows: Mutex<Option<crate::window::WindowMetrics>>,
    phase: Mutex<Option<Phase>>,
    last_error: Mutex<Option<String>>,
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
    /// Batches processed.
    pub batches: u64,
    /// Plugin failures.
    pub failures: u64,
    /// Instance restarts.
    pub restarts: u64,
    /// The most recent failure.
    pub last_error: Option<String>,
    /// Every plugin version it has run (hot swaps), the active one last.
    pub versions: Vec<VersionStatus>,
    /// An aggregator stage's windows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub windows: Option<crate::window::WindowMetrics>,
}

impl StageStats {
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

    pub(crate) fn set_phase(&self, phase: Phase) {
        if let Ok(mut p) = self.phase.lock() {
            *p = Some(phase);
        }
    }

    pub(crate) fn set_error(&self, e: String) {
        if let Ok(mut l) = self.last_error.lock() {
            *l = Some(e);
        }
    }
}

/// A stage ready to run on its own thread.
pub struct Stage {
    spec: Arc<StageSpec>,
    plugin: TransformerPlugin,
    streams: Arc<dyn StreamStore>,
    output: StageOutput,
    dead_letters: Arc<FileSink>,
    origin: DeadLetterOrigin,
    stats: Arc<StageStats>,
    draining: Arc<AtomicBool>,
    /// The version running now, and the one before the last swap (for rollback).
    version: Arc<PluginVersion>,
    previous: Option<(TransformerPlugin, Arc<PluginVersion>)>,
    /// Until when the version swapped in last is watched for failures.
    probation_until: Option<Instant>,
    commands: Receiver<(SwapCommand, Sender<SwapReply>)>,
    commands_in: Sender<(SwapCommand, Sender<SwapReply>)>,
}

/// A running stage.
pub struct StageHandle {
    /// Its counters.
    pub stats: Arc<StageStats>,
    name: String,
    commands: Mutex<Sender<(SwapCommand, Sender<SwapReply>)>>,
    /// The stream it reads.
    pub input: String,
    /// The stream it writes, if it writes to one.
    pub output_stream: Option<String>,
    draining: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl StageHandle {
    /// The handle of a stage running on `thread` (an aggregator stage; transform stages use [`Stage::spawn`]).
    pub(crate) fn running(
        name: String,
        stats: Arc<StageStats>,
        commands: Sender<(SwapCommand, Sender<SwapReply>)>,
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
            phase: s.phase.lock().ok().and_then(|p| *p).unwrap_or(Phase::Running),
            records_in: get(&s.records_in),
            records_out: get(&s.records_out),
            dropped: get(&s.dropped),
            dead_lettered: get(&s.dead_lettered),
            skipped: get(&s.skipped),
            batches: get(&s.batches),
            failures: get(&s.failures),
            restarts: get(&s.restarts),
            last_error: s.last_error.lock().ok().and_then(|l| l.clone()),
            versions,
            windows: s.windows.lock().ok().and_then(|w| *w),
        }
    }

    /// Hands a command to the stage and waits (at most `timeout`) for it to
    /// be applied at the next batch boundary.
    pub fn command(&self, command: SwapCommand, timeout: Duration) -> SwapReply {
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

/// The first shard of a stage's input, starting at `from` and going round, with
/// records past its position and no unfinished parent: a parent's records all
/// come before its children's, so order per key holds across resharding.
/// Shards opened by resharding since the last call are registered first.
pub(crate) fn next_ready_shard(
    streams: &dyn StreamStore,
    spec: &StageSpec,
    positions: &mut Vec<u64>,
    from: usize,
) -> Result<Option<usize>, StreamError> {
    let input = spec.input.as_str();
    let lineage = streams.lineage(input)?;
    while positions.len() < lineage.len() {
        let shard = positions.len() as u32;
        positions.push(streams.register_consumer(input, shard, spec.name.as_str())?);
    }
    let finished = |p: u32| lineage[p as usize].closed_at.is_some_and(|end| positions[p as usize] >= end);
    for k in 0..positions.len() {
        let shard = (from + k) % positions.len();
        if lineage[shard].parents.iter().all(|&p| finished(p)) && streams.end(input, shard as u32)? > positions[shard] {
            return Ok(Some(shard));
        }
    }
    Ok(None)
}

/// The next batch of a stage's input shard: unless `draining`, a partial batch
/// first gets `batch-wait` to fill up. Records that retention dropped before they
/// were read are gone, as in Kinesis: the position moves past them and the batch
/// is empty.
pub(crate) fn read_batch(
    streams: &dyn StreamStore,
    spec: &StageSpec,
    positions: &mut [u64],
    shard: usize,
    draining: bool,
) -> Result<Vec<StoredRecord>, StreamError> {
    let (input, position) = (spec.input.as_str(), positions[shard]);
    if !draining {
        let _ = streams.wait_for(input, shard as u32, position, spec.batch_size, spec.batch_wait);
    }
    match streams.read(input, shard as u32, position, spec.batch_size) {
        Err(StreamError::Trimmed { oldest, .. }) => {
            tracing::warn!(expired = oldest - position, "records expired before this stage read them");
            positions[shard] = oldest;
            Ok(Vec::new())
        }
        other => other,
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
                    key: r.key.to_owned(),
                    event_time_ms: Some(r.event_time_ms),
                    data: Bytes::copy_from_slice(r.payload),
                    explicit_hash_key: None,
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
            std::thread::sleep(IDLE_POLL);
        }
    }
    Ok(())
}

/// How a batch ended.
enum BatchEnd {
    /// Done with it: checkpoint past it.
    Done,
    /// Not done: try the same batch again (after backoff).
    Retry,
    /// The stage stops here.
    Stop,
}

impl Stage {
    /// A stage, ready to [`Stage::spawn`].
    pub fn new(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: TransformerPlugin,
        streams: Arc<dyn StreamStore>,
        output: StageOutput,
        dead_letters: Arc<FileSink>,
    ) -> Self {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        let stats = Arc::new(StageStats::default());
        if let Ok(mut versions) = stats.versions.lock() {
            versions.push(version.clone());
        }
        let (commands_in, commands) = std::sync::mpsc::channel();
        Self {
            spec,
            plugin,
            streams,
            output,
            dead_letters,
            origin,
            stats,
            draining: Arc::default(),
            version,
            previous: None,
            probation_until: None,
            commands,
            commands_in,
        }
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        self.spec.name.as_str()
    }

    /// Starts the stage on its own thread.
    pub fn spawn(self) -> std::io::Result<StageHandle> {
        let stats = self.stats.clone();
        let name = self.spec.name.to_string();
        let commands = Mutex::new(self.commands_in.clone());
        let input = self.spec.input.to_string();
        let output_stream = match &self.output {
            StageOutput::Stream(s) => Some(s.clone()),
            StageOutput::Sink(_) => None,
        };
        let draining = self.draining.clone();
        let thread = std::thread::Builder::new().name(format!("stage-{name}")).spawn(move || self.run())?;
        Ok(StageHandle { stats, name, commands, input, output_stream, draining, thread: Mutex::new(Some(thread)) })
    }

    fn run(mut self) {
        let span = tracing::info_span!("stage", pipeline = %self.origin.pipeline, stage = %self.origin.stage, plugin = %self.origin.plugin);
        let _enter = span.enter();
        let spec = self.spec.clone();
        let (input, consumer) = (spec.input.as_str(), spec.name.as_str());
        // One position per shard; batches never mix shards, so order per key holds.
        let positions: Result<Vec<u64>, StreamError> = self
            .streams
            .shard_count(input)
            .and_then(|n| (0..n).map(|shard| self.streams.register_consumer(input, shard, consumer)).collect());
        let mut positions = match positions {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the input stream; stage stopped");
                self.stats.set_phase(Phase::Stopped);
                return;
            }
        };
        self.stats.set_phase(Phase::Running);
        let mut instance: Option<TransformerInstance> = None;
        let mut instances_created = 0u64;
        let mut consecutive_failures = 0u32;
        let mut next_shard = 0usize;
        loop {
            // A batch boundary: swaps and rollbacks happen here, never inside a batch.
            while let Ok((command, reply)) = self.commands.try_recv() {
                let _ = reply.send(self.apply(command, &mut instance));
            }
            let seen = self.streams.changes(input).unwrap_or(0);
            let ready = match next_ready_shard(self.streams.as_ref(), &self.spec, &mut positions, next_shard) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "input stream failed; stage stopped");
                    self.stats.set_phase(Phase::Stopped);
                    return;
                }
            };
            let Some(shard) = ready else {
                if self.draining.load(Ordering::Relaxed) {
                    break;
                }
                let _ = self.streams.wait_change(input, seen, IDLE_POLL);
                continue;
            };
            next_shard = shard + 1;
            let shard_index = shard as u32;
            let draining = self.draining.load(Ordering::Relaxed);
            let records = match read_batch(self.streams.as_ref(), &self.spec, &mut positions, shard, draining) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "reading the input stream failed; stage stopped");
                    self.stats.set_phase(Phase::Stopped);
                    return;
                }
            };
            let Some(next) = records.last().map(|r| r.sequence + 1) else { continue };
            let (end, plugin_failed) = self.process(&records, &mut instance, &mut instances_created);
            let rolled_back = crate::swap::probation_failed(
                &self.version,
                &mut self.probation_until,
                self.spec.hot_swap.max_failure_rate,
            )
            .is_some_and(|why| {
                let back = self.apply(SwapCommand::Rollback, &mut instance);
                match &back {
                    Ok(v) => tracing::warn!(to = %v.sha256, "{why}; rolled back automatically"),
                    Err(e) => tracing::error!(error = %e, "{why}; the rollback failed"),
                }
                self.stats.set_error(format!("{why}; rolled back automatically"));
                back.is_ok()
            });
            match end {
                BatchEnd::Done => {
                    positions[shard] = next;
                    if let Err(e) = self.streams.checkpoint(input, shard_index, consumer, next) {
                        tracing::error!(error = %e, "checkpoint failed");
                    }
                }
                BatchEnd::Retry if self.draining.load(Ordering::Relaxed) => {
                    // Shutting down and the batch cannot be processed now: do not
                    // hang the shutdown; the records were never checkpointed.
                    let left: u64 = positions
                        .iter()
                        .zip(0..)
                        .map(|(p, s)| self.streams.end(input, s).unwrap_or(*p).saturating_sub(*p))
                        .sum();
                    tracing::error!(records = left, "shutting down with records this stage could not process");
                    self.stats.set_phase(Phase::Stopped);
                    return;
                }
                BatchEnd::Retry => next_shard = shard,
                BatchEnd::Stop => {
                    self.stats.set_phase(Phase::Stopped);
                    tracing::error!("stage stopped by its `stop` error policy; its records stay in the stream");
                    return;
                }
            }
            if rolled_back {
                consecutive_failures = 0;
            } else if plugin_failed {
                consecutive_failures += 1;
                self.back_off(consecutive_failures);
            } else {
                consecutive_failures = 0;
            }
        }
        if let Err(e) = self.dead_letters.sync() {
            tracing::error!(error = %e, "syncing the dead-letter sink failed");
        }
        if let StageOutput::Sink(sink) = &self.output
            && let Err(e) = sink.sync()
        {
            tracing::error!(error = %e, "syncing the output sink failed");
        }
        self.stats.set_phase(Phase::Finished);
    }

    /// Switches plugin versions between two batches.
    fn apply(&mut self, command: SwapCommand, instance: &mut Option<TransformerInstance>) -> SwapReply {
        let (plugin, fresh, version) = match command {
            SwapCommand::Swap(candidate) => {
                let Candidate { plugin, instance, version } = *candidate;
                (plugin, Some(instance), version)
            }
            SwapCommand::SwapAggregator(_) => {
                return Err(format!("stage `{}` runs a transformer, not an aggregator", self.spec.name));
            }
            SwapCommand::Rollback => {
                let Some((plugin, version)) = self.previous.take() else {
                    return Err(format!("stage `{}` has no previous version to roll back to", self.spec.name));
                };
                let again = PluginVersion::new(version.plugin.clone(), version.sha256.clone());
                (plugin, None, again)
            }
        };
        // A swapped-in version is on probation; a version rolled back to is not.
        self.probation_until = fresh.is_some().then(|| Instant::now() + self.spec.hot_swap.probation);
        let old_plugin = std::mem::replace(&mut self.plugin, plugin);
        let old_version = std::mem::replace(&mut self.version, version.clone());
        old_version.set_active(false);
        self.previous = Some((old_plugin, old_version.clone()));
        *instance = fresh;
        self.origin.plugin = version.plugin.clone();
        self.origin.plugin_sha256 = version.sha256.clone();
        if let Ok(mut versions) = self.stats.versions.lock() {
            versions.push(version.clone());
        }
        tracing::info!(from = %old_version.sha256, to = %version.sha256, plugin = %version.plugin, "plugin swapped at a batch boundary");
        Ok(version.status())
    }

    /// Sleeps before going on after a plugin failed `streak` times in a row.
    fn back_off(&self, streak: u32) {
        let delay = backoff_delay(streak);
        if delay.is_zero() {
            return;
        }
        tracing::warn!(
            delay_ms = delay.as_millis() as u64,
            failures_in_a_row = streak,
            "plugin keeps failing; backing off"
        );
        self.stats.set_phase(Phase::BackingOff);
        let until = Instant::now() + delay;
        while Instant::now() < until && !self.draining.load(Ordering::Relaxed) {
            std::thread::sleep(IDLE_POLL.min(until.saturating_duration_since(Instant::now())));
        }
        self.stats.set_phase(Phase::Running);
    }

    /// Runs one batch; also says whether the plugin failed on it.
    fn process(
        &self,
        records: &[StoredRecord],
        instance: &mut Option<TransformerInstance>,
        instances_created: &mut u64,
    ) -> (BatchEnd, bool) {
        let span = tracing::debug_span!("stage.batch", records = records.len());
        let _enter = span.enter();
        let mut batch = Batch::with_capacity(records.len(), records.iter().map(|r| r.data.len()).sum());
        for r in records {
            batch.push(&r.key, r.event_time_ms, &r.data);
        }
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        let result = match instance {
            Some(i) => i.transform(&batch),
            None => {
                if *instances_created > 0 {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
                *instances_created += 1;
                self.plugin.instantiate().and_then(|fresh| instance.insert(fresh).transform(&batch))
            }
        };
        match result {
            Ok(t) => {
                self.stats.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
                self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                (self.deliver(records, &t), false)
            }
            Err(e) => {
                if e.poisons_instance() || matches!(e, PluginError::Init(_)) {
                    *instance = None;
                }
                (self.failed(records, e), true)
            }
        }
    }

    /// Writes outputs and dead letters of a transformed batch.
    fn deliver(&self, records: &[StoredRecord], t: &crate::plugin::Transformed) -> BatchEnd {
        let mut out = Vec::with_capacity(t.output.len());
        let mut letters = Vec::new();
        let mut dropped = 0u64;
        for (i, outcome, outputs) in t.per_record() {
            match outcome {
                Outcome::Ok(_) => out.extend(outputs.iter().map(|r| OutRecord {
                    key: r.key,
                    event_time_ms: r.event_time_ms,
                    payload: r.payload,
                })),
                Outcome::Dropped => dropped += 1,
                Outcome::ProcessingFailed(reason) => letters.push(DeadLetter {
                    origin: &self.origin,
                    record: &records[i],
                    error_code: "processing-failed",
                    reason,
                }),
            }
        }
        if let Err(e) = self.write_output(&out) {
            tracing::error!(error = %e, "writing the output failed; the batch will be retried");
            self.stats.set_error(e.clone());
            std::thread::sleep(FIRST_BACKOFF);
            return BatchEnd::Retry;
        }
        if let Err(e) = self.dead_letters.write_dead_letters(&letters) {
            tracing::error!(error = %e, "writing dead letters failed; the batch will be retried");
            self.stats.set_error(e.to_string());
            std::thread::sleep(FIRST_BACKOFF);
            return BatchEnd::Retry;
        }
        self.stats.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.version.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.stats.dead_lettered.fetch_add(letters.len() as u64, Ordering::Relaxed);
        BatchEnd::Done
    }

    fn write_output(&self, out: &[OutRecord<'_>]) -> Result<(), String> {
        write_output(self.streams.as_ref(), &self.output, out)
    }

    /// The plugin failed on this batch: report it and apply the error policy.
    fn failed(&self, records: &[StoredRecord], e: PluginError) -> BatchEnd {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        self.version.failures.fetch_add(1, Ordering::Relaxed);
        let message = format!("{}: {e}", self.plugin.spec.ident);
        tracing::error!(error_code = e.code(), records = records.len(), policy = ?self.spec.on_error, "{message}");
        self.stats.set_error(message);
        if matches!(e, PluginError::Init(_) | PluginError::Instantiate(_)) {
            // The plugin never saw these records: keep them and try again later.
            return if self.spec.on_error == ErrorPolicy::Stop { BatchEnd::Stop } else { BatchEnd::Retry };
        }
        self.stats.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        match self.spec.on_error {
            ErrorPolicy::DeadLetter => {
                let reason = e.to_string();
                let letters: Vec<_> = records
                    .iter()
                    .map(|record| DeadLetter { origin: &self.origin, record, error_code: e.code(), reason: &reason })
                    .collect();
                match self.dead_letters.write_dead_letters(&letters) {
                    Ok(()) => {
                        self.stats.dead_lettered.fetch_add(records.len() as u64, Ordering::Relaxed);
                        BatchEnd::Done
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "writing dead letters failed; the batch will be retried");
                        BatchEnd::Retry
                    }
                }
            }
            ErrorPolicy::Skip => {
                self.stats.skipped.fetch_add(records.len() as u64, Ordering::Relaxed);
                BatchEnd::Done
            }
            ErrorPolicy::Stop => BatchEnd::Stop,
        }
    }
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
