//! What the host offers a plugin: state tables and notification channels
//! (notifier plugins), reference tables (every world but the state migrator),
//! plus logging for every plugin. A plugin reaches only the tables and
//! channels its `plugin.toml` declares; each call's [`Error`] says what failed
//! (`?` hands it on to the host as the plugin's own error).
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

use crate::Error;

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::*;
    use crate::wasm::notifier::weir::plugin::{notify, state_table};
    use crate::wasm::transformer::weir::plugin::log as wit_log;
    use crate::wasm::transformer::weir::plugin::reference;

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
    pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        state_table::get(table, key).map_err(Error::from)
    }
    pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), Error> {
        state_table::put(table, key, value).map_err(Error::from)
    }
    pub fn delete(table: &str, key: &str) -> Result<(), Error> {
        state_table::delete(table, key).map_err(Error::from)
    }
    pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, Error> {
        state_table::put_if(table, key, expected, value).map_err(Error::from)
    }
    pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, Error> {
        state_table::add(table, key, delta).map_err(Error::from)
    }
    pub fn send(n: &Notification) -> Result<bool, Error> {
        notify::send(&notify::Notification {
            channel: n.channel.clone(),
            recipient: n.recipient.clone(),
            subject: n.subject.clone(),
            body: n.body.clone(),
            idempotency_key: n.idempotency_key.clone(),
        })
        .map_err(Error::from)
    }
    pub fn lookup(table: &str, key: &str) -> Result<Option<String>, Error> {
        reference::lookup(table, key).map_err(Error::from)
    }
}

#[cfg(not(target_arch = "wasm32"))]
use fake as imp;

pub(crate) fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Read a state-table item; `None` if absent.
pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
    imp::get(table, key)
}

/// Write a state-table item unconditionally.
pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), Error> {
    imp::put(table, key, value)
}

/// Remove a state-table item (absent is fine).
pub fn delete(table: &str, key: &str) -> Result<(), Error> {
    imp::delete(table, key)
}

/// Write only if the item equals `expected` (`None`: only if absent); returns whether it wrote.
pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, Error> {
    imp::put_if(table, key, expected, value)
}

/// Atomically add `delta` to the item read as a decimal integer (absent is 0); returns the new value.
pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, Error> {
    imp::add(table, key, delta)
}

/// Send a notification; returns `false` when its idempotency key was already sent.
pub fn send(notification: &Notification) -> Result<bool, Error> {
    imp::send(notification)
}

/// Look a key up in a reference table; `None` if it has no such row.
pub fn lookup(table: &str, key: &str) -> Result<Option<String>, Error> {
    imp::lookup(table, key)
}

/// The in-memory host behind these functions when not compiled to
/// WebAssembly, one per thread; [`crate::testing`] sets it up and reads it.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) mod fake {
    use std::cell::RefCell;
    use std::collections::{BTreeMap, BTreeSet};

    use super::{Level, Notification};
    use crate::Error;

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
    pub fn get(table: &str, key: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(FAKE.with_borrow(|f| f.tables.get(&k(table, key)).cloned()))
    }
    pub fn put(table: &str, key: &str, value: &[u8]) -> Result<(), Error> {
        FAKE.with_borrow_mut(|f| f.tables.insert(k(table, key), value.to_vec()));
        Ok(())
    }
    pub fn delete(table: &str, key: &str) -> Result<(), Error> {
        FAKE.with_borrow_mut(|f| f.tables.remove(&k(table, key)));
        Ok(())
    }
    pub fn put_if(table: &str, key: &str, expected: Option<&[u8]>, value: &[u8]) -> Result<bool, Error> {
        FAKE.with_borrow_mut(|f| {
            let slot = f.tables.get(&k(table, key)).map(Vec::as_slice);
            if slot != expected {
                return Ok(false);
            }
            f.tables.insert(k(table, key), value.to_vec());
            Ok(true)
        })
    }
    pub fn add(table: &str, key: &str, delta: i64) -> Result<i64, Error> {
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
    pub fn send(n: &Notification) -> Result<bool, Error> {
        FAKE.with_borrow_mut(|f| {
            if !f.sent_keys.insert((n.channel.clone(), n.idempotency_key.clone())) {
                return Ok(false);
            }
            f.sent.push(n.clone());
            Ok(true)
        })
    }
    pub fn lookup(table: &str, key: &str) -> Result<Option<String>, Error> {
        Ok(FAKE.with_borrow(|f| f.reference.get(&k(table, key)).cloned()))
    }
}
