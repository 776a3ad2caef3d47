//! Sending one batch of records to weir until every record is acknowledged:
//! Kinesis `PutRecords` for streams, Firehose `PutRecordBatch` for delivery
//! streams. Unreachable hosts, throttling and 5xx answers are retried with
//! exponential backoff; after a partial failure only the failed records are
//! sent again. Records weir refuses for good (e.g. too large) are dropped and
//! counted, so one bad line cannot stop a flow.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::Counters;
use super::config::{Destination, FlowConfig};
use crate::client::{Client, ClientError, Service};

/// Longest wait for one answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping agent keeps retrying before it leaves the batch to the next run.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One record to send.
#[derive(Debug)]
pub struct Outgoing {
    /// The record.
    pub data: Vec<u8>,
    /// Its partition key (streams only).
    pub key: String,
}

/// The agent was stopped before weir acknowledged the batch.
#[derive(Debug, thiserror::Error)]
#[error("stopped before weir acknowledged the batch; it is sent again on the next start")]
pub struct Abandoned;

/// Per-record error codes worth trying again.
fn retryable(code: &str) -> bool {
    matches!(
        code,
        "ProvisionedThroughputExceededException"
            | "ServiceUnavailableException"
            | "InternalFailure"
            | "InternalFailureException"
            | "ThrottlingException"
            | "LimitExceededException"
    )
}

/// Sends batches of one flow.
pub struct Sender {
    client: Client,
    destination: Destination,
    initial_backoff: Duration,
    max_backoff: Duration,
    counters: Arc<Counters>,
}

impl Sender {
    /// A sender for `flow`'s destination.
    pub fn new(client: Client, flow: &FlowConfig, counters: Arc<Counters>) -> Self {
        Self {
            client,
            destination: flow.destination.clone(),
            initial_backoff: flow.retry_initial_backoff,
            max_backoff: flow.retry_max_backoff,
            counters,
        }
    }

    fn request(&self, records: &[&Outgoing]) -> (Service, &'static str, Value) {
        let b64 = |r: &Outgoing| base64::engine::general_purpose::STANDARD.encode(&r.data);
        match &self.destination {
            Destination::Stream(name) => {
                let entries: Vec<Value> =
                    records.iter().map(|r| json!({"Data": b64(r), "PartitionKey": r.key})).collect();
                (Service::Kinesis, "PutRecords", json!({"StreamName": name, "Records": entries}))
            }
            Destination::Delivery(name) => {
                let entries: Vec<Value> = records.iter().map(|r| json!({"Data": b64(r)})).collect();
                (Service::Firehose, "PutRecordBatch", json!({"DeliveryStreamName": name, "Records": entries}))
            }
        }
    }

    /// Sends `records` until each is acknowledged or refused for good.
    pub async fn send(&self, records: &[Outgoing], stop: &mut watch::Receiver<bool>) -> Result<(), Abandoned> {
        let mut todo: Vec<&Outgoing> = records.iter().collect();
        let mut backoff = self.initial_backoff;
        let mut give_up_at: Option<Instant> = None;
        while !todo.is_empty() {
            let (service, operation, body) = self.request(&todo);
            let answer =
                tokio::time::timeout(REQUEST_TIMEOUT, self.client.call_service(service, operation, &body)).await;
            let before = todo.len();
            match answer {
                Ok(Ok(answer)) => todo = self.settle(todo, &answer),
                Ok(Err(e)) => {
                    let transient = match &e {
                        ClientError::Api { status, kind, .. } => *status >= 500 || retryable(kind),
                        _ => true,
                    };
                    if transient {
                        tracing::warn!(error = %e, records = todo.len(), retry_in = ?backoff, "weir did not take the batch");
                    } else {
                        tracing::error!(error = %e, records = todo.len(), retry_in = ?backoff, "weir refused the batch; fix the cause, the agent keeps retrying");
                    }
                }
                Err(_) => tracing::warn!(records = todo.len(), retry_in = ?backoff, "weir did not answer in time"),
            }
            if todo.is_empty() {
                break;
            }
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
            // Progress (a partial failure) retries soon; no progress backs off further.
            if todo.len() < before {
                backoff = self.initial_backoff;
            }
            let mut wait = backoff;
            if *stop.borrow() {
                let at = *give_up_at.get_or_insert_with(|| Instant::now() + STOP_GRACE);
                let now = Instant::now();
                if now >= at {
                    return Err(Abandoned);
                }
                wait = wait.min(at - now);
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                // Asked to stop: try once more right away, then give up after the grace period.
                changed = stop.changed() => {
                    if changed.is_err() {
                        return Err(Abandoned);
                    }
                }
            }
            if todo.len() >= before {
                backoff = (backoff * 2).min(self.max_backoff);
            }
        }
        Ok(())
    }

    /// Counts what weir accepted or refused for good; returns what to send again.
    fn settle<'a>(&self, todo: Vec<&'a Outgoing>, answer: &Value) -> Vec<&'a Outgoing> {
        let field = match self.destination {
            Destination::Stream(_) => "Records",
            Destination::Delivery(_) => "RequestResponses",
        };
        let Some(results) = answer[field].as_array().filter(|r| r.len() == todo.len()) else {
            tracing::warn!("weir's answer does not list every record; sending the batch again");
            return todo;
        };
        let mut again = Vec::new();
        for (record, result) in todo.into_iter().zip(results) {
            match result["ErrorCode"].as_str() {
                None => {
                    self.counters.records_sent.fetch_add(1, Ordering::Relaxed);
                }
                Some(code) if retryable(code) => again.push(record),
                Some(code) => {
                    self.counters.records_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        code,
                        message = result["ErrorMessage"].as_str().unwrap_or(""),
                        bytes = record.data.len(),
                        "weir refused a record for good; dropping it"
                    );
                }
            }
        }
        again
    }
}
