//! Durable put throughput and put-to-consumer latency, measured in one run.
//!
//! 1. `PutRecords`-sized batches (500 records of 150 bytes) appended to a
//!    durable stream with fsync `group` (the default) from 1, 8 and 64
//!    concurrent producers, each turn beside a raw loop that appends the same
//!    batch to a file and calls `fdatasync`, on the same disk: records/s and the
//!    ratio to the raw loop (medians of three turns). Fsync `always` and `never`
//!    once each, for comparison.
//! 2. What deduplication costs: the same durable puts (fsync `group`), each record
//!    with an id of its own at the start of its payload as toll lines have, into a
//!    stream that declares `deduplicate = { id-pattern = "^([^,]+)," }` and into
//!    one that does not: records/s and the ratio with / without.
//! 3. Single-record puts through the HTTP API on loopback, each timed until an
//!    in-process consumer reads it: p50/p99 from one producer, and from 64
//!    producers putting 100 records/s each, and from those with fsync `never`
//!    (what the disk adds); the floor under them: the same 64 clients putting to
//!    an axum handler that only parses the body and hands the record to the
//!    consumer in memory; what recording the metrics adds to each put, as a
//!    share of the p50.
//! 4. The curve: 10×, 100× the records of the first point, put durably by one
//!    producer into a new stream: records/s and the resident memory it grew by.

use std::io::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::dedup::{DedupSpec, DedupStore, Identity};
use weir_host::stream::{
    DEFAULT_FSYNC_INTERVAL, DiskStreamSpec, DiskStreams, FileSyncer, FsyncPolicy, NewRecord, StreamStore,
};
use weir_tests::TestHost;

use crate::table::{Curve, Figure, Point, Row, Size, Target, median, quantile};
use crate::{Report, resident_bytes};

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
    // A new file each turn, as each durable turn has a new stream.
    let mut file = std::fs::File::create(dir.join("raw.log")).expect("create raw");
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

/// Durable puts of `records` records (fsync `group`) by one producer into a new
/// stream; records/s and the resident memory the process grew by.
fn volume(dir: &std::path::Path, records: usize) -> Point {
    let specs = vec![DiskStreamSpec::new("bench", usize::MAX, FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL))];
    let before = resident_bytes();
    let store = DiskStreams::open(dir, &specs, Arc::new(FileSyncer)).expect("open");
    let batch = batch(0);
    let started = Instant::now();
    for _ in 0..records.div_ceil(BATCH) {
        store.append("bench", batch.clone()).expect("append");
    }
    let rate = (records.div_ceil(BATCH) * BATCH) as f64 / started.elapsed().as_secs_f64();
    let grown = resident_bytes().saturating_sub(before);
    drop(store);
    Point {
        work: records as u64,
        rate: Figure::PerSecond(rate, "records"),
        memory: Figure::Megabytes(grown as f64 / 1e6),
    }
}

/// Where the single-record puts go: weir's HTTP API, or the floor under it.
#[derive(Clone, Copy)]
enum Server<'a> {
    /// A weir host whose stream has this `fsync` setting; the consumer reads its shard.
    Weir { fsync: &'a str },
    /// An axum handler that parses the same JSON body and hands the record to the
    /// consumer in memory: no stream, no disk. What 64 HTTP clients and a server on
    /// the same two cores cost by themselves.
    Floor,
}

