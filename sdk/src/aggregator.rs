//! The aggregator world: the host owns windows and one opaque state per
//! (window, key); the plugin folds records into states and emits results.

use crate::error::CallError;
use crate::{Batch, Config, Error, Output, Record};

/// A window's bounds in milliseconds since the Unix epoch: `start` inclusive, `end` exclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// First millisecond of the window.
    pub start_ms: i64,
    /// First millisecond after the window.
    pub end_ms: i64,
}

/// A windowed aggregation (the `weir:plugin/aggregator` world).
///
/// The host assigns records to windows by event time and to groups by key;
/// the plugin only folds and emits. States cross the boundary as bytes via
/// [`Aggregator::decode`] and [`Aggregator::encode`], so the host can
/// checkpoint them and hand them to a newer version of the plugin.
pub trait Aggregator: Sized + 'static {
    /// The per-(window, key) state; `Default` is the state before any record.
    type State: Default;

    /// The layout version of [`Aggregator::encode`]'s bytes. Change it when the
    /// layout changes: the host then refuses to hand the open windows' states of
    /// the old layout to this plugin unless the operator asks to migrate them
    /// (see [`MigrateState`]) or to reset them.
    const STATE_VERSION: u32 = 1;

    /// Build the plugin from its configuration. Called once per instance.
    fn init(config: &Config) -> Result<Self, String>;

    /// Fold one record into its group's state. [`Error::BadRecord`] sets the
    /// record aside (dead-lettered; the others are folded without it, from
    /// the states as they were); see [`Error`] for the other kinds.
    fn fold(&mut self, state: &mut Self::State, record: &Record<'_>) -> Result<(), Error>;

    /// A window closed: emit the result records for `key` (usually one).
    /// `state` is the default state for an expected key that saw no records.
    /// Any error keeps the window open: it is emitted again after a backoff.
    fn emit(&mut self, window: Window, key: &str, state: &Self::State, out: &mut Output) -> Result<(), Error>;

    /// Read a state written by [`Aggregator::encode`]. Never called with empty bytes.
    fn decode(bytes: &[u8]) -> Result<Self::State, String>;

    /// Write a state so that [`Aggregator::decode`] reads it back.
    fn encode(state: &Self::State, out: &mut Vec<u8>);
}

/// An [`Aggregator`] that can read the states of its earlier state versions, so a
/// hot swap to it keeps the open windows. Export it with
/// `weir_sdk::export_aggregator!(MyPlugin, migrate)`.
pub trait MigrateState: Aggregator {
    /// Read a non-empty state written by state version `from_version` of this plugin.
    fn migrate(from_version: u32, bytes: &[u8]) -> Result<Self::State, String>;
}

/// States as they cross the boundary, like a batch's payloads: state `i` is
/// `bytes[ends[i-1] .. ends[i]]`. One buffer for all, not one allocation each.
#[doc(hidden)]
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct States {
    /// All states, concatenated.
    pub bytes: Vec<u8>,
    /// End offset of each state.
    pub ends: Vec<u32>,
}

impl States {
    /// One state per item.
    pub fn from_slices<'a>(states: impl IntoIterator<Item = &'a [u8]>) -> States {
        let mut out = States::default();
        for state in states {
            out.push_with(|bytes| bytes.extend_from_slice(state));
        }
        out
    }

    /// How many states.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each state's bytes, checking the ends the host sent.
    pub fn iter(&self) -> impl Iterator<Item = Result<&[u8], String>> {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let end = end as usize;
            let state = self
                .bytes
                .get(start..end)
                .ok_or_else(|| format!("state ends at {end}, outside 0..{} or before {start}", self.bytes.len()))?;
            start = end;
            Ok(state)
        })
    }

    /// Appends a state written by `write`.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        write(&mut self.bytes);
        self.ends.push(self.bytes.len() as u32);
    }
}

/// Rewrites states of `from_version` in this plugin's layout; empty states stay empty.
#[doc(hidden)]
pub fn migrate<A: MigrateState>(from_version: u32, states: &States) -> Result<States, String> {
    let mut out = States::default();
    for bytes in states.iter() {
        let bytes = bytes?;
        let state = if bytes.is_empty() { None } else { Some(A::migrate(from_version, bytes)?) };
        out.push_with(|out| state.iter().for_each(|s| A::encode(s, out)));
    }
    Ok(out)
}

