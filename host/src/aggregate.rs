//! An aggregator stage: reads its input stream, places each record in its
//! event-time windows ([`crate::window`]), folds it into the (window, key)
//! state through the aggregator plugin, and when a window closes, turns its
//! states into result records through the plugin's `emit` and appends them to
//! the output stream (or sink). Late records go to the stage's `late` stream
//! (or else its dead letters) with the reason, never silently away.
//!
//! After every batch the stage writes its checkpoint: the input positions, the
//! window state and the plugin's state version together, atomically
//! (`<data-dir>/stage-state/<stage>.json`).
//! A restart goes on from there, so every record is counted once. Results
//! emitted after the last checkpoint are emitted again after a crash,
//! identical (same window, key and content), so a consumer can drop repeats.
//!
//! A hot swap happens between two batches. The open windows' states go on with
//! the new version when its state version is the same; otherwise the swap is
//! refused unless the operator asked to migrate them (through the candidate's
//! `state-migration` export, all or nothing) or to reset them.

use std::borrow::Cow;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::manifest::StageSpec;
use crate::plugin::{AggregatorInstance, AggregatorPlugin, Batch};
use crate::reference::ReferenceTables;
use crate::sink::{DeadLetter, DeadLetterOrigin, FileSink, OutRecord};
use crate::stage::{Phase, StageHandle, StageOutput, StageStats, backoff_delay};
use crate::stream::{NewRecord, StoredRecord, StreamError, StreamStore, now_ms};
use crate::swap::{AggregatorCandidate, PluginVersion, StateChange, SwapCommand, SwapReply};
use crate::window::{FoldRecord, WindowOperator};

/// Failures in a row on one batch before its records go to the dead letters.
const GIVE_UP_AFTER: u32 = 3;
/// How often an idle stage looks for windows to close and for a shutdown.
const IDLE_POLL: Duration = Duration::from_millis(100);
/// States handed to a migration per call, so a million keys do not need one huge guest allocation.
const MIGRATE_CHUNK: usize = 4096;

/// What is saved after every batch.
#[derive(Serialize, Deserialize)]
struct Checkpoint {
    /// Next position to read, per shard.
    positions: Vec<u64>,
    /// The window operator's snapshot, base64.
    windows: String,
    /// The layout version of the states in `windows` (absent in checkpoints of weir 0.1).
    #[serde(default)]
    state_version: Option<u32>,
}

/// An aggregator stage, ready to [`AggregateStage::spawn`].
pub struct AggregateStage {
    spec: Arc<StageSpec>,
    plugin: AggregatorPlugin,
    streams: Arc<dyn StreamStore>,
    output: StageOutput,
    dead_letters: Arc<FileSink>,
    origin: DeadLetterOrigin,
    state_file: PathBuf,
    stats: Arc<StageStats>,
    draining: Arc<AtomicBool>,
    /// The version running now, the layout version of its states, and the
    /// version before the last swap (for rollback).
    version: Arc<PluginVersion>,
    state_version: u32,
    previous: Option<(AggregatorPlugin, Arc<PluginVersion>, u32)>,
    /// Until when the version swapped in last is watched for failures.
    probation_until: Option<Instant>,
    /// The pipeline's reference tables: one may name expected keys.
    references: Arc<ReferenceTables>,
}

impl AggregateStage {
    /// A stage; its checkpoint lives under `state_dir`.
    pub fn new(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: AggregatorPlugin,
        streams: Arc<dyn StreamStore>,
        output: StageOutput,
        dead_letters: Arc<FileSink>,
        state_dir: PathBuf,
    ) -> Self {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let stats = Arc::new(StageStats::default());
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        stats.start_version(version.clone());
        // A stage name is a manifest name (lowercase letters, digits, '-'): one plain component.
        let state_file = state_dir.join(format!("{}.json", spec.name));
        Self {
            spec,
            plugin,
            streams,
            output,
            dead_letters,
            origin,
            state_file,
            stats,
            draining: Arc::default(),
            version,
            state_version: 0,
            previous: None,
            probation_until: None,
            references: ReferenceTables::empty(),
        }
    }

    /// Lets the stage take expected keys from the pipeline's reference tables.
    pub fn with_references(mut self, references: Arc<ReferenceTables>) -> Self {
        self.references = references;
        self
    }

