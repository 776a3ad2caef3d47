//! What a plugin is and what its sandbox allows: its world, its resource
//! limits and its grants (clocks, directories, and the pipeline's state
//! tables, channels and reference tables it may use). The pipeline manifest
//! fills these in; the engine enforces them.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// The plugin kinds, one per world of the `weir:plugin` WIT package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum World {
    /// `weir:plugin/transformer`
    Transformer,
    /// `weir:plugin/aggregator`
    Aggregator,
    /// `weir:plugin/notifier`
    Notifier,
}

impl std::str::FromStr for World {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "transformer" => Ok(World::Transformer),
            "aggregator" => Ok(World::Aggregator),
            "notifier" => Ok(World::Notifier),
            other => Err(format!("no world `{other}`: choose transformer, aggregator or notifier")),
        }
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Transformer => "transformer",
            World::Aggregator => "aggregator",
            World::Notifier => "notifier",
        })
    }
}

/// A pipeline resource a plugin reaches through its imports, named by its config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `[tables.<name>]`, through `state-table`.
    StateTable,
    /// `[channels.<name>]`, through `notify`.
    Channel,
    /// `[reference.<name>]`, through `reference`.
    Reference,
}

impl Resource {
    /// The pipeline manifest's section that declares them.
    pub fn section(self) -> &'static str {
        match self {
            Resource::StateTable => "tables",
            Resource::Channel => "channels",
            Resource::Reference => "reference",
        }
    }

    /// The config key type that names one (`type = "..."` in plugin.toml).
    pub fn config_type(self) -> &'static str {
        match self {
            Resource::StateTable => "state-table",
            Resource::Channel => "channel",
            Resource::Reference => "reference",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::StateTable => "state table",
            Resource::Channel => "channel",
            Resource::Reference => "reference table",
        })
    }
}

/// Resource limits of one plugin instance.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// CPU deadline of one call.
    pub timeout: Duration,
    /// Linear-memory cap.
    pub memory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { timeout: Duration::from_secs(2), memory_bytes: 64 << 20 }
    }
}

/// A directory granted to a plugin.
#[derive(Debug, Clone)]
pub struct DirGrant {
    /// Host directory.
    pub host: PathBuf,
    /// Path the plugin sees.
    pub guest: String,
    /// Whether the plugin may write.
    pub writable: bool,
}

/// What a plugin may touch beyond computing.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// Real clocks (otherwise frozen at the epoch).
    pub clock: bool,
    /// Preopened directories.
    pub dirs: Vec<DirGrant>,
    /// The state tables, channels and reference tables it may use: those its
    /// config keys of those types name (`type = "state-table"`, ... in plugin.toml).
    pub uses: Uses,
}

/// The pipeline's resources a plugin may use, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Uses {
    /// State tables (`[tables.<name>]`).
    pub tables: BTreeSet<String>,
    /// Notification channels (`[channels.<name>]`).
    pub channels: BTreeSet<String>,
    /// Reference tables (`[reference.<name>]`).
    pub references: BTreeSet<String>,
}

impl Uses {
    /// The names of one kind of resource.
    pub fn of(&self, kind: Resource) -> &BTreeSet<String> {
        match kind {
            Resource::StateTable => &self.tables,
            Resource::Channel => &self.channels,
            Resource::Reference => &self.references,
        }
    }

    /// Adds a name of one kind.
    pub fn add(&mut self, kind: Resource, name: String) {
        match kind {
            Resource::StateTable => self.tables.insert(name),
            Resource::Channel => self.channels.insert(name),
            Resource::Reference => self.references.insert(name),
        };
    }
}
