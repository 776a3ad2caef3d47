//! `weir-sdk`: write weir plugins in Rust.
//!
//! A plugin is one trait impl plus one export macro:
//!
//! ```
//! use weir_sdk::{Config, Error, Outcome, Output, Record, Transformer};
//!
//! struct Upper;
//!
//! impl Transformer for Upper {
//!     fn init(_config: &Config) -> Result<Self, String> {
//!         Ok(Upper)
//!     }
//!
//!     fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error> {
//!         out.emit(record.key(), record.event_time_ms(), &record.payload().to_ascii_uppercase());
//!         Ok(Outcome::Ok)
//!     }
//! }
//!
//! weir_sdk::export_transformer!(Upper);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; test its logic
//! natively with [`testing`], no WebAssembly involved. The three plugin kinds
//! are the worlds of the `weir:plugin` WIT package: [`Transformer`],
//! [`Aggregator`] and [`Notifier`].
#![deny(missing_docs)]

// Lets the generated bindings name this crate the way plugin crates do.
#[cfg(target_arch = "wasm32")]
extern crate self as weir_sdk;

mod aggregator;
mod batch;
mod config;
mod error;
pub mod host;
pub mod log;
mod notifier;
pub mod pane;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;
pub mod time;
mod transformer;

pub use aggregator::{Aggregator, MigrateState, Window};
pub use batch::{Batch, Output, Record};
pub use config::Config;
pub use error::Error;
pub use notifier::Notifier;
pub use transformer::{Outcome, Transformer};

/// The `wit-bindgen` crate the SDK builds on, for authors who want raw bindings.
#[cfg(target_arch = "wasm32")]
pub use wit_bindgen;

#[doc(hidden)]
pub mod __private {
    pub use crate::aggregator::{emit as aggregator_emit, fold as aggregator_fold, migrate as aggregator_migrate};
    pub use crate::transformer::transform_batch;
    #[cfg(target_arch = "wasm32")]
    pub use crate::wasm::*;
}

#[cfg(target_arch = "wasm32")]
mod wasm;
