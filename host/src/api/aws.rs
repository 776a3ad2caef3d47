//! The AWS JSON 1.1 protocol that the Kinesis and Firehose APIs share (and its
//! CBOR 1.1 form, [`Wire`]):
//! errors shaped as AWS's (`{"__type": "...", "message": "..."}`), request
//! bodies read straight into typed fields, names checked where they enter,
//! and the per-entry outcomes of batch puts.

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::names::{self, NameKind};
use crate::pipeline::PutError;
use crate::stream::StreamError;

/// The content type of every request and answer.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// An AWS-shaped error.
#[derive(Debug)]
pub struct AwsError {
    status: StatusCode,
    /// The AWS error type, `__type` in the answer.
    pub(super) kind: &'static str,
    /// What is wrong, for people.
    pub(super) message: String,
}

impl AwsError {
    pub(super) fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, kind, message: message.into() }
    }

    pub(super) fn set_status(&mut self, status: StatusCode) {
        self.status = status;
    }

    /// A failure of weir's, not the request's: details are in the log, not the answer.
    pub(super) fn internal() -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, kind: "InternalFailure", message: "internal failure".into() }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new("InvalidArgumentException", message)
    }

    pub(super) fn not_found(stream: &str) -> Self {
        Self::new("ResourceNotFoundException", format!("Stream {stream} under account 000000000000 not found."))
    }
}

impl IntoResponse for AwsError {
    fn into_response(self) -> Response {
        Wire::Json.error(self)
    }
}

/// How a client speaks the protocol: JSON 1.1, or CBOR 1.1 (the Java SDK's
/// default, [`cbor`](super::cbor)). Operations read and answer JSON; the wire
/// translates at the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Json,
    Cbor,
}

impl Wire {
    /// The wire a request came in on, by its content type.
    pub fn of(headers: &HeaderMap) -> Self {
        let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        if content_type.starts_with("application/x-amz-cbor") { Wire::Cbor } else { Wire::Json }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Wire::Json => CONTENT_TYPE,
            Wire::Cbor => super::cbor::CONTENT_TYPE,
        })
    }

    /// A request body as the JSON its operation reads.
    pub fn request(self, body: Bytes) -> Result<Bytes, AwsError> {
        match self {
            Wire::Json => Ok(body),
            Wire::Cbor => super::cbor::to_json(&body)
                .map(Bytes::from)
                .map_err(|e| AwsError::new("SerializationException", e.to_string())),
        }
    }

    /// A document (JSON text) in this wire's encoding.
    pub fn encode(self, json: String) -> Vec<u8> {
        match self {
            Wire::Json => json.into_bytes(),
            Wire::Cbor => super::cbor::from_json(&json),
        }
    }

    /// A successful answer.
    pub fn answer(self, json: String) -> Response {
        ([(header::CONTENT_TYPE, self.content_type())], self.encode(json)).into_response()
    }

    /// An error, named in the body (`__type`) and, for clients that read it
    /// there first (the Java SDK), in `x-amzn-ErrorType`.
    pub fn error(self, e: AwsError) -> Response {
        let body = self.encode(json!({"__type": e.kind, "message": e.message}).to_string());
        let kind = HeaderValue::from_static(e.kind);
        (e.status, [(header::CONTENT_TYPE, self.content_type()), (ERROR_TYPE, kind)], body).into_response()
    }

    /// An event stream payload in this encoding, with its content type.
    pub fn event_payload(self, json: String) -> (Vec<u8>, &'static str) {
        let content_type = match self {
            Wire::Json => "application/json",
            Wire::Cbor => super::cbor::CONTENT_TYPE,
        };
        (self.encode(json), content_type)
    }
}

/// The header AWS names an error's type in.
const ERROR_TYPE: header::HeaderName = header::HeaderName::from_static("x-amzn-errortype");

impl From<StreamError> for AwsError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::UnknownStream(s) => Self::not_found(&s),
            StreamError::UnknownShard { stream, shard } => {
                Self::new("ResourceNotFoundException", format!("Shard {shard} in stream {stream} not found."))
            }
            StreamError::AlreadyExists(s) => {
                Self::new("ResourceInUseException", format!("Stream {s} under account 000000000000 already exists."))
            }
            StreamError::Full { .. } | StreamError::Throttled { .. } => {
                Self::new("ProvisionedThroughputExceededException", e.to_string())
            }
            StreamError::Trimmed { .. } => Self::invalid(e.to_string()),
            StreamError::InvalidName(message) => Self::new("ValidationException", message),
            StreamError::InvalidRecord(message) | StreamError::InvalidReshard(message) => Self::invalid(message),
            StreamError::ShardLimit(message) => Self::new("LimitExceededException", message),
            // As AWS answers when it cannot serve for now: SDKs retry it with backoff.
            StreamError::Unavailable { .. } => {
                tracing::warn!(error = %e, "the stream store is unavailable; answered ServiceUnavailable");
                let mut unavailable = Self::new("ServiceUnavailable", e.to_string());
                unavailable.set_status(StatusCode::SERVICE_UNAVAILABLE);
                unavailable
            }
            StreamError::Failed { .. }
            | StreamError::Corrupt { .. }
            | StreamError::CheckpointFailed { .. }
            | StreamError::LeaseLost { .. } => {
                tracing::error!(error = %e, "stream failure answered as InternalFailure");
                Self::internal()
            }
        }
    }
}

impl From<crate::access::Denied> for AwsError {
    fn from(e: crate::access::Denied) -> Self {
        let mut refused = Self::new("AccessDeniedException", e.to_string());
        refused.set_status(StatusCode::FORBIDDEN);
        refused
    }
}

impl From<PutError> for AwsError {
    fn from(e: PutError) -> Self {
        match e {
            PutError::Stream(e) => e.into(),
            // Kinesis answers a write it does not allow so.
            e @ (PutError::StageOutput { .. } | PutError::NotASource(_) | PutError::FedByStream { .. }) => {
                let mut refused = Self::new("AccessDeniedException", e.to_string());
                refused.set_status(StatusCode::FORBIDDEN);
                refused
            }
        }
    }
}

/// One entry's outcome in a batch put.
#[derive(Serialize)]
#[serde(untagged, rename_all_fields = "PascalCase")]
pub(super) enum PutResult {
    /// Not decided yet (never serialized: every slot is filled).
    Pending,
    /// Kinesis: where the record is.
    Stored { shard_id: String, sequence_number: String },
    /// Firehose: the record's id.
    Kept { record_id: String },
    /// Why the record was refused.
    Failed { error_code: &'static str, error_message: String },
}

impl From<AwsError> for PutResult {
    /// An entry refused for this reason.
    fn from(e: AwsError) -> Self {
        PutResult::Failed { error_code: e.kind, error_message: e.message }
    }
}

/// A request body straight into its typed fields (no intermediate JSON tree:
/// a 500-record put is parsed in one pass). An empty body is `{}`.
pub(super) fn parse_body<'a, T: Deserialize<'a> + Default>(body: &'a [u8]) -> Result<T, AwsError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| AwsError::new("SerializationException", format!("body is not valid: {e}")))
}

/// A name checked where it enters: a `ValidationException` naming the field otherwise.
pub(super) fn check_name(kind: NameKind, field: &str, name: &str) -> Result<(), AwsError> {
    names::check(kind, field, name).map_err(|e| AwsError::new("ValidationException", e.to_string()))
}
