//! The shard map of a stream: its shards, their hash key ranges and lineage
//! (kept in `shards.topology`), resharding, and the change counter stages wait on.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use crate::reshard::{self, ReshardPlan, ShardRange};
use crate::{Clock, Reshard, StreamError, now_ms, shard_end, shard_id, shard_start};

use super::failure::*;
use super::settings::*;
use super::shard::*;

/// One stream: its shards and their lineage. Open shards split the hash key
/// space; resharding closes them and opens children whose parents they name.
pub(super) struct Stream {
    pub(super) dir: PathBuf,
    pub(super) created_ms: i64,
    pub(super) spec: DiskStreamSpec,
    pub(super) syncer: Arc<dyn Syncer>,
    pub(super) clock: Clock,
    /// Appends hold it shared (routing must not change under them); resharding holds it exclusively.
    pub(super) topology: RwLock<Vec<ShardEntry>>,
    /// Grows with every append to any shard; stages wait on it.
    pub(super) generation: Mutex<u64>,
    pub(super) changed: Condvar,
}

/// One shard of a stream and where it sits in the lineage.
#[derive(Clone)]
pub(super) struct ShardEntry {
    pub(super) log: Arc<Shard>,
    pub(super) hash_start: u128,
    pub(super) hash_end: u128,
    pub(super) parents: Vec<u32>,
    /// Set when resharding closed it: the position after its last record.
    pub(super) closed_at: Option<u64>,
    /// When it opened, ms since the Unix epoch (unknown for shards kept before weir recorded it).
    pub(super) opened_ms: Option<i64>,
    /// When resharding closed it.
    pub(super) closed_ms: Option<i64>,
}

/// The lineage of a stream's shards, kept beside them: one line per shard,
/// `index start end closed_at|- parent,parent|- opened_ms closed_ms|-` (the two
/// times are missing in files written before weir recorded them).
pub(super) const TOPOLOGY_FILE: &str = "shards.topology";

impl Stream {
    pub(super) fn open(
        dir: &Path,
        spec: &DiskStreamSpec,
        syncer: &Arc<dyn Syncer>,
        clock: &Clock,
    ) -> Result<Stream, StreamError> {
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
                    let (index, start, end, closed, parents, times) = match f.as_slice() {
                        [index, start, end, closed, parents] => (index, start, end, closed, parents, None),
                        [index, start, end, closed, parents, opened, closed_ms] => {
                            (index, start, end, closed, parents, Some((opened, closed_ms)))
                        }
                        _ => return Err(bad()),
                    };
                    let (opened_ms, closed_ms) = match times {
                        None => (None, None),
                        Some((opened, closed_ms)) => (
                            Some(opened.parse().map_err(|_| bad())?),
                            if *closed_ms == "-" { None } else { Some(closed_ms.parse().map_err(|_| bad())?) },
                        ),
                    };
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
                        opened_ms,
                        closed_ms,
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
                let opened = Some(clock());
                let entries = (0..count)
                    .map(|i| {
                        Ok(ShardEntry {
                            log: open_log(i)?,
                            hash_start: shard_start(i, count),
                            hash_end: shard_end(i, count),
                            parents: Vec::new(),
                            closed_at: None,
                            opened_ms: opened,
                            closed_ms: None,
                        })
                    })
                    .collect::<Result<Vec<_>, StreamError>>()?;
                save_topology(dir, name, &entries)?;
                entries
            }
        };
        Ok(Stream {
            dir: dir.to_owned(),
            created_ms: created_ms(dir, name)?,
            spec: spec.clone(),
            syncer: syncer.clone(),
            clock: clock.clone(),
            topology: RwLock::new(entries),
            generation: Mutex::new(0),
            changed: Condvar::new(),
        })
    }

    pub(super) fn entries(&self) -> std::sync::RwLockReadGuard<'_, Vec<ShardEntry>> {
        self.topology.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn shard(&self, stream: &str, index: u32) -> Result<Arc<Shard>, StreamError> {
        self.entries()
            .get(index as usize)
            .map(|e| e.log.clone())
            .ok_or_else(|| StreamError::UnknownShard { stream: stream.to_owned(), shard: shard_id(index) })
    }

    /// Closes shards and opens their children, as `change` says (each reshard
    /// is checked as Kinesis checks it); each child
    /// names the closed shards whose hash keys it takes as its parents.
    pub(super) fn reshard(&self, stream: &str, change: Reshard) -> Result<(), StreamError> {
        let mut entries = self.topology.write().unwrap_or_else(|p| p.into_inner());
        let ranges: Vec<ShardRange> = entries
            .iter()
            .map(|e| ShardRange { hash_start: e.hash_start, hash_end: e.hash_end, open: e.closed_at.is_none() })
            .collect();
        let ReshardPlan { closing, children, open_after } = reshard::plan(stream, &ranges, change)?;
        let now = (self.clock)();
        for &index in &closing {
            let entry = &mut entries[index as usize];
            let end = entry.log.lock().durable;
            entry.closed_at = Some(end);
            entry.closed_ms = Some(now);
        }
        let first = entries.len() as u32;
        for (k, child) in children.into_iter().enumerate() {
            let index = first + k as u32;
            entries.push(ShardEntry {
                log: Arc::new(Shard::open(
                    &self.dir.join(shard_id(index)),
                    &self.spec,
                    self.syncer.clone(),
                    self.clock.clone(),
                )?),
                hash_start: child.hash_start,
                hash_end: child.hash_end,
                parents: child.parents,
                closed_at: None,
                opened_ms: Some(now),
                closed_ms: None,
            });
        }
        save_topology(&self.dir, stream, &entries)?;
        drop(entries);
        self.bump();
        tracing::info!(stream, ?change, open = open_after, "resharded");
        Ok(())
    }

    /// Records the settings of a stream created through the API.
    pub(super) fn save_settings(&self, name: &str) -> Result<(), StreamError> {
        let retention = self.entries().first().map_or(0, |e| e.log.retention_ms.load(Ordering::Relaxed));
        let text = format!("retention_ms={retention}\nshards={}\n", self.spec.shards);
        let path = self.dir.join(SETTINGS_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_failed(name, "cannot save its settings", &e))
    }

    pub(super) fn bump(&self) {
        let mut g = self.generation.lock().unwrap_or_else(|p| p.into_inner());
        *g += 1;
        self.changed.notify_all();
    }
}

