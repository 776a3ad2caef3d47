//! State tables (the DynamoDB part) and what notification channels must
//! remember: items of the tables the manifest declares, the idempotency keys
//! already sent, each inbox's messages and the webhook deliveries to make.
//! They are kept on this host's disk (`local.rs`, the default) or, when the
//! streams are on a NATS cluster, on the cluster, shared by every host
//! (`shared.rs`).
//!
//! Every change happens in a [`StateTx`]: a single call is one (so concurrent
//! `add`s and conditional puts never lose an update), and a notifier stage
//! makes all of a batch's changes in one, committed before its position
//! advances (a batch redone after a failure finds none of its changes half
//! made). A notification is recorded as sent in the same commit as its inbox
//! message.

mod local;
mod shared;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use local::{LocalState, LocalTx};
use shared::{SharedState, SharedTx};

/// How often a single change that raced another host's is made again.
const CONFLICT_TRIES: u32 = 20;

/// A wait before making a change again after its `tries`th race: up to 2^tries
/// ms (at most 64), its length drawn from the clock's nanoseconds.
fn race_wait(tries: u32) -> std::time::Duration {
    let most = 1u64 << tries.min(6);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    std::time::Duration::from_micros(u64::from(nanos) % (most * 1000))
}

/// A state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The table is not declared in the manifest.
    #[error("no state table `{0}`: declare it as [tables.{0}] in the pipeline manifest")]
    UnknownTable(String),
    /// `add` on an item that is not a decimal integer.
    #[error("item `{key}` of table `{table}` is not a decimal integer, so it cannot be added to")]
    NotANumber {
        /// The table.
        table: String,
        /// The item.
        key: String,
    },
    /// `add` would overflow.
    #[error("adding {delta} to item `{key}` of table `{table}` overflows")]
    Overflow {
        /// The table.
        table: String,
        /// The item.
        key: String,
        /// What was added.
        delta: i64,
    },
    /// The database failed.
    #[error("the state database failed: {0}")]
    Storage(String),
    /// Another host changed what this change read (shared state): nothing was
    /// written; it is redone from fresh reads.
    #[error("another host changed an item this change read; nothing was written")]
    Conflict,
    /// The host no longer holds the stage whose changes these were: nothing was written.
    #[error("this host no longer runs consumer `{consumer}` of `{stream}` (another host took it); nothing was written")]
    LeaseLost {
        /// The stage's input.
        stream: String,
        /// The stage.
        consumer: String,
    },
    /// More changes than one commit takes (shared state).
    #[error("{writes} changes in one commit; at most {most} can be")]
    TooLarge {
        /// The changes.
        writes: usize,
        /// The most one commit takes.
        most: usize,
    },
}

fn storage(e: impl std::fmt::Display) -> StateError {
    StateError::Storage(e.to_string())
}

/// One inbox message, as stored and served.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct InboxMessage {
    /// Its position in the inbox (increasing).
    pub sequence: u64,
    /// The channel.
    pub channel: String,
    /// Who receives it.
    pub recipient: String,
    /// One-line summary.
    pub subject: String,
    /// Body.
    pub body: String,
    /// The business event's key.
    pub idempotency_key: String,
    /// When it was sent (RFC 3339).
    pub sent_at: String,
}

/// How a webhook delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// The receiver took it.
    Delivered,
    /// Try again at `next_ms`.
    Retry,
    /// Out of time: keep it among the failed deliveries.
    GiveUp,
}

/// A webhook delivery waiting for its next attempt (or given up on).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct OutboxEntry {
    /// Stable across retries, so the receiver can drop repeats.
    pub delivery_id: String,
    /// The channel.
    pub channel: String,
    /// The JSON body to POST.
    pub body: String,
    /// When it was first queued (ms since the epoch).
    pub first_ms: i64,
    /// When to try next.
    pub next_ms: i64,
    /// Attempts made.
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
}

/// What a new notification leaves behind besides its key.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// Nothing (a log channel).
    None,
    /// A message in an inbox.
    Inbox(InboxMessage),
    /// A webhook delivery to make.
    Outbox(OutboxEntry),
}

