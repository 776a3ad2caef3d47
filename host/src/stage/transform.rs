//! A transform stage's [`Operator`]: each batch goes through the transformer
//! plugin; its `ok` outputs go to the stage's stream or sink, the records it
//! refuses (`processing-failed`, or a `bad-record` error) to the dead letters
//! with the reason. A broken
//! instance is replaced before the next try; a version swapped in is watched
//! for failures while on probation and rolled back when it fails too often.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::driver::{BatchError, Driver, Operator, Reading};
use super::{DeadLetters, Outputs, StageOutput, StageStats, write_output};
use crate::manifest::StageSpec;
use crate::plugin::{Batch, Outcome, PluginError, TransformerInstance, TransformerPlugin};
use crate::sink::{DeadLetter, DeadLetterOrigin, OutRecord};
use crate::stream::{StoredRecord, StreamStore};
use crate::swap::{Candidate, CommandReply, PluginVersion, StageCommand};

/// A transformer stage's batches.
pub struct TransformOperator {
    spec: Arc<StageSpec>,
    plugin: TransformerPlugin,
    streams: Arc<dyn StreamStore>,
    output: StageOutput,
    dead_letters: DeadLetters,
    origin: DeadLetterOrigin,
    stats: Arc<StageStats>,
    /// The version running now, and the one before the last swap (for rollback).
    version: Arc<PluginVersion>,
    previous: Option<(TransformerPlugin, Arc<PluginVersion>)>,
    /// Until when the version swapped in last is watched for failures.
    probation_until: Option<Instant>,
    instance: Option<TransformerInstance>,
    instances_created: u64,
    /// The error code of the last plugin failure (for the dead letters of its batch).
    last_failure: &'static str,
}

impl TransformOperator {
    /// A transform stage of `pipeline`, ready to spawn.
    pub fn stage(
        pipeline: &str,
        spec: Arc<StageSpec>,
        plugin: TransformerPlugin,
        streams: Arc<dyn StreamStore>,
        output: StageOutput,
        dead_letters: DeadLetters,
    ) -> Driver<TransformOperator> {
        let origin = DeadLetterOrigin::of_stage(pipeline, &spec, &plugin.spec.ident.plugin, &plugin.compiled.sha256);
        let version = PluginVersion::new(origin.plugin.clone(), origin.plugin_sha256.clone());
        let stats = Arc::new(StageStats::default());
        stats.start_version(version.clone());
        let operator = TransformOperator {
            spec: spec.clone(),
            plugin,
            streams: streams.clone(),
            output,
            dead_letters,
            origin,
            stats: stats.clone(),
            version,
            previous: None,
            probation_until: None,
            instance: None,
            instances_created: 0,
            last_failure: "processing-failed",
        };
        Driver::new(Reading::of(&spec), streams, stats, operator)
    }

