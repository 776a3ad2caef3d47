//! The native JSON API: put records into streams, read them back, and look
//! at the pipeline. Mistakes are answered with a 4xx and a message that says
//! what to fix; they are not logged as errors.
//!
//! - `POST /v1/streams/{stream}/records`: JSON, one record
//!   `{"partition_key": "17", "data": "text"}` (or `"data_base64"`, and an optional
//!   `"event_time"` as RFC 3339 or ms, and `"source"`, the producer's name that
//!   event-time watermarks are kept by), or a batch `{"records": [...]}` (with an
//!   optional `"source"` for all of them); or `text/plain`, one record per
//!   non-empty line (`?partition_key=` and `?source=` apply to all).
//! - `GET /v1/streams/{stream}/records?shard=0&from=0&limit=100`: records of a
//!   shard from a sequence number on, with `next` to continue from.
//! - `POST /v1/delivery/{name}/records`: the same bodies, into a delivery stream.
//! - `GET /v1/pipeline`: stages, plugin versions and counters.
//! - `GET /v1/health`

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::names::{self, NameKind};
use crate::pipeline::{Producer, PutError};
use crate::stream::{NewRecord, Source, StreamError, parse_shard_id, shard_id};

/// Most records one request may carry (as Kinesis `PutRecords`).
pub const MAX_RECORDS_PER_PUT: usize = 500;

/// An error answer: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn bad(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, code: "InvalidRequest", message: message.into() }
    }
}

