//! Crash safety of durable streams, with the real binary: a `weir run` taking
//! puts under load is killed with SIGKILL at varying points, 12 times; after
//! each restart every acknowledged record is there, at the sequence number it
//! was acknowledged with, exactly once, in order per producer.

mod common;

use std::collections::BTreeMap;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{free_port, next_random, start, wait_ready};
use serde_json::{Value, json};

const MANIFEST: &str = r#"
[pipeline]
name = "crash"
data-dir = "data"

[sources.http]
kind = "http"
stream = "s"

[streams.s]
capacity = 10000000
fsync = "group"
fsync-interval = "2ms"
"#;

async fn read_all(client: &reqwest::Client, port: u16) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    let mut from = 0u64;
    loop {
        let url = format!("http://127.0.0.1:{port}/v1/streams/s/records?from={from}&limit=10000");
        let body: Value = client.get(url).send().await.expect("read").json().await.expect("json");
        let records = body["records"].as_array().cloned().unwrap_or_default();
        if records.is_empty() {
            return out;
        }
        for r in records {
            let seq: u64 = r["sequence_number"].as_str().and_then(|s| s.parse().ok()).expect("sequence");
            out.push((seq, r["data"].as_str().unwrap_or("").to_owned()));
        }
        from = body["next"].as_str().and_then(|s| s.parse().ok()).expect("next");
    }
}

#[test]
fn acknowledged_records_survive_sigkill_exactly_once_and_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("crash.toml");
    std::fs::write(&manifest, MANIFEST).expect("manifest");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let client = reqwest::Client::new();
    // Every acknowledged record: sequence -> data.
    let acked: Arc<Mutex<BTreeMap<u64, String>>> = Arc::default();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..12 {
        let port = free_port();
        let mut child = start(&manifest, port);
        runtime.block_on(wait_ready(&client, port));
        let kill_after = Duration::from_millis(50 + next_random(&mut rng) % 400);
        runtime.block_on(async {
            let producers: Vec<_> = (0..4)
                .map(|p| {
                    let (client, acked) = (client.clone(), acked.clone());
                    tokio::spawn(async move {
                        for i in 0.. {
                            let records: Vec<Value> =
                                (0..10).map(|j| json!({"partition_key": format!("p{p}"), "data": format!("r{round}-p{p}-{i}-{j}")})).collect();
                            let url = format!("http://127.0.0.1:{port}/v1/streams/s/records");
                            let Ok(response) = client.post(url).json(&json!({"records": records})).send().await else { break };
                            if !response.status().is_success() {
                                break;
                            }
                            let Ok(body) = response.json::<Value>().await else { break };
                            let mut acked = acked.lock().expect("lock");
                            for (j, r) in body["records"].as_array().cloned().unwrap_or_default().iter().enumerate() {
                                let seq: u64 = r["sequence_number"].as_str().and_then(|s| s.parse().ok()).expect("seq");
                                acked.insert(seq, format!("r{round}-p{p}-{i}-{j}"));
                            }
                        }
                    })
                })
                .collect();
            tokio::time::sleep(kill_after).await;
            child.kill().expect("SIGKILL");
            for p in producers {
                let _ = p.await;
            }
        });
        let _ = child.wait();
    }

    let port = free_port();
    let mut child = start(&manifest, port);
    let stored = runtime.block_on(async {
        wait_ready(&client, port).await;
        read_all(&client, port).await
    });
    let _ = child.kill();
    let _ = child.wait();

    let acked = acked.lock().expect("lock");
    assert!(acked.len() > 100, "the load ran ({} acknowledged)", acked.len());
    let sequences: Vec<u64> = stored.iter().map(|(s, _)| *s).collect();
    assert_eq!(sequences, (0..stored.len() as u64).collect::<Vec<_>>(), "sequence numbers are dense and ordered");
    let by_seq: BTreeMap<u64, &str> = stored.iter().map(|(s, d)| (*s, d.as_str())).collect();
    for (seq, data) in acked.iter() {
        assert_eq!(by_seq.get(seq).copied(), Some(data.as_str()), "acknowledged record {seq} lost or changed");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (_, data) in &stored {
        assert!(seen.insert(data.as_str()), "{data} stored twice");
    }
    // Per producer and round, records appear in the order they were sent.
    let mut last: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (_, data) in &stored {
        let parts: Vec<&str> = data.split('-').collect();
        let producer = format!("{}-{}", parts[0], parts[1]);
        let order = (parts[2].parse::<u64>().unwrap_or(0), parts[3].parse::<u64>().unwrap_or(0));
        if let Some(prev) = last.insert(producer.clone(), order) {
            assert!(order > prev, "{producer}: {order:?} after {prev:?}");
        }
    }
}
