//! The component side: generated bindings for the three worlds and the glue
//! between them and the SDK traits. Compiled for `wasm32` only.

use std::any::Any;
use std::cell::RefCell;

use crate::aggregator::States;
use crate::error::CallError;
use crate::{Aggregator, Batch, Config, Notifier, Transformer, Window};

#[allow(missing_docs, reason = "generated bindings")]
pub mod transformer {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir:plugin/transformer",
        pub_export_macro: true,
        default_bindings_module: "weir_sdk::__private::transformer",
        runtime_path: "weir_sdk::wit_bindgen::rt",
        generate_all,
    });
}

#[allow(missing_docs, reason = "generated bindings")]
pub mod aggregator {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir:plugin/aggregator",
        pub_export_macro: true,
        default_bindings_module: "weir_sdk::__private::aggregator",
        runtime_path: "weir_sdk::wit_bindgen::rt",
        with: {
            "weir:plugin/types@0.2.0": crate::wasm::transformer::weir::plugin::types,
            "weir:plugin/log@0.2.0": crate::wasm::transformer::weir::plugin::log,
            "weir:plugin/reference@0.2.0": crate::wasm::transformer::weir::plugin::reference,
        },
    });
}

#[allow(missing_docs, reason = "generated bindings")]
pub mod state_migrator {
    // Exported beside the aggregator world: a world that includes `aggregate`
    // would define its export macros a second time in this crate.
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir:plugin/state-migrator",
        pub_export_macro: true,
        default_bindings_module: "weir_sdk::__private::state_migrator",
        runtime_path: "weir_sdk::wit_bindgen::rt",
        with: {
            "weir:plugin/types@0.2.0": crate::wasm::transformer::weir::plugin::types,
        },
    });
}

#[allow(missing_docs, reason = "generated bindings")]
pub mod notifier {
    wit_bindgen::generate!({
        path: "../wit",
        world: "weir:plugin/notifier",
        pub_export_macro: true,
        default_bindings_module: "weir_sdk::__private::notifier",
        runtime_path: "weir_sdk::wit_bindgen::rt",
        with: {
            "weir:plugin/types@0.2.0": crate::wasm::transformer::weir::plugin::types,
            "weir:plugin/log@0.2.0": crate::wasm::transformer::weir::plugin::log,
            "weir:plugin/state-table@0.2.0": generate,
            "weir:plugin/notify@0.2.0": generate,
            "weir:plugin/reference@0.2.0": crate::wasm::transformer::weir::plugin::reference,
        },
    });
}

use transformer::exports::weir::plugin::transform::{Outcome as WitOutcome, Transformed};
use transformer::weir::plugin::types::Attribute;
use transformer::weir::plugin::types::BadRecord;
/// The batch record of the WIT package, as the bindings name it.
pub use transformer::weir::plugin::types::Batch as WitBatch;
/// The error variant of the WIT package.
pub use transformer::weir::plugin::types::Error as WitError;
/// The aggregator states record of the WIT package.
pub use transformer::weir::plugin::types::States as WitStates;

impl From<CallError> for WitError {
    fn from(e: CallError) -> WitError {
        match e {
            CallError::BadRecord { index, reason } => WitError::BadRecord(BadRecord { index, reason }),
            CallError::Transient(m) => WitError::Transient(m),
            CallError::Failed(m) => WitError::Failed(m),
        }
    }
}

impl From<WitError> for crate::Error {
    fn from(e: WitError) -> crate::Error {
        match e {
            WitError::BadRecord(b) => crate::Error::BadRecord(b.reason),
            WitError::Transient(m) => crate::Error::Transient(m),
            WitError::Failed(m) => crate::Error::Failed(m),
        }
    }
}

/// The configuration pairs handed to `init`.
pub type WitConfig = Vec<(String, String)>;

thread_local! {
    /// The one plugin instance of this component, created by `init`.
    static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

fn with_plugin<P: 'static, R, E: From<String>>(f: impl FnOnce(&mut P) -> Result<R, E>) -> Result<R, E> {
    PLUGIN.with_borrow_mut(|slot| match slot.as_mut().and_then(|p| p.downcast_mut::<P>()) {
        Some(plugin) => f(plugin),
        None => Err(E::from("plugin called before init".to_owned())),
    })
}

/// Creates the plugin instance from the host's configuration.
pub fn init_plugin<P: 'static>(
    config: Vec<(String, String)>,
    init: fn(&Config) -> Result<P, String>,
) -> Result<(), String> {
    let plugin = init(&Config::new(config))?;
    PLUGIN.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
    Ok(())
}

fn from_wit(b: WitBatch) -> Batch {
    Batch::from_columns(
        b.keys,
        b.key_ends,
        b.event_times,
        b.payloads,
        b.payload_ends,
        b.attributes.into_iter().map(|a| (a.index, a.name, a.value)).collect(),
    )
}

fn to_wit(b: Batch) -> WitBatch {
    let (keys, key_ends, event_times, payloads, payload_ends, attributes) = b.into_columns();
    WitBatch {
        keys,
        key_ends,
        event_times,
        payloads,
        payload_ends,
        attributes: attributes.into_iter().map(|(index, name, value)| Attribute { index, name, value }).collect(),
    }
}

/// The `transform` export.
pub fn transform_export<T: Transformer>(input: WitBatch) -> Result<Transformed, WitError> {
    let input = from_wit(input);
    with_plugin::<T, _, CallError>(|plugin| {
        let (outcomes, output) = crate::transformer::transform_batch(plugin, &input, |o, n| match o {
            crate::Outcome::Ok => WitOutcome::Ok(n),
            crate::Outcome::Dropped => WitOutcome::Dropped,
            crate::Outcome::Failed(reason) => WitOutcome::ProcessingFailed(reason),
        })?;
        Ok(Transformed { outcomes, output: to_wit(output) })
    })
    .map_err(WitError::from)
}

/// The `fold` export.
pub fn fold_export<A: Aggregator>(input: WitBatch, groups: Vec<u32>, states: WitStates) -> Result<WitStates, WitError> {
    let input = from_wit(input);
    let states = States { bytes: states.bytes, ends: states.ends };
    let out = with_plugin::<A, _, CallError>(|plugin| crate::aggregator::fold(plugin, &input, &groups, &states))?;
    Ok(WitStates { bytes: out.bytes, ends: out.ends })
}

/// The `emit` export.
pub fn emit_export<A: Aggregator>(
    start_ms: i64,
    end_ms: i64,
    keys: Vec<String>,
    states: WitStates,
) -> Result<WitBatch, WitError> {
    let window = Window { start_ms, end_ms };
    let states = States { bytes: states.bytes, ends: states.ends };
    with_plugin::<A, _, CallError>(|plugin| crate::aggregator::emit(plugin, window, &keys, &states).map(to_wit))
        .map_err(WitError::from)
}

/// The `migrate` export of `state-migration`.
pub fn migrate_export<A: crate::MigrateState>(from_version: u32, states: WitStates) -> Result<WitStates, String> {
    let out = crate::aggregator::migrate::<A>(from_version, &States { bytes: states.bytes, ends: states.ends })?;
    Ok(WitStates { bytes: out.bytes, ends: out.ends })
}

/// The `consume` export.
pub fn consume_export<N: Notifier>(input: WitBatch) -> Result<(), WitError> {
    let input = from_wit(input);
    with_plugin::<N, _, CallError>(|plugin| {
        input.iter().try_for_each(|record| plugin.consume(&record).map_err(|e| e.at(record.index())))
    })
    .map_err(WitError::from)
}
