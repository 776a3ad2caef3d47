//! An aggregator stage's [`Operator`]: each batch's records are placed in
//! their event-time windows ([`crate::window`]) and folded into the (window,
//! key) states through the aggregator plugin; a window the watermark has
//! passed is turned into result records through the plugin's `emit` and
//! written to the stage's output. Within the allowed lateness a late record
//! revises its window: the window is emitted again for the keys that changed,
//! with their whole states so far (a consumer replaces the result it had for
//! that window and key). Records later than that go to the stage's `late`
//! stream (or else its dead letters) with the reason, never silently away,
//! and are counted in the stage's status.
//!
//! The checkpoint holds the input positions, the window states and the
//! plugin's state version together, written atomically after every batch
//! (`<data-dir>/stage-state/<stage>.json`): a restart goes on from there, so
//! every record is counted once. A batch is done when it is folded and every
//! window it closed is written out; a window whose results cannot be written
//! is kept and written first when the batch is redone, which does not fold it
//! again. Results written after the last checkpoint are written again after a
//! crash, identical (same window, key and content), so a consumer can drop repeats.
//! A checkpoint that cannot be read stops the stage with the reason instead of
//! starting over with no windows.
//!
//! A hot swap happens between two batches. The open windows' states go on with
//! the new version when its state version is the same; otherwise the swap is
//! refused unless the operator asked to migrate them (through the candidate's
//! `state-migration` export, all or nothing) or to reset them.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::driver::{BatchError, Driver, Operator, Reading};
use super::{DeadLetters, Outputs, StageOutput, StageStats};
use crate::manifest::StageSpec;
use crate::plugin::{AggregatorInstance, AggregatorPlugin, BadRecords, Batch, PluginError};
use crate::reference::ReferenceTables;
use crate::sink::{DeadLetter, DeadLetterOrigin, OutRecord};
use crate::stream::{NewRecord, StoredRecord, StreamStore, now_ms};
use crate::swap::{AggregatorCandidate, CommandReply, PluginVersion, StageCommand, StateChange};
use crate::window::{FoldRecord, Pane, WindowOperator};

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

/// A record that folding set aside, and why.
struct SetAside {
    record: StoredRecord,
    /// The dead letter's error code: `late` (those go to the `late` stream when
    /// there is one), `group-by` (no group) or `processing-failed` (the plugin
    /// called it a bad record).
    code: &'static str,
    reason: String,
}

/// An aggregator stage's batches and windows.
pub struct AggregateOperator {
    spec: Arc<StageSpec>,
    plugin: AggregatorPlugin,
    streams: Arc<dyn StreamStore>,
    output: StageOutput,
    dead_letters: DeadLetters,
    origin: DeadLetterOrigin,
    state_file: PathBuf,
    stats: Arc<StageStats>,
    /// The version running now, the layout version of its states, and the
    /// version before the last swap (for rollback).
    version: Arc<PluginVersion>,
    state_version: u32,
    previous: Option<(AggregatorPlugin, Arc<PluginVersion>, u32)>,
    /// Until when the version swapped in last is watched for failures.
    probation_until: Option<Instant>,
    /// The pipeline's reference tables: one may name expected keys.
    references: Arc<ReferenceTables>,
    instance: Option<AggregatorInstance>,
    /// The windows and their states (none before [`Operator::open`]).
    windows: Option<WindowOperator>,
    /// The reference table generation the expected keys were taken from.
    expected_generation: u64,
    /// Panes whose results are not written yet: written before anything else.
    pending: VecDeque<Pane>,
    /// Per shard, the position after the last batch folded: a batch redone
    /// after one of its effects failed is not folded twice.
    folded_to: BTreeMap<u32, u64>,
    /// Records folding set aside that are not written yet: written before anything else.
    unwritten: Vec<SetAside>,
    /// The positions as last checkpointed (a swap saves its states with them).
    positions: Vec<u64>,
}

