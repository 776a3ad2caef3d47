//! A notifier for the world tests: adds each payload (a decimal amount) to the
//! key's total in the `totals` state table, and when the total crosses the
//! threshold sends one notification on the `channel`, addressed to the
//! recipient named in the `recipients` reference table (when it names one). A payload that is no
//! amount is a bad record; the payload `boom` makes it trap (a poison record). With `peek` set it also reads that state table,
//! which it does not declare: the host refuses.

use weir_sdk::host::{self, Notification};
use weir_sdk::{Config, Error, Notifier, Record};

/// The test guest.
pub struct Echo {
    threshold: i64,
    totals: String,
    recipients: String,
    channel: String,
    peek: String,
}

impl Notifier for Echo {
    fn init(config: &Config) -> Result<Self, String> {
        let text = |key: &str, default: &str| config.get(key).unwrap_or(default).to_owned();
        Ok(Echo {
            threshold: config.parse_or("threshold", 100)?,
            totals: text("totals", "totals"),
            recipients: text("recipients", ""),
            channel: text("channel", "inbox"),
            peek: text("peek", ""),
        })
    }

    fn consume(&mut self, record: &Record<'_>) -> Result<(), Error> {
        if record.payload() == b"boom" {
            panic!("boom");
        }
        if !self.peek.is_empty() {
            host::get(&self.peek, record.key())?;
        }
        let amount: i64 =
            record.text().unwrap_or("").trim().parse().map_err(|e| Error::bad_record(format!("amount: {e}")))?;
        let total = host::add(&self.totals, record.key(), amount)?;
        if total >= self.threshold && total - amount < self.threshold {
            let recipient = match self.recipients.as_str() {
                "" => None,
                table => host::lookup(table, record.key())?,
            };
            let recipient = recipient.unwrap_or_else(|| record.key().to_owned());
            host::send(&Notification {
                channel: self.channel.clone(),
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
