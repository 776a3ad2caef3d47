//! Dead letters an operator fixes and redrives, with the `weir` commands: a
//! broken `toll-etl` version sets class 3 lines aside, `weir dlq list` and
//! `show` say what and why, a hot swap to the real `toll-etl` and `weir dlq
//! redrive` put every one of them in the warehouse exactly once, and lines
//! that are really malformed stay set aside with their new reason.

mod common;

use std::process::Command;

use common::WEIR;
use weir_tests::{TestHost, toll_lines};

const COLUMNS: &str = r#"["transaction_id", "event_time", "station_id", "lane", "tag_id", "customer_id", "vehicle_class", "amount_cents", "currency"]"#;

/// The warehouse table, its key the primary key.
const TABLE: &str = "CREATE TABLE toll_transactions (transaction_id TEXT PRIMARY KEY, event_time TEXT, \
    station_id INTEGER, lane INTEGER, tag_id TEXT, customer_id TEXT, vehicle_class INTEGER, amount_cents INTEGER, \
    currency TEXT)";

fn manifest() -> String {
    format!(
        r#"
[pipeline]
name = "dlq-test"
data-dir = "data"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]
shards = 2

[streams.rows]

[stages.etl]
plugin = "{{root}}/tests/guests/toll-etl-broken"
input = "toll-lines"
output = "rows"
batch-wait = "5ms"

[delivery.tolls]
stream = "rows"
buffer-interval = "0s"
lake = "lake"
prefix = "rows/"

[delivery.tolls.warehouse]
database = "warehouse.db"
table = "toll_transactions"
columns = {COLUMNS}
key = "transaction_id"
"#
    )
}

/// `weir ARGS` against the host: its standard output; panics with its error output if it fails.
fn weir(host: &TestHost, args: &[&str]) -> String {
    let output = Command::new(WEIR).args(args).env("WEIR_ENDPOINT", &host.url).output().expect("run weir");
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "weir {args:?} failed:\n{stdout}{stderr}");
    stdout.into_owned()
}

/// Puts lines into `toll-lines` through the native API.
async fn put_lines(host: &TestHost, lines: &[String]) {
    let put = reqwest::Client::new()
        .post(format!("{}/v1/streams/toll-lines/records", host.url))
        .header("content-type", "text/plain")
        .body(lines.join("\n"))
        .send()
        .await
        .expect("put");
    assert!(put.status().is_success(), "{}", put.text().await.unwrap_or_default());
}

