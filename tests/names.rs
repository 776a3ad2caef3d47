//! Names that try to leave the data folder: every API that creates, reads or
//! deletes by name answers a traversal name with a 400 naming the field, and
//! nothing outside the data directory changes (a snapshot of the folder
//! around it, taken before and after, is compared).

use std::collections::BTreeMap;
use std::path::Path;

use reqwest::StatusCode;
use serde_json::{Value, json};
use weir_tests::TestHost;

const MANIFEST: &str = r#"
[pipeline]
name = "names-test"
data-dir = "data/inner"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]

[stages.etl]
plugin = "{root}/plugins/toll-etl"
input = "toll-lines"
output = "rows"

[sinks.rows]
kind = "file"
path = "rows.jsonl"

[delivery.toll-rows]
lake = "lake"
buffer-interval = "1s"

[tables.thresholds]

[channels.app]
kind = "inbox"
"#;

/// Names of every shape a traversal takes; each is refused wherever a name goes.
const HOSTILE: &[&str] = &[
    "..",
    ".",
    "../victim",
    "../../victim",
    "../../../victim",
    "../../escape-x",
    "a/b",
    "/tmp",
    "/",
    "a\\b",
    "a\0b",
    "victim\n",
    "\u{2024}\u{2024}",   // two one-dot leaders: look like ".."
    "\u{ff0e}\u{ff0e}/x", // fullwidth full stops
    "a\u{2215}b",         // division slash: looks like "/"
];

/// Every file and folder under `dir` but the data directory, with file contents.
fn snapshot(dir: &Path, data: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path == data {
                continue;
            }
            let key = path.strip_prefix(dir).unwrap_or(&path).display().to_string();
            if path.is_dir() {
                out.insert(key, None);
                todo.push(path);
            } else {
                out.insert(key, std::fs::read(&path).ok());
            }
        }
    }
    out
}

