//! Streams: ordered records that stages read at their own pace, each stage
//! (consumer) with its own checkpoint. [`StreamStore`] is what the host needs
//! from a stream store; [`DiskStreams`] keeps them in an append-only,
//! checksummed log on local disk (NATS JetStream is the next implementation).
//!
//! The bottom layer of weir, in a crate of its own so that nothing above can
//! reach into it: it knows names ([`names`], the rule of every name that
//! reaches storage) and time ([`time`]), and nothing of plugins, stages or APIs.

mod disk;
mod faults;
pub mod kpl;
pub mod names;
pub mod reshard;
pub mod time;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;

pub use crate::time::{Clock, now_ms, system_clock};

/// Most shards a stream may have.
pub const MAX_SHARDS: u32 = 256;

pub use disk::{
    DEFAULT_CAPACITY, DEFAULT_FSYNC_INTERVAL, DEFAULT_RETENTION, DEFAULT_SEGMENT_BYTES, DiskStreamSpec, DiskStreams,
    FileSyncer, FsyncPolicy, Syncer, WriteLimit,
};
pub use faults::FaultyStore;

/// The Kinesis-style id of shard `index`: `shardId-000000000003`.
pub fn shard_id(index: u32) -> String {
    format!("shardId-{index:012}")
}

/// The index in a Kinesis-style shard id.
pub fn parse_shard_id(id: &str) -> Option<u32> {
    id.strip_prefix("shardId-").filter(|d| d.len() == 12).and_then(|d| d.parse().ok())
}

/// Where a partition key falls in the 128-bit hash key space: its MD5, as Kinesis does.
pub fn hash_key(partition_key: &str) -> u128 {
    use md5::Digest as _;
    u128::from_be_bytes(md5::Md5::digest(partition_key.as_bytes()).into())
}

/// The first hash key of shard `index` of `count` equal shards.
pub fn shard_start(index: u32, count: u32) -> u128 {
    if count <= 1 { 0 } else { u128::from(index) * (u128::MAX / u128::from(count) + 1) }
}

/// The last hash key of shard `index` of `count` equal shards.
pub fn shard_end(index: u32, count: u32) -> u128 {
    if index + 1 >= count { u128::MAX } else { shard_start(index + 1, count) - 1 }
}

/// The largest record payload, as in Kinesis.
pub const MAX_RECORD_BYTES: usize = 1 << 20;
/// The longest partition key, as in Kinesis.
pub const MAX_KEY_CHARS: usize = 256;
/// The longest source name (bytes).
pub const MAX_SOURCE_BYTES: usize = 256;

/// Who produced a record, as its producer named it: an agent's file, a
/// station, a device. Event-time watermarks are kept per source, so producers
/// that share a shard cannot make its time jump back and forth; a record a
/// stage writes keeps the source of the record it came from. Shared, because a
/// batch's records mostly come from one.
pub type Source = std::sync::Arc<str>;

/// Name/value attributes of a record (as a Kafka record's headers), in order.
/// weir writes its own under names that start with `weir-`: an aggregator's
/// results carry `weir-window-start`, `weir-window-end` (ms since the Unix
/// epoch) and `weir-revision`.
pub type Attributes = Vec<(String, String)>;

/// Most attributes one record carries.
pub const MAX_ATTRIBUTES: usize = 16;
/// Longest attribute name, in bytes.
pub const MAX_ATTRIBUTE_NAME_BYTES: usize = 64;
/// Longest attribute value, in bytes.
pub const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;

/// The limits every record keeps, whichever API put it.
pub fn check_record(record: &NewRecord) -> Result<(), StreamError> {
    if record.data.len() > MAX_RECORD_BYTES {
        return Err(StreamError::InvalidRecord(format!(
            "the record has {} bytes; the limit is {MAX_RECORD_BYTES}",
            record.data.len()
        )));
    }
    if record.key.chars().count() > MAX_KEY_CHARS {
        return Err(StreamError::InvalidRecord(format!("the partition key is longer than {MAX_KEY_CHARS} characters")));
    }
    if let Some(source) = &record.source
        && (source.is_empty() || source.len() > MAX_SOURCE_BYTES)
    {
        return Err(StreamError::InvalidRecord(format!(
            "the source has {} bytes; give 1 to {MAX_SOURCE_BYTES}, or none",
            source.len()
        )));
    }
    check_attributes(record)
}

