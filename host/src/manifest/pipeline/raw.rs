//! The pipeline manifest as written: the TOML schema, read with serde (with
//! spans, so each problem can point at its line). [`super::load`] checks it
//! into the specs of [`super::spec`].

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

use super::spec::*;
use crate::manifest::units::{ByteSize, Name};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawPipeline {
    pub(super) name: Name,
    #[serde(default)]
    pub(super) description: String,
    pub(super) data_dir: Option<String>,
    #[serde(default)]
    pub(super) include: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawApi {
    #[serde(default = "default_listen")]
    pub(super) listen: Spanned<String>,
    #[serde(default = "default_max_body")]
    pub(super) max_body: ByteSize,
    #[serde(default)]
    pub(super) access_keys: Vec<Spanned<RawAccessKey>>,
    pub(super) tls: Option<Spanned<RawTls>>,
    pub(super) max_connections: Option<Spanned<usize>>,
    pub(super) header_read_timeout: Option<Spanned<String>>,
    /// The variable holding the bearer token Prometheus scrapes `/metrics` with.
    pub(super) metrics_token_env: Option<Spanned<String>>,
}

/// `[api] tls = { cert = "...", key = "..." }`: PEM files, relative to the manifest.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTls {
    pub(super) cert: String,
    pub(super) key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawAccessKey {
    pub(super) id: String,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<String>,
    /// What the key may do; absent: everything.
    pub(super) allow: Option<Vec<Spanned<RawGrant>>>,
    /// Most requests per second the key may make; absent: no limit.
    pub(super) requests_per_second: Option<Spanned<u32>>,
}

/// One grant of a key's `allow`: actions on resources.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGrant {
    pub(super) actions: Vec<String>,
    pub(super) resources: Vec<String>,
}

impl Default for RawApi {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            max_body: default_max_body(),
            access_keys: Vec::new(),
            tls: None,
            max_connections: None,
            header_read_timeout: None,
            metrics_token_env: None,
        }
    }
}

pub(super) fn default_listen() -> Spanned<String> {
    Spanned::new(0..0, "127.0.0.1:7070".to_owned())
}

