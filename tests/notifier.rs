//! Notifier stages end to end: amounts put into a stream are added to
//! per-customer totals in a state table by the `echo-notifier` guest, which
//! sends one inbox message when a total crosses its threshold. The app side
//! reads and writes items and reads the inbox over HTTP; a message's key is
//! sent once, even when the crossing happens again after a restart.

use bytes::Bytes;
use serde_json::Value;
use weir_host::pipeline::Producer;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, inbox_subjects};

const MANIFEST: &str = r#"
[pipeline]
name = "notify-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]

[tables.totals]
description = "each customer's running total"

[channels.inbox]
kind = "inbox"

[reference.recipients]
lake = "reference"
object = "recipients.csv"
key = "customer"

[stages.alerts]
plugin = "{root}/tests/guests/echo-notifier"
input = "amounts"
batch-wait = "1ms"
config = { threshold = 100, recipients = "recipients" }
"#;

fn amounts(pairs: &[(&str, i64)]) -> Vec<NewRecord> {
    pairs
        .iter()
        .map(|(customer, amount)| NewRecord {
            source: None,
            key: (*customer).to_owned(),
            event_time_ms: None,
            data: Bytes::from(amount.to_string()),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect()
}

async fn inbox(host: &TestHost, recipient: &str) -> Vec<Value> {
    let answer: Value = reqwest::get(format!("{}/v1/inbox/{recipient}", host.url))
        .await
        .expect("inbox request")
        .json()
        .await
        .expect("JSON");
    answer["messages"].as_array().cloned().unwrap_or_default()
}

async fn item(host: &TestHost, key: &str) -> (u16, String) {
    let response = reqwest::get(format!("{}/v1/tables/totals/items/{key}", host.url)).await.expect("get item");
    (response.status().as_u16(), response.text().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_crossing_sends_one_inbox_message_even_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("reference")).expect("mkdir");
    std::fs::write(dir.path().join("reference/recipients.csv"), "customer,recipient\n").expect("csv");
    let host = TestHost::start_in(dir, MANIFEST).await.expect("start");
    // The app follows C1's inbox live.
    let mut feed = reqwest::get(format!("{}/v1/inbox/C1/events", host.url)).await.expect("live feed");
    assert_eq!(feed.headers()["content-type"], "text/event-stream");
    host.host.put("amounts", amounts(&[("C1", 60), ("C2", 30), ("C1", 50)]), Producer::Native).expect("put");
    host.wait_until("the amounts", |s| s.stages[0].records_in == 3).await;
    let mut events = String::new();
    while !events.contains("\n\n") {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(10), feed.chunk()).await;
        let chunk = chunk.expect("an event within 10 s").expect("read").expect("the feed goes on");
        events.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(events.contains("event: message") && events.contains("C1 crossed 100"), "{events}");
    assert!(events.contains("id: 1\n"), "{events}");
    drop(feed);

    let messages = inbox(&host, "C1").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["subject"], "C1 crossed 100");
    assert_eq!(messages[0]["body"], "total is now 110");
    assert!(inbox(&host, "C2").await.is_empty());
    assert_eq!(item(&host, "C1").await, (200, "110".to_owned()));
    assert_eq!(item(&host, "C9").await.0, 404);

    // The app sets an item; the next amount crosses from there.
    let put = reqwest::Client::new()
        .put(format!("{}/v1/tables/totals/items/C2", host.url))
        .body("95")
        .send()
        .await
        .expect("put item");
    assert_eq!(put.status().as_u16(), 204);
    host.host.put("amounts", amounts(&[("C2", 10)]), Producer::Native).expect("put");
    host.wait_until("the C2 amount", |s| s.stages[0].records_in == 4).await;
    assert_eq!(inbox(&host, "C2").await.len(), 1);

    // After a restart, C1 falls below and crosses again: the same business event, not sent twice.
    let host = host.restart(MANIFEST).await.expect("restart");
    host.host.put("amounts", amounts(&[("C1", -20), ("C1", 20)]), Producer::Native).expect("put");
    host.wait_until("the amounts after the restart", |s| s.stages[0].records_in == 2).await;
    assert_eq!(item(&host, "C1").await, (200, "110".to_owned()));
    assert_eq!(inbox(&host, "C1").await.len(), 1, "the crossing was sent once");

    let unknown = reqwest::get(format!("{}/v1/tables/limits/items/C1", host.url)).await.expect("get");
    assert_eq!(unknown.status().as_u16(), 404);
    let answer: Value = unknown.json().await.expect("JSON");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("[tables.limits]")), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_record_is_dead_lettered_and_the_rest_of_its_batch_takes_effect_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("reference")).expect("mkdir");
    std::fs::write(dir.path().join("reference/recipients.csv"), "customer,recipient\n").expect("csv");
    let mut host =
        TestHost::start_in(dir, &MANIFEST.replace("batch-wait = \"1ms\"", "batch-wait = \"2s\"")).await.expect("start");
    let mut records = amounts(&[("C1", 60), ("C1", 0), ("C1", 50)]);
    records[1].data = Bytes::from_static(b"lots");
    host.host.put("amounts", records, Producer::Native).expect("put");
    host.wait_until("the bad record set aside", |s| s.stages[0].dead_lettered == 1).await;
    host.wait_until("the batch committed", |s| s.stages[0].records_in == 3).await;

    // The first try added 60 before the plugin refused "lots"; that try was undone.
    assert_eq!(item(&host, "C1").await, (200, "110".to_owned()));
    let messages = inbox(&host, "C1").await;
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0]["body"], "total is now 110");
    host.stop().await;
    let letters = weir_tests::lines(&host.path("data/dead-letter/alerts.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter: Value = serde_json::from_str(&letters[0]).expect("json");
    assert_eq!((letter["data"].as_str(), letter["error_code"].as_str()), (Some("lots"), Some("processing-failed")));
    assert!(letter["reason"].as_str().unwrap_or("").contains("amount"), "{letter}");
    assert_eq!(host.host.status().stages[0].failures, 0, "a bad record is no failure of the plugin");
}

const ALERTS_MANIFEST: &str = r#"
[pipeline]
name = "alerts-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "rows"

[streams.rows]
[streams.billing]
[streams.traffic]

[tables.month-totals]
[tables.thresholds]
[tables.traffic-alerts]

[channels.app]
kind = "inbox"

[channels.operators]
kind = "inbox"

[reference.station-minimums]
lake = "reference"
object = "station_minimums.csv"
key = ["station_id", "weekday", "slot"]

[stages.billing-sum]
plugin = "{root}/plugins/toll-billing-sum"
input = "rows"
output = "billing"
batch-wait = "1ms"
window = { size = "10m" }

[stages.billing-alert]
plugin = "{root}/plugins/toll-billing-alert"
input = "billing"
batch-wait = "1ms"
config = { default-threshold-cents = 1000 }

[stages.traffic-count]
plugin = "{root}/plugins/traffic-monitor-count"
input = "rows"
output = "traffic"
batch-wait = "1ms"
window = { size = "30m" }
group-by = "station_id"
expected-keys = { reference = "station-minimums", column = "station_id" }
config = { minimums = "station-minimums" }

[stages.traffic-alert]
plugin = "{root}/plugins/traffic-monitor-alert"
input = "traffic"
batch-wait = "1ms"
config = { channels = ["operators"] }
"#;

/// 2026-11-26T14:00:00Z, a Thursday: slot 28.
const T14: i64 = 1_795_701_600_000;

fn toll(customer: &str, station: u32, cents: u64, minute: i64) -> NewRecord {
    NewRecord {
        source: None,
        key: customer.to_owned(),
        event_time_ms: Some(T14 + minute * 60_000),
        data: Bytes::from(format!(
            r#"{{"customer_id":"{customer}","station_id":{station},"vehicle_class":2,"amount_cents":{cents}}}"#
        )),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_and_traffic_alerts_reach_their_inboxes() {
    billing_and_traffic_alerts_with(ALERTS_MANIFEST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_traffic_alert_runs_in_the_pipeline_too() {
    let python = ALERTS_MANIFEST.replace("plugins/traffic-monitor-alert\"", "plugins/traffic-monitor-alert-py\"");
    assert_ne!(python, ALERTS_MANIFEST);
    billing_and_traffic_alerts_with(&python).await;
}

async fn billing_and_traffic_alerts_with(manifest: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("reference")).expect("mkdir");
    let minimums = "station_id,weekday,slot,minimum\n17,4,28,5\n42,4,28,2\n17,4,29,0\n42,4,29,0\n";
    std::fs::write(dir.path().join("reference/station_minimums.csv"), minimums).expect("csv");
    let host = TestHost::start_in(dir, manifest).await.expect("start");
    // C1 passes $10.00 in the 14:00 window, C2 does not; station 17 sees 3 vehicles, 42 none.
    let rows = vec![toll("C1", 17, 600, 1), toll("C2", 17, 300, 2), toll("C1", 17, 500, 5), toll("C2", 17, 100, 41)];
    host.host.put("rows", rows, Producer::Native).expect("put");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (app, operators) =
            (inbox_subjects(&host, "app", "C1").await, inbox_subjects(&host, "operators", "operators").await);
        if app.len() == 1 && operators.len() == 2 {
            assert_eq!(app, ["Your tolls for 2026-11 passed $10.00"]);
            assert_eq!(
                operators,
                [
                    "Station 17 low 14:00-14:30: 3 vehicles, minimum 5",
                    "Station 42 silent 14:00-14:30: no vehicles, minimum 2",
                ]
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "alerts so far: {app:?} {operators:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(inbox_subjects(&host, "app", "C2").await.is_empty());
}

/// A webhook receiver on loopback that refuses the first `refuse` requests (503).
async fn receiver(refuse: usize) -> (String, std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>) {
    use axum::http::HeaderMap;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>> = Default::default();
    let log = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: String| {
            let log = log.clone();
            async move {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                let mut seen = log.lock().expect("log");
                seen.push((header("x-weir-delivery"), header("x-weir-signature"), body));
                if seen.len() <= refuse {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_are_signed_retried_with_one_delivery_id_and_kept_when_they_fail_for_good() {
    let (url, seen) = receiver(2).await;
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let manifest = format!(
        r#"
[pipeline]
name = "webhook-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "traffic"

[streams.traffic]

[tables.traffic-alerts]

[channels.ops-hook]
kind = "webhook"
url = "{url}"
secret = "s3cret"

[channels.dead-hook]
kind = "webhook"
url = "http://127.0.0.1:{closed}/hook"
secret = "s3cret"
retry-duration = "1s"

[stages.traffic-alert]
plugin = "{{root}}/plugins/traffic-monitor-alert"
input = "traffic"
batch-wait = "1ms"
config = {{ channels = ["ops-hook", "dead-hook"] }}
"#
    );
    let host = TestHost::start(&manifest).await.expect("start");
    let low = r#"{"station_id":"17","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z","vehicles":3,"minimum":40}"#;
    let record = NewRecord {
        source: None,
        key: "17".into(),
        event_time_ms: None,
        data: Bytes::from(low),
        explicit_hash_key: None,
        attributes: Vec::new(),
    };
    host.host.put("traffic", vec![record], Producer::Native).expect("put");

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let failed = loop {
        let answer: Value = reqwest::get(format!("{}/v1/channels/dead-hook/failed", host.url))
            .await
            .expect("failed deliveries")
            .json()
            .await
            .expect("JSON");
        let failed = answer["failed"].as_array().cloned().unwrap_or_default();
        if seen.lock().expect("log").len() == 3 && !failed.is_empty() {
            break failed;
        }
        assert!(std::time::Instant::now() < deadline, "deliveries so far: {:?}, failed: {failed:?}", seen.lock());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let seen = seen.lock().expect("log").clone();
    let (id, signature, body) = &seen[0];
    assert!(!id.is_empty());
    assert!(seen.iter().all(|(i, _, b)| i == id && b == body), "one delivery id and body across retries");
    let expected = weir_host::sigv4::hex(&weir_host::sigv4::hmac(b"s3cret", body.as_bytes()));
    assert_eq!(signature, &format!("sha256={expected}"));
    let delivered: Value = serde_json::from_str(body).expect("JSON body");
    assert_eq!(delivered["subject"], "Station 17 low 14:00-14:30: 3 vehicles, minimum 40");
    assert_eq!(delivered["recipient"], "operators");
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["attempts"].as_u64().unwrap_or(0) >= 1, "{failed:?}");
    assert!(failed[0]["last_error"].as_str().is_some_and(|e| e.contains(&closed.to_string())), "{failed:?}");
}
