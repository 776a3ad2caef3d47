//! One shard's log: its segments and the index of its frames, appends with
//! their fsync policy (group commit), retention by age and size, and its
//! consumers' checkpoints.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::names::{self, NameKind};

use crate::{Clock, NewRecord, StreamError};

use super::failure::*;
use super::frame::*;
use super::limit::*;
use super::recovery::*;
use super::settings::*;

/// A group commit stops gathering writes after this long without a new one.
pub(super) const GROUP_QUIET: Duration = Duration::from_micros(200);

pub(super) struct Segment {
    pub(super) base: u64,
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    pub(super) len: u64,
    /// Arrival time of its newest record.
    pub(super) newest_ms: i64,
}

pub(super) struct State {
    pub(super) segments: Vec<Segment>,
    /// Segments removed by retention; `FrameRef::segment - dropped_segments` indexes `segments`.
    pub(super) dropped_segments: usize,
    pub(super) frames: Vec<FrameRef>,
    /// Next sequence number to assign.
    pub(super) next: u64,
    /// Every sequence below this is synced and readable.
    pub(super) durable: u64,
    pub(super) syncing: bool,
    pub(super) failed: Option<String>,
    pub(super) consumers: BTreeMap<String, u64>,
    pub(super) bucket: Option<Bucket>,
    /// The buffer the last frame was encoded in: reused, so a put neither
    /// allocates nor faults in a fresh one (kept only up to [`KEPT_FRAME_BUFFER`]).
    pub(super) frame_buffer: Vec<u8>,
}

/// The largest frame buffer a shard keeps between puts: a 500-record put of
/// small records fits, and a thousand shards hold at most 256 MiB of them.
const KEPT_FRAME_BUFFER: usize = 256 << 10;

pub(super) struct Shard {
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) capacity: usize,
    pub(super) fsync: FsyncPolicy,
    /// Milliseconds; changeable through the API.
    pub(super) retention_ms: AtomicU64,
    pub(super) max_bytes: Option<u64>,
    pub(super) segment_bytes: u64,
    pub(super) syncer: Arc<dyn Syncer>,
    pub(super) clock: Clock,
    pub(super) state: Mutex<State>,
    /// Signalled when what readers and waiting writers see changes: records
    /// became durable, a sync ended, the shard failed or was resharded.
    pub(super) changed: Condvar,
    /// Signalled when a put wrote its frame: only a gathering group commit
    /// waits on it (were it `changed`, every write would wake every put
    /// waiting for its sync, only for them to sleep again).
    pub(super) written: Condvar,
    /// Puts that began, and puts that wrote their frame (or gave up): a group
    /// commit waits for the puts under way when it was due, since writers
    /// already waiting on the sync add nothing, and later ones take the next.
    pub(super) started: AtomicU64,
    pub(super) finished: AtomicU64,
}

/// Counts a put as finished when it is dropped.
pub(super) struct UnderWay<'a>(&'a AtomicU64);

impl Drop for UnderWay<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// The file name of a consumer's checkpoint in a shard's `consumers/` folder.
pub(super) fn checkpoint_file(consumer: &str) -> Result<PathBuf, StreamError> {
    names::check(NameKind::Consumer, "consumer name", consumer).map_err(|e| StreamError::InvalidName(e.to_string()))?;
    names::child_path(Path::new(""), &format!("{consumer}.checkpoint"))
        .map_err(|e| StreamError::InvalidName(e.to_string()))
}

