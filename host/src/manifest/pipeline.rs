//! The pipeline manifest (`manifests/*.toml`): sources, streams, stages, sinks
//! and the edges between them. Relative paths are relative to the manifest's folder.
//!
//! ```toml
//! [pipeline]
//! name = "quickstart"
//! data-dir = "../out/quickstart"      # default: ".weir/<name>"; dead letters etc. go here
//! include = ["abc-tolls/ingest.toml"] # fragments adding entries (any section below [api]);
//!                                     # paths inside a fragment are relative to its own folder
//!
//! [api]
//! listen = "127.0.0.1:7070"           # the default
//! max-body = "8MiB"                   # the default
//! access-keys = [{ id = "AKIAWEIR", secret-env = "WEIR_SECRET" }]   # SigV4 keys (or `secret = "..."`)
//!
//! [sources.toll-http]
//! kind = "http"                       # records are put through the HTTP API
//! stream = "toll-lines"
//!
//! [streams.toll-lines]                # kept on disk under <data-dir>/streams/toll-lines
//! shards = 1                          # each owns an equal slice of the MD5 hash key space (the default: 1);
//!                                     # once the stream exists, resharding through the API wins
//! capacity = 1000000                  # unconsumed records held before puts are refused (the default)
//! fsync = "group"                     # always | group (the default) | never: when a put is synced
//! fsync-interval = "5ms"              # longest a group commit waits for more puts (the default)
//! retention = "24h"                   # records older than this are dropped (the default; 1s to 365d)
//! max-size = "10GiB"                  # optional cap on the stream's files; the oldest go first
//! segment-size = "128MiB"             # retention drops whole segment files (the default)
//! write-limit = { bytes-per-second = "1MiB", records-per-second = 1000 }   # optional, as Kinesis shards
//!
//! [stages.etl]
//! plugin = "../plugins/toll-etl"      # a plugin folder (or its plugin.toml)
//! input = "toll-lines"                # a stream
//! output = "rows"                     # a sink or a stream
//! dead-letter = "rejected"            # a sink; default: <data-dir>/dead-letter/<stage>.jsonl
//! on-error = "dead-letter"            # dead-letter | skip | stop
//! batch-size = 256                    # records per call, 1 to 10000
//! batch-wait = "50ms"                 # how long a partial batch waits for more
//! limits = { timeout = "2s", memory = "64MiB" }
//! grants = { clock = false, dirs = [{ host = "../ref", guest = "/ref", access = "read-only" }] }
//! config = { currency = "USD" }       # checked against the plugin's [config.*]
//! window = { size = "10m" }           # aggregator stages: tumbling, or sliding with slide = "5m"; also
//!                                     # time = "event" | "arrival", out-of-orderness = "30s",
//!                                     # allowed-lateness = "0s", idle-timeout = "1m", max-ahead = "1h"
//! expected-keys = ["17", "42"]        # aggregator stages: keys with a result in every window, or
//! # expected-keys = { reference = "station-minimums", column = "station_id" }   # a reference table's values
//! group-by = "station_id"             # aggregator stages: group by this JSON field of the payload
//!                                     # instead of the record's partition key
//! late = "late-tolls"                 # aggregator stages: a stream for late records, with the reason
//!                                     # (the default: the dead letters)
//! hot-swap = { probation = "60s", max-failure-rate = 0.5, watch = false }   # after a swap (the defaults):
//!                                     # a version failing more than half its batches (3 at least) is rolled
//!                                     # back; `watch`: swap when the plugin's component file changes
//!
//! [sinks.rows]
//! kind = "file"
//! path = "../out/quickstart/rows.jsonl"
//! format = "lines"                    # lines: payload + newline; json: key, time and payload
//!
//! [delivery.toll-rows]                # a delivery stream (as Firehose), fed by direct puts...
//! stream = "toll-lines"               # ...or by a weir stream instead (optional)
//! transform = "../plugins/toll-etl"   # optional transformer plugin (with config, limits)
//! buffer-size = "5MiB"                # deliver at this size (the default; 1KiB to 128MiB)...
//! buffer-interval = "300s"            # ...or at this age, whichever first (the default; 0s to 15m)
//! lake = "../out/lake"                # a local directory, or "s3://bucket/prefix" with:
//! s3 = { endpoint = "http://127.0.0.1:9000", region = "us-east-1", access-key-id = "...",
//!        secret-access-key-env = "LAKE_SECRET" }   # all optional; else the AWS environment
//! prefix = "rows/"                    # object keys: <prefix>YYYY/MM/DD/HH/<name>-<shard>-<first>-<last>;
//!                                     # or expand !{timestamp:yyyy/MM/dd} / !{firehose:error-output-type}
//! error-prefix = "errors/"            # failed records with their reasons (the default)
//! backup-prefix = "raw/"              # optional: keep the untransformed records too
//! compression = "gzip"                # none (the default) | gzip
//! retry-duration = "24h"              # lake writes retried this long, then the records go under error-prefix
//!
//! [delivery.toll-rows.warehouse]      # optional: rows are also bulk-loaded into a table
//! kind = "sqlite"                     # sqlite (the default, created if missing) | postgres (the table must exist)
//! database = "../out/warehouse.db"    # sqlite: a file; postgres: "host=127.0.0.1 user=weir dbname=tolls"
//! database-env = "WEIR_WAREHOUSE"     # ...or the environment variable holding it (keeps passwords out)
//! table = "toll_transactions"
//! columns = ["transaction_id", "amount_cents"]        # columns named like the rows' JSON fields, or
//! # columns = { amount = "amount_cents" }             # column = "field"
//! retry-duration = "1h"               # loads retried this long, then the staged object is listed under error-prefix
//!
//! [tables.month-totals]               # a state table (get / put / delete / put-if / add), kept in
//! description = "..."                 # <data-dir>/state.redb; also GET / PUT /v1/tables/{table}/items/{key}
//!
//! [channels.app]                      # a notification channel for notifier plugins:
//! kind = "inbox"                      # inbox (GET /v1/inbox/{recipient}?channel=app) | webhook | log
//! # kind = "webhook"                  # POSTs JSON signed with HMAC-SHA256 (x-weir-signature), with
//! # url = "https://ops.example/hook"  # a stable x-weir-delivery id; retried for retry-duration (1h),
//! # secret-env = "OPS_HOOK_SECRET"    # then listed at GET /v1/channels/{name}/failed
//!
//! [reference.station-minimums]        # a reference table, looked up by plugins (`reference` import)
//! lake = "abc-tolls"                  # a directory or "s3://bucket/prefix" (with `s3 = { ... }`)
//! object = "station_minimums.csv"     # CSV with a header row, or JSON lines (.jsonl / .ndjson)
//! key = ["station_id", "weekday", "slot"]   # the key columns; a lookup key joins their values with `|`
//! format = "csv"                      # optional: from the object's extension
//! refresh = "30s"                     # how often the object is checked for a change (the default)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use super::plugin::{PluginManifest, World};
use super::toml_doc::Document;
use super::units::{ByteSize, Name, parse_duration};
use crate::api::AccessKey;
use crate::lake::LakeSpec;
use crate::stream::{
    DEFAULT_FSYNC_INTERVAL, DEFAULT_RETENTION, DEFAULT_SEGMENT_BYTES, DiskStreamSpec, FsyncPolicy, WriteLimit,
};
use crate::warehouse::{ColumnMap, Database, WarehouseSpec};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPipeline {
    name: Name,
    #[serde(default)]
    description: String,
    data_dir: Option<String>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawApi {
    #[serde(default = "default_listen")]
    listen: Spanned<String>,
    #[serde(default = "default_max_body")]
    max_body: ByteSize,
    #[serde(default)]
    access_keys: Vec<Spanned<RawAccessKey>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAccessKey {
    id: String,
    secret: Option<String>,
    secret_env: Option<String>,
}

impl Default for RawApi {
    fn default() -> Self {
        Self { listen: default_listen(), max_body: default_max_body(), access_keys: Vec::new() }
    }
}

fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:7070".to_owned())
}

fn default_max_body() -> ByteSize {
    ByteSize(8 << 20)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SourceKind {
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSource {
    #[allow(dead_code, reason = "one kind today; the field keeps manifests explicit")]
    kind: SourceKind,
    stream: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStream {
    #[serde(default = "default_capacity")]
    capacity: usize,
    fsync: Option<Spanned<String>>,
    fsync_interval: Option<Spanned<String>>,
    retention: Option<Spanned<String>>,
    max_size: Option<ByteSize>,
    segment_size: Option<Spanned<ByteSize>>,
    write_limit: Option<RawWriteLimit>,
    #[serde(default = "one_shard")]
    shards: Spanned<u32>,
}

fn one_shard() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWriteLimit {
    bytes_per_second: ByteSize,
    records_per_second: u64,
}

/// Most shards a stream may have.
pub const MAX_SHARDS: u32 = 256;

fn default_capacity() -> usize {
    1_000_000
}

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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawLimits {
    timeout: Option<Spanned<String>>,
    memory: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDirGrant {
    host: Spanned<String>,
    guest: String,
    access: Access,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGrants {
    #[serde(default)]
    clock: bool,
    #[serde(default)]
    dirs: Vec<RawDirGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawStage {
    plugin: Spanned<String>,
    input: Spanned<String>,
    #[serde(default = "absent")]
    output: Spanned<String>,
    dead_letter: Option<Spanned<String>>,
    // Checked by the checker rather than serde, so that one bad value does not
    // hide the other problems of the stage.
    on_error: Option<Spanned<String>>,
    #[serde(default = "default_batch_size")]
    batch_size: Spanned<i64>,
    batch_wait: Option<Spanned<String>>,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default = "absent")]
    grants: Spanned<RawGrants>,
    #[serde(default = "absent")]
    config: Spanned<BTreeMap<Spanned<String>, toml::Value>>,
    hot_swap: Option<Spanned<RawHotSwap>>,
    window: Option<Spanned<RawWindow>>,
    expected_keys: Option<RawExpectedKeys>,
    group_by: Option<Spanned<String>>,
    late: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RawExpectedKeys {
    List(Vec<String>),
    Reference { reference: String, column: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawTable {
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for people")]
    description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawChannel {
    kind: Spanned<String>,
    url: Option<Spanned<String>>,
    secret: Option<String>,
    secret_env: Option<Spanned<String>>,
    retry_duration: Option<Spanned<String>>,
}

/// `kind = "..."` of a channel.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawChannelKind {
    Inbox,
    Webhook,
    Log,
}

/// How long a webhook delivery is retried, by default.
pub const DEFAULT_WEBHOOK_RETRY: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawReference {
    lake: Spanned<String>,
    s3: Option<Spanned<RawS3>>,
    object: Spanned<String>,
    key: Spanned<toml::Value>,
    format: Option<Spanned<String>>,
    refresh: Option<Spanned<String>>,
}

/// How often a reference table's object is checked for a change, by default.
pub const DEFAULT_REFERENCE_REFRESH: Duration = Duration::from_secs(30);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWindow {
    size: Spanned<String>,
    slide: Option<Spanned<String>>,
    #[serde(default)]
    time: RawTime,
    out_of_orderness: Option<Spanned<String>>,
    allowed_lateness: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    max_ahead: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum RawTime {
    #[default]
    Event,
    Arrival,
}

/// A shard with no record for this long stops holding an aggregator stage's windows back.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Records further than this ahead of the clock are set aside instead of closing every window up to them.
pub const DEFAULT_MAX_AHEAD: Duration = Duration::from_secs(3600);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawHotSwap {
    probation: Option<Spanned<String>>,
    max_failure_rate: Option<Spanned<f64>>,
    #[serde(default)]
    watch: bool,
}

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

/// The default of an optional table; its empty span means "not written".
fn absent<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

fn default_batch_size() -> Spanned<i64> {
    Spanned::new(0..0, 256)
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum SinkKind {
    File,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSink {
    #[allow(dead_code, reason = "one kind today; the field keeps manifests explicit")]
    kind: SinkKind,
    path: String,
    #[serde(default)]
    format: FileFormat,
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
}

/// Buffer size unless a delivery stream sets `buffer-size` (as Firehose).
pub const DEFAULT_BUFFER_BYTES: u64 = 5 << 20;
/// Buffer interval unless a delivery stream sets `buffer-interval` (as Firehose).
pub const DEFAULT_BUFFER_INTERVAL: Duration = Duration::from_secs(300);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawDelivery {
    stream: Option<Spanned<String>>,
    transform: Option<Spanned<String>>,
    #[serde(default = "absent")]
    config: Spanned<BTreeMap<Spanned<String>, toml::Value>>,
    #[serde(default)]
    limits: RawLimits,
    buffer_size: Option<Spanned<ByteSize>>,
    buffer_interval: Option<Spanned<String>>,
    lake: Spanned<String>,
    s3: Option<Spanned<RawS3>>,
    #[serde(default)]
    prefix: String,
    #[serde(default = "default_error_prefix")]
    error_prefix: String,
    backup_prefix: Option<String>,
    #[serde(default)]
    compression: Compression,
    retry_duration: Option<Spanned<String>>,
    warehouse: Option<Spanned<RawWarehouse>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawS3 {
    endpoint: Option<String>,
    region: Option<String>,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    secret_access_key_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawWarehouse {
    #[serde(default)]
    kind: WarehouseKind,
    database: Option<Spanned<String>>,
    database_env: Option<Spanned<String>>,
    table: Spanned<String>,
    columns: Spanned<toml::Value>,
    retry_duration: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum WarehouseKind {
    #[default]
    Sqlite,
    Postgres,
}

/// Lake writes are retried this long unless a delivery stream sets `retry-duration`.
pub const DEFAULT_LAKE_RETRY: Duration = Duration::from_secs(24 * 3600);
/// Warehouse loads are retried this long unless the warehouse sets `retry-duration` (as Firehose).
pub const DEFAULT_WAREHOUSE_RETRY: Duration = Duration::from_secs(3600);

fn default_error_prefix() -> String {
    "errors/".to_owned()
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Compression {
    #[default]
    None,
    Gzip,
}

/// `[api]`
#[derive(Debug, Clone)]
pub struct Api {
    /// Address the HTTP API listens on.
    pub listen: SocketAddr,
    /// Largest request body accepted.
    pub max_body_bytes: u64,
    /// Keys whose SigV4 signatures the API accepts.
    pub access_keys: Vec<AccessKey>,
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
    /// Records per plugin call.
    pub batch_size: usize,
    /// How long a partial batch waits for more records.
    pub batch_wait: Duration,
    /// Resource limits.
    pub limits: Limits,
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

/// Reads and checks a pipeline manifest and the plugin manifests it names,
/// reporting every problem found.
pub fn load(path: &Path) -> Result<Pipeline, Diagnostics> {
    let mut diags = Diagnostics::default();
    let Some(text) = read_manifest(path, None, &mut diags) else { return Err(diags) };
    let source = SourceFile::new(path, &text);
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let doc = Document::parse(source.clone(), &text, &mut diags);
    doc.check_top_level(
        &["pipeline", "api", "sources", "streams", "stages", "sinks", "delivery", "reference", "tables", "channels"],
        &mut diags,
    );
    let pipeline = match doc.get("pipeline") {
        Some(_) => doc.single::<Option<RawPipeline>>("pipeline", &mut diags).flatten(),
        None => {
            diags.push(
                Diagnostic::new(&source, 0..0, "missing [pipeline] section").help("add [pipeline] with name = \"...\""),
            );
            None
        }
    };

    // Fragments named by `include` add entries; their paths are relative to their own folder.
    let mut texts = Vec::new();
    for include in pipeline.iter().flat_map(|p| &p.include) {
        let fragment = base.join(include.get_ref());
        if let Some(text) = read_manifest(&fragment, Some((&source, include.span())), &mut diags) {
            texts.push((fragment, text));
        }
    }
    let mut parts = vec![Part { doc, base: base.clone() }];
    for (fragment, text) in &texts {
        let doc = Document::parse(SourceFile::new(fragment, text), text, &mut diags);
        doc.check_top_level(
            &["sources", "streams", "stages", "sinks", "delivery", "reference", "tables", "channels"],
            &mut diags,
        );
        parts.push(Part { doc, base: fragment.parent().unwrap_or(Path::new(".")).to_owned() });
    }
    let api = parts[0].doc.single::<RawApi>("api", &mut diags);
    let api = api.and_then(|api| match api.listen.get_ref().parse::<SocketAddr>() {
        Ok(listen) => {
            let access_keys = access_keys(&source, &api.access_keys, &mut diags)?;
            Some(Api { listen, max_body_bytes: api.max_body.0, access_keys })
        }
        Err(_) => {
            diags.push(
                Diagnostic::new(
                    &source,
                    api.listen.span(),
                    format!("`{}` is not a socket address", api.listen.get_ref()),
                )
                .help("write an IP address and a port, such as \"127.0.0.1:7070\""),
            );
            None
        }
    });
    let data_dir = pipeline.as_ref().map(|p| match &p.data_dir {
        Some(dir) => base.join(dir),
        None => base.join(".weir").join(p.name.as_str()),
    });

    // Names are global across the manifest and its fragments.
    let mut all_streams = Vec::new();
    let mut all_sinks = Vec::new();
    let mut all_references = Vec::new();
    for part in &parts {
        all_streams.extend(part.doc.entry_names("streams"));
        all_sinks.extend(part.doc.entry_names("sinks"));
        all_references.extend(part.doc.entry_names("reference"));
    }
    let stream_names: BTreeSet<&Name> = all_streams.iter().collect();
    let sink_names: BTreeSet<&Name> = all_sinks.iter().collect();
    let reference_names: BTreeSet<&Name> = all_references.iter().collect();
    let mut declared: BTreeMap<(&str, Name), &Path> = BTreeMap::new();

    let mut sources = Vec::new();
    let mut streams = Vec::new();
    let mut stage_specs = Vec::new();
    let mut output_spans = Vec::new();
    let mut sinks = Vec::new();
    let mut deliveries = Vec::new();
    let mut references = Vec::new();
    let mut tables = Vec::new();
    let mut channels = Vec::new();
    for part in &parts {
        let (source, base) = (&part.doc.source, part.base.as_path());
        for section in ["sources", "streams", "stages", "sinks", "delivery", "reference", "tables", "channels"] {
            for (name, span) in part.doc.entry_spans(section) {
                if let Some(first) = declared.insert((section, name.clone()), &source.path) {
                    diags.push(
                        Diagnostic::new(source, span, format!("[{section}.{name}] is declared twice"))
                            .help(format!("it is also declared in {}; keep one", first.display())),
                    );
                }
            }
        }
        let check = Checker { source, streams: &stream_names, sinks: &sink_names, references: &reference_names };
        for sink in part.doc.entries::<RawSink>("sinks", &mut diags) {
            if stream_names.contains(&sink.name) {
                diags.push(
                    Diagnostic::new(
                        source,
                        sink.name_span.clone(),
                        format!("`{}` is both a stream and a sink", sink.name),
                    )
                    .help("give the sink another name, so stage outputs are unambiguous"),
                );
            }
            sinks.push(SinkSpec { path: base.join(&sink.value.path), name: sink.name, format: sink.value.format });
        }
        for s in part.doc.entries::<RawSource>("sources", &mut diags) {
            if let Some(stream) = check.stream(&s.value.stream, &format!("source `{}` feeds", s.name), &mut diags) {
                sources.push(Source { name: s.name, stream });
            }
        }
        for stage in part.doc.entries::<RawStage>("stages", &mut diags) {
            let output_span = stage.value.output.span();
            if let Some(spec) = check.stage(stage, base, data_dir.as_deref(), &mut diags) {
                stage_specs.push(spec);
                output_spans.push((source, output_span));
            }
        }
        for s in part.doc.entries::<RawStream>("streams", &mut diags) {
            streams.extend(check.stream_spec(s.name, &s.value, &mut diags));
        }
        for d in part.doc.entries::<RawDelivery>("delivery", &mut diags) {
            deliveries.extend(check.delivery(d, base, data_dir.as_deref(), &mut diags));
        }
        for r in part.doc.entries::<RawReference>("reference", &mut diags) {
            references.extend(check.reference(r.name, &r.value, base, &mut diags));
        }
        for t in part.doc.entries::<RawTable>("tables", &mut diags) {
            tables.push(t.name.to_string());
        }
        for c in part.doc.entries::<RawChannel>("channels", &mut diags) {
            channels.extend(check.channel(c.name, &c.value, &mut diags));
        }
    }
    check_cycles(&stage_specs, &output_spans, &mut diags);

    match (pipeline, api, data_dir) {
        (Some(p), Some(api), Some(data_dir)) if diags.is_empty() => Ok(Pipeline {
            name: p.name,
            description: p.description,
            path: path.to_owned(),
            data_dir,
            api,
            sources,
            streams,
            stages: stage_specs,
            sinks,
            deliveries,
            references,
            tables,
            channels,
        }),
        _ => Err(diags),
    }
}

/// The manifest or one of its fragments, with the folder its paths are relative to.
struct Part<'t> {
    doc: Document<'t>,
    base: PathBuf,
}

/// Reads a manifest file; `include` is where a fragment is named, for the error.
fn read_manifest(path: &Path, include: Option<(&SourceFile, Range<usize>)>, diags: &mut Diagnostics) -> Option<String> {
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            let message = format!("cannot read the manifest `{}`: {e}", path.display());
            diags.push(match include {
                Some((source, span)) => Diagnostic::new(source, span, message)
                    .help("the path is relative to the including manifest's folder"),
                None => Diagnostic::new(&SourceFile::new(path, ""), 0..0, message),
            });
            None
        }
    }
}

/// A value the manifest gives as `<key> = "..."` or, for a secret that does not
/// belong in a file, `<key>-env = "VARIABLE"`: the value, `None` when neither
/// is there, or `Err` (with the problem in `diags`) when both are, or the
/// variable is not set. `what` says what the variable must hold.
fn value_or_env(
    source: &SourceFile,
    owner: &str,
    key: &str,
    inline: Option<(&str, Range<usize>)>,
    env: Option<(&str, Range<usize>)>,
    what: &str,
    diags: &mut Diagnostics,
) -> Result<Option<String>, ()> {
    match (inline, env) {
        (Some(_), Some((_, span))) => {
            diags.push(Diagnostic::new(source, span, format!("{owner}: set `{key}` or `{key}-env`, not both")));
            Err(())
        }
        (Some((value, _)), None) => Ok(Some(value.to_owned())),
        (None, Some((var, span))) => match std::env::var(var) {
            Ok(value) if !value.is_empty() => Ok(Some(value)),
            _ => {
                diags.push(
                    Diagnostic::new(source, span, format!("{owner}: environment variable `{var}` is not set"))
                        .help(format!("export {var}=<{what}> before starting weir")),
                );
                Err(())
            }
        },
        (None, None) => Ok(None),
    }
}

/// Access keys with their secrets, inline or from the environment.
fn access_keys(source: &SourceFile, raw: &[Spanned<RawAccessKey>], diags: &mut Diagnostics) -> Option<Vec<AccessKey>> {
    let before = diags.len();
    let mut keys = Vec::new();
    for key in raw {
        let span = key.span();
        let k = key.get_ref();
        let owner = format!("access key `{}`", k.id);
        let inline = k.secret.as_deref().map(|v| (v, span.clone()));
        let env = k.secret_env.as_deref().map(|v| (v, span.clone()));
        let secret = match value_or_env(source, &owner, "secret", inline, env, "secret access key", diags) {
            Ok(Some(secret)) => Some(secret),
            Ok(None) => {
                diags.push(
                    Diagnostic::new(source, span, format!("{owner} needs exactly one of `secret` or `secret-env`"))
                        .help("prefer `secret-env = \"WEIR_SECRET_ACCESS_KEY\"`: secrets do not belong in files"),
                );
                None
            }
            Err(()) => None,
        };
        if let Some(secret) = secret {
            keys.push(AccessKey { id: k.id.clone(), secret });
        }
    }
    (diags.len() == before).then_some(keys)
}

struct Checker<'a> {
    source: &'a SourceFile,
    streams: &'a BTreeSet<&'a Name>,
    sinks: &'a BTreeSet<&'a Name>,
    references: &'a BTreeSet<&'a Name>,
}

fn one_of(names: &BTreeSet<&Name>) -> String {
    if names.is_empty() {
        "none is declared yet".to_owned()
    } else {
        let list: Vec<_> = names.iter().map(|n| format!("`{n}`")).collect();
        format!("declared: {}", list.join(", "))
    }
}

impl Checker<'_> {
    fn at(&self, span: Range<usize>, message: String) -> Diagnostic {
        Diagnostic::new(self.source, span, message)
    }

    /// A setting written as text (`on-error = "stop"`), read by serde into its
    /// enum; a problem is reported at its place, beside the others.
    fn setting<T: serde::de::DeserializeOwned>(
        &self,
        raw: &Spanned<String>,
        what: &str,
        diags: &mut Diagnostics,
    ) -> Option<T> {
        use serde::de::IntoDeserializer as _;
        let text: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            raw.get_ref().as_str().into_deserializer();
        match T::deserialize(text) {
            Ok(value) => Some(value),
            Err(e) => {
                diags.push(self.at(raw.span(), format!("{what}: {e}")));
                None
            }
        }
    }

    fn stream(&self, name: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<Name> {
        match Name::parse(name.get_ref()) {
            Ok(n) if self.streams.contains(&n) => Some(n),
            _ => {
                diags.push(self.at(name.span(), format!("{what} unknown stream `{}`", name.get_ref())).help(format!(
                    "declare [streams.{}] or use a declared stream ({})",
                    name.get_ref(),
                    one_of(self.streams)
                )));
                None
            }
        }
    }

    fn sink(&self, name: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<Name> {
        match Name::parse(name.get_ref()) {
            Ok(n) if self.sinks.contains(&n) => Some(n),
            _ => {
                diags.push(self.at(name.span(), format!("{what} unknown sink `{}`", name.get_ref())).help(format!(
                    "declare [sinks.{}] or use a declared sink ({})",
                    name.get_ref(),
                    one_of(self.sinks)
                )));
                None
            }
        }
    }

    fn stage(
        &self,
        stage: super::toml_doc::Entry<RawStage>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<StageSpec> {
        let name = stage.name;
        let mut raw = stage.value;
        // Problems with a table the user did not write point at the stage's name.
        if raw.grants.span().is_empty() {
            raw.grants = Spanned::new(stage.name_span.clone(), raw.grants.into_inner());
        }
        if raw.config.span().is_empty() {
            raw.config = Spanned::new(stage.name_span.clone(), raw.config.into_inner());
        }
        let what = |verb: &str| format!("stage `{name}` {verb}");
        let input = self.stream(&raw.input, &what("reads"), diags);
        let owner = format!("stage `{name}`");
        let plugin = self.plugin(&owner, &raw.plugin, base, diags);
        let notifier = plugin.as_ref().is_some_and(|p| p.info.world == World::Notifier);
        let output = match Name::parse(raw.output.get_ref()) {
            _ if notifier && raw.output.get_ref().is_empty() => Some(Target::Effects),
            Err(_) if raw.output.get_ref().is_empty() => {
                diags.push(
                    self.at(stage.name_span.clone(), format!("stage `{name}` has no output"))
                        .help("add output = \"<stream or sink>\" (only notifier stages have none)"),
                );
                None
            }
            Ok(n) if notifier => {
                diags.push(
                    self.at(
                        raw.output.span(),
                        format!("stage `{name}` runs a notifier, which writes no records to `{n}`"),
                    )
                    .help("remove `output`: a notifier's output is its state writes and notifications"),
                );
                None
            }
            Ok(n) if self.streams.contains(&n) => Some(Target::Stream(n)),
            Ok(n) if self.sinks.contains(&n) => Some(Target::Sink(n)),
            _ => {
                diags.push(
                    self.at(
                        raw.output.span(),
                        format!(
                            "stage `{name}` writes to `{}`, which is neither a stream nor a sink",
                            raw.output.get_ref()
                        ),
                    )
                    .help(format!(
                        "streams: {}; sinks: {}",
                        one_of(self.streams),
                        one_of(self.sinks)
                    )),
                );
                None
            }
        };
        let dead_letter = match &raw.dead_letter {
            Some(target) => match Name::parse(target.get_ref()) {
                Ok(n) if self.streams.contains(&n) => Some(DeadLetter::Stream(n)),
                _ => self.sink(target, &what("sends dead letters to"), diags).map(DeadLetter::Sink),
            },
            None => data_dir.and_then(|d| {
                match crate::names::child_path(&d.join("dead-letter"), &format!("{name}.jsonl")) {
                    Ok(file) => Some(DeadLetter::File(file)),
                    Err(e) => {
                        diags.push(self.at(stage.name_span.clone(), format!("stage `{name}`: {e}")));
                        None
                    }
                }
            }),
        };
        let batch_size = *raw.batch_size.get_ref();
        if !(1..=10_000).contains(&batch_size) {
            diags.push(
                self.at(raw.batch_size.span(), format!("batch-size {batch_size} is out of range"))
                    .help("use 1 to 10000 records"),
            );
        }
        let on_error = match &raw.on_error {
            None => Some(ErrorPolicy::DeadLetter),
            Some(policy) => self.setting(policy, &format!("stage `{name}`: on-error"), diags),
        };
        let batch_wait = match &raw.batch_wait {
            None => Some(DEFAULT_BATCH_WAIT),
            Some(w) => self.duration(w, diags),
        };
        let mut limits = Limits::default();
        if let Some(t) = &raw.limits.timeout
            && let Some(timeout) = self.duration(t, diags)
        {
            limits.timeout = timeout;
            if limits.timeout < Duration::from_millis(1) || limits.timeout > Duration::from_secs(600) {
                diags.push(self.at(t.span(), "limits.timeout must be between 1ms and 10m".to_owned()));
            }
        }
        if let Some(m) = &raw.limits.memory {
            limits.memory_bytes = m.get_ref().0;
            if limits.memory_bytes < (1 << 20) || limits.memory_bytes > (4 << 30) {
                diags.push(self.at(m.span(), "limits.memory must be between 1MiB and 4GiB".to_owned()));
            }
        }
        let grants = self.grants(&raw.grants, base, diags);
        let config = plugin.as_ref().and_then(|p| self.config(&owner, p, &raw.config, diags));
        let window = raw.window.as_ref().and_then(|w| self.window(&name, w, diags));
        if let Some(p) = &plugin {
            match (p.info.world, &raw.window) {
                (World::Transformer, None) | (World::Aggregator, Some(_)) => {}
                (World::Transformer, Some(w)) => diags.push(
                    self.at(
                        w.span(),
                        format!(
                            "stage `{name}`: plugin `{}` is a transformer; only aggregator stages have windows",
                            p.info.name
                        ),
                    )
                    .help("remove `window`, or use an aggregator plugin"),
                ),
                (World::Aggregator, None) => diags.push(
                    self.at(
                        raw.plugin.span(),
                        format!("stage `{name}`: plugin `{}` is an aggregator and needs a window", p.info.name),
                    )
                    .help("add e.g. window = { size = \"10m\" } (tumbling) or { size = \"30m\", slide = \"10m\" }"),
                ),
                (World::Notifier, None) => {}
                (World::Notifier, Some(w)) => diags.push(
                    self.at(
                        w.span(),
                        format!(
                            "stage `{name}`: plugin `{}` is a notifier; only aggregator stages have windows",
                            p.info.name
                        ),
                    )
                    .help("remove `window`"),
                ),
            }
            if raw.expected_keys.is_some() && p.info.world != World::Aggregator {
                diags.push(
                    self.at(raw.plugin.span(), format!("stage `{name}`: only aggregator stages have expected-keys")),
                );
            }
            if let Some(g) = raw.group_by.as_ref().filter(|_| p.info.world != World::Aggregator) {
                diags.push(self.at(g.span(), format!("stage `{name}`: only aggregator stages have group-by")));
            }
            if p.capabilities.clock && !grants.clock {
                diags.push(
                    self.at(
                        raw.grants.span(),
                        format!(
                            "stage `{name}`: plugin `{}` needs the clock, which the stage does not grant",
                            p.info.name
                        ),
                    )
                    .help("add `grants = { clock = true }` to the stage"),
                );
            }
            for dir in &p.capabilities.dirs {
                if !grants.dirs.iter().any(|g| &g.guest == dir) {
                    diags.push(
                        self.at(raw.grants.span(), format!("stage `{name}`: plugin `{}` needs directory `{dir}`, which the stage does not grant", p.info.name))
                            .help(format!("add `{{ host = \"...\", guest = \"{dir}\", access = \"read-only\" }}` to the stage's grants.dirs")),
                    );
                }
            }
        }
        let mut hot_swap = HotSwap::default();
        if let Some(raw) = &raw.hot_swap {
            let raw = raw.get_ref();
            hot_swap.watch = raw.watch;
            if let Some(p) = &raw.probation {
                hot_swap.probation = self.duration(p, diags).unwrap_or(hot_swap.probation);
            }
            if let Some(rate) = &raw.max_failure_rate {
                if !(0.0..=1.0).contains(rate.get_ref()) {
                    diags.push(self.at(rate.span(), "max-failure-rate must be between 0.0 and 1.0".to_owned()));
                }
                hot_swap.max_failure_rate = *rate.get_ref();
            }
        }
        if raw.window.is_some() && window.is_none() {
            return None;
        }
        let late = match &raw.late {
            None => None,
            Some(late) if raw.window.is_none() => {
                diags.push(self.at(late.span(), format!("stage `{name}`: only aggregator stages have late records")));
                None
            }
            Some(late) => Some(self.stream(late, &format!("stage `{name}` sends late records to"), diags)?),
        };
        let (expected_keys, expected_keys_from) = match &raw.expected_keys {
            None => (Vec::new(), None),
            Some(RawExpectedKeys::List(keys)) => (keys.clone(), None),
            Some(RawExpectedKeys::Reference { reference, column }) => {
                if !self.references.iter().any(|r| r.as_str() == reference) {
                    diags.push(
                        self.at(
                            raw.plugin.span(),
                            format!("stage `{name}`: expected-keys names reference table `{reference}`, which is not declared"),
                        )
                        .help(format!("declare [reference.{reference}]; {}", one_of(self.references))),
                    );
                }
                (Vec::new(), Some((reference.clone(), column.clone())))
            }
        };
        Some(StageSpec {
            window,
            expected_keys,
            expected_keys_from,
            group_by: raw.group_by.as_ref().map(|g| g.get_ref().clone()),
            late,
            hot_swap,
            name,
            plugin: plugin?,
            input: input?,
            output: output?,
            dead_letter: dead_letter?,
            on_error: on_error?,
            batch_size: batch_size.clamp(1, 10_000) as usize,
            batch_wait: batch_wait?,
            limits,
            grants,
            config: config?,
        })
    }

    fn delivery(
        &self,
        entry: super::toml_doc::Entry<RawDelivery>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<DeliverySpec> {
        let (name, mut raw) = (entry.name, entry.value);
        if raw.config.span().is_empty() {
            raw.config = Spanned::new(entry.name_span.clone(), raw.config.into_inner());
        }
        let before = diags.len();
        let source_stream = match &raw.stream {
            None => None,
            Some(stream) => Some(self.stream(stream, &format!("delivery `{name}` reads"), diags)?),
        };
        let transform = match &raw.transform {
            None => {
                if !raw.config.get_ref().is_empty() {
                    diags.push(self.at(raw.config.span(), format!("delivery `{name}` has config but no transform")));
                }
                None
            }
            Some(path) => {
                let owner = format!("delivery `{name}`");
                let plugin = self.plugin(&owner, path, base, diags)?;
                if plugin.info.world != World::Transformer {
                    diags.push(self.at(
                        path.span(),
                        format!(
                            "delivery `{name}`: plugin `{}` is a {}, not a transformer",
                            plugin.info.name, plugin.info.world
                        ),
                    ));
                }
                let config = self.config(&owner, &plugin, &raw.config, diags).unwrap_or_default();
                let mut limits = Limits::default();
                if let Some(t) = &raw.limits.timeout {
                    limits.timeout = self.duration(t, diags)?;
                }
                if let Some(m) = &raw.limits.memory {
                    limits.memory_bytes = m.get_ref().0;
                }
                Some(Transform { plugin, config, limits })
            }
        };
        for prefix in [Some(&raw.prefix), Some(&raw.error_prefix), raw.backup_prefix.as_ref()].into_iter().flatten() {
            if let Err(e) = crate::delivery::check_prefix(prefix) {
                diags.push(self.at(entry.name_span.clone(), format!("delivery `{name}`: {e}")));
            }
        }
        let buffer_bytes = match &raw.buffer_size {
            None => DEFAULT_BUFFER_BYTES,
            Some(size) => {
                let bytes = size.get_ref().0;
                if !((1 << 10)..=(128 << 20)).contains(&bytes) {
                    diags.push(self.at(size.span(), "buffer-size must be between 1KiB and 128MiB".to_owned()));
                }
                bytes
            }
        };
        let buffer_interval = match &raw.buffer_interval {
            None => DEFAULT_BUFFER_INTERVAL,
            Some(i) => {
                let d = self.duration(i, diags)?;
                if d > Duration::from_secs(900) {
                    diags.push(self.at(i.span(), "buffer-interval must be between 0s and 15m".to_owned()));
                }
                d
            }
        };
        let lake = self.lake(&format!("delivery `{name}`"), &raw.lake, raw.s3.as_ref(), base, diags);
        let retry_duration = match &raw.retry_duration {
            None => DEFAULT_LAKE_RETRY,
            Some(d) => self.duration(d, diags).unwrap_or(DEFAULT_LAKE_RETRY),
        };
        let warehouse = match &raw.warehouse {
            None => None,
            Some(w) => Some(self.warehouse(&name, w, base, data_dir, diags)?),
        };
        let lake = lake?;
        (diags.len() == before).then(|| DeliverySpec {
            name,
            transform,
            buffer_bytes,
            buffer_interval,
            lake,
            prefix: raw.prefix.clone(),
            error_prefix: raw.error_prefix.clone(),
            backup_prefix: raw.backup_prefix.clone(),
            source_stream,
            gzip: raw.compression == Compression::Gzip,
            retry_duration,
            warehouse,
        })
    }

    /// A `[channels.<name>]` entry.
    fn channel(&self, name: Name, raw: &RawChannel, diags: &mut Diagnostics) -> Option<crate::notify::ChannelSpec> {
        use crate::notify::{ChannelKind, ChannelSpec, WebhookSpec};
        let kind = match self.setting(&raw.kind, &format!("channel `{name}`: kind"), diags)? {
            RawChannelKind::Inbox => ChannelKind::Inbox,
            RawChannelKind::Log => ChannelKind::Log,
            RawChannelKind::Webhook => {
                let Some(url) = &raw.url else {
                    diags.push(
                        self.at(raw.kind.span(), format!("webhook channel `{name}` has no url"))
                            .help("add url = \"https://...\""),
                    );
                    return None;
                };
                if !url.get_ref().starts_with("http://") && !url.get_ref().starts_with("https://") {
                    diags.push(
                        self.at(url.span(), format!("channel `{name}`: `{}` is not an http(s):// URL", url.get_ref())),
                    );
                    return None;
                }
                let owner = format!("channel `{name}`");
                let inline = raw.secret.as_deref().map(|v| (v, raw.kind.span()));
                let env = raw.secret_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
                let secret = match value_or_env(self.source, &owner, "secret", inline, env, "signing secret", diags) {
                    Ok(Some(secret)) => secret,
                    Ok(None) => {
                        diags.push(
                            self.at(raw.kind.span(), format!("webhook channel `{name}` needs a signing secret"))
                                .help("add secret-env = \"VARIABLE\" (or secret = \"...\"): deliveries are signed with HMAC-SHA256"),
                        );
                        return None;
                    }
                    Err(()) => return None,
                };
                let retry_duration = match &raw.retry_duration {
                    None => DEFAULT_WEBHOOK_RETRY,
                    Some(d) => self.duration(d, diags)?,
                };
                ChannelKind::Webhook(WebhookSpec { url: url.get_ref().clone(), secret, retry_duration })
            }
        };
        if !matches!(kind, ChannelKind::Webhook(_))
            && let Some(url) = raw.url.as_ref()
        {
            diags.push(self.at(url.span(), format!("channel `{name}`: only webhook channels have a url")));
        }
        Some(ChannelSpec { name: name.to_string(), kind })
    }

    /// A `[reference.<name>]` table.
    fn reference(
        &self,
        name: Name,
        raw: &RawReference,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<crate::reference::ReferenceSpec> {
        use crate::reference::ReferenceFormat;
        let owner = format!("reference table `{name}`");
        let lake = self.lake(&owner, &raw.lake, raw.s3.as_ref(), base, diags);
        let object = raw.object.get_ref().trim_start_matches('/').to_owned();
        let format = match &raw.format {
            Some(format) => Some(self.setting::<ReferenceFormat>(format, &format!("{owner}: format"), diags)?),
            None if object.ends_with(".csv") => Some(ReferenceFormat::Csv),
            None if [".jsonl", ".ndjson", ".json"].iter().any(|e| object.ends_with(e)) => {
                Some(ReferenceFormat::JsonLines)
            }
            None => {
                diags.push(
                    self.at(raw.object.span(), format!("{owner}: cannot tell the format of `{object}` from its name"))
                        .help("add format = \"csv\" or \"jsonl\""),
                );
                None
            }
        };
        let key = match raw.key.get_ref() {
            toml::Value::String(column) => vec![column.clone()],
            toml::Value::Array(columns) if !columns.is_empty() && columns.iter().all(toml::Value::is_str) => {
                columns.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()
            }
            _ => {
                diags.push(
                    self.at(raw.key.span(), format!("{owner}: key must name a column or a list of columns"))
                        .help("write key = \"station_id\" or key = [\"station_id\", \"weekday\"]"),
                );
                return None;
            }
        };
        let refresh = match &raw.refresh {
            None => DEFAULT_REFERENCE_REFRESH,
            Some(r) => {
                let d = self.duration(r, diags)?;
                if d < Duration::from_millis(100) {
                    diags.push(self.at(r.span(), format!("{owner}: refresh must be at least 100ms")));
                }
                d
            }
        };
        Some(crate::reference::ReferenceSpec {
            name: name.to_string(),
            lake: lake?,
            object,
            format: format?,
            key,
            refresh,
        })
    }

    /// `window = { size = "10m" }` (tumbling) or `{ size = "30m", slide = "10m" }` (sliding), with
    /// `time`, `out-of-orderness`, `allowed-lateness`, `idle-timeout` and `max-ahead`.
    fn window(
        &self,
        stage: &Name,
        raw: &Spanned<RawWindow>,
        diags: &mut Diagnostics,
    ) -> Option<crate::window::WindowSpec> {
        use crate::window::{TimeSource, WindowKind, WindowSpec};
        let w = raw.get_ref();
        let size = self.duration(&w.size, diags)?;
        let kind = match &w.slide {
            None => WindowKind::tumbling(size),
            Some(slide) => WindowKind::sliding(size, self.duration(slide, diags)?),
        };
        let kind = kind.map_err(|e| diags.push(self.at(raw.span(), format!("stage `{stage}`: {e}")))).ok()?;
        let mut spec = WindowSpec::new(kind);
        spec.time = if w.time == RawTime::Arrival { TimeSource::ArrivalTime } else { TimeSource::EventTime };
        let optional =
            |d: &Option<Spanned<String>>, diags: &mut Diagnostics| d.as_ref().map(|d| self.duration(d, diags));
        if let Some(d) = optional(&w.out_of_orderness, diags) {
            spec.out_of_orderness = d?;
        }
        if let Some(d) = optional(&w.allowed_lateness, diags) {
            spec.allowed_lateness = d?;
        }
        spec.idle_timeout = Some(optional(&w.idle_timeout, diags).unwrap_or(Some(DEFAULT_IDLE_TIMEOUT))?);
        spec.max_ahead = Some(optional(&w.max_ahead, diags).unwrap_or(Some(DEFAULT_MAX_AHEAD))?);
        spec.validate().map_err(|e| diags.push(self.at(raw.span(), format!("stage `{stage}`: {e}")))).ok()?;
        Some(spec)
    }

    /// `lake = "dir"` or `lake = "s3://bucket/prefix"` with `s3 = { ... }`.
    fn lake(
        &self,
        owner: &str,
        lake: &Spanned<String>,
        s3: Option<&Spanned<RawS3>>,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<LakeSpec> {
        let span = lake.span();
        let mut lake = match LakeSpec::parse(lake.get_ref(), base) {
            Ok(lake) => lake,
            Err(e) => {
                diags.push(self.at(span, format!("{owner}: {e}")));
                return None;
            }
        };
        let Some(s3) = s3 else { return Some(lake) };
        let LakeSpec::S3(spec) = &mut lake else {
            diags.push(
                self.at(s3.span(), format!("{owner} has `s3` settings but its lake is a directory"))
                    .help("write the lake as lake = \"s3://bucket/prefix\", or remove `s3`"),
            );
            return None;
        };
        let settings = s3.get_ref();
        if let Some(endpoint) = &settings.endpoint {
            if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
                diags.push(self.at(s3.span(), format!("{owner}: s3 endpoint `{endpoint}` is not an http(s):// URL")));
            }
            spec.endpoint = Some(endpoint.clone());
        }
        if let Some(region) = &settings.region {
            spec.region = region.clone();
        }
        spec.access_key_id = settings.access_key_id.clone();
        let inline = settings.secret_access_key.as_deref().map(|v| (v, s3.span()));
        let env = settings.secret_access_key_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let what = "the lake's secret access key";
        spec.secret_access_key =
            value_or_env(self.source, owner, "secret-access-key", inline, env, what, diags).ok().flatten();
        Some(lake)
    }

    fn warehouse(
        &self,
        delivery: &Name,
        raw: &Spanned<RawWarehouse>,
        base: &Path,
        data_dir: Option<&Path>,
        diags: &mut Diagnostics,
    ) -> Option<WarehouseSpec> {
        let before = diags.len();
        let w = raw.get_ref();
        let owner = format!("delivery `{delivery}` warehouse");
        let inline = w.database.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let env = w.database_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
        let what = "the database's connection string";
        let database = match value_or_env(self.source, &owner, "database", inline, env, what, diags) {
            Ok(Some(database)) => Some(database),
            Err(()) => None,
            Ok(None) if w.kind == WarehouseKind::Sqlite => {
                Some(data_dir.unwrap_or(base).join("warehouse.db").display().to_string())
            }
            Ok(None) => {
                diags.push(
                    self.at(raw.span(), format!("{owner}: a postgres warehouse needs `database` or `database-env`"))
                        .help("e.g. database = \"host=127.0.0.1 user=weir dbname=tolls\""),
                );
                None
            }
        };
        if let Err(e) = crate::warehouse::check_identifier(w.table.get_ref()) {
            diags.push(self.at(w.table.span(), format!("{owner}: table {e}")));
        }
        let columns = self.columns(&owner, &w.columns, diags);
        let retry_duration = match &w.retry_duration {
            None => DEFAULT_WAREHOUSE_RETRY,
            Some(d) => self.duration(d, diags).unwrap_or(DEFAULT_WAREHOUSE_RETRY),
        };
        let database = match w.kind {
            WarehouseKind::Sqlite => Database::Sqlite(base.join(database?)),
            WarehouseKind::Postgres => Database::Postgres(database?),
        };
        (diags.len() == before).then(|| WarehouseSpec {
            database,
            table: w.table.get_ref().clone(),
            columns,
            retry_duration,
        })
    }

    /// `columns = ["a", "b"]` (column = field) or `columns = { column = "field" }`.
    fn columns(&self, owner: &str, raw: &Spanned<toml::Value>, diags: &mut Diagnostics) -> Vec<ColumnMap> {
        let pairs: Vec<(String, Option<String>)> = match raw.get_ref() {
            toml::Value::Array(items) => {
                items.iter().map(|v| (v.as_str().unwrap_or("").to_owned(), v.as_str().map(str::to_owned))).collect()
            }
            toml::Value::Table(map) => {
                map.iter().map(|(column, field)| (column.clone(), field.as_str().map(str::to_owned))).collect()
            }
            _ => Vec::new(),
        };
        let before = diags.len();
        let mut columns = Vec::new();
        for (column, field) in pairs {
            match (crate::warehouse::check_identifier(&column), field) {
                (Ok(()), Some(field)) if !column.contains('.') => columns.push(ColumnMap { column, field }),
                (Err(e), _) => diags.push(self.at(raw.span(), format!("{owner}: column {e}"))),
                _ => diags.push(self.at(raw.span(), format!("{owner}: column `{column}` needs a field name string"))),
            }
        }
        if columns.is_empty() && diags.len() == before {
            diags.push(self.at(raw.span(), format!("{owner}: `columns` maps no column")).help(
                "list the columns named like the rows' JSON fields, [\"a\", \"b\"], or map them: { column = \"field\" }",
            ));
        }
        columns
    }

    fn stream_spec(&self, name: Name, raw: &RawStream, diags: &mut Diagnostics) -> Option<StreamSpec> {
        let fsync = self.fsync(raw, diags);
        let retention = match &raw.retention {
            None => Some(DEFAULT_RETENTION),
            Some(r) => self.duration(r, diags).filter(|d| {
                let ok = (Duration::from_secs(1)..=Duration::from_secs(365 * 24 * 3600)).contains(d);
                if !ok {
                    diags.push(self.at(r.span(), "retention must be between 1s and 365 days".to_owned()));
                }
                ok
            }),
        };
        let segment_bytes = match &raw.segment_size {
            None => Some(DEFAULT_SEGMENT_BYTES),
            Some(size) if (4096..=(1 << 30)).contains(&size.get_ref().0) => Some(size.get_ref().0),
            Some(size) => {
                diags.push(self.at(size.span(), "segment-size must be between 4KiB and 1GiB".to_owned()));
                None
            }
        };
        let shards = *raw.shards.get_ref();
        if !(1..=MAX_SHARDS).contains(&shards) {
            diags.push(
                self.at(raw.shards.span(), format!("shards = {shards} is out of range"))
                    .help(format!("use 1 to {MAX_SHARDS}")),
            );
        }
        let storage = DiskStreamSpec {
            shards: shards.clamp(1, MAX_SHARDS),
            name: name.to_string(),
            capacity: raw.capacity,
            fsync: fsync?,
            retention: retention?,
            max_bytes: raw.max_size.map(|s| s.0),
            segment_bytes: segment_bytes?,
            write_limit: raw.write_limit.as_ref().map(|w| WriteLimit {
                bytes_per_second: w.bytes_per_second.0,
                records_per_second: w.records_per_second,
            }),
        };
        Some(StreamSpec { name, storage })
    }

    fn fsync(&self, raw: &RawStream, diags: &mut Diagnostics) -> Option<FsyncPolicy> {
        let interval = match &raw.fsync_interval {
            Some(i) => self.duration(i, diags)?,
            None => DEFAULT_FSYNC_INTERVAL,
        };
        match raw.fsync.as_ref().map(|f| (f.get_ref().as_str(), f.span())) {
            None | Some(("group", _)) => Some(FsyncPolicy::Group(interval)),
            Some(("always", _)) => Some(FsyncPolicy::Always),
            Some(("never", _)) => Some(FsyncPolicy::Never),
            Some((other, span)) => {
                diags.push(
                    self.at(span, format!("`{other}` is not an fsync policy"))
                        .help("use \"always\", \"group\" (the default) or \"never\""),
                );
                None
            }
        }
    }

    fn duration(&self, raw: &Spanned<String>, diags: &mut Diagnostics) -> Option<Duration> {
        parse_duration(raw.get_ref()).map_err(|e| diags.push(self.at(raw.span(), e))).ok()
    }

    fn grants(&self, raw: &Spanned<RawGrants>, base: &Path, diags: &mut Diagnostics) -> Grants {
        let mut grants = Grants { clock: raw.get_ref().clock, dirs: Vec::new() };
        for d in &raw.get_ref().dirs {
            let host = base.join(d.host.get_ref());
            if !host.is_dir() {
                diags.push(
                    self.at(d.host.span(), format!("granted directory `{}` does not exist", host.display()))
                        .help("create it, or fix the path (relative to the manifest's folder)"),
                );
            }
            if !d.guest.starts_with('/') {
                diags.push(self.at(raw.span(), format!("guest path `{}` must be absolute, such as \"/ref\"", d.guest)));
            }
            grants.dirs.push(DirGrant { host, guest: d.guest.clone(), writable: d.access == Access::ReadWrite });
        }
        grants
    }

    fn plugin(
        &self,
        owner: &str,
        raw: &Spanned<String>,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<PluginManifest> {
        let file = PluginManifest::file_for(&base.join(raw.get_ref()));
        match PluginManifest::load(&file, diags) {
            Ok(p) => p,
            Err(e) => {
                diags.push(
                    self.at(
                        raw.span(),
                        format!("{owner}: cannot read plugin manifest `{}`: {e}", file.display()),
                    )
                    .help(
                        "point `plugin` at a plugin folder holding a plugin.toml (relative to the manifest's folder)",
                    ),
                );
                None
            }
        }
    }

    fn config(
        &self,
        owner: &str,
        plugin: &PluginManifest,
        raw: &Spanned<BTreeMap<Spanned<String>, toml::Value>>,
        diags: &mut Diagnostics,
    ) -> Option<Vec<(String, String)>> {
        let set: Vec<(&str, &toml::Value)> = raw.get_ref().iter().map(|(k, v)| (k.get_ref().as_str(), v)).collect();
        let problems = match plugin.resolve_config(&set) {
            Ok(config) => return Some(config),
            Err(problems) => problems,
        };
        for problem in problems {
            // At the key at fault, or at the whole config for a missing one.
            let span = problem
                .key
                .and_then(|key| raw.get_ref().keys().find(|k| *k.get_ref() == key).map(|k| k.span()))
                .unwrap_or_else(|| raw.span());
            let diagnostic = self.at(span, format!("{owner}: {}", problem.message));
            diags.push(match problem.help {
                Some(help) => diagnostic.help(help),
                None => diagnostic,
            });
        }
        None
    }
}

/// A stage that (through other stages) feeds its own input would loop records forever.
fn check_cycles(stages: &[StageSpec], output_spans: &[(&SourceFile, Range<usize>)], diags: &mut Diagnostics) {
    let edges: Vec<(&Name, &Name)> = stages
        .iter()
        .filter_map(|s| match &s.output {
            Target::Stream(out) => Some((&s.input, out)),
            Target::Sink(_) | Target::Effects => None,
        })
        .collect();
    for (stage, (source, span)) in stages.iter().zip(output_spans) {
        let Target::Stream(start) = &stage.output else { continue };
        let mut seen = BTreeSet::new();
        let mut todo = vec![start];
        while let Some(stream) = todo.pop() {
            if stream == &stage.input {
                diags.push(
                    Diagnostic::new(
                        source,
                        span.clone(),
                        format!("stage `{}` feeds its own input stream `{}` (a cycle)", stage.name, stage.input),
                    )
                    .help("write the output to another stream or a sink"),
                );
                break;
            }
            if seen.insert(stream) {
                todo.extend(edges.iter().filter(|(i, _)| *i == stream).map(|(_, o)| *o));
            }
        }
    }
}