pub(super) fn default_max_body() -> ByteSize {
    ByteSize(8 << 20)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum SourceKind {
    Http,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawSource {
    #[allow(dead_code, reason = "one kind today; the field keeps manifests explicit")]
    pub(super) kind: SourceKind,
    pub(super) stream: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStream {
    #[serde(default = "default_capacity")]
    pub(super) capacity: usize,
    pub(super) fsync: Option<Spanned<String>>,
    pub(super) fsync_interval: Option<Spanned<String>>,
    pub(super) retention: Option<Spanned<String>>,
    pub(super) max_size: Option<ByteSize>,
    pub(super) segment_size: Option<Spanned<ByteSize>>,
    pub(super) write_limit: Option<RawWriteLimit>,
    #[serde(default = "one_shard")]
    pub(super) shards: Spanned<u32>,
    pub(super) deduplicate: Option<Spanned<RawDeduplicate>>,
}

/// `deduplicate = { id-pattern = "^([^,;]+)[,;]" }` or `{ id-field = "transaction_id" }`,
/// with an optional `horizon`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDeduplicate {
    pub(super) id_pattern: Option<Spanned<String>>,
    pub(super) id_field: Option<String>,
    pub(super) horizon: Option<Spanned<String>>,
}

pub(super) fn one_shard() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawWriteLimit {
    pub(super) bytes_per_second: ByteSize,
    pub(super) records_per_second: u64,
}

pub(super) fn default_capacity() -> usize {
    1_000_000
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawLimits {
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) memory: Option<Spanned<ByteSize>>,
    pub(super) output_record_size: Option<Spanned<ByteSize>>,
    pub(super) outputs_per_record: Option<Spanned<i64>>,
    pub(super) output_batch_size: Option<Spanned<ByteSize>>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Access {
    ReadOnly,
    ReadWrite,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDirGrant {
    pub(super) host: Spanned<String>,
    pub(super) guest: String,
    pub(super) access: Access,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawGrants {
    #[serde(default)]
    pub(super) clock: bool,
    #[serde(default)]
    pub(super) dirs: Vec<RawDirGrant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStage {
    pub(super) plugin: Spanned<String>,
    pub(super) input: Spanned<String>,
    #[serde(default = "absent")]
    pub(super) output: Spanned<String>,
    pub(super) dead_letter: Option<Spanned<String>>,
    // Checked by the checker rather than serde, so that one bad value does not
    // hide the other problems of the stage.
    pub(super) on_error: Option<Spanned<String>>,
    pub(super) failed_batch: Option<Spanned<String>>,
    #[serde(default = "default_batch_size")]
    pub(super) batch_size: Spanned<i64>,
    pub(super) batch_wait: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    #[serde(default = "absent")]
    pub(super) grants: Spanned<RawGrants>,
    #[serde(default = "absent")]
    pub(super) config: Spanned<BTreeMap<Spanned<String>, toml::Value>>,
    pub(super) hot_swap: Option<Spanned<RawHotSwap>>,
    pub(super) window: Option<Spanned<RawWindow>>,
    pub(super) expected_keys: Option<RawExpectedKeys>,
    pub(super) group_by: Option<Spanned<String>>,
    pub(super) late: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawExpectedKeys {
    List(Vec<String>),
    Reference { reference: String, column: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawTable {
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for people")]
    pub(super) description: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawChannel {
    pub(super) kind: Spanned<String>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) secret: Option<String>,
    pub(super) secret_env: Option<Spanned<String>>,
    pub(super) retry_duration: Option<Spanned<String>>,
}

/// `kind = "..."` of a channel.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawChannelKind {
    Inbox,
    Webhook,
    Log,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawReference {
    pub(super) lake: Spanned<String>,
    pub(super) s3: Option<Spanned<RawS3>>,
    pub(super) object: Spanned<String>,
    pub(super) key: Spanned<toml::Value>,
    pub(super) format: Option<Spanned<String>>,
    pub(super) refresh: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawWindow {
    pub(super) size: Spanned<String>,
    pub(super) slide: Option<Spanned<String>>,
    #[serde(default)]
    pub(super) time: RawTime,
    pub(super) out_of_orderness: Option<Spanned<String>>,
    pub(super) allowed_lateness: Option<Spanned<String>>,
    pub(super) idle_timeout: Option<Spanned<String>>,
    pub(super) max_ahead: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum RawTime {
    #[default]
    Event,
    Arrival,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawHotSwap {
    pub(super) probation: Option<Spanned<String>>,
    pub(super) max_failure_rate: Option<Spanned<f64>>,
    #[serde(default)]
    pub(super) watch: bool,
}

/// The default of an optional table; its empty span means "not written".
pub(super) fn absent<T: Default>() -> Spanned<T> {
    Spanned::new(0..0, T::default())
}

pub(super) fn default_batch_size() -> Spanned<i64> {
    Spanned::new(0..0, 256)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum SinkKind {
    File,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawSink {
    #[allow(dead_code, reason = "one kind today; the field keeps manifests explicit")]
    pub(super) kind: SinkKind,
    pub(super) path: String,
    #[serde(default)]
    pub(super) format: FileFormat,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawDelivery {
    pub(super) stream: Option<Spanned<String>>,
    pub(super) transform: Option<Spanned<String>>,
    #[serde(default = "absent")]
    pub(super) config: Spanned<BTreeMap<Spanned<String>, toml::Value>>,
    #[serde(default)]
    pub(super) limits: RawLimits,
    pub(super) failed_batch: Option<Spanned<String>>,
    pub(super) buffer_size: Option<Spanned<ByteSize>>,
    pub(super) buffer_interval: Option<Spanned<String>>,
    pub(super) lake: Spanned<String>,
    pub(super) s3: Option<Spanned<RawS3>>,
    #[serde(default)]
    pub(super) prefix: String,
    #[serde(default = "default_error_prefix")]
    pub(super) error_prefix: String,
    pub(super) backup_prefix: Option<String>,
    #[serde(default)]
    pub(super) compression: Compression,
    pub(super) retry_duration: Option<Spanned<String>>,
    pub(super) deduplicate: Option<Spanned<RawDeduplicate>>,
    pub(super) warehouse: Option<Spanned<RawWarehouse>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawS3 {
    pub(super) endpoint: Option<String>,
    pub(super) region: Option<String>,
    pub(super) access_key_id: Option<String>,
    pub(super) secret_access_key: Option<String>,
    pub(super) secret_access_key_env: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawWarehouse {
    #[serde(default)]
    pub(super) kind: WarehouseKind,
    pub(super) database: Option<Spanned<String>>,
    pub(super) database_env: Option<Spanned<String>>,
    pub(super) table: Spanned<String>,
    pub(super) columns: Spanned<toml::Value>,
    pub(super) key: Option<Spanned<RawKey>>,
    pub(super) retry_duration: Option<Spanned<String>>,
}

/// `key = "column"` or `key = ["a", "b"]`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum RawKey {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum WarehouseKind {
    #[default]
    Sqlite,
    Postgres,
}

pub(super) fn default_error_prefix() -> String {
    "errors/".to_owned()
}

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub(super) enum Compression {
    #[default]
    None,
    Gzip,
}
