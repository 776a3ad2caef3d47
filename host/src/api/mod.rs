//! The host's HTTP API (axum), on one listener:
//!
//! - the native JSON API under `/v1/` ([`native`]);
//! - the Kinesis Data Streams and Firehose JSON 1.1 protocols on `POST /`
//!   ([`kinesis`], [`firehose`]), for the AWS SDKs and CLI;
//! - the live dashboard at `GET /ui` ([`dashboard`]);
//! - AWS Signature V4 authentication of every request but `GET /v1/health`
//!   and the dashboard's page
//!   ([`crate::sigv4`]), against the access keys of the manifest's `[api]` section,
//!   unless the host runs with `--insecure-no-auth`; then each call is checked
//!   against the key's policy ([`crate::access`]). An inbox may also be read
//!   with a recipient token instead of a key.

pub mod admin;
pub mod aws;
pub mod cbor;
pub mod dashboard;
pub mod eventstream;
pub mod firehose;
pub mod kinesis;
pub mod metrics;
pub mod native;
pub mod rate;
pub mod server;
pub mod state;
pub mod tls;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Extension, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use crate::sigv4::AccessKey;
pub use crate::stream::{MAX_KEY_CHARS, MAX_RECORD_BYTES};
pub use native::{ApiError, MAX_RECORDS_PER_GET, MAX_RECORDS_PER_PUT};

use crate::access::{Audit, Caller, Policy, RecipientTokens, is_control};
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
    /// What each key may do, by key id (absent: everything).
    policies: BTreeMap<String, Arc<Policy>>,
    /// Signs and checks recipient tokens.
    tokens: RecipientTokens,
    /// Who did what on the control plane, and every refusal.
    audit: Audit,
    /// Requests per second of the keys that have a limit.
    rates: rate::KeyRates,
}

/// The API's routes over a running pipeline.
pub fn router(host: Arc<Host>, auth: Auth) -> Router {
    let max_body = usize::try_from(host.pipeline.api.max_body_bytes).unwrap_or(usize::MAX);
    let kinesis = Arc::new(kinesis::Control::at(host.pipeline.data_dir.join("kinesis.json")));
    let policies = host.pipeline.api.policies.iter().map(|(id, p)| (id.clone(), Arc::new(p.clone()))).collect();
    let tokens = RecipientTokens::new(token_key(&host.pipeline.data_dir));
    let audit = Audit::at(&host.pipeline.data_dir);
    let rates = rate::KeyRates::new(host.pipeline.api.rates.iter().map(|(k, r)| (k.clone(), *r)).collect());
    let iterator_secret = random_secret();
    let state = Arc::new(ApiState { host, auth, max_body, iterator_secret, kinesis, policies, tokens, audit, rates });
    let authenticated = Router::new()
        .route("/", post(aws_json))
        .route("/v1/pipeline", get(native::pipeline_status))
        .route("/v1/pipeline/events", get(dashboard::events))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/streams/{stream}/records", post(native::put_records).get(native::get_records))
        .route("/v1/delivery/{name}/records", post(native::put_delivery_records))
        .route(
            "/v1/stages/{stage}/plugin",
            get(admin::versions).put(admin::swap).layer(DefaultBodyLimit::max(admin::MAX_COMPONENT_BYTES)),
        )
        .route("/v1/stages/{stage}/plugin/rollback", post(admin::rollback))
        .route("/v1/stages/{stage}/dead-letters", get(admin::dead_letters))
        .route("/v1/stages/{stage}/dead-letters/redrive", post(admin::redrive))
        .route("/v1/delivery/{name}/dead-letters", get(admin::delivery_dead_letters))
        .route("/v1/delivery/{name}/dead-letters/redrive", post(admin::delivery_redrive))
        .route("/v1/tables/{table}/items", post(state::put_items))
        .route("/v1/tables/{table}/items/{key}", get(state::get_item).put(state::put_item).delete(state::delete_item))
        .route("/v1/inbox/{recipient}", get(state::inbox))
        .route("/v1/inbox/{recipient}/events", get(state::inbox_events))
        .route("/v1/inbox/{recipient}/tokens", post(state::mint_token))
        .route("/v1/channels/{channel}/failed", get(state::failed_deliveries))
        // Outermost last: authenticate the body as sent, decompress it, then check the caller's policy.
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), decompress))
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/v1/health", get(|| async { axum::Json(json!({"status": "ok"})) }))
        .route("/ui", get(dashboard::index))
        .route("/ui/app.js", get(dashboard::app_js))
        .route("/ui/sigv4.js", get(dashboard::sigv4_js))
        .route("/ui/style.css", get(dashboard::style_css))
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

/// The key recipient tokens are signed with, kept in the data folder so that
/// tokens outlive a restart; made on first use (readable by the owner only).
fn token_key(data_dir: &std::path::Path) -> [u8; 32] {
    let path = data_dir.join("recipient-token.key");
    if let Ok(bytes) = std::fs::read(&path)
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return key;
    }
    let key = random_secret();
    let written = std::fs::create_dir_all(data_dir).and_then(|()| {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
        std::io::Write::write_all(&mut file, &key)?;
        file.sync_all()
    });
    if let Err(e) = written {
        tracing::warn!(path = %path.display(), error = %e, "could not keep the recipient token key: tokens end with this run");
    }
    key
}

