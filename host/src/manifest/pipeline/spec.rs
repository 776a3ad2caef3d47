//! The checked pipeline: what the rest of the host starts from, every name
//! resolved, every setting parsed, defaults filled in.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

pub use weir_plugin::{DirGrant, Grants, Limits, Uses};

use crate::lake::LakeSpec;
use crate::manifest::plugin::PluginManifest;
use crate::manifest::units::Name;
use crate::sigv4::AccessKey;
use crate::stream::DiskStreamSpec;
use crate::warehouse::WarehouseSpec;

/// What a stage does with a batch its plugin failed on (trap, deadline,
/// memory cap, or an error returned for the whole batch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorPolicy {
    /// Write the batch's records to the dead-letter output with the reason (the default).
    #[default]
    DeadLetter,
    /// Drop the batch, counting and logging it.
    Skip,
    /// Stop the stage; its unprocessed records stay in the stream.
    Stop,
}

/// What a stage does with a batch its plugin failed on, before `on-error` applies
/// (`failed-batch = "bisect"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailedBatch {
    /// Try it again in halves, down to the records that fail alone (the default).
    #[default]
    Bisect,
    /// Try it again whole; the policy applies to the whole batch.
    Whole,
}

/// How long a webhook delivery is retried, by default.
pub const DEFAULT_WEBHOOK_RETRY: Duration = Duration::from_secs(3600);

/// How often a reference table's object is checked for a change, by default.
pub const DEFAULT_REFERENCE_REFRESH: Duration = Duration::from_secs(30);

/// A shard with no record for this long stops holding an aggregator stage's windows back.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Records further than this ahead of the clock are set aside instead of closing every window up to them.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(3600);

/// What a stage does after a hot swap (`hot-swap = { ... }`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HotSwap {
    /// How long a new version is watched after a swap.
    pub probation: Duration,
    /// Rolled back automatically when more than this share of its batches fail during probation.
    pub max_failure_rate: f64,
    /// Swap automatically when the plugin's component file changes.
    pub watch: bool,
}

impl Default for HotSwap {
    fn default() -> Self {
        Self { probation: Duration::from_secs(60), max_failure_rate: 0.5, watch: false }
    }
}

/// How long a partial batch waits for more records unless the stage says otherwise.
pub const DEFAULT_BATCH_WAIT: Duration = Duration::from_millis(50);

/// How a file sink writes each record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileFormat {
    /// The payload followed by a newline (the default).
    #[default]
    Lines,
    /// One JSON object per record: key, event time and payload.
    Json,
}

/// A validated pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// `[pipeline] name`
    pub name: Name,
    /// `[pipeline] description`
    pub description: String,
    /// The manifest file.
    pub path: PathBuf,
    /// Where the pipeline keeps its own files (dead letters by default).
    pub data_dir: PathBuf,
    /// `[api]`
    pub api: Api,
    /// `[storage]`
    pub storage: super::Storage,
    /// `[sources.*]`
    pub sources: Vec<Source>,
    /// `[streams.*]`
    pub streams: Vec<StreamSpec>,
    /// `[stages.*]`
    pub stages: Vec<StageSpec>,
    /// `[sinks.*]`
    pub sinks: Vec<SinkSpec>,
    /// `[delivery.*]`
    pub deliveries: Vec<DeliverySpec>,
    /// Reference tables (`[reference.<name>]`).
    pub references: Vec<crate::reference::ReferenceSpec>,
    /// State tables (`[tables.<name>]`).
    pub tables: Vec<String>,
    /// Notification channels (`[channels.<name>]`).
    pub channels: Vec<crate::notify::ChannelSpec>,
}

/// A `[delivery.<name>]` entry: a delivery stream (as Kinesis Data Firehose)
/// taking direct puts, buffering them and delivering objects to the lake.
#[derive(Debug, Clone)]
pub struct DeliverySpec {
    /// Its name.
    pub name: Name,
    /// The optional transform, its configuration and limits.
    pub transform: Option<Transform>,
    /// Deliver once this many bytes are buffered...
    pub buffer_bytes: u64,
    /// ... or once the oldest buffered record is this old, whichever first.
    pub buffer_interval: Duration,
    /// The lake: a local directory or an S3-compatible bucket.
    pub lake: LakeSpec,
    /// Key prefix of delivered objects; `YYYY/MM/DD/HH/` (UTC) follows it.
    pub prefix: String,
    /// Key prefix of records that failed, with their reasons.
    pub error_prefix: String,
    /// If set, the untransformed records are also kept under this prefix.
    pub backup_prefix: Option<String>,
    /// Read this weir stream instead of taking direct puts.
    pub source_stream: Option<Name>,
    /// Whether objects are gzip-compressed.
    pub gzip: bool,
    /// How long a lake write is retried before its records go under the error prefix.
    pub retry_duration: Duration,
    /// Where rows are bulk-loaded, if anywhere.
    pub warehouse: Option<WarehouseSpec>,
    /// What identifies the records put into its buffer: each is buffered once
    /// (direct puts only; a delivery reading a stream has the stream's).
    pub deduplicate: Option<crate::dedup::DedupSpec>,
}

/// A delivery stream's transform plugin.
#[derive(Debug, Clone)]
pub struct Transform {
    /// The plugin.
    pub plugin: PluginManifest,
    /// Its configuration, defaults filled in.
    pub config: Vec<(String, String)>,
    /// Its limits.
    pub limits: Limits,
    /// Bounds on its outputs.
    pub output_limits: OutputLimits,
    /// Whether a chunk it failed on is tried again in halves first.
    pub failed_batch: FailedBatch,
    /// The reference tables it may read (as its config names them).
    pub uses: Uses,
}

