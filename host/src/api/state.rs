//! State tables and inboxes over HTTP, for applications (the mobile app sets a
//! customer's threshold and reads the customer's messages):
//!
//! - `GET    /v1/tables/{table}/items/{key}`: the item's bytes (404 if absent)
//! - `PUT    /v1/tables/{table}/items/{key}`: body = the new value
//! - `DELETE /v1/tables/{table}/items/{key}`
//! - `POST   /v1/tables/{table}/items`: body = `{"items": {"<key>": "<value>", ...}}`,
//!   up to [`MAX_BATCH_ITEMS`] items written in one transaction (all or none)
//! - `GET    /v1/inbox/{recipient}?channel=<inbox>&after=<sequence>&limit=<n>`: the
//!   recipient's messages after `after` (0: from the first), oldest first; `channel`
//!   may be left out when the pipeline has one inbox
//! - `GET    /v1/inbox/{recipient}/events?channel=<inbox>`: a live feed of new messages
//!   (Server-Sent Events; resumes after `Last-Event-ID`)
//! - `GET    /v1/channels/{channel}/failed`: a webhook channel's deliveries that failed
//!   for good (body, attempts, last error)

use std::sync::Arc;

use std::convert::Infallible;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt as _};
use serde_json::json;

use super::native::{ApiError, check_name};
use crate::names::{self, NameKind};
use crate::state::StateError;

/// Most messages one inbox read returns.
const MAX_INBOX_PAGE: usize = 1000;

/// Checks a table's name and an item key where they enter.
fn check_item(table: &str, key: &str) -> Result<(), ApiError> {
    check_name(NameKind::Table, "table", table)?;
    names::check_item_key("key", key)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", e.to_string()))
}

fn state_error(e: StateError) -> ApiError {
    match e {
        StateError::UnknownTable(_) => ApiError::new(StatusCode::NOT_FOUND, "UnknownTable", e.to_string()),
        // State on a cluster changes at most so many values at once.
        StateError::TooLarge { .. } => ApiError::new(StatusCode::BAD_REQUEST, "TooManyItems", e.to_string()),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "StateUnavailable", e.to_string()),
    }
}

/// `GET /v1/tables/{table}/items/{key}`
pub async fn get_item(
    State(api): State<Arc<super::ApiState>>,
    Path((table, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    check_item(&table, &key)?;
    let state = api.host.state.clone();
    let item = tokio::task::spawn_blocking(move || state.get(&table, &key).map(|v| (v, table, key)))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the read failed"))?
        .map_err(state_error)?;
    match item {
        (Some(value), _, _) => Ok(value.into_response()),
        (None, table, key) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "NoSuchItem", format!("table `{table}` has no item `{key}`")))
        }
    }
}

