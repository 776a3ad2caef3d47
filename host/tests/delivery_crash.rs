//! Crash safety of deliveries into the warehouse, with the real binary: a
//! `weir run` delivering toll rows into SQLite, or into PostgreSQL (where two
//! batches load at once and may commit out of order), is killed with SIGKILL
//! in the middle of its deliveries, 6 times; once it has caught up after the
//! last restart, every acknowledged line is exactly one row: none lost, none
//! loaded twice.

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
{warehouse}
table = "toll_transactions"
columns = ["transaction_id", "customer_id", "amount_cents"]
"#;

fn line(round: u32, i: u32) -> String {
    format!("R{round}-{i:06},2026-11-26T14:03:12Z,17,3,TAG1,C{:06},2,{}", i % 50, 100 + i)
}

fn sqlite_rows(db: &Path) -> Vec<String> {
    let Ok(connection) = rusqlite::Connection::open(db) else { return Vec::new() };
    let Ok(mut query) = connection.prepare("SELECT transaction_id FROM toll_transactions") else { return Vec::new() };
    query.query_map([], |r| r.get::<_, String>(0)).map(|rows| rows.flatten().collect()).unwrap_or_default()
}

#[test]
fn deliveries_killed_midway_load_every_acknowledged_row_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("warehouse.db");
    killed_midway(&dir, "database = \"warehouse.db\"", || sqlite_rows(&db));
}

#[test]
fn deliveries_into_postgres_killed_midway_load_every_acknowledged_row_exactly_once() {
    let server = weir_tests::postgres_server();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let database = format!("weir_delivery_crash_{}", std::process::id());
    let base: Vec<&str> = server.split_whitespace().filter(|p| !p.starts_with("dbname=")).collect();
    let url = format!("{} dbname={database}", base.join(" "));
    let connect = |url: String| async move {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.expect("connect");
        tokio::spawn(connection);
        client
    };
    runtime.block_on(async {
        let admin = connect(server.clone()).await;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS {database}")).await.expect("drop");
        admin.batch_execute(&format!("CREATE DATABASE {database}")).await.expect("create");
        // No key: a row loaded twice shows up as two rows.
        connect(url.clone())
            .await
            .batch_execute(
                "CREATE TABLE toll_transactions (transaction_id text, customer_id text, amount_cents integer)",
            )
            .await
            .expect("table");
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = || {
        runtime.block_on(async {
            let client = connect(url.clone()).await;
            let rows = client.query("SELECT transaction_id FROM toll_transactions", &[]).await.expect("rows");
            rows.iter().map(|r| r.get::<_, String>(0)).collect()
        })
    };
    killed_midway(&dir, &format!("kind = \"postgres\"\ndatabase = \"{url}\""), rows);
    runtime.block_on(async {
        let drop = format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)");
        connect(server.clone()).await.batch_execute(&drop).await.expect("drop");
    });
}

/// Kills a delivering weir 6 times, then checks `rows()` holds each acknowledged line once.
fn killed_midway(dir: &tempfile::TempDir, warehouse: &str, rows: impl Fn() -> Vec<String>) {
    let _plugins_built = weir_artifacts::TOLL_ETL;
    let manifest = dir.path().join("pipeline.toml");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = MANIFEST.replace("{root}", &root.display().to_string()).replace("{warehouse}", warehouse);
    std::fs::write(&manifest, text).expect("manifest");
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
    let deadline = Instant::now() + Duration::from_secs(60);
    let loaded = loop {
        let loaded = rows();
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