fn decode_state<A: Aggregator>(bytes: &[u8]) -> Result<A::State, String> {
    if bytes.is_empty() { Ok(A::State::default()) } else { A::decode(bytes) }
}

/// Folds `input` into `states`, where record `i` belongs to state `groups[i]`.
#[doc(hidden)]
pub fn fold<A: Aggregator>(
    plugin: &mut A,
    input: &Batch,
    groups: &[u32],
    states: &States,
) -> Result<States, CallError> {
    if groups.len() != input.len() {
        return Err(format!("host sent {} groups for {} records", groups.len(), input.len()).into());
    }
    let mut decoded = states.iter().map(|s| decode_state::<A>(s?)).collect::<Result<Vec<_>, _>>()?;
    for (record, &group) in input.iter().zip(groups) {
        let state = decoded
            .get_mut(group as usize)
            .ok_or_else(|| format!("record {} names group {group} of {}", record.index(), states.len()))?;
        plugin.fold(state, &record).map_err(|e| e.at(record.index()))?;
    }
    let mut out = States { bytes: Vec::with_capacity(states.bytes.len() + 16 * states.len()), ends: Vec::new() };
    out.ends.reserve(decoded.len());
    for state in &decoded {
        out.push_with(|bytes| A::encode(state, bytes));
    }
    Ok(out)
}

/// Emits the results of a closed window for each key.
#[doc(hidden)]
pub fn emit<A: Aggregator>(
    plugin: &mut A,
    window: Window,
    keys: &[String],
    states: &States,
) -> Result<Batch, CallError> {
    if keys.len() != states.len() {
        return Err(format!("host sent {} keys for {} states", keys.len(), states.len()).into());
    }
    let mut out = Output::default();
    for (index, (key, state)) in keys.iter().zip(states.iter()).enumerate() {
        let state = decode_state::<A>(state?)?;
        plugin.emit(window, key, &state, &mut out).map_err(|e| e.at(index as u32))?;
    }
    Ok(out.into_batch())
}

/// Export an [`Aggregator`] as the component's `weir:plugin/aggregator` world;
/// `export_aggregator!(MyPlugin, migrate)` exports the `migrating-aggregator`
/// world instead, for a plugin that also implements [`MigrateState`].
#[macro_export]
macro_rules! export_aggregator {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::aggregator as bindings;
            $crate::__aggregate_export!($plugin);
    bindings::export!(WeirAggregatorExport with_types_in bindings);
        };
    };
    ($plugin:ty, migrate) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::aggregator as bindings;
            use $crate::__private::state_migrator as migrating;
            $crate::__aggregate_export!($plugin);
    bindings::export!(WeirAggregatorExport with_types_in bindings);
            impl migrating::exports::weir::plugin::state_migration::Guest for WeirAggregatorExport {
                fn migrate(
                    from_version: u32,
                    states: $crate::__private::WitStates,
                ) -> Result<$crate::__private::WitStates, String> {
                    $crate::__private::migrate_export::<$plugin>(from_version, states)
                }
            }
    migrating::export!(WeirAggregatorExport with_types_in migrating);
        };
    };
}

/// The `aggregate` export of either aggregator world, for [`export_aggregator!`]:
/// expects the world's bindings in scope as `bindings`.
#[doc(hidden)]
#[macro_export]
macro_rules! __aggregate_export {
    ($plugin:ty) => {
        use bindings::exports::weir::plugin::aggregate::{Guest, Window};
        use $crate::__private::{WitBatch, WitConfig, WitStates};

        struct WeirAggregatorExport;
        impl Guest for WeirAggregatorExport {
            fn init(config: WitConfig) -> Result<(), String> {
                $crate::__private::init_plugin::<$plugin>(config, <$plugin as $crate::Aggregator>::init)
            }
            fn state_version() -> u32 {
                <$plugin as $crate::Aggregator>::STATE_VERSION
            }
            fn fold(
                input: WitBatch,
                groups: Vec<u32>,
                states: WitStates,
            ) -> Result<WitStates, $crate::__private::WitError> {
                $crate::__private::fold_export::<$plugin>(input, groups, states)
            }
            fn emit(
                window: Window,
                keys: Vec<String>,
                states: WitStates,
            ) -> Result<WitBatch, $crate::__private::WitError> {
                $crate::__private::emit_export::<$plugin>(window.start, window.end, keys, states)
            }
        }
    };
}
