//! The showcase's aggregator plugins as components, on rows made by `toll-etl`
//! from toll lines: `toll-billing-sum` totals each customer's tolls for a
//! window, `traffic-monitor-count` counts each station's vehicles (zero for
//! an expected station with none). States cross the boundary between calls
//! and instances, as the host keeps them.

use std::collections::BTreeMap;

use weir_host::manifest::{Grants, Limits};
use weir_host::plugin::{AggregatorPlugin, Batch};
use weir_tests::{artifacts, engine, sandbox};

const LINES: [&str; 5] = [
    "T0017-000001,2026-11-26T14:03:12.345Z,17,3,TAG0012345,C000123,2,275",
    "T0017-000002,2026-11-26T14:03:13Z,17,4,TAG0012346,C000124,1,150",
    "T0042-000003,2026-11-26T14:05:00.5Z,42,1,TAG0000007,C000123,3,410",
    "T0042-000004,2026-11-26T14:06:00Z,42,1,TAG0000008,C000125,6,990",
    "T0017-000005,2026-11-26T14:07:00Z,17,2,TAG0012347,C000123,2,275",
];

/// 2026-11-26T14:00:00Z
const WINDOW_START: i64 = 1_795_701_600_000;

/// `toll-etl`'s rows for the lines, keyed by `key(row)`.
fn rows(key: impl Fn(&toll_etl::Transaction<'_>) -> String) -> (Batch, Vec<String>) {
    let etl = toll_etl::TollEtl::with_defaults();
    let mut batch = Batch::with_capacity(LINES.len(), 1024);
    let mut keys = Vec::new();
    for line in LINES {
        let t = etl.parse(line.as_bytes()).expect("a valid line");
        let mut row = Vec::new();
        etl.write_row(&t, &mut row);
        batch.push(&key(&t), t.event_time_ms, &row);
        keys.push(key(&t));
    }
    (batch, keys)
}

/// Folds the batch in two calls on two instances, then emits the window; results by key.
fn run(component: &str, batch: &Batch, keys: &[String], expected: &[&str], minutes: i64) -> BTreeMap<String, String> {
    let engine = engine();
    let compiled = engine.compile(component.as_ref()).expect("compile");
    let plugin =
        AggregatorPlugin::new(&engine, compiled, sandbox(component, Limits::default(), Grants::default()), vec![])
            .expect("load");
    let mut distinct: Vec<String> = keys.to_vec();
    distinct.sort();
    distinct.dedup();
    distinct.extend(expected.iter().map(|k| (*k).to_owned()).filter(|k| !keys.contains(k)));
    let groups: Vec<u32> = keys.iter().map(|k| distinct.iter().position(|d| d == k).unwrap_or(0) as u32).collect();
    let mut states = vec![Vec::new(); distinct.len()];
    let split = batch.len() / 2;
    // Each half on a fresh instance: the state lives in the host, not the plugin.
    for range in [0..split, split..batch.len()] {
        let mut part = Batch::with_capacity(range.len(), 1024);
        for r in batch.records().skip(range.start).take(range.len()) {
            part.push(r.key, r.event_time_ms, r.payload);
        }
        let mut instance = plugin.instantiate().expect("instantiate");
        instance.fold(&part, &groups[range], &mut states).expect("fold");
    }
    let out = plugin
        .instantiate()
        .expect("instantiate")
        .emit(WINDOW_START, WINDOW_START + minutes * 60_000, &distinct, &states)
        .expect("emit");
    out.records().map(|r| (r.key.to_owned(), String::from_utf8_lossy(r.payload).into_owned())).collect()
}

#[test]
fn toll_billing_sum_totals_each_customers_tolls_for_the_window() {
    let (batch, keys) = rows(|t| t.customer_id.to_owned());
    let results = run(artifacts::TOLL_BILLING_SUM, &batch, &keys, &[], 10);
    let w = r#""window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:10:00.000Z""#;
    assert_eq!(results["C000123"], format!(r#"{{"customer_id":"C000123",{w},"total_cents":960,"transactions":3}}"#));
    assert_eq!(results["C000124"], format!(r#"{{"customer_id":"C000124",{w},"total_cents":150,"transactions":1}}"#));
    assert_eq!(results["C000125"], format!(r#"{{"customer_id":"C000125",{w},"total_cents":990,"transactions":1}}"#));
    assert_eq!(results.len(), 3);
}

#[test]
fn traffic_monitor_count_counts_vehicles_per_station_and_zero_for_a_silent_one() {
    let (batch, keys) = rows(|t| t.station_id.to_string());
    let results = run(artifacts::TRAFFIC_MONITOR_COUNT, &batch, &keys, &["99"], 30);
    let w = r#""window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z""#;
    assert_eq!(results["17"], format!(r#"{{"station_id":"17",{w},"vehicles":3,"by_class":[1,2,0,0,0,0]}}"#));
    assert_eq!(results["42"], format!(r#"{{"station_id":"42",{w},"vehicles":2,"by_class":[0,0,1,0,0,1]}}"#));
    assert_eq!(results["99"], format!(r#"{{"station_id":"99",{w},"vehicles":0,"by_class":[0,0,0,0,0,0]}}"#));
}
