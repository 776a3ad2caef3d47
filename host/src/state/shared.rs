//! The state on a NATS cluster, shared by every host of the pipeline: each
//! item, sent key, inbox message and webhook delivery is one shared value
//! ([`weir_nats::NatsStreams::shared_commit`]). A transaction reads from the
//! cluster's leaders and keeps its writes until it commits them in one atomic
//! batch, each write of a value it read expecting the revision it read: a
//! transaction that raced another host's is refused whole
//! ([`StateError::Conflict`]) and redone. A notifier stage's transaction also
//! renews its lease, so a host that lost the stage changes nothing.
//!
//! Keys (names as NATS tokens, anything else in hex behind a `k`):
//! `t.<table>.k<key>` items, `s.<channel>.k<key>` keys sent,
//! `q.<channel>` an inbox channel's last sequence,
//! `i.<channel>.k<recipient>.<sequence, 20 digits>` inbox messages,
//! `o.k<delivery id>` webhook deliveries to make, `f.k<delivery id>` failed ones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use weir_nats::{NatsStreams, SharedError, SharedValue, SharedWrite, hex_token as hex, token};

use super::{Delivery, InboxMessage, OutboxEntry, Settle, StateError, storage};

fn item_key(table: &str, key: &str) -> String {
    format!("t.{}.{}", token(table), hex(key))
}

fn sent_key(channel: &str, key: &str) -> String {
    format!("s.{}.{}", token(channel), hex(key))
}

fn sequence_key(channel: &str) -> String {
    format!("q.{}", token(channel))
}

fn inbox_prefix(channel: &str, recipient: &str) -> String {
    format!("i.{}.{}.", token(channel), hex(recipient))
}

fn outbox_key(id: &str) -> String {
    format!("o.{}", hex(id))
}

fn failed_key(id: &str) -> String {
    format!("f.{}", hex(id))
}

impl From<SharedError> for StateError {
    fn from(e: SharedError) -> StateError {
        match e {
            SharedError::Conflict => StateError::Conflict,
            SharedError::LeaseLost { stream, consumer } => StateError::LeaseLost { stream, consumer },
            SharedError::TooLarge { writes, most } => StateError::TooLarge { writes, most },
            e => StateError::Storage(e.to_string()),
        }
    }
}

/// The state kept on the cluster.
pub(super) struct SharedState {
    nats: Arc<NatsStreams>,
}

impl SharedState {
    pub(super) fn new(nats: Arc<NatsStreams>) -> SharedState {
        SharedState { nats }
    }

    pub(super) fn begin(&self, fence: Option<(&str, &str)>) -> SharedTx {
        SharedTx {
            nats: self.nats.clone(),
            fence: fence.map(|(stream, consumer)| (stream.to_owned(), consumer.to_owned())),
            read: Mutex::default(),
            written: Mutex::default(),
        }
    }