    /// Switches plugin versions between two batches.
    fn apply(&mut self, command: StageCommand) -> CommandReply {
        let (plugin, fresh, version) = match command {
            StageCommand::Swap(candidate) => {
                let Candidate { plugin, instance, version } = *candidate;
                (plugin, Some(instance), version)
            }
            StageCommand::SwapAggregator(_) | StageCommand::EndOfInput => {
                return Err(format!("stage `{}` runs a transformer, not an aggregator", self.spec.name));
            }
            StageCommand::Redrive(_) => return Err(format!("stage `{}`: a redrive is the driver's", self.spec.name)),
            StageCommand::Rollback => {
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
        self.instance = fresh;
        self.origin.plugin = version.plugin.clone();
        self.origin.plugin_sha256 = version.sha256.clone();
        self.stats.start_version(version.clone());
        tracing::info!(from = %old_version.sha256, to = %version.sha256, plugin = %version.plugin, "plugin swapped at a batch boundary");
        Ok(version.status())
    }

    /// Rolls a version on probation back when it fails too often; says whether it did.
    fn watch_probation(&mut self) -> bool {
        let Some(why) = crate::swap::probation_failed(
            &self.version,
            &mut self.probation_until,
            self.spec.hot_swap.max_failure_rate,
        ) else {
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

    /// Writes a transformed batch's outputs and dead letters. An input whose outputs
    /// break the stage's output limits is dead-lettered (`output-limit`, with what
    /// it tried) and nothing of it is written.
    fn deliver(&self, records: &[StoredRecord], t: &crate::plugin::Transformed) -> Result<(), BatchError> {
        let mut out = Vec::with_capacity(t.output.len());
        let mut letters = Vec::new();
        let mut reasons = Vec::new();
        let mut dropped = 0u64;
        let mut batch_bytes = 0u64;
        for (i, outcome, outputs) in t.per_record() {
            if let Outcome::Ok(_) = outcome
                && let Err(reason) = Outputs::of(outputs.iter().map(|o| o.payload.len()))
                    .check(&self.spec.output_limits, &mut batch_bytes)
            {
                reasons.push((i, reason));
                continue;
            }
            match outcome {
                // An output keeps its input's source: downstream watermarks follow the real producers.
                Outcome::Ok(_) => out.extend(outputs.iter().map(|r| OutRecord {
                    key: r.key,
                    event_time_ms: r.event_time_ms,
                    payload: r.payload,
                    source: records[i].source.as_ref(),
                    attributes: &[],
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
        for (i, reason) in &reasons {
            letters.push(DeadLetter { origin: &self.origin, record: &records[*i], error_code: "output-limit", reason });
        }
        if !reasons.is_empty() {
            tracing::warn!(records = reasons.len(), "outputs over the stage's limits: their inputs are dead-lettered");
        }
        write_output(self.streams.as_ref(), &self.output, &out)
            .map_err(|e| BatchError::Effect(format!("writing the output: {e}")))?;
        self.dead_letters
            .write_dead_letters(&letters)
            .map_err(|e| BatchError::Effect(format!("writing the dead letters: {e}")))?;
        self.stats.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.version.records_out.fetch_add(out.len() as u64, Ordering::Relaxed);
        self.stats.dropped.fetch_add(dropped, Ordering::Relaxed);
        self.stats.dead_lettered.fetch_add(letters.len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

impl Operator for TransformOperator {
    fn open(&mut self) -> Result<Option<Vec<u64>>, String> {
        Ok(None)
    }

    fn process(&mut self, records: &[StoredRecord]) -> Result<(), BatchError> {
        let span = tracing::debug_span!("stage.batch", records = records.len());
        let _enter = span.enter();
        let mut batch = Batch::with_capacity(records.len(), records.iter().map(|r| r.data.len()).sum());
        for r in records {
            batch.push_with_attributes(&r.key, r.event_time_ms, &r.data, &r.attributes);
        }
        self.version.batches.fetch_add(1, Ordering::Relaxed);
        let stats = self.stats.clone();
        let result = stats.plugin_call(|| match &mut self.instance {
            Some(i) => i.transform(&batch),
            None => {
                if self.instances_created > 0 {
                    self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                }
                self.instances_created += 1;
                self.plugin.instantiate().and_then(|fresh| self.instance.insert(fresh).transform(&batch))
            }
        });
        match result {
            Ok(t) => {
                self.version.records_in.fetch_add(records.len() as u64, Ordering::Relaxed);
                let delivered = self.deliver(records, &t);
                self.watch_probation();
                delivered
            }
            Err(e) => {
                if e.poisons_instance() || matches!(e, PluginError::Init(_)) {
                    self.instance = None;
                }
                let message = format!("{}: {e}", self.plugin.spec.ident);
                if matches!(e, PluginError::Init(_) | PluginError::Instantiate(_)) {
                    // The plugin never saw these records: they wait for it.
                    return Err(BatchError::Unavailable(message));
                }
                if let PluginError::Transient(_) = e {
                    return Err(BatchError::Transient(message));
                }
                self.last_failure = e.code();
                self.version.failures.fetch_add(1, Ordering::Relaxed);
                Err(BatchError::Plugin { message, rolled_back: self.watch_probation() })
            }
        }
    }

    fn checkpoint(&mut self, positions: &[u64], shard: Option<u32>) -> Result<(), String> {
        Reading::of(&self.spec).checkpoint(self.streams.as_ref(), positions, shard)
    }

    /// A transform keeps nothing but its checkpoints: hosts share its shards.
    fn sharing(&self) -> crate::stream::Sharing {
        crate::stream::Sharing::Shards
    }

    fn set_aside(&mut self, records: &[StoredRecord], code: Option<&'static str>, reason: &str) -> Result<(), String> {
        let code = code.unwrap_or(self.last_failure);
        let letters: Vec<_> = records
            .iter()
            .map(|record| DeadLetter { origin: &self.origin, record, error_code: code, reason })
            .collect();
        self.dead_letters.write_dead_letters(&letters)
    }

    fn command(&mut self, command: StageCommand) -> CommandReply {
        self.apply(command)
    }

    fn close(&mut self) -> Result<(), String> {
        self.dead_letters.sync().map_err(|e| format!("syncing the dead letters: {e}"))?;
        if let StageOutput::Sink(sink) = &self.output {
            sink.sync().map_err(|e| format!("syncing the output: {e}"))?;
        }
        Ok(())
    }
}
