//! State tables (the DynamoDB part) and what notification channels must
//! remember, in one embedded redb database (`<data-dir>/state.redb`): items
//! of the tables the manifest declares, the idempotency keys already sent, and
//! each inbox's messages. Every change happens in a [`StateTx`], one redb
//! transaction: a single call is one (so concurrent `add`s and conditional
//! puts never lose an update), and a notifier stage makes all of a batch's
//! changes in one, committed before its position advances (one sync per batch,
//! and a batch redone after a failure finds none of its changes half made). A
//! notification is recorded as sent in the same commit as its inbox message.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::Serialize;

/// Idempotency keys already sent, by `<channel>\0<key>`.
const SENT: TableDefinition<'_, &str, u64> = TableDefinition::new("weir.sent");
/// Inbox messages by `<channel>\0<recipient>\0<sequence, 20 digits>`, as JSON.
const INBOX: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("weir.inbox");
/// The next inbox sequence number.
const SEQUENCE: TableDefinition<'_, &str, u64> = TableDefinition::new("weir.sequence");
/// Webhook deliveries still to make, by delivery id, as JSON [`OutboxEntry`].
const OUTBOX: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("weir.outbox");
/// Webhook deliveries that failed for good, by delivery id, as JSON [`OutboxEntry`].
const FAILED: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("weir.failed");

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
#[derive(Debug)]
pub enum Delivery {
    /// Nothing (a log channel).
    None,
    /// A message in an inbox.
    Inbox(InboxMessage),
    /// A webhook delivery to make.
    Outbox(OutboxEntry),
}

/// The state database.
pub struct StateStore {
    db: Database,
    tables: Arc<BTreeSet<String>>,
}

