//! Values the hosts change together: what a pipeline's state tables and
//! notification channels keep, when several hosts share them. They are keys of
//! the positions bucket under `_x.` (a stream's [`token`](crate::token) never
//! starts with `_` and another letter, so they meet no position), so that one
//! atomic batch can change them together with the lease of the consumer whose
//! work changed them.
//!
//! - **Reads** go to the bucket's leader, and say the revision they saw.
//! - **A commit** is one atomic batch: all of its writes are stored, or none.
//!   Each write of a key that was read expects the revision read (a
//!   compare-and-set per key), so two hosts changing one key cannot both win:
//!   the second is refused whole and redone from fresh reads.
//! - **The fence.** A commit made for a consumer renews that consumer's lease
//!   in the same batch, expecting the revision this host last wrote of it: a
//!   host that lost the consumer cannot change anything any more.

use async_nats::jetstream::consumer::push;
use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;

/// Where the shared values start among the bucket's keys.
pub(crate) const NAMESPACE: &str = "_x.";

/// The most messages of one atomic batch the servers take.
pub(crate) const MAX_BATCH: usize = 1000;

/// A shared value as its key's last revision has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    /// The value; `None`: absent (never written, or deleted).
    pub value: Option<Bytes>,
    /// The revision read (0: never written); a write expecting it is refused
    /// if the key changed since.
    pub revision: u64,
}

/// One change of a commit.
#[derive(Debug, Clone)]
pub struct SharedWrite {
    /// The key (dot-separated tokens of `a-z A-Z 0-9 _ -`).
    pub key: String,
    /// The new value; `None` deletes it.
    pub value: Option<Bytes>,
    /// The revision the key must still have (from a read); `None`: written whatever it has.
    pub expected: Option<u64>,
}

/// Why shared values could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A key read changed since: nothing was written; read again and redo.
    #[error("another host changed a value this change read; nothing was written")]
    Conflict,
    /// The consumer's lease was taken by another host: nothing was written.
    #[error("this host no longer holds consumer `{consumer}` of `{stream}`; nothing was written")]
    LeaseLost {
        /// The stream.
        stream: String,
        /// The consumer.
        consumer: String,
    },
    /// More writes than one atomic batch takes.
    #[error("{writes} values changed at once; at most {most} can be: make the batches smaller")]
    TooLarge {
        /// The writes asked for.
        writes: usize,
        /// The most one commit takes.
        most: usize,
    },
    /// A key that is not a NATS subject.
    #[error("`{0}` cannot be a key: only dot-separated tokens of a-z A-Z 0-9 _ -")]
    InvalidKey(String),
    /// The cluster did not answer, or answered with an error.
    #[error("the cluster cannot do it now: {0}")]
    Unavailable(String),
}

/// One message of an atomic batch to a bucket.
pub(crate) struct BatchMessage {
    /// The key, in the bucket.
    pub key: String,
    /// `None`: a delete marker.
    pub payload: Option<Bytes>,
    /// The revision the key must have.
    pub expected: Option<u64>,
}

/// How an atomic batch was refused.
pub(crate) enum Refused {
    /// A key's revision was not the one expected.
    WrongRevision,
    /// Anything else.
    Failed(String),
}

pub(crate) fn check_key(key: &str) -> Result<(), SharedError> {
    let valid = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if key.split('.').all(valid) { Ok(()) } else { Err(SharedError::InvalidKey(key.to_owned())) }
}

/// Reads `key` from the bucket's leader: a server that is behind would answer
/// with an older revision.
pub(crate) async fn read(bucket: &kv::Store, key: &str) -> Result<SharedValue, String> {
    let subject = format!("{}{key}", bucket.prefix);
    let message = match bucket.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => message,
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
            return Ok(SharedValue { value: None, revision: 0 });
        }
        Err(e) => return Err(e.to_string()),
    };
    let value = (!is_deleted(&message.headers)).then_some(message.payload);
    Ok(SharedValue { value, revision: message.sequence })
}

fn is_deleted(headers: &async_nats::HeaderMap) -> bool {
    headers.get("KV-Operation").is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"))
}

/// Longest a scan waits for its consumer's next message before it starts over
/// with a fresh consumer (one whose delivery stalled).
const SCAN_STALL: std::time::Duration = std::time::Duration::from_secs(2);
/// How often a scan starts over.
const SCAN_TRIES: usize = 3;