/// The state, on this host's disk or shared on a cluster.
pub struct StateStore {
    tables: Arc<BTreeSet<String>>,
    backend: Backend,
}

enum Backend {
    Local(LocalState),
    Shared(SharedState),
}

impl StateStore {
    /// Opens (or creates) the database at `path` with the manifest's tables.
    pub fn open(path: &Path, tables: impl IntoIterator<Item = String>) -> Result<StateStore, StateError> {
        let tables: Arc<BTreeSet<String>> = Arc::new(tables.into_iter().collect());
        let local = LocalState::open(path, tables.iter().map(String::as_str))?;
        Ok(StateStore { tables, backend: Backend::Local(local) })
    }

    /// A database in memory, for a pipeline without state tables or channels: no file, no lock.
    pub fn in_memory() -> Result<StateStore, StateError> {
        Ok(StateStore { tables: Arc::default(), backend: Backend::Local(LocalState::in_memory()?) })
    }

    /// The state kept on the NATS cluster `nats` holds the streams on, shared by every host.
    pub fn shared(nats: Arc<weir_nats::NatsStreams>, tables: impl IntoIterator<Item = String>) -> StateStore {
        StateStore { tables: Arc::new(tables.into_iter().collect()), backend: Backend::Shared(SharedState::new(nats)) }
    }

    /// Whether several hosts share this state: then a notifier stage runs on
    /// one host at a time, and may move to another.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Shared(_))
    }

    /// The tables the manifest declares.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(String::as_str)
    }

    /// Starts a transaction; nothing it does is seen by others, or durable,
    /// before [`StateTx::commit`].
    pub fn begin(&self) -> Result<StateTx, StateError> {
        self.begin_for(None)
    }

    /// [`StateStore::begin`] for the work of a stage (`fence`: its input and
    /// its name): on shared state, its commit fails with
    /// [`StateError::LeaseLost`] once this host no longer runs the stage.
    pub fn begin_for(&self, fence: Option<(&str, &str)>) -> Result<StateTx, StateError> {
        let tx = match &self.backend {
            Backend::Local(local) => Tx::Local(Box::new(local.begin()?)),
            Backend::Shared(shared) => Tx::Shared(shared.begin(fence)),
        };
        Ok(StateTx { tables: self.tables.clone(), tx })
    }

    /// Runs `change` in a transaction of its own and commits it; made again
    /// from fresh reads if it raced another host's, after a short wait of a
    /// random length (growing with the races), so that two writers of one item
    /// stop racing in step.
    fn change<T>(&self, change: impl Fn(&StateTx) -> Result<T, StateError>) -> Result<T, StateError> {
        let mut tries = 1;
        loop {
            let tx = self.begin()?;
            let out = change(&tx)?;
            match tx.commit() {
                Err(StateError::Conflict) if tries < CONFLICT_TRIES => {
                    std::thread::sleep(race_wait(tries));
                    tries += 1;
                }
                Err(e) => return Err(e),
                Ok(()) => return Ok(out),
            }
        }
    }

    /// Reads an item.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        check(&self.tables, table)?;
        match &self.backend {
            Backend::Local(local) => local.get(table, key),
            Backend::Shared(shared) => shared.get(table, key),
        }
    }

    /// Writes an item.
    pub fn put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.change(|tx| tx.put(table, key, value))
    }

    /// Puts many items in one transaction: all of them, or none.
    pub fn put_many<'a>(
        &self,
        table: &str,
        items: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StateError> {
        let items: Vec<(&str, &[u8])> = items.into_iter().collect();
        self.change(|tx| items.iter().try_for_each(|(key, value)| tx.put(table, key, value)))
    }

    /// Removes an item; removing an absent one is not an error.
    pub fn delete(&self, table: &str, key: &str) -> Result<(), StateError> {
        self.change(|tx| tx.delete(table, key))
    }

    /// Writes `value` if the item equals `expected` (`None`: is absent); returns whether it wrote.
    pub fn put_if(&self, table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StateError> {
        self.change(|tx| tx.put_if(table, key, expected, value))
    }

    /// Adds `delta` to the item read as a decimal integer (absent: 0); returns the new value.
    pub fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, StateError> {
        self.change(|tx| tx.add(table, key, delta))
    }

    /// Records `key` as sent on `channel` with what its delivery needs; see [`StateTx::record_sent`].
    pub fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        self.change(|tx| tx.record_sent(channel, key, delivery.clone()))
    }

    /// Webhook deliveries due at `now_ms`, oldest first.
    pub fn due_deliveries(&self, now_ms: i64) -> Result<Vec<OutboxEntry>, StateError> {
        let mut due = match &self.backend {
            Backend::Local(local) => local.outbox()?,
            Backend::Shared(shared) => shared.outbox()?,
        };
        due.retain(|e| e.next_ms <= now_ms);
        due.sort_by_key(|e| e.first_ms);
        Ok(due)
    }

    /// Takes a due delivery for one attempt, which ends by `until_ms`: on
    /// shared state no other host attempts it before then (or before this
    /// host settles it). False if another host took it first.
    pub fn take_delivery(&self, entry: &OutboxEntry, until_ms: i64) -> Result<bool, StateError> {
        match &self.backend {
            // One sender per database.
            Backend::Local(_) => Ok(true),
            Backend::Shared(shared) => shared.take(entry, until_ms),
        }
    }

    /// Settles a delivery attempt: `Delivered` removes it, `Retry` keeps it for its
    /// next attempt, `GiveUp` moves it to the failed deliveries.
    pub fn settle(&self, entry: &OutboxEntry, outcome: Settle) -> Result<(), StateError> {
        match &self.backend {
            Backend::Local(local) => local.settle(entry, outcome),
            Backend::Shared(shared) => shared.settle(entry, outcome),
        }
    }

    /// Webhook deliveries that failed for good on `channel`.
    pub fn failed_deliveries(&self, channel: &str) -> Result<Vec<OutboxEntry>, StateError> {
        let mut failed = match &self.backend {
            Backend::Local(local) => local.failed()?,
            Backend::Shared(shared) => shared.failed()?,
        };
        failed.retain(|e| e.channel == channel);
        failed.sort_by_key(|e| e.first_ms);
        Ok(failed)
    }

    /// A recipient's messages on `channel` after `after` (a sequence), oldest first, at most `limit`.
    pub fn inbox(
        &self,
        channel: &str,
        recipient: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxMessage>, StateError> {
        match &self.backend {
            Backend::Local(local) => local.inbox(channel, recipient, after, limit),
            Backend::Shared(shared) => shared.inbox(channel, recipient, after, limit),
        }
    }
}