async fn kinesis(host: &TestHost, target: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/", host.url))
        .header("x-amz-target", target)
        .header("content-type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A name in a URL path: percent-encoded, so `/` and `..` reach the handler as text.
fn in_path(name: &str) -> String {
    name.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn no_api_call_reaches_outside_the_data_directory() {
    let host = TestHost::start(MANIFEST).await.expect("start");
    let data = host.path("data/inner");
    let victim = host.path("victim");
    std::fs::create_dir_all(victim.join("nested")).expect("victim");
    std::fs::write(victim.join("precious.txt"), "keep me").expect("victim file");
    std::fs::write(victim.join("nested/also.txt"), "me too").expect("victim file");
    std::fs::create_dir_all(host.path("data/escape-x")).expect("a folder a traversal would hit");
    let before = snapshot(host.dir.path(), &data);
    let client = reqwest::Client::new();

    for name in HOSTILE {
        // Kinesis: every operation that names a stream.
        let stream_ops = [
            ("CreateStream", json!({"StreamName": name, "ShardCount": 1})),
            ("DeleteStream", json!({"StreamName": name})),
            ("DescribeStream", json!({"StreamName": name})),
            ("DescribeStreamSummary", json!({"StreamName": name})),
            ("ListShards", json!({"StreamName": name})),
            ("PutRecord", json!({"StreamName": name, "Data": "eA==", "PartitionKey": "k"})),
            ("PutRecords", json!({"StreamName": name, "Records": [{"Data": "eA==", "PartitionKey": "k"}]})),
            (
                "GetShardIterator",
                json!({"StreamName": name, "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}),
            ),
            ("UpdateShardCount", json!({"StreamName": name, "TargetShardCount": 2, "ScalingType": "UNIFORM_SCALING"})),
            ("IncreaseStreamRetentionPeriod", json!({"StreamName": name, "RetentionPeriodHours": 48})),
            ("DecreaseStreamRetentionPeriod", json!({"StreamName": name, "RetentionPeriodHours": 24})),
        ];
        for (op, body) in stream_ops {
            let (status, answer) = kinesis(&host, &format!("Kinesis_20131202.{op}"), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{op} {name:?}: {answer}");
            assert_eq!(answer["__type"], "ValidationException", "{op} {name:?}: {answer}");
            assert!(answer["message"].as_str().is_some_and(|m| m.starts_with("StreamName ")), "{op}: {answer}");
        }
        let arn = format!("arn:aws:kinesis:us-east-1:000000000000:stream/{name}");
        let (status, answer) = kinesis(&host, "Kinesis_20131202.DeleteStream", json!({"StreamARN": arn})).await;
        assert_eq!((status, &answer["__type"]), (StatusCode::BAD_REQUEST, &json!("ValidationException")), "{answer}");
        let (status, answer) = kinesis(&host, "Kinesis_20131202.ListShards", json!({"NextToken": name})).await;
        assert_eq!((status, &answer["__type"]), (StatusCode::BAD_REQUEST, &json!("ValidationException")), "{answer}");

        // Firehose.
        for (op, body) in [
            ("PutRecord", json!({"DeliveryStreamName": name, "Record": {"Data": "eA=="}})),
            ("PutRecordBatch", json!({"DeliveryStreamName": name, "Records": [{"Data": "eA=="}]})),
            ("DescribeDeliveryStream", json!({"DeliveryStreamName": name})),
        ] {
            let (status, answer) = kinesis(&host, &format!("Firehose_20150804.{op}"), body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{op} {name:?}: {answer}");
            assert_eq!(answer["__type"], "ValidationException", "{op}: {answer}");
            assert!(answer["message"].as_str().is_some_and(|m| m.starts_with("DeliveryStreamName ")), "{answer}");
        }

        // The native API, where the name is a path segment. A segment of dots
        // alone, even percent-encoded, is a dot segment that URLs resolve away
        // (`/v1/inbox/%2E%2E/events` is `/v1/events`): it never reaches a handler as a name.
        if name.chars().all(|c| c == '.') {
            continue;
        }
        let segment = in_path(name);
        let native = [
            ("stream", client.post(format!("{}/v1/streams/{segment}/records", host.url)).json(&json!({"data": "x"}))),
            ("stream", client.get(format!("{}/v1/streams/{segment}/records", host.url))),
            (
                "delivery stream",
                client.post(format!("{}/v1/delivery/{segment}/records", host.url)).json(&json!({"data": "x"})),
            ),
            ("table", client.get(format!("{}/v1/tables/{segment}/items/k", host.url))),
            ("table", client.put(format!("{}/v1/tables/{segment}/items/k", host.url)).body("1")),
            ("table", client.delete(format!("{}/v1/tables/{segment}/items/k", host.url))),
            ("table", client.post(format!("{}/v1/tables/{segment}/items", host.url)).body(r#"{"items": {"k": "1"}}"#)),
            ("recipient", client.get(format!("{}/v1/inbox/{segment}", host.url))),
            ("recipient", client.get(format!("{}/v1/inbox/{segment}/events", host.url))),
            ("channel", client.get(format!("{}/v1/inbox/C1?channel={segment}", host.url))),
            ("channel", client.get(format!("{}/v1/channels/{segment}/failed", host.url))),
            ("stage", client.get(format!("{}/v1/stages/{segment}/plugin", host.url))),
            ("stage", client.put(format!("{}/v1/stages/{segment}/plugin", host.url)).body("not a component")),
            ("stage", client.post(format!("{}/v1/stages/{segment}/plugin/rollback", host.url))),
        ];
        for (field, request) in native {
            let response = request.send().await.expect("request");
            let status = response.status();
            let answer: Value = response.json().await.unwrap_or(Value::Null);
            // An empty segment ("/", ".", "..") may not route at all: then it is a 404, never a success.
            if status == StatusCode::NOT_FOUND && answer.is_null() {
                continue;
            }
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field} {name:?}: {answer}");
            assert_eq!(answer["error"]["code"], "ValidationException", "{field} {name:?}: {answer}");
            let message = answer["error"]["message"].as_str().unwrap_or("");
            assert!(message.starts_with(&format!("{field} ")), "{field} {name:?}: {message}");
        }
    }

    // Over-long names are a validation error too, not a storage failure.
    let long = "x".repeat(300);
    let (status, answer) =
        kinesis(&host, "Kinesis_20131202.CreateStream", json!({"StreamName": long, "ShardCount": 1})).await;
    assert_eq!((status, &answer["__type"]), (StatusCode::BAD_REQUEST, &json!("ValidationException")), "{answer}");
    assert!(answer["message"].as_str().is_some_and(|m| m.contains("1 to 128")), "{answer}");
    assert!(host.host.status().stages.iter().all(|s| s.last_error.is_none()), "no stage saw a storage failure");

    // A plain name still works, and deleting it removes only its own folder.
    let (status, answer) =
        kinesis(&host, "Kinesis_20131202.CreateStream", json!({"StreamName": "victim", "ShardCount": 1})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(data.join("streams/victim").is_dir());
    let (status, answer) = kinesis(&host, "Kinesis_20131202.DeleteStream", json!({"StreamName": "victim"})).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(!data.join("streams/victim").exists());

    assert_eq!(snapshot(host.dir.path(), &data), before, "something outside the data directory changed");
    assert_eq!(std::fs::read_to_string(victim.join("precious.txt")).ok().as_deref(), Some("keep me"));
}
