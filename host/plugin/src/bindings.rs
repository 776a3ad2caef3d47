//! Host bindings of the worlds of `wit/plugin.wit`. The shared `types`,
//! `log` and `reference` interfaces are generated once, with the transformer world.

/// `weir:plugin/transformer`
pub mod transformer {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/transformer",
        additional_derives: [PartialEq],
    });
}

/// `weir:plugin/aggregator`
pub mod aggregator {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/aggregator",
        with: {
            "weir:plugin/types": super::transformer::weir::plugin::types,
            "weir:plugin/log": super::transformer::weir::plugin::log,
            "weir:plugin/reference": super::transformer::weir::plugin::reference,
        },
    });
}

/// `weir:plugin/state-migrator`: the `state-migration` export of a
/// `migrating-aggregator`, looked up on aggregators that have it.
pub mod state_migrator {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/state-migrator",
        with: {
            "weir:plugin/types": super::transformer::weir::plugin::types,
        },
    });
}

/// `weir:plugin/notifier`
pub mod notifier {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "weir:plugin/notifier",
        with: {
            "weir:plugin/types": super::transformer::weir::plugin::types,
            "weir:plugin/log": super::transformer::weir::plugin::log,
            "weir:plugin/reference": super::transformer::weir::plugin::reference,
        },
    });
}

pub use transformer::weir::plugin::types::{Attribute, BadRecord, Batch, Error as WitError};
