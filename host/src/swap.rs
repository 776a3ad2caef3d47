//! Hot swap of a stage's plugin while its stream flows: the versions a stage
//! has run (content hash, plugin version, since when, counters of each), and
//! the commands a running stage takes at a batch boundary. A candidate is
//! validated before it gets there (see [`crate::pipeline::Host::swap_plugin`]):
//! if it does not fit, the running version keeps running.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::Serialize;

use crate::plugin::{TransformerInstance, TransformerPlugin};

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
}

impl PluginVersion {
    /// A version that starts running now.
    pub fn new(plugin: String, sha256: String) -> Arc<PluginVersion> {
        Arc::new(PluginVersion {
            plugin,
            sha256,
            since: crate::sink::format_ms(crate::stream::now_ms()),
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            failures: AtomicU64::new(0),
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

/// What a running stage is asked to do at its next batch boundary.
pub enum SwapCommand {
    /// Run this candidate from the next batch on.
    Swap(Box<Candidate>),
    /// Go back to the version that ran before the last swap.
    Rollback,
}

/// The stage's answer: the version now running, or why nothing changed.
pub type SwapReply = Result<VersionStatus, String>;
