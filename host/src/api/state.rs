//! State tables and inboxes over HTTP, for applications (the mobile app sets a
//! customer's threshold and reads the customer's messages):
//!
//! - `GET    /v1/tables/{table}/items/{key}`: the item's bytes (404 if absent)
//! - `PUT    /v1/tables/{table}/items/{key}`: body = the new value
//! - `DELETE /v1/tables/{table}/items/{key}`
//! - `GET    /v1/inbox/{recipient}?channel=<inbox>&after=<sequence>&limit=<n>`: the
//!   recipient's messages after `after` (0: from the first), oldest first; `channel`
//!   may be left out when the pipeline has one inbox
//! - `GET    /v1/channels/{channel}/failed`: a webhook channel's deliveries that failed
//!   for good (body, attempts, last error)

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::native::ApiError;
use crate::state::StateError;

/// Most messages one inbox read returns.
const MAX_INBOX_PAGE: usize = 1000;

fn state_error(e: StateError) -> ApiError {
    match e {
        StateError::UnknownTable(_) => ApiError::new(StatusCode::NOT_FOUND, "UnknownTable", e.to_string()),
        _ => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "StateUnavailable", e.to_string()),
    }
}

/// `GET /v1/tables/{table}/items/{key}`
pub async fn get_item(
    State(api): State<Arc<super::ApiState>>,
    Path((table, key)): Path<(String, String)>,
) -> Result<Response, ApiError> {
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
    let state = api.host.state.clone();
    tokio::task::spawn_blocking(move || state.put(&table, &key, &body))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the write failed"))?
        .map_err(state_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/tables/{table}/items/{key}`
pub async fn delete_item(
    State(api): State<Arc<super::ApiState>>,
    Path((table, key)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
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
    let channels = &api.host.channels;
    let channel = match query.channel {
        Some(c) if channels.is_inbox(&c) => c,
        Some(c) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "UnknownChannel",
                format!("`{c}` is not an inbox channel"),
            ));
        }
        None => {
            let inboxes: Vec<&str> = channels.inboxes().collect();
            match inboxes.as_slice() {
                [one] => (*one).to_owned(),
                [] => return Err(ApiError::new(StatusCode::NOT_FOUND, "NoInbox", "the pipeline has no inbox channel")),
                many => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "InvalidRequest",
                        format!("name the inbox with ?channel=, one of: {}", many.join(", ")),
                    ));
                }
            }
        }
    };
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_INBOX_PAGE);
    let state = api.host.state.clone();
    let (channel_name, who) = (channel.clone(), recipient.clone());
    let messages = tokio::task::spawn_blocking(move || state.inbox(&channel_name, &who, query.after, limit))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the read failed"))?
        .map_err(state_error)?;
    Ok(axum::Json(json!({"channel": channel, "recipient": recipient, "messages": messages})))
}
