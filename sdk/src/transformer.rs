//! The transformer world: a batch in, one outcome per input record out.

use crate::error::CallError;
use crate::{Batch, Config, Error, Output, Record};

/// What happened to one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Transformed: the records emitted to the [`Output`] during this call
    /// (zero or more) are its result.
    Ok,
    /// Deliberately discarded; anything emitted for it is discarded too.
    Dropped,
    /// Could not be processed; the reason goes with the record to the error
    /// output. Anything emitted for it is discarded. (Returning
    /// [`Error::BadRecord`] does the same.)
    Failed(String),
}

/// A record transformer (the `weir:plugin/transformer` world).
pub trait Transformer: Sized + 'static {
    /// Build the plugin from its configuration. Called once per instance; an
    /// error keeps the stage from starting and is shown to the operator.
    fn init(config: &Config) -> Result<Self, String>;

    /// Transform one record, emitting its results to `out`. An [`Error`] other
    /// than [`Error::BadRecord`] fails the whole batch (see [`Error`]).
    fn transform(&mut self, record: &Record<'_>, out: &mut Output) -> Result<Outcome, Error>;
}

/// Runs a transformer over a batch: the heart of both the component export
/// and the native test harness. `outcome` turns each record's [`Outcome`] and
/// its number of output records into the caller's representation. A record's
/// bad-record error is its `Failed` outcome; any other error fails the call.
#[doc(hidden)]
pub fn transform_batch<T: Transformer, O>(
    plugin: &mut T,
    input: &Batch,
    mut outcome: impl FnMut(Outcome, u32) -> O,
) -> Result<(Vec<O>, Batch), CallError> {
    let mut outcomes = Vec::with_capacity(input.len());
    let mut out = Output {
        batch: Batch {
            payloads: Vec::with_capacity(input.payloads.len() * 2),
            keys: Vec::with_capacity(input.keys.len()),
            key_ends: Vec::with_capacity(input.len()),
            payload_ends: Vec::with_capacity(input.len()),
            event_times: Vec::with_capacity(input.len()),
            attributes: Vec::new(),
        },
    };
    for record in input.iter() {
        let before = out.len();
        let result = match plugin.transform(&record, &mut out) {
            Ok(result) => result,
            Err(Error::BadRecord(reason)) => Outcome::Failed(reason),
            Err(e) => return Err(e.at(record.index())),
        };
        if result != Outcome::Ok {
            // Dropped and failed records have no output, whatever was emitted.
            out.batch.truncate(before);
        }
        outcomes.push(outcome(result, (out.len() - before) as u32));
    }
    Ok((outcomes, out.batch))
}

/// Export a [`Transformer`] as the component's `weir:plugin/transformer` world.
#[macro_export]
macro_rules! export_transformer {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use bindings::exports::weir::plugin::transform::{Guest, Transformed};
            use $crate::__private::transformer as bindings;
            use $crate::__private::{WitBatch, WitConfig};

            struct WeirTransformerExport;
            impl Guest for WeirTransformerExport {
                fn init(config: WitConfig) -> Result<(), String> {
                    $crate::__private::init_plugin::<$plugin>(config, <$plugin as $crate::Transformer>::init)
                }
                fn transform(input: WitBatch) -> Result<Transformed, $crate::__private::WitError> {
                    $crate::__private::transform_export::<$plugin>(input)
                }
            }
    bindings::export!(WeirTransformerExport with_types_in bindings);
        };
    };
}
