//! A disk stream's settings: when puts are synced, retention, segment size,
//! write limit, shards; the defaults; where a stream created through the API
//! keeps its settings.

use std::fs::File;
use std::time::Duration;

/// Segment size unless the stream sets one.
pub const DEFAULT_SEGMENT_BYTES: u64 = 128 << 20;
/// How long records are kept unless the stream says otherwise (as Kinesis).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// When a put is synced to disk before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every put waits for its own fsync (concurrent puts may share one).
    Always,
    /// Group commit: puts arriving close together share one fsync; an fsync
    /// waits at most this long for more puts to join it.
    Group(Duration),
    /// No fsync: a machine crash may lose acknowledged puts (a process crash does not).
    Never,
}

/// How the store makes a file durable; tests inject failures through it.
pub trait Syncer: Send + Sync {
    /// Makes the file's written data durable.
    fn sync(&self, file: &File) -> std::io::Result<()>;
}

/// The real thing: `fdatasync`.
#[derive(Debug, Default)]
pub struct FileSyncer;

impl Syncer for FileSyncer {
    fn sync(&self, file: &File) -> std::io::Result<()> {
        file.sync_data()
    }
}

/// One stream to open.
#[derive(Debug, Clone)]
pub struct DiskStreamSpec {
    /// Stream name (also its folder name).
    pub name: String,
    /// Unconsumed records held before puts are refused.
    pub capacity: usize,
    /// When puts are synced.
    pub fsync: FsyncPolicy,
    /// Records older than this (by arrival) are dropped, a whole segment at a time.
    pub retention: Duration,
    /// The stream's files are kept under this size, dropping the oldest segments first.
    pub max_bytes: Option<u64>,
    /// A new segment file starts once the current one is this large.
    pub segment_bytes: u64,
    /// Per-shard write limit, as Kinesis's provisioned throughput; none by default.
    pub write_limit: Option<WriteLimit>,
    /// Number of shards, each with its own log.
    pub shards: u32,
}

/// A shard's write limit: puts beyond it are refused with `Throttled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLimit {
    /// Bytes (keys and payloads) per second; Kinesis allows 1 MiB.
    pub bytes_per_second: u64,
    /// Records per second; Kinesis allows 1,000.
    pub records_per_second: u64,
}

impl DiskStreamSpec {
    /// A stream with the default retention (24 h), no size cap and 128 MiB segments.
    pub fn new(name: &str, capacity: usize, fsync: FsyncPolicy) -> Self {
        Self {
            name: name.to_owned(),
            capacity,
            fsync,
            retention: DEFAULT_RETENTION,
            max_bytes: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            write_limit: None,
            shards: 1,
        }
    }
}

/// Settings of a stream created through the API, kept beside its segments.
pub(super) const SETTINGS_FILE: &str = "stream.settings";

/// Unconsumed records a stream created through the API holds before refusing puts.
pub const DEFAULT_CAPACITY: usize = 1_000_000;
/// The group-commit interval unless a stream sets `fsync-interval`.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(5);
