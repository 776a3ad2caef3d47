//! Durable streams on local disk, with no setup: per shard an append-only log
//! split into segment files. Each append is one frame
//! `magic "WR" | payload length u32 | CRC32C(payload) u32 | payload`, where the
//! payload holds the first sequence number, the record count, the arrival time
//! and the records. A put is acknowledged only after its fsync policy's sync
//! returned, and only then can consumers read it. On open, a torn tail (a
//! frame cut short or damaged with nothing valid after it) is truncated; a
//! damaged frame followed by valid ones is refused with the file and offset.
//! A failed fsync stops writes to that stream (fail-stop).

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::names::{self, NameKind};

use super::{
    Appended, Clock, Lineage, NewRecord, ShardInfo, StoredRecord, StreamError, StreamInfo, StreamSettings, StreamStore,
    hash_key, now_ms, shard_end, shard_id, shard_start, system_clock,
};

const MAGIC: [u8; 2] = *b"WR";
/// Magic, payload length, payload checksum.
const HEADER: usize = 2 + 4 + 4;
/// First sequence, record count, arrival time.
const PAYLOAD_HEADER: usize = 8 + 4 + 8;
/// A frame larger than this is damage, not data (a put holds at most 500 records of 1 MiB).
const MAX_PAYLOAD: u32 = 600 << 20;
/// A group commit stops gathering writes after this long without a new one.
const GROUP_QUIET: Duration = Duration::from_micros(200);
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

/// A token bucket holding up to one second of the limit.
#[derive(Debug)]
struct Bucket {
    limit: WriteLimit,
    bytes: f64,
    records: f64,
    refilled: Instant,
}

impl Bucket {
    fn new(limit: WriteLimit) -> Self {
        Self {
            limit,
            bytes: limit.bytes_per_second as f64,
            records: limit.records_per_second as f64,
            refilled: Instant::now(),
        }
    }

    /// How many of `records` (a prefix) fit now; takes their tokens.
    fn admit(&mut self, records: &[NewRecord]) -> usize {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        self.bytes =
            (self.bytes + elapsed * self.limit.bytes_per_second as f64).min(self.limit.bytes_per_second as f64);
        self.records =
            (self.records + elapsed * self.limit.records_per_second as f64).min(self.limit.records_per_second as f64);
        let mut admitted = 0;
        for r in records {
            let size = (r.key.len() + r.data.len()) as f64;
            if self.records < 1.0 || self.bytes < size {
                break;
            }
            self.records -= 1.0;
            self.bytes -= size;
            admitted += 1;
        }
        admitted
    }
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

struct Segment {
    base: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Arrival time of its newest record.
    newest_ms: i64,
}

#[derive(Clone, Copy)]
struct FrameRef {
    first: u64,
    count: u32,
    /// Which segment, counted from the first one ever (see `State::dropped_segments`).
    segment: usize,
    offset: u64,
    len: u32,
    /// When its records arrived (never decreasing along the log).
    arrival_ms: i64,
}

struct State {
    segments: Vec<Segment>,
    /// Segments removed by retention; `FrameRef::segment - dropped_segments` indexes `segments`.
    dropped_segments: usize,
    frames: Vec<FrameRef>,
    /// Next sequence number to assign.
    next: u64,
    /// Every sequence below this is synced and readable.
    durable: u64,
    syncing: bool,
    failed: Option<String>,
    consumers: BTreeMap<String, u64>,
    bucket: Option<Bucket>,
}

struct Shard {
    name: String,
    dir: PathBuf,
    capacity: usize,
    fsync: FsyncPolicy,
    /// Milliseconds; changeable through the API.
    retention_ms: AtomicU64,
    max_bytes: Option<u64>,
    segment_bytes: u64,
    syncer: Arc<dyn Syncer>,
    clock: Clock,
    state: Mutex<State>,
    changed: Condvar,
    /// Puts that have not written their frame yet: a group commit waits for
    /// them only, since writers already waiting on the sync add nothing.
    arriving: AtomicUsize,
}

/// Counts a put as arriving until it is dropped.
struct Arriving<'a>(&'a AtomicUsize);

impl Drop for Arriving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Durable streams under one folder: `<root>/<stream>/<shard id>/`.
pub struct DiskStreams {
    root: PathBuf,
    syncer: Arc<dyn Syncer>,
    clock: Clock,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
}

/// One stream: its shards and their lineage. Open shards split the hash key
/// space; resharding closes them and opens children whose parents they name.
struct Stream {
    dir: PathBuf,
    created_ms: i64,
    spec: DiskStreamSpec,
    syncer: Arc<dyn Syncer>,
    clock: Clock,
    /// Appends hold it shared (routing must not change under them); resharding holds it exclusively.
    topology: RwLock<Vec<ShardEntry>>,
    /// Grows with every append to any shard; stages wait on it.
    generation: Mutex<u64>,
    changed: Condvar,
}

/// One shard of a stream and where it sits in the lineage.
#[derive(Clone)]
struct ShardEntry {
    log: Arc<Shard>,
    hash_start: u128,
    hash_end: u128,
    parents: Vec<u32>,
    /// Set when resharding closed it: the position after its last record.
    closed_at: Option<u64>,
}

/// The lineage of a stream's shards, kept beside them: one line per shard,
/// `index start end closed_at|- parent,parent`.
const TOPOLOGY_FILE: &str = "shards.topology";

