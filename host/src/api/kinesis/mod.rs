//! The Kinesis Data Streams JSON 1.1 protocol (`POST /`, `X-Amz-Target:
//! Kinesis_20131202.<Operation>`), so the AWS SDKs and CLI work unchanged.
//! Errors are AWS-shaped: `{"__type": "...", "message": "..."}`.
//!
//! A stream's shards split the 128-bit hash key range evenly; a record goes to
//! the shard owning the MD5 of its partition key (or its `ExplicitHashKey`).
//! Shard iterators are signed tokens that expire after five minutes; sequence
//! numbers are shaped as Kinesis's ([`sequence`]).

mod control;
mod sequence;
mod shards;
mod subscribe;

pub use control::Control;
pub(super) use subscribe::subscribe;

use std::time::Duration;

use axum::body::Bytes;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::aws::{AwsError, PutResult, check_name, parse_body};
use super::native::MAX_RECORDS_PER_PUT;
use crate::access::Caller;
use crate::names::NameKind;
use crate::pipeline::{Host, Producer};
use crate::stream::{
    MAX_SHARDS, NewRecord, ShardInfo, Source, StreamInfo, StreamSettings, StreamStore, now_ms, parse_shard_id, shard_id,
};
use sequence::Sequences;

/// Shard iterators expire after this long, as in Kinesis.
pub const ITERATOR_TTL: Duration = Duration::from_secs(300);
/// Most records one `GetRecords` returns, as in Kinesis.
const MAX_GET_RECORDS: usize = 10_000;

/// Runs one Kinesis operation for `caller`, if its policy allows it; the answer is JSON text.
/// `source` names the producer of the records a put carries (weir's `X-Weir-Source` header).
pub(super) fn call(
    host: &Host,
    caller: &Caller,
    secret: [u8; 32],
    control: &Control,
    operation: &str,
    body: &[u8],
    source: Option<Source>,
) -> Result<String, AwsError> {
    let args: Args<'_> = parse_body(body)?;
    caller.may(&format!("kinesis:{operation}"), &resource(secret, operation, &args)?)?;
    match operation {
        "PutRecords" => put_records(host, &args, source),
        _ => answer(host, secret, control, operation, &args, source).map(|v| v.to_string()),
    }
}

/// What a request acts on, for the audit log (`?` if the body does not say).
pub(super) fn resource_of(secret: [u8; 32], operation: &str, body: &[u8]) -> String {
    parse_body::<Args<'_>>(body).and_then(|args| resource(secret, operation, &args)).unwrap_or_else(|_| "?".into())
}

/// What an operation acts on, for the caller's policy: `stream/<name>`, or `*`
/// for the calls about every stream.
fn resource(secret: [u8; 32], operation: &str, args: &Args<'_>) -> Result<String, AwsError> {
    let stream = match operation {
        "ListStreams" | "DescribeLimits" => return Ok("*".into()),
        "GetRecords" => {
            let token = args.shard_iterator.as_deref().ok_or_else(|| AwsError::invalid("ShardIterator is required"))?;
            open_iterator(secret, token, now_ms())?.stream
        }
        "ListShards" if args.next_token.is_some() => shards::listed_stream(args)?,
        // These act on the stream their consumer is addressed by (a ConsumerARN, or
        // StreamARN and ConsumerName); every other operation on its StreamName or
        // StreamARN, whatever else the body carries.
        "RegisterStreamConsumer" | "DescribeStreamConsumer" | "DeregisterStreamConsumer" => {
            control::operations::addressed(args)?.0
        }
        // Unknown operations too: the policy decides before the answer says it is unknown.
        _ if args.stream_name.is_none() && args.stream_arn.is_none() => return Ok("*".into()),
        _ => args.stream_name()?.to_owned(),
    };
    Ok(format!("stream/{stream}"))
}

