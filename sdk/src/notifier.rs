//! The notifier world: batches from a stream in, side effects out through
//! state tables and notification channels ([`crate::host`]).

use crate::{Config, Error, Record};

/// A consumer of a stream (the `weir:plugin/notifier` world), like Lambda on
/// Kinesis. Batches are delivered at least once: make side effects idempotent
/// (state-table conditions, notification idempotency keys).
pub trait Notifier: Sized + 'static {
    /// Build the plugin from its configuration. Called once per instance.
    fn init(config: &Config) -> Result<Self, String>;

    /// Handle one record. An error undoes the batch's changes; then
    /// [`Error::BadRecord`] sets this record aside and the host calls again
    /// with the batch's other records (see [`Error`] for the other kinds).
    fn consume(&mut self, record: &Record<'_>) -> Result<(), Error>;
}

/// Export a [`Notifier`] as the component's `weir:plugin/notifier` world.
#[macro_export]
macro_rules! export_notifier {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use bindings::exports::weir::plugin::consume::Guest;
            use $crate::__private::notifier as bindings;
            use $crate::__private::{WitBatch, WitConfig};

            struct WeirNotifierExport;
            impl Guest for WeirNotifierExport {
                fn init(config: WitConfig) -> Result<(), String> {
                    $crate::__private::init_plugin::<$plugin>(config, <$plugin as $crate::Notifier>::init)
                }
                fn consume(input: WitBatch) -> Result<(), $crate::__private::WitError> {
                    $crate::__private::consume_export::<$plugin>(input)
                }
            }
    bindings::export!(WeirNotifierExport with_types_in bindings);
        };
    };
}
