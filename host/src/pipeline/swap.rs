//! Hot swap of a running stage's plugin: a candidate (uploaded, or a watched
//! component file that changed) is compiled, checked against the stage's world,
//! its self-tests and the input's latest records, and only then handed to the
//! stage, which switches at its next batch boundary. Rollback goes back to the
//! version before. What a stage keeps of its versions is [`crate::swap`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::Host;
use crate::manifest::plugin::{ExpectedOutcome, SelfTest};
use crate::plugin::{AggregatorPlugin, PluginError, PluginIdent, SandboxSpec, TransformerPlugin};
use crate::stage::StageHandle;
use crate::stage::aggregate::is_aggregator;
use crate::stream::StoredRecord;
use crate::swap::{AggregatorCandidate, Candidate, StageCommand, StateChange, VersionStatus};
/// How long a swap or rollback waits for its stage to reach a batch boundary.
const SWAP_TIMEOUT: Duration = Duration::from_secs(30);
/// How many of the input's latest records a swap candidate must process without failing.
const CANARY_RECORDS: u64 = 16;

/// Why a swap or rollback did not happen; the running version keeps running.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No such stage.
    #[error("pipeline `{pipeline}` has no stage `{stage}`")]
    UnknownStage {
        /// The pipeline.
        pipeline: String,
        /// The stage asked for.
        stage: String,
    },
    /// The candidate was refused; the reason says which check failed.
    #[error("candidate refused, stage `{stage}` keeps its running version: {reason}")]
    Refused {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The stage could not apply it (stopped, or no version to roll back to).
    #[error("{0}")]
    Stage(String),
}

impl Host {
    /// Replaces a stage's plugin while its stream flows. The candidate must
    /// compile, implement the stage's world, start within the stage's limits,
    /// and process the input's latest records without failing (its outcomes
    /// may say `processing-failed`; a trap, deadline or error may not). Then
    /// the stage switches at its next batch boundary: every batch is processed
    /// by one version, none twice, none skipped. An aggregator candidate whose
    /// state version differs from the running one's is refused unless `state`
    /// says to migrate the open windows' states or to reset them.
    pub fn swap_plugin(
        &self,
        stage: &str,
        component: &[u8],
        version: Option<&str>,
        state: StateChange,
    ) -> Result<VersionStatus, SwapError> {
        let (spec, handle) = self.stage(stage)?;
        let refused = |reason: String| SwapError::Refused { stage: stage.to_owned(), reason };
        let label = PathBuf::from(format!("upload for stage {stage}"));
        let compiled = self.engine.compile_bytes(component, &label).map_err(|e| refused(e.to_string()))?;
        let plugin = format!("{}@{}", spec.plugin.info.name, version.unwrap_or("upload"));
        let ident = Arc::new(PluginIdent {
            pipeline: self.pipeline.name.to_string(),
            stage: stage.to_owned(),
            plugin: plugin.clone(),
        });
        let version = crate::swap::PluginVersion::new(plugin, compiled.sha256.clone());
        let sandbox = SandboxSpec { ident, limits: spec.limits, grants: spec.grants.clone() };
        let canary = self.canary(spec.input.as_str());
        let command = if is_aggregator(spec) {
            let candidate = AggregatorPlugin::new(&self.engine, compiled, sandbox, spec.config.clone())
                .map_err(|e| refused(e.to_string()))?
                .with_references(self.references.clone());
            let running = handle.stats.active_version().and_then(|v| v.state_version.get().copied());
            let state_version = check_aggregator(&candidate, &canary, running, state).map_err(refused)?;
            let _ = version.state_version.set(state_version);
            let instance = candidate.instantiate().map_err(|e| refused(e.to_string()))?;
            StageCommand::SwapAggregator(Box::new(AggregatorCandidate {
                plugin: candidate,
                instance,
                version,
                state_version,
                state,
            }))
        } else {
            if state != StateChange::Keep {
                return Err(refused("state `migrate` and `reset` are for aggregator stages only".into()));
            }
            let candidate = TransformerPlugin::new(&self.engine, compiled, sandbox, spec.config.clone())
                .map_err(|e| refused(e.to_string()))?
                .with_references(self.references.clone());
            let mut checked = candidate.instantiate().map_err(|e| refused(e.to_string()))?;
            if !canary.is_empty() {
                checked.transform(&records_batch(&canary)).map_err(|e| refused(canary_failed(e)))?;
            }
            self_test(&mut checked, &spec.plugin.self_tests).map_err(refused)?;
            // A fresh instance runs the stream: the checks leave no state behind.
            let instance = candidate.instantiate().map_err(|e| refused(e.to_string()))?;
            StageCommand::Swap(Box::new(Candidate { plugin: candidate, instance, version }))
        };
        handle.command(command, SWAP_TIMEOUT).map_err(SwapError::Stage)
    }

