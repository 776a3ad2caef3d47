//! The summing itself, apart from the component's export so that a later
//! build (the state-version test guest) can reuse it.

use serde::{Deserialize, Serialize};
use weir_sdk::time::timestamp;
use weir_sdk::{Aggregator, Config, Error, Output, Record, Window};

/// The plugin. It keeps the window it emits for with its times as text: every
/// key of a closed window is emitted in turn, so they are formatted once per window.
#[derive(Default)]
pub struct TollBillingSum {
    emitting: Option<(Window, String, String)>,
}

/// A customer's running total in one window.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Total {
    /// Sum of `amount_cents`.
    pub cents: u64,
    /// Transactions summed.
    pub transactions: u32,
}

/// One customer's result for one window.
#[derive(Serialize)]
struct WindowTotal<'a> {
    customer_id: &'a str,
    window_start: &'a str,
    window_end: &'a str,
    total_cents: u64,
    transactions: u32,
}

/// The fields of a `toll-etl` row this plugin reads.
#[derive(Deserialize)]
struct Row {
    amount_cents: u64,
}

impl Aggregator for TollBillingSum {
    type State = Total;

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(TollBillingSum::default())
    }

    fn fold(&mut self, state: &mut Total, record: &Record<'_>) -> Result<(), Error> {
        let row: Row = serde_json::from_slice(record.payload())
            .map_err(|e| Error::bad_record(format!("not a toll-etl row (needs a whole-number `amount_cents`): {e}")))?;
        state.cents = state.cents.checked_add(row.amount_cents).ok_or("the window's total overflows")?;
        state.transactions += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &Total, out: &mut Output) -> Result<(), Error> {
        if self.emitting.as_ref().is_some_and(|(emitting, ..)| *emitting != window) {
            self.emitting = None;
        }
        let (_, start, end) =
            self.emitting.get_or_insert_with(|| (window, timestamp(window.start_ms), timestamp(window.end_ms)));
        let result = WindowTotal {
            customer_id: key,
            window_start: start,
            window_end: end,
            total_cents: state.cents,
            transactions: state.transactions,
        };
        let json = serde_json::to_vec(&result).map_err(|e| e.to_string())?;
        out.emit(key, window.end_ms - 1, &json);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Total, String> {
        let raw: [u8; 12] = bytes.try_into().map_err(|_| format!("state has {} bytes, expected 12", bytes.len()))?;
        let (cents, transactions) = raw.split_at(8);
        Ok(Total {
            cents: u64::from_le_bytes(cents.try_into().map_err(|_| "cents")?),
            transactions: u32::from_le_bytes(transactions.try_into().map_err(|_| "transactions")?),
        })
    }

    fn encode(state: &Total, out: &mut Vec<u8>) {
        out.extend_from_slice(&state.cents.to_le_bytes());
        out.extend_from_slice(&state.transactions.to_le_bytes());
    }
}
