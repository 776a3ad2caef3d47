//! How a plugin can fail, told apart so operators see what to fix.

use std::path::PathBuf;

/// Who a plugin is within a pipeline: every report names all three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginIdent {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// Plugin name and version, e.g. `toll-etl@0.1.0`.
    pub plugin: String,
}

impl std::fmt::Display for PluginIdent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pipeline `{}`, stage `{}`, plugin `{}`", self.pipeline, self.stage, self.plugin)
    }
}

/// A plugin failure. Loading errors come before any record is touched; call
/// errors fail one batch, which then follows the stage's error policy.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The component file could not be read.
    #[error("cannot read component `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not a valid component, or could not be compiled.
    #[error("`{path}` is not a loadable WebAssembly component: {message}")]
    Compile {
        /// The file.
        path: PathBuf,
        /// Why, from wasmtime.
        message: String,
    },
    /// The component does not fit the world its manifest declares.
    #[error("`{path}` does not implement the `weir:plugin/{world}` world: {message}")]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// The declared world.
        world: String,
        /// What is missing or mismatched.
        message: String,
    },
    /// Instantiation failed (a start function trapped, limits exceeded, ...).
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// The plugin's `init` refused its configuration.
    #[error("init refused the configuration: {0}")]
    Init(String),
    /// A call ran past its CPU deadline and was interrupted.
    #[error("call exceeded its {0:?} deadline and was interrupted")]
    Timeout(std::time::Duration),
    /// The plugin tried to grow its memory past the cap.
    #[error("plugin exceeded its memory cap of {0} bytes")]
    MemoryCap(u64),
    /// The plugin trapped (panic, unreachable, out-of-bounds access, ...).
    #[error("plugin trapped: {0}")]
    Trap(String),
    /// The plugin failed on the batch for a reason it pins on no record
    /// (`error.failed`): tried again, then the stage's `on-error` applies.
    #[error("plugin returned an error: {0}")]
    Returned(String),
    /// The plugin says record `index` of the call's batch is at fault
    /// (`error.bad-record`): it is set aside, the others go on.
    #[error("plugin refused record {index} of the batch: {reason}")]
    BadRecord {
        /// The record's index in the call's batch.
        index: u32,
        /// Why, from the plugin.
        reason: String,
    },
    /// The plugin says the failure may pass (`error.transient`): the batch is
    /// retried after a backoff, nothing set aside.
    #[error("plugin reported a transient failure: {0}")]
    Transient(String),
    /// The plugin broke the contract (e.g. wrong number of outcomes).
    #[error("plugin broke the contract: {0}")]
    Contract(String),
}

/// A plain-text error (from `init` or `migrate`): the call failed.
impl From<String> for PluginError {
    fn from(message: String) -> PluginError {
        PluginError::Returned(message)
    }
}

impl From<super::bindings::WitError> for PluginError {
    fn from(e: super::bindings::WitError) -> PluginError {
        use super::bindings::WitError;
        match e {
            WitError::BadRecord(b) => PluginError::BadRecord { index: b.index, reason: b.reason },
            WitError::Transient(m) => PluginError::Transient(m),
            WitError::Failed(m) => PluginError::Returned(m),
        }
    }
}

impl PluginError {
    /// A short stable code for dead letters and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            PluginError::Read { .. } | PluginError::Compile { .. } | PluginError::WrongWorld { .. } => "load-failed",
            PluginError::Instantiate(_) => "instantiate-failed",
            PluginError::Init(_) => "init-failed",
            PluginError::Timeout(_) => "timeout",
            PluginError::MemoryCap(_) => "memory-cap",
            PluginError::Trap(_) => "trap",
            PluginError::Returned(_) => "batch-failed",
            PluginError::BadRecord { .. } => "bad-record",
            PluginError::Transient(_) => "transient",
            PluginError::Contract(_) => "contract-violation",
        }
    }

    /// Whether the call failed on its batch as a whole (a trap, a deadline, the
    /// memory cap, an error for the whole call, a broken contract): retried in
    /// halves, it can show which records cause it. A plugin that cannot start
    /// or calls its failure transient is not helped by smaller batches.
    pub fn fails_the_batch(&self) -> bool {
        matches!(
            self,
            PluginError::Timeout(_)
                | PluginError::MemoryCap(_)
                | PluginError::Trap(_)
                | PluginError::Returned(_)
                | PluginError::Contract(_)
        )
    }

    /// Whether the instance is unusable afterwards and must be replaced.
    pub fn poisons_instance(&self) -> bool {
        matches!(
            self,
            PluginError::Timeout(_) | PluginError::MemoryCap(_) | PluginError::Trap(_) | PluginError::Instantiate(_)
        )
    }
}