/// Buffer size unless a delivery stream sets `buffer-size` (as Firehose).
pub const DEFAULT_BUFFER_BYTES: u64 = 5 << 20;

/// Buffer interval unless a delivery stream sets `buffer-interval` (as Firehose).
pub const DEFAULT_BUFFER_INTERVAL: Duration = Duration::from_secs(300);

/// Lake writes are retried this long unless a delivery stream sets `retry-duration`.
pub const DEFAULT_LAKE_RETRY: Duration = Duration::from_secs(24 * 3600);

/// Warehouse loads are retried this long unless the warehouse sets `retry-duration` (as Firehose).
pub const DEFAULT_WAREHOUSE_RETRY: Duration = Duration::from_secs(3600);

/// `[api]`
#[derive(Debug, Clone)]
pub struct Api {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Keys whose SigV4 signatures the API accepts.
    pub access_keys: Vec<AccessKey>,
    /// What each key may do, by key id (a key declared without `allow` may do everything).
    pub policies: std::collections::BTreeMap<String, crate::access::Policy>,
    /// Keys whose `secret-env` variable is not set: `(key id, variable)`. Only
    /// `weir run` with authentication needs them, so they are refused there.
    pub unset_secrets: Vec<(String, String)>,
    /// The certificate and key to serve TLS with (absent: plain HTTP).
    pub tls: Option<crate::api::tls::TlsFiles>,
    /// Connections at once and how long headers may take.
    pub limits: crate::api::server::Limits,
    /// Requests per second, by key id (keys without `requests-per-second` are not limited).
    pub rates: std::collections::BTreeMap<String, u32>,
    /// The bearer token that may read `GET /metrics` (from `metrics-token-env`),
    /// for a scraper that cannot sign requests.
    pub metrics_token: Option<String>,
}

/// A `[sources.<name>]` entry: an HTTP entry point into a stream.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its name.
    pub name: Name,
    /// The stream it feeds.
    pub stream: Name,
}

/// A `[streams.<name>]` entry.
#[derive(Debug, Clone)]
pub struct StreamSpec {
    /// Its name.
    pub name: Name,
    /// How the stream is stored: capacity, fsync, retention, limits.
    pub storage: DiskStreamSpec,
    /// The identity its records are stored once by, if it declares one.
    pub deduplicate: Option<crate::dedup::DedupSpec>,
}

/// Where a stage's output goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Into another stream.
    Stream(Name),
    /// Into a sink.
    Sink(Name),
    /// A notifier stage: its plugin's state writes and notifications are its output.
    Effects,
}

/// Where failed records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeadLetter {
    /// A declared sink.
    Sink(Name),
    /// A declared stream: each dead letter a JSON record (for a delivery stream to take to the lake).
    Stream(Name),
    /// The default file under the data dir.
    File(PathBuf),
}

/// Bounds on a plugin's outputs (`limits = { output-record-size = "1MiB",
/// outputs-per-record = 1000, output-batch-size = "64MiB" }`): an input record whose
/// outputs break one (for an aggregator: a key whose window results do) is
/// dead-lettered with code `output-limit`, and nothing of it is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimits {
    /// The largest output record, in bytes (at most 1 MiB when the output is a stream).
    pub record_bytes: u64,
    /// The most outputs one input record may give.
    pub per_record: usize,
    /// The most output bytes one batch may give.
    pub batch_bytes: u64,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits { record_bytes: 1 << 20, per_record: 1000, batch_bytes: 64 << 20 }
    }
}

/// A `[stages.<name>]` entry.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// Its name.
    pub name: Name,
    /// The plugin it runs.
    pub plugin: PluginManifest,
    /// The stream it reads.
    pub input: Name,
    /// Where `ok` records go.
    pub output: Target,
    /// Where failed records go.
    pub dead_letter: DeadLetter,
    /// What a failed batch does.
    pub on_error: ErrorPolicy,
    /// Whether a failed batch is tried again in halves first.
    pub failed_batch: FailedBatch,
    /// Records per plugin call.
    pub batch_size: usize,
    /// How long a partial batch waits for more records.
    pub batch_wait: Duration,
    /// Resource limits.
    pub limits: Limits,
    /// Bounds on what a transformer may output.
    pub output_limits: OutputLimits,
    /// Capabilities granted.
    pub grants: Grants,
    /// Configuration handed to the plugin (defaults filled in), values as text.
    pub config: Vec<(String, String)>,
    /// Probation and automatic rollback after hot swaps.
    pub hot_swap: HotSwap,
    /// An aggregator stage's windows (`None` for a transformer stage).
    pub window: Option<crate::window::WindowSpec>,
    /// Keys that get a result in every window, even without records.
    pub expected_keys: Vec<String>,
    /// A reference table and column whose values are expected keys too.
    pub expected_keys_from: Option<(String, String)>,
    /// The payload's JSON field that groups records (default: the partition key).
    pub group_by: Option<String>,
    /// The stream late records go to, with the reason (default: the dead letters).
    pub late: Option<Name>,
}

/// A `[sinks.<name>]` entry.
#[derive(Debug, Clone)]
pub struct SinkSpec {
    /// Its name.
    pub name: Name,
    /// The file it appends to.
    pub path: PathBuf,
    /// How records are written.
    pub format: FileFormat,
}
