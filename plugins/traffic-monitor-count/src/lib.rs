//! ABC Tolls traffic monitoring, aggregation half (world `aggregator`): the
//! vehicles that passed each station in a window. The input is `toll-etl`'s
//! rows keyed by station; each closed window gives one record per station,
//! including every expected station that saw no vehicle at all (count 0):
//!
//! ```json
//! {"station_id":"17","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z",
//!  "vehicles":42,"by_class":[10,25,4,2,1,0]}
//! ```
//!
//! With `minimums = "<reference table>"` in its config, each result also
//! carries the station's minimum for the window's weekday and half-hour slot,
//! looked up in that table under `<station>|<weekday 1-7, Monday 1>|<slot
//! 0-47>` (its `minimum` column), and whether the count is below it:
//! `"minimum":40,"below_minimum":true`. The notifier half alerts operations
//! on those.

use serde::{Deserialize, Serialize};
use weir_sdk::time::timestamp;
use weir_sdk::{Aggregator, Config, Error, Output, Record, Window};

/// The plugin: the reference table of minimums, if configured.
pub struct TrafficMonitorCount {
    minimums: Option<String>,
}

/// Vehicles counted at one station in one window, by vehicle class 1 to 6.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Count {
    /// Vehicles of class `i + 1`.
    pub by_class: [u32; 6],
}

/// The fields of a `toll-etl` row this plugin reads.
#[derive(Deserialize)]
struct Row {
    vehicle_class: usize,
}

/// One station's result for one window.
#[derive(Serialize)]
struct StationCount<'a> {
    station_id: &'a str,
    window_start: String,
    window_end: String,
    vehicles: u32,
    by_class: [u32; 6],
    #[serde(skip_serializing_if = "Option::is_none")]
    minimum: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    below_minimum: Option<bool>,
}

/// The `minimum` column of a reference row, a number or a numeric string.
#[derive(Deserialize)]
struct MinimumRow {
    minimum: serde_json::Value,
}

impl TrafficMonitorCount {
    /// The station's minimum for the window's weekday and slot, if the table has one.
    fn minimum(&self, station: &str, window: Window) -> Result<Option<u64>, Error> {
        let Some(table) = &self.minimums else { return Ok(None) };
        let days = window.start_ms.div_euclid(86_400_000);
        let weekday = (days + 3).rem_euclid(7) + 1; // 1970-01-01 was a Thursday
        let slot = window.start_ms.rem_euclid(86_400_000) / 1_800_000;
        let Some(row) = weir_sdk::host::lookup(table, &format!("{station}|{weekday}|{slot}"))? else {
            return Ok(None);
        };
        let row: MinimumRow =
            serde_json::from_str(&row).map_err(|e| format!("`{table}` row without `minimum`: {e}"))?;
        let minimum = match &row.minimum {
            serde_json::Value::Number(n) => n.as_u64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        minimum.map(Some).ok_or_else(|| format!("`{table}`: minimum {} is not a whole number", row.minimum).into())
    }
}

impl Aggregator for TrafficMonitorCount {
    type State = Count;

    fn init(config: &Config) -> Result<Self, String> {
        let minimums = config.get("minimums").filter(|t| !t.is_empty()).map(str::to_owned);
        Ok(TrafficMonitorCount { minimums })
    }

    fn fold(&mut self, state: &mut Count, record: &Record<'_>) -> Result<(), Error> {
        let row: Row = serde_json::from_slice(record.payload())
            .map_err(|e| Error::bad_record(format!("not a toll-etl row (needs `vehicle_class`): {e}")))?;
        let slot = row
            .vehicle_class
            .checked_sub(1)
            .and_then(|i| state.by_class.get_mut(i))
            .ok_or_else(|| Error::bad_record(format!("vehicle_class {} is not 1 to 6", row.vehicle_class)))?;
        *slot += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &Count, out: &mut Output) -> Result<(), Error> {
        let vehicles = state.by_class.iter().sum();
        let minimum = self.minimum(key, window)?;
        let result = StationCount {
            station_id: key,
            window_start: timestamp(window.start_ms),
            window_end: timestamp(window.end_ms),
            vehicles,
            by_class: state.by_class,
            minimum,
            below_minimum: minimum.map(|m| u64::from(vehicles) < m),
        };
        let json = serde_json::to_vec(&result).map_err(|e| e.to_string())?;
        out.emit(key, window.end_ms - 1, &json);
        Ok(())
    }