fn answer(
    host: &Host,
    secret: [u8; 32],
    control: &Control,
    operation: &str,
    args: &Args<'_>,
    source: Option<Source>,
) -> Result<Value, AwsError> {
    use control::operations;
    let streams = host.streams();
    match operation {
        "CreateStream" => {
            let name = args.stream_name()?;
            let shards = args.shard_count.unwrap_or(1);
            shard_count("ShardCount", shards)?;
            if let Some(tags) = &args.tags {
                operations::check_tags(tags)?;
            }
            streams.create(StreamSettings {
                name: name.to_owned(),
                retention: crate::stream::DEFAULT_RETENTION,
                shards: shards as u32,
            })?;
            let info = streams.info(name)?;
            control.update(name, info.created_ms, |kept| {
                kept.tags = args.tags.clone().unwrap_or_default();
                kept.mode = args.stream_mode_details.as_ref().map(|m| m.stream_mode).unwrap_or_default();
                Ok(())
            })?;
            Ok(json!({}))
        }
        "DeleteStream" => {
            let name = args.stream_name()?;
            streams.delete(name)?;
            control.forget(name)?;
            Ok(json!({}))
        }
        "ListStreams" => {
            let names = streams.list();
            let limit = args.limit.unwrap_or(100).clamp(1, 10_000);
            let after = args.exclusive_start_stream_name.as_deref().unwrap_or("");
            let page: Vec<&String> = names.iter().filter(|n| n.as_str() > after).take(limit).collect();
            let more = names.iter().filter(|n| n.as_str() > after).count() > page.len();
            let mut summaries: Vec<Value> = Vec::new();
            for info in page.iter().filter_map(|n| streams.info(n).ok()) {
                let mode = control.get(&info.name, info.created_ms)?.mode;
                summaries.push(json!({"StreamName": info.name, "StreamARN": arn(&info.name), "StreamStatus": "ACTIVE",
                    "StreamModeDetails": {"StreamMode": operations::mode_name(mode)},
                    "StreamCreationTimestamp": info.created_ms as f64 / 1000.0}));
            }
            Ok(json!({"StreamNames": page, "HasMoreStreams": more, "StreamSummaries": summaries}))
        }
        "DescribeStream" => {
            let info = streams.info(args.stream_name()?)?;
            let mut description = summary(&info);
            operations::describe(control, &info, &mut description)?;
            let numbers = Sequences::of(&info.name, info.created_ms);
            let limit = args.limit.unwrap_or(100).clamp(1, 10_000);
            let after = args.exclusive_start_shard_id.as_deref().map(shards::shard_index).transpose()?;
            let rest: Vec<_> = info.shards.iter().filter(|s| after.is_none_or(|a| s.index > a)).collect();
            description["Shards"] =
                json!(rest.iter().take(limit).map(|s| shards::shard(s, numbers)).collect::<Vec<_>>());
            description["HasMoreShards"] = json!(rest.len() > limit);
            Ok(json!({"StreamDescription": description}))
        }
        "DescribeStreamSummary" => {
            let info = streams.info(args.stream_name()?)?;
            let mut description = summary(&info);
            operations::describe(control, &info, &mut description)?;
            description["OpenShardCount"] = json!(info.shards.iter().filter(|s| s.closed_at.is_none()).count());
            description["ConsumerCount"] = json!(operations::consumer_count(control, &info)?);
            Ok(json!({"StreamDescriptionSummary": description}))
        }
        "ListShards" => shards::list_shards(streams.as_ref(), args),
        "UpdateShardCount" | "SplitShard" | "MergeShards" => shards::reshard(streams.as_ref(), operation, args),
        "AddTagsToStream" | "ListTagsForStream" | "RemoveTagsFromStream" => {
            operations::tags(control, streams.as_ref(), operation, args)
        }
        "UpdateStreamMode" | "StartStreamEncryption" | "StopStreamEncryption" => {
            operations::settings(control, streams.as_ref(), operation, args)
        }
        "RegisterStreamConsumer" | "DescribeStreamConsumer" | "ListStreamConsumers" | "DeregisterStreamConsumer" => {
            operations::consumers(control, streams.as_ref(), operation, args)
        }
        "DescribeLimits" => {
            let mut open = 0;
            let mut on_demand = 0;
            for info in streams.list().iter().filter_map(|n| streams.info(n).ok()) {
                open += info.shards.iter().filter(|s| s.closed_at.is_none()).count();
                if control.get(&info.name, info.created_ms)?.mode == control::StreamMode::OnDemand {
                    on_demand += 1;
                }
            }
            Ok(json!({"ShardLimit": MAX_SHARDS, "OpenShardCount": open, "OnDemandStreamCount": on_demand,
                "OnDemandStreamCountLimit": 50}))
        }
        "IncreaseStreamRetentionPeriod" | "DecreaseStreamRetentionPeriod" => {
            let name = args.stream_name()?;
            let hours =
                args.retention_period_hours.ok_or_else(|| AwsError::invalid("RetentionPeriodHours is required"))?;
            if !(24..=8760).contains(&hours) {
                return Err(AwsError::invalid(format!("RetentionPeriodHours {hours} must be between 24 and 8760")));
            }
            let current = streams.info(name)?.retention.as_secs() / 3600;
            let increase = operation.starts_with("Increase");
            if (increase && hours < current) || (!increase && hours > current) {
                return Err(AwsError::invalid(format!(
                    "RetentionPeriodHours {hours} would {} the current {current}",
                    if increase { "decrease" } else { "increase" }
                )));
            }
            streams.set_retention(name, Duration::from_secs(hours * 3600))?;
            Ok(json!({}))
        }
        "PutRecord" => {
            let name = args.stream_name()?;
            let mut record =
                new_record(args.data.as_deref(), args.partition_key.as_deref(), args.explicit_hash_key.as_deref())?;
            record.source = source;
            let appended = host.put(name, vec![record], Producer::Kinesis)?;
            let a = appended.into_iter().next().ok_or_else(|| AwsError::invalid("nothing appended"))??;
            let numbers = sequences(host, name)?;
            Ok(
                json!({"ShardId": shard_id(a.shard), "SequenceNumber": numbers.number(a.shard, a.sequence), "EncryptionType": "NONE"}),
            )
        }
        "GetShardIterator" => {
            let name = args.stream_name()?;
            let id = args.shard_id.as_deref().ok_or_else(|| AwsError::invalid("ShardId is required"))?;
            let info = streams.info(name)?;
            let shard = find_shard(&info, id)?;
            let start = Start {
                kind: args.shard_iterator_type.as_deref(),
                kind_field: "ShardIteratorType",
                number: args.starting_sequence_number.as_deref(),
                number_field: "StartingSequenceNumber",
                timestamp: args.timestamp.as_ref(),
            };
            let position = start.position(streams.as_ref(), &info, shard)?;
            Ok(
                json!({"ShardIterator": iterator(secret, &Position { stream: name.to_owned(), shard: shard.index, position }, now_ms())}),
            )
        }
        "GetRecords" => {
            let token = args.shard_iterator.as_deref().ok_or_else(|| AwsError::invalid("ShardIterator is required"))?;
            let at = open_iterator(secret, token, now_ms())?;
            let limit = args.limit.unwrap_or(MAX_GET_RECORDS);
            if limit == 0 || limit > MAX_GET_RECORDS {
                return Err(AwsError::invalid(format!("Limit must be between 1 and {MAX_GET_RECORDS}")));
            }
            let info = streams.info(&at.stream)?;
            let shard =
                info.shards.get(at.shard as usize).ok_or_else(|| AwsError::invalid("the iterator's shard is gone"))?;
            let read = Read::from(streams.as_ref(), &info, shard, at.position, limit)?;
            // A closed shard read to its end has no next iterator: its children go on.
            if let Some(children) = read.children {
                return Ok(json!({"Records": read.records, "MillisBehindLatest": 0, "ChildShards": children}));
            }
            let next = Position { position: read.next, ..at };
            Ok(json!({"Records": read.records, "NextShardIterator": iterator(secret, &next, now_ms()),
                "MillisBehindLatest": read.behind_ms}))
        }
        other => Err(AwsError::new("UnknownOperationException", format!("operation {other} is not supported"))),
    }
}

