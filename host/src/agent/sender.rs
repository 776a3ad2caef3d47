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
use crate::stream::Source;

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
    /// Its producer (streams only; see [`crate::stream::Source`]).
    pub source: Option<Source>,
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
        let backoff = (flow.retry_initial_backoff, flow.retry_max_backoff);
        Self::to(client, flow.destination.clone(), backoff, counters)
    }

    /// A sender for `destination`, backing off from `backoff.0` up to `backoff.1`.
    pub fn to(
        client: Client,
        destination: Destination,
        backoff: (Duration, Duration),
        counters: Arc<Counters>,
    ) -> Self {
        Self { client, destination, initial_backoff: backoff.0, max_backoff: backoff.1, counters }
    }

    fn request(&self, records: &[&Outgoing]) -> (Service, &'static str, Value) {
        let b64 = |r: &Outgoing| base64::engine::general_purpose::STANDARD.encode(&r.data);
        match &self.destination {
            Destination::Stream(name) => {
                // Each entry names its record's source (weir's `WeirSource`, which AWS does
                // not have): one put keeps the order the flow merged its files in.
                let entries: Vec<Value> = records
                    .iter()
                    .map(|r| match &r.source {
                        Some(source) => json!({"Data": b64(r), "PartitionKey": r.key, "WeirSource": &**source}),
                        None => json!({"Data": b64(r), "PartitionKey": r.key}),
                    })
                    .collect();
                (Service::Kinesis, "PutRecords", json!({"StreamName": name, "Records": entries}))
            }
            Destination::Delivery(name) => {
                let entries: Vec<Value> = records.iter().map(|r| json!({"Data": b64(r)})).collect();
                (Service::Firehose, "PutRecordBatch", json!({"DeliveryStreamName": name, "Records": entries}))
            }
        }
    }

    /// Sends `records`, in their order and each naming its source, until each
    /// is acknowledged or refused for good.
    pub async fn send(&self, records: &[Outgoing], stop: &mut watch::Receiver<bool>) -> Result<(), Abandoned> {
        let mut todo: Vec<&Outgoing> = records.iter().collect();
        let mut backoff = self.initial_backoff;
        let mut give_up_at: Option<Instant> = None;
        while !todo.is_empty() {
            let (service, operation, body) = self.request(&todo);
            let call = self.client.call_service(service, operation, &body);
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, call).await;
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;

    use super::*;
    use crate::agent::config::{PartitionKey, StartPosition};

    fn flow(endpoint: &str) -> FlowConfig {
        FlowConfig {
            files: "/nowhere/*.log".into(),
            endpoint: endpoint.into(),
            destination: Destination::Stream("lines".into()),
            start: StartPosition::Beginning,
            partition_key: PartitionKey::Random,
            max_batch_records: 500,
            max_batch_bytes: 1 << 20,
            max_batch_age: Duration::from_secs(1),
            multi_line_start: None,
            steps: Vec::new(),
            record_time: None,
            retry_initial_backoff: Duration::from_millis(10),
            retry_max_backoff: Duration::from_millis(40),
        }
    }

    #[tokio::test]
    async fn only_failed_records_are_sent_again_after_throttling_and_5xx() {
        // Each request's records, as weir saw them.
        let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let input: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let data: Vec<String> = input["Records"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["Data"].as_str().map(str::to_owned))
                        .collect();
                    let call = {
                        let mut log = log.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        log.push(data.clone());
                        log.len()
                    };
                    match call {
                        1 => (StatusCode::SERVICE_UNAVAILABLE, "{}").into_response(),
                        2 => {
                            let results: Vec<Value> = (0..data.len())
                                .map(|i| match i {
                                    1 => json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "slow down"}),
                                    2 => json!({"ErrorCode": "InvalidArgumentException", "ErrorMessage": "too large"}),
                                    _ => json!({"SequenceNumber": "1", "ShardId": "shardId-000000000000"}),
                                })
                                .collect();
                            axum::Json(json!({"FailedRecordCount": 2, "Records": results})).into_response()
                        }
                        _ => {
                            let results: Vec<Value> = data.iter().map(|_| json!({"SequenceNumber": "2"})).collect();
                            axum::Json(json!({"FailedRecordCount": 0, "Records": results})).into_response()
                        }
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });

        let counters = Arc::new(Counters::default());
        let sender = Sender::new(Client::new(&url).expect("client"), &flow(&url), counters.clone());
        let records: Vec<Outgoing> = ["a", "b", "c", "d"]
            .iter()
            .map(|d| Outgoing { data: d.as_bytes().to_vec(), key: "k".into(), source: None })
            .collect();
        let (_stop_tx, mut stop) = watch::channel(false);
        sender.send(&records, &mut stop).await.expect("sent");
        server.abort();

        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let all: Vec<String> = ["a", "b", "c", "d"].iter().map(|s| b64(s)).collect();
        assert_eq!(seen, vec![all.clone(), all, vec![b64("b")]], "the 503 resends all, the partial failure only `b`");
        let c = counters.snapshot();
        assert_eq!((c.records_sent, c.records_refused, c.retries), (3, 1, 2));
    }

    #[tokio::test]
    async fn one_put_keeps_the_order_each_record_naming_its_source() {
        // The sources of each request's records, in order.
        let seen: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
        let log = seen.clone();
        let app = axum::Router::new().route(
            "/",
            axum::routing::post(move |body: axum::body::Bytes| {
                let log = log.clone();
                async move {
                    let input: Value = serde_json::from_slice(&body).unwrap_or_default();
                    let entries = input["Records"].as_array().cloned().unwrap_or_default();
                    let count = entries.len();
                    let sources =
                        entries.iter().map(|e| e["WeirSource"].as_str().unwrap_or("none").to_owned()).collect();
                    log.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(sources);
                    let results: Vec<Value> = (0..count).map(|_| json!({"SequenceNumber": "1"})).collect();
                    axum::Json(json!({"FailedRecordCount": 0, "Records": results}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let sender = Sender::new(Client::new(&url).expect("client"), &flow(&url), Arc::default());
        let from = |source: &str| Outgoing { data: b"x".to_vec(), key: "k".into(), source: Some(source.into()) };
        let records = vec![from("h:/a.log"), from("h:/b é.log"), from("h:/a.log")];
        let (_stop_tx, mut stop) = watch::channel(false);
        sender.send(&records, &mut stop).await.expect("sent");
        server.abort();
        let seen = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        assert_eq!(seen, [vec!["h:/a.log".to_owned(), "h:/b é.log".to_owned(), "h:/a.log".to_owned()]]);
    }

    #[tokio::test]
    async fn a_stopping_agent_gives_up_on_an_unreachable_weir() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port");
        let url = format!("http://{port}");
        let counters = Arc::new(Counters::default());
        let sender = Sender::new(Client::new(&url).expect("client"), &flow(&url), counters.clone());
        let (stop_tx, mut stop) = watch::channel(false);
        let records = vec![Outgoing { data: b"x".to_vec(), key: "k".into(), source: None }];
        let sending = tokio::spawn(async move { sender.send(&records, &mut stop).await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let _ = stop_tx.send(true);
        let started = Instant::now();
        let outcome = tokio::time::timeout(STOP_GRACE * 3, sending).await.expect("gives up in time").expect("join");
        assert!(outcome.is_err(), "not acknowledged");
        assert!(started.elapsed() >= STOP_GRACE - Duration::from_millis(200), "kept trying for the grace period");
        assert!(counters.snapshot().retries > 1);
    }
}
