//! Aggregator stages end to end: toll rows in a stream are summed per
//! customer over 10-minute event-time windows by the `toll-billing-sum`
//! component; a window's results come out when the watermark passes its end,
//! late records land in a side stream with the reason, and a restart in
//! the middle of a window counts every record once.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;
use weir_host::pipeline::Producer;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, lines};

const MANIFEST: &str = r#"
[pipeline]
name = "windows-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "rows"

[streams.rows]
[streams.billing]
[streams.late-rows]

[stages.billing]
plugin = "{root}/plugins/toll-billing-sum"
input = "rows"
output = "billing"
batch-wait = "1ms"
window = { size = "10m" }
late = "late-rows"
"#;

/// 2026-11-26T14:00:00Z
const T14: i64 = 1_795_701_600_000;

fn row(customer: &str, cents: u64, at_ms: i64) -> NewRecord {
    NewRecord {
        source: None,
        key: customer.to_owned(),
        event_time_ms: Some(at_ms),
        data: Bytes::from(format!(r#"{{"customer_id":"{customer}","amount_cents":{cents}}}"#)),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

/// The billing results so far: (window start, customer) -> total.
fn results(host: &TestHost) -> BTreeMap<(String, String), u64> {
    let mut out = BTreeMap::new();
    let mut from = 0;
    loop {
        let records = host.host.read("billing", 0, from, 1000).expect("read");
        let Some(last) = records.last() else { return out };
        from = last.sequence + 1;
        for r in &records {
            let v: Value = serde_json::from_slice(&r.data).expect("JSON result");
            let key = (
                v["window_start"].as_str().unwrap_or("").to_owned(),
                v["customer_id"].as_str().unwrap_or("").to_owned(),
            );
            assert!(out.insert(key, v["total_cents"].as_u64().unwrap_or(0)).is_none(), "a result came twice: {v}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_close_on_the_watermark_and_late_records_keep_their_reason() {
    let mut host = TestHost::start(MANIFEST).await.expect("start");
    let minute = 60_000;
    host.host
        .put(
            "rows",
            vec![row("C1", 275, T14 + minute), row("C2", 150, T14 + 2 * minute), row("C1", 410, T14 + 9 * minute)],
            Producer::Native,
        )
        .expect("put");
    // 14:12 moves the watermark past 14:10: the first window closes.
    host.host.put("rows", vec![row("C1", 100, T14 + 12 * minute)], Producer::Native).expect("put");
    host.wait_until("the first window", |s| s.stages[0].records_out == 2).await;
    // 14:05 is behind the watermark now: late.
    host.host.put("rows", vec![row("C2", 999, T14 + 5 * minute)], Producer::Native).expect("put");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while host.host.read("late-rows", 0, 0, 10).expect("read").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the late record did not reach the side stream");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let windows = host.host.status().stages[0].windows.expect("window metrics");
    assert_eq!(windows.open_windows, 1, "only 14:10-14:20 is open; closed windows are freed: {windows:?}");
    assert_eq!(windows.open_keys, 1);
    host.stop().await;

    let got = results(&host);
    let first = "2026-11-26T14:00:00.000Z".to_owned();
    assert_eq!(got.get(&(first.clone(), "C1".into())), Some(&685));
    assert_eq!(got.get(&(first, "C2".into())), Some(&150));
    let late = host.host.read("late-rows", 0, 0, 10).expect("read");
    assert_eq!(late.len(), 1);
    let letter: Value = serde_json::from_slice(&late[0].data).expect("JSON");
    assert_eq!(letter["data"], r#"{"customer_id":"C2","amount_cents":999}"#);
    assert!(lines(&host.path("data/dead-letter/billing.jsonl")).is_empty(), "late records are not dead letters");
    assert_eq!(letter["error_code"], "late");
    assert!(letter["reason"].as_str().is_some_and(|r| r.contains("behind the watermark")), "{letter}");
}

/// Each result says which window it is for and which revision of it, in the
/// attributes a consumer reads (`weir_sdk::pane::Pane::of`): revision 0 when the
/// window closes, 1 when a record late within the allowed lateness revises it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_their_window_and_revision_to_the_consumer() {
    let manifest =
        MANIFEST.replace(r#"window = { size = "10m" }"#, r#"window = { size = "10m", allowed-lateness = "1h" }"#);
    let mut host = TestHost::start(&manifest).await.expect("start");
    let minute = 60_000;
    let put = |rows: Vec<NewRecord>| host.host.put("rows", rows, Producer::Native).expect("put");
    put(vec![row("C1", 275, T14 + minute), row("C2", 150, T14 + 2 * minute)]);
    put(vec![row("C1", 100, T14 + 12 * minute)]); // the watermark passes 14:10
    host.wait_until("the on-time results", |s| s.stages[0].records_out == 2).await;
    put(vec![row("C2", 999, T14 + 5 * minute)]); // late, within the allowed lateness
    host.wait_until("the revision", |s| s.stages[0].revisions == 1).await;
    host.stop().await;

    let records = host.host.read("billing", 0, 0, 100).expect("read");
    let panes: Vec<(String, u64, weir_host::stream::Attributes)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.data).expect("JSON result");
            (
                v["customer_id"].as_str().unwrap_or("").to_owned(),
                v["total_cents"].as_u64().unwrap_or(0),
                r.attributes.clone(),
            )
        })
        .collect();
    let pane = |revision: &str| {
        vec![
            ("weir-window-start".to_owned(), T14.to_string()),
            ("weir-window-end".to_owned(), (T14 + 10 * minute).to_string()),
            ("weir-revision".to_owned(), revision.to_owned()),
        ]
    };
    assert_eq!(
        panes,
        vec![("C1".into(), 275, pane("0")), ("C2".into(), 150, pane("0")), ("C2".into(), 1149, pane("1"))],
        "the on-time results, then C2's revision with its whole new total"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_the_plugin_cannot_fold_is_dead_lettered_and_its_window_holds_the_others() {
    let mut host = TestHost::start(MANIFEST).await.expect("start");
    let minute = 60_000;
    let mut bad = row("C1", 0, T14 + 3 * minute);
    bad.data = Bytes::from_static(br#"{"customer_id":"C1","amount_cents":"lots"}"#);
    let batch =
        vec![row("C1", 275, T14 + minute), bad, row("C1", 410, T14 + 9 * minute), row("C1", 1, T14 + 12 * minute)];
    host.host.put("rows", batch, Producer::Native).expect("put");
    host.wait_until("the first window", |s| s.stages[0].records_out == 1).await;
    host.stop().await;

    let got = results(&host);
    assert_eq!(got.get(&("2026-11-26T14:00:00.000Z".to_owned(), "C1".into())), Some(&685), "{got:?}");
    let letters = lines(&host.path("data/dead-letter/billing.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).expect("JSON");
    assert_eq!(letter["error_code"], "processing-failed");
    assert!(letter["reason"].as_str().is_some_and(|r| r.contains("amount_cents")), "{letter}");
    assert_eq!(host.host.status().stages[0].failures, 0, "a bad row is no failure of the plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_a_window_counts_every_record_once() {
    let host = TestHost::start(MANIFEST).await.expect("start");
    let minute = 60_000;
    host.host
        .put("rows", vec![row("C1", 100, T14 + minute), row("C2", 5, T14 + minute)], Producer::Native)
        .expect("put");
    host.wait_until("the first records", |s| s.stages[0].records_in == 2).await;
    let host = host.restart(MANIFEST).await.expect("restart");
    host.host
        .put("rows", vec![row("C1", 20, T14 + 3 * minute), row("C1", 3, T14 + 25 * minute)], Producer::Native)
        .expect("put");
    host.wait_until("the window after the restart", |s| s.stages[0].records_out == 2).await;
    let got = results(&host);
    let first = "2026-11-26T14:00:00.000Z".to_owned();
    assert_eq!(got.get(&(first.clone(), "C1".into())), Some(&120), "{got:?}");
    assert_eq!(got.get(&(first, "C2".into())), Some(&5), "{got:?}");
}

const TRAFFIC_MANIFEST: &str = r#"
[pipeline]
name = "traffic-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "rows"

[streams.rows]
[streams.traffic]

[reference.station-minimums]
lake = "reference"
object = "station_minimums.csv"
key = ["station_id", "weekday", "slot"]
refresh = "100ms"

[stages.traffic]
plugin = "{root}/plugins/traffic-monitor-count"
input = "rows"
output = "traffic"
batch-wait = "1ms"
window = { size = "30m" }
group-by = "station_id"
expected-keys = { reference = "station-minimums", column = "station_id" }
config = { minimums = "station-minimums" }
"#;

/// A toll-etl row at a station, keyed by its customer as toll-etl keys them.
fn passage(station: &str, at_ms: i64) -> NewRecord {
    NewRecord {
        source: None,
        key: "C000123".to_owned(),
        event_time_ms: Some(at_ms),
        data: Bytes::from(format!(r#"{{"customer_id":"C000123","station_id":{station},"vehicle_class":2}}"#)),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

/// A station's result: vehicles, minimum, below the minimum.
type StationResult = (u64, Option<u64>, Option<bool>);

/// The traffic results so far: (window start, station) -> result.
fn traffic(host: &TestHost) -> BTreeMap<(String, String), StationResult> {
    let records = host.host.read("traffic", 0, 0, 1000).expect("read");
    let mut out = BTreeMap::new();
    for r in &records {
        let v: Value = serde_json::from_slice(&r.data).expect("JSON result");
        let key =
            (v["window_start"].as_str().unwrap_or("").to_owned(), v["station_id"].as_str().unwrap_or("").to_owned());
        let value = (v["vehicles"].as_u64().unwrap_or(0), v["minimum"].as_u64(), v["below_minimum"].as_bool());
        assert!(out.insert(key, value).is_none(), "a result came twice: {v}");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_windows_use_the_reference_minimums_of_the_moment_they_close() {
    let dir = tempfile::tempdir().expect("tempdir");
    let csv = dir.path().join("reference/station_minimums.csv");
    std::fs::create_dir_all(csv.parent().expect("folder")).expect("mkdir");
    // Thursday 2026-11-26: 14:00 is slot 28, 14:30 slot 29. Station 99 sees no vehicle.
    let first = "station_id,weekday,slot,minimum\n17,4,28,2\n42,4,28,2\n99,4,28,2\n17,4,29,2\n42,4,29,2\n99,4,29,2\n";
    std::fs::write(&csv, first).expect("write");
    let host = TestHost::start_in(dir, TRAFFIC_MANIFEST).await.expect("start");
    let minute = 60_000;
    let mut rows: Vec<NewRecord> = ["17", "17", "17", "42"].iter().map(|s| passage(s, T14 + 5 * minute)).collect();
    rows.push(NewRecord {
        source: None,
        data: Bytes::from_static(br#"{"vehicle_class":2}"#),
        ..passage("0", T14 + 6 * minute)
    });
    rows.push(passage("17", T14 + 31 * minute)); // closes 14:00-14:30
    host.host.put("rows", rows, Producer::Native).expect("put");
    host.wait_until("the 14:00 window", |s| s.stages[0].records_out == 3).await;
    let t14 = "2026-11-26T14:00:00.000Z".to_owned();
    let got = traffic(&host);
    assert_eq!(got[&(t14.clone(), "17".into())], (3, Some(2), Some(false)));
    assert_eq!(got[&(t14.clone(), "42".into())], (1, Some(2), Some(true)));
    assert_eq!(got[&(t14, "99".into())], (0, Some(2), Some(true)), "the silent station has a result");
    let letters = lines(&host.path("data/dead-letter/traffic.jsonl"));
    assert_eq!(letters.len(), 1, "the row without a station is set aside");
    assert!(letters[0].contains("group-by `station_id`: the payload has no such field"), "{}", letters[0]);

    // New minimums for 14:30, and a new station 55, while the pipeline runs.
    let second = "station_id,weekday,slot,minimum\n17,4,29,10\n42,4,29,1\n99,4,29,0\n55,4,29,3\n";
    std::fs::write(host.path("reference/station_minimums.csv"), second).expect("rewrite");
    host.wait_until("the reload", |s| s.references[0].generation == 2).await;
    assert_eq!(host.host.status().references[0].rows, 4);
    host.host
        .put(
            "rows",
            vec![passage("42", T14 + 35 * minute), passage("42", T14 + 36 * minute), passage("17", T14 + 61 * minute)],
            Producer::Native,
        )
        .expect("put");
    host.wait_until("the 14:30 window", |s| s.stages[0].records_out == 7).await;
    let t1430 = "2026-11-26T14:30:00.000Z".to_owned();
    let got = traffic(&host);
    assert_eq!(got[&(t1430.clone(), "17".into())], (1, Some(10), Some(true)));
    assert_eq!(got[&(t1430.clone(), "42".into())], (2, Some(1), Some(false)));
    assert_eq!(got[&(t1430.clone(), "99".into())], (0, Some(0), Some(false)));
    assert_eq!(got[&(t1430, "55".into())], (0, Some(3), Some(true)), "a station added by the reload is expected");
}
