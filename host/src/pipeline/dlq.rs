//! Dead letters an operator can act on: a stage's set-aside records listed,
//! shown, and redriven through the stage again once its plugin is fixed.
//!
//! A stage's dead letters are an append-only log: its dead-letter file or
//! sink (JSON lines), or a stream (one JSON record each), every entry a
//! [`DeadLetter`](crate::sink::DeadLetter)'s JSON. An entry is *pending* until
//! a redrive takes it. A redrive hands the pending records to the running
//! stage ([`StageCommand::Redrive`]), which processes them at a batch
//! boundary with the plugin it runs now: what succeeds goes to the stage's
//! output, what fails again is set aside again as a new entry with its new
//! reason and plugin version. Then the entries taken are recorded as redriven
//! in `<data-dir>/dead-letter/<stage>.redriven`, and are not listed again.
//!
//! At least once: that record is written only after the outputs and the new
//! dead letters are durable. A crash in between redrives those entries again;
//! the outputs carry the same ids (a warehouse `key`, notifications'
//! idempotency keys), so consumers that deduplicate see them once, and pending
//! entries are listed once per record (stream, shard, sequence), the newest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::manifest::{DeadLetter, Pipeline, StageSpec};
use crate::stream::{StoredRecord, StreamStore, parse_shard_id, shard_id};
use crate::swap::StageCommand;

/// Records handed to a stage per redrive command.
const REDRIVE_CHUNK: usize = 500;
/// How long a stage may take to redrive one chunk.
const REDRIVE_TIMEOUT: Duration = Duration::from_secs(120);

/// Why dead letters could not be listed or redriven.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// No such stage.
    #[error("pipeline `{pipeline}` has no stage `{stage}`")]
    UnknownStage {
        /// The pipeline.
        pipeline: String,
        /// The stage asked for.
        stage: String,
    },
    /// No such delivery stream.
    #[error("pipeline `{pipeline}` has no delivery stream `{delivery}`")]
    UnknownDelivery {
        /// The pipeline.
        pipeline: String,
        /// The delivery stream asked for.
        delivery: String,
    },
    /// The dead letters or the redrive record could not be read or written.
    #[error("{0}")]
    Storage(String),
    /// The stage did not take the records (stopped, or busy past the timeout);
    /// what was redriven before stays recorded, the rest stays pending.
    #[error("stage `{stage}` did not redrive its dead letters: {reason}")]
    Stage {
        /// The stage.
        stage: String,
        /// Why.
        reason: String,
    },
    /// A delivery stream could not redrive its error records; what was redriven
    /// before stays recorded, the rest stays pending.
    #[error("delivery stream `{delivery}` did not redrive its error records: {reason}")]
    Delivery {
        /// The delivery stream.
        delivery: String,
        /// Why.
        reason: String,
    },
}

/// One pending dead letter.
#[derive(Debug, Clone, Serialize)]
pub struct Letter {
    /// Where it is in the dead-letter log: `line:<n>` of a file, `<shard>:<sequence>` of a stream.
    pub entry: String,
    /// The plugin version that set it aside (`name@version`).
    pub plugin: String,
    /// `processing-failed`, `trap`, `timeout`, ...
    pub error_code: String,
    /// Why.
    pub reason: String,
    /// When it was set aside (RFC 3339).
    pub failed_at: String,
    /// The stream it was read from.
    pub stream: String,
    /// Its shard and sequence number there.
    pub shard: String,
    /// Its position in the shard.
    pub sequence: String,
    /// Its partition key.
    pub partition_key: String,
    /// Its event time (RFC 3339).
    pub event_time: String,
    /// Its payload as text, or `base64:` and the bytes.
    pub data: String,
    #[serde(skip)]
    pub(super) record: StoredRecord,
}

/// What a redrive did.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Redrive {
    /// Pending dead letters fed through the stage again.
    pub redriven: u64,
    /// Of those, the ones set aside again (each a new pending dead letter with its new reason).
    pub failed_again: u64,
}

/// A stage's pending dead letters, oldest first; `plugin` keeps only those a
/// plugin version (`name@version`) set aside.
pub fn pending(
    pipeline: &Pipeline,
    streams: &dyn StreamStore,
    stage: &StageSpec,
    plugin: Option<&str>,
) -> Result<Vec<Letter>, DlqError> {
    let redriven = Redriven::load(&redriven_path(pipeline, stage))?;
    Ok(pending_of(letters(pipeline, streams, stage)?, &redriven, plugin))
}