/// 32 bytes from the operating system's random source. Secrets that sign
/// iterators and tokens must not be guessable: without that source weir does not start.
fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .expect("the operating system's random source is needed for the API's secrets");
    secret
}

/// The longest a request's body may take to arrive.
const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Checks the SigV4 signature (buffering the body, within the size limit) before any handler runs.
async fn authenticate(State(state): State<Arc<ApiState>>, mut request: Request, next: Next) -> Response {
    let Auth::Keys(keys) = &state.auth else {
        request.extensions_mut().insert(Caller::anyone());
        return next.run(request).await;
    };
    let aws_protocol = request.uri().path() == "/";
    if request.uri().path() == "/metrics"
        && let Some(expected) = &state.host.pipeline.api.metrics_token
        && let Some(token) = recipient_token(&request)
    {
        // Prometheus sends `authorization: Bearer <token>`; compared in constant time.
        let matches = crate::sigv4::hmac_matches(
            expected.as_bytes(),
            b"weir-metrics",
            &crate::sigv4::hmac(token.as_bytes(), b"weir-metrics"),
        );
        if !matches {
            return refuse(
                false,
                StatusCode::FORBIDDEN,
                "AccessDeniedException",
                "the metrics token is not valid".into(),
            );
        }
        request.extensions_mut().insert(Caller::scraper());
        return next.run(request).await;
    }
    if let Some(token) = recipient_token(&request) {
        // A token may only read its one inbox: `authorize` refuses everything else.
        return match state.tokens.caller(&token, SystemTime::now()) {
            Some(caller) => {
                request.extensions_mut().insert(caller);
                next.run(request).await
            }
            None => {
                let message = "the recipient token is not valid for this inbox, or has expired: mint a new one";
                refuse(false, StatusCode::FORBIDDEN, "AccessDeniedException", message.into())
            }
        };
    }
    let limit = state.body_limit(request.uri().path());
    let (parts, body) = request.into_parts();
    // A body trickled in slower than this holds a connection for nothing.
    let bytes = match tokio::time::timeout(BODY_READ_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => b,
        Ok(Err(_)) => {
            let message = format!("the body is larger than the limit of {limit} bytes");
            return refuse(aws_protocol, StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge", message);
        }
        Err(_) => {
            let message = format!("the body did not arrive within {BODY_READ_TIMEOUT:?}");
            return refuse(aws_protocol, StatusCode::REQUEST_TIMEOUT, "RequestTimeout", message);
        }
    };
    match crate::sigv4::verify(keys, &parts.method, &parts.uri, &parts.headers, &bytes, SystemTime::now()) {
        Ok(key) if !state.rates.admit(&key, std::time::Instant::now()) => {
            let message = format!("access key {key} is over its requests-per-second: slow down and retry");
            if aws_protocol {
                aws::AwsError::new("ProvisionedThroughputExceededException", message).into_response()
            } else {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, "Throttled", message).into_response()
            }
        }
        Ok(key) => {
            let policy = state.policies.get(&key).cloned().unwrap_or_else(|| Arc::new(Policy::Everything));
            let mut request = Request::from_parts(parts, Body::from(bytes));
            request.extensions_mut().insert(Caller { who: key, policy, until_ms: None });
            next.run(request).await
        }
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

/// A recipient token, as `Authorization: Bearer <token>` or (for browsers'
/// `EventSource`, which cannot set headers) `?token=<token>`.
fn recipient_token(request: &Request) -> Option<String> {
    let header = request.headers().get("authorization").and_then(|v| v.to_str().ok());
    if let Some(token) = header.and_then(|h| h.strip_prefix("Bearer ")) {
        return Some(token.trim().to_owned());
    }
    let query = request.uri().query()?;
    query.split('&').find_map(|pair| pair.strip_prefix("token=")).map(crate::sigv4::percent_decode)
}

/// The action and resource of a native API call (the AWS protocol's calls are
/// checked by their operations, which read them from the body). An inbox is
/// `inbox/<channel>/<recipient>`, its channel `?channel=` or the only inbox.
fn native_action(
    state: &ApiState,
    method: &axum::http::Method,
    uri: &axum::http::Uri,
) -> Option<(&'static str, String)> {
    use axum::http::Method;
    let path = uri.path();
    let inbox = |recipient: &str| {
        let named = uri.query().and_then(|q| q.split('&').find_map(|p| p.strip_prefix("channel=")));
        let only = || match state.host.channels.inboxes().collect::<Vec<_>>().as_slice() {
            [one] => (*one).to_owned(),
            _ => "*".to_owned(),
        };
        format!("inbox/{}/{recipient}", named.map_or_else(only, crate::sigv4::percent_decode))
    };
    let segments: Vec<String> = path.trim_start_matches('/').split('/').map(crate::sigv4::percent_decode).collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (action, resource) = match (method, segments.as_slice()) {
        (&Method::GET, ["v1", "pipeline"] | ["v1", "pipeline", "events"]) => {
            ("admin:DescribePipeline", "pipeline".to_owned())
        }
        (&Method::GET, ["metrics"]) => ("admin:GetMetrics", "pipeline".to_owned()),
        (&Method::POST, ["v1", "streams", s, "records"]) => ("kinesis:PutRecords", format!("stream/{s}")),
        (&Method::GET, ["v1", "streams", s, "records"]) => ("kinesis:GetRecords", format!("stream/{s}")),
        (&Method::POST, ["v1", "delivery", d, "records"]) => ("firehose:PutRecordBatch", format!("deliverystream/{d}")),
        (&Method::GET, ["v1", "stages", s, "plugin"]) => ("admin:ListPluginVersions", format!("stage/{s}")),
        (&Method::PUT, ["v1", "stages", s, "plugin"]) => ("admin:SwapPlugin", format!("stage/{s}")),
        (&Method::POST, ["v1", "stages", s, "plugin", "rollback"]) => ("admin:RollbackPlugin", format!("stage/{s}")),
        (&Method::GET, ["v1", "stages", s, "dead-letters"]) => ("admin:ListDeadLetters", format!("stage/{s}")),
        (&Method::POST, ["v1", "stages", s, "dead-letters", "redrive"]) => {
            ("admin:RedriveDeadLetters", format!("stage/{s}"))
        }
        (&Method::GET, ["v1", "delivery", d, "dead-letters"]) => {
            ("admin:ListDeadLetters", format!("deliverystream/{d}"))
        }
        (&Method::POST, ["v1", "delivery", d, "dead-letters", "redrive"]) => {
            ("admin:RedriveDeadLetters", format!("deliverystream/{d}"))
        }
        (&Method::POST, ["v1", "tables", t, "items"]) | (&Method::PUT, ["v1", "tables", t, "items", _]) => {
            ("state:PutItem", format!("table/{t}"))
        }
        (&Method::GET, ["v1", "tables", t, "items", _]) => ("state:GetItem", format!("table/{t}")),
        (&Method::DELETE, ["v1", "tables", t, "items", _]) => ("state:DeleteItem", format!("table/{t}")),
        (&Method::GET, ["v1", "inbox", r] | ["v1", "inbox", r, "events"]) => ("inbox:Read", inbox(r)),
        (&Method::POST, ["v1", "inbox", r, "tokens"]) => ("inbox:IssueToken", inbox(r)),
        (&Method::GET, ["v1", "channels", c, "failed"]) => ("notify:ListFailed", format!("channel/{c}")),
        _ => return None,
    };
    Some((action, resource))
}

/// Refuses a native API call the caller's policy does not allow
/// (`AccessDeniedException`, 403); the AWS protocol's calls pass to their operations.
async fn authorize(
    State(state): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == "/" {
        return next.run(request).await;
    }
    // Every route is in the table; for anything else (a 404, or a route the table
    // does not know yet) only a key that may do everything gets further.
    let (action, resource) = native_action(&state, request.method(), request.uri()).unwrap_or(("*", "*".to_owned()));
    match caller.may(action, &resource) {
        Ok(()) if is_control(action) => {
            let response = next.run(request).await;
            let status = response.status();
            let result = if status.is_success() { "ok".to_owned() } else { status.as_u16().to_string() };
            state.audit.record(&caller.who, action, &resource, &result);
            response
        }
        Ok(()) => next.run(request).await,
        Err(denied) => {
            state.audit.record(&caller.who, action, &resource, "denied");
            refuse(false, StatusCode::FORBIDDEN, "AccessDeniedException", denied.to_string())
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
async fn aws_json(
    State(api): State<Arc<ApiState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
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
        return kinesis::subscribe(api.host.clone(), caller, api.kinesis.clone(), body, wire).await;
    }
    let host = api.host.clone();
    let secret = api.iterator_secret;
    let control = api.kinesis.clone();
    let who = caller.who.clone();
    let action = format!("{}:{operation}", if firehose { "firehose" } else { "kinesis" });
    let (operation, request) = (operation.to_owned(), body.clone());
    // Store calls may wait for an fsync: keep them off the async workers.
    let result = tokio::task::spawn_blocking(move || {
        if firehose {
            firehose::call(&host, &caller, &operation, &body)
        } else {
            kinesis::call(&host, &caller, secret, &control, &operation, &body, source)
        }
    })
    .await;
    // The control plane's calls and every refusal go to the audit log.
    let outcome = match &result {
        Ok(Err(e)) if e.kind == "AccessDeniedException" => Some("denied"),
        Ok(Ok(_)) if is_control(&action) => Some("ok"),
        Ok(Err(e)) if is_control(&action) => Some(e.kind),
        _ => None,
    };
    if let Some(outcome) = outcome {
        let operation = action.split_once(':').map_or("", |(_, op)| op);
        let resource = if firehose {
            firehose::resource(operation, &request)
        } else {
            kinesis::resource_of(secret, operation, &request)
        };
        api.audit.record(&who, &action, &resource, outcome);
    }
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
