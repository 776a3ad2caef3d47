//! Streams: ordered records that stages read at their own pace, each stage
//! (consumer) with its own checkpoint. [`StreamStore`] is what the host needs
//! from a stream store; [`DiskStreams`] keeps them in an append-only,
//! checksummed log on local disk (NATS JetStream is the next implementation).

mod disk;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

pub use disk::{
    DEFAULT_CAPACITY, DEFAULT_RETENTION, DEFAULT_SEGMENT_BYTES, DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy,
    Syncer, WriteLimit,
};

/// The one shard of a stream (for now), named like Kinesis shards.
pub const SHARD_ID: &str = "shardId-000000000000";

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Partition key.
    pub key: String,
    /// Event time, ms since the Unix epoch; the arrival time when absent.
    pub event_time_ms: Option<i64>,
    /// Payload.
    pub data: Bytes,
}

/// A record in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Position in the shard, strictly increasing from 0.
    pub sequence: u64,
    /// Partition key.
    pub key: String,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// When the stream accepted it, ms since the Unix epoch.
    pub arrival_ms: i64,
    /// Payload.
    pub data: Bytes,
}

/// Where an appended record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// Shard id.
    pub shard_id: &'static str,
    /// Sequence number in the shard.
    pub sequence: u64,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No stream of that name.
    #[error("no stream named `{0}`")]
    UnknownStream(String),
    /// The stream holds as many records as it may; consumers must catch up.
    #[error("stream `{stream}` is full ({capacity} records waiting for consumers); retry later")]
    Full {
        /// The stream.
        stream: String,
        /// Its capacity.
        capacity: usize,
    },
    /// The store cannot take writes any more (e.g. an fsync failed): nothing
    /// is acknowledged after the failure. Restart the host once the disk is fixed.
    #[error("stream `{stream}` stopped accepting writes after a storage failure: {reason}")]
    Failed {
        /// The stream.
        stream: String,
        /// What failed.
        reason: String,
    },
    /// A record on disk does not match its checksum; it is never served.
    #[error("stream data is corrupted in `{file}` at offset {offset}: {reason}")]
    Corrupt {
        /// The segment file.
        file: String,
        /// Byte offset of the damaged frame.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// The shard's write limit is used up for now (Kinesis's
    /// `ProvisionedThroughputExceededException`); retry with backoff.
    #[error("stream `{stream}` is over its write limit ({limit}); retry with backoff")]
    Throttled {
        /// The stream.
        stream: String,
        /// The limit, as configured.
        limit: String,
    },
    /// A stream of that name exists already.
    #[error("a stream named `{0}` exists already")]
    AlreadyExists(String),
    /// A read asked for records that were already dropped.
    #[error("stream `{stream}` no longer holds sequence {sequence} (oldest is {oldest})")]
    Trimmed {
        /// The stream.
        stream: String,
        /// Requested position.
        sequence: u64,
        /// Oldest retained.
        oldest: u64,
    },
}

/// What a stream store offers the host. All positions are "the next sequence to read".
pub trait StreamStore: Send + Sync {
    /// Appends records in order. With a write limit, only the records that fit
    /// are appended: the result is then shorter than the input (a prefix), and
    /// `Throttled` if none fit.
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>, StreamError>;
    /// Up to `max` records from position `from`.
    fn read(&self, stream: &str, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError>;
    /// Blocks until at least `min` records are readable from `from`, or `timeout`
    /// passes; returns how many are readable.
    fn wait_for(&self, stream: &str, from: u64, min: usize, timeout: Duration) -> Result<usize, StreamError>;
    /// Registers a consumer; returns the position to resume from.
    fn register_consumer(&self, stream: &str, consumer: &str) -> Result<u64, StreamError>;
    /// Records that `consumer` is done with everything before `next`.
    fn checkpoint(&self, stream: &str, consumer: &str, next: u64) -> Result<(), StreamError>;
    /// The position after the newest record.
    fn end(&self, stream: &str) -> Result<u64, StreamError>;
    /// The position of the first record that arrived at or after `arrival_ms`
    /// (the end if none did), found through the index, not by scanning.
    fn position_at_time(&self, stream: &str, arrival_ms: i64) -> Result<u64, StreamError>;
    /// Creates a stream; it survives restarts.
    fn create(&self, spec: StreamSettings) -> Result<(), StreamError>;
    /// Deletes a stream and its records.
    fn delete(&self, stream: &str) -> Result<(), StreamError>;
    /// The names of all streams, sorted.
    fn list(&self) -> Vec<String>;
    /// What a stream is and holds.
    fn info(&self, stream: &str) -> Result<StreamInfo, StreamError>;
    /// Changes how long records are kept.
    fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), StreamError>;
}

/// Settings of a stream created at run time (through the Kinesis API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// How long records are kept.
    pub retention: Duration,
}

/// What a stream is and holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    /// Stream name.
    pub name: String,
    /// How long records are kept.
    pub retention: Duration,
    /// When the stream was created, ms since the Unix epoch.
    pub created_ms: i64,
    /// Sequence number of the oldest record kept.
    pub oldest: u64,
    /// Position after the newest record.
    pub end: u64,
    /// Consumers and their checkpoints.
    pub consumers: BTreeMap<String, u64>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
