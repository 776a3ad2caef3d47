//! ABC Tolls billing, notifier half (world `notifier`): reads
//! `toll-billing-sum`'s window totals, adds each to the customer's
//! month-to-date total, and when that total crosses the customer's threshold
//! sends one in-app message, once per customer and month. A new month starts
//! from zero (the total's key holds the month).
//!
//! A window's total may come more than once: batches come at least once, and a
//! late toll revises a window that was already summed (the aggregator sends the
//! window again with its whole new total). So the month's item keeps each
//! window's total as it was added (`{"cents":960,"windows":{"<start>":685,...}}`)
//! and a window's total replaces what it added before: a repeat changes
//! nothing, a revision adds only the difference. Each result says its
//! revision (the host's `weir-revision` attribute, read with `Pane::of`), and
//! the item keeps the revision each window was added at, so a repeat of an
//! older revision that arrives after a newer one changes nothing either. Every
//! toll is counted once, however late it came and whatever order the windows
//! and their revisions arrive in. The item is written with a conditional put. The message's idempotency key
//! `billing|<customer>|<YYYY-MM>` makes it one per month even if the crossing
//! is seen again.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_sdk::host::{self, Notification};
use weir_sdk::pane::Pane;
use weir_sdk::{Config, Error, Notifier, Record};

/// The plugin and its configuration.
pub struct TollBillingAlert {
    totals: String,
    thresholds: String,
    default_threshold_cents: u64,
    channel: String,
}

/// A `toll-billing-sum` result.
#[derive(Deserialize)]
struct WindowTotal {
    customer_id: String,
    window_start: String,
    total_cents: u64,
}

/// A month-to-date total, as kept in the totals table.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct MonthTotal {
    cents: u64,
    /// Each window's total as added, by window start.
    #[serde(default)]
    windows: BTreeMap<String, u64>,
    /// The revision each window's total was added at, when it was not the on-time one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    revisions: BTreeMap<String, u32>,
    /// In items written before windows were kept: the last window added, so that
    /// windows at or before it (not in `windows`) are not added again.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    last_window: String,
}

/// Conditional-put attempts before giving up on a contended item (the batch is then retried).
const CAS_ATTEMPTS: usize = 16;

impl Notifier for TollBillingAlert {
    fn init(config: &Config) -> Result<Self, String> {
        let text = |key: &str, default: &str| config.get(key).unwrap_or(default).to_owned();
        Ok(TollBillingAlert {
            totals: text("totals", "month-totals"),
            thresholds: text("thresholds", "thresholds"),
            default_threshold_cents: config.parse_or("default-threshold-cents", 10_000)?,
            channel: text("channel", "app"),
        })
    }

    fn consume(&mut self, record: &Record<'_>) -> Result<(), Error> {
        let window: WindowTotal = serde_json::from_slice(record.payload()).map_err(|e| {
            Error::bad_record(format!("not a toll-billing-sum result (customer_id, window_start, total_cents): {e}"))
        })?;
        let month = window.window_start.get(..7).filter(|m| m.as_bytes().get(4) == Some(&b'-'));
        let month = month.ok_or_else(|| {
            Error::bad_record(format!("window_start `{}` is not an RFC 3339 time", window.window_start))
        })?;
        let key = format!("{}|{month}", window.customer_id);
        // A result without a pane (a producer other than the aggregator) counts as on time.
        let revision = Pane::of(record).map_or(0, |pane| pane.revision);
        let Some((before, after)) = self.apply(&key, &window, revision)? else { return Ok(()) };
        let threshold = self.threshold(&window.customer_id)?;
        if before < threshold && after >= threshold {
            host::send(&Notification {
                channel: self.channel.clone(),
                recipient: window.customer_id.clone(),
                subject: format!("Your tolls for {month} passed {}", dollars(threshold)),
                body: format!(
                    "Your tolls since the start of {month} come to {} (as of {}), past your limit of {}.",
                    dollars(after),
                    window.window_start,
                    dollars(threshold)
                ),
                idempotency_key: format!("billing|{}|{month}", window.customer_id),
            })?;
        }
        Ok(())
    }
}

