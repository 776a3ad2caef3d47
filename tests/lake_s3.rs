//! The lake on an S3-compatible store: a delivery stream writes its rows, raw
//! backup and errors as objects in a bucket of a real S3 server (moto, from
//! PyPI, on loopback) and loads the rows into the warehouse from there. When
//! the store is unreachable past the retry duration, the records are listed
//! under the error prefix once it is back; nothing is dropped, and a redrive
//! of the error area delivers them.

use base64::Engine as _;
use serde_json::Value;
use weir_tests::{MOTO, MotoServer, Proxy, TestHost, put_record_batch};

/// moto's S3, with the lake's bucket made (buckets are created with a plain PUT; moto takes any credentials).
async fn s3_server() -> MotoServer {
    let server = weir_tests::moto_server().await;
    let response = reqwest::Client::new().put(format!("{}/weir-lake", server.url)).send().await.expect("create bucket");
    assert!(response.status().is_success(), "creating the bucket: {}", response.status());
    server
}

/// Every object of the bucket with its text, listed through the S3 API by
/// boto3 (which moto depends on, so it is installed with it).
async fn objects(port: u16) -> Vec<(String, String)> {
    const LIST: &str = r#"
import json, os, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                  aws_access_key_id="weir-test", aws_secret_access_key="weir-test-secret")
out = []
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="weir-lake"):
    for o in page.get("Contents", []):
        body = s3.get_object(Bucket="weir-lake", Key=o["Key"])["Body"].read()
        out.append([o["Key"], body.decode("utf-8", "replace")])
