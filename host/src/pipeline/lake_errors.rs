//! A delivery stream's error area as dead letters an operator can act on, with
//! the same verbs as a stage's ([`super::dlq`]): its entries listed and shown,
//! and redriven through the delivery again ([`crate::delivery::redrive`]).
//!
//! The entries are the JSON lines (Firehose's error records) of the objects
//! the delivery wrote under its error prefix, `<delivery>-*.errors[.gz]`: a
//! record it could not deliver (`rawData`, its transform's or the lake's
//! failure), a row the warehouse table refused (`rawData` and `stagedObject`),
//! or a rows object not loaded in time (`stagedObject` alone); a record whose
//! raw backup failed (`Lake.BackupFailed`) is backed up again. An entry taken
//! by a redrive is recorded in `<data-dir>/dead-letter/delivery/<delivery>.redriven`
//! once the redrive's effects are durable, and is not listed again. A crash in
//! between redrives it again: the warehouse's `key` stores its row once.

use std::path::PathBuf;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use super::dlq::{DlqError, Letter, Redrive, Redriven};
use crate::delivery::Delivery;
use crate::delivery::redrive::Again;
use crate::manifest::{DeliverySpec, Pipeline};
use crate::stream::{StoredRecord, shard_id};

/// Entries handed to the delivery per redrive.
const REDRIVE_CHUNK: usize = 500;

/// One entry of the error area: as listed, and what a redrive does with it.
struct Entry {
    letter: Letter,
    again: What,
}

/// What a redrive does with an entry.
enum What {
    /// A record to take through the transform again.
    Record(StoredRecord),
    /// A row to load again.
    Row(Bytes),
    /// A rows object to load again.
    Staged(String),
    /// A record to back up again.
    Backup(Bytes),
}

/// A delivery's pending error entries (only those of `plugin`, its transform's
/// `name@version`, if given), oldest first.
pub fn pending(pipeline: &Pipeline, delivery: &Delivery, plugin: Option<&str>) -> Result<Vec<Letter>, DlqError> {
    Ok(pending_entries(pipeline, delivery, plugin)?.into_iter().map(|e| e.letter).collect())
}

/// Feeds a delivery's pending error entries through it again, in chunks;
/// records each chunk as redriven once what it did is durable.
pub fn redrive(pipeline: &Pipeline, delivery: &Delivery, plugin: Option<&str>) -> Result<Redrive, DlqError> {
    let path = redriven_path(pipeline, &delivery.spec);
    let mut redriven = Redriven::load(&path)?;
    // Listed before the redrive: what fails again is written as new entries, which stay pending.
    let pending = pending_entries(pipeline, delivery, plugin)?;
    let mut done = Redrive::default();
    let name = delivery.spec.name.to_string();
    for chunk in pending.chunks(REDRIVE_CHUNK) {
        let mut again = Again::default();
        for entry in chunk {
            match &entry.again {
                What::Record(record) => again.records.push(record.clone()),
                What::Row(row) => again.rows.push(row.clone()),
                What::Staged(key) => again.staged.push(key.clone()),
                What::Backup(data) => again.backups.push(data.clone()),
            }
        }
        let failed = delivery
            .redrive(again)
            .map_err(|e| DlqError::Delivery { delivery: name.clone(), reason: e.to_string() })?;
        redriven.entries.extend(chunk.iter().map(|e| e.letter.entry.clone()));
        redriven.save(&path)?;
        done.redriven += chunk.len() as u64;
        done.failed_again += failed;
    }
    tracing::info!(delivery = %name, redriven = done.redriven, failed_again = done.failed_again, "error records redriven");
    Ok(done)
}

fn pending_entries(pipeline: &Pipeline, delivery: &Delivery, plugin: Option<&str>) -> Result<Vec<Entry>, DlqError> {
    let redriven = Redriven::load(&redriven_path(pipeline, &delivery.spec))?;
    let entries = entries(delivery)?;
    Ok(entries
        .into_iter()
        .filter(|e| !redriven.entries.contains(&e.letter.entry))
        .filter(|e| plugin.is_none_or(|p| e.letter.plugin == p))
        .collect())
}

/// Where a delivery keeps which error entries were redriven.
fn redriven_path(pipeline: &Pipeline, spec: &DeliverySpec) -> PathBuf {
    pipeline.data_dir.join("dead-letter").join("delivery").join(format!("{}.redriven", spec.name))
}

/// The part of an error prefix before its first expression: where its objects are.
fn error_root(prefix: &str) -> &str {
    prefix.find("!{").map_or(prefix, |at| &prefix[..at])
}