    pub(super) fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.nats.shared_read(&item_key(table, key))?.value.map(|v| v.to_vec()))
    }

    fn entries<T: serde::de::DeserializeOwned>(&self, prefix: &str) -> Result<Vec<T>, StateError> {
        let found = self.nats.shared_scan(prefix)?;
        found.iter().map(|(_, value, _)| serde_json::from_slice(value).map_err(storage)).collect()
    }

    pub(super) fn outbox(&self) -> Result<Vec<OutboxEntry>, StateError> {
        self.entries("o.")
    }

    pub(super) fn failed(&self) -> Result<Vec<OutboxEntry>, StateError> {
        self.entries("f.")
    }

    pub(super) fn inbox(
        &self,
        channel: &str,
        recipient: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxMessage>, StateError> {
        let mut messages: Vec<InboxMessage> = self.entries(&inbox_prefix(channel, recipient))?;
        messages.retain(|m| m.sequence > after);
        messages.sort_by_key(|m| m.sequence);
        messages.truncate(limit);
        Ok(messages)
    }

    /// Takes a due delivery for an attempt until `until_ms`, so that no other
    /// host attempts it meanwhile; false if another host took it first.
    pub(super) fn take(&self, entry: &OutboxEntry, until_ms: i64) -> Result<bool, StateError> {
        let tx = self.begin(None);
        let key = outbox_key(&entry.delivery_id);
        let Some(now) = tx.raw(&key)? else { return Ok(false) };
        let mut now: OutboxEntry = serde_json::from_slice(&now).map_err(storage)?;
        if now.next_ms != entry.next_ms || now.attempts != entry.attempts {
            return Ok(false);
        }
        now.next_ms = until_ms;
        tx.set(&key, Some(serde_json::to_vec(&now).map_err(storage)?));
        match tx.commit() {
            Ok(()) => Ok(true),
            Err(StateError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) fn settle(&self, entry: &OutboxEntry, outcome: Settle) -> Result<(), StateError> {
        let tx = self.begin(None);
        let json = serde_json::to_vec(entry).map_err(storage)?;
        let key = outbox_key(&entry.delivery_id);
        match outcome {
            Settle::Delivered => tx.set(&key, None),
            Settle::Retry => tx.set(&key, Some(json)),
            Settle::GiveUp => {
                tx.set(&key, None);
                tx.set(&failed_key(&entry.delivery_id), Some(json));
            }
        }
        tx.commit()
    }
}

/// Reads as the cluster had them when first read, and writes kept until the commit.
pub(super) struct SharedTx {
    nats: Arc<NatsStreams>,
    fence: Option<(String, String)>,
    read: Mutex<HashMap<String, SharedValue>>,
    written: Mutex<BTreeMap<String, Option<Bytes>>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Every change under these locks is one insert: a panic elsewhere leaves them whole.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl SharedTx {
    /// A value as this transaction left it.
    fn raw(&self, key: &str) -> Result<Option<Bytes>, StateError> {
        if let Some(value) = locked(&self.written).get(key) {
            return Ok(value.clone());
        }
        if let Some(read) = locked(&self.read).get(key) {
            return Ok(read.value.clone());
        }
        let read = self.nats.shared_read(key)?;
        let value = read.value.clone();
        locked(&self.read).insert(key.to_owned(), read);
        Ok(value)
    }

    fn set(&self, key: &str, value: Option<Vec<u8>>) {
        locked(&self.written).insert(key.to_owned(), value.map(Bytes::from));
    }

    pub(super) fn item(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.raw(&item_key(table, key))?.map(|v| v.to_vec()))
    }

    pub(super) fn set_item(&self, table: &str, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
        self.set(&item_key(table, key), value.map(<[u8]>::to_vec));
        Ok(())
    }

    pub(super) fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        let sent = sent_key(channel, key);
        if self.raw(&sent)?.is_some() {
            return Ok(false);
        }
        self.set(&sent, Some(crate::stream::now_ms().max(0).to_string().into_bytes()));
        match delivery {
            Delivery::None => {}
            Delivery::Outbox(entry) => {
                self.set(&outbox_key(&entry.delivery_id), Some(serde_json::to_vec(&entry).map_err(storage)?));
            }
            Delivery::Inbox(mut message) => {
                // One sequence per channel: stages sending to different channels never race on it.
                let sequence = sequence_key(&message.channel);
                let last = match self.raw(&sequence)? {
                    None => 0,
                    Some(v) => std::str::from_utf8(&v).ok().and_then(|s| s.parse::<u64>().ok()).ok_or_else(|| {
                        StateError::Storage(format!("the inbox sequence `{sequence}` is not a number"))
                    })?,
                };
                message.sequence = last + 1;
                self.set(&sequence, Some(message.sequence.to_string().into_bytes()));
                let key = format!("{}{:020}", inbox_prefix(&message.channel, &message.recipient), message.sequence);
                self.set(&key, Some(serde_json::to_vec(&message).map_err(storage)?));
            }
        }
        Ok(true)
    }

    pub(super) fn commit(self) -> Result<(), StateError> {
        let read = self.read.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let written = self.written.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner);
        let writes = written
            .into_iter()
            .map(|(key, value)| SharedWrite { expected: read.get(&key).map(|r| r.revision), key, value })
            .collect();
        let fence = self.fence.as_ref().map(|(stream, consumer)| (stream.as_str(), consumer.as_str()));
        Ok(self.nats.shared_commit(writes, fence)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_text_makes_one_key_token() {
        assert_eq!(hex(""), "k");
        assert_eq!(hex("a.b >"), "k612e62203e");
        assert_eq!(item_key("month-totals", "C1|2026-12"), "t.month-totals.k43317c323032362d3132");
    }
}
