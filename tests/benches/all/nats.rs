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
//! 3. The showcase's day (seed 7: the whole day, the day until 02:00 with
//!    `--quick`) on one, two and three `weir run` hosts sharing the cluster,
//!    beside one host on the local disk: the shipped manifest, with `[storage]`
//!    added for the cluster and the windows' idle timeout at 1 s (a fixed wait), sent with the thresholds as `weir simulate --to`
//!    sends them to the first host, then one line of each station from the
//!    next day (which closes the day's last windows); timed from the first
//!    threshold sent until both aggregators closed the day's windows, every
//!    consumer (stage and delivery) has read everything, the streams stand
//!    still and every well-formed line is a warehouse row. Lines/s ÷ the local host's, how busy the two cores were
//!    meanwhile, and how many messages the cluster stored (what its synced
//!    writes alone take, at the rate measured in 1).
//!
//! All of it runs on the same two cores and one disk: the three servers, the client
//! and the producers share them, so the NATS figures are what one small
//! machine gives, not what three would. With `sync_interval: always` a server
//! syncs each record it writes (an atomic batch too is written record by
//! record), so three servers on one disk share its sync rate: that, not weir's
//! client, bounds the NATS put rate here.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::nats::{NatsSettings, NatsStreams};
use weir_host::stream::{DiskStreams, FileSyncer, NewRecord, StreamError, StreamSettings, StreamStore};
use weir_tests::ChildHost;
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

/// Midnight UTC of the showcase's day.
const DAY: i64 = 1_795_564_800_000;