impl Stream {
    fn open(dir: &Path, spec: &DiskStreamSpec, syncer: &Arc<dyn Syncer>, clock: &Clock) -> Result<Stream, StreamError> {
        let name = spec.name.as_str();
        std::fs::create_dir_all(dir).map_err(|e| io_failed(name, "cannot create its folder", &e))?;
        let open_log =
            |index: u32| Shard::open(&dir.join(shard_id(index)), spec, syncer.clone(), clock.clone()).map(Arc::new);
        let entries = match std::fs::read_to_string(dir.join(TOPOLOGY_FILE)) {
            Ok(text) => {
                let mut entries = Vec::new();
                for (n, line) in text.lines().enumerate() {
                    let bad = || {
                        corrupt(&dir.join(TOPOLOGY_FILE), n as u64, format!("line {} is malformed: `{line}`", n + 1))
                    };
                    let f: Vec<&str> = line.split_whitespace().collect();
                    let [index, start, end, closed, parents] = f.as_slice() else { return Err(bad()) };
                    let index: u32 = index.parse().map_err(|_| bad())?;
                    if index as usize != entries.len() {
                        return Err(bad());
                    }
                    entries.push(ShardEntry {
                        log: open_log(index)?,
                        hash_start: start.parse().map_err(|_| bad())?,
                        hash_end: end.parse().map_err(|_| bad())?,
                        closed_at: if *closed == "-" { None } else { Some(closed.parse().map_err(|_| bad())?) },
                        parents: if *parents == "-" {
                            Vec::new()
                        } else {
                            parents.split(',').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?
                        },
                    });
                }
                let open = entries.iter().filter(|e| e.closed_at.is_none()).count();
                if open != spec.shards.max(1) as usize {
                    tracing::warn!(
                        stream = name,
                        open,
                        configured = spec.shards,
                        "the stream was resharded; its shards on disk win over the manifest's `shards`"
                    );
                }
                entries
            }
            Err(_) => {
                let count = spec.shards.max(1);
                let entries = (0..count)
                    .map(|i| {
                        Ok(ShardEntry {
                            log: open_log(i)?,
                            hash_start: shard_start(i, count),
                            hash_end: shard_end(i, count),
                            parents: Vec::new(),
                            closed_at: None,
                        })
                    })
                    .collect::<Result<Vec<_>, StreamError>>()?;
                save_topology(dir, name, &entries)?;
                entries
            }
        };
        Ok(Stream {
            dir: dir.to_owned(),
            created_ms: created_ms(dir),
            spec: spec.clone(),
            syncer: syncer.clone(),
            clock: clock.clone(),
            topology: RwLock::new(entries),
            generation: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    fn entries(&self) -> std::sync::RwLockReadGuard<'_, Vec<ShardEntry>> {
        self.topology.read().unwrap_or_else(|p| p.into_inner())
    }

    fn shard(&self, stream: &str, index: u32) -> Result<Arc<Shard>, StreamError> {
        self.entries()
            .get(index as usize)
            .map(|e| e.log.clone())
            .ok_or_else(|| StreamError::UnknownShard { stream: stream.to_owned(), shard: shard_id(index) })
    }

    /// Closes every open shard and opens `count` children splitting the hash
    /// key space evenly; each child names the closed shards it overlaps.
    fn reshard(&self, stream: &str, count: u32) -> Result<(), StreamError> {
        let mut entries = self.topology.write().unwrap_or_else(|p| p.into_inner());
        let parents: Vec<(u32, u128, u128)> = entries
            .iter()
            .zip(0..)
            .filter(|(e, _)| e.closed_at.is_none())
            .map(|(e, i)| (i, e.hash_start, e.hash_end))
            .collect();
        for (index, ..) in &parents {
            let entry = &mut entries[*index as usize];
            let end = entry.log.lock().durable;
            entry.closed_at = Some(end);
        }
        let first = entries.len() as u32;
        for k in 0..count {
            let (start, end) = (shard_start(k, count), shard_end(k, count));
            let index = first + k;
            entries.push(ShardEntry {
                log: Arc::new(Shard::open(
                    &self.dir.join(shard_id(index)),
                    &self.spec,
                    self.syncer.clone(),
                    self.clock.clone(),
                )?),
                hash_start: start,
                hash_end: end,
                parents: parents.iter().filter(|(_, s, e)| *s <= end && start <= *e).map(|(i, ..)| *i).collect(),
                closed_at: None,
            });
        }
        save_topology(&self.dir, stream, &entries)?;
        drop(entries);
        self.bump();
        tracing::info!(stream, shards = count, "resharded");
        Ok(())
    }

    /// Records the settings of a stream created through the API.
    fn save_settings(&self, name: &str) -> Result<(), StreamError> {
        let retention = self.entries().first().map_or(0, |e| e.log.retention_ms.load(Ordering::Relaxed));
        let text = format!("retention_ms={retention}\nshards={}\n", self.spec.shards);
        let path = self.dir.join(SETTINGS_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_failed(name, "cannot save its settings", &e))
    }

    fn bump(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        self.changed.notify_all();
    }
}

impl std::fmt::Debug for DiskStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStreams").field("root", &self.root).finish()
    }
}

/// Settings of a stream created through the API, kept beside its segments.
const SETTINGS_FILE: &str = "stream.settings";

/// The folder of stream `name` under `root`: the name is checked by the
/// stream name rule and becomes one path component, never more.
fn stream_dir(root: &Path, name: &str) -> Result<PathBuf, StreamError> {
    names::check(NameKind::Stream, "stream name", name).map_err(|e| StreamError::InvalidName(e.to_string()))?;
    names::child_path(root, name).map_err(|e| StreamError::InvalidName(e.to_string()))
}

/// The file name of a consumer's checkpoint in a shard's `consumers/` folder.
fn checkpoint_file(consumer: &str) -> Result<PathBuf, StreamError> {
    names::check(NameKind::Consumer, "consumer name", consumer).map_err(|e| StreamError::InvalidName(e.to_string()))?;
    names::child_path(Path::new(""), &format!("{consumer}.checkpoint"))
        .map_err(|e| StreamError::InvalidName(e.to_string()))
}

fn io_failed(stream: &str, what: &str, e: &std::io::Error) -> StreamError {
    StreamError::Failed { stream: stream.to_owned(), reason: format!("{what}: {e}") }
}

impl DiskStreams {
    /// Opens (creating or recovering) each stream under `root/<name>/`, plus
    /// the streams created earlier through the API.
    pub fn open(root: &Path, specs: &[DiskStreamSpec], syncer: Arc<dyn Syncer>) -> Result<Self, StreamError> {
        Self::open_with_clock(root, specs, syncer, system_clock())
    }