/// Put-to-consumer times of single-record puts over HTTP: `producers` tasks, each
/// putting one record every `every` for `seconds`, and a consumer thread that takes
/// records as they become readable. Each record carries when it was sent.
fn latency(producers: usize, every: Duration, seconds: f64, server: Server<'_>) -> Vec<Duration> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        let origin = Instant::now();
        let age = move |data: &[u8]| {
            let sent: u64 = std::str::from_utf8(&data[..20]).ok().and_then(|t| t.parse().ok()).expect("a time");
            origin.elapsed().saturating_sub(Duration::from_nanos(sent))
        };
        let last = Duration::from_secs_f64(seconds) + Duration::from_secs(1);
        let (url, consumer, host) = match server {
            Server::Weir { fsync } => {
                let manifest = format!(
                    "[pipeline]\nname = \"latency\"\ndata-dir = \"data\"\n\n[sources.http]\nkind = \"http\"\nstream = \"s\"\n\n[streams.s]\nfsync = \"{fsync}\"\n"
                );
                let host = TestHost::start(&manifest).await.expect("start");
                let store = host.host.streams();
                let consumer = std::thread::spawn(move || {
                    let (mut next, mut samples) = (0u64, Vec::new());
                    while origin.elapsed() < last + Duration::from_secs(9) {
                        if store.wait_for("s", 0, next, 1, Duration::from_millis(100)).expect("wait") == 0 {
                            if origin.elapsed() > last {
                                break;
                            }
                            continue;
                        }
                        for record in store.read("s", 0, next, 10_000).expect("read") {
                            samples.push(age(&record.data));
                            next = record.sequence + 1;
                        }
                    }
                    samples
                });
                (format!("{}/v1/streams/s/records", host.url), consumer, Some(host))
            }
            Server::Floor => {
                let (tx, rx) = std::sync::mpsc::channel::<Bytes>();
                let put = move |body: Bytes| {
                    let tx = tx.clone();
                    async move {
                        let put: serde_json::Value = serde_json::from_slice(&body).expect("a JSON body");
                        let data = put["data"].as_str().expect("data");
                        tx.send(Bytes::copy_from_slice(data.as_bytes())).expect("the consumer takes it");
                        axum::Json(serde_json::json!({"shard": 0, "sequence": 0}))
                    }
                };
                let app = axum::Router::new().route("/records", axum::routing::post(put));
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
                let addr = listener.local_addr().expect("addr");
                tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
                let consumer = std::thread::spawn(move || {
                    let mut samples = Vec::new();
                    while let Ok(data) = rx.recv_timeout(last.saturating_sub(origin.elapsed()).max(Duration::from_millis(100))) {
                        samples.push(age(&data));
                    }
                    samples
                });
                (format!("http://{addr}/records"), consumer, None)
            }
        };
        let client = reqwest::Client::new();
        let tasks: Vec<_> = (0..producers)
            .map(|p| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut sent = 0usize;
                    while origin.elapsed().as_secs_f64() < seconds {
                        tick.tick().await;
                        let mut data = format!("{:020}", origin.elapsed().as_nanos());
                        data.extend(std::iter::repeat_n('x', RECORD - 20));
                        let response = client
                            .post(&url)
                            .json(&serde_json::json!({"partition_key": format!("p{p}"), "data": data}))
                            .send()
                            .await
                            .expect("put");
                        assert!(response.status().is_success());
                        sent += 1;
                    }
                    sent
                })
            })
            .collect();
        let mut sent = 0;
        for task in tasks {
            sent += task.await.expect("producer");
        }
        let samples = tokio::task::spawn_blocking(move || consumer.join().expect("consumer")).await.expect("join");
        assert_eq!(samples.len(), sent, "the consumer read every record put");
        if let Some(mut host) = host {
            host.stop().await;
        }
        samples
    })
}

