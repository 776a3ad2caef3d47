//! `SubscribeToShard`: enhanced fan-out. A registered consumer subscribes to a
//! shard from a starting position and the records are pushed to it as they are
//! appended, as events on one response (`application/vnd.amazon.eventstream`,
//! [`crate::api::eventstream`]): first `initial-response`, then
//! `SubscribeToShardEvent`s with the records, `ContinuationSequenceNumber` (to
//! subscribe again from, `AFTER_SEQUENCE_NUMBER`) and `MillisBehindLatest`; one
//! at least every 5 seconds when nothing arrives. The subscription ends after 5
//! minutes, as in Kinesis, or with `ChildShards` once a closed shard has been read
//! to its end. It is served over HTTP/2 (cleartext, with prior knowledge, as
//! SDKs speak it to a plain `http://` endpoint) and, for clients such as boto3,
//! over HTTP/1.1.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::control::{Control, operations};
use super::sequence::Sequences;
use super::{Args, Read, Start, find_shard};
use crate::access::Caller;
use crate::api::aws::{AwsError, Wire, parse_body};
use crate::api::eventstream;
use crate::pipeline::Host;

/// How long a subscription lasts, as in Kinesis; the consumer then subscribes again.
pub const SUBSCRIPTION: Duration = Duration::from_secs(300);
/// With nothing new, an event still goes out this often.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// Most records in one event.
const MAX_EVENT_RECORDS: usize = 10_000;

/// A running subscription: where it is in its shard.
struct Subscription {
    host: Arc<Host>,
    stream: String,
    shard: u32,
    position: u64,
    numbers: Sequences,
    until: Instant,
    started: bool,
    ended: bool,
    /// How events are encoded: as the request was.
    wire: Wire,
}

/// Answers `SubscribeToShard` with its event stream, or with an error before it starts.
/// `body` is the request as JSON; `wire` is how the client speaks.
pub(in crate::api) async fn subscribe(
    host: Arc<Host>,
    caller: Caller,
    control: Arc<Control>,
    body: Bytes,
    wire: Wire,
) -> Response {
    let opened = tokio::task::spawn_blocking(move || open(host, &caller, &control, &body, wire)).await;
    let subscription = match opened {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return wire.error(e),
        Err(_) => return wire.error(AwsError::internal()),
    };
    tracing::debug!(stream = %subscription.stream, shard = subscription.shard, "subscribed");
    let events = futures_util::stream::unfold(subscription, |mut s| async move {
        let frame = s.next_event().await?;
        Some((Ok::<_, Infallible>(Bytes::from(frame)), s))
    });
    ([(header::CONTENT_TYPE, HeaderValue::from_static(eventstream::CONTENT_TYPE))], Body::from_stream(events))
        .into_response()
}

/// Checks the call: a registered consumer (its ARN), a shard of its stream, a starting position.
fn open(
    host: Arc<Host>,
    caller: &Caller,
    control: &Control,
    body: &[u8],
    wire: Wire,
) -> Result<Subscription, AwsError> {
    let args: Args<'_> = parse_body(body)?;
    if args.consumer_arn.is_none() {
        return Err(AwsError::invalid("ConsumerARN is required"));
    }
    let (stream, consumer) = operations::addressed(&args)?;
    caller.may("kinesis:SubscribeToShard", &format!("stream/{stream}"))?;
    let streams = host.streams();
    let info = streams.info(&stream)?;
    if !control.get(&info.name, info.created_ms)?.consumers.contains_key(&consumer) {
        return Err(AwsError::new(
            "ResourceNotFoundException",
            format!("Consumer {consumer} on stream {stream} not found: register it first (RegisterStreamConsumer)."),
        ));
    }
    let shard = find_shard(&info, args.shard_id.as_deref().ok_or_else(|| AwsError::invalid("ShardId is required"))?)?;
    let starting = args.starting_position.as_ref().ok_or_else(|| AwsError::invalid("StartingPosition is required"))?;
    let start = Start {
        kind: Some(starting.kind.as_str()),
        kind_field: "StartingPosition.Type",
        number: starting.sequence_number.as_deref(),
        number_field: "StartingPosition.SequenceNumber",
        timestamp: starting.timestamp.as_ref(),
    };
    let position = start.position(streams.as_ref(), &info, shard)?;
    Ok(Subscription {
        numbers: Sequences::of(&info.name, info.created_ms),
        host,
        stream,
        shard: shard.index,
        position,
        until: Instant::now() + SUBSCRIPTION,
        started: false,
        ended: false,
        wire,
    })
}

impl Subscription {
    /// The next event to send, or `None` once the subscription is over.
    async fn next_event(&mut self) -> Option<Vec<u8>> {
        if self.ended || Instant::now() >= self.until || self.host.feeds_stopped() {
            return None;
        }
        if !self.started {
            self.started = true;
            let (payload, content_type) = self.wire.event_payload("{}".into());
            return Some(eventstream::event("initial-response", content_type, &payload));
        }
        let wait = HEARTBEAT.min(self.until.saturating_duration_since(Instant::now()));
        let (host, stream, shard, position, numbers) =
            (self.host.clone(), self.stream.clone(), self.shard, self.position, self.numbers);
        let read = tokio::task::spawn_blocking(move || read(&host, &stream, shard, position, numbers, wait)).await;
        match read {
            Ok(Ok((payload, next, ended))) => {
                self.position = next;
                self.ended = ended;
                let (payload, content_type) = self.wire.event_payload(payload);
                Some(eventstream::event("SubscribeToShardEvent", content_type, &payload))
            }
            Ok(Err(e)) => {
                self.ended = true;
                Some(self.exception(e))
            }
            Err(_) => {
                self.ended = true;
                Some(self.exception(AwsError::internal()))
            }
        }
    }

    /// The error that ends the subscription, as an event.
    fn exception(&self, e: AwsError) -> Vec<u8> {
        let (payload, content_type) = self.wire.event_payload(json!({ "message": e.message }).to_string());
        eventstream::exception(e.kind, content_type, &payload)
    }
}

/// Waits (at most `wait`) for records past `position`, and reads them into one
/// event: its JSON, the position after it, and whether the shard has ended.
fn read(
    host: &Host,
    stream: &str,
    shard: u32,
    position: u64,
    numbers: Sequences,
    wait: Duration,
) -> Result<(String, u64, bool), AwsError> {
    let streams = host.streams();
    let ended_before =
        streams.lineage(stream)?.get(shard as usize).and_then(|l| l.closed_at).is_some_and(|end| position >= end);
    if !ended_before {
        // Waiting is only a chance for records to arrive: what is there is sent either way.
        let _ = streams.wait_for(stream, shard, position, 1, wait);
    }
    let info = streams.info(stream)?;
    let at = info.shards.get(shard as usize).ok_or_else(|| AwsError::invalid("the subscription's shard is gone"))?;
    let read = Read::from(streams.as_ref(), &info, at, position, MAX_EVENT_RECORDS)?;
    let mut event = json!({
        "Records": read.records,
        "ContinuationSequenceNumber": numbers.before(shard, read.next),
        "MillisBehindLatest": read.behind_ms,
    });
    let ended = read.children.is_some();
    if let Some(children) = read.children {
        event["ChildShards"] = json!(children);
    }
    Ok((event.to_string(), read.next, ended))
}
