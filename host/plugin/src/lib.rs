//! Plugins: WebAssembly components loaded with wasmtime's component model,
//! each instance sandboxed (CPU deadline, memory cap, stack limit, no ambient
//! filesystem, network, environment or clock) and called with columnar batches.

mod bad_records;
mod batch;
pub mod bindings;
mod engine;
mod error;
mod sandbox;
pub mod services;
mod spec;
mod worlds;

pub use bad_records::BadRecords;
pub use batch::RecordRef;
pub use bindings::Batch;
pub use bindings::transformer::exports::weir::plugin::transform::Outcome;
pub use engine::{CompiledComponent, PluginEngine, sha256_hex};
pub use error::{PluginError, PluginIdent};
pub use sandbox::EPOCH_TICK;
pub use sandbox::SandboxSpec;
pub use services::{MemoryServices, Notification, ReferenceLookup, Services};
pub use spec::{DirGrant, Grants, Limits, Resource, Uses, World};
pub use worlds::{
    AggregatorInstance, AggregatorPlugin, Loaded, NotifierInstance, NotifierPlugin, RecordOutputs, Transformed,
    TransformerInstance, TransformerPlugin, check_world, fits_world,
};