/// Changes to the state that commit together, or not at all (dropped
/// without [`StateTx::commit`]: undone). Reads see its own writes.
pub struct StateTx {
    tables: Arc<BTreeSet<String>>,
    tx: Tx,
}

enum Tx {
    // Boxed: a redb transaction is large, and moved with the batch it belongs to.
    Local(Box<LocalTx>),
    Shared(SharedTx),
}

fn check(tables: &BTreeSet<String>, table: &str) -> Result<(), StateError> {
    if tables.contains(table) { Ok(()) } else { Err(StateError::UnknownTable(table.to_owned())) }
}

impl StateTx {
    fn item(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        check(&self.tables, table)?;
        match &self.tx {
            Tx::Local(tx) => tx.item(table, key),
            Tx::Shared(tx) => tx.item(table, key),
        }
    }

    fn set_item(&self, table: &str, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
        check(&self.tables, table)?;
        match &self.tx {
            Tx::Local(tx) => tx.set_item(table, key, value),
            Tx::Shared(tx) => tx.set_item(table, key, value),
        }
    }

    /// Reads an item, as this transaction left it.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.item(table, key)
    }

    /// Writes an item.
    pub fn put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.set_item(table, key, Some(value))
    }

    /// Removes an item; removing an absent one is not an error.
    pub fn delete(&self, table: &str, key: &str) -> Result<(), StateError> {
        self.set_item(table, key, None)
    }

    /// Writes `value` if the item equals `expected` (`None`: is absent); returns whether it wrote.
    pub fn put_if(&self, table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StateError> {
        if self.item(table, key)?.as_deref() != expected {
            return Ok(false);
        }
        self.set_item(table, key, Some(value))?;
        Ok(true)
    }

    /// Adds `delta` to the item read as a decimal integer (absent: 0); returns the new value.
    pub fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, StateError> {
        let current = match self.item(table, key)? {
            None => 0,
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| StateError::NotANumber { table: table.to_owned(), key: key.to_owned() })?,
        };
        let next = current.checked_add(delta).ok_or_else(|| StateError::Overflow {
            table: table.to_owned(),
            key: key.to_owned(),
            delta,
        })?;
        self.set_item(table, key, Some(next.to_string().as_bytes()))?;
        Ok(next)
    }

    /// Records `key` as sent on `channel` and stores what the delivery needs (an
    /// inbox message, a webhook delivery). Returns false (and stores nothing) if
    /// the key was sent before.
    pub fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        match &self.tx {
            Tx::Local(tx) => tx.record_sent(channel, key, delivery),
            Tx::Shared(tx) => tx.record_sent(channel, key, delivery),
        }
    }

    /// Makes every change durable, at once.
    pub fn commit(self) -> Result<(), StateError> {
        match self.tx {
            Tx::Local(tx) => tx.commit(),
            Tx::Shared(tx) => tx.commit(),
        }
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &Path) -> StateStore {
        StateStore::open(&dir.join("state.redb"), ["totals".to_owned()]).expect("open")
    }

    #[test]
    fn items_are_read_written_and_added_to_durably() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = store(dir.path());
            assert_eq!(s.add("totals", "C1", 275).expect("add"), 275);
            assert_eq!(s.add("totals", "C1", -75).expect("add"), 200);
            s.put("totals", "C2", b"x").expect("put");
            assert!(matches!(s.add("totals", "C2", 1), Err(StateError::NotANumber { .. })));
            assert!(!s.put_if("totals", "C3", Some(b"1"), b"2").expect("put-if"));
            assert!(s.put_if("totals", "C3", None, b"2").expect("put-if absent"));
            assert!(s.put_if("totals", "C3", Some(b"2"), b"3").expect("put-if equal"));
            s.delete("totals", "C2").expect("delete");
            let unknown = s.get("limits", "C1").expect_err("undeclared");
            assert_eq!(
                unknown.to_string(),
                "no state table `limits`: declare it as [tables.limits] in the pipeline manifest"
            );
        }
        let s = store(dir.path());
        assert_eq!(s.get("totals", "C1").expect("get").as_deref(), Some(&b"200"[..]));
        assert_eq!(s.get("totals", "C2").expect("get"), None);
        assert_eq!(s.get("totals", "C3").expect("get").as_deref(), Some(&b"3"[..]));
    }

    #[test]
    fn concurrent_adds_lose_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Arc::new(store(dir.path()));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    for _ in 0..250 {
                        s.add("totals", "C1", 1).expect("add");
                    }
                })
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().expect("thread"));
        assert_eq!(s.get("totals", "C1").expect("get").as_deref(), Some(&b"1000"[..]));
    }

    #[test]
    fn a_key_is_sent_once_and_its_inbox_message_kept_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = store(dir.path());
        let message = |subject: &str| InboxMessage {
            channel: "app".into(),
            recipient: "C1".into(),
            subject: subject.into(),
            ..InboxMessage::default()
        };
        assert!(s.record_sent("app", "k1", Delivery::Inbox(message("first"))).expect("send"));
        assert!(!s.record_sent("app", "k1", Delivery::Inbox(message("again"))).expect("send"), "a repeat");
        assert!(s.record_sent("app", "k2", Delivery::Inbox(message("second"))).expect("send"));
        assert!(s.record_sent("log", "k1", Delivery::None).expect("other channel"));
        let inbox = s.inbox("app", "C1", 0, 10).expect("inbox");
        let subjects: Vec<&str> = inbox.iter().map(|m| m.subject.as_str()).collect();
        assert_eq!(subjects, ["first", "second"]);
        assert_eq!(s.inbox("app", "C1", inbox[0].sequence, 10).expect("after").len(), 1);
        assert!(s.inbox("app", "C2", 0, 10).expect("other recipient").is_empty());
    }
}
