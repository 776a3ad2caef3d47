//! weir: a self-hosted streaming runtime with WebAssembly plugins.
//!
//! The host reads a pipeline [`manifest`], keeps records in [`stream`]s, runs
//! sandboxed [`plugin`] components in [`stage`]s, writes results to [`sink`]s
//! and serves the HTTP [`api`]. [`pipeline`] wires them together; [`cli`] is
//! the `weir` binary; [`agent`] is its file-tailing client (`weir agent`).

pub mod access;
pub mod agent;
pub mod api;
pub mod author;
pub mod build;
pub mod check;
pub mod cli;
pub mod client;
pub mod dedup;
pub mod delivery;
pub mod io;
pub mod lake;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod outbound;
pub mod pipeline;
pub mod progress;
pub mod reference;
pub mod scaffold;
pub mod sigv4;
pub mod simulate;
pub mod sink;
pub mod stage;
pub mod state;
pub mod swap;
pub mod warehouse;

/// The streams on a NATS JetStream cluster (the `weir-nats` crate).
pub use weir_nats as nats;
pub use weir_plugin as plugin;
/// The streams (the `weir-stream` crate).
pub use weir_stream as stream;
pub use weir_stream::{names, time};
/// Event-time windows (the `weir-window` crate).
pub use weir_window as window;