impl StateStore {
    /// Opens (or creates) the database with the manifest's tables.
    pub fn open(path: &Path, tables: impl IntoIterator<Item = String>) -> Result<StateStore, StateError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(storage)?;
        }
        let db = Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StateError::Storage(format!(
                "{} is in use by another weir: each running pipeline needs its own data-dir",
                path.display()
            )),
            e => StateError::Storage(format!("{}: {e}", path.display())),
        })?;
        Self::with(db, tables)
    }

    /// A database in memory, for a pipeline without state tables or channels: no file, no lock.
    pub fn in_memory() -> Result<StateStore, StateError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(storage)?;
        Self::with(db, [])
    }

    fn with(db: Database, tables: impl IntoIterator<Item = String>) -> Result<StateStore, StateError> {
        let store = StateStore { db, tables: Arc::new(tables.into_iter().collect()) };
        // Every table exists from the start, so reads never race a first write.
        let tx = store.db.begin_write().map_err(storage)?;
        for table in store.tables.iter() {
            tx.open_table(Self::definition(table)).map_err(storage)?;
        }
        tx.open_table(SENT).map_err(storage)?;
        tx.open_table(INBOX).map_err(storage)?;
        tx.open_table(SEQUENCE).map_err(storage)?;
        tx.open_table(OUTBOX).map_err(storage)?;
        tx.open_table(FAILED).map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(store)
    }

    fn definition(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
        TableDefinition::new(table)
    }

    fn check(&self, table: &str) -> Result<(), StateError> {
        check(&self.tables, table)
    }

    /// The tables the manifest declares.
    pub fn tables(&self) -> impl Iterator<Item = &str> {
        self.tables.iter().map(String::as_str)
    }

    /// Starts a transaction; nothing it does is seen by others, or durable,
    /// before [`StateTx::commit`]. Writers wait for each other's commits.
    pub fn begin(&self) -> Result<StateTx, StateError> {
        Ok(StateTx { tables: self.tables.clone(), tx: self.db.begin_write().map_err(storage)? })
    }

    /// Reads an item.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.check(table)?;
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(Self::definition(table)).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Writes an item.
    pub fn put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        let tx = self.begin()?;
        tx.put(table, key, value)?;
        tx.commit()
    }

    /// Puts many items in one transaction: all of them, or none.
    pub fn put_many<'a>(
        &self,
        table: &str,
        items: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<(), StateError> {
        let tx = self.begin()?;
        for (key, value) in items {
            tx.put(table, key, value)?;
        }
        tx.commit()
    }

    /// Removes an item; removing an absent one is not an error.
    pub fn delete(&self, table: &str, key: &str) -> Result<(), StateError> {
        let tx = self.begin()?;
        tx.delete(table, key)?;
        tx.commit()
    }

    /// Writes `value` if the item equals `expected` (`None`: is absent); returns whether it wrote.
    pub fn put_if(&self, table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StateError> {
        let tx = self.begin()?;
        let wrote = tx.put_if(table, key, expected, value)?;
        tx.commit()?;
        Ok(wrote)
    }

    /// Adds `delta` to the item read as a decimal integer (absent: 0); returns the new value.
    pub fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, StateError> {
        let tx = self.begin()?;
        let next = tx.add(table, key, delta)?;
        tx.commit()?;
        Ok(next)
    }

    /// Records `key` as sent on `channel` with what its delivery needs; see [`StateTx::record_sent`].
    pub fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        let tx = self.begin()?;
        let new = tx.record_sent(channel, key, delivery)?;
        tx.commit()?;
        Ok(new)
    }

    /// Webhook deliveries due at `now_ms`, oldest first.
    pub fn due_deliveries(&self, now_ms: i64) -> Result<Vec<OutboxEntry>, StateError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let outbox = tx.open_table(OUTBOX).map_err(storage)?;
        let mut due = Vec::new();
        for entry in outbox.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            let entry: OutboxEntry = serde_json::from_slice(value.value()).map_err(storage)?;
            if entry.next_ms <= now_ms {
                due.push(entry);
            }
        }
        due.sort_by_key(|e| e.first_ms);
        Ok(due)
    }

    /// Settles a delivery attempt: `Delivered` removes it, `Retry` keeps it for its
    /// next attempt, `GiveUp` moves it to the failed deliveries.
    pub fn settle(&self, entry: &OutboxEntry, outcome: Settle) -> Result<(), StateError> {
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut outbox = tx.open_table(OUTBOX).map_err(storage)?;
            let id = entry.delivery_id.as_str();
            outbox.remove(id).map_err(storage)?;
            let json = serde_json::to_vec(entry).map_err(storage)?;
            match outcome {
                Settle::Delivered => {}
                Settle::Retry => {
                    outbox.insert(id, json.as_slice()).map_err(storage)?;
                }
                Settle::GiveUp => {
                    tx.open_table(FAILED).map_err(storage)?.insert(id, json.as_slice()).map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)
    }

    /// Webhook deliveries that failed for good on `channel`.
    pub fn failed_deliveries(&self, channel: &str) -> Result<Vec<OutboxEntry>, StateError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let failed = tx.open_table(FAILED).map_err(storage)?;
        let mut out = Vec::new();
        for entry in failed.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            let entry: OutboxEntry = serde_json::from_slice(value.value()).map_err(storage)?;
            if entry.channel == channel {
                out.push(entry);
            }
        }
        out.sort_by_key(|e| e.first_ms);
        Ok(out)
    }

    /// A recipient's messages on `channel` after `after` (a sequence), oldest first, at most `limit`.
    pub fn inbox(
        &self,
        channel: &str,
        recipient: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<InboxMessage>, StateError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let inboxes = tx.open_table(INBOX).map_err(storage)?;
        let from = format!("{channel}\0{recipient}\0{:020}", after.saturating_add(1));
        let to = format!("{channel}\0{recipient}\u{1}");
        let mut out = Vec::new();
        for entry in inboxes.range(from.as_str()..to.as_str()).map_err(storage)?.take(limit) {
            let (_, value) = entry.map_err(storage)?;
            out.push(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(out)
    }
}

/// Changes to the state database that commit together, or not at all
/// (dropped without [`StateTx::commit`]: undone). Reads see its own writes.
pub struct StateTx {
    tables: Arc<BTreeSet<String>>,
    tx: redb::WriteTransaction,
}

fn check(tables: &BTreeSet<String>, table: &str) -> Result<(), StateError> {
    if tables.contains(table) { Ok(()) } else { Err(StateError::UnknownTable(table.to_owned())) }
}

impl StateTx {
    fn table(&self, table: &str) -> Result<redb::Table<'_, &'static str, &'static [u8]>, StateError> {
        check(&self.tables, table)?;
        self.tx.open_table(StateStore::definition(table)).map_err(storage)
    }

    /// Reads an item, as this transaction left it.
    pub fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        Ok(self.table(table)?.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Writes an item.
    pub fn put(&self, table: &str, key: &str, value: &[u8]) -> Result<(), StateError> {
        self.table(table)?.insert(key, value).map_err(storage)?;
        Ok(())
    }

    /// Removes an item; removing an absent one is not an error.
    pub fn delete(&self, table: &str, key: &str) -> Result<(), StateError> {
        self.table(table)?.remove(key).map_err(storage)?;
        Ok(())
    }

    /// Writes `value` if the item equals `expected` (`None`: is absent); returns whether it wrote.
    pub fn put_if(&self, table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, StateError> {
        let mut t = self.table(table)?;
        let current = t.get(key).map_err(storage)?.map(|v| v.value().to_vec());
        if current.as_deref() != expected {
            return Ok(false);
        }
        t.insert(key, value).map_err(storage)?;
        Ok(true)
    }

    /// Adds `delta` to the item read as a decimal integer (absent: 0); returns the new value.
    pub fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, StateError> {
        let mut t = self.table(table)?;
        let current = match t.get(key).map_err(storage)? {
            None => 0,
            Some(v) => std::str::from_utf8(v.value())
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| StateError::NotANumber { table: table.to_owned(), key: key.to_owned() })?,
        };
        let next = current.checked_add(delta).ok_or_else(|| StateError::Overflow {
            table: table.to_owned(),
            key: key.to_owned(),
            delta,
        })?;
        t.insert(key, next.to_string().as_bytes()).map_err(storage)?;
        Ok(next)
    }

    /// Records `key` as sent on `channel` and stores what the delivery needs (an
    /// inbox message, a webhook delivery). Returns false (and stores nothing) if
    /// the key was sent before.
    pub fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        let mut sent = self.tx.open_table(SENT).map_err(storage)?;
        let id = format!("{channel}\0{key}");
        if sent.get(id.as_str()).map_err(storage)?.is_some() {
            return Ok(false);
        }
        sent.insert(id.as_str(), crate::stream::now_ms().max(0) as u64).map_err(storage)?;
        if let Delivery::Outbox(entry) = &delivery {
            let json = serde_json::to_vec(entry).map_err(storage)?;
            self.tx
                .open_table(OUTBOX)
                .map_err(storage)?
                .insert(entry.delivery_id.as_str(), json.as_slice())
                .map_err(storage)?;
        }
        if let Delivery::Inbox(mut message) = delivery {
            let mut sequences = self.tx.open_table(SEQUENCE).map_err(storage)?;
            let next = sequences.get("inbox").map_err(storage)?.map_or(1, |v| v.value() + 1);
            sequences.insert("inbox", next).map_err(storage)?;
            message.sequence = next;
            let json = serde_json::to_vec(&message).map_err(storage)?;
            let mut inboxes = self.tx.open_table(INBOX).map_err(storage)?;
            let id = format!("{}\0{}\0{next:020}", message.channel, message.recipient);
            inboxes.insert(id.as_str(), json.as_slice()).map_err(storage)?;
        }
        Ok(true)
    }

    /// Makes every change durable, at once.
    pub fn commit(self) -> Result<(), StateError> {
        self.tx.commit().map_err(storage)
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
