//! Durable put throughput and put-to-consumer latency, measured in one run.
//!
//! 1. `PutRecords`-sized batches (500 records of 150 bytes) appended to a
//!    durable stream with fsync `always`, `group` and `never`, from 1 and from
//!    8 concurrent producers, beside a raw loop that appends the same batch to a
//!    file and calls `fdatasync`, on the same disk. Prints records/s and the
//!    ratio to the raw loop.
//! 2. What deduplication costs: the same durable puts (fsync `group`), each record
//!    with an id of its own at the start of its payload as toll lines have, into a
//!    stream that declares `deduplicate = { id-pattern = "^([^,]+)," }` and into
//!    one that does not. Prints records/s and the ratio with / without.
//! 3. Single-record puts through the HTTP API on loopback, timed until an
//!    in-process consumer sees them: p50/p99 with the default policy; and
//!    what recording the metrics adds to each of those puts, as a share of the p50.
//!
//! Run: `cargo bench -p weir-tests --bench streams --profile dev`

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::dedup::{DedupSpec, DedupStore, Identity};
use weir_host::stream::{
    DEFAULT_FSYNC_INTERVAL, DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy, NewRecord, StreamStore,
};
use weir_tests::TestHost;

const BATCH: usize = 500;
const RECORD: usize = 150;

fn batch(producer: usize) -> Vec<NewRecord> {
    (0..BATCH)
        .map(|i| NewRecord {
            source: None,
            key: format!("p{producer}-{i}"),
            event_time_ms: Some(1_795_000_000_000),
            data: Bytes::from(vec![b'x'; RECORD]),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect()
}

/// Appends the same bytes a put writes, then fdatasync, in a loop.
fn raw_loop(dir: &std::path::Path, seconds: f64) -> f64 {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("raw.log")).expect("open raw");
    let bytes = vec![b'x'; BATCH * (RECORD + 30)];
    let start = Instant::now();
    let mut records = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        file.write_all(&bytes).expect("write");
        file.sync_data().expect("fdatasync");
        records += BATCH;
    }
    records as f64 / start.elapsed().as_secs_f64()
}

fn durable(dir: &std::path::Path, fsync: FsyncPolicy, producers: usize, seconds: f64) -> f64 {
    let specs = vec![DiskStreamSpec::new("bench", usize::MAX, fsync)];
    let store = Arc::new(DiskStreams::open(dir, &specs, Arc::new(FileSyncer)).expect("open"));
    let start = Instant::now();
    let producers: Vec<_> = (0..producers)
        .map(|p| {
            let store = store.clone();
            std::thread::spawn(move || {
                // Built once, like the raw loop's bytes; a clone shares the payloads.
                let records = batch(p);
                let mut n = 0usize;
                while start.elapsed().as_secs_f64() < seconds {
                    store.append("bench", records.clone()).expect("append");
                    n += BATCH;
                }
                n
            })
        })
        .collect();
    let total: usize = producers.into_iter().map(|p| p.join().expect("producer")).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

/// A put of records each with an id of its own (`T<producer>-<n>,` then padding).
fn fresh_batch(producer: usize, next: &mut u64) -> Vec<NewRecord> {
    (0..BATCH)
        .map(|i| {
            let mut data = format!("T{producer:02}-{next:012},").into_bytes();
            data.resize(RECORD, b'x');
            *next += 1;
            NewRecord {
                source: None,
                key: format!("p{producer}-{i}"),
                event_time_ms: Some(1_795_000_000_000),
                data: Bytes::from(data),
                explicit_hash_key: None,
                attributes: Vec::new(),
            }
        })
        .collect()
}

/// Durable puts (fsync `group`) of records with fresh ids, into a stream that
/// deduplicates by them or not; records/s.
fn with_ids(dir: &std::path::Path, producers: usize, seconds: f64, deduplicate: bool) -> f64 {
    let specs = vec![DiskStreamSpec::new("bench", usize::MAX, FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL))];
    let disk: Arc<dyn StreamStore> = Arc::new(DiskStreams::open(dir, &specs, Arc::new(FileSyncer)).expect("open"));
    let store: Arc<dyn StreamStore> = if deduplicate {
        let spec = DedupSpec {
            identity: Identity::Pattern(regex::bytes::Regex::new("^([^,]+),").expect("regex")),
            horizon: Duration::from_secs(7 * 24 * 3600),
        };
        let clock: weir_host::stream::Clock = Arc::new(weir_host::stream::now_ms);
        Arc::new(DedupStore::open(disk, vec![("bench".to_owned(), spec)], clock).expect("open"))
    } else {
        disk
    };
    let start = Instant::now();
    let producers: Vec<_> = (0..producers)
        .map(|p| {
            let store = store.clone();
            std::thread::spawn(move || {
                let mut next = 0u64;
                while start.elapsed().as_secs_f64() < seconds {
                    let answers = store.append("bench", fresh_batch(p, &mut next)).expect("append");
                    assert!(answers.iter().all(Result::is_ok), "a record was refused");
                }
                next as usize
            })
        })
        .collect();
    let total: usize = producers.into_iter().map(|p| p.join().expect("producer")).sum();
    total as f64 / start.elapsed().as_secs_f64()
}

