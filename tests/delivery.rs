//! Delivery streams (Firehose) end to end: records put through the Firehose
//! protocol are buffered durably, transformed, and delivered as objects in the
//! lake under time-partitioned keys; failed records land under the error
//! prefix with their reason; size, age and shutdown each trigger a delivery.

use std::io::Read as _;
use std::path::PathBuf;

use base64::Engine as _;
use serde_json::{Value, json};
use weir_tests::{TestHost, files};

const GOOD: [&str; 3] = [
    "T0017-000001,2026-11-26T14:03:12.345Z,17,3,TAG0012345,C000123,2,275",
    "T0017-000002,2026-11-26T14:03:13Z,17,4,TAG0012346,C000124,1,150",
    "T0042-000003,2026-11-26T14:05:00.5Z,42,1,TAG0000007,C000123,3,410",
];

async fn firehose(host: &TestHost, operation: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("{}/", host.url))
        .header("x-amz-target", format!("Firehose_20150804.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status();
    let value: Value = response.json().await.expect("json");
    assert!(status.is_success(), "{operation}: {value}");
    value
}

/// One line put into a delivery stream through the native API.
async fn native_put(host: &TestHost, delivery: &str, line: &str) {
    let native = reqwest::Client::new()
        .post(format!("{}/v1/delivery/{delivery}/records", host.url))
        .header("content-type", "text/plain")
        .body(line.to_owned())
        .send()
        .await
        .expect("native put");
    assert!(native.status().is_success(), "{}", native.status());
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn firehose_puts_are_transformed_into_lake_objects_and_failures_keep_their_reason() {
    let manifest = r#"
[pipeline]
name = "lake-test"
data-dir = "data"

[delivery.toll-rows]
transform = "{root}/plugins/toll-etl"
config = { currency = "EUR" }
buffer-interval = "15m"
lake = "lake"
prefix = "rows/"
backup-prefix = "raw/"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let list = firehose(&host, "ListDeliveryStreams", json!({})).await;
    assert_eq!(list["DeliveryStreamNames"], json!(["toll-rows"]));
    let described = firehose(&host, "DescribeDeliveryStream", json!({"DeliveryStreamName": "toll-rows"})).await;
    assert_eq!(described["DeliveryStreamDescription"]["DeliveryStreamStatus"], "ACTIVE");

    let mut records: Vec<Value> = GOOD.iter().map(|l| json!({"Data": b64(l)})).collect();
    records.insert(1, json!({"Data": b64("not,a,toll,line")}));
    let put = firehose(&host, "PutRecordBatch", json!({"DeliveryStreamName": "toll-rows", "Records": records})).await;
    assert_eq!(put["FailedPutCount"], 0, "{put}");
    assert_eq!(put["RequestResponses"].as_array().map(Vec::len), Some(4));
    let single =
        firehose(&host, "PutRecord", json!({"DeliveryStreamName": "toll-rows", "Record": {"Data": b64(GOOD[0])}}))
            .await;
    assert!(single["RecordId"].as_str().is_some_and(|id| id.starts_with("toll-rows:")), "{single}");
    // The native API feeds delivery streams too.
    native_put(&host, "toll-rows", GOOD[1]).await;
    let unknown = reqwest::Client::new()
        .post(format!("{}/v1/delivery/nope/records", host.url))
        .json(&json!({"data": "x"}))
        .send()
        .await
        .expect("native put");
    assert_eq!(unknown.status(), reqwest::StatusCode::NOT_FOUND);

    // The interval is 15 minutes and the size far off: the shutdown delivers what is buffered.
    host.stop().await;
    let lake = host.path("lake");
    let all = files(&lake);
    let raw: Vec<&PathBuf> = all.iter().filter(|p| p.starts_with(lake.join("raw"))).collect();
    assert_eq!(raw.len(), 1, "{all:?}");
    let backup = std::fs::read_to_string(raw[0]).expect("raw backup");
    assert_eq!(backup.lines().nth(1), Some("not,a,toll,line"), "the untransformed records, failed ones included");
    assert_eq!(backup.lines().count(), 6);
    let rows: Vec<&PathBuf> = all.iter().filter(|p| p.starts_with(lake.join("rows"))).collect();
    let errors: Vec<&PathBuf> = all.iter().filter(|p| p.starts_with(lake.join("errors"))).collect();
    assert_eq!((rows.len(), errors.len()), (1, 1), "{all:?}");
    let key = rows[0].strip_prefix(&lake).expect("in the lake").display().to_string();
    let parts: Vec<&str> = key.split('/').collect();
    assert_eq!(parts.len(), 6, "rows/YYYY/MM/DD/HH/<name>-<first>-<last>: {key}");
    assert!(parts[5].starts_with("toll-rows-000000-00000000000000000000-00000000000000000005"), "{key}");
    let text = std::fs::read_to_string(rows[0]).expect("read rows");
    let ids: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("row")["transaction_id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(ids, vec!["T0017-000001", "T0017-000002", "T0042-000003", "T0017-000001", "T0017-000002"]);
    assert!(text.contains("\"currency\":\"EUR\""), "the transform's config applies");
    let failure: Value =
        serde_json::from_str(std::fs::read_to_string(errors[0]).expect("errors").trim()).expect("json");
    assert_eq!(failure["errorCode"], "Transform.ProcessingFailed");
    assert_eq!(failure["rawData"], b64("not,a,toll,line"));
    assert!(failure["errorMessage"].as_str().unwrap_or("").contains("expected 8 comma-separated fields"), "{failure}");
    assert!(failure["arrivalTimestamp"].as_i64().is_some() && failure["attemptEndingTimestamp"].as_i64().is_some());
    let status = host.host.status();
    let d = &status.deliveries[0];
    assert_eq!((d.records_in, d.records_delivered, d.records_failed, d.objects), (6, 5, 1, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_age_each_trigger_a_gzip_delivery_without_waiting_for_shutdown() {
    let manifest = r#"
[pipeline]
name = "gzip-test"
data-dir = "data"

[delivery.by-size]
buffer-size = "1KiB"
buffer-interval = "15m"
lake = "lake"
prefix = "size/"
compression = "gzip"

[delivery.by-age]
buffer-interval = "200ms"
lake = "lake"
prefix = "age/y=!{timestamp:yyyy}/"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let lines: Vec<String> = (0..20).map(|i| format!("{i:03}-{}", "x".repeat(96))).collect();
    let records: Vec<Value> = lines.iter().map(|l| json!({"Data": b64(l)})).collect();
    firehose(&host, "PutRecordBatch", json!({"DeliveryStreamName": "by-size", "Records": records})).await;
    firehose(&host, "PutRecord", json!({"DeliveryStreamName": "by-age", "Record": {"Data": b64("young")}})).await;
    host.wait_until("a size-triggered and an age-triggered delivery", |s| s.deliveries.iter().all(|d| d.objects >= 1))
        .await;
    host.stop().await;
    let lake = host.path("lake");
    let mut delivered = Vec::new();
    for file in files(&lake.join("size")) {
        assert!(file.extension().is_some_and(|e| e == "gz"), "{file:?}");
        let mut text = String::new();
        flate2::read::GzDecoder::new(std::fs::File::open(&file).expect("open"))
            .read_to_string(&mut text)
            .expect("gunzip");
        delivered.extend(text.lines().map(str::to_owned));
    }
    assert_eq!(delivered, lines, "every record once, in order, across objects of at most ~1KiB");
    assert!(files(&lake.join("size")).len() >= 2, "1 KiB objects");
    let aged = files(&lake.join("age"));
    assert_eq!(aged.len(), 1);
    let dir =
        aged[0].parent().and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    assert!(dir.starts_with("y=20") && dir.len() == 6, "the prefix expression was expanded: {dir}");
    assert_eq!(std::fs::read_to_string(&aged[0]).expect("read"), "young\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_stream_can_read_a_sharded_weir_stream_instead_of_direct_puts() {
    let manifest = r#"
[pipeline]
name = "stream-source"
data-dir = "data"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]
shards = 3

[delivery.from-stream]
stream = "toll-lines"
transform = "{root}/plugins/toll-etl"
buffer-interval = "15m"
lake = "lake"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let records: Vec<Value> = (0..60)
        .map(|i| {
            let line = format!("T{i:04}-000001,2026-11-26T14:03:12Z,17,3,TAG{i:04},C{:04},2,100", i % 7);
            json!({"partition_key": format!("C{:04}", i % 7), "data": line})
        })
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/streams/toll-lines/records", host.url))
        .json(&json!({"records": records}))
        .send()
        .await
        .expect("put");
    assert!(response.status().is_success());
    let refused = reqwest::Client::new()
        .post(format!("{}/", host.url))
        .header("x-amz-target", "Firehose_20150804.PutRecord")
        .header("content-type", "application/x-amz-json-1.1")
        .body(json!({"DeliveryStreamName": "from-stream", "Record": {"Data": b64("x")}}).to_string())
        .send()
        .await
        .expect("put");
    assert_eq!(refused.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(refused.text().await.unwrap_or_default().contains("reads stream `toll-lines`"));
    host.stop().await;
    let objects = files(&host.path("lake"));
    assert!(objects.len() >= 2, "one object per shard that had records: {objects:?}");
    let mut ids: Vec<String> = objects
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| serde_json::from_str::<Value>(&l).expect("row")["transaction_id"].as_str().unwrap_or("").to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..60).map(|i| format!("T{i:04}-000001")).collect();
    expected.sort();
    assert_eq!(ids, expected, "every record of every shard delivered once");
}

/// A delivery stream that declares its records' ids buffers each once, whichever
/// way it is put again: a whole batch retried, a single put, the native API. The
/// repeat is answered with the first one's record id, as if just stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_again_into_a_delivery_with_ids_are_delivered_once() {
    let manifest = r#"
[pipeline]
name = "dedup-test"
data-dir = "data"

[delivery.tolls]
buffer-interval = "15m"
lake = "lake"
prefix = "raw/"
deduplicate = { id-pattern = "^([^,]+)," }
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let batch = || json!({"DeliveryStreamName": "tolls", "Records": GOOD.iter().map(|l| json!({"Data": b64(l)})).collect::<Vec<_>>()});
    let first = firehose(&host, "PutRecordBatch", batch()).await;
    let again = firehose(&host, "PutRecordBatch", batch()).await;
    assert_eq!(again["FailedPutCount"], 0, "{again}");
    assert_eq!(again["RequestResponses"], first["RequestResponses"], "a repeat is answered as the first put was");
    firehose(&host, "PutRecord", json!({"DeliveryStreamName": "tolls", "Record": {"Data": b64(GOOD[0])}})).await;
    native_put(&host, "tolls", GOOD[1]).await;
    host.wait_until("every repeat counted", |s| s.deliveries[0].records_duplicate == 5).await;
    host.stop().await; // the drain delivers what is buffered
    let mut delivered: Vec<String> =
        files(&host.path("lake").join("raw")).iter().flat_map(|f| weir_tests::lines(f)).collect();
    delivered.sort();
    assert_eq!(delivered, GOOD.map(str::to_owned).to_vec(), "each line once");
    let status = host.host.status();
    assert_eq!((status.deliveries[0].records_in, status.deliveries[0].records_duplicate), (3, 5), "{status:?}");
}