/// The limits of a record's attributes; the disk store checks them on every
/// append, since its frames keep their lengths in a byte or two.
pub fn check_attributes(record: &NewRecord) -> Result<(), StreamError> {
    if record.attributes.len() > MAX_ATTRIBUTES {
        return Err(StreamError::InvalidRecord(format!(
            "the record has {} attributes; the limit is {MAX_ATTRIBUTES}",
            record.attributes.len()
        )));
    }
    for (name, value) in &record.attributes {
        if name.is_empty() || name.len() > MAX_ATTRIBUTE_NAME_BYTES || value.len() > MAX_ATTRIBUTE_VALUE_BYTES {
            return Err(StreamError::InvalidRecord(format!(
                "attribute `{name}` has a {}-byte name and a {}-byte value; give names of 1 to \
                 {MAX_ATTRIBUTE_NAME_BYTES} bytes and values of at most {MAX_ATTRIBUTE_VALUE_BYTES}",
                name.len(),
                value.len()
            )));
        }
    }
    Ok(())
}

/// A record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// Partition key.
    pub key: String,
    /// Event time, ms since the Unix epoch; the arrival time when absent.
    pub event_time_ms: Option<i64>,
    /// Payload.
    pub data: Bytes,
    /// Its producer, if it named one (see [`Source`]).
    pub source: Option<Source>,
    /// Routes the record to the shard owning this hash key instead of the
    /// partition key's MD5 (Kinesis's `ExplicitHashKey`).
    pub explicit_hash_key: Option<u128>,
    /// Its attributes (see [`Attributes`]).
    pub attributes: Attributes,
}

/// A record in a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The shard it is in.
    pub shard: u32,
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
    /// Its producer, if it named one (see [`Source`]).
    pub source: Option<Source>,
    /// Its attributes (see [`Attributes`]).
    pub attributes: Attributes,
}

/// Where an appended record went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The shard it went to.
    pub shard: u32,
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
    /// The store's servers cannot be reached now (a networked store during a
    /// leader election or an outage); nothing was changed that is not
    /// acknowledged. Retry with backoff.
    #[error("stream `{stream}`: the store cannot be reached now ({reason}); retry with backoff")]
    Unavailable {
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
    /// The stream has no such shard.
    #[error("stream `{stream}` has no shard `{shard}`")]
    UnknownShard {
        /// The stream.
        stream: String,
        /// The shard id asked for.
        shard: String,
    },
    /// A stream of that name exists already.
    #[error("a stream named `{0}` exists already")]
    AlreadyExists(String),
    /// A name breaks its rule ([`crate::names`]); nothing was touched.
    #[error("{0}")]
    InvalidName(String),
    /// Another host took the consumer's lease on the shard: this host no
    /// longer reads it, and its checkpoint was not written (the fence).
    #[error("stream `{stream}`: consumer `{consumer}` lost its lease on shard {shard} to another host")]
    LeaseLost {
        /// The stream.
        stream: String,
        /// The shard.
        shard: u32,
        /// The consumer.
        consumer: String,
    },
    /// A consumer's position could not be recorded: it stays where it was.
    #[error("stream `{stream}`: the checkpoint of consumer `{consumer}` could not be written: {reason}")]
    CheckpointFailed {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
        /// Why.
        reason: String,
    },
    /// A record breaks a limit every record keeps ([`check_record`]); it was not stored.
    #[error("{0}")]
    InvalidRecord(String),
    /// A resharding that cannot be done as asked (a closed shard, a hash key outside
    /// it, shards that are not adjacent); nothing changed.
    #[error("{0}")]
    InvalidReshard(String),
    /// A resharding would leave more open shards than a stream may have; nothing changed.
    #[error("{0}")]
    ShardLimit(String),
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

impl StreamError {
    /// Whether the write was refused for now (a write limit, a full stream):
    /// Kinesis's `ProvisionedThroughputExceededException`, to retry with backoff.
    pub fn is_throttle(&self) -> bool {
        matches!(self, StreamError::Throttled { .. } | StreamError::Full { .. })
    }
}

/// A change to a stream's shards, as Kinesis's `UpdateShardCount`, `SplitShard`
/// and `MergeShards` make it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reshard {
    /// Every open shard closes; this many children split the hash key space evenly.
    Uniform(u32),
    /// One open shard closes; two children take its hash keys below `at` and from `at` on.
    Split {
        /// The shard that closes.
        shard: u32,
        /// The first hash key of the second child.
        at: u128,
    },
    /// Two open shards with adjacent hash key ranges close; one child takes both ranges.
    Merge {
        /// The first parent.
        shard: u32,
        /// The other, adjacent parent.
        adjacent: u32,
    },
}