impl Shard {
    pub(super) fn open(
        dir: &Path,
        spec: &DiskStreamSpec,
        syncer: Arc<dyn Syncer>,
        clock: Clock,
    ) -> Result<Shard, StreamError> {
        let name = spec.name.as_str();
        std::fs::create_dir_all(dir.join("consumers")).map_err(|e| io_failed(name, "cannot create its folder", &e))?;
        let mut bases: Vec<u64> = std::fs::read_dir(dir)
            .map_err(|e| io_failed(name, "cannot list its folder", &e))?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".log")?.parse().ok())
            .collect();
        bases.sort_unstable();
        if bases.is_empty() {
            bases.push(0);
        }
        let mut state = State {
            segments: Vec::new(),
            dropped_segments: 0,
            frames: Vec::new(),
            next: bases[0],
            durable: 0,
            syncing: false,
            failed: None,
            consumers: BTreeMap::new(),
            bucket: spec.write_limit.map(Bucket::new),
            frame_buffer: Vec::new(),
        };
        let last = bases.len() - 1;
        for (i, base) in bases.into_iter().enumerate() {
            let path = dir.join(segment_name(base));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| io_failed(name, &format!("cannot open {}", path.display()), &e))?;
            if base != state.next {
                return Err(corrupt(&path, 0, format!("segment starts at sequence {base}, expected {}", state.next)));
            }
            let (len, newest_ms) = recover_segment(&path, &file, i == last, i, &mut state.next, &mut state.frames)?;
            state.segments.push(Segment { base, path, file: Arc::new(file), len, newest_ms });
        }
        state.durable = state.next;
        for entry in
            std::fs::read_dir(dir.join("consumers")).map_err(|e| io_failed(name, "cannot list consumers", &e))?
        {
            let Ok(entry) = entry else { continue };
            let path = entry.path();
            let (Some(consumer), Ok(text)) =
                (path.file_stem().and_then(|s| s.to_str()).map(str::to_owned), std::fs::read_to_string(&path))
            else {
                continue;
            };
            if path.extension().is_some_and(|e| e == "checkpoint")
                && let Ok(position) = text.trim().parse::<u64>()
            {
                state.consumers.insert(consumer, position.min(state.next));
            }
        }
        let shard = Shard {
            name: name.to_owned(),
            dir: dir.to_owned(),
            capacity: spec.capacity,
            fsync: spec.fsync,
            retention_ms: AtomicU64::new(spec.retention.as_millis() as u64),
            max_bytes: spec.max_bytes,
            segment_bytes: spec.segment_bytes.max(1),
            syncer,
            clock,
            state: Mutex::new(state),
            changed: Condvar::new(),
            written: Condvar::new(),
            started: AtomicU64::new(0),
            finished: AtomicU64::new(0),
        };
        shard.apply_retention(&mut shard.lock(), (shard.clock)());
        Ok(shard)
    }

    /// Drops whole segments, oldest first, that are past the retention period
    /// or beyond the size cap. The segment being written is always kept.
    pub(super) fn apply_retention(&self, st: &mut State, now_ms: i64) {
        let cutoff = now_ms.saturating_sub(self.retention_ms.load(Ordering::Relaxed) as i64);
        let mut total: u64 = st.segments.iter().map(|s| s.len).sum();
        let mut drop_count = 0;
        for segment in &st.segments[..st.segments.len().saturating_sub(1)] {
            let too_old = segment.newest_ms < cutoff;
            let too_big = self.max_bytes.is_some_and(|max| total > max);
            if !too_old && !too_big {
                break;
            }
            total -= segment.len;
            drop_count += 1;
        }
        if drop_count == 0 {
            return;
        }
        for segment in st.segments.drain(..drop_count) {
            if let Err(e) = std::fs::remove_file(&segment.path) {
                tracing::warn!(file = %segment.path.display(), error = %e, "cannot remove an expired segment");
            }
        }
        st.dropped_segments += drop_count;
        let oldest = st.segments.first().map_or(st.next, |s| s.base);
        let frames_gone = st.frames.partition_point(|f| f.first < oldest);
        st.frames.drain(..frames_gone);
        tracing::info!(stream = %self.name, segments = drop_count, oldest, "retention dropped old segments");
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves the state consistent (every update is a
        // single assignment or push), so keep going rather than fail forever.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn oldest(&self, st: &State) -> u64 {
        st.segments.first().map_or(0, |s| s.base)
    }

    /// Writes a frame to the active segment, starting a new segment when it is full.
    pub(super) fn write_frame(
        &self,
        st: &mut State,
        frame: &[u8],
        first: u64,
        count: u32,
        arrival_ms: i64,
    ) -> Result<(), StreamError> {
        let roll = st.segments.last().is_some_and(|s| s.len > 0 && s.len + frame.len() as u64 > self.segment_bytes);
        if roll {
            // The old segment's last writes must be durable before we move on.
            if let Some(old) = st.segments.last() {
                self.syncer.sync(&old.file).map_err(|e| self.fail(st, "fsync failed", &e))?;
            }
            let path = self.dir.join(segment_name(first));
            let file = OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .map_err(|e| self.fail(st, "cannot create a segment", &e))?;
            st.segments.push(Segment { base: first, path, file: Arc::new(file), len: 0, newest_ms: arrival_ms });
        }
        let segment_index = st.dropped_segments + st.segments.len() - 1;
        let Some(segment) = st.segments.last_mut() else {
            return Err(StreamError::Failed { stream: self.name.clone(), reason: "no segment".into() });
        };
        let offset = segment.len;
        if let Err(e) = (&*segment.file).write_all(frame) {
            return Err(self.fail(st, "write failed", &e));
        }
        segment.len += frame.len() as u64;
        segment.newest_ms = segment.newest_ms.max(arrival_ms);
        st.frames.push(FrameRef { first, count, segment: segment_index, offset, len: frame.len() as u32, arrival_ms });
        Ok(())
    }

    /// Records a storage failure: no write is acknowledged after it.
    pub(super) fn fail(&self, st: &mut State, what: &str, e: &std::io::Error) -> StreamError {
        let err = io_failed(&self.name, what, e);
        tracing::error!(stream = %self.name, error = %err, "stream stops accepting writes");
        if let StreamError::Failed { reason, .. } = &err {
            st.failed = Some(reason.clone());
        }
        self.changed.notify_all();
        err
    }

    /// Waits until everything up to `end` is durable, leading an fsync when
    /// nobody else is (group commit: one fsync covers every write before it).
    pub(super) fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, end: u64) -> Result<(), StreamError> {
        loop {
            if let Some(reason) = &st.failed {
                return Err(StreamError::Failed { stream: self.name.clone(), reason: reason.clone() });
            }
            if st.durable >= end {
                return Ok(());
            }
            if st.syncing {
                st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.syncing = true;
            if let FsyncPolicy::Group(interval) = self.fsync {
                st = self.gather(st, interval);
            }
            let target = st.next;
            let file = st.segments.last().map(|s| s.file.clone());
            drop(st);
            let result = match &file {
                Some(f) => self.syncer.sync(f),
                None => Ok(()),
            };
            st = self.lock();
            st.syncing = false;
            match result {
                Ok(()) => st.durable = st.durable.max(target),
                Err(e) => {
                    self.fail(&mut st, "fsync failed", &e);
                }
            }
            self.changed.notify_all();
        }
    }

    /// Group commit: before syncing, wait for the puts already under way to
    /// write (each quiet period of [`GROUP_QUIET`] ends it), for at most
    /// `interval`. Puts that begin meanwhile wait for the next sync: gathering
    /// them too would hold this one back as long as puts keep coming. With no
    /// other put under way, sync at once: waiting could only add latency.
    pub(super) fn gather<'a>(&'a self, mut st: MutexGuard<'a, State>, interval: Duration) -> MutexGuard<'a, State> {
        let deadline = Instant::now() + interval;
        let under_way = self.started.load(Ordering::SeqCst);
        loop {
            let now = Instant::now();
            if now >= deadline || self.finished.load(Ordering::SeqCst) >= under_way {
                return st;
            }
            let seen = st.next;
            let (guard, timeout) =
                self.written.wait_timeout(st, GROUP_QUIET.min(deadline - now)).unwrap_or_else(|p| p.into_inner());
            st = guard;
            if timeout.timed_out() && st.next == seen {
                return st;
            }
        }
    }

    /// Writes a consumer's checkpoint (temporary file, then rename). Not synced:
    /// a checkpoint lost in a crash only means re-reading (at-least-once), but
    /// one that cannot be written is an error its stage must see.
    pub(super) fn persist_checkpoint(&self, consumer: &str, file: &Path, next: u64) -> Result<(), StreamError> {
        let path = self.dir.join("consumers").join(file);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{next}\n")).and_then(|()| std::fs::rename(&tmp, &path)).map_err(|e| {
            StreamError::CheckpointFailed {
                stream: self.name.clone(),
                consumer: consumer.to_owned(),
                reason: format!("{}: {e}", path.display()),
            }
        })
    }
}

