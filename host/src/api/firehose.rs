//! The Kinesis Data Firehose JSON 1.1 protocol (`X-Amz-Target:
//! Firehose_20150804.<Operation>`) for the delivery streams the manifest
//! declares: `PutRecord`, `PutRecordBatch` (per-record failures),
//! `DescribeDeliveryStream` and `ListDeliveryStreams`.

use axum::body::Bytes;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::aws::{AwsError, PutResult, check_name, parse_body};
use crate::access::Caller;
use crate::names::NameKind;
use crate::pipeline::{Host, PutError};
use crate::stream::{NewRecord, StreamError};

/// Most records one `PutRecordBatch` may carry, as Firehose.
const MAX_BATCH: usize = 500;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Args<'a> {
    delivery_stream_name: Option<String>,
    #[serde(borrow)]
    record: Option<Entry<'a>>,
    #[serde(borrow)]
    records: Option<Vec<Entry<'a>>>,
    limit: Option<usize>,
    exclusive_start_delivery_stream_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    /// Base64 has no escapes: borrowed from the request body.
    #[serde(borrow)]
    data: Option<std::borrow::Cow<'a, str>>,
}

impl Args<'_> {
    /// `DeliveryStreamName`, checked by the delivery stream name rule.
    fn delivery_stream_name(&self) -> Result<&str, AwsError> {
        let name = self
            .delivery_stream_name
            .as_deref()
            .ok_or_else(|| AwsError::new("InvalidArgumentException", "DeliveryStreamName is required"))?;
        check_name(NameKind::DeliveryStream, "DeliveryStreamName", name)?;
        Ok(name)
    }
}

fn not_found(name: &str) -> AwsError {
    AwsError::new("ResourceNotFoundException", format!("Firehose {name} under account 000000000000 not found."))
}

fn record(entry: &Entry<'_>) -> Result<NewRecord, AwsError> {
    let data = base64::engine::general_purpose::STANDARD
        .decode(entry.data.as_deref().ok_or_else(|| AwsError::new("InvalidArgumentException", "Data is required"))?)
        .map_err(|e| AwsError::new("SerializationException", format!("Data is not base64: {e}")))?;
    Ok(NewRecord {
        source: None,
        key: String::new(),
        event_time_ms: None,
        data: Bytes::from(data),
        explicit_hash_key: None,
        attributes: Vec::new(),
    })
}

/// A record id that names where the record is kept: unique and stable.
fn record_id(name: &str, sequence: u64) -> String {
    // `{name}:{sequence:020}`, without the formatter's padding machinery (one per record).
    let mut digits = [b'0'; 20];
    let mut rest = sequence;
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    let mut id = String::with_capacity(name.len() + 1 + digits.len());
    id.push_str(name);
    id.push(':');
    id.extend(digits.iter().map(|&d| char::from(d)));
    id
}

/// Runs one Firehose operation.
/// Runs one Firehose operation; the answer is JSON text.
/// What an operation acts on, for the caller's policy: `deliverystream/<name>`, or `*`.
fn resource_named(operation: &str, args: &Args<'_>) -> Result<String, AwsError> {
    Ok(match (operation, &args.delivery_stream_name) {
        ("ListDeliveryStreams", _) | (_, None) => "*".to_owned(),
        _ => format!("deliverystream/{}", args.delivery_stream_name()?),
    })
}

/// What a request acts on, for the audit log (`?` if the body does not say).
pub(super) fn resource(operation: &str, body: &[u8]) -> String {
    parse_body::<Args<'_>>(body).and_then(|args| resource_named(operation, &args)).unwrap_or_else(|_| "?".into())
}

/// Runs one Firehose operation for `caller`, if its policy allows it; the answer is JSON text.
pub(super) fn call(host: &Host, caller: &Caller, operation: &str, body: &[u8]) -> Result<String, AwsError> {
    let args: Args<'_> = parse_body(body)?;
    caller.may(&format!("firehose:{operation}"), &resource_named(operation, &args)?)?;
    match operation {
        "PutRecordBatch" => put_record_batch(host, &args),
        _ => answer(host, operation, &args).map(|v| v.to_string()),
    }
}