    /// Goes back to the version a stage ran before its last swap.
    pub fn rollback_plugin(&self, stage: &str) -> Result<VersionStatus, SwapError> {
        let (_, handle) = self.stage(stage)?;
        handle.command(StageCommand::Rollback, SWAP_TIMEOUT).map_err(SwapError::Stage)
    }

    fn stage(&self, stage: &str) -> Result<(&crate::manifest::StageSpec, &StageHandle), SwapError> {
        let unknown = || SwapError::UnknownStage { pipeline: self.pipeline.name.to_string(), stage: stage.to_owned() };
        let spec = self.pipeline.stages.iter().find(|s| s.name.as_str() == stage).ok_or_else(unknown)?;
        let handle = self.stages.iter().find(|h| h.name() == stage).ok_or_else(unknown)?;
        Ok((spec, handle))
    }

    /// The latest records of a stream's open shards, a few from each.
    fn canary(&self, stream: &str) -> Vec<StoredRecord> {
        let Ok(info) = self.streams.info(stream) else { return Vec::new() };
        let mut records = Vec::new();
        for shard in info.shards.iter().filter(|s| s.closed_at.is_none()) {
            let from = shard.end.saturating_sub(CANARY_RECORDS).max(shard.oldest);
            records.extend(self.streams.read(stream, shard.index, from, CANARY_RECORDS as usize).unwrap_or_default());
        }
        records
    }
}

/// Checks an aggregator candidate: its state version fits the running one's (or
/// `state` says what to do), it can migrate if asked to, and it folds the
/// input's latest records and emits their results without failing. Returns
/// its state version.
fn check_aggregator(
    candidate: &AggregatorPlugin,
    canary: &[StoredRecord],
    running: Option<u32>,
    state: StateChange,
) -> Result<u32, String> {
    let mut checked = candidate.instantiate().map_err(|e| e.to_string())?;
    let state_version = checked.state_version().map_err(|e| e.to_string())?;
    if let Some(running) = running.filter(|&r| r != state_version) {
        match state {
            StateChange::Keep => {
                return Err(format!(
                    "it keeps its states in version {state_version}, the open windows hold version {running}: \
                     swap with state `migrate` (if it exports `state-migration`) or `reset` (drops the open \
                     windows' states)"
                ));
            }
            StateChange::Migrate if !candidate.can_migrate() => {
                return Err(format!(
                    "it keeps its states in version {state_version}, the open windows hold version {running}, \
                     and it does not export `weir:plugin/state-migration` to migrate them: build it with a \
                     migration, or swap with state `reset` (drops the open windows' states)"
                ));
            }
            StateChange::Migrate | StateChange::Reset => {}
        }
    }
    if !canary.is_empty() {
        // Each key's records into an empty state, then one window's results.
        let mut keys: Vec<String> = canary.iter().map(|r| r.key.clone()).collect();
        keys.sort();
        keys.dedup();
        let groups: Vec<u32> = canary.iter().map(|r| keys.binary_search(&r.key).unwrap_or_default() as u32).collect();
        let mut states = vec![Vec::new(); keys.len()];
        checked.fold(&records_batch(canary), &groups, &mut states).map_err(canary_failed)?;
        checked.emit(0, 1, &keys, &states).map_err(canary_failed)?;
    }
    Ok(state_version)
}

/// The records as one batch for a plugin.
fn records_batch(records: &[StoredRecord]) -> crate::plugin::Batch {
    let mut batch = crate::plugin::Batch::with_capacity(records.len(), records.iter().map(|r| r.data.len()).sum());
    for r in records {
        batch.push_with_attributes(&r.key, r.event_time_ms, &r.data, &r.attributes);
    }
    batch
}