/// How a consumer's reading of a stream is shared among the hosts of one
/// store ([`StreamStore::claim`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Each shard goes to one host, and the shards are balanced among the
    /// live hosts: a consumer that keeps nothing but its positions (a
    /// transform). A host that stops renewing its leases loses them after the
    /// lease timeout.
    Shards,
    /// One host reads every shard, and keeps it until it lets go
    /// ([`StreamStore::release`]): a consumer whose state lives on that host's
    /// disk (windows, tables). It never moves by a timeout, since the state
    /// would not move with it.
    Whole,
    /// One host at a time reads every shard, and the store keeps the
    /// consumer's state with its positions ([`StreamStore::save_state`]): when
    /// that host stops renewing, another takes the consumer over after the
    /// lease timeout and goes on from the state saved last.
    Single,
}

/// What [`StreamStore::claim`] found, per shard in index order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Claim {
    /// Whether this host reads the shard now.
    pub held: Vec<bool>,
    /// Where the consumer stands on each shard, as the store read it with the
    /// leases (`None`: not known, or at the shard's start): a shard this host
    /// just took goes on from there, and one another host reads tells when a
    /// parent shard is finished.
    pub positions: Vec<Option<u64>>,
    /// Who reads each shard, when the store shares them (for the status).
    pub holders: Vec<Option<String>>,
    /// Whether this host took the shard in this round: it did not hold it as it
    /// last wrote it (newly, or back from another host that moved it meanwhile),
    /// so its reading goes on from `positions`, not from where it was.
    pub taken: Vec<bool>,
}

impl Claim {
    /// Every one of `shards` held by this host: a store with one host.
    pub fn all(shards: u32) -> Claim {
        let n = shards as usize;
        Claim { held: vec![true; n], positions: vec![None; n], holders: vec![None; n], taken: vec![false; n] }
    }
}

/// What a stream store offers the host. A stream has one or more shards,
/// each owning an equal slice of the 128-bit hash key space; positions are
/// per shard and mean "the next sequence to read".
pub trait StreamStore: Send + Sync {
    /// Appends records, each to the shard its key hashes to, keeping their
    /// order per shard. One result per record, in input order: a record past
    /// its shard's write limit or capacity fails alone.
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError>;
    /// How many shards the stream has had, open and closed (indices 0 ..).
    fn shard_count(&self, stream: &str) -> Result<u32, StreamError>;
    /// Each shard's parents and, if it was closed by resharding, where it ends.
    fn lineage(&self, stream: &str) -> Result<Vec<Lineage>, StreamError>;
    /// Closes shards and opens their children ([`Reshard`]). Consumers finish a
    /// parent before its children.
    fn reshard(&self, stream: &str, change: Reshard) -> Result<(), StreamError>;
    /// Up to `max` records of a shard from position `from`.
    fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError>;
    /// Blocks until at least `min` records of a shard are readable from `from`,
    /// or `timeout` passes; returns how many are readable.
    fn wait_for(
        &self,
        stream: &str,
        shard: u32,
        from: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<usize, StreamError>;
    /// A counter that grows with every append to any shard of the stream.
    fn changes(&self, stream: &str) -> Result<u64, StreamError>;
    /// Blocks until [`StreamStore::changes`] moves past `seen`, or `timeout` passes.
    fn wait_change(&self, stream: &str, seen: u64, timeout: Duration) -> Result<u64, StreamError>;
    /// Registers a consumer of a shard; returns the position to resume from.
    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError>;
    /// Records that `consumer` is done with everything of the shard before `next`.
    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError>;
    /// The position after a shard's newest record.
    fn end(&self, stream: &str, shard: u32) -> Result<u64, StreamError>;
    /// The position of a shard's first record that arrived at or after
    /// `arrival_ms` (the end if none did), found through the index, not by scanning.
    fn position_at_time(&self, stream: &str, shard: u32, arrival_ms: i64) -> Result<u64, StreamError>;
    /// Creates a stream; it survives restarts.
    fn create(&self, spec: StreamSettings) -> Result<(), StreamError>;
    /// Deletes a stream and its records.
    fn delete(&self, stream: &str) -> Result<(), StreamError>;
    /// The names of all streams, sorted.
    fn list(&self) -> Vec<String>;
    /// What a stream is and holds.
    fn info(&self, stream: &str) -> Result<StreamInfo, StreamError>;
    /// When the stream was created (what [`StreamStore::info`] says), without
    /// looking at its shards: cheap enough for every put.
    fn created_ms(&self, stream: &str) -> Result<i64, StreamError>;
    /// Changes how long records are kept.
    fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), StreamError>;
    /// Which of the stream's first `shards` shards `consumer` reads on this
    /// host, when several hosts share the store: leases taken, renewed and
    /// balanced as `sharing` says. Called by a stage's loop before it picks a
    /// shard, often (the store decides how often it asks its cluster); a
    /// checkpoint of a shard whose lease was lost fails as
    /// [`StreamError::LeaseLost`]. A store of one host holds every shard.
    fn claim(&self, _stream: &str, _consumer: &str, shards: u32, _sharing: Sharing) -> Result<Claim, StreamError> {
        Ok(Claim::all(shards))
    }
    /// Lets go of every lease this host holds for `consumer`, so another host
    /// takes them at once (a stage that drained). Nothing to do on one host.
    fn release(&self, _stream: &str, _consumer: &str) -> Result<(), StreamError> {
        Ok(())
    }
    /// Whether the store keeps consumers' state ([`StreamStore::save_state`]),
    /// so that a consumer with state can move between hosts ([`Sharing::Single`]).
    fn keeps_state(&self) -> bool {
        false
    }
    /// The state `consumer` saved last, if any.
    fn load_state(&self, _stream: &str, _consumer: &str) -> Result<Option<Vec<u8>>, StreamError> {
        Ok(None)
    }
    /// Replaces `consumer`'s saved state (its positions within it), all at once,
    /// under its [`Sharing::Single`] lease: [`StreamError::LeaseLost`] if another
    /// host took the consumer, and nothing is written.
    fn save_state(&self, stream: &str, consumer: &str, _state: &[u8]) -> Result<(), StreamError> {
        Err(StreamError::CheckpointFailed {
            stream: stream.to_owned(),
            consumer: consumer.to_owned(),
            reason: "this store keeps no consumer state".to_owned(),
        })
    }
    /// Whether the store itself stores a record once by the id a stream's
    /// `deduplicate` gives it ([`StreamStore::append_identified`]), for every
    /// host sharing it; if not, the host keeps an index of ids of its own.
    fn stores_once_by_id(&self) -> bool {
        false
    }
    /// Appends `records`, each with its id (`None`: it has none), in a store
    /// that [`StreamStore::stores_once_by_id`]: a record whose id the stream's
    /// shard was given within `window` is not stored again, and is answered
    /// with the first one's position and `true` (a duplicate).
    fn append_identified(
        &self,
        stream: &str,
        _records: Vec<NewRecord>,
        _ids: Vec<Option<std::sync::Arc<str>>>,
        _window: Duration,
    ) -> Result<Identified, StreamError> {
        Err(StreamError::Failed { stream: stream.to_owned(), reason: "this store does not store records by id".into() })
    }
}

