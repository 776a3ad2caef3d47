//! Hot swap under continuous load: a stage's plugin is swapped twenty times
//! between two builds with visibly different output (`v1|...` / `v2|...`),
//! through the admin API, with invalid candidates in between that must be
//! refused. Every input record comes out exactly once, every batch is
//! processed by exactly one version, refused candidates never process a
//! record, and a rollback brings back the previous version. An aggregator
//! swapped mid-window keeps its open windows: same results as no swap.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use sha2::Digest as _;
use weir_host::pipeline::Producer;
use weir_host::stream::NewRecord;
use weir_tests::{TestHost, artifacts};

const MANIFEST: &str = r#"
[pipeline]
name = "swap-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
[streams.out]

[stages.tag]
plugin = "{root}/tests/guests/swap-v1"
input = "in"
output = "out"
batch-size = 50
batch-wait = "2ms"
# Only a hostile candidate reads this: it traps, so the canary refuses it.
config = { mode = "trap" }
"#;

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

async fn swap(host: &TestHost, component: &[u8], version: &str) -> (u16, Value) {
    swap_stage(host, "tag", component, version, "keep").await
}

/// Uploads `component` to `stage`; `state` says what an aggregator does with its open states.
async fn swap_stage(host: &TestHost, stage: &str, component: &[u8], version: &str, state: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("{}/v1/stages/{stage}/plugin", host.url))
        .header("content-type", "application/wasm")
        .header("x-weir-plugin-version", version)
        .header("x-weir-state", state)
        .body(component.to_vec())
        .send()
        .await
        .expect("swap request");
    let status = response.status().as_u16();
    (status, response.json().await.expect("JSON answer"))
}