print(json.dumps(out))
"#;
    let python = tokio::task::spawn_blocking(|| weir_tests::python_packages("moto", &[MOTO])).await.expect("pip");
    let output = tokio::process::Command::new("python3")
        .args(["-c", LIST])
        .env("PYTHONPATH", &python)
        .env("ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .await
        .expect("python3");
    assert!(output.status.success(), "listing the bucket failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut out: Vec<(String, String)> = serde_json::from_slice(&output.stdout).expect("the listing as JSON");
    out.sort();
    out
}

fn line(i: usize) -> String {
    let class = if i == 7 { 9 } else { 1 + i % 6 };
    format!("T0005-{i:06},2026-11-26T10:00:{:02}Z,5,1,TAG{i:07},C{:06},{class},{}", i % 60, i % 9, 100 + i)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_write_to_an_s3_bucket_and_an_outage_ends_under_the_error_prefix() {
    let server = s3_server().await;
    let proxy = Proxy::start(format!("127.0.0.1:{}", server.port).parse().expect("addr")).await;
    let manifest = format!(
        r#"
[pipeline]
name = "s3-lake"
data-dir = "data"

[delivery.tolls]
transform = "{{root}}/plugins/toll-etl"
buffer-interval = "200ms"
lake = "s3://weir-lake/tolls"
s3 = {{ endpoint = "http://127.0.0.1:{port}", access-key-id = "weir-test", secret-access-key = "weir-test-secret" }}
prefix = "rows/"
backup-prefix = "raw/"
error-prefix = "errors/"
retry-duration = "2s"

[delivery.tolls.warehouse]
database = "warehouse.db"
table = "toll_transactions"
columns = ["transaction_id", "amount_cents"]
"#,
        port = proxy.port
    );
    let mut host = TestHost::start(&manifest).await.expect("start");
    let first: Vec<String> = (0..20).map(line).collect();
    put_record_batch(&host, "tolls", &first).await;
    host.wait_until("the first delivery", |s| s.deliveries[0].rows_loaded == 19).await;

    let stored = objects(server.port).await;
    let keys: Vec<&str> = stored.iter().map(|(k, _)| k.as_str()).collect();
    let rows: Vec<&(String, String)> = stored.iter().filter(|(k, _)| k.starts_with("tolls/rows/2")).collect();
    assert_eq!(rows.len(), 1, "{keys:?}");
    assert_eq!(rows[0].1.lines().count(), 19, "one row per well-formed line");
    assert!(rows[0].0.ends_with("tolls-000000-00000000000000000000-00000000000000000019"), "{keys:?}");
    let raw: Vec<&(String, String)> = stored.iter().filter(|(k, _)| k.starts_with("tolls/raw/")).collect();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0].1.lines().collect::<Vec<_>>(), first, "the raw lines are backed up");
    assert!(keys.iter().any(|k| k.starts_with("tolls/errors/") && k.ends_with(".errors")), "{keys:?}");

    // The store goes away for longer than the 2 s retry duration.
    proxy.cut();
    let second: Vec<String> = (20..30).map(line).collect();
    put_record_batch(&host, "tolls", &second).await;
    // Past the 2 s retry duration the records go under the error prefix, which waits for the store too.
    let listing = |s: &weir_host::pipeline::PipelineStatus| {
        s.deliveries[0].last_error.as_deref().is_some_and(|e| e.contains("writing `errors/"))
    };
    host.wait_until("the write given up and its error listing waiting", listing).await;
    assert_eq!(host.host.status().deliveries[0].records_failed, 1, "only the malformed line so far");
    proxy.restore();
    host.wait_until("the failure listed", |s| s.deliveries[0].records_failed == 1 + 10 + 10).await;
    host.stop().await;

    let stored = objects(server.port).await;
    let listed: Vec<Value> = stored
        .iter()
        .filter(|(k, _)| k.starts_with("tolls/errors/") && k.contains("-00000000000000000020-"))
        .flat_map(|(_, text)| text.lines().map(|l| serde_json::from_str::<Value>(l).expect("JSON")).collect::<Vec<_>>())
        .collect();
    let mut codes: Vec<&str> = listed.iter().filter_map(|e| e["errorCode"].as_str()).collect();
    codes.sort();
    codes.dedup();
    assert_eq!(codes, vec!["Lake.BackupFailed", "Lake.WriteFailed"], "{listed:?}");
    let mut failed: Vec<String> = listed
        .iter()
        .filter(|e| e["errorCode"] == "Lake.WriteFailed")
        .map(|e| {
            assert!(e["attemptsMade"].as_u64().is_some_and(|n| n >= 2), "{e}");
            let data = base64::engine::general_purpose::STANDARD.decode(e["rawData"].as_str().unwrap_or(""));
            String::from_utf8(data.expect("base64")).expect("utf-8")
        })
        .collect();
    failed.sort();
    assert_eq!(failed, second, "every record of the failed delivery is listed with its data");

    // The store is back: a redrive of the error area (listed in the bucket) delivers the
    // records the outage kept out, backs them up, and keeps the malformed line listed.
    let host = host.restart(&manifest).await.expect("restart");
    let answer: Value = reqwest::Client::new()
        .post(format!("{}/v1/delivery/tolls/dead-letters/redrive", host.url))
        .send()
        .await
        .expect("redrive")
        .json()
        .await
        .expect("a JSON answer");
    assert_eq!((answer["redriven"].as_u64(), answer["failed_again"].as_u64()), (Some(21), Some(1)), "{answer}");
    host.wait_until("the redriven rows loaded", |s| s.deliveries[0].rows_loaded == 10).await;
    let stored = objects(server.port).await;
    let backup: Vec<&(String, String)> =
        stored.iter().filter(|(k, _)| k.starts_with("tolls/raw/") && k.contains("-redrive-")).collect();
    assert_eq!(backup.len(), 1, "one backup object of the redriven records");
    let mut backed_up: Vec<&str> = backup[0].1.lines().collect();
    backed_up.sort();
    assert_eq!(backed_up, second.iter().map(String::as_str).collect::<Vec<_>>());
    let pending: Value = reqwest::get(format!("{}/v1/delivery/tolls/dead-letters", host.url))
        .await
        .expect("list")
        .json()
        .await
        .expect("JSON");
    assert_eq!(pending["pending"], 1, "only the malformed line, with its new reason: {pending}");
}
