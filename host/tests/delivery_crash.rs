//! Crash safety of deliveries into the warehouse, with the real binary: a
//! `weir run` delivering toll rows into SQLite is killed with SIGKILL in the
//! middle of its deliveries, 6 times; once it has caught up after the last
//! restart, every acknowledged line is exactly one row: none lost, none loaded
//! twice.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, next_random, start, wait_ready};
use serde_json::{Value, json};

const MANIFEST: &str = r#"
[pipeline]
name = "delivery-crash"
data-dir = "data"

[delivery.tolls]
transform = "{root}/plugins/toll-etl"
buffer-size = "4KiB"
buffer-interval = "100ms"
lake = "lake"
prefix = "rows/"

[delivery.tolls.warehouse]
database = "warehouse.db"
table = "toll_transactions"
columns = ["transaction_id", "customer_id", "amount_cents"]
"#;

fn line(round: u32, i: u32) -> String {
    format!("R{round}-{i:06},2026-11-26T14:03:12Z,17,3,TAG1,C{:06},2,{}", i % 50, 100 + i)
}

fn rows(db: &Path) -> Vec<String> {
    let Ok(connection) = rusqlite::Connection::open(db) else { return Vec::new() };
    let Ok(mut query) = connection.prepare("SELECT transaction_id FROM toll_transactions") else { return Vec::new() };
    query.query_map([], |r| r.get::<_, String>(0)).map(|rows| rows.flatten().collect()).unwrap_or_default()
}

#[test]
fn deliveries_killed_midway_load_every_acknowledged_row_exactly_once() {
    let _plugins_built = weir_artifacts::TOLL_ETL;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("pipeline.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::write(&manifest, MANIFEST.replace("{root}", &root.display().to_string())).expect("manifest");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let client = reqwest::Client::new();
    let acked: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    for round in 0..6u32 {
        let port = free_port();
        let mut child = start(&manifest, port);
        runtime.block_on(wait_ready(&client, port));
        let kill_after = Duration::from_millis(300 + next_random(&mut rng) % 700);
        runtime.block_on(async {
            let (client, acked) = (client.clone(), acked.clone());
            let producer = tokio::spawn(async move {
                for batch in 0u32.. {
                    let lines: Vec<String> = (0..50).map(|j| line(round, batch * 50 + j)).collect();
                    let records: Vec<Value> = lines
                        .iter()
                        .map(|l| json!({"Data": base64::engine::general_purpose::STANDARD.encode(l)}))
                        .collect();
                    let Ok(response) = client
                        .post(format!("http://127.0.0.1:{port}/"))
                        .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                        .header("content-type", "application/x-amz-json-1.1")
                        .body(json!({"DeliveryStreamName": "tolls", "Records": records}).to_string())
                        .send()
                        .await
                    else {
                        break;
                    };
                    let Ok(body) = response.json::<Value>().await else { break };
                    if body["FailedPutCount"] != 0 {
                        break;
                    }
                    acked.lock().expect("lock").extend(lines.iter().map(|l| l[..l.find(',').unwrap_or(0)].to_owned()));
                }
            });
            tokio::time::sleep(kill_after).await;
            child.kill().expect("SIGKILL");
            let _ = producer.await;
        });
        let _ = child.wait();
    }

    // The last run catches up on what was acknowledged but not yet delivered.
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() > 500, "the load ran ({} acknowledged)", acked.len());
    let port = free_port();
    let mut child = start(&manifest, port);
    runtime.block_on(wait_ready(&client, port));
    let db = dir.path().join("warehouse.db");
    let deadline = Instant::now() + Duration::from_secs(60);
    let loaded = loop {
        let loaded = rows(&db);
        let have: BTreeSet<&String> = loaded.iter().collect();
        if acked.iter().all(|id| have.contains(id)) {
            break loaded;
        }
        assert!(Instant::now() < deadline, "acknowledged rows are missing after the restart");
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = child.kill();
    let _ = child.wait();
    let distinct: BTreeSet<&String> = loaded.iter().collect();
    assert_eq!(distinct.len(), loaded.len(), "a row was loaded twice");
}