    fn decode(bytes: &[u8]) -> Result<Count, String> {
        if bytes.len() != 24 {
            return Err(format!("state has {} bytes, expected 24", bytes.len()));
        }
        let mut by_class = [0u32; 6];
        for (slot, chunk) in by_class.iter_mut().zip(bytes.chunks_exact(4)) {
            *slot = u32::from_le_bytes(chunk.try_into().map_err(|_| "count")?);
        }
        Ok(Count { by_class })
    }

    fn encode(state: &Count, out: &mut Vec<u8>) {
        for n in state.by_class {
            out.extend_from_slice(&n.to_le_bytes());
        }
    }
}

weir_sdk::export_aggregator!(TrafficMonitorCount);

#[cfg(test)]
mod tests {
    use super::*;
    use weir_sdk::Batch;
    use weir_sdk::testing::AggregatorHarness;

    #[test]
    fn vehicles_are_counted_per_station_and_a_silent_expected_station_counts_zero() {
        let mut h = AggregatorHarness::<TrafficMonitorCount>::new(&[]).expect("init");
        let mut batch = Batch::new();
        for (station, class) in [("17", 2), ("17", 2), ("42", 6), ("17", 1)] {
            batch.push(station, 0, format!(r#"{{"station_id":{station},"vehicle_class":{class}}}"#).as_bytes());
        }
        h.fold(&batch).expect("fold");
        // 2026-11-26T14:00 to 14:30 UTC
        let window = Window { start_ms: 1_795_701_600_000, end_ms: 1_795_703_400_000 };
        let out = h.emit(window, &["99"]).expect("emit");
        let texts: Vec<String> = out.iter().map(|r| String::from_utf8_lossy(&r.payload).into_owned()).collect();
        let w = r#""window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z""#;
        assert_eq!(
            texts,
            vec![
                format!(r#"{{"station_id":"17",{w},"vehicles":3,"by_class":[1,2,0,0,0,0]}}"#),
                format!(r#"{{"station_id":"42",{w},"vehicles":1,"by_class":[0,0,0,0,0,1]}}"#),
                format!(r#"{{"station_id":"99",{w},"vehicles":0,"by_class":[0,0,0,0,0,0]}}"#),
            ]
        );
    }

    #[test]
    fn with_a_minimums_table_each_result_says_whether_the_station_fell_below() {
        // Thursday 2026-11-26, 14:00 is slot 28.
        weir_sdk::testing::set_reference("minimums", "17|4|28", r#"{"station_id":"17","minimum":"2"}"#);
        weir_sdk::testing::set_reference("minimums", "99|4|28", r#"{"station_id":"99","minimum":5}"#);
        let mut h = AggregatorHarness::<TrafficMonitorCount>::new(&[("minimums", "minimums")]).expect("init");
        let mut batch = Batch::new();
        for station in ["17", "17", "42"] {
            batch.push(station, 0, br#"{"vehicle_class":1}"#);
        }
        h.fold(&batch).expect("fold");
        let window = Window { start_ms: 1_795_701_600_000, end_ms: 1_795_703_400_000 };
        let out = h.emit(window, &["99"]).expect("emit");
        let tails: Vec<String> = out
            .iter()
            .map(|r| {
                let text = String::from_utf8_lossy(&r.payload).into_owned();
                text[text.find("\"vehicles\"").unwrap_or(0)..].to_owned()
            })
            .collect();
        assert_eq!(
            tails,
            vec![
                r#""vehicles":2,"by_class":[2,0,0,0,0,0],"minimum":2,"below_minimum":false}"#,
                r#""vehicles":1,"by_class":[1,0,0,0,0,0]}"#,
                r#""vehicles":0,"by_class":[0,0,0,0,0,0],"minimum":5,"below_minimum":true}"#,
            ]
        );
    }

    #[test]
    fn an_unknown_vehicle_class_fails_the_fold_with_the_reason() {
        let mut h = AggregatorHarness::<TrafficMonitorCount>::new(&[]).expect("init");
        let mut batch = Batch::new();
        batch.push("17", 0, br#"{"vehicle_class":9}"#);
        assert_eq!(h.fold(&batch), Err(Error::bad_record("vehicle_class 9 is not 1 to 6")));
    }
}
