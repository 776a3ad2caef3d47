//! The state on this host's disk: one embedded redb database
//! (`<data-dir>/state.redb`), one redb transaction per [`super::StateTx`].
//! Writers wait for each other's commits, so a change never conflicts.

use std::path::Path;

use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};

use super::{Delivery, InboxMessage, OutboxEntry, Settle, StateError, storage};

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

fn definition(table: &str) -> TableDefinition<'_, &'static str, &'static [u8]> {
    TableDefinition::new(table)
}

/// The database.
pub(super) struct LocalState {
    db: Database,
}

impl LocalState {
    /// Opens (or creates) the database at `path` with `tables`.
    pub(super) fn open<'a>(path: &Path, tables: impl Iterator<Item = &'a str>) -> Result<LocalState, StateError> {
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

    /// A database in memory: no file, no lock.
    pub(super) fn in_memory() -> Result<LocalState, StateError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).map_err(storage)?;
        Self::with(db, std::iter::empty())
    }

    fn with<'a>(db: Database, tables: impl Iterator<Item = &'a str>) -> Result<LocalState, StateError> {
        // Every table exists from the start, so reads never race a first write.
        let tx = db.begin_write().map_err(storage)?;
        for table in tables {
            tx.open_table(definition(table)).map_err(storage)?;
        }
        tx.open_table(SENT).map_err(storage)?;
        tx.open_table(INBOX).map_err(storage)?;
        tx.open_table(SEQUENCE).map_err(storage)?;
        tx.open_table(OUTBOX).map_err(storage)?;
        tx.open_table(FAILED).map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(LocalState { db })
    }

    pub(super) fn begin(&self) -> Result<LocalTx, StateError> {
        Ok(LocalTx { tx: self.db.begin_write().map_err(storage)? })
    }

    pub(super) fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(definition(table)).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    fn entries(&self, table: TableDefinition<'_, &str, &[u8]>) -> Result<Vec<OutboxEntry>, StateError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let entries = tx.open_table(table).map_err(storage)?;
        let mut out = Vec::new();
        for entry in entries.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            out.push(serde_json::from_slice(value.value()).map_err(storage)?);
        }
        Ok(out)
    }

    pub(super) fn outbox(&self) -> Result<Vec<OutboxEntry>, StateError> {
        self.entries(OUTBOX)
    }

    pub(super) fn failed(&self) -> Result<Vec<OutboxEntry>, StateError> {
        self.entries(FAILED)
    }

    pub(super) fn settle(&self, entry: &OutboxEntry, outcome: Settle) -> Result<(), StateError> {
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

    pub(super) fn inbox(
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

/// One redb write transaction.
pub(super) struct LocalTx {
    tx: redb::WriteTransaction,
}

impl LocalTx {
    pub(super) fn item(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        let t = self.tx.open_table(definition(table)).map_err(storage)?;
        Ok(t.get(key).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    pub(super) fn set_item(&self, table: &str, key: &str, value: Option<&[u8]>) -> Result<(), StateError> {
        let mut t = self.tx.open_table(definition(table)).map_err(storage)?;
        match value {
            Some(value) => t.insert(key, value).map_err(storage)?,
            None => t.remove(key).map_err(storage)?,
        };
        Ok(())
    }

    pub(super) fn record_sent(&self, channel: &str, key: &str, delivery: Delivery) -> Result<bool, StateError> {
        let mut sent = self.tx.open_table(SENT).map_err(storage)?;
        let id = format!("{channel}\0{key}");
        if sent.get(id.as_str()).map_err(storage)?.is_some() {
            return Ok(false);
        }
        sent.insert(id.as_str(), crate::stream::now_ms().max(0) as u64).map_err(storage)?;
        match delivery {
            Delivery::None => {}
            Delivery::Outbox(entry) => {
                let json = serde_json::to_vec(&entry).map_err(storage)?;
                let mut outbox = self.tx.open_table(OUTBOX).map_err(storage)?;
                outbox.insert(entry.delivery_id.as_str(), json.as_slice()).map_err(storage)?;
            }
            Delivery::Inbox(mut message) => {
                let mut sequences = self.tx.open_table(SEQUENCE).map_err(storage)?;
                let next = sequences.get("inbox").map_err(storage)?.map_or(1, |v| v.value() + 1);
                sequences.insert("inbox", next).map_err(storage)?;
                message.sequence = next;
                let json = serde_json::to_vec(&message).map_err(storage)?;
                let mut inboxes = self.tx.open_table(INBOX).map_err(storage)?;
                let id = format!("{}\0{}\0{next:020}", message.channel, message.recipient);
                inboxes.insert(id.as_str(), json.as_slice()).map_err(storage)?;
            }
        }
        Ok(true)
    }

    pub(super) fn commit(self) -> Result<(), StateError> {
        self.tx.commit().map_err(storage)
    }
}