/// Feeds a stage's pending dead letters (those `plugin` set aside, if given)
/// through the stage again, in chunks; records each chunk as redriven once the
/// stage has made its effects durable.
pub fn redrive(
    pipeline: &Pipeline,
    streams: &dyn StreamStore,
    stage: &StageSpec,
    handle: &crate::stage::StageHandle,
    plugin: Option<&str>,
) -> Result<Redrive, DlqError> {
    let path = redriven_path(pipeline, stage);
    let mut redriven = Redriven::load(&path)?;
    // Read before the redrive: the entries it writes for records that fail again stay pending.
    let all = letters(pipeline, streams, stage)?;
    let pending = pending_of(all.clone(), &redriven, plugin);
    let mut done = Redrive::default();
    for chunk in pending.chunks(REDRIVE_CHUNK) {
        let records: Vec<StoredRecord> = chunk.iter().map(|l| l.record.clone()).collect();
        let before = handle.stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed);
        handle
            .command(StageCommand::Redrive(records), REDRIVE_TIMEOUT)
            .map_err(|reason| DlqError::Stage { stage: stage.name.to_string(), reason })?;
        let after = handle.stats.dead_lettered.load(std::sync::atomic::Ordering::Relaxed);
        // Every entry of a record redriven is done with, older failures of it included.
        let ids: BTreeSet<(&str, u32, u64)> = chunk.iter().map(Letter::record_id).collect();
        redriven.entries.extend(all.iter().filter(|l| ids.contains(&l.record_id())).map(|l| l.entry.clone()));
        redriven.save(&path)?;
        done.redriven += chunk.len() as u64;
        done.failed_again += after.saturating_sub(before);
    }
    tracing::info!(stage = %stage.name, redriven = done.redriven, failed_again = done.failed_again, "dead letters redriven");
    Ok(done)
}

/// The letters not redriven yet, one per record (its newest), oldest first;
/// with `plugin`, only those that version set aside.
fn pending_of(letters: Vec<Letter>, redriven: &Redriven, plugin: Option<&str>) -> Vec<Letter> {
    let mut newest: BTreeMap<(String, u32, u64), Letter> = BTreeMap::new();
    let mut order = Vec::new();
    for letter in letters.into_iter().filter(|l| !redriven.entries.contains(&l.entry)) {
        let (stream, shard, sequence) = letter.record_id();
        let id = (stream.to_owned(), shard, sequence);
        if newest.insert(id.clone(), letter).is_none() {
            order.push(id);
        }
    }
    order.into_iter().filter_map(|id| newest.remove(&id)).filter(|l| plugin.is_none_or(|p| l.plugin == p)).collect()
}

/// Every entry of a stage's dead-letter log as a letter, oldest first.
fn letters(pipeline: &Pipeline, streams: &dyn StreamStore, stage: &StageSpec) -> Result<Vec<Letter>, DlqError> {
    entries(pipeline, streams, stage)?.into_iter().map(|(entry, json)| letter(entry, &json)).collect()
}

impl Letter {
    /// The record it holds: its stream, shard and position.
    fn record_id(&self) -> (&str, u32, u64) {
        (self.stream.as_str(), self.record.shard, self.record.sequence)
    }
}

/// Where a stage keeps which dead-letter entries were redriven.
fn redriven_path(pipeline: &Pipeline, stage: &StageSpec) -> PathBuf {
    pipeline.data_dir.join("dead-letter").join(format!("{}.redriven", stage.name))
}

/// Every entry of a stage's dead-letter log, oldest first: where it is, and its JSON.
fn entries(
    pipeline: &Pipeline,
    streams: &dyn StreamStore,
    stage: &StageSpec,
) -> Result<Vec<(String, Value)>, DlqError> {
    let file = match &stage.dead_letter {
        DeadLetter::File(path) => path.clone(),
        DeadLetter::Sink(name) => match pipeline.sinks.iter().find(|s| &s.name == name) {
            Some(sink) => sink.path.clone(),
            None => return Err(DlqError::Storage(format!("stage `{}`: no sink `{name}`", stage.name))),
        },
        DeadLetter::Stream(name) => return stream_entries(streams, name.as_str()),
    };
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(DlqError::Storage(format!("cannot read the dead letters in {}: {e}", file.display()))),
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let json = serde_json::from_str(line)
            .map_err(|e| DlqError::Storage(format!("{} line {}: not a dead letter ({e})", file.display(), n + 1)))?;
        out.push((format!("line:{}", n + 1), json));
    }
    Ok(out)
}

