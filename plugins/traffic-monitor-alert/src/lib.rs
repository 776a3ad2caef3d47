//! ABC Tolls traffic monitoring, notifier half (world `notifier`): reads
//! `traffic-monitor-count`'s results (run with a `minimums` reference table)
//! and, for each station whose count for a window is below its minimum —
//! zero vehicles for a silent station included — alerts the operators on
//! every configured channel, naming the station, the window, the count and the
//! minimum. The idempotency key `traffic|<station>|<window start>` makes each
//! alert one per channel, however often its batch is redone.
//!
//! A window's count can be revised: records that came late (a station's log
//! shipped after an outage) make the aggregator send the window again with its
//! whole new count. An alert that a revised count proves wrong is followed by a
//! correction on the same channels (idempotency key
//! `traffic-corrected|<station>|<window start>`); the `alerts` state table
//! remembers which windows were alerted (`<station>|<window start>`).

use serde::Deserialize;
use weir_sdk::host::{self, Notification};
use weir_sdk::{Config, Error, Notifier, Record};

/// The plugin and its configuration.
pub struct TrafficMonitorAlert {
    channels: Vec<String>,
    recipient: String,
    alerts: String,
}

/// What the `alerts` table says of a (station, window).
const ALERTED: &[u8] = b"alerted";
const CORRECTED: &[u8] = b"corrected";

/// A `traffic-monitor-count` result.
#[derive(Deserialize)]
struct StationCount {
    station_id: String,
    window_start: String,
    window_end: String,
    vehicles: u64,
    minimum: Option<u64>,
}

impl Notifier for TrafficMonitorAlert {
    fn init(config: &Config) -> Result<Self, String> {
        let channels = match config.get("channels") {
            None => vec!["operators".to_owned()],
            Some(text) => serde_json::from_str::<Vec<String>>(text)
                .map_err(|_| format!("channels must be a list of channel names, not {text}"))?,
        };
        if channels.is_empty() {
            return Err("channels names no channel: alerts would go nowhere".into());
        }
        weir_sdk::log::debug(&format!("alerting {}", channels.join(", ")));
        Ok(TrafficMonitorAlert {
            channels,
            recipient: config.get("recipient").unwrap_or("operators").to_owned(),
            alerts: config.get("alerts").unwrap_or("traffic-alerts").to_owned(),
        })
    }

    fn consume(&mut self, record: &Record<'_>) -> Result<(), Error> {
        let count: StationCount = serde_json::from_slice(record.payload()).map_err(|e| {
            Error::bad_record(format!(
                "not a traffic-monitor-count result (station_id, window_start, window_end, vehicles): {e}"
            ))
        })?;
        let Some(minimum) = count.minimum else { return Ok(()) };
        let window = format!("{}|{}", count.station_id, count.window_start);
        let (from, to) = (clock(&count.window_start), clock(&count.window_end));
        if count.vehicles >= minimum {
            // A revised count: if it was alerted, say the alert was wrong, once.
            if host::get(&self.alerts, &window)?.as_deref() == Some(ALERTED) {
                let subject = format!(
                    "Station {} recovered {from}-{to}: {} vehicles, minimum {minimum} (correction)",
                    count.station_id, count.vehicles
                );
                let body = format!(
                    "Correction: station {} counted {} vehicles between {} and {} once its late records arrived; \
                     its minimum for that slot is {minimum}, so the earlier alert for this window was wrong.",
                    count.station_id, count.vehicles, count.window_start, count.window_end
                );
                self.send_all(&subject, &body, &format!("traffic-corrected|{window}"))?;
                host::put(&self.alerts, &window, CORRECTED)?;
            }
            return Ok(());
        }
        let subject = if count.vehicles == 0 {
            format!("Station {} silent {from}-{to}: no vehicles, minimum {minimum}", count.station_id)
        } else {
            format!("Station {} low {from}-{to}: {} vehicles, minimum {minimum}", count.station_id, count.vehicles)
        };
        let body = format!(
            "Station {} counted {} vehicles between {} and {}; its minimum for that slot is {minimum}.",
            count.station_id, count.vehicles, count.window_start, count.window_end
        );
        self.send_all(&subject, &body, &format!("traffic|{window}"))?;
        if host::get(&self.alerts, &window)?.is_none() {
            host::put(&self.alerts, &window, ALERTED)?;
        }
        Ok(())
    }
}