/// Every live key under `prefix` (a key prefix ending in `.`) with its value
/// and revision, in the order they were last written.
pub(crate) async fn scan(
    client: &async_nats::Client,
    bucket: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, Bytes, u64)>, String> {
    let mut tries = 1;
    loop {
        match scan_once(client, bucket, prefix).await {
            Err(e) if tries < SCAN_TRIES => {
                tracing::debug!(prefix, error = %e, "a scan of shared values starts over");
                tries += 1;
            }
            done => return done,
        }
    }
}

async fn scan_once(
    client: &async_nats::Client,
    bucket: &kv::Store,
    prefix: &str,
) -> Result<Vec<(String, Bytes, u64)>, String> {
    let consumer = bucket
        .stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}{prefix}>", bucket.prefix),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::LastPerSubject,
            replay_policy: async_nats::jetstream::consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(out);
    }
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let next = tokio::time::timeout(SCAN_STALL, messages.next()).await;
        let next = next.map_err(|_| format!("no message within {SCAN_STALL:?}"))?;
        let Some(message) = next else { break };
        let message = message.map_err(|e| e.to_string())?;
        let info = message.info().map_err(|e| e.to_string())?;
        let (sequence, pending) = (info.stream_sequence, info.pending);
        let deleted = message.headers.as_ref().is_some_and(is_deleted);
        if !deleted && let Some(key) = message.subject.strip_prefix(bucket.prefix.as_str()) {
            out.push((key.to_owned(), message.payload.clone(), sequence));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(out)
}

/// Where an atomic batch goes: the client sending it, the bucket, and the
/// batch's id (unique to it).
pub(crate) struct BatchTo<'a> {
    pub client: &'a async_nats::Client,
    pub bucket: &'a kv::Store,
    pub id: &'a str,
}

/// Publishes `messages` as one atomic batch: all stored, or none. Returns the
/// revision of the first.
pub(crate) async fn atomic(to: &BatchTo<'_>, messages: Vec<BatchMessage>) -> Result<u64, Refused> {
    let BatchTo { client, bucket, id: batch } = *to;
    let count = messages.len();
    if count == 0 || count > MAX_BATCH {
        return Err(Refused::Failed(format!("an atomic batch holds 1 to {MAX_BATCH} messages, not {count}")));
    }
    let mut commit = None;
    for (k, message) in messages.into_iter().enumerate() {
        let subject = format!("{}{}", bucket.prefix, message.key);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", batch);
        headers.insert("Nats-Batch-Sequence", (k + 1).to_string().as_str());
        if let Some(expected) = message.expected {
            headers.insert("Nats-Expected-Last-Subject-Sequence", expected.to_string().as_str());
        }
        if message.payload.is_none() {
            headers.insert("KV-Operation", "DEL");
        }
        let payload = message.payload.unwrap_or_default();
        if k + 1 == count {
            headers.insert("Nats-Batch-Commit", "1");
            commit = Some(client.request_with_headers(subject, headers, payload));
        } else {
            client.publish_with_headers(subject, headers, payload).await.map_err(|e| Refused::Failed(e.to_string()))?;
        }
    }
    let answer = commit.ok_or(Refused::Failed("an empty batch".into()))?.await;
    let answer = answer.map_err(|e| Refused::Failed(e.to_string()))?;
    let ack: serde_json::Value = serde_json::from_slice(&answer.payload).map_err(|e| Refused::Failed(e.to_string()))?;
    if let Some(error) = ack.get("error") {
        // Both say "wrong last sequence": a key's revision was not the one expected
        // (2.12.3 answers with either code).
        return Err(match error["err_code"].as_u64() {
            Some(10071 | 10164) => Refused::WrongRevision,
            _ => Refused::Failed(format!("the batch was refused: {error}")),
        });
    }
    match (ack["seq"].as_u64(), ack["count"].as_u64()) {
        (Some(last), Some(n)) if n == count as u64 && last >= n => Ok(last - n + 1),
        _ => Err(Refused::Failed(format!("the batch's answer does not say where it went: {ack}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dotted_tokens() {
        for key in ["t.totals.4331", "i.app.43.00000000000000000001", "a-b_c"] {
            assert!(check_key(key).is_ok(), "{key}");
        }
        for key in ["", "t..x", "t.x.", "t x", "t.*", "t.>", "t.é"] {
            assert!(matches!(check_key(key), Err(SharedError::InvalidKey(_))), "{key}");
        }
    }
}