/// A store wrapped around another, changing some of its calls (failing them on
/// command, storing a record once by its id): it implements the calls it changes,
/// and every other call of [`StreamStore`] goes to [`StoreLayer::inner`] as it is.
pub trait StoreLayer: Send + Sync {
    /// The store this one wraps.
    fn inner(&self) -> &dyn StreamStore;
    /// [`StreamStore::append`].
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        self.inner().append(stream, records)
    }
    /// [`StreamStore::read`].
    fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        self.inner().read(stream, shard, from, max)
    }
    /// [`StreamStore::register_consumer`].
    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError> {
        self.inner().register_consumer(stream, shard, consumer)
    }
    /// [`StreamStore::checkpoint`].
    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError> {
        self.inner().checkpoint(stream, shard, consumer, next)
    }
}

impl<L: StoreLayer> StreamStore for L {
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        StoreLayer::append(self, stream, records)
    }
    fn shard_count(&self, stream: &str) -> Result<u32, StreamError> {
        self.inner().shard_count(stream)
    }
    fn lineage(&self, stream: &str) -> Result<Vec<Lineage>, StreamError> {
        self.inner().lineage(stream)
    }
    fn reshard(&self, stream: &str, change: Reshard) -> Result<(), StreamError> {
        self.inner().reshard(stream, change)
    }
    fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        StoreLayer::read(self, stream, shard, from, max)
    }
    fn wait_for(
        &self,
        stream: &str,
        shard: u32,
        from: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<usize, StreamError> {
        self.inner().wait_for(stream, shard, from, min, timeout)
    }
    fn changes(&self, stream: &str) -> Result<u64, StreamError> {
        self.inner().changes(stream)
    }
    fn wait_change(&self, stream: &str, seen: u64, timeout: Duration) -> Result<u64, StreamError> {
        self.inner().wait_change(stream, seen, timeout)
    }
    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError> {
        StoreLayer::register_consumer(self, stream, shard, consumer)
    }
    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError> {
        StoreLayer::checkpoint(self, stream, shard, consumer, next)
    }
    fn end(&self, stream: &str, shard: u32) -> Result<u64, StreamError> {
        self.inner().end(stream, shard)
    }
    fn position_at_time(&self, stream: &str, shard: u32, arrival_ms: i64) -> Result<u64, StreamError> {
        self.inner().position_at_time(stream, shard, arrival_ms)
    }
    fn create(&self, spec: StreamSettings) -> Result<(), StreamError> {
        self.inner().create(spec)
    }
    fn delete(&self, stream: &str) -> Result<(), StreamError> {
        self.inner().delete(stream)
    }
    fn list(&self) -> Vec<String> {
        self.inner().list()
    }
    fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        self.inner().info(stream)
    }
    fn created_ms(&self, stream: &str) -> Result<i64, StreamError> {
        self.inner().created_ms(stream)
    }
    fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), StreamError> {
        self.inner().set_retention(stream, retention)
    }
    fn claim(&self, stream: &str, consumer: &str, shards: u32, sharing: Sharing) -> Result<Claim, StreamError> {
        self.inner().claim(stream, consumer, shards, sharing)
    }
    fn release(&self, stream: &str, consumer: &str) -> Result<(), StreamError> {
        self.inner().release(stream, consumer)
    }
    fn keeps_state(&self) -> bool {
        self.inner().keeps_state()
    }
    fn load_state(&self, stream: &str, consumer: &str) -> Result<Option<Vec<u8>>, StreamError> {
        self.inner().load_state(stream, consumer)
    }
    fn save_state(&self, stream: &str, consumer: &str, state: &[u8]) -> Result<(), StreamError> {
        self.inner().save_state(stream, consumer, state)
    }
    fn stores_once_by_id(&self) -> bool {
        self.inner().stores_once_by_id()
    }
    fn append_identified(
        &self,
        stream: &str,
        records: Vec<NewRecord>,
        ids: Vec<Option<std::sync::Arc<str>>>,
        window: Duration,
    ) -> Result<Identified, StreamError> {
        self.inner().append_identified(stream, records, ids, window)
    }
}