fn put_records(host: &Host, args: &Args<'_>, source: Option<Source>) -> Result<String, AwsError> {
    let name = args.stream_name()?;
    let entries = args.records.as_deref().ok_or_else(|| AwsError::invalid("Records is required"))?;
    if entries.is_empty() || entries.len() > MAX_RECORDS_PER_PUT {
        return Err(AwsError::invalid(format!("Records must hold 1 to {MAX_RECORDS_PER_PUT} entries")));
    }
    // A malformed entry refuses the whole request, as in Kinesis; only the
    // store's answers (throttling, failures) are per entry.
    let mut good = Vec::with_capacity(entries.len());
    for (i, e) in entries.iter().enumerate() {
        let mut r = new_record(e.data.as_deref(), e.partition_key.as_deref(), e.explicit_hash_key.as_deref()).map_err(
            |mut err| {
                err.message = format!("Records.{i}: {}", err.message);
                err
            },
        )?;
        r.source = e.weir_source.as_deref().map(Source::from).or_else(|| source.clone());
        good.push(r);
    }
    let appended = host.put(name, good, Producer::Kinesis)?;
    let numbers = sequences(host, name)?;
    let results: Vec<PutResult> = appended
        .into_iter()
        .map(|result| match result {
            Ok(a) => {
                PutResult::Stored { shard_id: shard_id(a.shard), sequence_number: numbers.number(a.shard, a.sequence) }
            }
            Err(e) => PutResult::from(AwsError::from(e)),
        })
        .collect();
    let failed = results.iter().filter(|r| matches!(r, PutResult::Failed { .. })).count();
    let answer = PutRecordsAnswer { failed_record_count: failed, records: results, encryption_type: "NONE" };
    serde_json::to_string(&answer).map_err(|e| AwsError::new("InternalFailure", e.to_string()))
}