impl AggregateOperator {
    /// An aggregator stage of `pipeline`, ready to spawn; its checkpoint lives under `state_dir`.
    #[allow(clippy::too_many_arguments, reason = "a stage's parts, each its own")]
    pub fn stage(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: AggregatorPlugin,
        streams: Arc<dyn StreamStore>,
        output: StageOutput,
        dead_letters: DeadLetters,
        state_dir: PathBuf,
        references: Arc<ReferenceTables>,
    ) -> Result<Driver<AggregateOperator>, crate::names::UnsafePath> {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let stats = Arc::new(StageStats::default());
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        stats.start_version(version.clone());
        let state_file = crate::names::child_path(&state_dir, &format!("{}.json", spec.name))?;
        let operator = AggregateOperator {
            spec: spec.clone(),
            plugin,
            streams: streams.clone(),
            output,
            dead_letters,
            origin,
            state_file,
            stats: stats.clone(),
            version,
            state_version: 0,
            previous: None,
            probation_until: None,
            references,
            instance: None,
            windows: None,
            expected_generation: 0,
            pending: VecDeque::new(),
            folded_to: BTreeMap::new(),
            unwritten: Vec::new(),
            positions: Vec::new(),
        };
        Ok(Driver::new(Reading::of(&spec), streams, stats, operator))
    }

    fn windows(&mut self) -> Result<&mut WindowOperator, BatchError> {
        self.windows.as_mut().ok_or_else(|| BatchError::Fatal("the stage's windows were never opened".into()))
    }

    /// Where the checkpoint is kept: the stream store, when it keeps consumers'
    /// state (a NATS cluster: then another host can take the stage over), or else a
    /// file of this host's.
    fn checkpoint_place(&self) -> String {
        if self.streams.keeps_state() {
            format!("of stream `{}` in the cluster", self.spec.input)
        } else {
            self.state_file.display().to_string()
        }
    }

