//! ABC Tolls billing, aggregation half (world `aggregator`): the tolls of each
//! customer summed over a window. The input is `toll-etl`'s rows, keyed by
//! customer; each closed window gives one record per customer:
//!
//! ```json
//! {"customer_id":"C000123","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:10:00.000Z",
//!  "total_cents":685,"transactions":2}
//! ```
//!
//! keyed by the customer, at the window's last millisecond. The notifier half
//! adds these to month-to-date totals and alerts on thresholds.

use serde::{Deserialize, Serialize};
use weir_sdk::time::timestamp;
use weir_sdk::{Aggregator, Config, Output, Record, Window};

/// The plugin.
pub struct TollBillingSum;

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
    window_start: String,
    window_end: String,
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
        Ok(TollBillingSum)
    }

    fn fold(&mut self, state: &mut Total, record: &Record<'_>) -> Result<(), String> {
        let row: Row = serde_json::from_slice(record.payload())
            .map_err(|e| format!("not a toll-etl row (needs a whole-number `amount_cents`): {e}"))?;
        state.cents = state.cents.checked_add(row.amount_cents).ok_or("the window's total overflows")?;
        state.transactions += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &Total, out: &mut Output) -> Result<(), String> {
        let result = WindowTotal {
            customer_id: key,
            window_start: timestamp(window.start_ms),
            window_end: timestamp(window.end_ms),
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

weir_sdk::export_aggregator!(TollBillingSum);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Batch;
    use weir_sdk::testing::AggregatorHarness;

    fn row(customer: &str, cents: u64) -> String {
        format!(r#"{{"transaction_id":"T1","customer_id":"{customer}","amount_cents":{cents},"currency":"USD"}}"#)
    }

    #[test]
    fn tolls_are_summed_per_customer_and_window() {
        let mut h = AggregatorHarness::<TollBillingSum>::new(&[]).expect("init");
        let mut batch = Batch::new();
        for (customer, cents) in [("C1", 275), ("C2", 150), ("C1", 410)] {
            batch.push(customer, 1_795_000_000_000, row(customer, cents).as_bytes());
        }
        h.fold(&batch).expect("fold");
        // 2026-11-26T14:00 to 14:10 UTC
        let window = Window { start_ms: 1_795_701_600_000, end_ms: 1_795_702_200_000 };
        let out = h.emit(window, &[]).expect("emit");
        let texts: Vec<String> = out.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
        assert_eq!(
            texts,
            vec![
                r#"{"customer_id":"C1","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:10:00.000Z","total_cents":685,"transactions":2}"#,
                r#"{"customer_id":"C2","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:10:00.000Z","total_cents":150,"transactions":1}"#,
            ]
        );
        assert_eq!(out[0].key, "C1");
        assert_eq!(out[0].event_time_ms, 1_795_702_200_000 - 1);
    }

    #[test]
    fn a_record_that_is_not_a_row_fails_the_fold_with_the_reason() {
        let mut h = AggregatorHarness::<TollBillingSum>::new(&[]).expect("init");
        let mut batch = Batch::new();
        batch.push("C1", 0, br#"{"amount_cents":"many"}"#);
        let err = h.fold(&batch).expect_err("not a number");
        assert!(err.contains("amount_cents"), "{err}");
    }
}
