//! The host's HTTP API (axum), on one listener:
//!
//! - the native JSON API under `/v1/` ([`native`]);
//! - the Kinesis Data Streams and Firehose JSON 1.1 protocols on `POST /`
//!   ([`kinesis`], [`firehose`]), for the AWS SDKs and CLI;
//! - AWS Signature V4 authentication of every request but `GET /v1/health`
//!   ([`crate::sigv4`]), against the access keys of the manifest's `[api]` section,
//!   unless the host runs with `--insecure-no-auth`.

pub mod admin;
pub mod aws;
pub mod cbor;
pub mod eventstream;
pub mod firehose;
pub mod kinesis;
pub mod native;
pub mod state;

use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use crate::sigv4::AccessKey;
pub use crate::stream::{MAX_KEY_CHARS, MAX_RECORD_BYTES};
pub use native::{ApiError, MAX_RECORDS_PER_GET, MAX_RECORDS_PER_PUT};

use crate::pipeline::Host;

/// Whether requests must be signed.
#[derive(Debug, Clone)]
pub enum Auth {
    /// Requests must carry a valid SigV4 signature by one of these keys.
    Keys(Vec<AccessKey>),
    /// Anyone may call the API: for local development only.
    InsecureNoAuth,
}

/// What the handlers share.
pub struct ApiState {
    /// The running pipeline.
    pub host: Arc<Host>,
    auth: Auth,
    max_body: usize,
    /// Signs shard iterators; new at every start, like the iterators' 5-minute life.
    iterator_secret: [u8; 32],
    /// What Kinesis keeps of streams besides their records (tags, mode, consumers).
    kinesis: Arc<kinesis::Control>,
}

/// The API's routes over a running pipeline.
pub fn router(host: Arc<Host>, auth: Auth) -> Router {
    let max_body = usize::try_from(host.pipeline.api.max_body_bytes).unwrap_or(usize::MAX);
    let kinesis = Arc::new(kinesis::Control::at(host.pipeline.data_dir.join("kinesis.json")));
    let state = Arc::new(ApiState { host, auth, max_body, iterator_secret: random_secret(), kinesis });
    let authenticated = Router::new()
        .route("/", post(aws_json))
        .route("/v1/pipeline", get(native::pipeline_status))
        .route("/v1/streams/{stream}/records", post(native::put_records).get(native::get_records))
        .route("/v1/delivery/{name}/records", post(native::put_delivery_records))
        .route(
            "/v1/stages/{stage}/plugin",
            get(admin::versions).put(admin::swap).layer(DefaultBodyLimit::max(admin::MAX_COMPONENT_BYTES)),
        )
        .route("/v1/stages/{stage}/plugin/rollback", post(admin::rollback))
        .route("/v1/tables/{table}/items", post(state::put_items))
        .route("/v1/tables/{table}/items/{key}", get(state::get_item).put(state::put_item).delete(state::delete_item))
        .route("/v1/inbox/{recipient}", get(state::inbox))
        .route("/v1/inbox/{recipient}/events", get(state::inbox_events))
        .route("/v1/channels/{channel}/failed", get(state::failed_deliveries))
        // Outermost first: authenticate the body as sent, then decompress it.
        .layer(middleware::from_fn_with_state(state.clone(), decompress))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .merge(authenticated)
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

impl ApiState {
    /// The largest body a route takes: records as the manifest says, components for swaps.
    fn body_limit(&self, path: &str) -> usize {
        if path.starts_with("/v1/stages/") { self.max_body.max(admin::MAX_COMPONENT_BYTES) } else { self.max_body }
    }
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    // /dev/urandom is always there on the platforms weir runs on; the fallback
    // still differs per process and start time.
    if std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut secret)).is_err() {
        let seed = format!("{:?}{}", SystemTime::now(), std::process::id());
        secret.copy_from_slice(&sha2::Digest::finalize(sha2::Digest::chain_update(sha2::Sha256::default(), seed)));
    }
    secret
}

/// Checks the SigV4 signature (buffering the body, within the size limit) before any handler runs.
async fn authenticate(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let Auth::Keys(keys) = &state.auth else { return next.run(request).await };
    let aws_protocol = request.uri().path() == "/";
    let limit = state.body_limit(request.uri().path());
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, limit).await {
        Ok(b) => b,
        Err(_) => {
            let message = format!("the body is larger than the limit of {limit} bytes");
            return refuse(aws_protocol, StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message);
        }
    };
    match crate::sigv4::verify(keys, &parts.method, &parts.uri, &parts.headers, &bytes, SystemTime::now()) {
        Ok(_) => next.run(Request::from_parts(parts, Body::from(bytes))).await,
        Err(e) => {
            let status = if matches!(e, crate::sigv4::AuthError::Missing) {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::BAD_REQUEST
            };
            refuse(aws_protocol, status, e.aws_type(), e.to_string())
        }
    }
}

