//! The whole ABC Tolls manifest (`manifests/abc-tolls.toml` and its fragments,
//! as shipped, pointed at a temporary folder): toll lines put into the
//! transaction stream reach the warehouse, sum up to a billing message for the
//! customer past a threshold, and count up to traffic alerts for every station
//! below its reference minimum, the silent ones included.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, root};

/// The shipped manifest and fragments in `dir`, writing under `dir`, delivering every second.
fn shipped(dir: &std::path::Path) -> String {
    let out = dir.join("out").display().to_string();
    let plugins = root().join("plugins").display().to_string();
    let fix = |text: String| {
        text.replace("../../out/abc-tolls", &out)
            .replace("../out/abc-tolls", &out)
            .replace("../../plugins", &plugins)
            .replace("buffer-interval = \"60s\"", "buffer-interval = \"1s\"")
    };
    std::fs::create_dir_all(dir.join("abc-tolls")).expect("mkdir");
    for fragment in ["ingest.toml", "billing.toml", "traffic.toml"] {
        let text = std::fs::read_to_string(root().join("manifests/abc-tolls").join(fragment)).expect("fragment");
        std::fs::write(dir.join("abc-tolls").join(fragment), fix(text)).expect("write fragment");
    }
    std::fs::copy(root().join("manifests/abc-tolls/station_minimums.csv"), dir.join("abc-tolls/station_minimums.csv"))
        .expect("minimums");
    let manifest = std::fs::read_to_string(root().join("manifests/abc-tolls.toml")).expect("manifest");
    fix(manifest).replace("listen = \"127.0.0.1:7070\"", "listen = \"127.0.0.1:0\"")
}

/// A toll line at 2026-11-26 (a Thursday) `hh:mm`.
fn line(n: u32, time: &str, station: u32, customer: &str, cents: u32) -> NewRecord {
    NewRecord {
        key: format!("station-{station}"),
        event_time_ms: None,
        data: Bytes::from(format!(
            "T{station:04}-{n:06},2026-11-26T{time}:00Z,{station},1,TAG{n:07},{customer},2,{cents}"
        )),
        explicit_hash_key: None,
    }
}

async fn subjects(host: &TestHost, channel: &str, recipient: &str) -> Vec<String> {
    let answer: Value = reqwest::get(format!("{}/v1/inbox/{recipient}?channel={channel}", host.url))
        .await
        .expect("inbox")
        .json()
        .await
        .expect("JSON");
    let messages = answer["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().map(|m| m["subject"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_showcase_fills_the_warehouse_and_raises_billing_and_traffic_alerts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = shipped(dir.path());
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    // C000123 has set a $5.00 threshold in the app.
    host.host.state.put("thresholds", "C000123", b"500").expect("threshold");
    let mut lines = vec![
        line(1, "14:01", 3, "C000123", 275),
        line(2, "14:02", 3, "C000456", 150),
        line(3, "14:04", 3, "C000123", 275),
        line(4, "14:05", 7, "C000456", 410),
    ];
    lines.push(NewRecord { data: Bytes::from_static(b"T0003-000005,not a line"), ..line(5, "14:06", 3, "C0", 1) });
    // 14:45 moves the watermark past 14:31: the 14:00-14:10 and 14:00-14:30 windows close.
    lines.push(line(6, "14:45", 3, "C000789", 100));
    host.host.put("toll-lines", lines).expect("put");

    let deadline = Instant::now() + Duration::from_secs(30);
    let (billing, traffic) = loop {
        let billing = subjects(&host, "app", "C000123").await;
        let traffic = subjects(&host, "operators", "operators").await;
        if !billing.is_empty() && traffic.len() == 12 {
            break (billing, traffic);
        }
        assert!(Instant::now() < deadline, "so far: billing {billing:?}, traffic {traffic:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(billing, ["Your tolls for 2026-11 passed $5.00"]);
    assert!(subjects(&host, "app", "C000456").await.is_empty(), "C000456 is under the default $100.00");
    assert!(traffic.iter().any(|s| s.starts_with("Station 3 low 14:00-14:30: 3 vehicles")), "{traffic:?}");
    assert!(traffic.iter().any(|s| s.starts_with("Station 12 silent 14:00-14:30")), "{traffic:?}");

    // Requirement 1 on the same stream: well-formed lines in the warehouse, the malformed one aside.
    let status = loop {
        let status = host.host.status();
        if status.deliveries[0].rows_loaded == 5 {
            break status;
        }
        assert!(Instant::now() < deadline, "warehouse: {:?}", status.deliveries[0]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status.stages.iter().find(|s| s.name == "etl").map(|s| s.dead_lettered), Some(1));
}