    /// Starts the stage on its own thread.
    pub fn spawn(self) -> std::io::Result<StageHandle> {
        let (commands, requests) = std::sync::mpsc::channel();
        let (name, stats, draining) = (self.spec.name.to_string(), self.stats.clone(), self.draining.clone());
        let input = self.spec.input.to_string();
        let output_stream = match &self.output {
            StageOutput::Stream(s) => Some(s.clone()),
            StageOutput::Sink(_) => None,
        };
        let thread = std::thread::Builder::new().name(format!("stage-{name}")).spawn(move || self.run(requests))?;
        Ok(StageHandle::running(name, stats, commands, input, output_stream, draining, thread))
    }

    fn run(mut self, requests: Receiver<(SwapCommand, Sender<SwapReply>)>) {
        let span = tracing::info_span!("stage", pipeline = %self.origin.pipeline, stage = %self.origin.stage, plugin = %self.origin.plugin);
        let _enter = span.enter();
        let spec = self.spec.clone();
        let (input, consumer) = (spec.input.as_str(), spec.name.as_str());
        let mut instance: Option<AggregatorInstance> = None;
        let Some((mut operator, mut positions)) = self.restore(&mut instance) else {
            self.stats.set_phase(Phase::Stopped);
            return;
        };
        self.stats.set_phase(Phase::Running);
        let mut failures = 0u32;
        let mut next_shard = 0usize;
        let mut expected_generation = 0u64;
        loop {
            self.refresh_expected_keys(&mut operator, &mut expected_generation);
            // A batch boundary: swaps and rollbacks happen here, never inside a batch.
            while let Ok((command, reply)) = requests.try_recv() {
                let answer = self.apply(command, &mut instance, &mut operator);
                if answer.is_ok() {
                    // The new version and the states it continues with, before anything else.
                    self.save(&operator, &positions);
                }
                let _ = reply.send(answer);
            }
            let draining = self.draining.load(Ordering::Relaxed);
            let seen = self.streams.changes(input).unwrap_or(0);
            let shards = self.streams.shard_count(input).unwrap_or(positions.len() as u32) as usize;
            while positions.len() < shards {
                let shard = positions.len() as u32;
                positions.push(self.streams.register_consumer(input, shard, consumer).unwrap_or(0));
                operator.add_shard(shard, now_ms());
            }
            // The next shard with records, going round.
            let ready = (0..shards)
                .map(|k| (next_shard + k) % shards)
                .find(|&s| self.streams.end(input, s as u32).is_ok_and(|end| end > positions[s]));
            let mut changed = false;
            if let Some(shard) = ready {
                next_shard = shard + 1;
                if !draining {
                    let _ = self.streams.wait_for(
                        input,
                        shard as u32,
                        positions[shard],
                        self.spec.batch_size,
                        self.spec.batch_wait,
                    );
                }
                match self.streams.read(input, shard as u32, positions[shard], self.spec.batch_size) {
                    Ok(records) if !records.is_empty() => {
                        match self.fold_watched(&mut operator, &mut instance, &records) {
                            Ok(()) => {
                                positions[shard] = records[records.len() - 1].sequence + 1;
                                failures = 0;
                                changed = true;
                            }
                            Err(Folding::RolledBack(e)) => {
                                // The batch goes to the version rolled back to, from its first try.
                                failures = 0;
                                self.failed(&e, 1);
                                continue;
                            }
                            Err(Folding::Failed(e)) if failures + 1 >= GIVE_UP_AFTER => {
                                // A batch the plugin keeps refusing: set aside with the reason, not retried forever.
                                self.set_aside(&records, &e);
                                positions[shard] = records[records.len() - 1].sequence + 1;
                                failures = 0;
                                changed = true;
                            }
                            Err(Folding::Failed(e)) => {
                                failures += 1;
                                self.failed(&e, failures);
                                continue;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(StreamError::Trimmed { oldest, .. }) => {
                        tracing::warn!(
                            expired = oldest - positions[shard],
                            "records expired before this stage read them"
                        );
                        positions[shard] = oldest;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "reading the input stream failed; stage stopped");
                        self.stats.set_phase(Phase::Stopped);
                        return;
                    }
                }
            }
            // Close what the watermark has passed, whether records came or not.
            operator.advance(now_ms());
            while let Some(closed) = operator.pop_due() {
                changed = true;
                if let Err(e) = self.emit(&mut instance, &closed) {
                    // The window's states are in the last checkpoint: the restart emits it.
                    failures += 1;
                    self.failed(&e, failures);
                    tracing::error!(window = %closed.window, "a window's results could not be emitted; the stage stops to keep them");
                    self.stats.set_phase(Phase::Stopped);
                    return;
                }
            }
            if changed {
                if let Ok(mut metrics) = self.stats.windows.lock() {
                    *metrics = Some(operator.metrics(now_ms()));
                }
                self.save(&operator, &positions);
                for (shard, &position) in positions.iter().enumerate() {
                    let _ = self.streams.checkpoint(input, shard as u32, consumer, position);
                }
                continue;
            }
            if draining {
                break;
            }
            let _ = self.streams.wait_change(input, seen, IDLE_POLL);
        }
        if let Err(e) = self.dead_letters.sync() {
            tracing::error!(error = %e, "syncing the dead-letter sink failed");
        }
        self.stats.set_phase(Phase::Finished);
    }

    /// The checkpoint of the last run, or a fresh start at the consumer's positions.
    /// The plugin is instantiated first: the checkpoint's states must be in its layout.
    fn restore(&mut self, instance: &mut Option<AggregatorInstance>) -> Option<(WindowOperator, Vec<u64>)> {
        let Some(window) = self.spec.window.clone() else {
            tracing::error!("an aggregator stage needs a window");
            return None;
        };
        self.state_version = match self.instance(instance).and_then(|i| i.state_version().map_err(|e| e.to_string())) {
            Ok(v) => {
                let _ = self.version.state_version.set(v);
                v
            }
            Err(e) => {
                tracing::error!(error = %e, "the plugin cannot start; stage stopped");
                self.stats.set_error(e);
                return None;
            }
        };
        let now = now_ms();
        let saved = std::fs::read(&self.state_file).ok().and_then(|b| serde_json::from_slice::<Checkpoint>(&b).ok());
        let (operator, positions) = match saved {
            Some(c) => {
                if let Some(saved) = c.state_version.filter(|&v| v != self.state_version) {
                    let e = format!(
                        "the checkpoint {} holds open windows in state version {saved}, but plugin `{}` keeps \
                         version {}: run the plugin that wrote them and hot-swap this one in with state \
                         `migrate` or `reset`",
                        self.state_file.display(),
                        self.version.plugin,
                        self.state_version
                    );
                    tracing::error!(error = %e, "stage stopped");
                    self.stats.set_error(e);
                    return None;
                }
                let snapshot = base64::engine::general_purpose::STANDARD.decode(&c.windows).unwrap_or_default();
                match WindowOperator::restore(window, &snapshot, now) {
                    Ok(op) => (op, c.positions),
                    Err(e) => {
                        tracing::error!(error = %e, file = %self.state_file.display(), "the stage's checkpoint cannot be restored; stage stopped");
                        return None;
                    }
                }
            }
            None => match WindowOperator::new(window) {
                Ok(op) => (op, Vec::new()),
                Err(e) => {
                    tracing::error!(error = %e, "the window is not valid; stage stopped");
                    return None;
                }
            },
        };
        Some((operator, positions))
    }

    /// The manifest's expected keys, and those of the reference table it names,
    /// as of that table's latest version (`generation` remembers which was used).
    fn refresh_expected_keys(&self, operator: &mut WindowOperator, generation: &mut u64) {
        let table = self.spec.expected_keys_from.as_ref().and_then(|(t, c)| Some((self.references.get(t)?, c)));
        let current = table.map_or(1, |(t, _)| t.generation());
        if current == *generation {
            return;
        }
        let mut keys: std::collections::BTreeSet<String> = self.spec.expected_keys.iter().cloned().collect();
        if let Some((table, column)) = table {
            keys.extend(table.distinct(column));
        }
        if *generation != 0 {
            tracing::info!(keys = keys.len(), "expected keys reloaded with their reference table");
        }
        operator.set_expected_keys(keys);
        *generation = current;
    }

    /// Writes the positions and window state together: temp file, fsync, rename.
    fn save(&self, operator: &WindowOperator, positions: &[u64]) {
        let checkpoint = Checkpoint {
            positions: positions.to_vec(),
            windows: base64::engine::general_purpose::STANDARD.encode(operator.snapshot()),
            state_version: Some(self.state_version),
        };
        let tmp = self.state_file.with_extension("tmp");
        let result = serde_json::to_vec(&checkpoint)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = tmp.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.state_file));
        if let Err(e) = result {
            tracing::error!(error = %e, "writing the stage's checkpoint failed");
            self.stats.set_error(format!("writing the checkpoint: {e}"));
        }
    }