/// Every entry of the delivery's error objects, oldest object first.
fn entries(delivery: &Delivery) -> Result<Vec<Entry>, DlqError> {
    let spec = &delivery.spec;
    let lake = delivery.lake();
    let storage = |e: String| DlqError::Storage(format!("delivery `{}`: {e}", spec.name));
    let keys = crate::io::block_on(lake.list(error_root(&spec.error_prefix)))
        .map_err(|e| storage(e.to_string()))?
        .map_err(|e| storage(e.to_string()))?;
    let own = format!("{}-", spec.name);
    let plugin = spec
        .transform
        .as_ref()
        .map_or_else(String::new, |t| format!("{}@{}", t.plugin.info.name, t.plugin.info.version.get_ref()));
    let stream = spec.source_stream.as_ref().map_or_else(|| spec.name.to_string(), ToString::to_string);
    let mut out = Vec::new();
    for key in keys {
        let file = key.rsplit('/').next().unwrap_or(&key);
        if !file.starts_with(&own) || !(file.ends_with(".errors") || file.ends_with(".errors.gz")) {
            continue;
        }
        let body = crate::io::block_on(lake.get(&key))
            .map_err(|e| storage(e.to_string()))?
            .map_err(|e| storage(format!("reading `{key}`: {e}")))?;
        let body = if key.ends_with(".gz") {
            crate::delivery::redrive::gunzip(&body).map_err(|e| storage(format!("`{key}`: {e}")))?
        } else {
            body
        };
        for (n, line) in body.split(|b| *b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
            let json: Value = serde_json::from_slice(line)
                .map_err(|e| storage(format!("`{key}` line {}: not an error record ({e})", n + 1)))?;
            out.push(entry(format!("{key}#{}", n + 1), &json, &plugin, &stream).map_err(storage)?);
        }
    }
    Ok(out)
}

/// An error record's JSON as an entry.
fn entry(at: String, json: &Value, plugin: &str, stream: &str) -> Result<Entry, String> {
    let number = |key: &str| json[key].as_i64().or_else(|| json[key].as_str().and_then(|s| s.parse().ok()));
    let raw = match json["rawData"].as_str() {
        Some(b64) => Some(Bytes::from(
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| format!("{at}: rawData: {e}"))?,
        )),
        None => None,
    };
    let staged = json["stagedObject"].as_str().map(str::to_owned);
    let arrival = number("arrivalTimestamp").unwrap_or(0);
    let sequence = number("sequenceNumber").map_or(0, |n| n.max(0) as u64);
    let record = StoredRecord {
        shard: 0,
        sequence,
        key: String::new(),
        event_time_ms: arrival,
        arrival_ms: arrival,
        data: raw.clone().unwrap_or_default(),
        source: None,
        attributes: Vec::new(),
    };
    let (again, shown) = match (raw, staged) {
        (Some(data), None) if json["errorCode"] == "Lake.BackupFailed" => (What::Backup(data.clone()), shown(&data)),
        (Some(data), None) => (What::Record(record.clone()), shown(&data)),
        (Some(row), Some(_)) => (What::Row(row.clone()), shown(&row)),
        (None, Some(key)) => (What::Staged(key.clone()), format!("rows object {key}")),
        (None, None) => return Err(format!("{at}: neither rawData nor stagedObject")),
    };
    let text = |key: &str| json[key].as_str().unwrap_or_default().to_owned();
    let letter = Letter {
        entry: at,
        plugin: plugin.to_owned(),
        error_code: text("errorCode"),
        reason: text("errorMessage"),
        failed_at: number("attemptEndingTimestamp").map(crate::time::format_ms).unwrap_or_default(),
        stream: stream.to_owned(),
        shard: shard_id(0),
        sequence: sequence.to_string(),
        partition_key: String::new(),
        event_time: crate::time::format_ms(arrival),
        data: shown,
        record,
    };
    Ok(Entry { letter, again })
}

/// Bytes as text, or `base64:` and the bytes.
fn shown(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text) => text.to_owned(),
        Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(data)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_prefix_is_listed_from_before_its_first_expression() {
        assert_eq!(error_root("errors/!{firehose:error-output-type}/!{timestamp:yyyy/MM/dd}/"), "errors/");
        assert_eq!(error_root("errors/raw/"), "errors/raw/");
    }

    #[test]
    fn each_kind_of_error_record_is_redriven_its_own_way() {
        let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
        let record = serde_json::json!({"errorCode": "Transform.ProcessingFailed", "errorMessage": "bad class",
            "rawData": b64("T1,line"), "arrivalTimestamp": 5, "sequenceNumber": "7", "attemptEndingTimestamp": 9});
        let row = serde_json::json!({"errorCode": "Warehouse.RowRejected", "rawData": b64("{\"a\":1}"),
            "stagedObject": "rows/x"});
        let staged = serde_json::json!({"errorCode": "Warehouse.LoadFailed", "stagedObject": "rows/y", "rows": 3});
        let kinds: Vec<_> =
            [record, row, staged].iter().map(|j| entry("k#1".into(), j, "p@1", "s").expect("an entry").again).collect();
        assert!(matches!(&kinds[0], What::Record(r) if r.sequence == 7 && &r.data[..] == b"T1,line"));
        assert!(matches!(&kinds[1], What::Row(r) if &r[..] == b"{\"a\":1}"));
        assert!(matches!(&kinds[2], What::Staged(k) if k == "rows/y"));
        let broken = serde_json::json!({"errorCode": "X"});
        assert!(entry("k#2".into(), &broken, "", "s").is_err());
    }
}