    /// [`DiskStreams::open`] with the clock that stamps arrivals and ages records out.
    pub fn open_with_clock(
        root: &Path,
        specs: &[DiskStreamSpec],
        syncer: Arc<dyn Syncer>,
        clock: Clock,
    ) -> Result<Self, StreamError> {
        let mut streams = HashMap::new();
        for spec in specs {
            let dir = stream_dir(root, &spec.name)?;
            streams.insert(spec.name.clone(), Arc::new(Stream::open(&dir, spec, &syncer, &clock)?));
        }
        if let Ok(entries) = std::fs::read_dir(root) {
            for entry in entries.filter_map(|e| e.ok()) {
                let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
                if names::check(NameKind::Stream, "stream", &name).is_err() {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(entry.path().join(SETTINGS_FILE)) else { continue };
                if streams.contains_key(&name) {
                    continue;
                }
                let setting = |key: &str| {
                    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok())
                };
                let mut spec = DiskStreamSpec::new(&name, DEFAULT_CAPACITY, FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL));
                spec.retention = setting("retention_ms=").map_or(DEFAULT_RETENTION, Duration::from_millis);
                spec.shards = setting("shards=").map_or(1, |n| n as u32);
                streams.insert(name, Arc::new(Stream::open(&entry.path(), &spec, &syncer, &clock)?));
            }
        }
        Ok(Self { root: root.to_owned(), syncer, clock, streams: RwLock::new(streams) })
    }

    fn stream(&self, stream: &str) -> Result<Arc<Stream>, StreamError> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        streams.get(stream).cloned().ok_or_else(|| StreamError::UnknownStream(stream.to_owned()))
    }

    fn shard(&self, stream: &str, index: u32) -> Result<Arc<Shard>, StreamError> {
        self.stream(stream)?.shard(stream, index)
    }
}

/// Unconsumed records a stream created through the API holds before refusing puts.
pub const DEFAULT_CAPACITY: usize = 1_000_000;
/// The group-commit interval unless a stream sets `fsync-interval`.
pub const DEFAULT_FSYNC_INTERVAL: Duration = Duration::from_millis(5);

/// When the stream's folder was made: its creation time as the stream's.
fn created_ms(dir: &Path) -> i64 {
    std::fs::metadata(dir)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as i64)
}

fn save_topology(dir: &Path, stream: &str, entries: &[ShardEntry]) -> Result<(), StreamError> {
    let mut text = String::new();
    for (i, e) in entries.iter().enumerate() {
        let closed = e.closed_at.map_or("-".to_owned(), |c| c.to_string());
        let parents = if e.parents.is_empty() {
            "-".to_owned()
        } else {
            e.parents.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        };
        text.push_str(&format!("{i} {} {} {closed} {parents}\n", e.hash_start, e.hash_end));
    }
    let path = dir.join(TOPOLOGY_FILE);
    let tmp = path.with_extension("tmp");
    // Synced: losing the lineage would lose the order between parents and children.
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| io_failed(stream, "cannot save its shard lineage", &e))
}

fn segment_name(base: u64) -> String {
    format!("{base:020}.log")
}

