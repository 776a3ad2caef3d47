//! Crash equivalence of an aggregator stage, with the real binary: a day of
//! toll rows is summed per customer over 10-minute windows by
//! `toll-billing-sum` while `weir run` is killed with SIGKILL five times; after
//! the last restart, the window results are exactly those of the day computed
//! directly: no record lost, none counted twice, and a result emitted again
//! after a crash is identical to the first.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{free_port, next_random, start, wait_ready};
use serde_json::{Value, json};

/// 2026-11-25T00:00:00Z: a day in the past (times far ahead of the clock are refused).
const DAY: i64 = 1_795_564_800_000;
const ROWS: i64 = 20_000;
/// Event time between rows: the rows span 23.9 hours.
const STEP: i64 = 4_300;
const WINDOW: i64 = 600_000;

fn manifest(root: &Path) -> String {
    format!(
        r#"
[pipeline]
name = "window-crash"
data-dir = "data"

[sources.http]
kind = "http"
stream = "rows"

[streams.rows]
[streams.billing]

[stages.billing]
plugin = "{}/plugins/toll-billing-sum"
input = "rows"
output = "billing"
batch-size = 100
batch-wait = "1ms"
window = {{ size = "10m", out-of-orderness = "1m" }}
"#,
        root.display()
    )
}

/// Row `i`: a customer, an amount and an event time through the day (a little out of order).
fn row(i: i64) -> (String, u64, i64) {
    let jitter = if i % 7 == 3 { -20_000 } else { 0 };
    (format!("C{:02}", i % 50), 100 + (i % 400) as u64, DAY + i * STEP + jitter)
}

async fn stored(client: &reqwest::Client, port: u16, stream: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let url = format!("http://127.0.0.1:{port}/v1/streams/{stream}/records?from={}&limit=10000", out.len());
        let body: Value = client.get(url).send().await.expect("read").json().await.expect("json");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        out.extend(records);
    }
}

async fn put_from(client: &reqwest::Client, port: u16, from: i64, to: i64) {
    let mut i = from;
    while i < to {
        let end = (i + 50).min(to);
        let records: Vec<Value> = (i..end)
            .map(|i| {
                let (customer, cents, at) = row(i);
                json!({"partition_key": customer, "event_time": at,
                       "data": format!(r#"{{"customer_id":"{customer}","amount_cents":{cents}}}"#)})
            })
            .collect();
        let url = format!("http://127.0.0.1:{port}/v1/streams/rows/records");
        let Ok(response) = client.post(url).json(&json!({"records": records})).send().await else { return };
        if !response.status().is_success() {
            return;
        }
        i = end;
        // Paced, so the kills land while the day is being put and processed.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

#[test]
fn window_results_after_sigkills_equal_the_uninterrupted_day() {
    let _built = weir_artifacts::TOLL_BILLING_SUM;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pipeline.toml");
    std::fs::write(&path, manifest(&root)).expect("manifest");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let client = reqwest::Client::new();
    let mut rng = 0x5851_f42d_4c95_7f2du64;
    let mut killed_midway = 0;
    for _ in 0..5 {
        let port = free_port();
        let mut child = start(&path, port);
        runtime.block_on(async {
            wait_ready(&client, port).await;
            // Go on from what the stream holds: one producer, in order, so it is a prefix.
            let have = stored(&client, port, "rows").await.len() as i64;
            killed_midway += i32::from(have < ROWS);
            let kill_after = Duration::from_millis(100 + next_random(&mut rng) % 500);
            let _ = tokio::time::timeout(kill_after, put_from(&client, port, have, ROWS)).await;
        });
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    // The last run: the rest of the day, then a record an hour later closes every window.
    let port = free_port();
    let mut child = start(&path, port);
    let results = runtime.block_on(async {
        wait_ready(&client, port).await;
        let have = stored(&client, port, "rows").await.len() as i64;
        put_from(&client, port, have, ROWS).await;
        let late = json!({"records": [{"partition_key": "ZZZ", "event_time": DAY + 25 * 3_600_000, "data": "{\"customer_id\":\"ZZZ\",\"amount_cents\":1}"}]});
        client.post(format!("http://127.0.0.1:{port}/v1/streams/rows/records")).json(&late).send().await.expect("put");
        let last_window_end = DAY + (ROWS * STEP / WINDOW + 1) * WINDOW;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let results = stored(&client, port, "billing").await;
            let done = results.iter().any(|r| {
                let v: Value = serde_json::from_str(r["data"].as_str().unwrap_or("")).unwrap_or_default();
                v["window_end"].as_str().is_some_and(|e| e >= rfc3339(last_window_end).as_str())
            });
            if done {
                return results;
            }
            if Instant::now() > deadline {
                let status: Value = client
                    .get(format!("http://127.0.0.1:{port}/v1/pipeline"))
                    .send()
                    .await
                    .expect("status")
                    .json()
                    .await
                    .expect("json");
                panic!("the day's windows did not all close: {status:#}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(killed_midway >= 3, "the kills should land while the day is put ({killed_midway} did)");

    // Results by (window start, customer); a repeat must be identical.
    let mut got: BTreeMap<(String, String), String> = BTreeMap::new();
    for r in &results {
        let text = r["data"].as_str().unwrap_or("").to_owned();
        let v: Value = serde_json::from_str(&text).expect("JSON result");
        let key =
            (v["window_start"].as_str().unwrap_or("").to_owned(), v["customer_id"].as_str().unwrap_or("").to_owned());
        if let Some(first) = got.insert(key.clone(), text.clone()) {
            assert_eq!(first, text, "{key:?} was emitted twice with different results");
        }
    }
    let mut expected: BTreeMap<(String, String), (u64, u32)> = BTreeMap::new();
    for i in 0..ROWS {
        let (customer, cents, at) = row(i);
        let start = at - at.rem_euclid(WINDOW);
        let e = expected.entry((rfc3339(start), customer)).or_default();
        e.0 += cents;
        e.1 += 1;
    }
    let got_totals: BTreeMap<(String, String), (u64, u32)> = got
        .iter()
        .map(|(k, text)| {
            let v: Value = serde_json::from_str(text).expect("JSON");
            (k.clone(), (v["total_cents"].as_u64().unwrap_or(0), v["transactions"].as_u64().unwrap_or(0) as u32))
        })
        .collect();
    assert_eq!(got_totals.len(), expected.len(), "one result per (window, customer) of the day");
    assert_eq!(got_totals, expected, "the results equal the uninterrupted day's");
}

/// RFC 3339 with milliseconds, as the plugin writes it.
fn rfc3339(ms: i64) -> String {
    weir_host::time::format_ms(ms)
}