/// Every record of a one-shard stream, as text.
fn read_all(host: &TestHost, stream: &str) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let records = host.host.read(stream, 0, out.len() as u64, 10_000).expect("read");
        if records.is_empty() {
            return out;
        }
        out.extend(records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_swaps_under_load_lose_nothing_and_refused_candidates_never_run() {
    let mut host = TestHost::start(MANIFEST).await.expect("start");
    let v1 = std::fs::read(artifacts::SWAP_V1).expect("swap-v1 component");
    let v2 = std::fs::read(artifacts::SWAP_V2).expect("swap-v2 component");
    let invalid: Vec<(&str, Vec<u8>)> = vec![
        ("garbage", b"\0asm not really a component".to_vec()),
        ("an aggregator", std::fs::read(artifacts::SUM_AGGREGATOR).expect("aggregator component")),
        ("a transformer that traps", std::fs::read(artifacts::HOSTILE).expect("hostile component")),
    ];

    // Continuous load: numbered records, put in small batches until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (stop, sent, host) = (stop.clone(), sent.clone(), host.host.clone());
        tokio::task::spawn_blocking(move || {
            while !stop.load(Ordering::Relaxed) {
                let first = sent.load(Ordering::Relaxed);
                let records: Vec<NewRecord> = (first..first + 20)
                    .map(|n| NewRecord {
                        source: None,
                        key: format!("k{}", n % 7),
                        event_time_ms: None,
                        data: Bytes::from(format!("n{n:07}")),
                        explicit_hash_key: None,
                        attributes: Vec::new(),
                    })
                    .collect();
                let results = host.put("in", records, Producer::Native).expect("put");
                assert!(results.iter().all(Result::is_ok), "every put is taken");
                sent.fetch_add(20, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    while sent.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let mut refused = Vec::new();
    for i in 0..20 {
        let (component, version) = if i % 2 == 0 { (&v2, "0.2.0") } else { (&v1, "0.1.0") };
        let (status, answer) = swap(&host, component, version).await;
        assert_eq!(status, 200, "swap {i}: {answer}");
        assert_eq!(answer["sha256"], sha256(component), "swap {i} runs the uploaded build");
        assert_eq!(answer["active"], true);
        if i % 7 == 3 {
            let (what, bytes) = &invalid[(i / 7) % invalid.len()];
            let (status, answer) = swap(&host, bytes, "bad").await;
            assert_eq!(status, 422, "{what} must be refused: {answer}");
            assert_eq!(answer["error"]["code"], "CandidateRefused", "{answer}");
            refused.push(sha256(bytes));
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // A refusal names the check that failed.
    let (status, answer) = swap(&host, &invalid[2].1, "bad").await;
    assert_eq!(status, 422, "{answer}");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("latest records")), "{answer}");
    refused.push(sha256(&invalid[2].1));

    stop.store(true, Ordering::Relaxed);
    producer.await.expect("producer");
    let total = sent.load(Ordering::Relaxed);
    host.wait_until("the stage to catch up", |s| s.stages[0].records_in == total).await;

    // Every input record exactly once, every batch from one version.
    let out = read_all(&host, "out");
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut batches: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in &out {
        let mut parts = line.splitn(3, '|');
        let (Some(version), Some(batch), Some(payload)) = (parts.next(), parts.next(), parts.next()) else {
            panic!("untagged output {line}");
        };
        *seen.entry(payload.to_owned()).or_default() += 1;
        batches.entry(batch.to_owned()).or_default().push(version.to_owned());
    }
    assert_eq!(seen.len() as u64, total, "every input record comes out");
    assert!(seen.values().all(|&n| n == 1), "no record is processed twice");
    for (batch, versions) in &batches {
        assert!(versions.iter().all(|v| v == &versions[0]), "batch {batch} mixes versions: {versions:?}");
    }
    let used: std::collections::BTreeSet<&str> = batches.values().map(|v| v[0].as_str()).collect();
    assert_eq!(used.into_iter().collect::<Vec<_>>(), vec!["v1", "v2"]);

    // Visibility: 21 versions, the last one active, refused candidates absent.
    let versions: Value =
        reqwest::get(format!("{}/v1/stages/tag/plugin", host.url)).await.expect("versions").json().await.expect("JSON");
    let versions = versions["versions"].as_array().cloned().unwrap_or_default();
    assert_eq!(versions.len(), 21);
    assert_eq!(versions.iter().filter(|v| v["active"] == true).count(), 1);
    assert_eq!(versions[20]["active"], true);
    // Each swap says how long it paused the stage; the first version was not swapped in.
    assert!(versions[0].get("swap_pause_ms").is_none(), "{}", versions[0]);
    for v in &versions[1..] {
        let pause = v["swap_pause_ms"].as_f64().unwrap_or(-1.0);
        assert!(pause > 0.0 && pause < 10_000.0, "a swap's pause: {v}");
    }
    assert!(versions.iter().all(|v| !refused.contains(&v["sha256"].as_str().unwrap_or("").to_owned())));
    let processed: u64 = versions.iter().map(|v| v["records_in"].as_u64().unwrap_or(0)).sum();
    assert_eq!(processed, total, "per-version counters add up");

    // Rollback: the version before the last swap (v2) runs again.
    let rolled: Value = reqwest::Client::new()
        .post(format!("{}/v1/stages/tag/plugin/rollback", host.url))
        .send()
        .await
        .expect("rollback")
        .json()
        .await
        .expect("JSON");
    assert_eq!(rolled["sha256"], sha256(&v2), "{rolled}");
    assert!(rolled["swap_pause_ms"].as_f64().is_some_and(|ms| ms > 0.0), "the answer has the pause: {rolled}");
    let started = Instant::now();
    host.host
        .put(
            "in",
            vec![NewRecord {
                source: None,
                key: "k".into(),
                event_time_ms: None,
                data: Bytes::from_static(b"after-rollback"),
                explicit_hash_key: None,
                attributes: Vec::new(),
            }],
            Producer::Native,
        )
        .expect("put");
    host.wait_until("the record after the rollback", |s| s.stages[0].records_in == total + 1).await;
    let last = read_all(&host, "out").pop().unwrap_or_default();
    assert!(last.starts_with("v2|"), "{last} (after {:?})", started.elapsed());
    host.stop().await;
}

const PROBATION_MANIFEST: &str = r#"
[pipeline]
name = "probation-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
[streams.out]

[stages.tag]
plugin = "{root}/tests/guests/swap-v1"
input = "in"
output = "out"
batch-size = 1
batch-wait = "1ms"
config = { mode = "trap-on-boom" }
hot-swap = { probation = "60s", max-failure-rate = 0.5 }
"#;

fn records(payloads: &[&str]) -> Vec<NewRecord> {
    payloads
        .iter()
        .map(|p| NewRecord {
            source: None,
            key: "k".into(),
            event_time_ms: None,
            data: Bytes::from(p.to_string()),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_failing_most_batches_on_probation_is_rolled_back() {
    let mut host = TestHost::start(PROBATION_MANIFEST).await.expect("start");
    host.host.put("in", records(&["a", "b", "c"]), Producer::Native).expect("put");
    host.wait_until("the first records", |s| s.stages[0].records_in == 3).await;
    // This candidate passes the canary (the latest records are fine) but traps on "boom".
    let hostile = std::fs::read(artifacts::HOSTILE).expect("hostile component");
    let (status, answer) = swap(&host, &hostile, "0.9.0").await;
    assert_eq!(status, 200, "{answer}");

    host.host.put("in", records(&["boom"; 8]), Producer::Native).expect("put");
    host.wait_until("every record", |s| s.stages[0].records_in == 11).await;
    let stage = host.host.status().stages.remove(0);
    let plugins: Vec<&str> = stage.versions.iter().map(|v| v.plugin.as_str()).collect();
    assert_eq!(plugins, vec!["swap-v1@0.1.0", "swap-v1@0.9.0", "swap-v1@0.1.0"], "rolled back to the first version");
    assert!(stage.versions[2].active);
    assert_eq!(stage.versions[1].failures, 3, "rolled back after 3 failed batches: {:?}", stage.versions[1]);
    assert!(stage.last_error.as_deref().is_some_and(|e| e.contains("rolled back automatically")), "{stage:?}");
    // The batch the new version failed on went to the version rolled back to, as every later one: none lost.
    let out = read_all(&host, "out");
    assert_eq!(out.iter().filter(|l| l.starts_with("v1|boom|")).count(), 8, "{out:?}");
    assert_eq!(stage.dead_lettered, 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_component_file_is_swapped_when_a_new_build_lands() {
    let plugin = tempfile::tempdir().expect("tempdir");
    let write_plugin = |version: &str, component: &str| {
        let manifest = format!(
            "[plugin]\nname = \"watched\"\nversion = \"{version}\"\nworld = \"transformer\"\n\n[build]\noutput = \"watched.wasm\"\n"
        );
        std::fs::write(plugin.path().join("plugin.toml"), manifest).expect("plugin.toml");
        // Written aside then renamed, as a build tool does.
        let tmp = plugin.path().join("watched.wasm.tmp");
        std::fs::copy(component, &tmp).expect("component");
        std::fs::rename(&tmp, plugin.path().join("watched.wasm")).expect("rename");
    };
    write_plugin("0.1.0", artifacts::SWAP_V1);
    let manifest = format!(
        r#"
[pipeline]
name = "watch-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
[streams.out]

[stages.tag]
plugin = "{}"
input = "in"
output = "out"
batch-wait = "1ms"
hot-swap = {{ watch = true }}
"#,
        plugin.path().display()
    );
    let mut host = TestHost::start(&manifest).await.expect("start");
    host.host.put("in", records(&["one"]), Producer::Native).expect("put");
    host.wait_until("the first record", |s| s.stages[0].records_in == 1).await;

    write_plugin("0.2.0", artifacts::SWAP_V2);
    host.wait_until("the new build to run", |s| s.stages[0].versions.len() == 2).await;
    host.host.put("in", records(&["two"]), Producer::Native).expect("put");
    host.wait_until("the second record", |s| s.stages[0].records_in == 2).await;
    assert_eq!(read_all(&host, "out"), vec!["v1|one|one", "v2|two|two"]);
    assert_eq!(host.host.status().stages[0].versions[1].plugin, "watched@0.2.0");
    host.stop().await;
}

const BILLING_MANIFEST: &str = r#"
[pipeline]
name = "billing-swap-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "rows"

[streams.rows]
[streams.billing]

[stages.billing]
plugin = "{root}/plugins/toll-billing-sum"
input = "rows"
output = "billing"
batch-size = 40
batch-wait = "1ms"
window = { size = "10m" }
"#;

/// 2026-11-26T14:00:00Z
const T14: i64 = 1_795_701_600_000;

/// Toll rows every 3 s from 14:00 to 14:35 for ten customers: (customer, cents, event time).
fn billing_rows() -> Vec<(String, u64, i64)> {
    (0..700).map(|i: i64| (format!("C{:02}", i % 10), (i * 37 % 900 + 100) as u64, T14 + i * 3_000)).collect()
}

fn put_rows(host: &TestHost, rows: &[(String, u64, i64)]) {
    let records = rows
        .iter()
        .map(|(customer, cents, at)| NewRecord {
            source: None,
            key: customer.clone(),
            event_time_ms: Some(*at),
            data: Bytes::from(format!(r#"{{"customer_id":"{customer}","amount_cents":{cents}}}"#)),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect();
    host.host.put("rows", records, Producer::Native).expect("put");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_swapped_mid_window_gives_the_results_of_a_run_without_the_swap() {
    let host = TestHost::start(BILLING_MANIFEST).await.expect("start");
    let rows = billing_rows();
    let v1 = std::fs::read(artifacts::TOLL_BILLING_SUM).expect("toll-billing-sum");
    let v2 = std::fs::read(artifacts::BILLING_V2).expect("billing-v2");
    let in_count = |n: usize| move |s: &weir_host::pipeline::PipelineStatus| s.stages[0].records_in == n as u64;

    // Up to 14:14: the 14:10 window is open, four minutes in.
    put_rows(&host, &rows[..280]);
    host.wait_until("the first rows", in_count(280)).await;
    // A build with the same state version takes the open states as they are.
    let (status, answer) = swap_stage(&host, "billing", &v1, "0.1.1", "keep").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state_version"], 1);

    put_rows(&host, &rows[280..480]);
    host.wait_until("the rows up to 14:24", in_count(480)).await;
    // Version 2 keeps its states in another layout: refused unless asked to migrate.
    let (status, answer) = swap_stage(&host, "billing", &v2, "0.2.0", "keep").await;
    assert_eq!(status, 422, "{answer}");
    let reason = answer["error"]["message"].as_str().unwrap_or("");
    assert!(reason.contains("version 2") && reason.contains("migrate"), "{answer}");
    let (status, answer) = swap_stage(&host, "billing", &v2, "0.2.0", "migrate").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["state_version"], 2);
    // Rolling back to version 1 would hand it version 2's states.
    let rollback = reqwest::Client::new()
        .post(format!("{}/v1/stages/billing/plugin/rollback", host.url))
        .send()
        .await
        .expect("rollback request");
    assert_eq!(rollback.status().as_u16(), 409);
    let answer: Value = rollback.json().await.expect("JSON answer");
    assert!(answer["error"]["message"].as_str().is_some_and(|m| m.contains("version 2")), "{answer}");

    // The rest, and a record at 15:00 that closes every window up to 14:40.
    put_rows(&host, &rows[480..]);
    put_rows(&host, &[("C00".to_owned(), 1, T14 + 3_600_000)]);
    host.wait_until("the last window's results", |s| s.stages[0].records_out == 40).await;
    let stage = host.host.status().stages.remove(0);
    let plugins: Vec<&str> = stage.versions.iter().map(|v| v.plugin.as_str()).collect();
    assert_eq!(plugins, ["toll-billing-sum@0.1.0", "toll-billing-sum@0.1.1", "toll-billing-sum@0.2.0"]);
    assert_eq!(stage.dead_lettered, 0);

    // The oracle: each customer's tolls summed per 10 minutes, computed here from the input.
    let mut expected: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for (customer, cents, at) in &rows {
        let sum = expected.entry(((at - T14) / 600_000, customer.clone())).or_default();
        *sum = (sum.0 + cents, sum.1 + 1);
    }
    let mut got: BTreeMap<(i64, String), (u64, u64)> = BTreeMap::new();
    for line in read_all(&host, "billing") {
        let v: Value = serde_json::from_str(&line).expect("JSON result");
        let start = v["window_start"].as_str().unwrap_or("");
        let minute: i64 = start.get(14..16).and_then(|m| m.parse().ok()).expect("a window start");
        let key = (minute / 10, v["customer_id"].as_str().unwrap_or("").to_owned());
        let totals = (v["total_cents"].as_u64().unwrap_or(0), v["transactions"].as_u64().unwrap_or(0));
        assert!(got.insert(key, totals).is_none(), "a result came twice: {line}");
    }
    assert_eq!(got, expected);

    // Restarted with the manifest's version 1 plugin, the stage refuses version 2's states.
    let host = host.restart(BILLING_MANIFEST).await.expect("restart");
    host.wait_until("the stage to refuse the checkpoint", |s| {
        s.stages[0].last_error.as_deref().is_some_and(|e| e.contains("state version 2"))
    })
    .await;
    assert_eq!(host.host.status().stages[0].phase, weir_host::stage::Phase::Stopped);
}