pub fn run(size: Size, report: &mut Report) {
    let seconds: f64 =
        std::env::var("WEIR_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(size.pick(2.0, 0.2));
    let turns = size.pick(3, 1);
    let dir = tempfile::tempdir_in(weir_tests::root().join("target")).expect("tempdir on the project's disk");
    println!("durable puts: {BATCH} records of {RECORD} bytes per put, {seconds} s each, same disk");
    let group = FsyncPolicy::Group(DEFAULT_FSYNC_INTERVAL);
    for producers in [1, 8, 64] {
        let (mut raws, mut durables) = (Vec::new(), Vec::new());
        for _ in 0..turns {
            raws.push(raw_loop(dir.path(), seconds));
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            durables.push(durable(sub.path(), group, producers, seconds));
        }
        let (raw, rate) = (median(&raws), median(&durables));
        println!(
            "{:>28}  {rate:>12.0} records/s  {:>6.2} x raw ({raw:.0} records/s)  ({producers} producer(s), median of {turns})",
            "fsync group (5ms, default)",
            rate / raw
        );
        report.rows.push(Row::rates(
            format!("durable puts (fsync group) ÷ raw append + fdatasync, {producers} producer(s)"),
            Figure::PerSecond(rate, "records"),
            Figure::PerSecond(raw, "records"),
            "raw loop",
            Target::RatioAtLeast(0.95),
        ));
    }
    for (name, policy) in [("fsync always", FsyncPolicy::Always), ("fsync never", FsyncPolicy::Never)] {
        for producers in [1, 8] {
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            let rate = durable(sub.path(), policy, producers, seconds);
            println!("{name:>28}  {rate:>12.0} records/s  ({producers} producer(s))");
        }
    }
    println!("deduplication: {BATCH} records with ids of their own per put, fsync group");
    for producers in [1, 8] {
        let (mut without, mut with) = (Vec::new(), Vec::new());
        for _ in 0..turns {
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            without.push(with_ids(sub.path(), producers, seconds, false));
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            with.push(with_ids(sub.path(), producers, seconds, true));
        }
        let (without, with) = (median(&without), median(&with));
        println!(
            "{:>28}  {without:>12.0} records/s  with: {with:>12.0} records/s  {:>6.2} x without  ({producers} producer(s), median of {turns})",
            "without deduplicate",
            with / without
        );
        if producers == 8 {
            report.rows.push(Row::rates(
                "durable puts into a deduplicating stream ÷ without, 8 producers",
                Figure::PerSecond(with, "records"),
                Figure::PerSecond(without, "records"),
                "no deduplication",
                Target::Report,
            ));
        }
    }

    let group = Server::Weir { fsync: "group" };
    let alone = latency(1, Duration::from_millis(2), size.pick(2.0, 0.3), group);
    let (p50, p99) = (quantile(&alone, 0.5), quantile(&alone, 0.99));
    println!("put-to-consumer over HTTP, one producer ({} puts): p50 {p50:?}  p99 {p99:?}", alone.len());
    let loaded = latency(64, Duration::from_millis(10), size.pick(5.0, 0.3), group);
    let (loaded50, loaded99) = (quantile(&loaded, 0.5), quantile(&loaded, 0.99));
    println!(
        "put-to-consumer over HTTP, 64 producers at 100 puts/s each ({} puts): p50 {loaded50:?}  p99 {loaded99:?}",
        loaded.len()
    );
    // The same load without fsync: what the disk adds, and what the HTTP puts cost alone.
    let unsynced = latency(64, Duration::from_millis(10), size.pick(5.0, 0.3), Server::Weir { fsync: "never" });
    let (unsynced50, unsynced99) = (quantile(&unsynced, 0.5), quantile(&unsynced, 0.99));
    println!("the same with fsync never: p50 {unsynced50:?}  p99 {unsynced99:?}");
    // The same clients against a server that does nothing but parse and hand over.
    let floor = latency(64, Duration::from_millis(10), size.pick(5.0, 0.3), Server::Floor);
    let (floor50, floor99) = (quantile(&floor, 0.5), quantile(&floor, 0.99));
    println!("the same clients to an in-memory axum handler: p50 {floor50:?}  p99 {floor99:?}");
    report.rows.push(Row::figure(
        "put-to-consumer p99 over HTTP, one producer",
        Figure::Time(p99),
        Target::TimeAtMost(Duration::from_millis(1)),
    ));
    report.rows.push(Row::beside(
        "put-to-consumer p99 over HTTP, 64 producers putting",
        Figure::Time(loaded99),
        Figure::Time(floor99),
        "the same clients to an in-memory axum handler",
        Target::TimeAtMost(Duration::from_millis(1)),
    ));
    report.rows.push(Row::figure(
        "the same with fsync never (what the disk adds)",
        Figure::Time(unsynced99),
        Target::Report,
    ));
    let (per_put, _) = weir_tests::metrics_recording_cost();
    println!(
        "metrics recorded per put (its stream's counters): {per_put:?}, {:.3}% of the one producer's p50",
        per_put.as_secs_f64() / p50.as_secs_f64() * 100.0
    );

    let first = size.pick(50_000, 1_000);
    let points: Vec<Point> = [first, first * 10, first * 100]
        .into_iter()
        .map(|records| {
            let sub = tempfile::tempdir_in(dir.path()).expect("tempdir");
            volume(sub.path(), records)
        })
        .collect();
    for p in &points {
        println!("{} records put durably by one producer: {}, resident grew {}", p.work, p.rate, p.memory);
    }
    report.curves.push(Curve {
        measure: "durable puts, one producer, fsync group".to_owned(),
        unit: "records",
        points,
    });
}
