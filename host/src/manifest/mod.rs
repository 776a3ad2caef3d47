//! Manifests: the pipeline manifest (`manifests/*.toml`) and the plugin
//! manifest (`plugins/<name>/plugin.toml`), read with every problem reported
//! at once, each with its file, line and column.

mod diagnostic;
pub mod pipeline;
pub mod plugin;
mod toml_doc;
pub mod units;

pub use diagnostic::{Diagnostic, Diagnostics, SourceFile};
pub use pipeline::{
    Api, DeadLetter, DeliverySpec, DirGrant, ErrorPolicy, FailedBatch, FileFormat, Grants, Limits, OutputLimits,
    Pipeline, SinkSpec, Source, StageSpec, Storage, StreamSpec, Target, Transform, Uses, load,
};
pub use plugin::{PluginManifest, Resource, World};
pub use units::Name;
