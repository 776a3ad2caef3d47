//! Durable streams on local disk, with no setup: per shard an append-only log
//! split into segment files. Each append is one frame
//! `magic "WR" | payload length u32 | CRC32C(payload) u32 | payload`, where the
//! payload holds the first sequence number, the record count, the arrival time
//! and the records. A put is acknowledged only after its fsync policy's sync
//! returned, and only then can consumers read it. On open, a torn tail (a
//! frame cut short or damaged with nothing valid after it) is truncated; a
//! damaged frame followed by valid ones is refused with the file and offset.
//! A failed fsync stops writes to that stream (fail-stop).

mod failure;
mod frame;
mod limit;
mod recovery;
mod settings;
mod shard;
#[cfg(test)]
mod tests;
mod topology;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::names::{self, NameKind};

use crate::{
    Appended, Clock, Lineage, NewRecord, Reshard, ShardInfo, StoredRecord, StreamError, StreamInfo, StreamSettings,
    StreamStore, hash_key, system_clock,
};

use failure::{corrupt, io_failed};
use frame::{FrameRef, decode_frame, parse_frame};
use settings::SETTINGS_FILE;
pub use settings::{
    DEFAULT_CAPACITY, DEFAULT_FSYNC_INTERVAL, DEFAULT_RETENTION, DEFAULT_SEGMENT_BYTES, DiskStreamSpec, FileSyncer,
    FsyncPolicy, Syncer, WriteLimit,
};
use shard::{Shard, checkpoint_file};
use topology::Stream;

/// Durable streams under one folder: `<root>/<stream>/<shard id>/`.
pub struct DiskStreams {
    root: PathBuf,
    syncer: Arc<dyn Syncer>,
    clock: Clock,
    streams: RwLock<HashMap<String, Arc<Stream>>>,
}

impl std::fmt::Debug for DiskStreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStreams").field("root", &self.root).finish()
    }
}

/// The folder of stream `name` under `root`: the name is checked by the
/// stream name rule and becomes one path component, never more.
fn stream_dir(root: &Path, name: &str) -> Result<PathBuf, StreamError> {
    names::check(NameKind::Stream, "stream name", name).map_err(|e| StreamError::InvalidName(e.to_string()))?;
    names::child_path(root, name).map_err(|e| StreamError::InvalidName(e.to_string()))
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

impl StreamStore for DiskStreams {
    fn append(&self, stream: &str, records: Vec<NewRecord>) -> Result<Vec<Result<Appended, StreamError>>, StreamError> {
        let target = self.stream(stream)?;
        // Held shared until the records are in: resharding cannot close a shard under them.
        let entries = target.entries();
        let mut open: Vec<(u32, u128)> =
            entries.iter().zip(0..).filter(|(e, _)| e.closed_at.is_none()).map(|(e, i)| (i, e.hash_start)).collect();
        // By hash key, not by index: a split of a shard below the last puts children after higher shards.
        open.sort_unstable_by_key(|(_, start)| *start);
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
        // Filled in below; a record whose shard vanished (never: the entries are held) stays `None`.
        let mut results: Vec<Option<Result<Appended, StreamError>>> = (0..total).map(|_| None).collect();
        for (shard, (places, group)) in by_shard {
            let Some(entry) = entries.get(shard as usize) else { continue };
            match entry.log.append(group) {
                Ok(sequences) => {
                    for (k, place) in places.iter().enumerate() {
                        results[*place] = Some(match sequences.get(k) {
                            Some(&sequence) => Ok(Appended { shard, sequence }),
                            None => Err(StreamError::Throttled {
                                stream: stream.to_owned(),
                                limit: "the shard's write limit".to_owned(),
                            }),
                        });
                    }
                }
                Err(e) => {
                    for place in places {
                        results[place] = Some(Err(e.clone()));
                    }
                }
            }
        }
        drop(entries);
        target.bump();
        Ok(results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(StreamError::UnknownStream(stream.to_owned()))))
            .collect())
    }

    fn shard_count(&self, stream: &str) -> Result<u32, StreamError> {
        Ok(self.stream(stream)?.entries().len() as u32)
    }

    fn lineage(&self, stream: &str) -> Result<Vec<Lineage>, StreamError> {
        let target = self.stream(stream)?;
        let entries = target.entries();
        Ok(entries.iter().map(|e| Lineage { parents: e.parents.clone(), closed_at: e.closed_at }).collect())
    }

    fn reshard(&self, stream: &str, change: Reshard) -> Result<(), StreamError> {
        self.stream(stream)?.reshard(stream, change)
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
        // At most `end - from` records: sized once, not regrown frame by frame.
        let mut out = Vec::with_capacity(usize::try_from(end.saturating_sub(from)).unwrap_or(0));
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
                    opened_ms: e.opened_ms.unwrap_or(target.created_ms),
                    closed_ms: e.closed_at.map(|_| e.closed_ms.unwrap_or(target.created_ms)),
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

    fn created_ms(&self, stream: &str) -> Result<i64, StreamError> {
        Ok(self.stream(stream)?.created_ms)
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
