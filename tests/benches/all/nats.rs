//! The streams on NATS JetStream beside the local disk store, in one run, on
//! one machine: a three-node cluster on loopback (each shard kept on all three,
//! every write synced: `sync_interval: always`), the same calls on both stores.
//!
//! 1. `PutRecords`-sized batches (500 records of 150 bytes) into a one-shard
//!    stream from 1 and 8 producers: records/s on NATS ÷ on the local disk
//!    (fsync `group`, the default), medians of the turns, taken back to back.
//! 2. Put-to-read latency: one producer appending single records 200 times a
//!    second, a reader waiting for them as a stage does (`wait_for`, `read`):
//!    p50 and p99 on each store.
//!
//! Both run on the same two cores and one disk: the three servers, the client
//! and the producers share them, so the NATS figures are what one small
//! machine gives, not what three would. With `sync_interval: always` a server
//! syncs each record it writes (an atomic batch too is written record by
//! record), so three servers on one disk share its sync rate: that, not weir's
//! client, bounds the NATS put rate here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::nats::{NatsSettings, NatsStreams};
use weir_host::stream::{DiskStreams, FileSyncer, NewRecord, StreamError, StreamSettings, StreamStore};
use weir_tests::nats::NatsCluster;

use crate::Report;
use crate::table::{Figure, Row, Size, Target, median, quantile};

const BATCH: usize = 500;
const RECORD: usize = 150;

fn record(key: String) -> NewRecord {
    NewRecord {
        source: None,
        key,
        event_time_ms: Some(1_795_000_000_000),
        data: Bytes::from(vec![b'x'; RECORD]),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

/// Records/s appended by `producers` threads in `seconds` to a new one-shard stream `name`.
fn puts(store: &Arc<dyn StreamStore>, name: &str, producers: usize, seconds: f64) -> f64 {
    let settings = StreamSettings { name: name.to_owned(), retention: Duration::from_secs(3600), shards: 1 };
    store.create(settings).expect("create");
    let start = Instant::now();
    let threads: Vec<_> = (0..producers)
        .map(|p| {
            let (store, name) = (store.clone(), name.to_owned());
            std::thread::spawn(move || {
                let records: Vec<NewRecord> = (0..BATCH).map(|i| record(format!("p{p}-{i}"))).collect();
                let mut n = 0usize;
                while start.elapsed().as_secs_f64() < seconds {
                    let results = store.append(&name, records.clone()).expect("append");
                    match results.iter().find_map(|r| r.as_ref().err()) {
                        // The disk store holds a million unread records: a fast run ends there.
                        Some(StreamError::Full { .. }) => break,
                        Some(e) => panic!("a put into `{name}` failed: {e}"),
                        None => n += BATCH,
                    }
                }
                n
            })
        })
        .collect();
    let total: usize = threads.into_iter().map(|t| t.join().expect("producer")).sum();
    let rate = total as f64 / start.elapsed().as_secs_f64();
    store.delete(name).expect("delete");
    rate
}

/// Put-to-read latencies of `count` single records put 200 times a second,
/// read by a thread waiting as a stage does.
fn latencies(store: &Arc<dyn StreamStore>, name: &str, count: usize) -> Vec<Duration> {
    let settings = StreamSettings { name: name.to_owned(), retention: Duration::from_secs(3600), shards: 1 };
    store.create(settings).expect("create");
    let reader = {
        let (store, name) = (store.clone(), name.to_owned());
        std::thread::spawn(move || {
            let mut seen = Vec::with_capacity(count);
            while seen.len() < count {
                let next = seen.len() as u64;
                store.wait_for(&name, 0, next, 1, Duration::from_secs(5)).expect("wait");
                for _ in store.read(&name, 0, next, count).expect("read") {
                    seen.push(Instant::now());
                }
            }
            seen
        })
    };
    let mut sent = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        // Paced: the i-th put goes at i × 5 ms.
        if let Some(wait) = (started + Duration::from_millis(5 * i as u64)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        sent.push(Instant::now());
        store.append(name, vec![record(format!("k{i}"))]).expect("append");
    }
    let seen = reader.join().expect("reader");
    store.delete(name).expect("delete");
    sent.iter().zip(seen).map(|(s, r)| r.saturating_duration_since(*s)).collect()
}

pub fn run(size: Size, report: &mut Report) {
    let (seconds, turns, count) = (size.pick(2.0, 0.2), size.pick(3, 1), size.pick(2000, 50));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let cluster = runtime.block_on(NatsCluster::start(3));
    let nats: Arc<dyn StreamStore> = Arc::new(
        NatsStreams::connect(NatsSettings::new(cluster.servers()), runtime.handle().clone())
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs())),
    );
    let dir = tempfile::tempdir_in(weir_tests::root().join("target")).expect("tempdir on the project's disk");
    let local: Arc<dyn StreamStore> = Arc::new(DiskStreams::open(dir.path(), &[], Arc::new(FileSyncer)).expect("open"));
    println!(
        "three NATS nodes on loopback, R3, sync always; {BATCH} records of {RECORD} bytes per put, {seconds} s each"
    );
    for producers in [1, 8] {
        let (mut on_nats, mut on_disk) = (Vec::new(), Vec::new());
        for turn in 0..turns {
            on_nats.push(puts(&nats, &format!("puts-{producers}-{turn}"), producers, seconds));
            on_disk.push(puts(&local, &format!("puts-{producers}-{turn}"), producers, seconds));
        }
        let (n, d) = (median(&on_nats), median(&on_disk));
        println!("{producers} producer(s): NATS {n:.0} records/s, local disk {d:.0} records/s: {:.2}", n / d);
        report.rows.push(Row::rates(
            format!("PutRecords-sized puts on NATS (3 nodes, R3) ÷ local disk, {producers} producer(s)"),
            Figure::PerSecond(n, "records"),
            Figure::PerSecond(d, "records"),
            "local disk",
            Target::Report,
        ));
    }
    let (on_nats, on_disk) = (latencies(&nats, "latency", count), latencies(&local, "latency", count));
    for (store, samples) in [("NATS", &on_nats), ("local disk", &on_disk)] {
        let (p50, p99) = (quantile(samples, 0.5), quantile(samples, 0.99));
        println!("put-to-read, one producer at 200/s, {store}: p50 {p50:.2?}, p99 {p99:.2?} ({count} records)");
    }
    report.rows.push(Row::beside(
        "put-to-read p99 on NATS (3 nodes, R3), one producer",
        Figure::Time(quantile(&on_nats, 0.99)),
        Figure::Time(quantile(&on_disk, 0.99)),
        "local disk",
        Target::Report,
    ));
    drop(nats);
    drop(runtime);
}
