//! Warehouse destinations end to end: toll lines put through the Firehose
//! protocol are transformed by `toll-etl`, staged in the lake and loaded into
//! a `toll_transactions` table, in SQLite (embedded) and in PostgreSQL with
//! `COPY`. Every well-formed line is one row, every malformed line is under
//! the error prefix with its reason, and a database that is down is waited
//! for within the retry duration and reported past it. With a `key`, a line
//! sent twice is one row in either database.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use weir_tests::{Proxy, TestHost, files, postgres, postgres_database, put_record_batch, toll_lines};

const COLUMNS: &str = r#"["transaction_id", "event_time", "station_id", "lane", "tag_id", "customer_id", "vehicle_class", "amount_cents", "currency"]"#;

const POSTGRES_TABLE: &str = "CREATE TABLE toll_transactions (
    transaction_id text PRIMARY KEY, event_time timestamptz NOT NULL, station_id integer NOT NULL,
    lane smallint NOT NULL, tag_id text NOT NULL, customer_id text NOT NULL, vehicle_class smallint NOT NULL,
    amount_cents integer NOT NULL, currency char(3) NOT NULL)";

fn manifest(warehouse: &str, retry: &str) -> String {
    format!(
        r#"
[pipeline]
name = "warehouse-test"
data-dir = "data"

[delivery.tolls]
transform = "{{root}}/plugins/toll-etl"
buffer-interval = "1s"
lake = "lake"
prefix = "rows/"
backup-prefix = "raw/"

[delivery.tolls.warehouse]
{warehouse}
table = "toll_transactions"
columns = {COLUMNS}
retry-duration = "{retry}"
"#
    )
}

/// The error-prefix entries of the delivery, all objects together.
fn error_entries(host: &TestHost) -> Vec<Value> {
    files(&host.path("lake").join("errors"))
        .iter()
        .flat_map(|f| weir_tests::lines(f))
        .map(|l| serde_json::from_str(&l).expect("error entries are JSON"))
        .collect()
}

fn raw_data(entry: &Value) -> String {
    let data = base64::engine::general_purpose::STANDARD.decode(entry["rawData"].as_str().expect("rawData"));
    String::from_utf8(data.expect("base64")).expect("utf-8")
}

