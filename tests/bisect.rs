//! A bad record costs only itself: a batch the plugin traps on is tried again
//! in halves, down to the records that fail alone, in every world that runs
//! plugins on batches (transform, aggregate, consume, and a delivery's
//! transform). Each test puts 300 records at once (full batches of 256, then
//! 44) with three poison records among them, and checks that exactly the three
//! are set aside, with the plugin's reason, and every other record went on once,
//! in order. `failed-batch = "whole"` keeps the old all-or-nothing behaviour.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;
use weir_host::pipeline::{PipelineStatus, Producer};
use weir_host::stage::StageStatus;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, files, lines};

/// Where the poison records are: in both batches, the first at a batch's edge.
const POISON: [usize; 3] = [7, 150, 299];

/// 300 records of key `k`: `boom` at [`POISON`], else `payload(i)`, all in one window's minute.
fn records(payload: impl Fn(usize) -> String) -> Vec<NewRecord> {
    (0..300)
        .map(|i| NewRecord {
            source: None,
            key: "k".to_owned(),
            // 2026-11-26T14:00:00Z plus a second per record.
            event_time_ms: Some(1_795_701_600_000 + i as i64 * 1000),
            data: Bytes::from(if POISON.contains(&i) { "boom".to_owned() } else { payload(i) }),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect()
}

fn stage<'a>(status: &'a PipelineStatus, name: &str) -> &'a StageStatus {
    status.stages.iter().find(|s| s.name == name).expect("the stage")
}

/// The dead letters of a stage: (payload, error code, reason).
fn letters(host: &TestHost, stage: &str) -> Vec<(String, String, String)> {
    lines(&host.path(&format!("data/dead-letter/{stage}.jsonl")))
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("a dead letter is JSON");
            let text = |k: &str| v[k].as_str().unwrap_or("").to_owned();
            (text("data"), text("error_code"), text("reason"))
        })
        .collect()
}

/// The three poison records, set aside alone, each with the plugin's trap and who ran it.
fn assert_only_the_poison(letters: &[(String, String, String)], code: &str, plugin: &str) {
    assert_eq!(letters.len(), 3, "{letters:?}");
    for (data, error_code, reason) in letters {
        assert_eq!((data.as_str(), error_code.as_str()), ("boom", code), "{reason}");
        assert!(reason.contains("failed on this record") && reason.contains("trapped"), "{reason}");
        assert!(reason.contains(plugin), "the reason names the plugin version: {reason}");
    }
}

const TRANSFORM: &str = r#"
[pipeline]
name = "bisect-transform"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[stages.upper]
plugin = "{root}/tests/guests/hostile"
input = "in"
output = "out"
batch-wait = "1s"
config = { mode = "trap-on-boom" }

[stages.all-or-nothing]
plugin = "{root}/tests/guests/hostile"
input = "in"
output = "out-whole"
batch-wait = "1s"
failed-batch = "whole"
config = { mode = "trap-on-boom" }

[sinks.out]
kind = "file"
path = "out.jsonl"

[sinks.out-whole]
kind = "file"
path = "out-whole.jsonl"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transformer_trapping_on_one_record_costs_only_that_record() {
    let mut host = TestHost::start(TRANSFORM).await.expect("start");
    host.host.put("in", records(|i| format!("r{i}")), Producer::Native).expect("put");
    host.wait_until("both stages read everything", |s| {
        stage(s, "upper").records_in == 300 && stage(s, "all-or-nothing").records_in == 300
    })
    .await;
    host.stop().await;

    let expected: Vec<String> = (0..300).filter(|i| !POISON.contains(i)).map(|i| format!("R{i}")).collect();
    assert_eq!(lines(&host.path("out.jsonl")), expected, "every other record once, in order");
    assert_only_the_poison(&letters(&host, "upper"), "trap", "hostile@0.1.0");
    let status = host.host.status();
    let upper = stage(&status, "upper");
    assert_eq!(upper.dead_lettered, 3);
    // Each trap took its instance down: a fresh one ran the next part.
    assert!(upper.restarts >= upper.failures - 1 && upper.failures >= 3, "{upper:?}");

    // All or nothing: both batches held a poison record, so both went to the dead letters whole.
    assert!(lines(&host.path("out-whole.jsonl")).is_empty());
    let whole = letters(&host, "all-or-nothing");
    assert_eq!(whole.len(), 300);
    assert!(whole[0].2.contains("failed on this batch 3 times"), "{:?}", whole[0]);
    assert_eq!(stage(&status, "all-or-nothing").failures, 6, "each batch tried 3 times");
}