/// The answer of `PutRecords`, serialized without an intermediate JSON tree.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PutRecordsAnswer {
    failed_record_count: usize,
    records: Vec<PutResult>,
    encryption_type: &'static str,
}

/// Request fields of every operation, all optional; each operation checks what it needs.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Args<'a> {
    stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    stream_arn: Option<String>,
    shard_count: Option<u64>,
    limit: Option<usize>,
    exclusive_start_stream_name: Option<String>,
    next_token: Option<String>,
    retention_period_hours: Option<u64>,
    data: Option<String>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    #[serde(borrow)]
    records: Option<Vec<Entry<'a>>>,
    shard_id: Option<String>,
    shard_iterator_type: Option<String>,
    starting_sequence_number: Option<String>,
    timestamp: Option<Value>,
    shard_iterator: Option<String>,
    target_shard_count: Option<u64>,
    scaling_type: Option<String>,
    tags: Option<std::collections::BTreeMap<String, String>>,
    tag_keys: Option<Vec<String>>,
    exclusive_start_tag_key: Option<String>,
    stream_mode_details: Option<ModeDetails>,
    encryption_type: Option<String>,
    key_id: Option<String>,
    shard_to_split: Option<String>,
    new_starting_hash_key: Option<String>,
    shard_to_merge: Option<String>,
    adjacent_shard_to_merge: Option<String>,
    consumer_name: Option<String>,
    #[serde(rename = "ConsumerARN")]
    consumer_arn: Option<String>,
    max_results: Option<usize>,
    exclusive_start_shard_id: Option<String>,
    shard_filter: Option<ShardFilter>,
    starting_position: Option<StartingPosition>,
}

/// `SubscribeToShard`'s `StartingPosition`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StartingPosition {
    #[serde(rename = "Type")]
    kind: String,
    sequence_number: Option<String>,
    timestamp: Option<Value>,
}

/// `StreamModeDetails`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ModeDetails {
    stream_mode: control::StreamMode,
}

/// `ListShards`'s `ShardFilter`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ShardFilter {
    #[serde(rename = "Type")]
    kind: String,
    shard_id: Option<String>,
    timestamp: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    /// Base64 has no escapes: borrowed from the request body.
    #[serde(borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
    partition_key: Option<String>,
    explicit_hash_key: Option<String>,
    /// weir's own (AWS has no such field): the producer of this entry's record,
    /// for a put that carries several producers' records in their order. It
    /// takes the place of the `X-Weir-Source` header for this entry.
    weir_source: Option<String>,
}

