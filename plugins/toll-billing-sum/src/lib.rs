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

mod sum;

pub use sum::{TollBillingSum, Total};

weir_sdk::export_aggregator!(TollBillingSum);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::testing::AggregatorHarness;
    use weir_sdk::{Batch, Window};

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
        assert!(matches!(&err, weir_sdk::Error::BadRecord(m) if m.contains("amount_cents")), "{err}");
    }
}