fn warehouse_ids(host: &TestHost) -> Vec<String> {
    let db = rusqlite::Connection::open(host.path("warehouse.db")).expect("open");
    let mut query = db.prepare("SELECT transaction_id FROM toll_transactions ORDER BY 1").expect("query");
    query.query_map([], |r| r.get(0)).expect("rows").map(|r| r.expect("row")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_plugin_and_a_redrive_put_every_set_aside_record_in_the_warehouse_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    rusqlite::Connection::open(dir.path().join("warehouse.db"))
        .and_then(|c| c.execute_batch(TABLE))
        .expect("create the table");
    let host = TestHost::start_in(dir, &manifest()).await.expect("start");
    let lines = toll_lines(300);
    put_lines(&host, &lines).await;

    let malformed = lines.iter().filter(|l| l.contains(",9,")).count();
    let class_3 = lines.iter().filter(|l| l.split(',').nth(6) == Some("3")).count();
    let good = lines.len() - malformed;
    host.wait_until("the broken version's rows loaded", |s| s.deliveries[0].rows_loaded == (good - class_3) as u64)
        .await;
    host.wait_until("the set-aside lines counted", |s| s.stages[0].dead_lettered == (malformed + class_3) as u64).await;

    // What an operator sees: how many, of which kind, and why.
    let list = weir(&host, &["dlq", "list"]);
    let pending = malformed + class_3;
    assert!(list.lines().any(|l| l.starts_with("etl") && l.contains(&format!(" {pending} "))), "{list}");
    let show = weir(&host, &["dlq", "show", "etl", "--limit", "500"]);
    assert!(show.contains(&format!("stage `etl`: {pending} pending")), "{show}");
    assert_eq!(show.matches("vehicle class 3 is not in the tariff table (the bug)").count(), class_3, "{show}");
    assert!(show.contains("toll-etl-broken@0.1.0"), "{show}");
    let only_broken = weir(&host, &["dlq", "show", "etl", "--plugin", "toll-etl-broken@0.1.0", "--limit", "1"]);
    assert!(only_broken.contains(&format!("{pending} pending")), "{only_broken}");

    // The fix: a hot swap to the real toll-etl, then a redrive.
    let component = weir_artifacts::TOLL_ETL;
    weir(&host, &["plugin", "swap", "dlq-test", "etl", component, "--version", "0.2.0"]);
    let redrive = weir(&host, &["dlq", "redrive", "etl"]);
    assert!(
        redrive.contains(&format!(
            "redrove {pending} dead letter(s) of stage `etl`: {class_3} went through, {malformed} failed again"
        )),
        "{redrive}"
    );
    host.wait_until("every good line in the warehouse", |s| s.deliveries[0].rows_loaded == good as u64).await;
    let mut expected: Vec<String> = lines.iter().filter(|l| !l.contains(",9,")).map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(warehouse_ids(&host), expected, "every good line is one row");

    // The malformed lines stay, with the fixed version's reason; redriving them again adds nothing.
    let show = weir(&host, &["dlq", "show", "etl", "--limit", "500"]);
    assert!(show.contains(&format!("stage `etl`: {malformed} pending")), "{show}");
    assert_eq!(show.matches("toll-etl-broken@0.2.0").count(), malformed, "{show}");
    let again = weir(&host, &["dlq", "redrive", "etl"]);
    assert!(again.contains(&format!("0 went through, {malformed} failed again")), "{again}");
    assert_eq!(warehouse_ids(&host), expected, "no row twice");
    let status = host.host.status();
    assert_eq!(status.deliveries[0].rows_duplicate, 0, "nothing was sent on twice: {status:?}");
}

/// At least once: when the redrive cannot be recorded (the record of what was
/// redriven cannot be written), `weir dlq redrive` fails and says why, the
/// dead letters stay pending, and the next redrive sends them again; the
/// warehouse's key keeps each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_that_cannot_be_recorded_fails_and_is_done_again_without_duplicate_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    rusqlite::Connection::open(dir.path().join("warehouse.db"))
        .and_then(|c| c.execute_batch(TABLE))
        .expect("create the table");
    let host = TestHost::start_in(dir, &manifest()).await.expect("start");
    let lines: Vec<String> = toll_lines(60).into_iter().filter(|l| !l.contains(",9,")).collect();
    put_lines(&host, &lines).await;
    let class_3 = lines.iter().filter(|l| l.split(',').nth(6) == Some("3")).count();
    host.wait_until("the set-aside lines counted", |s| s.stages[0].dead_lettered == class_3 as u64).await;
    weir(&host, &["plugin", "swap", "dlq-test", "etl", weir_artifacts::TOLL_ETL, "--version", "0.2.0"]);

    // The fault: the redrive's record cannot be written (a folder where its temporary file goes).
    let blocker = host.path("data/dead-letter/etl.tmp");
    std::fs::create_dir_all(&blocker).expect("block the record");
    let failed =
        Command::new(WEIR).args(["dlq", "redrive", "etl"]).env("WEIR_ENDPOINT", &host.url).output().expect("run");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "the redrive must fail: {stderr}");
    assert!(stderr.contains("cannot record the redrive"), "{stderr}");
    let show = weir(&host, &["dlq", "show", "etl"]);
    assert!(show.contains(&format!("stage `etl`: {class_3} pending")), "still pending: {show}");

    std::fs::remove_dir(&blocker).expect("unblock");
    let redrive = weir(&host, &["dlq", "redrive", "etl"]);
    assert!(redrive.contains(&format!("{class_3} went through, 0 failed again")), "{redrive}");
    host.wait_until("every line in the warehouse", |s| {
        s.deliveries[0].rows_loaded + s.deliveries[0].rows_duplicate == (lines.len() + class_3) as u64
    })
    .await;
    let mut expected: Vec<String> = lines.iter().map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(warehouse_ids(&host), expected, "each line one row, though its output was sent twice");
    assert!(weir(&host, &["dlq", "show", "etl"]).contains("stage `etl`: 0 pending"));
}