/// The file beside the shards that holds when the stream was created (ms since
/// the Unix epoch): its identity, with its name, in the Kinesis sequence numbers.
pub(super) const CREATED_FILE: &str = "created";

/// When the stream was created, as its `created` file says. A stream opened the
/// first time (or kept by a weir that did not write the file) records it now:
/// its folder's time, which a later change to the folder must not move.
pub(super) fn created_ms(dir: &Path, stream: &str) -> Result<i64, StreamError> {
    let path = dir.join(CREATED_FILE);
    if let Ok(text) = std::fs::read_to_string(&path) {
        return text.trim().parse().map_err(|_| corrupt(&path, 0, format!("`{}` is not a time in ms", text.trim())));
    }
    let created = std::fs::metadata(dir)
        .and_then(|m| m.created().or_else(|_| m.modified()))
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as i64);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("{created}\n"))
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| io_failed(stream, "cannot record when it was created", &e))?;
    Ok(created)
}

pub(super) fn save_topology(dir: &Path, stream: &str, entries: &[ShardEntry]) -> Result<(), StreamError> {
    let mut text = String::new();
    for (i, e) in entries.iter().enumerate() {
        let closed = e.closed_at.map_or("-".to_owned(), |c| c.to_string());
        let parents = if e.parents.is_empty() {
            "-".to_owned()
        } else {
            e.parents.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
        };
        let times = match (e.opened_ms, e.closed_ms) {
            (Some(opened), closed_ms) => format!(" {opened} {}", closed_ms.map_or("-".to_owned(), |c| c.to_string())),
            (None, _) => String::new(),
        };
        text.push_str(&format!("{i} {} {} {closed} {parents}{times}\n", e.hash_start, e.hash_end));
    }
    let path = dir.join(TOPOLOGY_FILE);
    let tmp = path.with_extension("tmp");
    // Synced: losing the lineage would lose the order between parents and children.
    std::fs::write(&tmp, text)
        .and_then(|()| File::open(&tmp)?.sync_all())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| io_failed(stream, "cannot save its shard lineage", &e))
}
