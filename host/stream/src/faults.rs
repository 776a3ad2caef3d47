//! A stream store that fails on command: it wraps any [`StreamStore`] and
//! makes its next N appends, checkpoints, consumer registrations or reads
//! fail, as a full disk or a lost connection would. Tests run the host on it
//! to check what weir does when storage fails; every backend gets the same
//! tests by being wrapped. It can also make checkpoints slow, some more than
//! others, and keeps the order they reached the store in, so that a test
//! sees whether concurrent writers ever put an older position last.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{Appended, NewRecord, StoreLayer, StoredRecord, StreamError, StreamStore};

/// See the module doc.
pub struct FaultyStore {
    inner: Arc<dyn StreamStore>,
    appends: AtomicU32,
    checkpoints: AtomicU32,
    registrations: AtomicU32,
    reads: AtomicU32,
    unavailable_reads: AtomicU32,
    /// Microseconds every other checkpoint waits before it is written.
    checkpoint_jitter_us: AtomicU64,
    checkpoint_calls: AtomicU64,
    /// Checkpoints in the order they were written: (stream, shard, consumer, position).
    written: Mutex<Vec<(String, u32, String, u64)>>,
}

impl FaultyStore {
    /// `inner`, failing nothing until told to.
    pub fn new(inner: Arc<dyn StreamStore>) -> Arc<FaultyStore> {
        Arc::new(FaultyStore {
            inner,
            appends: AtomicU32::new(0),
            checkpoints: AtomicU32::new(0),
            registrations: AtomicU32::new(0),
            reads: AtomicU32::new(0),
            unavailable_reads: AtomicU32::new(0),
            checkpoint_jitter_us: AtomicU64::new(0),
            checkpoint_calls: AtomicU64::new(0),
            written: Mutex::default(),
        })
    }

    /// Every other checkpoint waits `delay` before it is written, so that
    /// checkpoints written at once from several threads may reach the store
    /// in another order than they were started in.
    pub fn jitter_checkpoints(&self, delay: Duration) {
        self.checkpoint_jitter_us.store(delay.as_micros() as u64, Ordering::SeqCst);
    }

    /// The checkpoints written so far, in the order they were written:
    /// (stream, shard, consumer, position).
    pub fn checkpoints_written(&self) -> Vec<(String, u32, String, u64)> {
        self.written.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next `n` appends fail.
    pub fn fail_appends(&self, n: u32) {
        self.appends.store(n, Ordering::SeqCst);
    }

    /// The next `n` checkpoints fail.
    pub fn fail_checkpoints(&self, n: u32) {
        self.checkpoints.store(n, Ordering::SeqCst);
    }

    /// The next `n` consumer registrations fail.
    pub fn fail_registrations(&self, n: u32) {
        self.registrations.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads fail.
    pub fn fail_reads(&self, n: u32) {
        self.reads.store(n, Ordering::SeqCst);
    }

    /// The next `n` reads answer that the store cannot be reached now, as a
    /// networked store does while its servers elect a leader.
    pub fn unavailable_reads(&self, n: u32) {
        self.unavailable_reads.store(n, Ordering::SeqCst);
    }

    /// Whether the next call counted by `counter` fails (and counts it).
    fn fails(counter: &AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    fn injected(stream: &str) -> StreamError {
        StreamError::Failed { stream: stream.to_owned(), reason: "an injected storage failure".into() }
    }
}

impl StoreLayer for FaultyStore {
    fn inner(&self) -> &dyn StreamStore {
        self.inner.as_ref()
    }
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        if Self::fails(&self.appends) {
            return Err(Self::injected(stream));
        }
        self.inner.append(stream, records)
    }
    fn read(&self, stream: &str, shard: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        if Self::fails(&self.reads) {
            return Err(Self::injected(stream));
        }
        if Self::fails(&self.unavailable_reads) {
            return Err(StreamError::Unavailable { stream: stream.to_owned(), reason: "an injected election".into() });
        }
        self.inner.read(stream, shard, from, max)
    }
    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError> {
        if Self::fails(&self.registrations) {
            return Err(Self::injected(stream));
        }
        self.inner.register_consumer(stream, shard, consumer)
    }
    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError> {
        if Self::fails(&self.checkpoints) {
            return Err(StreamError::CheckpointFailed {
                stream: stream.to_owned(),
                consumer: consumer.to_owned(),
                reason: "an injected storage failure".into(),
            });
        }
        let jitter = self.checkpoint_jitter_us.load(Ordering::SeqCst);
        if jitter > 0 && self.checkpoint_calls.fetch_add(1, Ordering::SeqCst).is_multiple_of(2) {
            std::thread::sleep(Duration::from_micros(jitter));
        }
        // Written under the log's lock: the log's order is the order of the writes.
        let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
        self.inner.checkpoint(stream, shard, consumer, next)?;
        written.push((stream.to_owned(), shard, consumer.to_owned(), next));
        Ok(())
    }
}