impl TollBillingAlert {
    /// Puts the window's total (at `revision`) in the month's total, in place of
    /// what the window added before; the totals before and after, or `None` when
    /// nothing changed (a repeat, or a revision older than the one added).
    fn apply(&self, key: &str, window: &WindowTotal, revision: u32) -> Result<Option<(u64, u64)>, Error> {
        for _ in 0..CAS_ATTEMPTS {
            let current = host::get(&self.totals, key)?;
            let mut total: MonthTotal = match &current {
                None => MonthTotal::default(),
                Some(bytes) => serde_json::from_slice(bytes)
                    .map_err(|e| format!("item `{key}` of `{}` is not a month total: {e}", self.totals))?,
            };
            let before = total.cents;
            let added = match total.windows.get(&window.window_start) {
                Some(&added) => added,
                None if window.window_start <= total.last_window => return Ok(None),
                None => 0,
            };
            let added_at = total.revisions.get(&window.window_start).copied().unwrap_or(0);
            if revision < added_at || added == window.total_cents {
                return Ok(None);
            }
            total.cents = total.cents.saturating_sub(added).saturating_add(window.total_cents);
            total.windows.insert(window.window_start.clone(), window.total_cents);
            if revision > 0 {
                total.revisions.insert(window.window_start.clone(), revision);
            }
            let bytes = serde_json::to_vec(&total).map_err(|e| e.to_string())?;
            if host::put_if(&self.totals, key, current.as_deref(), &bytes)? {
                return Ok(Some((before, total.cents)));
            }
        }
        Err(Error::transient(format!("item `{key}` of `{}` kept changing; the batch will be retried", self.totals)))
    }

    /// The customer's threshold in cents: from the thresholds table, else the default.
    fn threshold(&self, customer: &str) -> Result<u64, Error> {
        match host::get(&self.thresholds, customer)? {
            None => Ok(self.default_threshold_cents),
            Some(bytes) => String::from_utf8_lossy(&bytes).trim().parse().map_err(|_| {
                // The app wrote a bad threshold: this customer's record waits in the dead letters until it is fixed.
                Error::bad_record(format!(
                    "the threshold of `{customer}` in `{}` is not a whole number of cents",
                    self.thresholds
                ))
            }),
        }
    }
}

/// Cents as `$12.34`.
fn dollars(cents: u64) -> String {
    format!("${}.{:02}", cents / 100, cents % 100)
}