    /// Reads the checkpoint of the last run: none when there is none; an
    /// error when there is one that cannot be read (never a silent fresh start).
    fn saved(&self) -> Result<Option<Checkpoint>, String> {
        let bytes = if self.streams.keeps_state() {
            match self.streams.load_state(self.spec.input.as_str(), self.spec.name.as_str()) {
                Ok(Some(bytes)) => bytes,
                Ok(None) => return Ok(None),
                Err(e) => return Err(format!("cannot read its checkpoint {}: {e}", self.checkpoint_place())),
            }
        } else {
            match std::fs::read(&self.state_file) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("cannot read its checkpoint {}: {e}", self.state_file.display())),
            }
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            format!(
                "its checkpoint {} is damaged ({e}): it holds the open windows, so the stage does not start \
                 without it; restore it, or remove it to start over from the stream's consumer checkpoints \
                 (the open windows' records are then counted again only if they are still in the stream)",
                self.checkpoint_place()
            )
        })
    }

    /// The manifest's expected keys, and those of the reference table it names,
    /// as of that table's latest version.
    fn refresh_expected_keys(&mut self) {
        let table = self.spec.expected_keys_from.as_ref().and_then(|(t, c)| Some((self.references.get(t)?, c)));
        let current = table.map_or(1, |(t, _)| t.generation());
        if current == self.expected_generation {
            return;
        }
        let mut keys: std::collections::BTreeSet<String> = self.spec.expected_keys.iter().cloned().collect();
        if let Some((table, column)) = table {
            keys.extend(table.distinct(column));
        }
        if self.expected_generation != 0 {
            tracing::info!(keys = keys.len(), "expected keys reloaded with their reference table");
        }
        if let Some(windows) = &mut self.windows {
            windows.set_expected_keys(keys);
        }
        self.expected_generation = current;
    }

    /// Writes the positions and window state together: to the stream store in
    /// one step under the stage's lease, or to a temp file, fsync, rename.
    fn save(&self, positions: &[u64]) -> Result<(), String> {
        let windows = self.windows.as_ref().ok_or("the stage's windows were never opened")?;
        let checkpoint = Checkpoint {
            positions: positions.to_vec(),
            windows: base64::engine::general_purpose::STANDARD.encode(windows.snapshot()),
            state_version: Some(self.state_version),
        };
        if self.streams.keeps_state() {
            let bytes = serde_json::to_vec(&checkpoint).map_err(|e| e.to_string())?;
            return self
                .streams
                .save_state(self.spec.input.as_str(), self.spec.name.as_str(), &bytes)
                .map_err(|e| e.to_string());
        }
        let tmp = self.state_file.with_extension("tmp");
        serde_json::to_vec(&checkpoint)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                if let Some(dir) = tmp.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.state_file))
            .map_err(|e| format!("{}: {e}", self.state_file.display()))
    }

    fn instance(&mut self) -> Result<&mut AggregatorInstance, String> {
        if self.instance.is_none() {
            self.instance = Some(self.plugin.instantiate().map_err(|e| e.to_string())?);
        }
        self.instance.as_mut().ok_or_else(|| "no instance".to_owned())
    }

    /// Switches plugin versions between two batches, carrying the open windows' states over.
    fn apply(&mut self, command: StageCommand) -> CommandReply {
        let stage = self.spec.name.clone();
        let Some(windows) = self.windows.as_mut() else { return Err(format!("stage `{stage}` has not started")) };
        let (plugin, fresh, version, state_version) = match command {
            StageCommand::Swap(_) => {
                return Err(format!("stage `{stage}` runs an aggregator: the candidate must be one too"));
            }
            StageCommand::Redrive(_) => return Err(format!("stage `{stage}`: a redrive is the driver's")),
            StageCommand::EndOfInput => {
                let watermark = windows.end_input();
                tracing::info!(?watermark, "the input ended: every window its records complete closes");
                self.close_due()
                    .map_err(|e| format!("closing the windows at the end of the input: {}", e.message()))?;
                return Ok(self.version.status());
            }
            StageCommand::SwapAggregator(candidate) => {
                let AggregatorCandidate { plugin, mut instance, version, state_version, state } = *candidate;
                let running = self.state_version;
                match state {
                    StateChange::Reset => {
                        let dropped = windows.reset_states();
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
                        windows
                            .rewrite_states(|states| {
                                let mut out = Vec::with_capacity(states.len());
                                for chunk in states.chunks(MIGRATE_CHUNK) {
                                    out.extend(instance.migrate(running, chunk)?);
                                }
                                Ok::<_, PluginError>(out)
                            })
                            .map_err(|e| {
                                format!("migrating the open windows' states from version {running} failed, nothing changed: {e}")
                            })?;
                        tracing::info!(from = running, to = state_version, "the open windows' states were migrated");
                    }
                }
                (plugin, Some(instance), version, state_version)
            }
            StageCommand::Rollback => {
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
                // Set once, on a version just made: it cannot be set already.
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
        self.instance = fresh;
        self.origin.plugin = version.plugin.clone();
        self.origin.plugin_sha256 = version.sha256.clone();
        self.stats.start_version(version.clone());
        tracing::info!(from = %old_version.sha256, to = %version.sha256, plugin = %version.plugin, "plugin swapped at a batch boundary");
        Ok(version.status())
    }

    /// Rolls a version on probation back when it fails too often; says whether it did.
    fn watch_probation(&mut self) -> bool {
        let max_rate = self.spec.hot_swap.max_failure_rate;
        let Some(why) = crate::swap::probation_failed(&self.version, &mut self.probation_until, max_rate) else {
            return false;
        };
        match self.apply(StageCommand::Rollback) {
            Ok(v) => {
                self.stats.rollbacks.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(to = %v.sha256, "{why}; rolled back automatically");
                self.stats.set_error(format!("{why}; rolled back automatically"));
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "{why}; the rollback failed");
                false
            }
        }
    }

    /// Folds records into the window states; returns those it set aside (late,
    /// or without a group), to be written by [`AggregateOperator::write_set_aside`].
    fn fold(&mut self, records: &[StoredRecord]) -> Result<Vec<SetAside>, BatchError> {
        let now = now_ms();
        let time = self.spec.window.as_ref().map(|w| w.time).unwrap_or_default();
        // Each record's group: its partition key, or its payload's `group-by` field.
        let mut grouped: Vec<(usize, Cow<'_, str>)> = Vec::with_capacity(records.len());
        let mut aside = Vec::new();
        for (i, r) in records.iter().enumerate() {
            match &self.spec.group_by {
                None => grouped.push((i, Cow::Borrowed(r.key.as_str()))),
                Some(field) => match crate::dedup::json_field(&r.data, field) {
                    Ok(key) => grouped.push((i, Cow::Owned(key))),
                    Err(reason) => aside.push(SetAside {
                        record: r.clone(),
                        code: "group-by",
                        reason: format!("group-by {reason}"),
                    }),
                },
            }
        }
        let windows = self.windows()?;
        let mut plan = windows.plan_fold(
            grouped.iter().map(|(i, key)| FoldRecord {
                shard: records[*i].shard,
                source: records[*i].source.as_deref(),
                key,
                time_ms: time.pick(records[*i].event_time_ms, records[*i].arrival_ms),
            }),
            now,
        );
        for late in std::mem::take(&mut plan.set_aside) {
            aside.push(SetAside { record: records[grouped[late.index].0].clone(), code: "late", reason: late.reason });
        }
        // A record the plugin calls bad is set aside; the others are folded again
        // (a failed fold left the states as they were).
        let mut bad = BadRecords::new(plan.rows.len());
        let folded = loop {
            let kept = bad.kept();
            if kept.is_empty() {
                break Ok(());
            }
            let payload_bytes = kept.iter().map(|&k| records[grouped[plan.rows[k]].0].data.len()).sum();
            let mut batch = Batch::with_capacity(kept.len(), payload_bytes);
            for &k in kept {
                let (i, key) = &grouped[plan.rows[k]];
                let record = &records[*i];
                batch.push_with_attributes(key, record.event_time_ms, &record.data, &record.attributes);
            }
            let groups: Cow<'_, [u32]> = match bad.is_whole() {
                true => Cow::Borrowed(&plan.groups),
                false => kept.iter().map(|&k| plan.groups[k]).collect(),
            };
            let stats = self.stats.clone();
            let result = stats.plugin_call(|| match self.instance() {
                Ok(running) => running.fold(&batch, &groups, &mut plan.states),
                Err(e) => Err(PluginError::Instantiate(e)),
            });
            match result {
                Ok(()) => break Ok(()),
                Err(e) => {
                    if let Err(e) = bad.refuse(e) {
                        break Err(e);
                    }
                }
            }
        };
        for (k, reason) in bad.refused() {
            let record = records[grouped[plan.rows[*k]].0].clone();
            aside.push(SetAside { record, code: "processing-failed", reason: reason.clone() });
        }
        // Folded or not, the states go back; a failed fold left them as they were, and
        // the watermark has not seen its records, which are folded again (or in parts).
        let windows = self.windows()?;
        match folded {
            Ok(()) => windows.apply_fold(plan),
            Err(_) => windows.undo_fold(plan),
        }
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = folded {
            // A fresh instance for the retry.
            self.instance = None;
            self.version.failures.fetch_add(1, Ordering::Relaxed);
            let message = format!("{}: {e}", self.plugin.spec.ident);
            if let PluginError::Transient(_) = e {
                return Err(BatchError::Transient(message));
            }
            let rolled_back = self.watch_probation();
            return Err(BatchError::Plugin { message, rolled_back });
        }
        self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
        self.watch_probation();
        Ok(aside)
    }

    /// Writes the records folding set aside: late ones to the `late` stream
    /// (or else the dead letters), the others to the dead letters.
    fn write_set_aside(&mut self) -> Result<(), BatchError> {
        if self.unwritten.is_empty() {
            return Ok(());
        }
        let effect = |e: String| BatchError::Effect(format!("writing late or ungroupable records: {e}"));
        let letters: Vec<DeadLetter<'_>> = self
            .unwritten
            .iter()
            .map(|a| DeadLetter { origin: &self.origin, record: &a.record, error_code: a.code, reason: &a.reason })
            .collect();
        let (late, others): (Vec<_>, Vec<_>) = letters.into_iter().partition(|l| l.error_code == "late");
        let to_dead_letters: Vec<DeadLetter<'_>> = match &self.spec.late {
            None => others.into_iter().chain(late).collect(),
            Some(stream) => {
                // The side stream gets the dead-letter JSON: the record, its origin and the reason.
                let records: Vec<NewRecord> = late
                    .iter()
                    .map(|l| NewRecord {
                        source: l.record.source.clone(),
                        key: l.record.key.clone(),
                        event_time_ms: Some(l.record.event_time_ms),
                        data: bytes::Bytes::from(l.to_json().to_string()),
                        explicit_hash_key: None,
                        attributes: Vec::new(),
                    })
                    .collect();
                super::append_waiting(self.streams.as_ref(), stream.as_str(), records).map_err(effect)?;
                others
            }
        };
        self.dead_letters.write_dead_letters(&to_dead_letters).map_err(effect)?;
        // Late records are counted as late, wherever they went; the others as dead-lettered.
        let late = self.unwritten.iter().filter(|a| a.code == "late").count();
        self.stats.dead_lettered.fetch_add((self.unwritten.len() - late) as u64, Ordering::Relaxed);
        self.stats.late.fetch_add(late as u64, Ordering::Relaxed);
        self.unwritten.clear();
        Ok(())
    }

    /// Turns a pane's states into results through the plugin and writes them out.
    fn write_window(&mut self, closed: &Pane) -> Result<(), BatchError> {
        let ident = self.plugin.spec.ident.to_string();
        let emitted = self.instance().and_then(|running| {
            running
                .emit(closed.window.start, closed.window.end, &closed.keys, &closed.states)
                .map_err(|e| e.to_string())
        });
        let results = emitted.map_err(|e| {
            self.instance = None;
            BatchError::Effect(format!("emitting window {}: {ident}: {e}", closed.window))
        })?;
        // Each result says which window it is for and which revision (0 on time).
        let pane = vec![
            (PANE_START.to_owned(), closed.window.start.to_string()),
            (PANE_END.to_owned(), closed.window.end.to_string()),
            (PANE_REVISION.to_owned(), closed.revision.to_string()),
        ];
        let over = over_limits(&self.spec.output_limits, &results);
        let out: Vec<OutRecord<'_>> = results
            .records()
            .filter(|r| !over.iter().any(|(key, _)| *key == r.key))
            .map(|r| OutRecord {
                key: r.key,
                event_time_ms: r.event_time_ms,
                payload: r.payload,
                source: None,
                attributes: &pane,
            })
            .collect();
        super::write_output(self.streams.as_ref(), &self.output, &out)
            .map_err(|e| BatchError::Effect(format!("writing window {}'s results: {e}", closed.window)))?;
        if !over.is_empty() {
            // The key's results are not written; the dead letter says which window and key, and what the plugin tried.
            let at = now_ms();
            let keys: Vec<StoredRecord> = over
                .iter()
                .map(|(key, _)| StoredRecord {
                    shard: 0,
                    sequence: 0,
                    key: (*key).to_owned(),
                    event_time_ms: closed.window.end - 1,
                    arrival_ms: at,
                    data: bytes::Bytes::new(),
                    source: None,
                    attributes: pane.clone(),
                })
                .collect();
            let reasons: Vec<String> = over
                .iter()
                .map(|(key, reason)| format!("results of window {} for key `{key}`: {reason}", closed.window))
                .collect();
            let letters: Vec<DeadLetter<'_>> = keys
                .iter()
                .zip(&reasons)
                .map(|(record, reason)| DeadLetter { origin: &self.origin, record, error_code: "output-limit", reason })
                .collect();
            tracing::warn!(window = %closed.window, keys = letters.len(), "results over the stage's output limits are dead-lettered");
            self.dead_letters.write_dead_letters(&letters).map_err(|e| {
                BatchError::Effect(format!(
                    "writing window {}'s results over the limits to the dead letters: {e}",
                    closed.window
                ))
            })?;
            self.stats.dead_lettered.fetch_add(letters.len() as u64, Ordering::Relaxed);
        }
        self.stats.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.version.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        if closed.revision > 0 {
            self.stats.revisions.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(window = %closed.window, revision = closed.revision, keys = closed.keys.len(), "window revised by late records");
        }
        Ok(())
    }

    /// Takes the panes due (windows the watermark has passed, windows late
    /// records revised) and writes each out, oldest first; one that cannot be
    /// written stays first in line.
    fn close_due(&mut self) -> Result<bool, BatchError> {
        let windows = self.windows()?;
        windows.advance(now_ms());
        let mut closed_now = Vec::new();
        while let Some(closed) = windows.pop_due() {
            closed_now.push(closed);
        }
        let mut changed = !closed_now.is_empty();
        self.pending.extend(closed_now);
        while let Some(closed) = self.pending.pop_front() {
            match self.write_window(&closed) {
                Ok(()) => changed = true,
                Err(e) => {
                    // First in line again: written before anything else on the next try.
                    self.pending.push_front(closed);
                    return Err(e);
                }
            }
        }
        if changed && let (Some(windows), Ok(mut metrics)) = (&self.windows, self.stats.windows.lock()) {
            *metrics = Some(windows.metrics(now_ms()));
        }
        Ok(changed)
    }
}

