//! The admin API: hot swap of a stage's plugin while its stream flows, and
//! its dead letters.
//!
//! - `GET  /v1/stages/{stage}/plugin`: the versions the stage has run, the active one last
//! - `PUT  /v1/stages/{stage}/plugin`: body = the new component (`.wasm`), header
//!   `x-weir-plugin-version` = its version (optional), header `x-weir-state` =
//!   `keep` (default), `migrate` or `reset`: what an aggregator stage does with its
//!   open windows' states when the candidate's state version differs; answers the
//!   version now running, or 422 with the reason it was refused (the running
//!   version keeps running)
//! - `POST /v1/stages/{stage}/plugin/rollback`: back to the version before the last swap
//! - `GET  /v1/stages/{stage}/dead-letters?limit=N&plugin=NAME@VERSION`: how many
//!   are pending and the oldest `limit` (default 100) of them ([`crate::pipeline::dlq`])
//! - `POST /v1/stages/{stage}/dead-letters/redrive?plugin=NAME@VERSION`: feeds the
//!   pending ones (those that version set aside) through the stage again
//! - `GET  /v1/delivery/{name}/dead-letters` and `POST .../redrive`: the same for a
//!   delivery stream's error records ([`crate::pipeline::lake_errors`])
//!
//! These routes are authenticated like the rest of the API, and take bodies up to
//! [`MAX_COMPONENT_BYTES`] (components built by some toolchains weigh tens of MiB).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

use super::native::{ApiError, check_name};
use crate::names::NameKind;
use crate::pipeline::SwapError;
use crate::swap::{StateChange, VersionStatus};

/// Largest component a swap may upload.
pub const MAX_COMPONENT_BYTES: usize = 64 << 20;

/// `GET /v1/stages/{stage}/plugin`
pub async fn versions(
    State(api): State<Arc<super::ApiState>>,
    Path(stage): Path<String>,
) -> Result<axum::Json<Value>, ApiError> {
    check_name(NameKind::Stage, "stage", &stage)?;
    let status = api.host.status();
    let Some(found) = status.stages.into_iter().find(|s| s.name == stage) else {
        return Err(unknown(&api, &stage));
    };
    Ok(axum::Json(json!({"stage": stage, "versions": found.versions})))
}

/// `PUT /v1/stages/{stage}/plugin`
pub async fn swap(
    State(api): State<Arc<super::ApiState>>,
    Path(stage): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<axum::Json<VersionStatus>, ApiError> {
    check_name(NameKind::Stage, "stage", &stage)?;
    if body.is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequest", "the body must be the component (.wasm)"));
    }
    let version = headers.get("x-weir-plugin-version").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let state = match headers.get("x-weir-state").map(|v| v.to_str().unwrap_or("").parse::<StateChange>()) {
        None => StateChange::Keep,
        Some(Ok(state)) => state,
        Some(Err(e)) => {
            return Err(ApiError::new(StatusCode::BAD_REQUEST, "InvalidRequest", format!("x-weir-state: {e}")));
        }
    };
    let host = api.host.clone();
    // Compiling a component takes a while: off the async workers.
    let result = tokio::task::spawn_blocking(move || host.swap_plugin(&stage, &body, version.as_deref(), state))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the swap failed"))?;
    result.map(axum::Json).map_err(swap_error)
}

/// `POST /v1/stages/{stage}/plugin/rollback`
pub async fn rollback(
    State(api): State<Arc<super::ApiState>>,
    Path(stage): Path<String>,
) -> Result<axum::Json<VersionStatus>, ApiError> {
    check_name(NameKind::Stage, "stage", &stage)?;
    let host = api.host.clone();
    let result = tokio::task::spawn_blocking(move || host.rollback_plugin(&stage))
        .await
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the rollback failed"))?;
    result.map(axum::Json).map_err(swap_error)
}

/// `?limit=` and `?plugin=` of the dead-letter routes.
#[derive(Debug, serde::Deserialize)]
pub struct LettersQuery {
    limit: Option<usize>,
    plugin: Option<String>,
}

/// Whose dead letters a route is about.
#[derive(Debug, Clone, Copy)]
enum Owner {
    Stage,
    Delivery,
}

impl Owner {
    /// Checks `name` as this owner's name; the key that names it in answers.
    fn check(self, name: &str) -> Result<&'static str, ApiError> {
        match self {
            Owner::Stage => check_name(NameKind::Stage, "stage", name).map(|()| "stage"),
            Owner::Delivery => check_name(NameKind::DeliveryStream, "delivery stream", name).map(|()| "delivery"),
        }
    }
}

