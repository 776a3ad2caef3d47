//! Hot swap of a stage's plugin while its stream flows: the versions a stage
//! has run (content hash, plugin version, since when, counters of each), and
//! the commands a running stage takes at a batch boundary. A candidate is
//! validated before it gets there (see [`crate::pipeline::Host::swap_plugin`]):
//! if it does not fit, the running version keeps running.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde::Serialize;

use crate::plugin::{AggregatorInstance, AggregatorPlugin, TransformerInstance, TransformerPlugin};

/// One plugin version a stage has run.
#[derive(Debug)]
pub struct PluginVersion {
    /// `name@version` (`name@upload` for a component uploaded without a version).
    pub plugin: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// When it started running (RFC 3339).
    pub since: String,
    /// Records it read.
    pub records_in: AtomicU64,
    /// Records it wrote.
    pub records_out: AtomicU64,
    /// Batches it processed (failed or not).
    pub batches: AtomicU64,
    /// Batches it failed.
    pub failures: AtomicU64,
    /// An aggregator's state version (the layout of its window states).
    pub state_version: OnceLock<u32>,
    /// How long swapping it in held its stage between two batches, in
    /// microseconds (none for the version a stage started with).
    pub swap_pause_us: OnceLock<u64>,
    active: AtomicBool,
}

/// What the API shows of a version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionStatus {
    /// `name@version`.
    pub plugin: String,
    /// SHA-256 of the component.
    pub sha256: String,
    /// When it started running.
    pub since: String,
    /// Whether it runs now.
    pub active: bool,
    /// Records it read.
    pub records_in: u64,
    /// Records it wrote.
    pub records_out: u64,
    /// Batches it processed.
    pub batches: u64,
    /// Batches it failed.
    pub failures: u64,
    /// An aggregator's state version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_version: Option<u32>,
    /// How long swapping it in (or rolling back to it) paused its stage, in
    /// milliseconds: the time between two batches the switch took, migrating
    /// an aggregator's open windows included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub swap_pause_ms: Option<f64>,
}

impl PluginVersion {
    /// A version that starts running now.
    pub fn new(plugin: String, sha256: String) -> Arc<PluginVersion> {
        Arc::new(PluginVersion {
            plugin,
            sha256,
            since: crate::time::format_ms(crate::stream::now_ms()),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            state_version: OnceLock::new(),
            swap_pause_us: OnceLock::new(),
            active: AtomicBool::new(true),
        })
    }

    /// Marks it running or not.
    pub fn set_active(&self, active: bool) {
        self.active.store(active, Ordering::Relaxed);
    }

    /// A snapshot.
    pub fn status(&self) -> VersionStatus {
        VersionStatus {
            plugin: self.plugin.clone(),
            sha256: self.sha256.clone(),
            since: self.since.clone(),
            active: self.active.load(Ordering::Relaxed),
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            state_version: self.state_version.get().copied(),
            swap_pause_ms: self.swap_pause_us.get().map(|&us| us as f64 / 1000.0),
        }
    }
}

/// A validated candidate, ready to run.
pub struct Candidate {
    /// The plugin.
    pub plugin: TransformerPlugin,
    /// An instance of it, already initialised (so the switch is quick).
    pub instance: TransformerInstance,
    /// Its version record.
    pub version: Arc<PluginVersion>,
}

/// What an aggregator swap does with the open windows' states when the
/// candidate keeps its states in another layout (state version).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StateChange {
    /// Only a candidate of the same state version is taken: the states go on as they are.
    #[default]
    Keep,
    /// The candidate rewrites the states through its `state-migration` export.
    Migrate,
    /// The open windows' states are dropped: their results count only the records after the swap.
    Reset,
}

impl StateChange {
    /// As written in `x-weir-state` and `--state`.
    pub fn as_str(self) -> &'static str {
        match self {
            StateChange::Keep => "keep",
            StateChange::Migrate => "migrate",
            StateChange::Reset => "reset",
        }
    }
}

impl std::str::FromStr for StateChange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "keep" => Ok(StateChange::Keep),
            "migrate" => Ok(StateChange::Migrate),
            "reset" => Ok(StateChange::Reset),
            other => Err(format!("`{other}` is not a state change: write keep, migrate or reset")),
        }
    }
}

/// A validated aggregator candidate, ready to run.
pub struct AggregatorCandidate {
    /// The plugin.
    pub plugin: AggregatorPlugin,
    /// An instance of it, already initialised.
    pub instance: AggregatorInstance,
    /// Its version record.
    pub version: Arc<PluginVersion>,
    /// The layout version of its states.
    pub state_version: u32,
    /// What to do with the open states if their version differs.
    pub state: StateChange,
}

/// What a running stage is asked to do at its next batch boundary.
pub enum StageCommand {
    /// Run this candidate from the next batch on.
    Swap(Box<Candidate>),
    /// Run this aggregator candidate from the next batch on.
    SwapAggregator(Box<AggregatorCandidate>),
    /// Go back to the version that ran before the last swap.
    Rollback,
    /// The input has ended (a bounded run, such as a simulated day): an
    /// aggregator closes every window its records complete and writes them out
    /// before it answers.
    EndOfInput,
    /// Process these dead-lettered records again with the running version
    /// ([`crate::pipeline::dlq`]); the stage answers once their outputs and any new
    /// dead letters are durable. Handled by the driver, never by an operator.
    Redrive(Vec<crate::stream::StoredRecord>),
}

/// The stage's answer: the version now running, or why nothing changed.
pub type CommandReply = Result<VersionStatus, String>;

/// Why the version on probation should be rolled back, if it should: more than
/// `max_failure_rate` of its batches failed (3 batches at least). Clears
/// `until` once the probation is over.
pub fn probation_failed(version: &PluginVersion, until: &mut Option<Instant>, max_failure_rate: f64) -> Option<String> {
    let end = (*until)?;
    if Instant::now() >= end {
        *until = None;
        return None;
    }
    let batches = version.batches.load(Ordering::Relaxed);
    let failures = version.failures.load(Ordering::Relaxed);
    let rate = failures as f64 / batches.max(1) as f64;
    (batches >= 3 && rate > max_failure_rate).then(|| {
        format!(
            "version {} failed {failures} of its {batches} batches on probation (more than {:.0}%)",
            version.plugin,
            max_failure_rate * 100.0
        )
    })
}
