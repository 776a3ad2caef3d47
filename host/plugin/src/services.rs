//! What notifier plugins reach through their imports: state tables,
//! notification channels and reference tables, behind one narrow trait so
//! durable and remote implementations can replace the in-memory one.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

/// The host services a notifier plugin can call. Errors are shown to the plugin.
pub trait Services: Send + Sync {
    /// Reads an item.
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, String>;
    /// Writes an item.
    fn put(&self, table: &str, key: &str, value: Vec<u8>) -> Result<(), String>;
    /// Removes an item.
    fn delete(&self, table: &str, key: &str) -> Result<(), String>;
    /// Writes if the item equals `expected`; returns whether it wrote.
    fn put_if(&self, table: &str, key: &str, expected: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool, String>;
    /// Adds to a decimal-integer item; returns the new value.
    fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, String>;
    /// Sends a notification unless its idempotency key was sent on its channel before;
    /// returns whether it was new.
    fn send(&self, notification: Notification) -> Result<bool, String>;
    /// Looks a key up in a reference table.
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, String>;
}

/// In-memory services: state and sent notifications live as long as the process.
#[derive(Debug, Default)]
pub struct MemoryServices {
    tables: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    sent: Mutex<(Vec<Notification>, BTreeSet<String>)>,
    reference: Mutex<BTreeMap<(String, String), String>>,
}

fn poisoned<T>(_: T) -> String {
    "host state is unavailable after an earlier failure".to_owned()
}

fn k(table: &str, key: &str) -> (String, String) {
    (table.to_owned(), key.to_owned())
}

impl MemoryServices {
    /// Sets a reference-table row.
    pub fn set_reference(&self, table: &str, key: &str, row: &str) {
        if let Ok(mut r) = self.reference.lock() {
            r.insert(k(table, key), row.to_owned());
        }
    }

    /// Notifications sent so far, in order.
    pub fn sent(&self) -> Vec<Notification> {
        self.sent.lock().map(|s| s.0.clone()).unwrap_or_default()
    }
}

impl Services for MemoryServices {
    fn get(&self, table: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.tables.lock().map_err(poisoned)?.get(&k(table, key)).cloned())
    }
    fn put(&self, table: &str, key: &str, value: Vec<u8>) -> Result<(), String> {
        self.tables.lock().map_err(poisoned)?.insert(k(table, key), value);
        Ok(())
    }
    fn delete(&self, table: &str, key: &str) -> Result<(), String> {
        self.tables.lock().map_err(poisoned)?.remove(&k(table, key));
        Ok(())
    }
    fn put_if(&self, table: &str, key: &str, expected: Option<Vec<u8>>, value: Vec<u8>) -> Result<bool, String> {
        let mut tables = self.tables.lock().map_err(poisoned)?;
        if tables.get(&k(table, key)) != expected.as_ref() {
            return Ok(false);
        }
        tables.insert(k(table, key), value);
        Ok(true)
    }
    fn add(&self, table: &str, key: &str, delta: i64) -> Result<i64, String> {
        let mut tables = self.tables.lock().map_err(poisoned)?;
        let current = match tables.get(&k(table, key)) {
            None => 0,
            Some(v) => std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.trim().parse::<i64>().ok())
                .ok_or_else(|| format!("item `{key}` of table `{table}` is not a decimal integer"))?,
        };
        let next = current.checked_add(delta).ok_or_else(|| format!("adding {delta} to `{key}` overflows"))?;
        tables.insert(k(table, key), next.to_string().into_bytes());
        Ok(next)
    }
    fn send(&self, notification: Notification) -> Result<bool, String> {
        let mut sent = self.sent.lock().map_err(poisoned)?;
        if !sent.1.insert(format!("{}\0{}", notification.channel, notification.idempotency_key)) {
            return Ok(false);
        }
        tracing::debug!(channel = %notification.channel, recipient = %notification.recipient, "notification sent");
        sent.0.push(notification);
        Ok(true)
    }
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, String> {
        Ok(self.reference.lock().map_err(poisoned)?.get(&k(table, key)).cloned())
    }
}

/// A notification as a plugin sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Channel name.
    pub channel: String,
    /// Recipient.
    pub recipient: String,
    /// One-line summary.
    pub subject: String,
    /// Body.
    pub body: String,
    /// Dedup key of the business event.
    pub idempotency_key: String,
}

/// Where plugins' `reference.lookup` calls go: the pipeline's reference tables
/// (these). Without them, a notifier's host services answer.
pub trait ReferenceLookup: Send + Sync {
    /// The row of `key` in `table` as JSON object text, if there is one.
    fn lookup(&self, table: &str, key: &str) -> Result<Option<String>, String>;
}
