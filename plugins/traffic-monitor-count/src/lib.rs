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
//! The notifier half compares the count with the reference minimum for the
//! station, weekday and slot, and alerts operations.

use serde::{Deserialize, Serialize};
use weir_sdk::time::timestamp;
use weir_sdk::{Aggregator, Config, Output, Record, Window};

/// The plugin.
pub struct TrafficMonitorCount;

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
}

impl Aggregator for TrafficMonitorCount {
    type State = Count;

    fn init(_config: &Config) -> Result<Self, String> {
        Ok(TrafficMonitorCount)
    }

    fn fold(&mut self, state: &mut Count, record: &Record<'_>) -> Result<(), String> {
        let row: Row = serde_json::from_slice(record.payload())
            .map_err(|e| format!("not a toll-etl row (needs `vehicle_class`): {e}"))?;
        let slot = row
            .vehicle_class
            .checked_sub(1)
            .and_then(|i| state.by_class.get_mut(i))
            .ok_or_else(|| format!("vehicle_class {} is not 1 to 6", row.vehicle_class))?;
        *slot += 1;
        Ok(())
    }

    fn emit(&mut self, window: Window, key: &str, state: &Count, out: &mut Output) -> Result<(), String> {
        let result = StationCount {
            station_id: key,
            window_start: timestamp(window.start_ms),
            window_end: timestamp(window.end_ms),
            vehicles: state.by_class.iter().sum(),
            by_class: state.by_class,
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
    fn an_unknown_vehicle_class_fails_the_fold_with_the_reason() {
        let mut h = AggregatorHarness::<TrafficMonitorCount>::new(&[]).expect("init");
        let mut batch = Batch::new();
        batch.push("17", 0, br#"{"vehicle_class":9}"#);
        assert_eq!(h.fold(&batch), Err("vehicle_class 9 is not 1 to 6".to_owned()));
    }
}