    fn instance<'a>(&self, instance: &'a mut Option<AggregatorInstance>) -> Result<&'a mut AggregatorInstance, String> {
        if instance.is_none() {
            *instance = Some(self.plugin.instantiate().map_err(|e| e.to_string())?);
        }
        instance.as_mut().ok_or_else(|| "no instance".to_owned())
    }

    /// Switches plugin versions between two batches, carrying the open windows' states over.
    fn apply(
        &mut self,
        command: SwapCommand,
        instance: &mut Option<AggregatorInstance>,
        operator: &mut WindowOperator,
    ) -> SwapReply {
        let stage = self.spec.name.clone();
        let (plugin, fresh, version, state_version) = match command {
            SwapCommand::Swap(_) => {
                return Err(format!("stage `{stage}` runs an aggregator: the candidate must be one too"));
            }
            SwapCommand::SwapAggregator(candidate) => {
                let AggregatorCandidate { plugin, mut instance, version, state_version, state } = *candidate;
                let running = self.state_version;
                match state {
                    StateChange::Reset => {
                        let dropped = operator.reset_states();
                        tracing::warn!(dropped, "the swap reset the open windows' states");
                    }
                    _ if state_version == running => {}
                    StateChange::Keep => {
                        return Err(format!(
                            "the candidate keeps its states in version {state_version}, the open windows hold \
                             version {running}: swap with state `migrate` (the candidate exports \
                             `state-migration`) or `reset` (drops the open windows' states)"
                        ));
                    }
                    StateChange::Migrate => {
                        operator
                            .rewrite_states(|states| {
                                let mut out = Vec::with_capacity(states.len());
                                for chunk in states.chunks(MIGRATE_CHUNK) {
                                    out.extend(instance.migrate(running, chunk)?);
                                }
                                Ok::<_, crate::plugin::PluginError>(out)
                            })
                            .map_err(|e| {
                                format!("migrating the open windows' states from version {running} failed, nothing changed: {e}")
                            })?;
                        tracing::info!(from = running, to = state_version, "the open windows' states were migrated");
                    }
                }
                (plugin, Some(instance), version, state_version)
            }
            SwapCommand::Rollback => {
                let Some((plugin, version, state_version)) = self.previous.take() else {
                    return Err(format!("stage `{stage}` has no previous version to roll back to"));
                };
                if state_version != self.state_version {
                    let e = format!(
                        "{} keeps states in version {state_version}, the open windows hold version {} since the \
                         swap: roll back by swapping in a build that migrates them",
                        version.plugin, self.state_version
                    );
                    self.previous = Some((plugin, version, state_version));
                    return Err(e);
                }
                let again = PluginVersion::new(version.plugin.clone(), version.sha256.clone());
                let _ = again.state_version.set(state_version);
                (plugin, None, again, state_version)
            }
        };
        // A swapped-in version is on probation; a version rolled back to is not.
        self.probation_until = fresh.is_some().then(|| Instant::now() + self.spec.hot_swap.probation);
        let old_plugin = std::mem::replace(&mut self.plugin, plugin);
        let old_version = std::mem::replace(&mut self.version, version.clone());
        let old_state_version = std::mem::replace(&mut self.state_version, state_version);
        old_version.set_active(false);
        self.previous = Some((old_plugin, old_version.clone(), old_state_version));
        *instance = fresh;
        self.origin.plugin = version.plugin.clone();
        self.origin.plugin_sha256 = version.sha256.clone();
        self.stats.start_version(version.clone());
        tracing::info!(from = %old_version.sha256, to = %version.sha256, plugin = %version.plugin, "plugin swapped at a batch boundary");
        Ok(version.status())
    }

    /// Folds a batch and counts it for the running version; a version on probation
    /// failing too often is rolled back on the spot.
    fn fold_watched(
        &mut self,
        operator: &mut WindowOperator,
        instance: &mut Option<AggregatorInstance>,
        records: &[StoredRecord],
    ) -> Result<(), Folding> {
        let result = self.fold(operator, instance, records);
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        } else {
            self.version.failures.fetch_add(1, Ordering::Relaxed);
        }
        let max_rate = self.spec.hot_swap.max_failure_rate;
        let verdict = crate::swap::probation_failed(&self.version, &mut self.probation_until, max_rate);
        let rolled_back = verdict.is_some_and(|why| match self.apply(SwapCommand::Rollback, instance, operator) {
            Ok(v) => {
                tracing::warn!(to = %v.sha256, "{why}; rolled back automatically");
                self.stats.set_error(format!("{why}; rolled back automatically"));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "{why}; the rollback failed");
                false
            }
        });
        match result {
            Ok(()) => Ok(()),
            Err(e) if rolled_back => Err(Folding::RolledBack(e)),
            Err(e) => Err(Folding::Failed(e)),
        }
    }

    /// Folds a batch into the window states; late records go to the dead letters.
    fn fold(
        &self,
        operator: &mut WindowOperator,
        instance: &mut Option<AggregatorInstance>,
        records: &[StoredRecord],
    ) -> Result<(), String> {
        let now = now_ms();
        let time = self.spec.window.as_ref().map(|w| w.time).unwrap_or_default();
        // Each record's group: its partition key, or its payload's `group-by` field.
        let mut grouped: Vec<(usize, Cow<'_, str>)> = Vec::with_capacity(records.len());
        let mut ungroupable = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match &self.spec.group_by {
                None => grouped.push((i, Cow::Borrowed(r.key.as_str()))),
                Some(field) => match json_field(&r.data, field) {
                    Ok(key) => grouped.push((i, Cow::Owned(key))),
                    Err(reason) => ungroupable.push((i, reason)),
                },
            }
        }
        let mut plan = operator.plan_fold(
            grouped.iter().map(|(i, key)| FoldRecord {
                shard: records[*i].shard,
                key,
                time_ms: time.pick(records[*i].event_time_ms, records[*i].arrival_ms),
            }),
            now,
        );
        let payload_bytes = plan.rows.iter().map(|&row| records[grouped[row].0].data.len()).sum();
        let mut batch = Batch::with_capacity(plan.rows.len(), payload_bytes);
        for &row in &plan.rows {
            let (i, key) = &grouped[row];
            batch.push(key, records[*i].event_time_ms, &records[*i].data);
        }
        let set_aside = std::mem::take(&mut plan.set_aside);
        let late: Vec<DeadLetter<'_>> = set_aside
            .iter()
            .map(|s| DeadLetter {
                origin: &self.origin,
                record: &records[grouped[s.index].0],
                error_code: "late",
                reason: &s.reason,
            })
            .collect();
        let ungroupable: Vec<DeadLetter<'_>> = ungroupable
            .iter()
            .map(|(i, reason)| DeadLetter {
                origin: &self.origin,
                record: &records[*i],
                error_code: "group-by",
                reason,
            })
            .collect();
        let folded = if plan.rows.is_empty() {
            Ok(())
        } else {
            self.instance(instance)
                .and_then(|running| running.fold(&batch, &plan.groups, &mut plan.states).map_err(|e| e.to_string()))
        };
        // Folded or not, the states go back (a failed fold left them as they were).
        operator.apply_fold(plan);
        if let Err(e) = folded {
            // A fresh instance for the retry.
            *instance = None;
            return Err(e);
        }
        self.dead_letters.write_dead_letters(&ungroupable).map_err(|e| e.to_string())?;
        self.stats.dead_lettered.fetch_add(ungroupable.len() as u64, Ordering::Relaxed);
        match &self.spec.late {
            None => self.dead_letters.write_dead_letters(&late).map_err(|e| e.to_string())?,
            Some(stream) => {
                // The side stream gets the dead-letter JSON: the record, its origin and the reason.
                let records: Vec<NewRecord> = late
                    .iter()
                    .map(|l| NewRecord {
                        key: l.record.key.clone(),
                        event_time_ms: Some(l.record.event_time_ms),
                        data: bytes::Bytes::from(l.to_json().to_string()),
                        explicit_hash_key: None,
                    })
                    .collect();
                crate::stage::append_waiting(self.streams.as_ref(), stream.as_str(), records)?;
            }
        }
        self.stats.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        if self.spec.late.is_none() {
            self.stats.dead_lettered.fetch_add(late.len() as u64, Ordering::Relaxed);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Turns a closed window's states into results and writes them out.
    fn emit(
        &self,
        instance: &mut Option<AggregatorInstance>,
        closed: &crate::window::ClosedWindow,
    ) -> Result<(), String> {
        let results = self
            .instance(instance)?
            .emit(closed.window.start, closed.window.end, &closed.keys, &closed.states)
            .map_err(|e| {
                *instance = None;
                e.to_string()
            })?;
        let out: Vec<OutRecord<'_>> = results
            .records()
            .map(|r| OutRecord { key: r.key, event_time_ms: r.event_time_ms, payload: r.payload })
            .collect();
        crate::stage::write_output(self.streams.as_ref(), &self.output, &out)?;
        self.stats.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.version.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn set_aside(&self, records: &[StoredRecord], error: &str) {
        let reason = format!("the aggregator failed on this batch {GIVE_UP_AFTER} times: {error}");
        let letters: Vec<DeadLetter<'_>> = records
            .iter()
            .map(|record| DeadLetter { origin: &self.origin, record, error_code: "aggregate-failed", reason: &reason })
            .collect();
        if let Err(e) = self.dead_letters.write_dead_letters(&letters) {
            tracing::error!(error = %e, "writing dead letters failed");
        }
        self.stats.dead_lettered.fetch_add(records.len() as u64, Ordering::Relaxed);
    }

    fn failed(&self, error: &str, streak: u32) {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(error, "aggregator failed; the batch is retried");
        self.stats.set_error(error.to_owned());
        let delay = backoff_delay(streak);
        if !delay.is_zero() && !self.draining.load(Ordering::Relaxed) {
            self.stats.set_phase(Phase::BackingOff);
            std::thread::sleep(delay);
            self.stats.set_phase(Phase::Running);
        }
    }
}

/// How folding a batch failed.
enum Folding {
    /// The plugin failed; the batch is retried.
    Failed(String),
    /// The plugin failed and the version on probation was rolled back.
    RolledBack(String),
}

/// The value of `field` in a JSON object payload, as a group key: strings as
/// they are, numbers and booleans as their text.
fn json_field(payload: &[u8], field: &str) -> Result<String, String> {
    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
    struct Field<'f>(&'f str);
    impl<'de> Visitor<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == self.0 && found.is_none() {
                    found = Some(map.next_value::<serde_json::Value>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    impl<'de> DeserializeSeed<'de> for Field<'_> {
        type Value = Option<serde_json::Value>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(payload);
    let value = Field(field)
        .deserialize(&mut de)
        .map_err(|e| format!("group-by `{field}`: the payload is not a JSON object: {e}"))?;
    match value {
        Some(serde_json::Value::String(s)) => Ok(s),
        Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => Ok(v.to_string()),
        Some(_) => Err(format!("group-by `{field}`: the field is not a string, number or boolean")),
        None => Err(format!("group-by `{field}`: the payload has no such field")),
    }
}

/// Whether a stage's plugin runs in an [`AggregateStage`].
pub fn is_aggregator(spec: &StageSpec) -> bool {
    spec.window.is_some()
}

#[cfg(test)]
mod tests {
    use super::json_field;

    #[test]
    fn a_group_key_is_a_payload_field_as_text() {
        let row = br#"{"transaction_id":"T1","station_id":17,"lane":"3","nested":{"station_id":1},"ok":true}"#;
        assert_eq!(json_field(row, "station_id").as_deref(), Ok("17"));
        assert_eq!(json_field(row, "lane").as_deref(), Ok("3"));
        assert_eq!(json_field(row, "ok").as_deref(), Ok("true"));
        assert!(json_field(row, "nested").is_err_and(|e| e.contains("not a string, number or boolean")));
        assert!(json_field(row, "customer_id").is_err_and(|e| e.contains("no such field")));
        assert!(json_field(b"17,3", "station_id").is_err_and(|e| e.contains("not a JSON object")));
    }
}
