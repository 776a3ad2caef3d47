//! Notifier stages end to end: amounts put into a stream are added to
//! per-customer totals in a state table by the `echo-notifier` guest, which
//! sends one inbox message when a total crosses its threshold. The app side
//! reads and writes items and reads the inbox over HTTP; a message's key is
//! sent once, even when the crossing happens again after a restart.

use bytes::Bytes;
use serde_json::Value;
use weir_host::stream::NewRecord;
use weir_tests::TestHost;

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
config = { threshold = 100 }
"#;

fn amounts(pairs: &[(&str, i64)]) -> Vec<NewRecord> {
    pairs
        .iter()
        .map(|(customer, amount)| NewRecord {
            key: (*customer).to_owned(),
            event_time_ms: None,
            data: Bytes::from(amount.to_string()),
            explicit_hash_key: None,
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
    host.host.put("amounts", amounts(&[("C1", 60), ("C2", 30), ("C1", 50)])).expect("put");
    host.wait_until("the amounts", |s| s.stages[0].records_in == 3).await;

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
    host.host.put("amounts", amounts(&[("C2", 10)])).expect("put");
    host.wait_until("the C2 amount", |s| s.stages[0].records_in == 4).await;
    assert_eq!(inbox(&host, "C2").await.len(), 1);

    // After a restart, C1 falls below and crosses again: the same business event, not sent twice.
    let host = host.restart(MANIFEST).await.expect("restart");
    host.host.put("amounts", amounts(&[("C1", -20), ("C1", 20)])).expect("put");
    host.wait_until("the amounts after the restart", |s| s.stages[0].records_in == 2).await;
    assert_eq!(item(&host, "C1").await, (200, "110".to_owned()));
    assert_eq!(inbox(&host, "C1").await.len(), 1, "the crossing was sent once");

    let unknown = reqwest::get(format!("{}/v1/tables/limits/items/C1", host.url)).await.expect("get");
    assert_eq!(unknown.status().as_u16(), 404);
    let answer: Value = unknown.json().await.expect("JSON");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("[tables.limits]")), "{answer}");
}
