//! Streams: ordered records that stages read at their own pace, each stage
//! with its own checkpoint. [`StreamStore`] is the interface the durable store
//! will implement; [`MemoryStreams`] keeps records in memory, bounded by a
//! capacity per stream, and drops a record once every consumer has passed it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;

/// The one shard of an in-memory stream, named like Kinesis shards.
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
    /// Appends records in order; all or none are accepted.
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
}

struct StreamState {
    /// Sequence of `records[0]`.
    base: u64,
    records: VecDeque<StoredRecord>,
    capacity: usize,
    consumers: BTreeMap<String, u64>,
}

struct Shard {
    state: Mutex<StreamState>,
    grew: Condvar,
}

/// In-memory streams.
pub struct MemoryStreams {
    streams: HashMap<String, Shard>,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl MemoryStreams {
    /// Streams of the given names and capacities.
    pub fn new<'a>(streams: impl IntoIterator<Item = (&'a str, usize)>) -> Self {
        let streams = streams
            .into_iter()
            .map(|(name, capacity)| {
                let state = StreamState { base: 0, records: VecDeque::new(), capacity, consumers: BTreeMap::new() };
                (name.to_owned(), Shard { state: Mutex::new(state), grew: Condvar::new() })
            })
            .collect();
        Self { streams }
    }

    fn shard(&self, stream: &str) -> Result<&Shard, StreamError> {
        self.streams.get(stream).ok_or_else(|| StreamError::UnknownStream(stream.to_owned()))
    }
}

fn lock(shard: &Shard) -> std::sync::MutexGuard<'_, StreamState> {
    // A panic while holding the lock cannot leave the deque half-updated, so
    // the state is still consistent: keep serving rather than fail forever.
    shard.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamStore for MemoryStreams {
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Appended>, StreamError> {
        let shard = self.shard(stream)?;
        let mut s = lock(shard);
        if s.records.len() + records.len() > s.capacity {
            return Err(StreamError::Full { stream: stream.to_owned(), capacity: s.capacity });
        }
        let arrival_ms = now_ms();
        let mut out = Vec::with_capacity(records.len());
        for r in records {
            let sequence = s.base + s.records.len() as u64;
            s.records.push_back(StoredRecord {
                sequence,
                key: r.key,
                event_time_ms: r.event_time_ms.unwrap_or(arrival_ms),
                arrival_ms,
                data: r.data,
            });
            out.push(Appended { shard_id: SHARD_ID, sequence });
        }
        drop(s);
        shard.grew.notify_all();
        Ok(out)
    }

    fn read(&self, stream: &str, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        let s = lock(self.shard(stream)?);
        if from < s.base {
            return Err(StreamError::Trimmed { stream: stream.to_owned(), sequence: from, oldest: s.base });
        }
        let start = (from - s.base) as usize;
        Ok(s.records.iter().skip(start).take(max).cloned().collect())
    }

    fn wait_for(&self, stream: &str, from: u64, min: usize, timeout: Duration) -> Result<usize, StreamError> {
        let shard = self.shard(stream)?;
        let deadline = Instant::now() + timeout;
        let mut s = lock(shard);
        loop {
            let end = s.base + s.records.len() as u64;
            let available = end.saturating_sub(from) as usize;
            let now = Instant::now();
            if available >= min || now >= deadline {
                return Ok(available);
            }
            s = shard
                .grew
                .wait_timeout(s, deadline - now)
                .map(|(guard, _)| guard)
                .unwrap_or_else(|poisoned| poisoned.into_inner().0);
        }
    }

    fn register_consumer(&self, stream: &str, consumer: &str) -> Result<u64, StreamError> {
        let mut s = lock(self.shard(stream)?);
        let base = s.base;
        Ok(*s.consumers.entry(consumer.to_owned()).or_insert(base))
    }

    fn checkpoint(&self, stream: &str, consumer: &str, next: u64) -> Result<(), StreamError> {
        let mut s = lock(self.shard(stream)?);
        s.consumers.insert(consumer.to_owned(), next);
        // Everything every consumer has passed can go.
        let done = s.consumers.values().copied().min().unwrap_or(s.base);
        while s.base < done && s.records.pop_front().is_some() {
            s.base += 1;
        }
        Ok(())
    }

    fn end(&self, stream: &str) -> Result<u64, StreamError> {
        let s = lock(self.shard(stream)?);
        Ok(s.base + s.records.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(data: &str) -> NewRecord {
        NewRecord { key: "k".into(), event_time_ms: Some(7), data: Bytes::copy_from_slice(data.as_bytes()) }
    }

    #[test]
    fn records_keep_order_and_are_trimmed_only_after_every_consumer_passed() {
        let s = MemoryStreams::new([("s", 10)]);
        assert_eq!(s.register_consumer("s", "a"), Ok(0));
        assert_eq!(s.register_consumer("s", "b"), Ok(0));
        let seqs: Vec<u64> =
            s.append("s", vec![rec("1"), rec("2"), rec("3")]).expect("append").iter().map(|a| a.sequence).collect();
        assert_eq!(seqs, vec![0, 1, 2]);
        s.checkpoint("s", "a", 3).expect("checkpoint");
        assert_eq!(s.read("s", 0, 10).expect("read").len(), 3, "b has not read yet");
        s.checkpoint("s", "b", 2).expect("checkpoint");
        assert!(matches!(s.read("s", 0, 10), Err(StreamError::Trimmed { oldest: 2, .. })));
        let rest = s.read("s", 2, 10).expect("read");
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].data, Bytes::from_static(b"3"));
        assert_eq!(rest[0].event_time_ms, 7);
    }

    #[test]
    fn a_full_stream_refuses_the_whole_put() {
        let s = MemoryStreams::new([("s", 2)]);
        s.register_consumer("s", "a").expect("register");
        s.append("s", vec![rec("1")]).expect("append");
        let err = s.append("s", vec![rec("2"), rec("3")]).expect_err("full");
        assert!(err.to_string().contains("full"), "{err}");
        assert_eq!(s.end("s"), Ok(1));
    }

    #[test]
    fn wait_for_wakes_on_append() {
        let s = std::sync::Arc::new(MemoryStreams::new([("s", 10)]));
        let writer = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.append("s", vec![rec("x")]).expect("append");
        });
        assert_eq!(s.wait_for("s", 0, 1, Duration::from_secs(5)), Ok(1));
        t.join().expect("join");
        assert_eq!(s.wait_for("nope", 0, 1, Duration::ZERO), Err(StreamError::UnknownStream("nope".into())));
    }
}