impl Shard {
    fn open(dir: &Path, spec: &DiskStreamSpec, syncer: Arc<dyn Syncer>, clock: Clock) -> Result<Shard, StreamError> {
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
            let (len, newest_ms) = recover_segment(&path, &file, i == last, i, &mut state)?;
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
            arriving: AtomicUsize::new(0),
        };
        shard.apply_retention(&mut shard.lock(), (shard.clock)());
        Ok(shard)
    }

    /// Drops whole segments, oldest first, that are past the retention period
    /// or beyond the size cap. The segment being written is always kept.
    fn apply_retention(&self, st: &mut State, now_ms: i64) {
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves the state consistent (every update is a
        // single assignment or push), so keep going rather than fail forever.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn oldest(&self, st: &State) -> u64 {
        st.segments.first().map_or(0, |s| s.base)
    }

    /// Writes a frame to the active segment, starting a new segment when it is full.
    fn write_frame(
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
    fn fail(&self, st: &mut State, what: &str, e: &std::io::Error) -> StreamError {
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
    fn wait_durable<'a>(&'a self, mut st: MutexGuard<'a, State>, end: u64) -> Result<(), StreamError> {
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

    /// Group commit: before syncing, keep gathering writes while puts are on
    /// their way (each quiet period of [`GROUP_QUIET`] ends it), for at most
    /// `interval`. With no other put arriving, sync at once: waiting could
    /// only add latency.
    fn gather<'a>(&'a self, mut st: MutexGuard<'a, State>, interval: Duration) -> MutexGuard<'a, State> {
        let deadline = Instant::now() + interval;
        loop {
            let now = Instant::now();
            if now >= deadline || self.arriving.load(Ordering::SeqCst) == 0 {
                return st;
            }
            let seen = st.next;
            let (guard, timeout) =
                self.changed.wait_timeout(st, GROUP_QUIET.min(deadline - now)).unwrap_or_else(|p| p.into_inner());
            st = guard;
            if timeout.timed_out() && st.next == seen {
                return st;
            }
        }
    }

    /// Writes a consumer's checkpoint (temporary file, then rename). Not synced:
    /// a checkpoint lost in a crash only means re-reading (at-least-once), but
    /// one that cannot be written is an error its stage must see.
    fn persist_checkpoint(&self, consumer: &str, file: &Path, next: u64) -> Result<(), StreamError> {
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

fn corrupt(path: &Path, offset: u64, reason: String) -> StreamError {
    StreamError::Corrupt { file: path.display().to_string(), offset, reason }
}

/// Reads a segment's frames into `state`; truncates a torn tail of the last
/// segment; refuses damage that valid frames follow. Returns the valid length
/// and the arrival time of the newest record.
fn recover_segment(
    path: &Path,
    file: &File,
    is_last: bool,
    index: usize,
    state: &mut State,
) -> Result<(u64, i64), StreamError> {
    let bytes = std::fs::read(path).map_err(|e| corrupt(path, 0, format!("cannot read: {e}")))?;
    let mut offset = 0usize;
    let mut newest_ms = i64::MIN;
    while offset < bytes.len() {
        match parse_frame(&bytes[offset..]) {
            Ok((first, count, len)) if first == state.next => {
                newest_ms = newest_ms.max(frame_arrival(&bytes[offset..]));
                state.frames.push(FrameRef {
                    first,
                    count,
                    segment: index,
                    offset: offset as u64,
                    len: len as u32,
                    arrival_ms: newest_ms,
                });
                state.next += u64::from(count);
                offset += len;
            }
            Ok((first, ..)) => {
                return Err(corrupt(
                    path,
                    offset as u64,
                    format!("frame starts at sequence {first}, expected {}", state.next),
                ));
            }
            Err(reason) => {
                let valid_after = (offset + 1..bytes.len()).any(|p| parse_frame(&bytes[p..]).is_ok());
                if !is_last || valid_after {
                    return Err(corrupt(path, offset as u64, reason));
                }
                tracing::warn!(file = %path.display(), offset, dropped_bytes = bytes.len() - offset, "truncating a torn write at the end of the stream log");
                file.set_len(offset as u64)
                    .map_err(|e| corrupt(path, offset as u64, format!("cannot truncate: {e}")))?;
                file.sync_all().map_err(|e| corrupt(path, offset as u64, format!("cannot sync: {e}")))?;
                return Ok((offset as u64, newest_ms));
            }
        }
    }
    Ok((bytes.len() as u64, newest_ms))
}

/// The arrival time stored in a checked frame.
fn frame_arrival(frame: &[u8]) -> i64 {
    let at = HEADER + 12;
    frame.get(at..at + 8).and_then(|b| b.try_into().ok()).map_or(i64::MIN, i64::from_le_bytes)
}

/// Checks one frame at the start of `bytes`: (first sequence, record count, frame length).
fn parse_frame(bytes: &[u8]) -> Result<(u64, u32, usize), String> {
    if bytes.len() < HEADER {
        return Err("frame header cut short".to_owned());
    }
    if bytes[..2] != MAGIC {
        return Err("bad frame marker".to_owned());
    }
    let len = u32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    if len > MAX_PAYLOAD || (len as usize) < PAYLOAD_HEADER {
        return Err(format!("implausible frame length {len}"));
    }
    let end = HEADER + len as usize;
    if bytes.len() < end {
        return Err("frame cut short".to_owned());
    }
    let crc = u32::from_le_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let payload = &bytes[HEADER..end];
    if crc32c::crc32c(payload) != crc {
        return Err("checksum mismatch".to_owned());
    }
    let first = u64::from_le_bytes(payload[..8].try_into().map_err(|_| "short payload")?);
    let count = u32::from_le_bytes(payload[8..12].try_into().map_err(|_| "short payload")?);
    Ok((first, count, end))
}

fn encode_frame(first: u64, arrival_ms: i64, records: &[NewRecord]) -> Vec<u8> {
    let size: usize = records.iter().map(|r| 8 + 2 + r.key.len() + 4 + r.data.len()).sum();
    let mut frame = Vec::with_capacity(HEADER + PAYLOAD_HEADER + size);
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&[0; 8]);
    frame.extend_from_slice(&first.to_le_bytes());
    frame.extend_from_slice(&(records.len() as u32).to_le_bytes());
    frame.extend_from_slice(&arrival_ms.to_le_bytes());
    for r in records {
        frame.extend_from_slice(&r.event_time_ms.unwrap_or(arrival_ms).to_le_bytes());
        frame.extend_from_slice(&(r.key.len() as u16).to_le_bytes());
        frame.extend_from_slice(r.key.as_bytes());
        frame.extend_from_slice(&(r.data.len() as u32).to_le_bytes());
        frame.extend_from_slice(&r.data);
    }
    let len = (frame.len() - HEADER) as u32;
    let crc = crc32c::crc32c(&frame[HEADER..]);
    frame[2..6].copy_from_slice(&len.to_le_bytes());
    frame[6..10].copy_from_slice(&crc.to_le_bytes());
    frame
}

/// Decodes the records of a checked frame; their data are slices of it, not copies.
fn decode_frame(frame: &Bytes, shard: u32) -> Result<Vec<StoredRecord>, String> {
    let payload = frame.get(HEADER..).ok_or("short frame")?;
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8], String> {
        let slice = payload.get(at..at + n).ok_or("record runs past its frame")?;
        at += n;
        Ok(slice)
    };
    let first = u64::from_le_bytes(take(8)?.try_into().map_err(|_| "first")?);
    let count = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "count")?);
    let arrival_ms = i64::from_le_bytes(take(8)?.try_into().map_err(|_| "arrival")?);
    let mut records = Vec::with_capacity(count as usize);
    for i in 0..u64::from(count) {
        let event_time_ms = i64::from_le_bytes(take(8)?.try_into().map_err(|_| "event time")?);
        let key_len = u16::from_le_bytes(take(2)?.try_into().map_err(|_| "key length")?) as usize;
        let key = std::str::from_utf8(take(key_len)?).map_err(|_| "key is not UTF-8")?.to_owned();
        let data_len = u32::from_le_bytes(take(4)?.try_into().map_err(|_| "data length")?) as usize;
        let data = frame.slice_ref(take(data_len)?);
        records.push(StoredRecord { shard, sequence: first + i, key, event_time_ms, arrival_ms, data });
    }
    Ok(records)
}

impl Shard {
    /// Appends records to this shard; with a write limit only a prefix may fit.
    /// Returns the sequence numbers of the records appended.
    fn append(&self, records: Vec<NewRecord>) -> Result<Vec<u64>, StreamError> {
        let stream = self.name.as_str();
        self.arriving.fetch_add(1, Ordering::SeqCst);
        let arriving = Arriving(&self.arriving);
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
        let frame = encode_frame(first, arrival_ms, &records);
        self.write_frame(&mut st, &frame, first, records.len() as u32, arrival_ms)?;
        self.apply_retention(&mut st, arrival_ms);
        st.next += records.len() as u64;
        let end = st.next;
        drop(arriving);
        // Wakes a group commit that is gathering writes.
        self.changed.notify_all();
        match self.fsync {
            FsyncPolicy::Never => st.durable = end,
            FsyncPolicy::Always | FsyncPolicy::Group(_) => self.wait_durable(st, end)?,
        }
        Ok((first..end).collect())
    }
}

