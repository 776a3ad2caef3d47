//! A native test harness: run a plugin's logic with plain `cargo test`, no
//! WebAssembly involved. Host services (state tables, notifications,
//! reference tables, logs) are in-memory fakes, one set per test thread.
//!
//! ```
//! use weir_sdk::testing::{TransformerHarness, TestOutcome};
//! # use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer};
//! # struct Upper;
//! # impl Transformer for Upper {
//! #     fn init(_: &Config) -> Result<Self, String> { Ok(Upper) }
//! #     fn transform(&mut self, r: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
//! #         out.emit(r.key(), r.event_time_ms(), &r.payload().to_ascii_uppercase());
//! #         Ok(Outcome::Ok)
//! #     }
//! # }
//! let mut harness = TransformerHarness::<Upper>::new(&[]).unwrap();
//! let outcomes = harness.transform_texts(&["abc"]).unwrap();
//! assert_eq!(outcomes[0].texts(), vec!["ABC"]);
//! ```

use std::collections::BTreeMap;

use crate::aggregator::States;
use crate::host::Notification;
use crate::host::fake::{FAKE, FakeHost};
use crate::log::Level;
use crate::transformer::transform_batch;
use crate::{Aggregator, Batch, Config, Error, Notifier, Outcome, Transformer, Window};

/// An output record, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    /// Partition key.
    pub key: String,
    /// Event time in ms since the Unix epoch.
    pub event_time_ms: i64,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

/// The outcome of one input record, with its output records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestOutcome {
    /// Transformed into these records.
    Ok(Vec<OwnedRecord>),
    /// Dropped.
    Dropped,
    /// Processing failed with this reason.
    Failed(String),
}

impl TestOutcome {
    /// The payloads of an `Ok` outcome as text (empty for other outcomes).
    pub fn texts(&self) -> Vec<String> {
        match self {
            TestOutcome::Ok(records) => {
                records.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect()
            }
            _ => Vec::new(),
        }
    }
}

fn owned(batch: &Batch) -> Vec<OwnedRecord> {
    batch
        .iter()
        .map(|r| OwnedRecord {
            key: r.key().to_owned(),
            event_time_ms: r.event_time_ms(),
            payload: r.payload().to_vec(),
        })
        .collect()
}

/// Runs a [`Transformer`] natively, batch by batch, exactly as the component export does.
#[derive(Debug)]
pub struct TransformerHarness<T> {
    plugin: T,
}

impl<T: Transformer> TransformerHarness<T> {
    /// Initialise the plugin with a configuration.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, String> {
        Ok(Self { plugin: T::init(&Config::from_pairs(config))? })
    }

    /// Transform a batch; one outcome per input record, or the error that
    /// failed the whole batch (anything but [`Error::BadRecord`], which is a
    /// record's `Failed` outcome).
    pub fn transform(&mut self, input: &Batch) -> Result<Vec<TestOutcome>, Error> {
        let (outcomes, output) = transform_batch(&mut self.plugin, input, |o, n| (o, n)).map_err(|e| e.into_error())?;
        let mut records = owned(&output).into_iter();
        Ok(outcomes
            .into_iter()
            .map(|(o, n)| match o {
                Outcome::Ok => TestOutcome::Ok(records.by_ref().take(n as usize).collect()),
                Outcome::Dropped => TestOutcome::Dropped,
                Outcome::Failed(reason) => TestOutcome::Failed(reason),
            })
            .collect())
    }

    /// Transform text payloads (empty keys, event time 0).
    pub fn transform_texts(&mut self, texts: &[&str]) -> Result<Vec<TestOutcome>, Error> {
        let mut batch = Batch::new();
        for text in texts {
            batch.push("", 0, text.as_bytes());
        }
        self.transform(&batch)
    }

    /// The plugin, to inspect its fields.
    pub fn plugin(&mut self) -> &mut T {
        &mut self.plugin
    }
}