impl Args<'_> {
    /// The stream named by `StreamName` or `StreamARN`, checked by the stream name rule.
    fn stream_name(&self) -> Result<&str, AwsError> {
        let (field, name) = match (&self.stream_name, &self.stream_arn) {
            (Some(name), _) => ("StreamName", name.as_str()),
            (None, Some(arn)) => {
                let name = arn.rsplit_once(":stream/").map(|(_, n)| n).ok_or_else(|| {
                    AwsError::new(
                        "ValidationException",
                        "StreamARN must look like arn:aws:kinesis:<region>:<account>:stream/<name>",
                    )
                })?;
                ("StreamARN", name)
            }
            (None, None) => return Err(AwsError::invalid("StreamName (or StreamARN) is required")),
        };
        check_name(NameKind::Stream, field, name)?;
        Ok(name)
    }
}

fn new_record(data: Option<&str>, key: Option<&str>, explicit_hash_key: Option<&str>) -> Result<NewRecord, AwsError> {
    let key = key.ok_or_else(|| AwsError::new("ValidationException", "PartitionKey is required"))?;
    if key.is_empty() {
        return Err(AwsError::new("ValidationException", "PartitionKey must not be empty"));
    }
    let explicit_hash_key = match explicit_hash_key {
        None => None,
        Some(h) => Some(h.parse::<u128>().ok().filter(|_| h.bytes().all(|b| b.is_ascii_digit())).ok_or_else(|| {
            AwsError::invalid(format!("ExplicitHashKey `{h}` is not a decimal between 0 and 2^128-1"))
        })?),
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(data.ok_or_else(|| AwsError::new("ValidationException", "Data is required"))?)
        .map_err(|e| AwsError::new("SerializationException", format!("Data is not base64: {e}")))?;
    Ok(NewRecord {
        source: None,
        key: key.to_owned(),
        event_time_ms: None,
        data: Bytes::from(data),
        explicit_hash_key,
        attributes: Vec::new(),
    })
}

fn arn(name: &str) -> String {
    format!("arn:aws:kinesis:us-east-1:000000000000:stream/{name}")
}

fn summary(info: &StreamInfo) -> Value {
    json!({
        "StreamName": info.name,
        "StreamARN": arn(&info.name),
        "StreamStatus": "ACTIVE",
        "StreamModeDetails": {"StreamMode": "PROVISIONED"},
        "RetentionPeriodHours": info.retention.as_secs() / 3600,
        "StreamCreationTimestamp": info.created_ms as f64 / 1000.0,
        "EnhancedMonitoring": [{"ShardLevelMetrics": []}],
        "EncryptionType": "NONE",
    })
}

/// What one read of a shard gives a Kinesis reader (`GetRecords`, `SubscribeToShard`).
struct Read {
    /// The records, as Kinesis shows them.
    records: Vec<Value>,
    /// The position after them.
    next: u64,
    /// How far the last record is behind the shard's newest (0 when it is the newest).
    behind_ms: i64,
    /// The shard's children, once a closed shard has been read to its end.
    children: Option<Vec<Value>>,
}

impl Read {
    /// Up to `limit` records of `shard` from `position` (or its oldest, if retention dropped that).
    fn from(
        streams: &dyn StreamStore,
        info: &StreamInfo,
        shard: &ShardInfo,
        position: u64,
        limit: usize,
    ) -> Result<Read, AwsError> {
        let from = position.max(shard.oldest);
        let stored = streams.read(&info.name, shard.index, from, limit)?;
        let numbers = Sequences::of(&info.name, info.created_ms);
        let next = stored.last().map_or(from, |r| r.sequence + 1);
        let behind_ms = stored.last().filter(|_| next < shard.end).map_or(0, |r| (now_ms() - r.arrival_ms).max(0));
        let records = stored
            .iter()
            .map(|r| {
                json!({
                    "SequenceNumber": numbers.number(r.shard, r.sequence),
                    "ApproximateArrivalTimestamp": r.arrival_ms as f64 / 1000.0,
                    "Data": base64::engine::general_purpose::STANDARD.encode(&r.data),
                    "PartitionKey": r.key,
                })
            })
            .collect();
        let children = shard.closed_at.filter(|end| next >= *end).map(|_| {
            info.shards
                .iter()
                .filter(|s| s.parents.contains(&shard.index))
                .map(|s| {
                    json!({"ShardId": shard_id(s.index),
                        "ParentShards": s.parents.iter().map(|p| shard_id(*p)).collect::<Vec<_>>(),
                        "HashKeyRange": {"StartingHashKey": s.hash_start.to_string(), "EndingHashKey": s.hash_end.to_string()}})
                })
                .collect()
        });
        Ok(Read { records, next, behind_ms, children })
    }
}

/// The shard of `info` named `id`.
fn find_shard<'a>(info: &'a StreamInfo, id: &str) -> Result<&'a ShardInfo, AwsError> {
    parse_shard_id(id).and_then(|i| info.shards.get(i as usize)).ok_or_else(|| {
        AwsError::new("ResourceNotFoundException", format!("Shard {id} in stream {} not found.", info.name))
    })
}

