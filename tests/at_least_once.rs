//! What weir does when recording an effect fails: the position stays where it
//! was, the stage retries (or stops under `on-error = "stop"`) and says why in
//! its status, and nothing acknowledged is lost. Storage fails on command
//! through [`FaultyStore`] (any stream store can be wrapped in it); sinks fail
//! for real, by writing to `/dev/full`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use weir_host::pipeline::{HostOptions, PipelineStatus, Producer, StoreWrapper};
use weir_host::stage::{Phase, StageStatus};
use weir_host::stream::{FaultyStore, NewRecord, Reshard, StreamStore};
use weir_tests::{TestHost, lines, postgres, postgres_database};

/// Options whose stream store fails on command; the store is the one of the host's streams.
fn faulty() -> (HostOptions, Arc<OnceLock<Arc<FaultyStore>>>) {
    let slot: Arc<OnceLock<Arc<FaultyStore>>> = Arc::default();
    let held = slot.clone();
    let wrap: StoreWrapper = Arc::new(move |inner: Arc<dyn StreamStore>| {
        let store = FaultyStore::new(inner);
        // The first store the host opens is its streams' (then the delivery buffers').
        let _ = held.set(store.clone());
        store as Arc<dyn StreamStore>
    });
    (HostOptions { store: Some(wrap), ..HostOptions::default() }, slot)
}

fn record(data: &str, event_time_ms: Option<i64>) -> NewRecord {
    NewRecord {
        source: None,
        key: "k".into(),
        event_time_ms,
        data: Bytes::from(data.to_owned()),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

fn stage<'a>(status: &'a PipelineStatus, name: &str) -> &'a StageStatus {
    status.stages.iter().find(|s| s.name == name).expect("the stage")
}

fn checkpoint(status: &PipelineStatus, consumer: &str) -> u64 {
    status.consumers.iter().filter(|c| c.consumer == consumer).map(|c| c.checkpoint).sum()
}

fn error_of(status: &PipelineStatus, name: &str) -> String {
    stage(status, name).last_error.clone().unwrap_or_default()
}

/// A stage with the hostile guest in its well-behaved `upper` mode.
const UPPER: &str = r#"
[pipeline]
name = "at-least-once"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]

[stages.upper]
plugin = "{root}/tests/guests/hostile"
input = "in"
output = "out"
batch-wait = "1ms"