/// What [`StreamStore::append_identified`] answers per record: where it is,
/// and whether it was there already (a duplicate).
pub type Identified = Vec<Result<(Appended, bool), StreamError>>;

/// Settings of a stream created at run time (through the Kinesis API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSettings {
    /// Stream name.
    pub name: String,
    /// How long records are kept.
    pub retention: Duration,
    /// Number of shards.
    pub shards: u32,
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
    /// Its shards, in hash key order.
    pub shards: Vec<ShardInfo>,
}

impl StreamInfo {
    /// Records held in all shards (ends minus oldest).
    pub fn records(&self) -> u64 {
        self.shards.iter().map(|s| s.end - s.oldest).sum()
    }

    /// Records ever appended to all shards.
    pub fn appended(&self) -> u64 {
        self.shards.iter().map(|s| s.end).sum()
    }
}

/// Whether every parent of `shard` (by resharding) has been read to its end,
/// given each shard's position: a child is read only then, so that a parent's
/// records all come before its children's and order per key holds.
pub fn parents_finished(lineage: &[Lineage], positions: &[u64], shard: usize) -> bool {
    lineage[shard].parents.iter().all(|&p| shard_finished(lineage, positions, p as usize))
}

/// Whether `shard` was closed by resharding and has been read to its end.
pub fn shard_finished(lineage: &[Lineage], positions: &[u64], shard: usize) -> bool {
    lineage[shard].closed_at.is_some_and(|end| positions.get(shard).is_some_and(|&p| p >= end))
}

/// Where a shard sits in its stream's lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    /// The shards it was split or merged from.
    pub parents: Vec<u32>,
    /// If resharding closed it: the position after its last record.
    pub closed_at: Option<u64>,
}

/// One shard of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    /// Its index; `shard_id(index)` is its Kinesis id.
    pub index: u32,
    /// First hash key it owns.
    pub hash_start: u128,
    /// Last hash key it owns.
    pub hash_end: u128,
    /// Sequence number of the oldest record kept.
    pub oldest: u64,
    /// Position after the newest record.
    pub end: u64,
    /// Consumers and their checkpoints.
    pub consumers: BTreeMap<String, u64>,
    /// The shards it was split or merged from.
    pub parents: Vec<u32>,
    /// If resharding closed it: the position after its last record.
    pub closed_at: Option<u64>,
    /// When it opened (with its stream, or by resharding), ms since the Unix epoch.
    pub opened_ms: i64,
    /// When resharding closed it.
    pub closed_ms: Option<i64>,
}