/// Where a reader starts in a shard: `GetShardIterator`'s iterator type, or
/// `SubscribeToShard`'s starting position, with their number or time.
struct Start<'a> {
    kind: Option<&'a str>,
    kind_field: &'a str,
    number: Option<&'a str>,
    number_field: &'a str,
    timestamp: Option<&'a Value>,
}

impl Start<'_> {
    fn position(&self, streams: &dyn StreamStore, info: &StreamInfo, shard: &ShardInfo) -> Result<u64, AwsError> {
        let numbers = Sequences::of(&info.name, info.created_ms);
        let number =
            |kind: &str| self.number.ok_or_else(|| AwsError::invalid(format!("{kind} needs a {}", self.number_field)));
        let position = match self.kind {
            Some("TRIM_HORIZON") => shard.oldest,
            Some("LATEST") => shard.end,
            Some("AT_SEQUENCE_NUMBER") => numbers.at(self.number_field, number("AT_SEQUENCE_NUMBER")?, shard.index)?,
            Some("AFTER_SEQUENCE_NUMBER") => {
                numbers.after(self.number_field, number("AFTER_SEQUENCE_NUMBER")?, shard.index)?
            }
            Some("AT_TIMESTAMP") => {
                let seconds = self
                    .timestamp
                    .and_then(timestamp_seconds)
                    .ok_or_else(|| AwsError::invalid("AT_TIMESTAMP needs Timestamp (seconds since the epoch)"))?;
                let ms = (seconds * 1000.0) as i64;
                let now = now_ms();
                if ms > now {
                    return Err(AwsError::invalid(format!(
                        "Timestamp {ms} ms is after the current time {now} ms: an AT_TIMESTAMP position must not \
                         be in the future"
                    )));
                }
                streams.position_at_time(&info.name, shard.index, ms)?
            }
            other => {
                return Err(AwsError::invalid(format!(
                    "{} {other:?} is not one of TRIM_HORIZON, LATEST, AT_SEQUENCE_NUMBER, AFTER_SEQUENCE_NUMBER, \
                     AT_TIMESTAMP",
                    self.kind_field
                )));
            }
        };
        Ok(position.min(shard.end))
    }
}

/// A stream's shard count: at least 1 (`ValidationException`) and at most weir's
/// limit (`LimitExceededException`, as Kinesis answers going over an account's).
fn shard_count(field: &str, count: u64) -> Result<(), AwsError> {
    if count == 0 {
        return Err(AwsError::new("ValidationException", format!("{field} must be at least 1")));
    }
    if count > u64::from(MAX_SHARDS) {
        return Err(AwsError::new(
            "LimitExceededException",
            format!("{field} {count} is over the limit of {MAX_SHARDS} open shards per stream"),
        ));
    }
    Ok(())
}

/// The sequence numbers of stream `name` (a put's answer: its shards are not looked at).
fn sequences(host: &Host, name: &str) -> Result<Sequences, AwsError> {
    Ok(Sequences::of(name, host.streams().created_ms(name)?))
}