[sinks.out]
kind = "file"
path = "out.jsonl"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_keeps_the_position_and_is_retried_until_it_is() {
    let (options, store) = faulty();
    let host = TestHost::start_with(tempfile::tempdir().expect("tempdir"), UPPER, "127.0.0.1:0", options)
        .await
        .expect("start");
    store.get().expect("the faulty store").fail_checkpoints(2);
    host.host.put("in", vec![record("a", None), record("b", None), record("c", None)], Producer::Native).expect("put");
    host.wait_until("the checkpoint past the batch", |s| checkpoint(s, "upper") == 3).await;
    let status = host.host.status();
    assert!(error_of(&status, "upper").contains("writing the checkpoint"), "{:?}", stage(&status, "upper"));
    assert_eq!(lines(&host.path("out.jsonl")), vec!["A", "B", "C"], "written once: the batch was not redone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_cannot_be_read_for_now_is_read_again_not_a_stopped_stage() {
    let (options, store) = faulty();
    let host = TestHost::start_with(tempfile::tempdir().expect("tempdir"), UPPER, "127.0.0.1:0", options)
        .await
        .expect("start");
    store.get().expect("the faulty store").unavailable_reads(3);
    host.host.put("in", vec![record("a", None), record("b", None), record("c", None)], Producer::Native).expect("put");
    host.wait_until("the checkpoint past the records", |s| checkpoint(s, "upper") == 3).await;
    let status = host.host.status();
    assert!(error_of(&status, "upper").contains("cannot be reached now"), "{:?}", stage(&status, "upper"));
    assert_ne!(stage(&status, "upper").phase, Phase::Stopped);
    assert_eq!(lines(&host.path("out.jsonl")), vec!["A", "B", "C"], "each once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_registration_is_retried_never_read_as_position_zero() {
    let arm = Arc::new(AtomicU32::new(0));
    let armed = arm.clone();
    let wrap: StoreWrapper = Arc::new(move |inner: Arc<dyn StreamStore>| {
        let store = FaultyStore::new(inner);
        store.fail_registrations(armed.load(Ordering::SeqCst));
        store as Arc<dyn StreamStore>
    });
    let options = HostOptions { store: Some(wrap), ..HostOptions::default() };
    let host = TestHost::start_with(tempfile::tempdir().expect("tempdir"), UPPER, "127.0.0.1:0", options)
        .await
        .expect("start");
    host.host.put("in", vec![record("a", None), record("b", None)], Producer::Native).expect("put");
    host.wait_until("the first two records", |s| checkpoint(s, "upper") == 2).await;
    // Restarted on a store whose first registrations fail.
    arm.store(2, Ordering::SeqCst);
    let host = host.restart(UPPER).await.expect("restart");
    host.host.put("in", vec![record("c", None)], Producer::Native).expect("put");
    host.wait_until("the third record", |s| checkpoint(s, "upper") == 3).await;
    assert!(error_of(&host.host.status(), "upper").contains("reading the input's shards"));
    assert_eq!(lines(&host.path("out.jsonl")), vec!["A", "B", "C"], "resumed after its checkpoint, not from 0");
}

/// The echo notifier adds amounts to `totals`; a payload that is not a number is a bad record.
fn notifier(dead_letters: &str) -> String {
    format!(
        r#"
[pipeline]
name = "notifier-letters"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]

[stages.echo]
plugin = "{{root}}/tests/guests/echo-notifier"
input = "amounts"
dead-letter = "letters"
batch-wait = "1ms"

[tables.totals]

[channels.inbox]
kind = "inbox"

[sinks.letters]
kind = "file"
path = "{dead_letters}"
format = "json"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_keeps_the_notifier_batch_until_it_is() {
    let host = TestHost::start(&notifier("/dev/full")).await.expect("start");
    host.host.put("amounts", vec![record("not a number", None)], Producer::Native).expect("put");
    host.wait_until("the failed dead-letter write", |s| error_of(s, "echo").contains("dead letters")).await;
    let status = host.host.status();
    assert_eq!(checkpoint(&status, "echo"), 0, "the batch is not set aside: its position stays");
    assert_eq!(stage(&status, "echo").dead_lettered, 0);
    // The disk is fixed (another file): the batch is set aside, then the position moves.
    let host = host.restart(&notifier("letters.jsonl")).await.expect("restart");
    host.wait_until("the batch set aside", |s| checkpoint(s, "echo") == 1).await;
    let letters = lines(&host.path("letters.jsonl"));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert!(letters[0].contains("not a number") && letters[0].contains("processing-failed"), "{letters:?}");
}

/// The sum aggregator over 10-minute windows; its late records go to the dead letters.
fn aggregator(extra: &str) -> String {
    format!(
        r#"
[pipeline]
name = "aggregator-letters"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]

[stages.sum]
plugin = "{{root}}/tests/guests/sum-aggregator"
input = "amounts"
output = "sums"
window = {{ size = "10m", out-of-orderness = "0s", idle-timeout = "1h" }}
batch-wait = "1ms"
{extra}

[sinks.sums]
kind = "file"
path = "sums.jsonl"
"#
    )
}

/// 2026-11-26T14:00:00Z.
const T14: i64 = 1_795_701_600_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_record_that_cannot_be_written_keeps_the_aggregator_batch_until_it_is() {
    let broken =
        "dead-letter = \"letters\"\n\n[sinks.letters]\nkind = \"file\"\npath = \"/dev/full\"\nformat = \"json\"";
    let host = TestHost::start(&aggregator(broken)).await.expect("start");
    // The second record is an hour behind the first, in a later batch: late (the
    // watermark moves after each batch, as a periodic watermark does).
    host.host.put("amounts", vec![record("5", Some(T14 + 3_600_000))], Producer::Native).expect("put");
    host.wait_until("the first batch", |s| checkpoint(s, "sum") == 1).await;
    host.host.put("amounts", vec![record("7", Some(T14))], Producer::Native).expect("put");
    host.wait_until("the failed late-record write", |s| error_of(s, "sum").contains("late or ungroupable")).await;
    assert_eq!(checkpoint(&host.host.status(), "sum"), 1, "the position stays");
    let fixed = broken.replace("/dev/full", "letters.jsonl");
    let host = host.restart(&aggregator(&fixed)).await.expect("restart");
    host.wait_until("the batch done", |s| checkpoint(s, "sum") == 2).await;
    let letters = lines(&host.path("letters.jsonl"));
    assert_eq!(letters.len(), 1, "the late record, once: {letters:?}");
    assert!(letters[0].contains("\"late\""), "{letters:?}");
    let status = host.host.status();
    assert_eq!((stage(&status, "sum").late, stage(&status, "sum").dead_lettered), (1, 0), "counted as late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_stops_under_the_stop_policy_and_its_records_stay() {
    let host = TestHost::start(&aggregator("on-error = \"stop\"")).await.expect("start");
    host.host.put("amounts", vec![record("fail", Some(T14))], Producer::Native).expect("put");
    host.wait_until("the stage stopped", |s| stage(s, "sum").phase == Phase::Stopped).await;
    let status = host.host.status();
    assert_eq!(stage(&status, "sum").dead_lettered, 0);
    assert_eq!(checkpoint(&status, "sum"), 0, "the record stays in the stream");
    assert!(error_of(&status, "sum").contains("stop"), "{:?}", stage(&status, "sum"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_aggregator_checkpoint_stops_the_stage_with_the_reason() {
    let host = TestHost::start(&aggregator("")).await.expect("start");
    host.host.put("amounts", vec![record("5", Some(T14))], Producer::Native).expect("put");
    host.wait_until("the batch checkpointed", |s| checkpoint(s, "sum") == 1).await;
    let mut host = host;
    host.stop().await;
    let file = host.path("data/stage-state/sum.json");
    std::fs::write(&file, "{ this is not a checkpoint").expect("damage the checkpoint");
    let host = host.restart(&aggregator("")).await.expect("restart");
    host.wait_until("the stage refused to start", |s| stage(s, "sum").phase == Phase::Stopped).await;
    let error = error_of(&host.host.status(), "sum");
    assert!(error.contains("sum.json") && error.contains("damaged"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aggregator_reads_a_parent_shard_before_its_children() {
    // The records are in place, a parent and two children, before the stage starts.
    let source = r#"
[pipeline]
name = "aggregator-letters"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]
"#;
    let host = TestHost::start(source).await.expect("start");
    let minute = 60_000;
    let parent: Vec<NewRecord> = (0..10).map(|i| record("1", Some(T14 + i * minute))).collect();
    host.host.put("amounts", parent, Producer::Native).expect("put");
    host.host.streams().reshard("amounts", Reshard::Uniform(2)).expect("reshard");
    let children: Vec<NewRecord> = (0..10).map(|i| record("1", Some(T14 + (30 + i) * minute))).collect();
    host.host.put("amounts", children, Producer::Native).expect("put");
    // Read one record at a time, with shards that go idle at once: read a child
    // before its parent and the parent's records would be late.
    let stage = aggregator("batch-size = 1").replace("idle-timeout = \"1h\"", "idle-timeout = \"1ms\"");
    let mut host = host.restart(&stage).await.expect("restart");
    host.wait_until("every record read", |s| checkpoint(s, "sum") == 20).await;
    host.stop().await;
    let sums = lines(&host.path("sums.jsonl"));
    assert!(sums.iter().any(|l| l == "k=10 (10 records)"), "the parent's window holds all its records: {sums:?}");
    assert_eq!(host.host.status().stages[0].late, 0, "nothing was late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_loads_a_parent_shard_before_its_children() {
    // A parent with a few records (under the size threshold) and two children
    // with enough to fill a buffer each, in place before the delivery starts.
    let source = r#"
[pipeline]
name = "delivery-lineage"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]
"#;
    let host = TestHost::start(source).await.expect("start");
    let row = |n: usize| NewRecord {
        source: None,
        key: format!("k{n}"),
        event_time_ms: None,
        data: Bytes::from(format!("{{\"n\":{n}}}")),
        explicit_hash_key: None,
        attributes: Vec::new(),
    };
    host.host.put("amounts", (0..3).map(row).collect(), Producer::Native).expect("put");
    host.host.streams().reshard("amounts", Reshard::Uniform(2)).expect("reshard");
    host.host.put("amounts", (100..400).map(row).collect(), Producer::Native).expect("put");
    let delivery = format!(
        r#"{source}
[delivery.rows]
stream = "amounts"
buffer-size = "1KiB"
buffer-interval = "15m"
lake = "lake"

[delivery.rows.warehouse]
database = "rows.db"
table = "amounts"
columns = ["n"]
"#
    );
    let mut host = host.restart(&delivery).await.expect("restart");
    host.wait_until("the children's full buffers", |s| s.deliveries[0].rows_loaded >= 100).await;
    host.stop().await;
    let db = rusqlite::Connection::open(host.path("rows.db")).expect("open");
    let loaded: Vec<i64> = db
        .prepare("SELECT n FROM amounts ORDER BY rowid")
        .and_then(|mut q| q.query_map([], |r| r.get(0))?.collect())
        .expect("rows");
    assert_eq!(loaded.len(), 303, "every record once");
    assert_eq!(&loaded[..3], &[0, 1, 2], "the parent's records are loaded first, though under the size threshold");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_whose_plan_cannot_be_written_waits_for_it() {
    let manifest = r#"
[pipeline]
name = "plans"
data-dir = "data"

[delivery.d]
lake = "lake"
buffer-interval = "100ms"
"#;
    let host = TestHost::start(manifest).await.expect("start");
    // The folder of the delivery plans becomes a file: no plan can be written.
    let plans = host.path("data/delivery-state");
    std::fs::remove_dir_all(&plans).expect("remove the plans folder");
    std::fs::write(&plans, "in the way").expect("a file in its place");
    host.host.deliver("d", vec![record("a", None), record("b", None)]).expect("deliver");
    let plan_failed = |s: &PipelineStatus| {
        s.deliveries[0].last_error.as_deref().is_some_and(|e| e.contains("cannot record the delivery plan"))
    };
    host.wait_until("the failed plan write", plan_failed).await;
    host.wait_until("the delivery backing off", |s| s.deliveries[0].phase == Phase::BackingOff).await;
    assert_eq!(host.host.status().deliveries[0].objects, 0, "no object is written without its plan");
    std::fs::remove_file(&plans).expect("remove the file");
    std::fs::create_dir_all(&plans).expect("the plans folder again");
    host.wait_until("the delivery", |s| s.deliveries[0].records_delivered == 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_loading_on_two_lanes_never_leaves_an_older_checkpoint_last() {
    // Into PostgreSQL, two batches load at once and may finish in either order. If
    // both lanes wrote their checkpoints at once, the earlier position could be the
    // one left on disk: a restart would stage the batches after it again, with other
    // bounds (other keys), and load them twice.
    let url = postgres_database().await;
    postgres(&url).await.batch_execute("CREATE TABLE amounts (n bigint)").await.expect("table");
    let manifest = format!(
        r#"
[pipeline]
name = "two-lanes"
data-dir = "data"

[sources.http]
kind = "http"
stream = "amounts"

[streams.amounts]

[delivery.rows]
stream = "amounts"
buffer-size = "1KiB"
buffer-interval = "10ms"
lake = "lake"

[delivery.rows.warehouse]
kind = "postgres"
database = "{url}"
table = "amounts"
columns = ["n"]
"#
    );
    let (options, store) = faulty();
    let host = TestHost::start_with(tempfile::tempdir().expect("tempdir"), &manifest, "127.0.0.1:0", options)
        .await
        .expect("start");
    let store = store.get().expect("the faulty store").clone();
    store.jitter_checkpoints(std::time::Duration::from_millis(3));
    let row = |n: usize| record(&format!("{{\"n\":{n}}}"), None);
    for chunk in 0..40 {
        host.host.put("amounts", (chunk * 100..chunk * 100 + 100).map(row).collect(), Producer::Native).expect("put");
    }
    host.wait_until("every row loaded", |s| s.deliveries[0].rows_loaded == 4000).await;
    // A batch is checkpointed after its load: the last checkpoints may still be on their way.
    let checkpointed =
        |s: &PipelineStatus| s.consumers.iter().filter(|c| c.stream == "amounts").all(|c| c.lag_records == 0);
    host.wait_until("every batch checkpointed", checkpointed).await;
    let written: Vec<u64> = store.checkpoints_written().into_iter().filter(|c| c.0 == "amounts").map(|c| c.3).collect();
    assert!(written.len() > 20, "many batches were checkpointed: {written:?}");
    assert!(written.windows(2).all(|w| w[0] <= w[1]), "a checkpoint went back: {written:?}");
    assert_eq!(written.last(), Some(&4000), "the last checkpoint is past every record");
}
