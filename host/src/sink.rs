//! Sinks: where a stage's results and dead letters end up. A file sink
//! appends JSON lines (or raw payload lines) and flushes after every batch.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use serde_json::{Map, Value, json};

use crate::manifest::FileFormat;
use crate::stream::StoredRecord;
use crate::time::format_ms;

/// A sink failure: the batch is not checkpointed and will be retried.
#[derive(Debug, thiserror::Error)]
#[error("sink `{path}`: {source}")]
pub struct SinkError {
    /// The file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// An append-only JSON-lines file.
pub struct FileSink {
    path: PathBuf,
    format: FileFormat,
    file: Mutex<BufWriter<File>>,
}

impl std::fmt::Debug for FileSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileSink").field("path", &self.path).finish()
    }
}

/// One output record, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct OutRecord<'a> {
    /// Partition key.
    pub key: &'a str,
    /// Event time, ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Payload.
    pub payload: &'a [u8],
    /// The producer of the record it came from (see [`crate::stream::Source`]);
    /// a stream written to keeps it, files do not.
    pub source: Option<&'a crate::stream::Source>,
    /// Its attributes (an aggregator's results say their window and revision);
    /// a stream keeps them, a JSON file has them as `attributes`.
    pub attributes: &'a [(String, String)],
}

impl FileSink {
    /// Opens (creating folders as needed) `path` for appending.
    pub fn open(path: &Path, format: FileFormat) -> Result<Self, SinkError> {
        let err = |source| SinkError { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(err)?;
        Ok(Self { path: path.to_owned(), format, file: Mutex::new(BufWriter::new(file)) })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn write_with(&self, f: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>) -> Result<(), SinkError> {
        let err = |source| SinkError { path: self.path.clone(), source };
        let mut file = self.file.lock().map_err(|_| err(std::io::Error::other("an earlier write panicked")))?;
        f(&mut file).and_then(|()| file.flush()).map_err(err)
    }

    /// Appends records, one line each, and flushes.
    pub fn write(&self, records: &[OutRecord<'_>]) -> Result<(), SinkError> {
        self.write_with(|w| {
            for r in records {
                match self.format {
                    FileFormat::Lines => {
                        w.write_all(r.payload)?;
                        w.write_all(b"\n")?;
                    }
                    FileFormat::Json => {
                        let mut obj = Map::new();
                        obj.insert("key".into(), json!(r.key));
                        obj.insert("event_time".into(), json!(format_ms(r.event_time_ms)));
                        put_data(&mut obj, r.payload);
                        if !r.attributes.is_empty() {
                            let attributes: Map<String, Value> =
                                r.attributes.iter().map(|(n, v)| (n.clone(), json!(v))).collect();
                            obj.insert("attributes".into(), Value::Object(attributes));
                        }
                        serde_json::to_writer(&mut *w, &Value::Object(obj))?;
                        w.write_all(b"\n")?;
                    }
                }
            }
            Ok(())
        })
    }

    /// Appends dead letters, one JSON object per line, and flushes.
    pub fn write_dead_letters(&self, letters: &[DeadLetter<'_>]) -> Result<(), SinkError> {
        self.write_with(|w| {
            for d in letters {
                serde_json::to_writer(&mut *w, &d.to_json())?;
                w.write_all(b"\n")?;
            }
            Ok(())
        })
    }

    /// Flushes and syncs to disk (at shutdown).
    pub fn sync(&self) -> Result<(), SinkError> {
        self.write_with(|w| w.flush().and_then(|()| w.get_ref().sync_data()))
    }
}

/// A record that could not be processed, with why.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// `pipeline`, `stage`, `plugin` (name@version) and the component's SHA-256.
    pub origin: &'a DeadLetterOrigin,
    /// The record as it was read from the stream.
    pub record: &'a StoredRecord,
    /// `processing-failed`, `trap`, `timeout`, `memory-cap`, ...
    pub error_code: &'a str,
    /// What went wrong.
    pub reason: &'a str,
}

/// Where dead letters come from.
#[derive(Debug, Clone)]
pub struct DeadLetterOrigin {
    /// Pipeline name.
    pub pipeline: String,
    /// Stage name.
    pub stage: String,
    /// Input stream.
    pub stream: String,
    /// Plugin name@version.
    pub plugin: String,
    /// Component SHA-256.
    pub plugin_sha256: String,
}

impl DeadLetterOrigin {
    /// The origin of a stage's dead letters.
    pub fn of_stage(pipeline: &str, spec: &crate::manifest::StageSpec, plugin: &str, plugin_sha256: &str) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            stage: spec.name.to_string(),
            stream: spec.input.to_string(),
            plugin: plugin.to_owned(),
            plugin_sha256: plugin_sha256.to_owned(),
        }
    }
}

impl DeadLetter<'_> {
    /// The dead letter as JSON: where the record came from, why it failed, and its data.
    pub fn to_json(&self) -> Value {
        let o = self.origin;
        let mut obj = Map::new();
        obj.insert("pipeline".into(), json!(o.pipeline));
        obj.insert("stage".into(), json!(o.stage));
        obj.insert("plugin".into(), json!(o.plugin));
        obj.insert("plugin_sha256".into(), json!(o.plugin_sha256));
        obj.insert("error_code".into(), json!(self.error_code));
        obj.insert("reason".into(), json!(self.reason));
        obj.insert("stream".into(), json!(o.stream));
        obj.insert("shard".into(), json!(crate::stream::shard_id(self.record.shard)));
        obj.insert("sequence".into(), json!(self.record.sequence.to_string()));
        obj.insert("partition_key".into(), json!(self.record.key));
        obj.insert("event_time".into(), json!(format_ms(self.record.event_time_ms)));
        obj.insert("arrival_time".into(), json!(format_ms(self.record.arrival_ms)));
        obj.insert("failed_at".into(), json!(format_ms(crate::stream::now_ms())));
        put_data(&mut obj, &self.record.data);
        Value::Object(obj)
    }
}

/// Text payloads as `data`, binary ones as `data_base64`.
fn put_data(obj: &mut Map<String, Value>, payload: &[u8]) {
    match std::str::from_utf8(payload) {
        Ok(text) => obj.insert("data".into(), json!(text)),
        Err(_) => obj.insert("data_base64".into(), json!(base64::engine::general_purpose::STANDARD.encode(payload))),
    };
}