/// Checks the rows against the lines: one row per good line, the malformed
/// ones under the error prefix with the field named.
fn check_delivery(lines: &[String], mut ids: Vec<String>, errors: &[Value]) {
    let good: Vec<&String> = lines.iter().filter(|l| !l.contains(",9,")).collect();
    ids.sort();
    let mut expected: Vec<String> = good.iter().map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(ids, expected, "every well-formed line is one row, once");
    let mut failed: Vec<String> = errors.iter().map(raw_data).collect();
    failed.sort();
    let mut malformed: Vec<String> = lines.iter().filter(|l| l.contains(",9,")).cloned().collect();
    malformed.sort();
    assert_eq!(failed, malformed, "every malformed line is under the error prefix");
    for e in errors {
        assert_eq!(e["errorCode"], "Transform.ProcessingFailed");
        assert!(e["errorMessage"].as_str().is_some_and(|m| m.contains("vehicle_class")), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toll_lines_become_sqlite_rows_within_the_buffer_interval() {
    let mut host = TestHost::start(&manifest(r#"database = "warehouse.db""#, "10s")).await.expect("start");
    let lines = toll_lines(1000);
    let written = Instant::now();
    put_record_batch(&host, "tolls", &lines).await;
    host.wait_until("every row loaded", |s| s.deliveries[0].rows_loaded == 900).await;
    // Freshness: the buffer interval is 1 s; the rows are queryable well within it plus a margin.
    let fresh = written.elapsed();
    assert!(fresh < Duration::from_secs(1 + 5), "rows took {fresh:?} to be queryable");

    let db = rusqlite::Connection::open(host.path("warehouse.db")).expect("open");
    let mut query = db.prepare("SELECT transaction_id FROM toll_transactions").expect("query");
    let ids: Vec<String> = query.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect();
    let amount: i64 = db
        .query_row("SELECT amount_cents FROM toll_transactions WHERE transaction_id = 'T0017-000003'", [], |r| r.get(0))
        .expect("amount");
    assert_eq!(amount, 103, "typed columns keep the row's numbers");
    host.stop().await;
    check_delivery(&lines, ids, &error_entries(&host));
    let status = host.host.status();
    assert_eq!(status.deliveries[0].loads_failed, 0);
    assert!(!files(&host.path("lake").join("raw")).is_empty(), "the raw lines are backed up");
}

/// `weir run` and embedders start the host from async code: the PostgreSQL
/// warehouse must connect and load there without blocking the caller's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_warehouse_connects_and_loads_from_inside_a_runtime() {
    use weir_host::warehouse::{ColumnMap, Database, ParsedRows, WarehouseSpec};
    let url = postgres_database().await;
    postgres(&url).await.batch_execute("CREATE TABLE t (id text PRIMARY KEY)").await.expect("table");
    let spec = WarehouseSpec {
        database: Database::Postgres(url.clone()),
        table: "t".into(),
        columns: vec![ColumnMap { column: "id".into(), field: "id".into() }],
        key: Vec::new(),
        retry_duration: Duration::from_secs(1),
    };
    let mut warehouse = weir_host::warehouse::connect(&spec).expect("connects inside a runtime");
    let rows = ParsedRows::parse(&[br#"{"id":"a"}"#, br#"{"id":"a"}"#, b"not json"], &spec.columns);
    let loaded = warehouse.load("k", &rows).expect("loads inside a runtime");
    assert_eq!((loaded.rows, loaded.rejected.len()), (1, 2), "{loaded:?}");
    // Loaded again (a redo after a crash): nothing inserted, the same rows reported refused.
    let again = warehouse.load("k", &rows).expect("loads again");
    assert!(again.already_loaded && again.rejected == loaded.rejected, "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toll_lines_are_copied_into_postgres_and_refused_rows_keep_the_reason() {
    let url = postgres_database().await;
    let pg = postgres(&url).await;
    pg.batch_execute(POSTGRES_TABLE).await.expect("table");
    let mut host =
        TestHost::start(&manifest(&format!("kind = \"postgres\"\ndatabase = \"{url}\""), "10s")).await.expect("start");
    let mut lines = toll_lines(2000);
    let written = Instant::now();
    put_record_batch(&host, "tolls", &lines).await;
    host.wait_until("every row loaded", |s| s.deliveries[0].rows_loaded == 1800).await;
    let fresh = written.elapsed();
    assert!(fresh < Duration::from_secs(1 + 5), "rows took {fresh:?} to be queryable");

    // A line sent twice breaks the table's primary key: that row alone is refused.
    put_record_batch(&host, "tolls", &[lines[0].clone(), lines[1].replace("T0017-000001", "T0017-999999")]).await;
    lines.push(lines[1].replace("T0017-000001", "T0017-999999"));
    host.wait_until("the refused row", |s| s.deliveries[0].rows_rejected == 1).await;
    host.stop().await;

    let ids: Vec<String> = pg
        .query("SELECT transaction_id FROM toll_transactions", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (transform_errors, refused): (Vec<Value>, Vec<Value>) =
        error_entries(&host).into_iter().partition(|e| e["errorCode"] == "Transform.ProcessingFailed");
    check_delivery(&lines, ids, &transform_errors);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["errorCode"], "Warehouse.RowRejected");
    let reason = refused[0]["errorMessage"].as_str().unwrap_or("");
    assert!(reason.contains("duplicate key") && reason.contains("23505"), "{reason}");
    assert!(raw_data(&refused[0]).contains("\"transaction_id\":\"T0017-000000\""), "the refused row is kept");
    let event: String = pg
        .query_one("SELECT to_char(event_time AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM toll_transactions WHERE transaction_id = 'T0017-000061'", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(event, "2026-11-26 14:01:01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_within_the_retry_duration_only_delays_the_load_and_past_it_is_listed() {
    let url = postgres_database().await;
    let pg = postgres(&url).await;
    pg.batch_execute(POSTGRES_TABLE).await.expect("table");
    let setting = |key: &str| url.split_whitespace().find_map(|p| p.strip_prefix(key)).map(str::to_owned);
    let server = format!(
        "{}:{}",
        setting("host=").unwrap_or_else(|| "127.0.0.1".into()),
        setting("port=").unwrap_or_else(|| "5432".into())
    );
    let proxy = Proxy::start(server.parse().expect("WEIR_TEST_POSTGRES has host=<ip> port=<port>")).await;
    let via_proxy: String = url
        .split_whitespace()
        .filter(|p| !p.starts_with("host=") && !p.starts_with("port="))
        .chain(["host=127.0.0.1"])
        .collect::<Vec<_>>()
        .join(" ")
        + &format!(" port={}", proxy.port);

    // Down for ~2 s of a 30 s retry duration: loaded once it is back.
    let mut host = TestHost::start(&manifest(&format!("kind = \"postgres\"\ndatabase = \"{via_proxy}\""), "30s"))
        .await
        .expect("start");
    proxy.cut();
    let lines = toll_lines(100);
    put_record_batch(&host, "tolls", &lines[..50]).await;
    host.wait_until("three failed load attempts", |s| s.deliveries[0].retries >= 3).await;
    assert_eq!(host.host.status().deliveries[0].rows_loaded, 0, "nothing loads while the database is down");
    proxy.restore();
    host.wait_until("the delayed load", |s| s.deliveries[0].rows_loaded == 45).await;
    host.stop().await;

    // Down past a 1 s retry duration: the staged object is listed under the error prefix.
    let manifest = manifest(&format!("kind = \"postgres\"\ndatabase = \"{via_proxy}\""), "1s");
    let dir = std::mem::replace(&mut host.dir, tempfile::tempdir().expect("tempdir"));
    drop(host); // one host per data-dir: the old one lets go of its files
    proxy.cut();
    let mut host = TestHost::start_in(dir, &manifest).await.expect("restart");
    put_record_batch(&host, "tolls", &lines[50..]).await;
    host.wait_until("the load to be given up", |s| s.deliveries[0].loads_failed == 1).await;
    host.stop().await;
    proxy.restore();
    let listed: Vec<Value> =
        error_entries(&host).into_iter().filter(|e| e["errorCode"] == "Warehouse.Unavailable").collect();
    assert_eq!(listed.len(), 1, "{listed:?}");
    let staged = listed[0]["stagedObject"].as_str().expect("stagedObject");
    assert_eq!(listed[0]["rows"], 45);
    assert!(listed[0]["attemptsMade"].as_u64().is_some_and(|n| n >= 1));
    let staged_rows = std::fs::read_to_string(host.path("lake").join(staged)).expect("the staged object is kept");
    assert_eq!(staged_rows.lines().count(), 45);
    let count: i64 = pg.query_one("SELECT count(*) FROM toll_transactions", &[]).await.expect("count").get(0);
    assert_eq!(count, 45, "only the first load happened");
}

/// Sends a day's lines, then all of them again (a station re-sending its log)
/// and a retried put, to a warehouse with `key = "transaction_id"`: each line is
/// one row, and `weir status` counts the rows that came again.
async fn lines_sent_twice_are_loaded_once(warehouse: &str, ids: impl AsyncFnOnce(&TestHost) -> Vec<String>) {
    let mut host =
        TestHost::start(&manifest(&format!("{warehouse}\nkey = \"transaction_id\""), "10s")).await.expect("start");
    let lines = toll_lines(600);
    put_record_batch(&host, "tolls", &lines).await;
    host.wait_until("every row loaded", |s| s.deliveries[0].rows_loaded == 540).await;
    put_record_batch(&host, "tolls", &lines).await;
    put_record_batch(&host, "tolls", &lines[..100]).await;
    host.wait_until("every row sent again", |s| s.deliveries[0].rows_duplicate == 540 + 90).await;
    host.stop().await;
    let status = host.host.status();
    assert_eq!((status.deliveries[0].rows_loaded, status.deliveries[0].rows_rejected), (540, 0), "{status:?}");
    let ids = ids(&host).await;
    let mut expected: Vec<String> = lines.iter().filter(|l| !l.contains(",9,")).map(|l| l[..12].to_owned()).collect();
    expected.sort();
    let mut ids = ids;
    ids.sort();
    assert_eq!(ids, expected, "every well-formed line is one row, however often it was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_twice_is_one_sqlite_row_with_a_key() {
    lines_sent_twice_are_loaded_once(r#"database = "warehouse.db""#, async |host: &TestHost| {
        let db = rusqlite::Connection::open(host.path("warehouse.db")).expect("open");
        let mut query = db.prepare("SELECT transaction_id FROM toll_transactions").expect("query");
        query.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_sent_twice_is_one_postgres_row_with_a_key() {
    let url = postgres_database().await;
    let pg = postgres(&url).await;
    pg.batch_execute(POSTGRES_TABLE).await.expect("table");
    lines_sent_twice_are_loaded_once(&format!("kind = \"postgres\"\ndatabase = \"{url}\""), async |_: &TestHost| {
        let rows = pg.query("SELECT transaction_id FROM toll_transactions", &[]).await.expect("select");
        rows.iter().map(|r| r.get(0)).collect()
    })
    .await;
}

/// A key needs a primary key or unique index to skip rows by: without one the
/// warehouse refuses to start and says what to add.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_without_a_unique_index_is_a_clear_error_in_both_databases() {
    use weir_host::warehouse::{ColumnMap, Database, WarehouseSpec};
    let url = postgres_database().await;
    postgres(&url).await.batch_execute("CREATE TABLE t (id text, n integer)").await.expect("table");
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = dir.path().join("w.db");
    rusqlite::Connection::open(&sqlite)
        .and_then(|c| c.execute_batch("CREATE TABLE t (id TEXT, n INTEGER)"))
        .expect("sqlite table");
    for database in [Database::Postgres(url.clone()), Database::Sqlite(sqlite)] {
        let spec = WarehouseSpec {
            database,
            table: "t".into(),
            columns: ["id", "n"].map(|c| ColumnMap { column: c.into(), field: c.into() }).to_vec(),
            key: vec!["id".into()],
            retry_duration: Duration::from_secs(1),
        };
        let error = weir_host::warehouse::connect(&spec).err().expect("no unique index on the key");
        assert!(!error.is_retryable(), "{error}");
        let message = error.to_string();
        assert!(message.contains("table `t` has no primary key or unique index on (id)"), "{message}");
        assert!(message.contains("CREATE UNIQUE INDEX ON t (id)"), "{message}");
    }
}