/// Busy and total jiffies of all cores so far (`/proc/stat`).
fn cpu_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let times: Vec<u64> = stat
        .lines()
        .next()
        .map(|l| l.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    let total: u64 = times.iter().sum();
    // idle and iowait
    let idle = times.get(3).copied().unwrap_or(0) + times.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// How the day went on one set of hosts.
struct DayRun {
    took: Duration,
    rows: usize,
    /// Share of both cores busy meanwhile.
    busy: f64,
    /// Messages the cluster stored, if it ran on one.
    stored: Option<u64>,
}

/// The day's `lines` on `hosts` `weir run` processes of the shipped manifest
/// with `storage` added, sent by `weir simulate --to` the first; see the module docs.
fn day_on(
    runtime: &tokio::runtime::Runtime,
    hosts: usize,
    cluster: Option<&NatsCluster>,
    lines: &[weir_host::simulate::TollLine],
    day_end: i64,
) -> DayRun {
    let dir = tempfile::tempdir_in(weir_tests::root().join("target")).expect("tempdir on the project's disk");
    let top = dir.path();
    let (_desk, hook) = runtime.block_on(weir_tests::operations_desk());
    let storage = cluster.map_or(String::new(), |cluster| {
        let servers: Vec<String> = cluster.servers().iter().map(|s| format!("{s:?}")).collect();
        format!("\n[storage]\nbackend = \"nats\"\nservers = [{}]\n", servers.join(", "))
    });
    let manifest = weir_tests::showcase_manifest(top, "1s", &hook) + &storage;
    // Windows wait for a source's other producers, and close past idle sources, after
    // one second, not thirty: a fixed wait, the same on any store, that would be most
    // of a small day's time.
    for fragment in ["billing.toml", "traffic.toml"] {
        let path = top.join("abc-tolls").join(fragment);
        let text = std::fs::read_to_string(&path).expect("a fragment");
        assert!(text.contains("idle-timeout = \"30s\""), "{fragment} has an idle timeout");
        std::fs::write(&path, text.replace("idle-timeout = \"30s\"", "idle-timeout = \"1s\"")).expect("write");
    }
    let children: Vec<ChildHost> = (0..hosts).map(|i| ChildHost::start(top, &format!("host-{i}"), &manifest)).collect();
    let logs = || children.iter().map(ChildHost::logged).collect::<Vec<_>>().join("\n----\n");
    let deadline = Instant::now() + Duration::from_secs(120);
    for child in &children {
        while runtime.block_on(child.status()).is_none() {
            assert!(Instant::now() < deadline, "a host did not start:\n{}", logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let expected: BTreeSet<&str> =
        lines.iter().filter(|l| l.text.split(',').count() == 8).filter_map(|l| l.text.split(',').next()).collect();
    let warehouse = top.join("out").join("warehouse.db");
    let rows = || -> usize {
        let Ok(db) = rusqlite::Connection::open(&warehouse) else { return 0 };
        db.query_row("SELECT count(*) FROM toll_transactions", [], |r| r.get::<_, i64>(0)).map_or(0, |n| n as usize)
    };
    let (busy_before, total_before) = cpu_jiffies();
    let started = Instant::now();
    let client = weir_host::client::Client::new(&children[0].url()).expect("a client");
    let refused = runtime.block_on(weir_host::simulate::send_day(client, lines, |_| {})).expect("send the day");
    assert_eq!(refused, 0, "lines refused:\n{}", logs());
    // Done: every line in, the day's windows closed, every stage and delivery read
    // everything, the streams stood still for half a second, and every well-formed
    // line is a row.
    let deadline = Instant::now() + Duration::from_secs(1800);
    let mut last: Option<(serde_json::Value, Duration)> = None;
    let took = loop {
        assert!(Instant::now() < deadline, "the day did not settle in 30 minutes:\n{}", logs());
        std::thread::sleep(Duration::from_millis(500));
        let statuses: Vec<serde_json::Value> =
            children.iter().filter_map(|child| runtime.block_on(child.status())).collect();
        let Some(status) = statuses.first().filter(|_| statuses.len() == children.len()) else { continue };
        // Both aggregators, on whichever host runs them, closed the day's windows.
        let closed = ["billing-sum", "traffic-count"].iter().all(|stage| {
            statuses.iter().any(|s| {
                let all = s["stages"].as_array().cloned().unwrap_or_default();
                all.iter().any(|st| {
                    st["name"] == *stage
                        && st["shard_holders"][0] == s["host"]
                        && st["windows"]["watermark_ms"].as_i64().is_some_and(|w| w >= day_end)
                })
            })
        });
        // Every stage and delivery among the consumers, none behind.
        let names = |kind: &str, prefix: &str| -> Vec<String> {
            let all = status[kind].as_array().cloned().unwrap_or_default();
            all.iter().filter_map(|s| s["name"].as_str().map(|n| format!("{prefix}{n}"))).collect()
        };
        let consumers = status["consumers"].as_array().cloned().unwrap_or_default();
        let read_all = names("stages", "")
            .into_iter()
            .chain(names("deliveries", "delivery-"))
            .all(|name| consumers.iter().any(|c| c["consumer"] == name.as_str()))
            && consumers.iter().all(|c| c["lag_records"] == 0);
        let all_in = status["streams"]["toll-lines"].as_u64() == Some(lines.len() as u64);
        let now = (status["streams"].clone(), started.elapsed());
        if !(read_all && all_in && closed && rows() >= expected.len()) {
            last = None;
            continue;
        }
        match last.take() {
            Some((streams, at)) if streams == now.0 => break at,
            _ => last = Some(now),
        }
    };
    let (busy_after, total_after) = cpu_jiffies();
    let busy = (busy_after - busy_before) as f64 / (total_after - total_before).max(1) as f64;
    assert_eq!(rows(), expected.len(), "one row per well-formed line");
    let stored = cluster.and_then(|cluster| runtime.block_on(cluster.messages_stored()));
    DayRun { took, rows: rows(), busy, stored }
}

/// One line of each station from 02:00 the next day, sent after the day: every
/// station's watermark passes the day's last windows at once, as the next day's
/// traffic closes them, rather than the clock half a minute or a minute later
/// (an idle source's watermark follows the clock).
fn closing_bell() -> Vec<weir_host::simulate::TollLine> {
    let next = DAY + 24 * 3_600_000;
    let mut stations = BTreeSet::new();
    weir_host::simulate::generate_day(7, next)
        .into_iter()
        .filter(|l| l.time_ms >= next + 2 * 3_600_000 && l.text.split(',').count() == 8 && stations.insert(l.station))
        .collect()
}

/// The showcase's day on the local disk and on 1, 2 and 3 hosts sharing a cluster.
fn showcase_day(size: Size, runtime: &tokio::runtime::Runtime, synced_writes: f64, report: &mut Report) {
    let until = DAY + size.pick(24, 2) * 3_600_000;
    let lines: Vec<_> = weir_host::simulate::generate_day(7, DAY).into_iter().filter(|l| l.time_ms < until).collect();
    println!("the showcase's day until {}: {} lines", weir_host::time::format_ms(until), lines.len());
    let day = lines.len();
    let lines: Vec<_> = lines.into_iter().chain(closing_bell()).collect();
    let local = day_on(runtime, 1, None, &lines, until);
    let rate = |run: &DayRun| day as f64 / run.took.as_secs_f64();
    println!(
        "1 host, local disk: {:.1?}, {:.0} lines/s, {} rows; cores {:.0}% busy",
        local.took,
        rate(&local),
        local.rows,
        local.busy * 100.0
    );
    for hosts in 1..=3 {
        let cluster = runtime.block_on(NatsCluster::start(3));
        let run = day_on(runtime, hosts, Some(&cluster), &lines, until);
        println!(
            "{hosts} host(s), NATS: {:.1?}, {:.0} lines/s, {} rows; cores {:.0}% busy ({:.2} of the local host's rate)",
            run.took,
            rate(&run),
            run.rows,
            run.busy * 100.0,
            rate(&run) / rate(&local)
        );
        if let Some(stored) = run.stored {
            // What the servers' synced writes alone take, at the rate measured above.
            println!(
                "   the cluster stored {stored} messages (records, state and position changes): {:.0} s at {synced_writes:.0} synced writes/s",
                stored as f64 / synced_writes
            );
        }
        report.rows.push(Row::rates(
            format!("the showcase's day on {hosts} host(s) sharing NATS (3 nodes, R3) ÷ 1 host on the local disk"),
            Figure::PerSecond(rate(&run), "lines"),
            Figure::PerSecond(rate(&local), "lines"),
            "1 host, local disk",
            Target::Report,
        ));
        drop(cluster);
    }
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
    let mut synced_writes: f64 = 0.0;
    for producers in [1, 8] {
        let (mut on_nats, mut on_disk) = (Vec::new(), Vec::new());
        for turn in 0..turns {
            on_nats.push(puts(&nats, &format!("puts-{producers}-{turn}"), producers, seconds));
            on_disk.push(puts(&local, &format!("puts-{producers}-{turn}"), producers, seconds));
        }
        let (n, d) = (median(&on_nats), median(&on_disk));
        synced_writes = synced_writes.max(n);
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
    drop(cluster);
    showcase_day(size, &runtime, synced_writes, report);
    drop(runtime);
}