/// A name checked where it enters: 400 `ValidationException` naming the field otherwise.
pub(super) fn check_name(kind: NameKind, field: &str, name: &str) -> Result<(), ApiError> {
    names::check(kind, field, name)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", e.to_string()))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

impl From<PutError> for ApiError {
    fn from(e: PutError) -> Self {
        let (status, code) = match &e {
            PutError::NotASource(_) => (StatusCode::FORBIDDEN, "NotASource"),
            PutError::StageOutput { .. } => (StatusCode::FORBIDDEN, "StageOutput"),
            PutError::FedByStream { .. } => (StatusCode::BAD_REQUEST, "FedByStream"),
            PutError::Stream(StreamError::UnknownStream(_)) => (StatusCode::NOT_FOUND, "UnknownStream"),
            PutError::Stream(StreamError::Full { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "StreamFull"),
            PutError::Stream(StreamError::Throttled { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "Throttled"),
            PutError::Stream(StreamError::Unavailable { .. }) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            PutError::Stream(
                StreamError::Trimmed { .. }
                | StreamError::Corrupt { .. }
                | StreamError::AlreadyExists(_)
                | StreamError::InvalidReshard(_)
                | StreamError::ShardLimit(_)
                | StreamError::UnknownShard { .. }
                | StreamError::LeaseLost { .. },
            ) => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
            PutError::Stream(StreamError::Failed { .. } | StreamError::CheckpointFailed { .. }) => {
                (StatusCode::SERVICE_UNAVAILABLE, "StorageFailed")
            }
            PutError::Stream(StreamError::InvalidName(_)) => (StatusCode::BAD_REQUEST, "ValidationException"),
            PutError::Stream(StreamError::InvalidRecord(_)) => (StatusCode::BAD_REQUEST, "InvalidRecord"),
        };
        Self { status, code, message: e.to_string() }
    }
}

pub(super) async fn pipeline_status(State(api): State<Arc<super::ApiState>>) -> axum::Json<Value> {
    axum::Json(json!(api.host.status()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRecord {
    #[serde(default)]
    partition_key: Option<String>,
    data: Option<String>,
    data_base64: Option<String>,
    event_time: Option<Value>,
    #[serde(default)]
    source: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum JsonPut {
    Batch {
        records: Vec<JsonRecord>,
        #[serde(default)]
        source: Option<String>,
    },
    One(JsonRecord),
}

#[derive(Debug, Deserialize)]
pub(super) struct PutQuery {
    partition_key: Option<String>,
    source: Option<String>,
}

pub(super) async fn put_records(
    State(api): State<Arc<super::ApiState>>,
    Path(stream): Path<String>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check_name(NameKind::Stream, "stream", &stream)?;
    let records = parse_put(&headers, query, &body)?;
    let host = api.host.clone();
    let results = blocking(move || host.put(&stream, records, Producer::Native)).await??;
    put_answer(results)
}

/// `POST /v1/delivery/{name}/records`: the same bodies, into a delivery stream.
pub(super) async fn put_delivery_records(
    State(api): State<Arc<super::ApiState>>,
    Path(delivery): Path<String>,
    Query(query): Query<PutQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<Value>, ApiError> {
    check_name(NameKind::DeliveryStream, "delivery stream", &delivery)?;
    let records = parse_put(&headers, query, &body)?;
    let host = api.host.clone();
    let results = blocking(move || host.deliver(&delivery, records)).await?.map_err(|e| match e {
        PutError::Stream(StreamError::UnknownStream(name)) => ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownDeliveryStream",
            format!("no delivery stream named `{name}`: declare [delivery.{name}] in the manifest"),
        ),
        other => other.into(),
    })?;
    put_answer(results)
}

/// Runs a store call off the async workers (it may wait for an fsync).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the request failed"))
}

/// The records of a put request: JSON (one or a batch) or text lines.
fn parse_put(headers: &HeaderMap, query: PutQuery, body: &[u8]) -> Result<Vec<NewRecord>, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("application/json");
    let records = if content_type.starts_with("text/plain") {
        text_records(body, query.partition_key, query.source.map(Source::from))?
    } else if content_type.starts_with("application/json") {
        json_records(body)?
    } else {
        return Err(ApiError {
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            code: "UnsupportedMediaType",
            message: format!("content type `{content_type}` is not accepted: send application/json or text/plain"),
        });
    };
    if records.is_empty() {
        return Err(ApiError::bad("the request holds no record"));
    }
    if records.len() > MAX_RECORDS_PER_PUT {
        return Err(ApiError::bad(format!(
            "{} records in one request; send at most {MAX_RECORDS_PER_PUT}",
            records.len()
        )));
    }
    Ok(records)
}

/// One entry per record; the error itself when nothing was accepted (503
/// for a full or throttled stream).
fn put_answer(results: Vec<Result<crate::stream::Appended, StreamError>>) -> Result<axum::Json<Value>, ApiError> {
    if let Some(Err(first)) = results.first()
        && results.iter().all(|r| r.is_err())
    {
        return Err(PutError::Stream(first.clone()).into());
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    let entries: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok(a) => json!({"shard_id": shard_id(a.shard), "sequence_number": a.sequence.to_string()}),
            Err(e) => {
                json!({"error_code": ApiError::from(PutError::Stream(e.clone())).code, "error_message": e.to_string()})
            }
        })
        .collect();
    Ok(axum::Json(json!({"failed_record_count": failed, "records": entries})))
}

#[derive(Debug, Deserialize)]
pub(super) struct GetQuery {
    #[serde(default)]
    from: u64,
    limit: Option<usize>,
    /// A shard id (`shardId-000000000000`) or index; the first shard by default.
    shard: Option<String>,
}

/// Most records one read returns.
pub const MAX_RECORDS_PER_GET: usize = 10_000;

pub(super) async fn get_records(
    State(api): State<Arc<super::ApiState>>,
    Path(stream): Path<String>,
    Query(query): Query<GetQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    check_name(NameKind::Stream, "stream", &stream)?;
    let limit = query.limit.unwrap_or(1000);
    if limit == 0 || limit > MAX_RECORDS_PER_GET {
        return Err(ApiError::bad(format!("limit must be between 1 and {MAX_RECORDS_PER_GET}")));
    }
    let shard = match query.shard.as_deref() {
        None => 0,
        Some(s) => parse_shard_id(s).or_else(|| s.parse().ok()).ok_or_else(|| {
            ApiError::bad(format!("shard `{s}` is neither a shard id (shardId-000000000000) nor an index"))
        })?,
    };
    let host = api.host.clone();
    let records = blocking(move || host.read(&stream, shard, query.from, limit)).await?.map_err(|e| {
        let (status, code) = match &e {
            StreamError::UnknownStream(_) => (StatusCode::NOT_FOUND, "UnknownStream"),
            StreamError::UnknownShard { .. } => (StatusCode::NOT_FOUND, "UnknownShard"),
            StreamError::Trimmed { .. } => (StatusCode::BAD_REQUEST, "Trimmed"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        };
        ApiError { status, code, message: e.to_string() }
    })?;
    let next = records.last().map_or(query.from, |r| r.sequence + 1);
    let list: Vec<Value> = records
        .iter()
        .map(|r| {
            let mut obj = json!({
                "shard_id": shard_id(r.shard),
                "sequence_number": r.sequence.to_string(),
                "partition_key": r.key,
                "event_time": crate::time::format_ms(r.event_time_ms),
                "arrival_time": crate::time::format_ms(r.arrival_ms),
            });
            if let Some(source) = &r.source {
                obj["source"] = json!(&**source);
            }
            match std::str::from_utf8(&r.data) {
                Ok(text) => obj["data"] = json!(text),
                Err(_) => obj["data_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&r.data)),
            }
            obj
        })
        .collect();
    Ok(axum::Json(json!({"records": list, "next": next.to_string()})))
}

fn text_records(body: &[u8], key: Option<String>, source: Option<Source>) -> Result<Vec<NewRecord>, ApiError> {
    let text = std::str::from_utf8(body).map_err(|e| ApiError::bad(format!("text/plain body is not UTF-8: {e}")))?;
    let key = key.unwrap_or_default();
    text.lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            Ok(NewRecord {
                source: source.clone(),
                key: key.clone(),
                event_time_ms: None,
                data: Bytes::copy_from_slice(line.as_bytes()),
                explicit_hash_key: None,
                attributes: Vec::new(),
            })
        })
        .collect()
}

fn json_records(body: &[u8]) -> Result<Vec<NewRecord>, ApiError> {
    let parsed: JsonPut = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad(format!(
            "body is not a record or {{\"records\": [...]}}: {e}. A record is {{\"partition_key\": \"...\", \"data\": \"...\"}}"
        ))
    })?;
    let (list, batch_source) = match parsed {
        JsonPut::Batch { records, source } => (records, source.map(Source::from)),
        JsonPut::One(r) => (vec![r], None),
    };
    list.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let data = match (r.data, r.data_base64) {
                (Some(text), None) => Bytes::from(text.into_bytes()),
                (None, Some(b64)) => Bytes::from(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.as_bytes())
                        .map_err(|e| ApiError::bad(format!("record {i}: data_base64 is not base64: {e}")))?,
                ),
                _ => {
                    return Err(ApiError::bad(format!(
                        "record {i}: give exactly one of `data` (text) or `data_base64`"
                    )));
                }
            };
            let event_time_ms = r.event_time.map(|t| event_time(i, &t)).transpose()?;
            let source = r.source.map(Source::from).or_else(|| batch_source.clone());
            Ok(NewRecord {
                source,
                key: r.partition_key.unwrap_or_default(),
                event_time_ms,
                data,
                explicit_hash_key: None,
                attributes: Vec::new(),
            })
        })
        .collect()
}

fn event_time(i: usize, v: &Value) -> Result<i64, ApiError> {
    match v {
        Value::Number(n) => {
            n.as_i64().ok_or_else(|| ApiError::bad(format!("record {i}: event_time must be whole milliseconds")))
        }
        Value::String(s) => humantime::parse_rfc3339_weak(s)
            .map(crate::time::system_ms)
            .map_err(|e| ApiError::bad(format!("record {i}: event_time `{s}` is not RFC 3339 ({e})"))),
        _ => Err(ApiError::bad(format!("record {i}: event_time must be RFC 3339 text or milliseconds"))),
    }
}