fn latency() -> (Duration, Duration, usize) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let manifest = "[pipeline]\nname = \"latency\"\ndata-dir = \"data\"\n\n[sources.http]\nkind = \"http\"\nstream = \"s\"\n\n[streams.s]\n";
        let mut host = TestHost::start(manifest).await.expect("start");
        let store = host.host.streams();
        let client = reqwest::Client::new();
        let url = format!("{}/v1/streams/s/records", host.url);
        let mut samples = Vec::new();
        for i in 0..500u64 {
            let store = store.clone();
            let consumer = tokio::task::spawn_blocking(move || {
                store.wait_for("s", 0, i, 1, Duration::from_secs(10)).expect("wait");
                Instant::now()
            });
            let sent = Instant::now();
            let response = client
                .post(&url)
                .json(&serde_json::json!({"partition_key": "k", "data": "x".repeat(RECORD)}))
                .send()
                .await
                .expect("put");
            assert!(response.status().is_success());
            let seen = consumer.await.expect("consumer");
            samples.push(seen.duration_since(sent));
        }
        host.stop().await;
        samples.sort();
        (samples[samples.len() / 2], samples[samples.len() * 99 / 100], samples.len())
    })
}

fn main() {
    let seconds: f64 = std::env::var("WEIR_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3.0);
    let dir = tempfile::tempdir_in(weir_tests::root().join("target")).expect("tempdir on the project's disk");
    println!("durable puts: {BATCH} records of {RECORD} bytes per put, {seconds} s each, same disk");
    let raw = raw_loop(dir.path(), seconds);
    println!("{:>28}  {:>12.0} records/s", "raw append + fdatasync loop", raw);
    for producers in [1, 8] {
        for (name, policy) in [
            ("fsync always", FsyncPolicy::Always),
            ("fsync group (5ms, default)", FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL)),
            ("fsync never", FsyncPolicy::Never),
        ] {
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            let rate = durable(sub.path(), policy, producers, seconds);
            println!("{name:>28}  {rate:>12.0} records/s  {:>6.2} x raw  ({producers} producer(s))", rate / raw);
        }
    }
    println!("deduplication: {BATCH} records with ids of their own per put, fsync group");
    for producers in [1, 8] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            without.push(with_ids(sub.path(), producers, seconds, false));
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            with.push(with_ids(sub.path(), producers, seconds, true));
        }
        let median = |mut rates: Vec<f64>| {
            rates.sort_by(f64::total_cmp);
            rates[rates.len() / 2]
        };
        let (without, with) = (median(without), median(with));
        println!(
            "{:>28}  {without:>12.0} records/s  with: {with:>12.0} records/s  {:>6.2} x without  ({producers} producer(s), median of 3)",
            "without deduplicate",
            with / without
        );
    }
    let (p50, p99, n) = latency();
    println!("put-to-consumer latency over HTTP (default policy, {n} puts): p50 {p50:?}  p99 {p99:?}");
    let (per_put, _) = weir_tests::metrics_recording_cost();
    println!(
        "metrics recorded per put (its stream's counters): {per_put:?}, {:.3}% of that p50",
        per_put.as_secs_f64() / p50.as_secs_f64() * 100.0
    );
}