weir_sdk::export_notifier!(TollBillingAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Batch;
    use weir_sdk::testing::{self, NotifierHarness};

    fn window(customer: &str, start: &str, cents: u64) -> String {
        format!(
            r#"{{"customer_id":"{customer}","window_start":"{start}","window_end":"","total_cents":{cents},"transactions":1}}"#
        )
    }

    fn run(h: &mut NotifierHarness<TollBillingAlert>, windows: &[(&str, &str, u64)]) {
        let mut batch = Batch::new();
        for (customer, start, cents) in windows {
            batch.push(customer, 0, window(customer, start, *cents).as_bytes());
        }
        h.consume(&batch).expect("consume");
    }

    #[test]
    fn one_message_when_the_month_total_crosses_the_threshold_and_none_after() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[]).expect("init");
        testing::set_item("thresholds", "C1", b"1000");
        run(&mut h, &[("C1", "2026-11-26T14:00:00.000Z", 600), ("C2", "2026-11-26T14:00:00.000Z", 9000)]);
        assert!(testing::sent().is_empty(), "C1 is at $6.00 of $10.00, C2 at $90.00 of the default $100.00");
        run(&mut h, &[("C1", "2026-11-26T14:10:00.000Z", 500), ("C1", "2026-11-26T14:20:00.000Z", 500)]);
        let sent = testing::sent();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].recipient, "C1");
        assert_eq!(sent[0].subject, "Your tolls for 2026-11 passed $10.00");
        assert_eq!(sent[0].idempotency_key, "billing|C1|2026-11");
        let total = testing::item("month-totals", "C1|2026-11").expect("a total");
        assert_eq!(
            String::from_utf8_lossy(&total),
            r#"{"cents":1600,"windows":{"2026-11-26T14:00:00.000Z":600,"2026-11-26T14:10:00.000Z":500,"2026-11-26T14:20:00.000Z":500}}"#
        );
    }

    #[test]
    fn a_revised_window_adds_only_what_changed_in_any_order() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[("default-threshold-cents", "1000")]).expect("init");
        let (w1, w2) = ("2026-11-26T14:00:00.000Z", "2026-11-26T14:10:00.000Z");
        run(&mut h, &[("C1", w2, 300), ("C1", w1, 600)]);
        assert!(testing::sent().is_empty(), "$9.00 of $10.00");
        // A late toll of $1.50 in the first window: its revision carries the window's new total.
        run(&mut h, &[("C1", w1, 750), ("C1", w1, 750)]);
        let item = testing::item("month-totals", "C1|2026-11").expect("a total");
        let cents = serde_json::from_slice::<MonthTotal>(&item).expect("a month total").cents;
        assert_eq!(cents, 1050, "300 + 750: the revision replaced the 600, the repeat changed nothing");
        let sent = testing::sent();
        assert_eq!(sent.len(), 1, "the late toll crossed the threshold: one message");
        assert!(sent[0].body.contains("$10.50 (as of 2026-11-26T14:00:00.000Z)"), "{}", sent[0].body);
    }

    #[test]
    fn an_older_revision_arriving_after_a_newer_one_changes_nothing() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[]).expect("init");
        let w1 = "2026-11-26T14:00:00.000Z";
        let result = |batch: &mut Batch, cents: u64, revision: &str| {
            batch.push("C1", 0, window("C1", w1, cents).as_bytes());
            batch.set_attribute("weir-window-start", "1795701600000");
            batch.set_attribute("weir-window-end", "1795702200000");
            batch.set_attribute("weir-revision", revision);
        };
        let mut batch = Batch::new();
        result(&mut batch, 600, "0");
        result(&mut batch, 750, "1");
        // The on-time result again, redelivered after its revision (a batch redone after a crash).
        result(&mut batch, 600, "0");
        h.consume(&batch).expect("consume");
        let item = testing::item("month-totals", "C1|2026-11").expect("a total");
        let total = serde_json::from_slice::<MonthTotal>(&item).expect("a month total");
        assert_eq!((total.cents, total.revisions.get(w1)), (750, Some(&1)), "revision 1 stays");
    }

    #[test]
    fn an_item_from_before_revisions_does_not_count_its_windows_again() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[]).expect("init");
        testing::set_item("month-totals", "C1|2026-11", br#"{"cents":900,"last_window":"2026-11-26T14:10:00.000Z"}"#);
        run(&mut h, &[("C1", "2026-11-26T14:00:00.000Z", 400), ("C1", "2026-11-26T14:20:00.000Z", 100)]);
        let item = testing::item("month-totals", "C1|2026-11").expect("a total");
        assert_eq!(serde_json::from_slice::<MonthTotal>(&item).expect("a month total").cents, 1000);
    }

    #[test]
    fn a_window_seen_again_is_not_added_twice_and_a_new_month_starts_from_zero() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[("default-threshold-cents", "1000")]).expect("init");
        let first = ("C1", "2026-11-30T23:50:00.000Z", 900);
        run(&mut h, &[first, first]);
        assert_eq!(
            String::from_utf8_lossy(&testing::item("month-totals", "C1|2026-11").expect("total")),
            r#"{"cents":900,"windows":{"2026-11-30T23:50:00.000Z":900}}"#
        );
        run(&mut h, &[("C1", "2026-12-01T00:00:00.000Z", 200)]);
        assert!(testing::sent().is_empty(), "December starts at $2.00");
        assert!(testing::item("month-totals", "C1|2026-12").is_some());
    }

    #[test]
    fn a_record_that_is_not_a_window_total_fails_with_the_reason() {
        let mut h = NotifierHarness::<TollBillingAlert>::new(&[]).expect("init");
        let mut batch = Batch::new();
        batch.push("C1", 0, b"{}");
        assert!(
            h.consume(&batch)
                .is_err_and(|e| matches!(&e, Error::BadRecord(m) if m.contains("toll-billing-sum result")))
        );
    }
}