impl Operator for AggregateOperator {
    /// Starts the plugin (the checkpoint's states must be in its layout) and
    /// restores the windows and positions of the last checkpoint.
    fn open(&mut self) -> Result<Option<Vec<u64>>, String> {
        let window = self.spec.window.clone().ok_or("an aggregator stage needs a window")?;
        // Opened again when this host takes the stage over: nothing of before is kept.
        self.pending.clear();
        self.folded_to.clear();
        self.unwritten.clear();
        self.expected_generation = 0;
        let state_version = self.instance().and_then(|i| i.state_version().map_err(|e| e.to_string()))?;
        self.state_version = state_version;
        // Set once, on the stage's first version: it cannot be set already.
        let _ = self.version.state_version.set(state_version);
        let (windows, positions) = match self.saved()? {
            Some(c) => {
                if let Some(saved) = c.state_version.filter(|&v| v != self.state_version) {
                    return Err(format!(
                        "the checkpoint {} holds open windows in state version {saved}, but plugin `{}` keeps \
                         version {}: run the plugin that wrote them and hot-swap this one in with state \
                         `migrate` or `reset`",
                        self.checkpoint_place(),
                        self.version.plugin,
                        self.state_version
                    ));
                }
                let snapshot = base64::engine::general_purpose::STANDARD.decode(&c.windows).map_err(|e| {
                    format!("its checkpoint {} is damaged (the windows are not base64: {e})", self.checkpoint_place())
                })?;
                let windows = WindowOperator::restore(window, &snapshot, now_ms())
                    .map_err(|e| format!("its checkpoint {} cannot be restored: {e}", self.checkpoint_place()))?;
                (windows, Some(c.positions))
            }
            None => (WindowOperator::new(window).map_err(|e| format!("the window is not valid: {e}"))?, None),
        };
        self.windows = Some(windows);
        self.refresh_expected_keys();
        self.positions = positions.clone().unwrap_or_default();
        Ok(positions)
    }