/// Accepts `Content-Encoding: gzip` bodies; the size limit holds for the
/// compressed body and again for the decompressed one (no gzip bombs).
async fn decompress(State(state): State<Arc<ApiState>>, request: Request, next: Next) -> Response {
    let aws_protocol = request.uri().path() == "/";
    let encoding = request.headers().get("content-encoding").and_then(|v| v.to_str().ok()).map(str::to_ascii_lowercase);
    match encoding.as_deref() {
        None | Some("identity") => return next.run(request).await,
        Some("gzip") => {}
        Some(other) => {
            let message = format!("Content-Encoding `{other}` is not supported: send gzip or an uncompressed body");
            return refuse(aws_protocol, StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", message);
        }
    }
    let max = state.body_limit(request.uri().path());
    let (mut parts, body) = request.into_parts();
    let too_large = |what: &str| {
        let message = format!("the {what} body is larger than the limit of {max} bytes");
        refuse(aws_protocol, StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message)
    };
    let Ok(compressed) = axum::body::to_bytes(body, max).await else { return too_large("compressed") };
    let mut decoded = Vec::new();
    let limit = max as u64 + 1;
    let read = std::io::Read::read_to_end(
        &mut std::io::Read::take(flate2::read::GzDecoder::new(&compressed[..]), limit),
        &mut decoded,
    );
    if let Err(e) = read {
        let message = format!("the body is not valid gzip: {e}");
        return refuse(aws_protocol, StatusCode::BAD_REQUEST, "InvalidRequest", message);
    }
    if decoded.len() > max {
        return too_large("decompressed");
    }
    parts.headers.remove("content-encoding");
    parts.headers.remove("content-length");
    next.run(Request::from_parts(parts, Body::from(decoded))).await
}

/// The header that names the producer of a Kinesis put's records (see [`crate::stream::Source`]).
pub const SOURCE_HEADER: &str = "x-weir-source";

/// `POST /` with `X-Amz-Target`: a Kinesis operation ([`kinesis`]) or a
/// Firehose one ([`firehose`]).
async fn aws_json(State(api): State<Arc<ApiState>>, headers: HeaderMap, body: Bytes) -> Response {
    let wire = aws::Wire::of(&headers);
    let target = headers.get("x-amz-target").and_then(|v| v.to_str().ok()).unwrap_or("");
    let (firehose, operation) =
        match (target.strip_prefix("Kinesis_20131202."), target.strip_prefix("Firehose_20150804.")) {
            (Some(op), _) => (false, op),
            (None, Some(op)) => (true, op),
            (None, None) => {
                let message = format!("unknown or missing X-Amz-Target `{target}`");
                return wire.error(aws::AwsError::new("UnknownOperationException", message));
            }
        };
    // Not part of the AWS protocol (AWS ignores it): the producer's name that
    // event-time watermarks are kept by, for every record of the request.
    let source = match headers.get(SOURCE_HEADER).map(|v| v.to_str()) {
        None => None,
        Some(Ok(source)) => Some(crate::stream::Source::from(source)),
        Some(Err(_)) => {
            let message = format!("{SOURCE_HEADER} must be visible ASCII (percent-encode other characters)");
            return wire.error(aws::AwsError::invalid(message));
        }
    };
    let body = match wire.request(body) {
        Ok(body) => body,
        Err(e) => return wire.error(e),
    };
    if !firehose && operation == "SubscribeToShard" {
        // Its answer is a stream of events, not one body.
        return kinesis::subscribe(api.host.clone(), api.kinesis.clone(), body, wire).await;
    }
    let host = api.host.clone();
    let secret = api.iterator_secret;
    let control = api.kinesis.clone();
    let operation = operation.to_owned();
    // Store calls may wait for an fsync: keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        if firehose {
            firehose::call(&host, &operation, &body)
        } else {
            kinesis::call(&host, secret, &control, &operation, &body, source)
        }
    })
    .await;
    match result {
        Ok(Ok(v)) => wire.answer(v),
        Ok(Err(e)) => wire.error(e),
        Err(_) => wire.error(aws::AwsError::internal()),
    }
}

fn refuse(aws_protocol: bool, status: StatusCode, kind: &'static str, message: String) -> Response {
    if aws_protocol {
        let mut e = aws::AwsError::new(kind, message);
        e.set_status(status);
        e.into_response()
    } else {
        ApiError::new(status, kind, message).into_response()
    }
}