/// The entries of a dead-letter stream: every record kept, shard by shard.
fn stream_entries(streams: &dyn StreamStore, stream: &str) -> Result<Vec<(String, Value)>, DlqError> {
    let storage = |e: crate::stream::StreamError| DlqError::Storage(format!("dead-letter stream `{stream}`: {e}"));
    let info = streams.info(stream).map_err(storage)?;
    let mut out = Vec::new();
    for shard in &info.shards {
        let mut at = shard.oldest;
        while at < shard.end {
            let records = streams.read(stream, shard.index, at, 1000).map_err(storage)?;
            let Some(last) = records.last() else { break };
            at = last.sequence + 1;
            for r in records {
                let json = serde_json::from_slice(&r.data).map_err(|e| {
                    DlqError::Storage(format!(
                        "dead-letter stream `{stream}` {}:{}: not a dead letter ({e})",
                        shard_id(r.shard),
                        r.sequence
                    ))
                })?;
                out.push((format!("{}:{}", shard_id(r.shard), r.sequence), json));
            }
        }
    }
    Ok(out)
}

/// A dead letter's JSON as a pending letter, its record rebuilt as it was read.
fn letter(entry: String, json: &Value) -> Result<Letter, DlqError> {
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    let bad = |what: &str| DlqError::Storage(format!("dead letter {entry}: {what}"));
    let shard = json["shard"].as_str().and_then(parse_shard_id).ok_or_else(|| bad("no `shard`"))?;
    let sequence = json["sequence"].as_str().and_then(|s| s.parse().ok()).ok_or_else(|| bad("no `sequence`"))?;
    let time = |key: &str| {
        humantime::parse_rfc3339_weak(json[key].as_str().unwrap_or_default())
            .map(crate::time::system_ms)
            .map_err(|e| bad(&format!("`{key}`: {e}")))
    };
    let (data, shown) = match (json["data"].as_str(), json["data_base64"].as_str()) {
        (Some(text), _) => (Bytes::from(text.to_owned()), text.to_owned()),
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| bad(&e.to_string()))?;
            (Bytes::from(bytes), format!("base64:{b64}"))
        }
        (None, None) => return Err(bad("no `data` or `data_base64`")),
    };
    let record = StoredRecord {
        shard,
        sequence,
        key: text("partition_key"),
        event_time_ms: time("event_time")?,
        arrival_ms: time("arrival_time")?,
        data,
        source: None,
        attributes: Vec::new(),
    };
    Ok(Letter {
        entry,
        plugin: text("plugin"),
        error_code: text("error_code"),
        reason: text("reason"),
        failed_at: text("failed_at"),
        stream: text("stream"),
        shard: shard_id(shard),
        sequence: sequence.to_string(),
        partition_key: record.key.clone(),
        event_time: text("event_time"),
        data: shown,
        record,
    })
}

/// The dead-letter entries a stage has redriven.
#[derive(Debug, Default)]
pub(super) struct Redriven {
    pub(super) entries: BTreeSet<String>,
}

impl Redriven {
    /// What `path` holds; nothing if it does not exist yet. An unreadable file
    /// is an error, never an empty set (that would redrive everything again).
    pub(super) fn load(path: &Path) -> Result<Redriven, DlqError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(|entries| Redriven { entries })
                .map_err(|e| DlqError::Storage(format!("{} is damaged ({e}): fix or remove it", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Redriven::default()),
            Err(e) => Err(DlqError::Storage(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Replaces `path` with this, durably (a new file synced, then renamed over it).
    pub(super) fn save(&self, path: &Path) -> Result<(), DlqError> {
        let failed =
            |e: std::io::Error| DlqError::Storage(format!("cannot record the redrive in {}: {e}", path.display()));
        let bytes = serde_json::to_vec(&self.entries).map_err(|e| failed(std::io::Error::other(e)))?;
        crate::io::write_durably(path, &bytes).map_err(failed)
    }
}