/// A delivery stream's transform, a warehouse table, and an error prefix.
fn delivery_manifest(transform: &str) -> String {
    format!(
        r#"
[pipeline]
name = "dlq-delivery-test"
data-dir = "data"

[delivery.tolls]
transform = "{{root}}/{transform}"
buffer-interval = "0s"
lake = "lake"
prefix = "rows/"
error-prefix = "errors/!{{firehose:error-output-type}}/!{{timestamp:yyyy/MM/dd}}/"

[delivery.tolls.warehouse]
database = "warehouse.db"
table = "toll_transactions"
columns = {COLUMNS}
key = "transaction_id"
"#
    )
}

/// A delivery stream's error area has the same verbs: its broken transform sends
/// class 3 lines under the error prefix; after the fixed transform is deployed
/// (a restart with it), `weir dlq redrive` takes them through the delivery again,
/// into the lake and the warehouse once; the malformed lines stay with their new reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_streams_error_records_are_redriven_through_its_fixed_transform_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    rusqlite::Connection::open(dir.path().join("warehouse.db"))
        .and_then(|c| c.execute_batch(TABLE))
        .expect("create the table");
    let host = TestHost::start_in(dir, &delivery_manifest("tests/guests/toll-etl-broken")).await.expect("start");
    let lines = toll_lines(300);
    weir_tests::put_record_batch(&host, "tolls", &lines).await;
    let malformed = lines.iter().filter(|l| l.contains(",9,")).count();
    let class_3 = lines.iter().filter(|l| l.split(',').nth(6) == Some("3")).count();
    let good = lines.len() - malformed;
    host.wait_until("the broken transform's rows loaded and the rest set aside", |s| {
        s.deliveries[0].rows_loaded == (good - class_3) as u64
            && s.deliveries[0].records_failed == (malformed + class_3) as u64
    })
    .await;
    let pending = malformed + class_3;
    let list = weir(&host, &["dlq", "list"]);
    assert!(
        list.lines().any(|l| l.starts_with("tolls (delivery stream)") && l.contains(&format!(" {pending} "))),
        "{list}"
    );
    assert!(list.contains("Transform.ProcessingFailed"), "{list}");
    let show = weir(&host, &["dlq", "show", "tolls", "--limit", "500"]);
    assert!(show.contains(&format!("delivery stream `tolls`: {pending} pending")), "{show}");
    assert_eq!(show.matches("vehicle class 3 is not in the tariff table (the bug)").count(), class_3, "{show}");

    // The fix: the real toll-etl deployed, then a redrive.
    let host = host.restart(&delivery_manifest("plugins/toll-etl")).await.expect("restart with the fix");
    let redrive = weir(&host, &["dlq", "redrive", "tolls"]);
    assert!(
        redrive.contains(&format!(
            "redrove {pending} dead letter(s) of delivery stream `tolls`: {class_3} went through, {malformed} failed again"
        )),
        "{redrive}"
    );
    let mut expected: Vec<String> = lines.iter().filter(|l| !l.contains(",9,")).map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(warehouse_ids(&host), expected, "every good line is one row");
    let show = weir(&host, &["dlq", "show", "tolls", "--limit", "500"]);
    assert!(show.contains(&format!("delivery stream `tolls`: {malformed} pending")), "{show}");
    let again = weir(&host, &["dlq", "redrive", "tolls"]);
    assert!(again.contains(&format!("0 went through, {malformed} failed again")), "{again}");
    assert_eq!(warehouse_ids(&host), expected, "no row twice");
}