const AGGREGATE: &str = r#"
[pipeline]
name = "bisect-aggregate"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[stages.sum]
plugin = "{root}/tests/guests/sum-aggregator"
input = "in"
output = "sums"
batch-wait = "1s"
window = { size = "10m" }

[sinks.sums]
kind = "file"
path = "sums.jsonl"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_trapping_on_one_record_folds_all_the_others_once() {
    let mut host = TestHost::start(AGGREGATE).await.expect("start");
    let mut input = records(|_| "1".to_owned());
    // A record of the next window but one: its event time closes the first window at the input's end.
    input.push(NewRecord {
        key: "z".to_owned(),
        event_time_ms: Some(1_795_701_600_000 + 20 * 60_000),
        ..input[0].clone()
    });
    host.host.put("in", input, Producer::Native).expect("put");
    host.wait_until("the stage read everything", |s| stage(s, "sum").records_in == 301).await;
    host.host.end_input(Duration::from_secs(60)).expect("the windows are written");
    host.stop().await;
    assert_eq!(lines(&host.path("sums.jsonl")), vec!["k=297 (297 records)"], "each good record folded once");
    assert_only_the_poison(&letters(&host, "sum"), "aggregate-failed", "sum-aggregator@0.1.0");
}

const CONSUME: &str = r#"
[pipeline]
name = "bisect-consume"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[tables.totals]

[channels.inbox]
kind = "inbox"

