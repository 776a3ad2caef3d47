//! The Kinesis API against a peer, and push against polling, measured in one run.
//!
//! 1. `PutRecords` throughput: one client sends 500 records of 150 bytes per
//!    request, back to back, to weir's Kinesis API and to kinesalite (npm, the
//!    usual local Kinesis, installed into `target/node/` on first use), in turns,
//!    three times each. Prints the medians and the ratio weir / kinesalite.
//! 2. Put-to-consumer latency on loopback: a consumer subscribed with
//!    `SubscribeToShard` (records pushed) beside one polling `GetRecords` every
//!    200 ms (the usual polling reader waits longer). Prints p50 and p99 of each.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use weir_host::stream::DEFAULT_CAPACITY;
use weir_tests::TestHost;

use crate::Report;
use crate::table::{Figure, Row, Size, Target, median, quantile};

const BATCH: usize = 500;
const RECORD: usize = 150;

/// One Kinesis JSON 1.1 call (unsigned: weir runs without keys here, kinesalite checks none).
async fn call(client: &reqwest::Client, url: &str, operation: &str, body: &Value) -> Value {
    let answer = client
        .post(url)
        .header("x-amz-target", format!("Kinesis_20131202.{operation}"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-date", "20260101T000000Z")
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body(body.to_string())
        .send()
        .await
        .expect("call");
    let status = answer.status();
    let text = answer.text().await.unwrap_or_default();
    assert!(status.is_success(), "{operation}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Records per second that `PutRecords` takes at `url` for `seconds`, into a new stream;
/// a run that fills the stream first ends there.
async fn put_rate(url: &str, stream: &str, seconds: f64) -> f64 {
    let client = reqwest::Client::new();
    call(&client, url, "CreateStream", &json!({"StreamName": stream, "ShardCount": 1})).await;
    // kinesalite makes a stream ACTIVE a moment after it answers.
    let name = json!({"StreamName": stream});
    while call(&client, url, "DescribeStream", &name).await["StreamDescription"]["StreamStatus"] != "ACTIVE" {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let data = base64::engine::general_purpose::STANDARD.encode("x".repeat(RECORD));
    let records: Vec<Value> =
        (0..BATCH).map(|i| json!({"Data": data, "PartitionKey": format!("key-{}", i % 50)})).collect();
    let body = json!({"StreamName": stream, "Records": records});
    let (start, mut sent) = (Instant::now(), 0usize);
    while start.elapsed().as_secs_f64() < seconds && sent + BATCH <= DEFAULT_CAPACITY {
        let answer = call(&client, url, "PutRecords", &body).await;
        assert_eq!(answer["FailedRecordCount"], 0, "{}", answer["Records"][0]);
        sent += BATCH;
    }
    sent as f64 / start.elapsed().as_secs_f64()
}

/// p50 and p99 of put-to-consumer times: pushed by `SubscribeToShard`, and polled by `GetRecords`.
async fn latencies(host: &TestHost, puts: usize) -> ((Duration, Duration), (Duration, Duration)) {
    let url = format!("{}/", host.url);
    let client = reqwest::Client::new();
    call(&client, &url, "CreateStream", &json!({"StreamName": "latency", "ShardCount": 1})).await;
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/latency";
    let consumer =
        call(&client, &url, "RegisterStreamConsumer", &json!({"StreamARN": arn, "ConsumerName": "bench"})).await;
    let consumer_arn = consumer["Consumer"]["ConsumerARN"].as_str().unwrap_or_default().to_owned();
    // The pushed reader: counts records in the event stream's frames as they come.
    let pushed = {
        let (client, url) = (client.clone(), url.clone());
        let body = json!({"ConsumerARN": consumer_arn, "ShardId": "shardId-000000000000",
            "StartingPosition": {"Type": "LATEST"}});
        let mut response = client
            .post(&url)
            .header("x-amz-target", "Kinesis_20131202.SubscribeToShard")
            .header("content-type", "application/x-amz-json-1.1")
            .body(body.to_string())
            .send()
            .await
            .expect("subscribe");
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let reader = tokio::spawn(async move {
            let mut buffer: Vec<u8> = Vec::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.extend_from_slice(&chunk);
                while buffer.len() >= 12 {
                    let total = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
                    if buffer.len() < total {
                        break;
                    }
                    let headers = u32::from_be_bytes([buffer[4], buffer[5], buffer[6], buffer[7]]) as usize;
                    let payload: Value =
                        serde_json::from_slice(&buffer[12 + headers..total - 4]).unwrap_or(Value::Null);
                    let now = Instant::now();
                    for _ in payload["Records"].as_array().into_iter().flatten() {
                        let _ = seen_tx.send(now);
                    }
                    buffer.drain(..total);
                }
            }
        });
        (seen_rx, reader)
    };
    // The polling reader: GetRecords every 200 ms from the shard's end.
    let polled = {
        let (client, url) = (client.clone(), url.clone());
        let iterator = call(
            &client,
            &url,
            "GetShardIterator",
            &json!({"StreamName": "latency",
            "ShardId": "shardId-000000000000", "ShardIteratorType": "LATEST"}),
        )
        .await;
        let mut iterator = iterator["ShardIterator"].as_str().unwrap_or_default().to_owned();
        let (seen_tx, seen_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
        let poller = tokio::spawn(async move {
            loop {
                let out = call(&client, &url, "GetRecords", &json!({"ShardIterator": iterator})).await;
                let now = Instant::now();
                for _ in out["Records"].as_array().into_iter().flatten() {
                    if seen_tx.send(now).is_err() {
                        return;
                    }
                }
                iterator = out["NextShardIterator"].as_str().unwrap_or_default().to_owned();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        (seen_rx, poller)
    };
    let ((mut pushed, reader), (mut polled, poller)) = (pushed, polled);
    // Past the first heartbeat, so the subscription is surely established.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (mut push_times, mut poll_times) = (Vec::new(), Vec::new());
    for i in 0..puts {
        let sent = Instant::now();
        call(
            &client,
            &url,
            "PutRecord",
            &json!({"StreamName": "latency", "Data": "eA==", "PartitionKey": format!("{i}")}),
        )
        .await;
        push_times.push(pushed.recv().await.expect("pushed").duration_since(sent));
        poll_times.push(polled.recv().await.expect("polled").duration_since(sent));
    }
    // The readers end here, before the host stops under them.
    reader.abort();
    poller.abort();
    let percentiles = |times: Vec<Duration>| (quantile(&times, 0.5), quantile(&times, 0.99));
    (percentiles(push_times), percentiles(poll_times))
}

pub fn run(size: Size, report: &mut Report) {
    let seconds: f64 =
        std::env::var("WEIR_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(size.pick(3.0, 0.3));
    let (turns, puts) = (size.pick(3, 1), size.pick(200, 20));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let manifest = "[pipeline]\nname = \"kinesis-bench\"\ndata-dir = \"data\"\n";
        let mut host = TestHost::start(manifest).await.expect("start");
        let weir = format!("{}/", host.url);
        println!("PutRecords: {BATCH} records of {RECORD} bytes per request, one client, {seconds} s per run");
        match weir_tests::kinesalite() {
            None => println!("  kinesalite could not be installed or started (npm and node are needed): weir alone"),
            Some(kinesalite) => {
                let peer = &kinesalite.url;
                let (mut ours, mut theirs) = (Vec::new(), Vec::new());
                for run in 0..turns {
                    ours.push(put_rate(&weir, &format!("bench-{run}"), seconds).await);
                    theirs.push(put_rate(peer, &format!("bench-{run}"), seconds).await);
                }
                let (ours, theirs) = (median(&ours), median(&theirs));
                println!(
                    "  weir {ours:>10.0} records/s   kinesalite {theirs:>10.0} records/s   ratio {:.1} (medians of {turns})",
                    ours / theirs
                );
                report.rows.push(Row::rates(
                    "Kinesis PutRecords, one client: weir ÷ kinesalite",
                    Figure::PerSecond(ours, "records"),
                    Figure::PerSecond(theirs, "records"),
                    "kinesalite",
                    Target::Report,
                ));
                drop(kinesalite);
            }
        }
        let ((push50, push99), (poll50, poll99)) = latencies(&host, puts).await;
        println!("put-to-consumer latency on loopback, {puts} puts:");
        println!("  SubscribeToShard (pushed)      p50 {push50:>10.2?}  p99 {push99:>10.2?}");
        println!("  GetRecords every 200 ms        p50 {poll50:>10.2?}  p99 {poll99:>10.2?}");
        report.rows.push(Row::figure(
            "Kinesis PutRecord to SubscribeToShard consumer, p99",
            Figure::Time(push99),
            Target::Report,
        ));
        host.stop().await;
    });
}