fn answer(host: &Host, operation: &str, args: &Args<'_>) -> Result<Value, AwsError> {
    let name = || args.delivery_stream_name();
    let deliveries = host.deliveries();
    match operation {
        "ListDeliveryStreams" => {
            let after = args.exclusive_start_delivery_stream_name.as_deref().unwrap_or("");
            let mut names: Vec<String> = deliveries.iter().map(|(spec, _)| spec.name.to_string()).collect();
            names.sort();
            let limit = args.limit.unwrap_or(10_000).max(1);
            let remaining: Vec<&String> = names.iter().filter(|n| n.as_str() > after).collect();
            let page: Vec<&&String> = remaining.iter().take(limit).collect();
            Ok(json!({"DeliveryStreamNames": page, "HasMoreDeliveryStreams": remaining.len() > page.len()}))
        }
        "DescribeDeliveryStream" => {
            let name = name()?;
            let (spec, _) = deliveries.iter().find(|(s, _)| s.name.as_str() == name).ok_or_else(|| not_found(name))?;
            let destination = json!({
                "DestinationId": "destinationId-000000000001",
                "ExtendedS3DestinationDescription": {
                    "BucketARN": format!("arn:weir:lake:::{}", spec.lake.describe()),
                    "Prefix": spec.prefix,
                    "ErrorOutputPrefix": spec.error_prefix,
                    "BufferingHints": {"SizeInMBs": spec.buffer_bytes.div_ceil(1 << 20), "IntervalInSeconds": spec.buffer_interval.as_secs()},
                    "CompressionFormat": if spec.gzip { "GZIP" } else { "UNCOMPRESSED" },
                    "ProcessingConfiguration": {"Enabled": spec.transform.is_some()},
                }
            });
            Ok(json!({"DeliveryStreamDescription": {
                "DeliveryStreamName": name,
                "DeliveryStreamARN": format!("arn:aws:firehose:us-east-1:000000000000:deliverystream/{name}"),
                "DeliveryStreamStatus": "ACTIVE",
                "DeliveryStreamType": "DirectPut",
                "VersionId": "1",
                "Destinations": [destination],
                "HasMoreDestinations": false,
            }}))
        }
        "PutRecord" => {
            let name = name()?;
            let entry =
                args.record.as_ref().ok_or_else(|| AwsError::new("InvalidArgumentException", "Record is required"))?;
            let results = host.deliver(name, vec![record(entry)?]).map_err(|e| delivery_error(name, e))?;
            match results.into_iter().next() {
                Some(Ok(a)) => Ok(json!({"RecordId": record_id(name, a.sequence), "Encrypted": false})),
                Some(Err(e)) => Err(delivery_error(name, PutError::Stream(e))),
                None => Err(AwsError::new("ServiceUnavailableException", "nothing was appended")),
            }
        }
        other => Err(AwsError::new("UnknownOperationException", format!("operation {other} is not supported"))),
    }
}

fn put_record_batch(host: &Host, args: &Args<'_>) -> Result<String, AwsError> {
    let name = args.delivery_stream_name()?;
    let entries =
        args.records.as_deref().ok_or_else(|| AwsError::new("InvalidArgumentException", "Records is required"))?;
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(AwsError::new("InvalidArgumentException", format!("Records must hold 1 to {MAX_BATCH} entries")));
    }
    let mut responses: Vec<PutResult> = Vec::with_capacity(entries.len());
    let (mut good, mut slots) = (Vec::new(), Vec::new());
    for (i, entry) in entries.iter().enumerate() {
        match record(entry) {
            Ok(r) => {
                good.push(r);
                slots.push(i);
                responses.push(PutResult::Pending);
            }
            Err(e) => responses.push(PutResult::from(e)),
        }
    }
    if !good.is_empty() {
        let results = host.deliver(name, good).map_err(|e| delivery_error(name, e))?;
        for (slot, result) in slots.iter().zip(results) {
            responses[*slot] = match result {
                Ok(a) => PutResult::Kept { record_id: record_id(name, a.sequence) },
                Err(e) => {
                    let e = delivery_error(name, PutError::Stream(e));
                    PutResult::from(e)
                }
            };
        }
    }
    let failed = responses.iter().filter(|r| matches!(r, PutResult::Failed { .. })).count();
    let answer = BatchAnswer { failed_put_count: failed, encrypted: false, request_responses: responses };
    serde_json::to_string(&answer).map_err(|e| AwsError::new("InternalFailure", e.to_string()))
}

/// The answer of `PutRecordBatch`, serialized without an intermediate JSON tree.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct BatchAnswer {
    failed_put_count: usize,
    encrypted: bool,
    request_responses: Vec<PutResult>,
}

fn delivery_error(name: &str, e: PutError) -> AwsError {
    match e {
        PutError::Stream(StreamError::UnknownStream(_)) => not_found(name),
        PutError::Stream(e @ (StreamError::Full { .. } | StreamError::Throttled { .. })) => {
            AwsError::new("ServiceUnavailableException", e.to_string())
        }
        PutError::Stream(other) => other.into(),
        other @ (PutError::FedByStream { .. } | PutError::NotASource(_) | PutError::StageOutput { .. }) => {
            AwsError::new("InvalidArgumentException", other.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::record_id;

    #[test]
    fn record_ids_name_the_stream_and_the_zero_padded_sequence() {
        assert_eq!(record_id("tolls", 0), "tolls:00000000000000000000");
        assert_eq!(record_id("tolls", 1234), "tolls:00000000000000001234");
        assert_eq!(record_id("t", u64::MAX), format!("t:{}", u64::MAX));
    }
}