    /// Its windows move with the stage when the store keeps them; else they stay on this host.
    fn sharing(&self) -> crate::stream::Sharing {
        if self.streams.keeps_state() { crate::stream::Sharing::Single } else { crate::stream::Sharing::Whole }
    }

    fn shard_added(&mut self, shard: u32, _position: u64) -> Result<(), BatchError> {
        if let Some(windows) = &mut self.windows {
            windows.add_shard(shard, now_ms());
        }
        Ok(())
    }

    fn shard_finished(&mut self, shard: u32) -> Result<(), BatchError> {
        if let Some(windows) = &mut self.windows {
            windows.remove_shard(shard, now_ms());
        }
        Ok(())
    }

    fn process(&mut self, records: &[StoredRecord]) -> Result<(), BatchError> {
        self.refresh_expected_keys();
        let Some(last) = records.last() else { return Ok(()) };
        let (shard, next) = (last.shard, last.sequence + 1);
        // A batch redone because an effect of it failed was folded already, up to `folded_to`.
        let from = self.folded_to.get(&shard).copied().unwrap_or(0);
        let fresh = &records[records.partition_point(|r| r.sequence < from)..];
        if !fresh.is_empty() {
            let aside = self.fold(fresh)?;
            self.folded_to.insert(shard, next);
            self.unwritten.extend(aside);
        }
        self.write_set_aside()?;
        self.close_due().map(|_| ())
    }