fn canary_failed(e: PluginError) -> String {
    format!("failed on the input's latest records: {e}")
}

/// Runs the plugin manifest's `[[self-test]]` records through a candidate.
fn self_test(instance: &mut crate::plugin::TransformerInstance, tests: &[SelfTest]) -> Result<(), String> {
    if tests.is_empty() {
        return Ok(());
    }
    let result = instance.transform(&self_test_batch(tests)).map_err(|e| format!("failed on its self-tests: {e}"))?;
    check_self_tests(&result, tests)
}

/// The `[[self-test]]` records as one batch.
pub(crate) fn self_test_batch(tests: &[SelfTest]) -> crate::plugin::Batch {
    let mut batch = crate::plugin::Batch::with_capacity(tests.len(), tests.iter().map(|t| t.input.len()).sum());
    for t in tests {
        batch.push(&t.key, 0, t.input.as_bytes());
    }
    batch
}

/// Whether a transform of `self_test_batch(tests)` did what each test expects.
pub(crate) fn check_self_tests(result: &crate::plugin::Transformed, tests: &[SelfTest]) -> Result<(), String> {
    for ((i, outcome, outputs), test) in result.per_record().zip(tests) {
        let got = match outcome {
            crate::plugin::Outcome::Ok(_) => ExpectedOutcome::Ok,
            crate::plugin::Outcome::ProcessingFailed(_) => ExpectedOutcome::ProcessingFailed,
            crate::plugin::Outcome::Dropped => ExpectedOutcome::Dropped,
        };
        if got != test.outcome {
            return Err(format!("self-test {}: expected {:?}, got {got:?} ({outcome:?})", i + 1, test.outcome));
        }
        if let Some(expected) = &test.output {
            let first = outputs.first().map(|o| String::from_utf8_lossy(o.payload).into_owned());
            if first.as_deref() != Some(expected.as_str()) {
                return Err(format!("self-test {}: expected output {expected:?}, got {first:?}", i + 1));
            }
        }
    }
    Ok(())
}

/// How often a watched component file is looked at; a change must hold this long before the swap.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Swaps a stage's plugin when its component file changes (`hot-swap = { watch = true }`):
/// the file is polled, and a new content that stays the same for one more
/// interval (a build has finished writing it) is swapped in like an upload.
/// The thread ends with the host.
pub(super) fn watch_component(host: std::sync::Weak<Host>, stage: String, plugin: crate::manifest::PluginManifest) {
    let spawned = std::thread::Builder::new().name(format!("watch-{stage}")).spawn(move || {
        let span = tracing::info_span!("stage.watch", stage = %stage);
        let _enter = span.enter();
        let path = plugin.component_path();
        let read = || std::fs::read(&path).ok().map(|b| (crate::plugin::sha256_hex(&b), b));
        let mut running = read().map(|(sha, _)| sha);
        let mut pending: Option<String> = None;
        loop {
            std::thread::sleep(WATCH_INTERVAL);
            let Some(host) = host.upgrade() else { return };
            let Some((sha, bytes)) = read() else { continue };
            if Some(&sha) == running.as_ref() {
                pending = None;
                continue;
            }
            if pending.as_ref() != Some(&sha) {
                pending = Some(sha); // changed: wait one more interval for the writer to finish
                continue;
            }
            // The manifest beside the component may carry the new version.
            let mut diags = crate::manifest::Diagnostics::default();
            let version = crate::manifest::PluginManifest::load(&plugin.path, &mut diags)
                .ok()
                .flatten()
                .map(|p| p.info.version.get_ref().clone());
            match host.swap_plugin(&stage, &bytes, version.as_deref(), StateChange::Keep) {
                Ok(v) => tracing::info!(sha256 = %v.sha256, "component file changed: swapped"),
                Err(e) => tracing::error!(error = %e, "component file changed, but the new build was refused"),
            }
            // Refused or not, this content is settled: only a new change is tried again.
            running = pending.take();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot watch the plugin file; swaps through the API still work");
    }
}