[stages.totals]
plugin = "{root}/tests/guests/echo-notifier"
input = "in"
batch-wait = "1s"
config = { threshold = 1000000 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_trapping_on_one_record_commits_all_the_others_once() {
    let mut host = TestHost::start(CONSUME).await.expect("start");
    host.host.put("in", records(|_| "1".to_owned()), Producer::Native).expect("put");
    host.wait_until("the stage read everything", |s| stage(s, "totals").records_in == 300).await;
    let total = reqwest::get(format!("{}/v1/tables/totals/items/k", host.url))
        .await
        .expect("get the total")
        .text()
        .await
        .expect("text");
    host.stop().await;
    assert!(total.contains("297"), "each good amount added once: {total}");
    assert_only_the_poison(&letters(&host, "totals"), "consume-failed", "echo-notifier@0.1.0");
}

const DELIVERY: &str = r#"
[pipeline]
name = "bisect-delivery"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[delivery.upper]
stream = "in"
transform = "{root}/tests/guests/hostile"
config = { mode = "trap-on-boom" }
buffer-interval = "15m"
lake = "lake"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_transform_trapping_on_one_record_sends_only_that_record_to_the_error_prefix() {
    let mut host = TestHost::start(DELIVERY).await.expect("start");
    // Besides the poison, one record asks for an output over 1 MiB and one for 2,000 outputs.
    let payload = |i: usize| match i {
        20 => "huge".to_owned(),
        21 => "many".to_owned(),
        _ => format!("r{i}"),
    };
    host.host.put("in", records(payload), Producer::Native).expect("put");
    host.stop().await; // delivers what is buffered

    let lake = host.path("lake");
    let all = files(&lake);
    let (errors, rows): (Vec<_>, Vec<_>) = all.iter().partition(|p| p.starts_with(lake.join("errors")));
    let delivered: Vec<String> = rows
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    let expected: Vec<String> =
        (0..300).filter(|i| !POISON.contains(i) && ![20, 21].contains(i)).map(|i| format!("R{i}")).collect();
    assert_eq!(delivered, expected, "every other record once, in order");
    let entries: Vec<Value> = errors
        .iter()
        .flat_map(|f| std::fs::read_to_string(f).unwrap_or_default().lines().map(str::to_owned).collect::<Vec<_>>())
        .map(|l| serde_json::from_str(&l).expect("an error entry is JSON"))
        .collect();
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let listed: Vec<(String, String)> = entries
        .iter()
        .map(|e| (e["rawData"].as_str().unwrap_or("").to_owned(), e["errorCode"].as_str().unwrap_or("").to_owned()))
        .collect();
    let trap = "Transform.trap".to_owned();
    let limit = "Transform.OutputLimit".to_owned();
    assert_eq!(
        listed,
        vec![
            (b64("boom"), trap.clone()),
            (b64("huge"), limit.clone()),
            (b64("many"), limit),
            (b64("boom"), trap.clone()),
            (b64("boom"), trap),
        ],
        "{entries:?}"
    );
    let status = host.host.status();
    assert_eq!((status.deliveries[0].records_delivered, status.deliveries[0].records_failed), (295, 5));
}

/// A KPL aggregate of `(partition key, data)` user records: magic, protobuf, MD5.
fn kpl_aggregate(records: &[(&str, &str)]) -> Vec<u8> {
    use md5::Digest as _;
    let field = |number: u8, bytes: &[u8]| {
        let mut out = vec![number << 3 | 2, bytes.len() as u8];
        out.extend_from_slice(bytes);
        out
    };
    let mut message = Vec::new();
    for (key, _) in records {
        message.extend(field(1, key.as_bytes()));
    }
    for (i, (_, data)) in records.iter().enumerate() {
        let mut record = vec![1 << 3, i as u8];
        record.extend(field(3, data.as_bytes()));
        message.extend(field(3, &record));
    }
    let mut out = weir_host::stream::kpl::MAGIC.to_vec();
    out.extend_from_slice(&message);
    out.extend_from_slice(&md5::Md5::digest(&message));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reads_kpl_aggregates_as_their_user_records_and_an_aggregate_is_one_unit() {
    let mut host = TestHost::start(TRANSFORM).await.expect("start");
    let mut broken = kpl_aggregate(&[("k", "lost")]);
    let last = broken.len() - 1;
    broken[last] ^= 1;
    let data = [
        kpl_aggregate(&[("k", "a1"), ("k", "boom"), ("k", "a3")]),
        b"p".to_vec(),
        kpl_aggregate(&[("x", "b1"), ("y", "b2")]),
        broken,
    ];
    let input: Vec<NewRecord> =
        data.into_iter().map(|d| NewRecord { data: Bytes::from(d), ..records(|_| String::new())[0].clone() }).collect();
    host.host.put("in", input, Producer::Native).expect("put");
    // Six user records and one broken aggregate.
    host.wait_until("the stage read everything", |s| {
        stage(s, "upper").records_in + stage(s, "upper").dead_lettered >= 7
    })
    .await;
    host.stop().await;
    assert_eq!(lines(&host.path("out.jsonl")), vec!["P", "B1", "B2"], "user records, each with its own key");
    let letters = letters(&host, "upper");
    let seen: Vec<(&str, &str)> = letters.iter().map(|(d, code, _)| (d.as_str(), code.as_str())).collect();
    // The broken aggregate is set aside as it is read; the one holding the poison record
    // is retried as one stored record (its position is what checkpoints count), then set aside.
    assert_eq!(seen[0].1, "kpl-corrupt", "{letters:?}");
    assert!(letters[0].2.contains("MD5"), "{letters:?}");
    assert_eq!(seen[1..], [("a1", "trap"), ("boom", "trap"), ("a3", "trap")], "{letters:?}");
}