/// Rows the warehouse table refused (here a CHECK the operator then removes)
/// are loaded again by a redrive, once; a redrive that cannot be recorded
/// fails, leaves them pending, and the next one adds no row twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_a_table_refused_are_loaded_again_once_it_is_fixed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let strict = TABLE.replace("currency TEXT)", "currency TEXT, CHECK (vehicle_class <> 3))");
    rusqlite::Connection::open(dir.path().join("warehouse.db"))
        .and_then(|c| c.execute_batch(&strict))
        .expect("create the table");
    let host = TestHost::start_in(dir, &delivery_manifest("plugins/toll-etl")).await.expect("start");
    let lines: Vec<String> = toll_lines(120).into_iter().filter(|l| !l.contains(",9,")).collect();
    weir_tests::put_record_batch(&host, "tolls", &lines).await;
    let class_3 = lines.iter().filter(|l| l.split(',').nth(6) == Some("3")).count();
    host.wait_until("the refused rows listed", |s| s.deliveries[0].rows_rejected == class_3 as u64).await;
    let show = weir(&host, &["dlq", "show", "tolls", "--limit", "500"]);
    assert_eq!(show.matches("Warehouse.RowRejected").count(), class_3, "{show}");

    // The operator drops the CHECK (SQLite: the table made again without it).
    let mut host = host;
    host.stop().await;
    rusqlite::Connection::open(host.path("warehouse.db"))
        .and_then(|c| {
            c.execute_batch(&format!(
                "ALTER TABLE toll_transactions RENAME TO old; {TABLE}; \
                 INSERT INTO toll_transactions SELECT * FROM old; DROP TABLE old;"
            ))
        })
        .expect("fix the table");
    let host = host.restart(&delivery_manifest("plugins/toll-etl")).await.expect("restart");

    // The fault: the redrive's record cannot be written; the rows are loaded, the entries stay pending.
    let blocker = host.path("data/dead-letter/delivery/tolls.tmp");
    std::fs::create_dir_all(&blocker).expect("block the record");
    let failed =
        Command::new(WEIR).args(["dlq", "redrive", "tolls"]).env("WEIR_ENDPOINT", &host.url).output().expect("run");
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success() && stderr.contains("cannot record the redrive"), "{stderr}");
    assert!(weir(&host, &["dlq", "show", "tolls"]).contains(&format!("`tolls`: {class_3} pending")));
    std::fs::remove_dir(&blocker).expect("unblock");
    let redrive = weir(&host, &["dlq", "redrive", "tolls"]);
    assert!(redrive.contains(&format!("{class_3} went through, 0 failed again")), "{redrive}");
    let mut expected: Vec<String> = lines.iter().map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(warehouse_ids(&host), expected, "each line one row, though two redrives loaded the refused ones");
    assert!(weir(&host, &["dlq", "show", "tolls"]).contains("`tolls`: 0 pending"));
}

/// A rows object the warehouse could not load within its retry duration (the
/// table was gone) is listed under the error prefix; once the table is back, a
/// redrive loads the object under its own key, and each row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rows_object_not_loaded_in_time_is_loaded_by_a_redrive() {
    let dir = tempfile::tempdir().expect("tempdir");
    rusqlite::Connection::open(dir.path().join("warehouse.db"))
        .and_then(|c| c.execute_batch(TABLE))
        .expect("create the table");
    let manifest = delivery_manifest("plugins/toll-etl")
        .replace("key = \"transaction_id\"", "key = \"transaction_id\"\nretry-duration = \"1s\"");
    let host = TestHost::start_in(dir, &manifest).await.expect("start");
    let lines: Vec<String> = toll_lines(80).into_iter().filter(|l| !l.contains(",9,")).collect();
    let (first, second) = lines.split_at(40);
    weir_tests::put_record_batch(&host, "tolls", first).await;
    host.wait_until("the first rows loaded", |s| s.deliveries[0].rows_loaded == 40).await;

    // The table goes away: the next object is not loaded within the second it may take.
    let db = rusqlite::Connection::open(host.path("warehouse.db")).expect("open");
    db.execute_batch("ALTER TABLE toll_transactions RENAME TO kept").expect("take the table away");
    weir_tests::put_record_batch(&host, "tolls", second).await;
    host.wait_until("the load given up", |s| s.deliveries[0].loads_failed == 1).await;
    let show = weir(&host, &["dlq", "show", "tolls"]);
    assert!(show.contains("`tolls`: 1 pending") && show.contains("rows object rows/"), "{show}");

    db.execute_batch("ALTER TABLE kept RENAME TO toll_transactions").expect("the table is back");
    let redrive = weir(&host, &["dlq", "redrive", "tolls"]);
    assert!(redrive.contains("1 went through, 0 failed again"), "{redrive}");
    let mut expected: Vec<String> = lines.iter().map(|l| l[..12].to_owned()).collect();
    expected.sort();
    assert_eq!(warehouse_ids(&host), expected, "every line one row");
    assert!(weir(&host, &["dlq", "show", "tolls"]).contains("`tolls`: 0 pending"));
}
