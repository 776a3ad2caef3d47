//! A notifier for the world tests: adds each payload (a decimal amount) to the
//! key's total in the `totals` state table, and when the total crosses the
//! threshold sends one notification, addressed to the recipient named in the
//! `recipients` reference table.

use weir_sdk::host::{self, Notification};
use weir_sdk::{Config, Notifier, Record};

/// The test guest.
pub struct Echo {
    threshold: i64,
}

impl Notifier for Echo {
    fn init(config: &Config) -> Result<Self, String> {
        Ok(Echo { threshold: config.parse_or("threshold", 100)? })
    }

    fn consume(&mut self, record: &Record<'_>) -> Result<(), String> {
        let amount: i64 = record.text().unwrap_or("").trim().parse().map_err(|e| format!("amount: {e}"))?;
        let total = host::add("totals", record.key(), amount)?;
        if total >= self.threshold && total - amount < self.threshold {
            let recipient = host::lookup("recipients", record.key())?.unwrap_or_else(|| record.key().to_owned());
            host::send(&Notification {
                channel: "inbox".to_owned(),
                recipient,
                subject: format!("{} crossed {}", record.key(), self.threshold),
                body: format!("total is now {total}"),
                idempotency_key: format!("{}-crossed-{}", record.key(), self.threshold),
            })?;
        }
        Ok(())
    }
}

weir_sdk::export_notifier!(Echo);