/// `PUT /v1/tables/{table}/items/{key}`
pub async fn put_item(
    State(api): State<Arc<super::ApiState>>,
    Path((table, key)): Path<(String, String)>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    check_item(&table, &key)?;
    let state = api.host.state.clone();
    tokio::task::spawn_blocking(move || state.put(&table, &key, &body))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the write failed"))?
        .map_err(state_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most items one batch write takes.
pub const MAX_BATCH_ITEMS: usize = 10_000;

/// The body of a batch write.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchPut {
    items: std::collections::BTreeMap<String, String>,
}

/// `POST /v1/tables/{table}/items`
pub async fn put_items(
    State(api): State<Arc<super::ApiState>>,
    Path(table): Path<String>,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    check_name(NameKind::Table, "table", &table)?;
    let bad = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequest", message);
    let batch: BatchPut = serde_json::from_slice(&body)
        .map_err(|e| bad(format!("the body must be {{\"items\": {{\"<key>\": \"<value>\", ...}}}}: {e}")))?;
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH_ITEMS {
        return Err(bad(format!("give 1 to {MAX_BATCH_ITEMS} items, not {}", batch.items.len())));
    }
    for key in batch.items.keys() {
        names::check_item_key("key", key)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "ValidationException", e.to_string()))?;
    }
    let state = api.host.state.clone();
    let written = batch.items.len();
    tokio::task::spawn_blocking(move || {
        state.put_many(&table, batch.items.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the write failed"))?
    .map_err(state_error)?;
    Ok(axum::Json(json!({"written": written})))
}

/// `DELETE /v1/tables/{table}/items/{key}`
pub async fn delete_item(
    State(api): State<Arc<super::ApiState>>,
    Path((table, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    check_item(&table, &key)?;
    let state = api.host.state.clone();
    tokio::task::spawn_blocking(move || state.delete(&table, &key))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the delete failed"))?
        .map_err(state_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/channels/{channel}/failed`
pub async fn failed_deliveries(
    State(api): State<Arc<super::ApiState>>,
    Path(channel): Path<String>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    check_name(NameKind::Channel, "channel", &channel)?;
    if !api.host.channels.is_webhook(&channel) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "UnknownChannel",
            format!("`{channel}` is not a webhook channel"),
        ));
    }
    let state = api.host.state.clone();
    let name = channel.clone();
    let failed = tokio::task::spawn_blocking(move || state.failed_deliveries(&name))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the read failed"))?
        .map_err(state_error)?;
    Ok(axum::Json(json!({"channel": channel, "failed": failed})))
}

/// The query of an inbox read.
#[derive(Debug, serde::Deserialize)]
pub struct InboxQuery {
    channel: Option<String>,
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

/// `GET /v1/inbox/{recipient}`
pub async fn inbox(
    State(api): State<Arc<super::ApiState>>,
    Path(recipient): Path<String>,
    Query(query): Query<InboxQuery>,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    check_name(NameKind::Recipient, "recipient", &recipient)?;
    let channel = inbox_channel(&api, query.channel)?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_INBOX_PAGE);
    let messages = read_inbox(&api, &channel, &recipient, query.after, limit).await?;
    Ok(axum::Json(json!({"channel": channel, "recipient": recipient, "messages": messages})))
}

/// The body of a token request (optional): how long the token lives.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    /// Seconds; 900 if absent, at most a day.
    seconds: Option<u64>,
}

/// `POST /v1/inbox/{recipient}/tokens` (`?channel=` as for reading): a
/// recipient token for an app to read this one inbox with (`Authorization: Bearer <token>`, or `?token=` for
/// `EventSource`), without a key. `{"seconds": 600}` sets its life.
pub async fn mint_token(
    State(api): State<Arc<super::ApiState>>,
    Path(recipient): Path<String>,
    Query(query): Query<InboxQuery>,
    body: Bytes,
) -> Result<axum::Json<serde_json::Value>, ApiError> {
    check_name(NameKind::Recipient, "recipient", &recipient)?;
    let channel = inbox_channel(&api, query.channel)?;
    let request: TokenRequest = if body.is_empty() {
        TokenRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequest", format!("the body is not {{\"seconds\": N}}: {e}"))
        })?
    };
    let life = std::time::Duration::from_secs(request.seconds.unwrap_or(900));
    let (token, expires) = api.tokens.mint(&format!("{channel}/{recipient}"), life, std::time::SystemTime::now());
    Ok(axum::Json(json!({"channel": channel, "recipient": recipient, "token": token, "expires_ms": expires})))
}

/// `GET /v1/inbox/{recipient}/events`: Server-Sent Events, one `message` event per
/// inbox message (JSON), its id the message's sequence; a client reconnecting with
/// `Last-Event-ID` (or `?after=`) gets what it missed. Ends when the host stops.
pub async fn inbox_events(
    State(api): State<Arc<super::ApiState>>,
    axum::extract::Extension(caller): axum::extract::Extension<crate::access::Caller>,
    Path(recipient): Path<String>,
    Query(query): Query<InboxQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // A feed opened with a recipient token ends when the token does.
    let until_ms = caller.until_ms;
    check_name(NameKind::Recipient, "recipient", &recipient)?;
    let channel = inbox_channel(&api, query.channel)?;
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let after = resume.unwrap_or(query.after);
    let events = futures_util::stream::unfold(
        (api, channel, recipient, after),
        move |(api, channel, recipient, after)| async move {
            loop {
                let expired = until_ms.is_some_and(|until| crate::access::millis(std::time::SystemTime::now()) > until);
                if api.host.feeds_stopped() || expired {
                    return None;
                }
                match read_inbox(&api, &channel, &recipient, after, MAX_INBOX_PAGE).await {
                    Ok(messages) if !messages.is_empty() => {
                        let last = messages.last().map_or(after, |m| m.sequence);
                        let events: Vec<Result<Event, Infallible>> = messages
                            .iter()
                            .map(|m| {
                                let data = serde_json::to_string(m).unwrap_or_default();
                                Ok(Event::default().event("message").id(m.sequence.to_string()).data(data))
                            })
                            .collect();
                        return Some((futures_util::stream::iter(events), (api, channel, recipient, last)));
                    }
                    Ok(_) => {}
                    Err(_) => tracing::warn!("reading an inbox for its live feed failed; trying again"),
                }
                tokio::time::sleep(FEED_POLL).await;
            }
        },
    );
    Ok(Sse::new(events.flatten()).keep_alive(KeepAlive::default()))
}

/// How often a live feed looks for new messages.
const FEED_POLL: std::time::Duration = std::time::Duration::from_millis(200);

/// The inbox channel a request means: the one named, or the pipeline's only inbox.
fn inbox_channel(api: &super::ApiState, named: Option<String>) -> Result<String, ApiError> {
    let channels = &api.host.channels;
    if let Some(c) = &named {
        check_name(NameKind::Channel, "channel", c)?;
    }
    match named {
        Some(c) if channels.is_inbox(&c) => Ok(c),
        Some(c) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, "UnknownChannel", format!("`{c}` is not an inbox channel")))
        }
        None => match channels.inboxes().collect::<Vec<_>>().as_slice() {
            [one] => Ok((*one).to_owned()),
            [] => Err(ApiError::new(StatusCode::NOT_FOUND, "NoInbox", "the pipeline has no inbox channel")),
            many => Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidRequest",
                format!("name the inbox with ?channel=, one of: {}", many.join(", ")),
            )),
        },
    }
}

async fn read_inbox(
    api: &super::ApiState,
    channel: &str,
    recipient: &str,
    after: u64,
    limit: usize,
) -> Result<Vec<crate::state::InboxMessage>, ApiError> {
    let state = api.host.state.clone();
    let (channel, recipient) = (channel.to_owned(), recipient.to_owned());
    tokio::task::spawn_blocking(move || state.inbox(&channel, &recipient, after, limit))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the read failed"))?
        .map_err(state_error)
}