/// AWS clients send timestamps as epoch seconds (a number) or text.
fn timestamp_seconds(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .parse()
            .ok()
            .or_else(|| humantime::parse_rfc3339_weak(s).ok().map(|t| crate::time::system_ms(t) as f64 / 1000.0)),
        _ => None,
    }
}

/// Where a shard iterator points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Position {
    stream: String,
    shard: u32,
    position: u64,
}

/// An opaque iterator: the stream, shard, position and when it was issued,
/// signed with HMAC-SHA256 under the host's secret so that a client cannot
/// forge one for another position or extend its life: `base64url(body) . base64url(tag)`.
fn iterator(secret: [u8; 32], at: &Position, issued_ms: i64) -> String {
    let body = format!("{issued_ms}:{}:{}:{}", at.shard, at.position, at.stream);
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!("{}.{}", b64.encode(&body), b64.encode(crate::sigv4::hmac(&secret, body.as_bytes())))
}

fn open_iterator(secret: [u8; 32], token: &str, now: i64) -> Result<Position, AwsError> {
    let invalid = || AwsError::invalid("ShardIterator is not one weir issued");
    let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (body, tag) = token.split_once('.').ok_or_else(invalid)?;
    let (body, tag) = (b64.decode(body).map_err(|_| invalid())?, b64.decode(tag).map_err(|_| invalid())?);
    if !crate::sigv4::hmac_matches(&secret, &body, &tag) {
        return Err(invalid());
    }
    let body = String::from_utf8(body).map_err(|_| invalid())?;
    let mut parts = body.splitn(4, ':');
    let issued: i64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let shard: u32 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let position: u64 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    let stream = parts.next().ok_or_else(invalid)?.to_owned();
    if now - issued > ITERATOR_TTL.as_millis() as i64 {
        return Err(AwsError::new(
            "ExpiredIteratorException",
            format!(
                "Iterator expired. The iterator was created at time {issued} while right now it is {now} which is further in the future than the tolerated delay of 300000 milliseconds."
            ),
        ));
    }
    Ok(Position { stream, shard, position })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iterators_round_trip_expire_and_cannot_be_forged() {
        let secret = [7u8; 32];
        let at = Position { stream: "toll-lines".into(), shard: 3, position: 42 };
        let it = iterator(secret, &at, 1_000);
        assert_eq!(open_iterator(secret, &it, 2_000).map_err(|e| e.kind), Ok(at));
        let expired = open_iterator(secret, &it, 1_000 + 300_001).expect_err("expired");
        assert_eq!(expired.kind, "ExpiredIteratorException");
        assert!(open_iterator([8u8; 32], &it, 2_000).is_err(), "another host's secret");
        // Another position under the signature of this one: refused.
        let b64 = &base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (_, tag) = it.split_once('.').expect("body.tag");
        let forged = format!("{}.{tag}", b64.encode("1000:3:43:toll-lines"));
        assert_eq!(open_iterator(secret, &forged, 2_000).map_err(|e| e.kind), Err("InvalidArgumentException"));
        // The old scheme's truncated SHA-256 of secret and body: refused too.
        let truncated = {
            use sha2::Digest as _;
            let digest = sha2::Sha256::new().chain_update(secret).chain_update("1000:3:43:toll-lines").finalize();
            crate::sigv4::hex(&digest[..12])
        };
        let old_style = b64.encode(format!("{truncated}:1000:3:43:toll-lines"));
        assert!(open_iterator(secret, &old_style, 2_000).is_err());
        assert!(open_iterator(secret, "not.base64!", 2_000).is_err());
    }

    #[test]
    fn explicit_hash_keys_are_checked() {
        let data = Some("eA==");
        assert_eq!(
            new_record(data, Some("k"), Some(&u128::MAX.to_string())).map(|r| r.explicit_hash_key).ok(),
            Some(Some(u128::MAX))
        );
        assert!(new_record(data, Some("k"), Some("340282366920938463463374607431768211456")).is_err());
        assert!(new_record(data, Some("k"), Some("12a")).is_err());
        assert!(new_record(data, Some(""), None).is_err());
        assert!(new_record(Some("***"), Some("k"), None).is_err());
    }
}
