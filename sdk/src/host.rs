//! What the host offers a plugin: state tables, notification channels and
//! reference tables (notifier plugins only; the component then imports them),
//! plus logging for every plugin.
//!
//! Inside a component these call the host's WIT imports. Natively they use an
//! in-memory host, one per thread (`fake` below), which [`crate::testing`]
//! sets up and reads, so plugin logic is unit-testable.

/// Severity of a log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// Very detailed tracing.
    Trace,
    /// Debugging detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something the operator may want to look at.
    Warn,
    /// Something failed.
    Error,
}

/// One message for one recipient on a notification channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The channel's name in the pipeline manifest.
    pub channel: String,
    /// Who receives it: a customer id, `operators`, ...
    pub recipient: String,
    /// A one-line summary.
    pub subject: String,
    /// The message body.
    pub body: String,
    /// The same business event must always carry the same key: the host sends
    /// each key at most once, across retries and restarts.
    pub idempotency_key: String,
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::wasm::notifier::weir::plugin::{notify, reference, state_table};
    use crate::wasm::transformer::weir::plugin::log as wit_log;

    pub fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => wit_log::Level::Trace,
            Level::Debug => wit_log::Level::Debug,
            Level::Info => wit_log::Level::Info,
            Level::Warn => wit_log::Level::Warn,
            Level::Error => wit_log::Level::Error,
        };
        wit_log::log(level, message);
    }
    pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        state_table::get(table, key)
    }
    pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), String> {
        state_table::put(table, key, value)
    }
    pub fn delete(table: &str, key: &str) -> Result<(), String> {
        state_table::delete(table, key)
    }
    pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
        state_table::put_if(table, key, expected, value)
    }
    pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, String> {
        state_table::add(table, key, delta)
    }
    pub fn send(n: &Notification) -> Result<bool, String> {
        notify::send(&notify::Notification {
            channel: n.channel.clone(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            idempotency_key: n.idempotency_key.clone(),
        })
    }
    pub fn lookup(table: &str, key: &str) -> Result<Option<String>, String> {
        reference::lookup(table, key)
    }
}

#[cfg(not(target_arch = "wasm32"))]
use fake as imp;

pub(crate) fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Read a state-table item; `None` if absent.
pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
    imp::get(table, key)
}

/// Write a state-table item unconditionally.
pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), String> {
    imp::put(table, key, value)
}

/// Remove a state-table item (absent is fine).
pub fn delete(table: &str, key: &str) -> Result<(), String> {
    imp::delete(table, key)
}

/// Write only if the item equals `expected` (`None`: only if absent); returns whether it wrote.
pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
    imp::put_if(table, key, expected, value)
}

/// Atomically add `delta` to the item read as a decimal integer (absent is 0); returns the new value.
pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, String> {
    imp::add(table, key, delta)
}

/// Send a notification; returns `false` when its idempotency key was already sent.
pub fn send(notification: &Notification) -> Result<bool, String> {
    imp::send(notification)
}

/// Look a key up in a reference table; `None` if it has no such row.
pub fn lookup(table: &str, key: &str) -> Result<Option<String>, String> {
    imp::lookup(table, key)
}

/// The in-memory host behind these functions when not compiled to
/// WebAssembly, one per thread; [`crate::testing`] sets it up and reads it.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::{Level, Notification};

    #[derive(Default)]
    pub(crate) struct FakeHost {
        pub(crate) logs: Vec<(Level, String)>,
        pub(crate) tables: BTreeMap<(String, String), Vec<u8>>,
        pub(crate) sent: Vec<Notification>,
        /// (channel, idempotency key): as in the host, a key is sent once per channel.
        pub(crate) sent_keys: BTreeSet<(String, String)>,
        pub(crate) reference: BTreeMap<(String, String), String>,
    }

    thread_local! {
        pub(crate) static FAKE: RefCell<FakeHost> = RefCell::new(FakeHost::default());
    }

    fn k(table: &str, key: &str) -> (String, String) {
        (table.to_owned(), key.to_owned())
    }
    pub fn log(level: Level, message: &str) {
        FAKE.with_borrow_mut(|f| f.logs.push((level, message.to_owned())));
    }
    pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(FAKE.with_borrow(|f| f.tables.get(&k(table, key)).cloned()))
    }
    pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), String> {
        FAKE.with_borrow_mut(|f| f.tables.insert(k(table, key), value.to_vec()));
        Ok(())
    }
    pub fn delete(table: &str, key: &str) -> Result<(), String> {
        FAKE.with_borrow_mut(|f| f.tables.remove(&k(table, key)));
        Ok(())
    }
    pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, String> {
        FAKE.with_borrow_mut(|f| {
            let slot = f.tables.get(&k(table, key)).map(Vec::as_slice);
            if slot != expected {
                return Ok(false);
            }
            f.tables.insert(k(table, key), value.to_vec());
            Ok(true)
        })
    }
    pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, String> {
        FAKE.with_borrow_mut(|f| {
            let current = match f.tables.get(&k(table, key)) {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.trim().parse::<i64>().ok())
                    .ok_or_else(|| format!("item {table}/{key} is not a decimal integer"))?,
            };
            let next = current.checked_add(delta).ok_or("integer overflow")?;
            f.tables.insert(k(table, key), next.to_string().into_bytes());
            Ok(next)
        })
    }
    pub fn send(n: &Notification) -> Result<bool, String> {
        FAKE.with_borrow_mut(|f| {
            if !f.sent_keys.insert((n.channel.clone(), n.idempotency_key.clone())) {
                return Ok(false);
            }
            f.sent.push(n.clone());
            Ok(true)
        })
    }
    pub fn lookup(table: &str, key: &str) -> Result<Option<String>, String> {
        Ok(FAKE.with_borrow(|f| f.reference.get(&k(table, key)).cloned()))
    }
}