/// `GET /v1/stages/{stage}/dead-letters`
pub async fn dead_letters(
    State(api): State<Arc<super::ApiState>>,
    Path(stage): Path<String>,
    Query(query): Query<LettersQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    list_letters(api, Owner::Stage, stage, query).await
}

/// `GET /v1/delivery/{name}/dead-letters`: the delivery's error records.
pub async fn delivery_dead_letters(
    State(api): State<Arc<super::ApiState>>,
    Path(delivery): Path<String>,
    Query(query): Query<LettersQuery>,
) -> Result<axum::Json<Value>, ApiError> {
    list_letters(api, Owner::Delivery, delivery, query).await
}

async fn list_letters(
    api: Arc<super::ApiState>,
    owner: Owner,
    name: String,
    query: LettersQuery,
) -> Result<axum::Json<Value>, ApiError> {
    let key = owner.check(&name)?;
    let host = api.host.clone();
    let asked = name.clone();
    let letters = tokio::task::spawn_blocking(move || match owner {
        Owner::Stage => host.dead_letters(&asked, query.plugin.as_deref()),
        Owner::Delivery => host.delivery_errors(&asked, query.plugin.as_deref()),
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "listing failed"))?
    .map_err(dlq_error)?;
    let limit = query.limit.unwrap_or(100);
    Ok(axum::Json(json!({
        key: name,
        "pending": letters.len(),
        "letters": letters.iter().take(limit).collect::<Vec<_>>(),
    })))
}

/// `POST /v1/stages/{stage}/dead-letters/redrive`
pub async fn redrive(
    State(api): State<Arc<super::ApiState>>,
    Path(stage): Path<String>,
    Query(query): Query<LettersQuery>,
) -> Result<axum::Json<crate::pipeline::dlq::Redrive>, ApiError> {
    redrive_letters(api, Owner::Stage, stage, query).await
}

/// `POST /v1/delivery/{name}/dead-letters/redrive`: the delivery's error records, through it again.
pub async fn delivery_redrive(
    State(api): State<Arc<super::ApiState>>,
    Path(delivery): Path<String>,
    Query(query): Query<LettersQuery>,
) -> Result<axum::Json<crate::pipeline::dlq::Redrive>, ApiError> {
    redrive_letters(api, Owner::Delivery, delivery, query).await
}

async fn redrive_letters(
    api: Arc<super::ApiState>,
    owner: Owner,
    name: String,
    query: LettersQuery,
) -> Result<axum::Json<crate::pipeline::dlq::Redrive>, ApiError> {
    owner.check(&name)?;
    let host = api.host.clone();
    tokio::task::spawn_blocking(move || match owner {
        Owner::Stage => host.redrive(&name, query.plugin.as_deref()),
        Owner::Delivery => host.redrive_delivery(&name, query.plugin.as_deref()),
    })
    .await
    .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", "the redrive failed"))?
    .map(axum::Json)
    .map_err(dlq_error)
}

fn dlq_error(e: crate::pipeline::dlq::DlqError) -> ApiError {
    use crate::pipeline::dlq::DlqError;
    let (status, code) = match &e {
        DlqError::UnknownStage { .. } => (StatusCode::NOT_FOUND, "UnknownStage"),
        DlqError::UnknownDelivery { .. } => (StatusCode::NOT_FOUND, "UnknownDeliveryStream"),
        DlqError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "DeadLettersUnavailable"),
        DlqError::Stage { .. } | DlqError::Delivery { .. } => (StatusCode::CONFLICT, "RedriveNotApplied"),
    };
    tracing::warn!(error = %e, "dead letters not listed or redriven");
    ApiError::new(status, code, e.to_string())
}

fn unknown(api: &super::ApiState, stage: &str) -> ApiError {
    swap_error(SwapError::UnknownStage { pipeline: api.host.pipeline.name.to_string(), stage: stage.to_owned() })
}

fn swap_error(e: SwapError) -> ApiError {
    let (status, code) = match &e {
        SwapError::UnknownStage { .. } => (StatusCode::NOT_FOUND, "UnknownStage"),
        SwapError::Refused { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "CandidateRefused"),
        SwapError::Stage(_) => (StatusCode::CONFLICT, "SwapNotApplied"),
    };
    tracing::warn!(error = %e, "plugin swap not applied");
    ApiError::new(status, code, e.to_string())
}