/// Runs an [`Aggregator`] natively: records are grouped by key into one window.
#[derive(Debug)]
pub struct AggregatorHarness<A: Aggregator> {
    plugin: A,
    states: BTreeMap<String, Vec<u8>>,
}

impl<A: Aggregator> AggregatorHarness<A> {
    /// Initialise the plugin with a configuration.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, String> {
        Ok(Self { plugin: A::init(&Config::from_pairs(config))?, states: BTreeMap::new() })
    }

    /// Fold a batch, grouping records by key (states survive an encode/decode round trip,
    /// as they do in the host). The first record's error fails the fold.
    pub fn fold(&mut self, input: &Batch) -> Result<(), Error> {
        let mut keys: Vec<String> = Vec::new();
        let groups = input
            .iter()
            .map(|r| match keys.iter().position(|k| k == r.key()) {
                Some(i) => i as u32,
                None => {
                    keys.push(r.key().to_owned());
                    (keys.len() - 1) as u32
                }
            })
            .collect::<Vec<_>>();
        let states = States::from_slices(keys.iter().map(|k| self.states.get(k).map_or(&[][..], Vec::as_slice)));
        let states = crate::aggregator::fold(&mut self.plugin, input, &groups, &states).map_err(|e| e.into_error())?;
        for (key, state) in keys.into_iter().zip(states.iter()) {
            self.states.insert(key, state?.to_vec());
        }
        Ok(())
    }

    /// Close the window: results for every key folded so far plus `expected` keys.
    pub fn emit(&mut self, window: Window, expected: &[&str]) -> Result<Vec<OwnedRecord>, Error> {
        let mut all = std::mem::take(&mut self.states);
        for key in expected {
            all.entry((*key).to_owned()).or_default();
        }
        let (keys, states): (Vec<_>, Vec<_>) = all.into_iter().unzip();
        let states = States::from_slices(states.iter().map(Vec::as_slice));
        let batch = crate::aggregator::emit(&mut self.plugin, window, &keys, &states).map_err(|e| e.into_error())?;
        Ok(owned(&batch))
    }
}

/// Runs a [`Notifier`] natively against the in-memory fake host.
#[derive(Debug)]
pub struct NotifierHarness<N> {
    plugin: N,
}

impl<N: Notifier> NotifierHarness<N> {
    /// Initialise the plugin with a configuration; resets the fake host.
    pub fn new(config: &[(&str, &str)]) -> Result<Self, String> {
        reset();
        Ok(Self { plugin: N::init(&Config::from_pairs(config))? })
    }

    /// Consume a batch, stopping at the first failing record like the component does.
    pub fn consume(&mut self, input: &Batch) -> Result<(), Error> {
        input.iter().try_for_each(|r| self.plugin.consume(&r))
    }
}

/// Clear the fake host of this thread.
pub fn reset() {
    FAKE.with_borrow_mut(|f| *f = FakeHost::default());
}

/// Log lines written by the plugin on this thread.
pub fn logs() -> Vec<(Level, String)> {
    FAKE.with_borrow(|f| f.logs.clone())
}

/// Notifications sent on this thread (duplicates by idempotency key are not repeated).
pub fn sent() -> Vec<Notification> {
    FAKE.with_borrow(|f| f.sent.clone())
}

/// Set a state-table item, e.g. a customer's threshold.
pub fn set_item(table: &str, key: &str, value: &[u8]) {
    FAKE.with_borrow_mut(|f| f.tables.insert((table.to_owned(), key.to_owned()), value.to_vec()));
}

/// Read a state-table item.
pub fn item(table: &str, key: &str) -> Option<Vec<u8>> {
    FAKE.with_borrow(|f| f.tables.get(&(table.to_owned(), key.to_owned())).cloned())
}

/// Add a reference-table row.
pub fn set_reference(table: &str, key: &str, row: &str) {
    FAKE.with_borrow_mut(|f| f.reference.insert((table.to_owned(), key.to_owned()), row.to_owned()));
}