impl TrafficMonitorAlert {
    /// Sends one message to every configured channel.
    fn send_all(&self, subject: &str, body: &str, idempotency_key: &str) -> Result<(), Error> {
        for channel in &self.channels {
            host::send(&Notification {
                channel: channel.clone(),
                recipient: self.recipient.clone(),
                subject: subject.to_owned(),
                body: body.to_owned(),
                idempotency_key: idempotency_key.to_owned(),
            })?;
        }
        Ok(())
    }
}

/// `HH:MM` of an RFC 3339 time (the whole text if it is not one).
fn clock(time: &str) -> &str {
    time.get(11..16).unwrap_or(time)
}

weir_sdk::export_notifier!(TrafficMonitorAlert);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Batch;
    use weir_sdk::testing::{self, NotifierHarness};

    fn count(station: &str, vehicles: u64, minimum: Option<u64>) -> String {
        let minimum =
            minimum.map(|m| format!(r#","minimum":{m},"below_minimum":{}"#, vehicles < m)).unwrap_or_default();
        format!(
            r#"{{"station_id":"{station}","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z","vehicles":{vehicles},"by_class":[0,0,0,0,0,0]{minimum}}}"#
        )
    }

    #[test]
    fn stations_below_their_minimum_alert_every_channel_once() {
        let config = [("channels", r#"["ops-inbox","ops-webhook"]"#)];
        let mut h = NotifierHarness::<TrafficMonitorAlert>::new(&config).expect("init");
        let mut batch = Batch::new();
        for (station, vehicles, minimum) in
            [("17", 3, Some(40)), ("42", 50, Some(40)), ("55", 0, Some(5)), ("60", 1, None)]
        {
            batch.push(station, 0, count(station, vehicles, minimum).as_bytes());
        }
        h.consume(&batch).expect("consume");
        h.consume(&batch).expect("again, as after a crash");
        let sent = testing::sent();
        let subjects: Vec<(&str, &str)> = sent.iter().map(|n| (n.channel.as_str(), n.subject.as_str())).collect();
        assert_eq!(
            subjects,
            [
                ("ops-inbox", "Station 17 low 14:00-14:30: 3 vehicles, minimum 40"),
                ("ops-webhook", "Station 17 low 14:00-14:30: 3 vehicles, minimum 40"),
                ("ops-inbox", "Station 55 silent 14:00-14:30: no vehicles, minimum 5"),
                ("ops-webhook", "Station 55 silent 14:00-14:30: no vehicles, minimum 5"),
            ]
        );
        assert!(sent.iter().all(|n| n.recipient == "operators"));
        assert_eq!(sent[0].idempotency_key, "traffic|17|2026-11-26T14:00:00.000Z");
    }

    #[test]
    fn an_alert_a_revised_count_proves_wrong_is_corrected_once() {
        let mut h = NotifierHarness::<TrafficMonitorAlert>::new(&[]).expect("init");
        let mut silent = Batch::new();
        silent.push("17", 0, count("17", 0, Some(40)).as_bytes());
        h.consume(&silent).expect("consume");
        // The station's log arrives late: the window is revised, twice, and then repeated.
        for vehicles in [30, 45, 45] {
            let mut revised = Batch::new();
            revised.push("17", 0, count("17", vehicles, Some(40)).as_bytes());
            h.consume(&revised).expect("consume");
        }
        let subjects: Vec<String> = testing::sent().into_iter().map(|n| n.subject).collect();
        assert_eq!(
            subjects,
            [
                "Station 17 silent 14:00-14:30: no vehicles, minimum 40",
                "Station 17 recovered 14:00-14:30: 45 vehicles, minimum 40 (correction)",
            ]
        );
        // A count at the minimum that was never alerted says nothing.
        let mut fine = Batch::new();
        fine.push("42", 0, count("42", 50, Some(40)).as_bytes());
        h.consume(&fine).expect("consume");
        assert_eq!(testing::sent().len(), 2);
    }

    #[test]
    fn channels_must_be_a_list() {
        let err =
            NotifierHarness::<TrafficMonitorAlert>::new(&[("channels", "ops")]).map(drop).expect_err("not a list");
        assert!(err.contains("list of channel names"), "{err}");
    }
}