    fn idle(&mut self) -> Result<bool, BatchError> {
        self.refresh_expected_keys();
        self.close_due()
    }

    fn checkpoint(&mut self, positions: &[u64], _shard: Option<u32>) -> Result<(), String> {
        self.save(positions)?;
        self.positions = positions.to_vec();
        // The stream's consumer checkpoints say how far behind the stage is (the file above is what resumes).
        Reading::of(&self.spec).checkpoint(self.streams.as_ref(), positions, None)
    }

    fn set_aside(&mut self, records: &[StoredRecord], code: Option<&'static str>, reason: &str) -> Result<(), String> {
        let error_code = code.unwrap_or("aggregate-failed");
        let letters: Vec<DeadLetter<'_>> =
            records.iter().map(|record| DeadLetter { origin: &self.origin, record, error_code, reason }).collect();
        self.dead_letters.write_dead_letters(&letters)
    }

    fn command(&mut self, command: StageCommand) -> CommandReply {
        let answer = self.apply(command)?;
        // The new version and the states it continues with, before anything else.
        let positions = self.positions.clone();
        self.save(&positions).map_err(|e| format!("the swap happened, but saving it failed: {e}"))?;
        Ok(answer)
    }

    fn close(&mut self) -> Result<(), String> {
        self.dead_letters.sync().map_err(|e| format!("syncing the dead letters: {e}"))?;
        if let StageOutput::Sink(sink) = &self.output {
            sink.sync().map_err(|e| format!("syncing the output: {e}"))?;
        }
        Ok(())
    }
}