impl StreamStore for DiskStreams {
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        let target = self.stream(stream)?;
        // Held shared until the records are in: resharding cannot close a shard under them.
        let entries = target.entries();
        let open: Vec<(u32, u128)> =
            entries.iter().zip(0..).filter(|(e, _)| e.closed_at.is_none()).map(|(e, i)| (i, e.hash_start)).collect();
        // Group by shard, remembering each record's place in the input.
        let mut by_shard: BTreeMap<u32, (Vec<usize>, Vec<NewRecord>)> = BTreeMap::new();
        let total = records.len();
        if let [(only, _)] = open.as_slice() {
            // One open shard owns every key: no need to hash them.
            by_shard.insert(*only, ((0..total).collect(), records));
        } else {
            for (i, r) in records.into_iter().enumerate() {
                let hash = r.explicit_hash_key.unwrap_or_else(|| hash_key(&r.key));
                // Open shards split the space in order: the owner is the last starting at or below the hash.
                let at = open.partition_point(|(_, start)| *start <= hash).saturating_sub(1);
                let shard = open.get(at).map_or(0, |(index, _)| *index);
                let entry = by_shard.entry(shard).or_default();
                entry.0.push(i);
                entry.1.push(r);
            }
        }
        let mut results: Vec<Result<Appended, StreamError>> =
            (0..total).map(|_| Err(StreamError::UnknownStream(stream.to_owned()))).collect();
        for (shard, (places, group)) in by_shard {
            let Some(entry) = entries.get(shard as usize) else { continue };
            match entry.log.append(group) {
                Ok(sequences) => {
                    for (k, place) in places.iter().enumerate() {
                        results[*place] = match sequences.get(k) {
                            Some(&sequence) => Ok(Appended { shard, sequence }),
                            None => Err(StreamError::Throttled {
                                stream: stream.to_owned(),
                                limit: "the shard's write limit".to_owned(),
                            }),
                        };
                    }
                }
                Err(e) => {
                    for place in places {
                        results[place] = Err(e.clone());
                    }
                }
            }
        }
        drop(entries);
        target.bump();
        Ok(results)
    }

    fn shard_count(&self, stream: &str) -> Result<u32, StreamError> {
        Ok(self.stream(stream)?.entries().len() as u32)
    }

    fn lineage(&self, stream: &str) -> Result<Vec<Lineage>, StreamError> {
        let target = self.stream(stream)?;
        let entries = target.entries();
        Ok(entries.iter().map(|e| Lineage { parents: e.parents.clone(), closed_at: e.closed_at }).collect())
    }

    fn reshard(&self, stream: &str, shards: u32) -> Result<(), StreamError> {
        self.stream(stream)?.reshard(stream, shards.max(1))
    }

    fn changes(&self, stream: &str) -> Result<u64, StreamError> {
        let target = self.stream(stream)?;
        let g = target.generation.lock().unwrap_or_else(|p| p.into_inner());
        Ok(*g)
    }

    fn wait_change(&self, stream: &str, seen: u64, timeout: Duration) -> Result<u64, StreamError> {
        let target = self.stream(stream)?;
        let g = target.generation.lock().unwrap_or_else(|p| p.into_inner());
        let (g, _) = target.changed.wait_timeout_while(g, timeout, |g| *g == seen).unwrap_or_else(|p| p.into_inner());
        Ok(*g)
    }

    fn read(&self, stream: &str, shard_index: u32, from: u64, max: usize) -> Result<Vec<StoredRecord>, StreamError> {
        let shard = self.shard(stream, shard_index)?;
        let (end, reads) = {
            let st = shard.lock();
            let oldest = shard.oldest(&st);
            if from < oldest {
                return Err(StreamError::Trimmed { stream: stream.to_owned(), sequence: from, oldest });
            }
            let end = st.durable.min(from.saturating_add(max as u64));
            let start = st.frames.partition_point(|f| f.first + u64::from(f.count) <= from);
            let reads: Vec<(FrameRef, Arc<File>, PathBuf)> = st.frames[start..]
                .iter()
                .take_while(|f| f.first < end)
                .filter_map(|f| {
                    let segment = st.segments.get(f.segment - st.dropped_segments)?;
                    Some((*f, segment.file.clone(), segment.path.clone()))
                })
                .collect();
            (end, reads)
        };
        let mut out = Vec::new();
        for (frame, file, path) in reads {
            let mut bytes = vec![0u8; frame.len as usize];
            file.read_exact_at(&mut bytes, frame.offset)
                .map_err(|e| corrupt(&path, frame.offset, format!("cannot read: {e}")))?;
            let bytes = Bytes::from(bytes);
            // Checked again on every read: a record that went bad on disk is never served.
            parse_frame(&bytes).map_err(|reason| corrupt(&path, frame.offset, reason))?;
            let records = decode_frame(&bytes, shard_index).map_err(|reason| corrupt(&path, frame.offset, reason))?;
            out.extend(records.into_iter().filter(|r| r.sequence >= from && r.sequence < end));
        }
        Ok(out)
    }

    fn wait_for(
        &self,
        stream: &str,
        shard: u32,
        from: u64,
        min: usize,
        timeout: Duration,
    ) -> Result<usize, StreamError> {
        let shard = self.shard(stream, shard)?;
        let deadline = Instant::now() + timeout;
        let mut st = shard.lock();
        loop {
            let available = st.durable.saturating_sub(from) as usize;
            let now = Instant::now();
            if available >= min || now >= deadline {
                return Ok(available);
            }
            st = shard.changed.wait_timeout(st, deadline - now).map(|(g, _)| g).unwrap_or_else(|p| p.into_inner().0);
        }
    }

    fn register_consumer(&self, stream: &str, shard: u32, consumer: &str) -> Result<u64, StreamError> {
        checkpoint_file(consumer)?;
        let shard = self.shard(stream, shard)?;
        let mut st = shard.lock();
        let oldest = shard.oldest(&st);
        Ok(*st.consumers.entry(consumer.to_owned()).or_insert(oldest))
    }

    fn checkpoint(&self, stream: &str, shard: u32, consumer: &str, next: u64) -> Result<(), StreamError> {
        let file = checkpoint_file(consumer)?;
        let shard = self.shard(stream, shard)?;
        shard.persist_checkpoint(consumer, &file, next)?;
        shard.lock().consumers.insert(consumer.to_owned(), next);
        Ok(())
    }

    fn end(&self, stream: &str, shard: u32) -> Result<u64, StreamError> {
        Ok(self.shard(stream, shard)?.lock().durable)
    }

    fn position_at_time(&self, stream: &str, shard: u32, arrival_ms: i64) -> Result<u64, StreamError> {
        let shard = self.shard(stream, shard)?;
        let st = shard.lock();
        let i = st.frames.partition_point(|f| f.arrival_ms < arrival_ms);
        Ok(st.frames.get(i).map_or(st.durable, |f| f.first.min(st.durable)))
    }

    fn create(&self, settings: StreamSettings) -> Result<(), StreamError> {
        let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
        if streams.contains_key(&settings.name) {
            return Err(StreamError::AlreadyExists(settings.name));
        }
        let dir = stream_dir(&self.root, &settings.name)?;
        if dir.exists() {
            // Leftovers of a deleted stream must not come back to life.
            std::fs::remove_dir_all(&dir).map_err(|e| io_failed(&settings.name, "cannot clear its folder", &e))?;
        }
        let mut spec =
            DiskStreamSpec::new(&settings.name, DEFAULT_CAPACITY, FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL));
        spec.retention = settings.retention;
        spec.shards = settings.shards.max(1);
        let created = Stream::open(&dir, &spec, &self.syncer, &self.clock)?;
        created.save_settings(&settings.name)?;
        streams.insert(settings.name, Arc::new(created));
        Ok(())
    }

    fn delete(&self, stream: &str) -> Result<(), StreamError> {
        let removed = {
            let mut streams = self.streams.write().unwrap_or_else(|p| p.into_inner());
            streams.remove(stream).ok_or_else(|| StreamError::UnknownStream(stream.to_owned()))?
        };
        std::fs::remove_dir_all(&removed.dir).map_err(|e| io_failed(stream, "cannot remove its folder", &e))
    }

    fn list(&self) -> Vec<String> {
        let streams = self.streams.read().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<String> = streams.keys().cloned().collect();
        names.sort();
        names
    }

    fn info(&self, stream: &str) -> Result<StreamInfo, StreamError> {
        let target = self.stream(stream)?;
        let entries = target.entries();
        let shards = entries
            .iter()
            .zip(0..)
            .map(|(e, index)| {
                let st = e.log.lock();
                ShardInfo {
                    index,
                    hash_start: e.hash_start,
                    hash_end: e.hash_end,
                    oldest: e.log.oldest(&st),
                    end: st.durable,
                    consumers: st.consumers.clone(),
                    parents: e.parents.clone(),
                    closed_at: e.closed_at,
                }
            })
            .collect();
        let retention = entries.first().map_or(0, |e| e.log.retention_ms.load(Ordering::Relaxed));
        Ok(StreamInfo {
            name: stream.to_owned(),
            retention: Duration::from_millis(retention),
            created_ms: target.created_ms,
            shards,
        })
    }

    fn set_retention(&self, stream: &str, retention: Duration) -> Result<(), StreamError> {
        let target = self.stream(stream)?;
        for e in target.entries().iter() {
            e.log.retention_ms.store(retention.as_millis() as u64, Ordering::Relaxed);
            e.log.apply_retention(&mut e.log.lock(), (e.log.clock)());
        }
        if target.dir.join(SETTINGS_FILE).exists() {
            target.save_settings(stream)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fsync: FsyncPolicy) -> Vec<DiskStreamSpec> {
        vec![DiskStreamSpec::new("s", 1_000_000, fsync)]
    }

    fn rec(data: &str) -> NewRecord {
        NewRecord {
            key: format!("k-{data}"),
            event_time_ms: Some(7),
            data: Bytes::copy_from_slice(data.as_bytes()),
            explicit_hash_key: None,
        }
    }

    /// Appends to shard 0 of a one-shard stream: the sequence numbers, or the first error.
    fn put(s: &DiskStreams, records: Vec<NewRecord>) -> Result<Vec<u64>, StreamError> {
        s.append("s", records)?.into_iter().map(|r| r.map(|a| a.sequence)).collect()
    }

    fn open(dir: &Path, fsync: FsyncPolicy) -> Result<DiskStreams, StreamError> {
        DiskStreams::open(dir, &spec(fsync), Arc::new(FileSyncer))
    }

    fn datas(records: &[StoredRecord]) -> Vec<String> {
        records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect()
    }

    fn segment(dir: &Path) -> PathBuf {
        dir.join("s").join(shard_id(0)).join(segment_name(0))
    }

    #[test]
    fn names_that_are_not_one_plain_component_touch_nothing() {
        let outer = tempfile::tempdir().expect("tempdir");
        let root = outer.path().join("data/streams");
        let victim = outer.path().join("victim");
        std::fs::create_dir_all(&victim).expect("victim");
        std::fs::write(victim.join("keep.txt"), "keep").expect("victim file");
        let s = open(&root, FsyncPolicy::Always).expect("open");
        for name in ["../../victim", "..", ".", "a/b", "/tmp/x", "", "x\0y", &"x".repeat(200)] {
            let settings = StreamSettings { name: name.to_owned(), retention: DEFAULT_RETENTION, shards: 1 };
            assert!(matches!(s.create(settings), Err(StreamError::InvalidName(_))), "{name:?}");
            assert!(matches!(s.delete(name), Err(StreamError::UnknownStream(_))), "{name:?}");
        }
        for consumer in ["../../x", "..", "a/b"] {
            assert!(matches!(s.register_consumer("s", 0, consumer), Err(StreamError::InvalidName(_))));
            assert!(matches!(s.checkpoint("s", 0, consumer, 0), Err(StreamError::InvalidName(_))));
        }
        assert_eq!(std::fs::read_to_string(victim.join("keep.txt")).ok().as_deref(), Some("keep"));
        let mut around: Vec<_> =
            std::fs::read_dir(outer.path()).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        around.sort();
        assert_eq!(around, ["data", "victim"], "nothing was created beside the data folder");
        let mut inside: Vec<_> =
            std::fs::read_dir(&root).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        inside.sort();
        assert_eq!(inside, ["s"], "only the manifest's stream has a folder");
    }

    #[test]
    fn records_survive_a_reopen_in_order_with_their_keys_times_and_checkpoints() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path(), FsyncPolicy::Always).expect("open");
            put(&s, vec![rec("a"), rec("b")]).expect("append");
            let appended = put(&s, vec![rec("c")]).expect("append");
            assert_eq!(appended, vec![2]);
            s.register_consumer("s", 0, "etl").expect("register");
            s.checkpoint("s", 0, "etl", 2).expect("checkpoint");
        }
        let s = open(dir.path(), FsyncPolicy::Always).expect("reopen");
        let all = s.read("s", 0, 0, 10).expect("read");
        assert_eq!(datas(&all), vec!["a", "b", "c"]);
        assert_eq!((all[1].sequence, all[1].key.as_str(), all[1].event_time_ms), (1, "k-b", 7));
        assert_eq!(s.register_consumer("s", 0, "etl"), Ok(2), "a consumer resumes after its checkpoint");
        assert_eq!(datas(&s.read("s", 0, 1, 1).expect("read")), vec!["b"]);
        assert_eq!(put(&s, vec![rec("d")]).expect("append")[0], 3);
    }

    #[test]
    fn a_torn_tail_is_truncated_and_later_appends_continue_from_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = open(dir.path(), FsyncPolicy::Never).expect("open");
            put(&s, vec![rec("a")]).expect("append");
            put(&s, vec![rec("b"), rec("c")]).expect("append");
        }
        let len = std::fs::metadata(segment(dir.path())).expect("meta").len();
        let file = OpenOptions::new().write(true).open(segment(dir.path())).expect("open");
        file.set_len(len - 3).expect("tear the last frame");
        drop(file);
        let s = open(dir.path(), FsyncPolicy::Never).expect("recover");
        assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["a"]);
        assert_eq!(put(&s, vec![rec("d")]).expect("append")[0], 1);
        assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["a", "d"]);
    }

    #[test]
    fn a_flipped_bit_in_the_middle_is_refused_with_file_and_offset() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first_frame_len;
        {
            let s = open(dir.path(), FsyncPolicy::Never).expect("open");
            put(&s, vec![rec("first")]).expect("append");
            first_frame_len = std::fs::metadata(segment(dir.path())).expect("meta").len();
            put(&s, vec![rec("second")]).expect("append");
            put(&s, vec![rec("third")]).expect("append");
        }
        // Flip one bit in every position of the second frame in turn: each must be caught.
        let original = std::fs::read(segment(dir.path())).expect("read");
        let second_len = (original.len() as u64 - first_frame_len) as usize / 2;
        for byte in first_frame_len as usize..first_frame_len as usize + second_len {
            let mut damaged = original.clone();
            damaged[byte] ^= 0x10;
            std::fs::write(segment(dir.path()), &damaged).expect("write");
            match open(dir.path(), FsyncPolicy::Never) {
                Err(StreamError::Corrupt { file, offset, .. }) => {
                    assert!(file.ends_with("00000000000000000000.log"));
                    assert_eq!(offset, first_frame_len, "byte {byte}");
                }
                Err(other) => panic!("byte {byte}: {other}"),
                Ok(s) => panic!(
                    "byte {byte}: a corrupted stream opened and serves {:?}",
                    datas(&s.read("s", 0, 0, 9).unwrap_or_default())
                ),
            }
        }
    }

    #[test]
    fn damage_after_opening_is_never_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = open(dir.path(), FsyncPolicy::Never).expect("open");
        put(&s, vec![rec("precious")]).expect("append");
        let mut bytes = std::fs::read(segment(dir.path())).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let file = OpenOptions::new().write(true).open(segment(dir.path())).expect("open");
        file.write_all_at(&bytes, 0).expect("damage");
        assert!(matches!(s.read("s", 0, 0, 10), Err(StreamError::Corrupt { .. })));
    }

    struct FailAfter(AtomicUsize);

    impl Syncer for FailAfter {
        fn sync(&self, file: &File) -> std::io::Result<()> {
            if self.0.fetch_sub(1, Ordering::SeqCst) == 0 {
                return Err(std::io::Error::other("injected fsync failure"));
            }
            file.sync_data()
        }
    }

    #[test]
    fn after_an_fsync_failure_nothing_more_is_acknowledged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let syncer = Arc::new(FailAfter(AtomicUsize::new(2)));
        let s = DiskStreams::open(dir.path(), &spec(FsyncPolicy::Always), syncer).expect("open");
        put(&s, vec![rec("1")]).expect("first sync works");
        put(&s, vec![rec("2")]).expect("second sync works");
        let err = put(&s, vec![rec("3")]).expect_err("third sync fails");
        assert!(err.to_string().contains("injected fsync failure"), "{err}");
        let later = put(&s, vec![rec("4")]).expect_err("fail-stop");
        assert!(matches!(later, StreamError::Failed { .. }), "{later}");
        assert_eq!(s.end("s", 0), Ok(2), "the unsynced record is not readable");
        assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["1", "2"]);
    }

    #[test]
    fn concurrent_puts_share_group_commits_and_keep_order_per_producer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(open(dir.path(), FsyncPolicy::Group(Duration::from_millis(2))).expect("open"));
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for i in 0..50 {
                        put(&s, vec![rec(&format!("{w}-{i}"))]).expect("append");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let all = datas(&s.read("s", 0, 0, 1000).expect("read"));
        assert_eq!(all.len(), 200);
        for w in 0..4 {
            let mine: Vec<_> = all.iter().filter(|d| d.starts_with(&format!("{w}-"))).cloned().collect();
            let expected: Vec<_> = (0..50).map(|i| format!("{w}-{i}")).collect();
            assert_eq!(mine, expected, "producer {w} order");
        }
    }

    #[test]
    fn a_full_stream_refuses_puts_until_consumers_catch_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let specs = vec![DiskStreamSpec::new("s", 2, FsyncPolicy::Never)];
        let s = DiskStreams::open(dir.path(), &specs, Arc::new(FileSyncer)).expect("open");
        s.register_consumer("s", 0, "c").expect("register");
        put(&s, vec![rec("1"), rec("2")]).expect("append");
        assert!(matches!(put(&s, vec![rec("3")]), Err(StreamError::Full { .. })));
        s.checkpoint("s", 0, "c", 2).expect("checkpoint");
        put(&s, vec![rec("3")]).expect("room again");
    }

    #[test]
    fn retention_drops_whole_old_segments_by_age_and_by_size() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut by_size = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
        by_size.segment_bytes = 1024;
        by_size.max_bytes = Some(4096);
        let s = DiskStreams::open(dir.path(), &[by_size.clone()], Arc::new(FileSyncer)).expect("open");
        for i in 0..100 {
            put(&s, vec![rec(&format!("{i:0>100}"))]).expect("append");
        }
        let files = std::fs::read_dir(dir.path().join("s"))
            .expect("ls")
            .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")));
        let bytes: u64 = std::fs::read_dir(dir.path().join("s"))
            .expect("ls")
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .map(|e| e.metadata().map_or(0, |m| m.len()))
            .sum();
        assert!(bytes <= 4096 + 1024, "{bytes} bytes kept");
        assert!(files.count() < 10);
        let kept = s.read("s", 0, 99, 10).expect("the newest record stays");
        assert_eq!(datas(&kept), vec![format!("{:0>100}", 99)]);
        let Err(StreamError::Trimmed { oldest, .. }) = s.read("s", 0, 0, 10) else {
            panic!("old records must be gone")
        };
        assert!(oldest > 0 && oldest <= 99);
        assert_eq!(datas(&s.read("s", 0, oldest, 1).expect("read from the oldest")).len(), 1);
        drop(s);
        // The same holds after a restart.
        let s = DiskStreams::open(dir.path(), &[by_size], Arc::new(FileSyncer)).expect("reopen");
        assert_eq!(s.end("s", 0), Ok(100));
        assert!(matches!(s.read("s", 0, 0, 1), Err(StreamError::Trimmed { .. })));

        let dir = tempfile::tempdir().expect("tempdir");
        let mut by_age = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
        by_age.segment_bytes = 256;
        by_age.retention = Duration::from_millis(500);
        let s = DiskStreams::open(dir.path(), &[by_age], Arc::new(FileSyncer)).expect("open");
        for i in 0..10 {
            put(&s, vec![rec(&format!("{i:0>100}"))]).expect("append");
        }
        assert_eq!(s.read("s", 0, 0, 100).expect("young records stay").len(), 10);
        std::thread::sleep(Duration::from_millis(700));
        put(&s, vec![rec("fresh")]).expect("append");
        let Err(StreamError::Trimmed { oldest, .. }) = s.read("s", 0, 0, 10) else {
            panic!("expired records must be gone")
        };
        assert_eq!(oldest, 10, "everything but the active segment expired");
        assert_eq!(datas(&s.read("s", 0, 10, 10).expect("read")), vec!["fresh"]);
    }

    #[test]
    fn a_write_limit_admits_what_fits_and_throttles_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
        spec.write_limit = Some(WriteLimit { bytes_per_second: 1 << 20, records_per_second: 5 });
        let s = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("open");
        let batch: Vec<NewRecord> = (0..8).map(|i| rec(&i.to_string())).collect();
        let admitted = |records| s.append("s", records).expect("append").iter().filter(|r| r.is_ok()).count();
        assert_eq!(admitted(batch), 5, "a second's worth");
        let results = s.append("s", vec![rec("x")]).expect("append");
        assert!(matches!(results[0], Err(StreamError::Throttled { .. })), "{results:?}");
        std::thread::sleep(Duration::from_millis(450));
        // About half a second's worth came back (more only if the sleep overran a lot).
        let refilled = admitted((0..5).map(|i| rec(&format!("r{i}"))).collect());
        assert!((2..5).contains(&refilled), "refilled {refilled}");
    }

    #[test]
    fn records_go_to_the_shard_owning_their_hash_and_keep_order_per_key() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
        spec.shards = 4;
        let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("open");
        let info = s.info("s").expect("info");
        assert_eq!(info.shards.len(), 4);
        assert_eq!((info.shards[0].hash_start, info.shards[3].hash_end), (0, u128::MAX));
        for pair in info.shards.windows(2) {
            assert_eq!(pair[0].hash_end + 1, pair[1].hash_start, "ranges are contiguous");
        }
        let records: Vec<NewRecord> = (0..200)
            .map(|i| NewRecord {
                key: format!("customer-{}", i % 20),
                event_time_ms: None,
                data: Bytes::from(format!("{}-{i}", i % 20)),
                explicit_hash_key: None,
            })
            .collect();
        let results = s.append("s", records).expect("append");
        let mut used = std::collections::BTreeSet::new();
        for (i, r) in results.iter().enumerate() {
            let a = r.as_ref().expect("appended");
            let hash = hash_key(&format!("customer-{}", i % 20));
            let owner = &info.shards[a.shard as usize];
            assert!(owner.hash_start <= hash && hash <= owner.hash_end, "record {i} in the wrong shard");
            used.insert(a.shard);
        }
        assert!(used.len() > 1, "20 keys spread over several shards");
        let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for shard in 0..4 {
            for r in s.read("s", shard, 0, 1000).expect("read") {
                let text = String::from_utf8_lossy(&r.data).into_owned();
                let (key, n) = text.split_once('-').expect("key-n");
                seen.entry(key.to_owned()).or_default().push(n.parse().expect("n"));
            }
        }
        assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 200);
        for (key, ns) in &seen {
            assert!(ns.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {ns:?}");
        }
        // An explicit hash key wins over the partition key.
        let pinned = NewRecord { explicit_hash_key: Some(u128::MAX), ..rec("pinned") };
        assert_eq!(s.append("s", vec![pinned]).expect("append")[0].as_ref().map(|a| a.shard), Ok(3));
        drop(s);
        let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("reopen");
        assert_eq!(s.info("s").expect("info").records(), 201);
    }

    #[test]
    fn resharding_closes_parents_and_routes_new_records_to_their_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
        spec.shards = 2;
        let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("open");
        let keyed = |n: u32| NewRecord { key: format!("key-{n}"), ..rec(&n.to_string()) };
        s.append("s", (0..50).map(keyed).collect()).expect("append");
        s.reshard("s", 3).expect("reshard");
        let results = s.append("s", (50..100).map(keyed).collect()).expect("append");
        assert!(results.iter().all(|r| r.as_ref().is_ok_and(|a| a.shard >= 2)), "new records go to the children");
        let check = |s: &DiskStreams| {
            let info = s.info("s").expect("info");
            assert_eq!(info.shards.len(), 5);
            assert_eq!(info.shards[0].closed_at, Some(info.shards[0].end), "parents are closed at their end");
            assert_eq!(info.shards[1].closed_at, Some(info.shards[1].end));
            assert_eq!(info.shards[2].parents, vec![0], "the first child covers part of shard 0 only");
            assert_eq!(info.shards[3].parents, vec![0, 1], "the middle child straddles both parents");
            assert_eq!(info.shards[4].parents, vec![1]);
            assert_eq!(info.records(), 100);
            let lineage = s.lineage("s").expect("lineage");
            assert_eq!(lineage[3].parents, vec![0, 1]);
        };
        check(&s);
        drop(s);
        // The lineage survives a restart, whatever the manifest's `shards` says now.
        let s = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("reopen");
        check(&s);
        let results = s.append("s", vec![keyed(7)]).expect("append");
        assert!(results[0].as_ref().is_ok_and(|a| a.shard >= 2));
    }
}