impl Shard {
    /// Appends records to this shard; with a write limit only a prefix may fit.
    /// Returns the sequence numbers of the records appended.
    pub(super) fn append(&self, records: Vec<NewRecord>) -> Result<Vec<u64>, StreamError> {
        let stream = self.name.as_str();
        // A frame keeps attribute lengths in a byte or two: longer ones never reach it.
        for record in records.iter().filter(|r| !r.attributes.is_empty()) {
            crate::check_attributes(record)?;
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        let under_way = UnderWay(&self.finished);
        let mut st = self.lock();
        if let Some(reason) = &st.failed {
            return Err(StreamError::Failed { stream: stream.to_owned(), reason: reason.clone() });
        }
        let consumed = st.consumers.values().copied().min().unwrap_or(self.oldest(&st));
        if (st.next - consumed) as usize + records.len() > self.capacity {
            return Err(StreamError::Full { stream: stream.to_owned(), capacity: self.capacity });
        }
        let mut records = records;
        if let Some(bucket) = &mut st.bucket {
            let admitted = bucket.admit(&records);
            if admitted == 0 && !records.is_empty() {
                let l = bucket.limit;
                let limit = format!("{} records and {} bytes per second", l.records_per_second, l.bytes_per_second);
                return Err(StreamError::Throttled { stream: stream.to_owned(), limit });
            }
            records.truncate(admitted);
        }
        if records.is_empty() {
            return Ok(Vec::new());
        }
        let first = st.next;
        // Arrival times never go backwards along the log, so the time index can
        // be searched even if the wall clock steps back.
        let arrival_ms = (self.clock)().max(st.frames.last().map_or(i64::MIN, |f| f.arrival_ms));
        let mut frame = std::mem::take(&mut st.frame_buffer);
        encode_frame(&mut frame, first, arrival_ms, &records);
        self.write_frame(&mut st, &frame, first, records.len() as u32, arrival_ms)?;
        if frame.capacity() <= KEPT_FRAME_BUFFER {
            st.frame_buffer = frame;
        }
        self.apply_retention(&mut st, arrival_ms);
        st.next += records.len() as u64;
        let end = st.next;
        drop(under_way);
        match self.fsync {
            FsyncPolicy::Never => {
                st.durable = end;
                self.changed.notify_all();
            }
            FsyncPolicy::Always | FsyncPolicy::Group(_) => {
                // Wakes a group commit that is gathering writes.
                self.written.notify_all();
                self.wait_durable(st, end)?;
            }
        }
        Ok((first..end).collect())
    }
}