/// The keys of an emitted window whose results break the stage's output limits,
/// each with the reason, in the order the plugin gave them: more results for the
/// key than `outputs-per-record`, one larger than `output-record-size`, or
/// results that would take the window's past `output-batch-size`.
fn over_limits<'a>(limits: &crate::manifest::OutputLimits, results: &'a Batch) -> Vec<(&'a str, String)> {
    // Usually nothing is near a limit: one pass, without looking at keys, says so.
    let all = Outputs::of(results.records().map(|r| r.payload.len()));
    if all.check(limits, &mut 0).is_ok() {
        return Vec::new();
    }
    let mut order: Vec<&'a str> = Vec::new();
    let mut per_key: HashMap<&'a str, Outputs> = HashMap::new();
    for r in results.records() {
        per_key
            .entry(r.key)
            .or_insert_with(|| {
                order.push(r.key);
                Outputs::default()
            })
            .add(r.payload.len());
    }
    let mut batch_bytes = 0;
    order.into_iter().filter_map(|key| Some((key, per_key.get(key)?.check(limits, &mut batch_bytes).err()?))).collect()
}

/// The attribute of an aggregator's result that holds its window's start (ms since the Unix epoch).
pub const PANE_START: &str = "weir-window-start";
/// The same for the window's end (exclusive).
pub const PANE_END: &str = "weir-window-end";
/// The attribute that holds which result of the window this is: 0 on time, then 1, 2, ...
/// for the revisions late records caused.
pub const PANE_REVISION: &str = "weir-revision";

/// Whether a stage's plugin runs in an [`AggregateStage`].
pub fn is_aggregator(spec: &StageSpec) -> bool {
    spec.window.is_some()
}
