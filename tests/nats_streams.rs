//! weir's streams on NATS JetStream behave as on the embedded disk store: the
//! same calls, run by one function against both, give the same answers. Then
//! what only a cluster can show: a second host reads and is woken by what the
//! first wrote, positions outlive the store that wrote them, and killing the
//! node that leads a shard while producers write loses no acknowledged record
//! and stores none twice. And how hosts share a consumer's shards by lease:
//! balanced, taken from a host that stopped renewing, fenced so that the host
//! that lost a lease cannot checkpoint it, let go of at once on a drain; three
//! `weir run` hosts sharing a stage while one is frozen and another killed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::nats::{NatsSettings, NatsStreams};
use weir_host::state::{Delivery, InboxMessage, OutboxEntry, Settle, StateError, StateStore};
use weir_host::stream::{
    Claim, DiskStreams, FileSyncer, NewRecord, Reshard, Sharing, StoredRecord, StreamError, StreamSettings,
    StreamStore, hash_key, shard_end,
};
use weir_tests::nats::NatsCluster;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime")
}

fn record(key: &str, data: &str) -> NewRecord {
    NewRecord {
        key: key.to_owned(),
        event_time_ms: Some(1_795_564_800_000),
        data: Bytes::copy_from_slice(data.as_bytes()),
        source: Some("agent-1".into()),
        explicit_hash_key: None,
        attributes: vec![("weir-test".to_owned(), data.to_owned())],
    }
}

fn settings(name: &str, shards: u32) -> StreamSettings {
    StreamSettings { name: name.to_owned(), retention: Duration::from_secs(3600), shards }
}

/// A shard's records from `from` to its end, read as a consumer reads: each
/// read gives up to what is asked (a NATS server may answer with fewer), and
/// the next goes on from where it ended. A read the cluster cannot answer for
/// now (a leader election) is tried again, for a minute at most.
fn read_to_end(store: &dyn StreamStore, stream: &str, shard: u32, from: u64) -> Vec<StoredRecord> {
    let end = store.end(stream, shard).expect("end");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut out: Vec<StoredRecord> = Vec::new();
    while out.last().map_or(from, |r| r.sequence + 1) < end {
        let position = out.last().map_or(from, |r| r.sequence + 1);
        match store.read(stream, shard, position, 10_000) {
            Ok(records) => {
                assert!(records.first().is_none_or(|r| r.sequence == position), "a read starts where it is asked");
                out.extend(records);
            }
            Err(StreamError::Unavailable { reason, .. }) if Instant::now() < deadline => {
                eprintln!("a read was unavailable ({reason}); tried again");
            }
            Err(e) => panic!("read {stream}/{shard} from {position}: {e}"),
        }
    }
    out
}

fn datas(records: &[StoredRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect()
}

/// The stream calls every backend answers alike; panics naming the backend.
fn behaves_as_a_stream_store(backend: &str, store: &dyn StreamStore) {
    let name = "tolls.in_1"; // a dot and an underscore: names NATS does not take as they are
    store.create(settings(name, 2)).unwrap_or_else(|e| panic!("{backend}: create: {e}"));
    assert!(store.list().contains(&name.to_owned()), "{backend}: listed");
    assert_eq!(store.create(settings(name, 2)), Err(StreamError::AlreadyExists(name.to_owned())), "{backend}");
    assert!(matches!(store.create(settings("../x", 1)), Err(StreamError::InvalidName(_))), "{backend}");
    assert_eq!(store.shard_count(name), Ok(2), "{backend}");
    assert!(store.lineage(name).expect("lineage").iter().all(|l| l.parents.is_empty() && l.closed_at.is_none()));

    // 50 keys, four records each: each key's records in one shard, in put order.
    let records: Vec<NewRecord> = (0..200).map(|i| record(&format!("plate-{}", i % 50), &format!("{i:03}"))).collect();
    let appended = store.append(name, records).unwrap_or_else(|e| panic!("{backend}: append: {e}"));
    let appended: Vec<_> = appended.into_iter().map(|r| r.unwrap_or_else(|e| panic!("{backend}: {e}"))).collect();
    let mut next = [0u64; 2];
    for (i, a) in appended.iter().enumerate() {
        let owner = u32::from(hash_key(&format!("plate-{}", i % 50)) > shard_end(0, 2));
        assert_eq!(a.shard, owner, "{backend}: record {i} goes to the shard owning its key's hash");
        assert_eq!(a.sequence, next[a.shard as usize], "{backend}: sequences are dense per shard");
        next[a.shard as usize] += 1;
    }
    for shard in 0..2u32 {
        let all = read_to_end(store, name, shard, 0);
        let expected: Vec<String> =
            appended.iter().enumerate().filter(|(_, a)| a.shard == shard).map(|(i, _)| format!("{i:03}")).collect();
        assert_eq!(datas(&all), expected, "{backend}: shard {shard} reads back in put order");
        let first = &all[0];
        assert_eq!((first.shard, first.sequence, first.event_time_ms), (shard, 0, 1_795_564_800_000), "{backend}");
        assert_eq!(first.source.as_deref(), Some("agent-1"), "{backend}");
        assert_eq!(first.attributes, vec![("weir-test".to_owned(), expected[0].clone())], "{backend}");
        assert!(first.arrival_ms > 0, "{backend}");
        // From a position, at most `max`, then on from where that ended.
        let middle = store.read(name, shard, 10, 5).expect("read");
        let sequences: Vec<u64> = middle.iter().map(|r| r.sequence).collect();
        assert!(!sequences.is_empty() && sequences.len() <= 5, "{backend}: at most what is asked: {sequences:?}");
        assert_eq!(sequences, (10..10 + sequences.len() as u64).collect::<Vec<_>>(), "{backend}");
        let rest = read_to_end(store, name, shard, 15);
        assert_eq!(datas(&rest), expected[15..].to_vec(), "{backend}");
        assert_eq!(store.end(name, shard), Ok(next[shard as usize]), "{backend}");
        assert_eq!(store.read(name, shard, next[shard as usize], 10).map(|r| r.len()), Ok(0), "{backend}");
        assert_eq!(store.position_at_time(name, shard, 0), Ok(0), "{backend}: at a time before all");
        assert_eq!(store.position_at_time(name, shard, i64::MAX), Ok(next[shard as usize]), "{backend}: after all");
        let at = all[7].arrival_ms;
        let position = store.position_at_time(name, shard, at).expect("at a time");
        assert!(position <= 7 && all[position as usize].arrival_ms >= at, "{backend}: {position}");
    }

    // Positions: a new consumer starts at the oldest; a checkpoint is where it resumes.
    assert_eq!(store.register_consumer(name, 1, "billing.v2"), Ok(0), "{backend}");
    store.checkpoint(name, 1, "billing.v2", 7).unwrap_or_else(|e| panic!("{backend}: checkpoint: {e}"));
    assert_eq!(store.register_consumer(name, 1, "billing.v2"), Ok(7), "{backend}");
    let info = store.info(name).expect("info");
    assert_eq!(info.shards[1].consumers, BTreeMap::from([("billing.v2".to_owned(), 7)]), "{backend}");
    assert_eq!(info.records(), 200, "{backend}");
    assert!(matches!(store.checkpoint(name, 1, "../x", 1), Err(StreamError::InvalidName(_))), "{backend}");

    // A waiter is woken by an append, and returns at its timeout when nothing comes.
    let end = store.end(name, 0).expect("end");
    assert_eq!(store.wait_for(name, 0, end, 1, Duration::from_millis(100)), Ok(0), "{backend}");
    let seen = store.changes(name).expect("changes");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| store.wait_for(name, 0, end, 1, Duration::from_secs(20)));
        let key = (0..).map(|i| format!("k{i}")).find(|k| hash_key(k) <= shard_end(0, 2)).expect("a key of shard 0");
        store.append(name, vec![record(&key, "late")]).expect("append");
        assert_eq!(waiter.join().expect("waiter"), Ok(1), "{backend}: woken by the append");
    });
    assert!(store.wait_change(name, seen, Duration::from_secs(20)).expect("changes") > seen, "{backend}");

    // Resharding: a split closes its parent where it ended; its hash keys go to the children.
    let parent_end = store.end(name, 0).expect("end");
    store.reshard(name, Reshard::Split { shard: 0, at: shard_end(0, 2) / 2 }).expect("split");
    let lineage = store.lineage(name).expect("lineage");
    assert_eq!(lineage.len(), 4, "{backend}");
    assert_eq!(lineage[0].closed_at, Some(parent_end), "{backend}");
    assert_eq!((lineage[2].parents.as_slice(), lineage[3].parents.as_slice()), (&[0][..], &[0][..]), "{backend}");
    let keys: Vec<String> = (0..40).map(|i| format!("after-{i}")).collect();
    let placed = store.append(name, keys.iter().map(|k| record(k, k)).collect()).expect("append");
    for (key, placed) in keys.iter().zip(placed) {
        let shard = placed.expect("stored").shard;
        let expected = match hash_key(key) {
            h if h > shard_end(0, 2) => 1,
            h if h < shard_end(0, 2) / 2 => 2,
            _ => 3,
        };
        assert_eq!(shard, expected, "{backend}: {key} goes to the open shard owning its hash");
    }
    assert_eq!(store.end(name, 0), Ok(parent_end), "{backend}: a closed shard takes nothing more");
    assert_eq!(read_to_end(store, name, 0, 0).len() as u64, parent_end, "{backend}: it is still read");
    assert!(matches!(store.reshard(name, Reshard::Split { shard: 0, at: 5 }), Err(StreamError::InvalidReshard(_))));
    assert!(matches!(
        store.reshard(name, Reshard::Merge { shard: 1, adjacent: 2 }),
        Err(StreamError::InvalidReshard(_))
    ));
    store.reshard(name, Reshard::Merge { shard: 2, adjacent: 3 }).expect("merge");
    store.reshard(name, Reshard::Uniform(3)).expect("uniform");
    let lineage = store.lineage(name).expect("lineage");
    assert_eq!(lineage[4].parents, vec![2, 3], "{backend}");
    assert_eq!((lineage.len(), lineage.iter().filter(|l| l.closed_at.is_none()).count()), (8, 3), "{backend}");
    assert_eq!(lineage[5].parents, vec![4], "{backend}: the lowest third came from the merged shard");
    let info = store.info(name).expect("info");
    assert_eq!(info.shards.iter().filter(|s| s.closed_at.is_none()).count(), 3, "{backend}");

    // Unknown things are named as such.
    assert!(matches!(store.read(name, 9, 0, 1), Err(StreamError::UnknownShard { .. })), "{backend}");
    assert!(matches!(store.read("nope", 0, 0, 1), Err(StreamError::UnknownStream(_))), "{backend}");

    store.delete(name).unwrap_or_else(|e| panic!("{backend}: delete: {e}"));
    assert!(!store.list().contains(&name.to_owned()), "{backend}");
    assert!(matches!(store.read(name, 0, 0, 1), Err(StreamError::UnknownStream(_))), "{backend}");
    // A stream made again under the name starts empty.
    store.create(settings(name, 1)).expect("create again");
    assert_eq!(store.end(name, 0), Ok(0), "{backend}");
    assert_eq!(store.register_consumer(name, 0, "billing.v2"), Ok(0), "{backend}: old positions are gone");
}

#[test]
fn the_disk_store_and_the_nats_store_answer_the_same_calls_alike() {
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = DiskStreams::open(dir.path(), &[], Arc::new(FileSyncer)).expect("disk store");
    behaves_as_a_stream_store("disk", &disk);

    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let nats = NatsStreams::connect(NatsSettings::new(cluster.servers()), runtime.handle().clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    behaves_as_a_stream_store("nats", &nats);
}

#[test]
fn a_second_host_reads_what_the_first_wrote_and_positions_outlive_the_store() {
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let connect = || {
        NatsStreams::connect(NatsSettings::new(cluster.servers()), runtime.handle().clone())
            .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
    };
    let (first, second) = (connect(), connect());
    first.ensure(&[settings("shared", 1)]).expect("create");
    assert_eq!(second.shard_count("shared"), Ok(1), "the second host sees the stream");
    std::thread::scope(|s| {
        let waiter = s.spawn(|| second.wait_for("shared", 0, 0, 3, Duration::from_secs(20)));
        first.append("shared", (0..3).map(|i| record("k", &i.to_string())).collect()).expect("append");
        assert_eq!(waiter.join().expect("waiter"), Ok(3), "the second host is woken by the first's records");
    });
    assert_eq!(datas(&read_to_end(&second, "shared", 0, 0)), vec!["0", "1", "2"]);
    first.checkpoint("shared", 0, "stage", 2).expect("checkpoint");
    drop(first);
    assert_eq!(connect().register_consumer("shared", 0, "stage"), Ok(2), "the position outlives its writer");
}

/// A host named `name` on `cluster`, with a 2 s lease timeout.
fn host(cluster: &NatsCluster, runtime: &tokio::runtime::Runtime, name: &str) -> Arc<NatsStreams> {
    let mut settings = NatsSettings::new(cluster.servers());
    settings.host = name.to_owned();
    settings.lease_timeout = Duration::from_secs(2);
    let store = NatsStreams::connect(settings, runtime.handle().clone());
    Arc::new(store.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs())))
}

/// The state tables and channels' records as a pipeline's stages and API use
/// them, on two hosts' views of one store (on the disk store, one host: the
/// same view twice).
fn behaves_as_state(backend: &str, a: &StateStore, b: &StateStore) {
    assert_eq!(a.add("totals", "C1", 275).expect("add"), 275, "{backend}");
    assert_eq!(b.add("totals", "C1", -75).expect("add"), 200, "{backend}: the other host adds to what the first wrote");
    a.put("totals", "C2", b"x").expect("put");
    assert!(matches!(b.add("totals", "C2", 1), Err(StateError::NotANumber { .. })), "{backend}");
    assert!(!a.put_if("totals", "C3", Some(b"1"), b"2").expect("put-if"), "{backend}: not equal, not written");
    assert!(b.put_if("totals", "C3", None, b"2").expect("put-if absent"), "{backend}");
    assert!(!a.put_if("totals", "C3", None, b"9").expect("put-if absent"), "{backend}: it exists now");
    assert!(a.put_if("totals", "C3", Some(b"2"), b"3").expect("put-if equal"), "{backend}");
    b.delete("totals", "C2").expect("delete");
    assert_eq!(a.get("totals", "C2").expect("get"), None, "{backend}: deleted for every host");
    assert_eq!(a.get("totals", "C3").expect("get").as_deref(), Some(&b"3"[..]), "{backend}");
    a.put_many("totals", [("odd key.with >*", &b"1"[..]), ("", &b"2"[..])]).expect("put many");
    assert_eq!(b.get("totals", "odd key.with >*").expect("get").as_deref(), Some(&b"1"[..]), "{backend}: any key");
    assert_eq!(b.get("totals", "").expect("get").as_deref(), Some(&b"2"[..]), "{backend}: even empty");
    assert_eq!(
        a.get("limits", "C1").expect_err("undeclared").to_string(),
        "no state table `limits`: declare it as [tables.limits] in the pipeline manifest"
    );

    // A transaction sees its own writes and commits all or nothing.
    let tx = a.begin().expect("begin");
    tx.put("totals", "T", b"1").expect("put");
    assert_eq!(tx.get("totals", "T").expect("get").as_deref(), Some(&b"1"[..]), "{backend}");
    assert_eq!(b.get("totals", "T").expect("get"), None, "{backend}: not seen before the commit");
    drop(tx);
    assert_eq!(b.get("totals", "T").expect("get"), None, "{backend}: dropped, undone");

    // A notification's key is sent once, whichever host sends it; inbox messages come in order.
    let message = |subject: &str| InboxMessage {
        channel: "app".into(),
        recipient: "C1".into(),
        subject: subject.into(),
        ..InboxMessage::default()
    };
    assert!(a.record_sent("app", "k1", Delivery::Inbox(message("first"))).expect("send"), "{backend}");
    assert!(!b.record_sent("app", "k1", Delivery::Inbox(message("again"))).expect("send"), "{backend}: a repeat");
    assert!(b.record_sent("app", "k2", Delivery::Inbox(message("second"))).expect("send"), "{backend}");
    assert!(a.record_sent("log", "k1", Delivery::None).expect("other channel"), "{backend}");
    let inbox = a.inbox("app", "C1", 0, 10).expect("inbox");
    let subjects: Vec<&str> = inbox.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, ["first", "second"], "{backend}");
    assert_eq!(b.inbox("app", "C1", inbox[0].sequence, 10).expect("after").len(), 1, "{backend}");
    assert_eq!(b.inbox("app", "C1", 0, 1).expect("limit").len(), 1, "{backend}");
    assert!(b.inbox("app", "C2", 0, 10).expect("other recipient").is_empty(), "{backend}");

    // A webhook delivery is taken by one host at a time, and settles once.
    let entry = OutboxEntry {
        delivery_id: "d1".into(),
        channel: "hook".into(),
        body: "{}".into(),
        first_ms: 1,
        next_ms: 1,
        ..OutboxEntry::default()
    };
    assert!(a.record_sent("hook", "k1", Delivery::Outbox(entry.clone())).expect("send"), "{backend}");
    let due = b.due_deliveries(10).expect("due");
    assert_eq!(due, std::slice::from_ref(&entry), "{backend}");
    assert!(b.take_delivery(&due[0], 1_000).expect("take"), "{backend}");
    if backend != "disk" {
        assert!(!a.take_delivery(&due[0], 1_000).expect("take"), "{backend}: another host does not take it too");
        assert!(a.due_deliveries(10).expect("due").is_empty(), "{backend}: not due while taken");
    }
    b.settle(&OutboxEntry { attempts: 1, last_error: Some("503".into()), ..entry.clone() }, Settle::GiveUp)
        .expect("settle");
    assert!(a.due_deliveries(i64::MAX).expect("due").is_empty(), "{backend}");
    assert_eq!(a.failed_deliveries("hook").expect("failed").len(), 1, "{backend}");

    // Hosts adding to one item at once lose no update.
    std::thread::scope(|s| {
        for store in [a, b] {
            s.spawn(move || {
                for _ in 0..50 {
                    store.add("totals", "hot", 1).expect("add");
                }
            });
        }
    });
    assert_eq!(a.get("totals", "hot").expect("get").as_deref(), Some(&b"100"[..]), "{backend}: every add counted");
}

#[test]
fn state_tables_and_channels_behave_alike_on_the_disk_and_shared_by_hosts_on_nats() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tables = || ["totals".to_owned()];
    let disk = StateStore::open(&dir.path().join("state.redb"), tables()).expect("open");
    behaves_as_state("disk", &disk, &disk);

    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let (nats_a, nats_b) = (host(&cluster, &runtime, "host-a"), host(&cluster, &runtime, "host-b"));
    let (a, b) = (StateStore::shared(nats_a.clone(), tables()), StateStore::shared(nats_b.clone(), tables()));
    behaves_as_state("nats", &a, &b);

    // The fence: a stage's changes commit only while its host holds the stage.
    nats_a.ensure(&[settings("alerts-in", 1)]).expect("create");
    let claim = |nats: &NatsStreams| nats.claim("alerts-in", "alerts", 1, Sharing::Single).expect("claim");
    assert_eq!(held(&claim(&nats_a)), vec![0], "a runs the stage");
    let fenced = |store: &StateStore, value: &[u8]| {
        let tx = store.begin_for(Some(("alerts-in", "alerts"))).expect("begin");
        tx.put("totals", "fenced", value)?;
        tx.commit()
    };
    fenced(&a, b"a1").expect("the holder commits");
    nats_a.checkpoint("alerts-in", 0, "alerts", 1).expect("the holder checkpoints under the lease");
    assert!(matches!(fenced(&b, b"b1"), Err(StateError::LeaseLost { .. })), "a host not running the stage cannot");
    // a stops renewing (frozen): b takes the stage after the lease timeout, and a's changes are refused.
    wait_until(Duration::from_secs(30), "b takes over the stage a stopped renewing", || claim(&nats_b).held[0]);
    let refused = fenced(&a, b"a2");
    assert!(matches!(refused, Err(StateError::LeaseLost { .. })), "a lost the stage: {refused:?}");
    assert_eq!(
        b.get("totals", "fenced").expect("get").as_deref(),
        Some(&b"a1"[..]),
        "the refused change wrote nothing"
    );
    assert!(
        matches!(nats_a.checkpoint("alerts-in", 0, "alerts", 9), Err(StreamError::LeaseLost { .. })),
        "a host that lost the stage cannot move its position"
    );
    assert_eq!(nats_b.register_consumer("alerts-in", 0, "alerts"), Ok(1), "the refused checkpoint wrote nothing");
    nats_b.checkpoint("alerts-in", 0, "alerts", 3).expect("the new holder checkpoints");
    fenced(&b, b"b2").expect("the new holder commits");
    // More changes than one atomic batch takes are refused whole, saying so (a notifier then commits in halves).
    let tx = b.begin_for(Some(("alerts-in", "alerts"))).expect("begin");
    for k in 0..1000 {
        tx.put("totals", &format!("many-{k}"), b"1").expect("put");
    }
    assert!(matches!(tx.commit(), Err(StateError::TooLarge { writes: 1000, most: 999 })), "too large");
    assert_eq!(a.get("totals", "many-0").expect("get"), None, "nothing written");
    assert_eq!(a.get("totals", "fenced").expect("get").as_deref(), Some(&b"b2"[..]));
}

#[test]
fn killing_the_node_leading_a_shard_while_producers_write_loses_and_repeats_nothing_acknowledged() {
    let runtime = runtime();
    let mut cluster = runtime.block_on(NatsCluster::start(3));
    let store = NatsStreams::connect(NatsSettings::new(cluster.servers()), runtime.handle().clone())
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    store.ensure(&[settings("tolls", 1)]).expect("create");
    let leader = runtime
        .block_on(async {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(leader) = cluster.stream_leader("weir-tolls-0").await {
                    return Some(leader);
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .unwrap_or_else(|| panic!("the shard has no leader\n{}", cluster.logs()));
    let node = cluster.node(&leader).expect("the leader is a node");

    // Two producers put batches of 20 until told to stop; each keeps what was acknowledged.
    let stop = AtomicBool::new(false);
    let (acknowledged, refused, killed_after) = std::thread::scope(|s| {
        let producers: Vec<_> = (0..2)
            .map(|p| {
                let (store, stop) = (&store, &stop);
                s.spawn(move || {
                    let (mut acknowledged, mut refused) = (Vec::new(), 0usize);
                    for batch in 0.. {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let datas: Vec<String> = (0..20).map(|i| format!("p{p}-b{batch}-r{i}")).collect();
                        let records = datas.iter().map(|d| record(d, d)).collect();
                        match store.append("tolls", records) {
                            Ok(results) => {
                                for (data, result) in datas.into_iter().zip(results) {
                                    match result {
                                        Ok(_) => acknowledged.push(data),
                                        Err(_) => refused += 1,
                                    }
                                }
                            }
                            Err(_) => refused += 20,
                        }
                    }
                    (acknowledged, refused)
                })
            })
            .collect();
        // Some records stored before the kill, then the kill, then some after it.
        let until = |count: u64, cluster: &NatsCluster| {
            let deadline = Instant::now() + Duration::from_secs(60);
            // While a shard elects a leader, asking its end fails too: that is waited out.
            while store.end("tolls", 0).map_or(true, |end| end < count) {
                assert!(Instant::now() < deadline, "the producers stalled below {count} records\n{}", cluster.logs());
                std::thread::yield_now();
            }
        };
        until(400, &cluster);
        let before_kill = store.end("tolls", 0).expect("end");
        cluster.kill(node);
        until(before_kill + 400, &cluster);
        stop.store(true, Ordering::Relaxed);
        let mut acknowledged = Vec::new();
        let mut refused = 0;
        for p in producers {
            let (a, r) = p.join().expect("producer");
            acknowledged.extend(a);
            refused += r;
        }
        (acknowledged, refused, before_kill)
    });

    let end = store.end("tolls", 0).expect("end");
    let stored = read_to_end(&store, "tolls", 0, 0);
    assert_eq!(stored.len() as u64, end, "positions are dense");
    let mut copies: HashMap<String, usize> = HashMap::new();
    for d in datas(&stored) {
        *copies.entry(d).or_default() += 1;
    }
    let lost: Vec<&String> = acknowledged.iter().filter(|d| !copies.contains_key(*d)).collect();
    let twice: Vec<(&String, &usize)> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(lost.is_empty(), "acknowledged records lost: {lost:?}");
    assert!(twice.is_empty(), "records stored twice: {twice:?}");
    assert!(end > killed_after + 400, "writes went on after the leader was killed");
    eprintln!(
        "{} acknowledged, {refused} refused while the shard had no leader, {end} stored, leader {leader} killed after {killed_after}",
        acknowledged.len()
    );
    // The killed node rejoins.
    cluster.start_node(node);
    runtime.block_on(cluster.wait_for_leader(Duration::from_secs(60), None));
}

/// Until `done` holds, asking again every 100 ms; panics with `what` after `within`.
fn wait_until(within: Duration, what: &str, done: impl FnMut() -> bool) {
    wait_or_show(within, what, done, String::new);
}

/// [`wait_until`], showing what `show` gives when it panics.
fn wait_or_show(within: Duration, what: &str, mut done: impl FnMut() -> bool, show: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "not within {within:?}: {what}\n{}", show());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn held(claim: &Claim) -> Vec<u32> {
    claim.held.iter().enumerate().filter(|(_, h)| **h).map(|(s, _)| s as u32).collect()
}

#[test]
fn hosts_share_shards_by_lease_and_a_host_that_lost_one_cannot_checkpoint_it() {
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let lease_timeout = Duration::from_secs(2);
    let host = |name: &str| {
        let mut settings = NatsSettings::new(cluster.servers());
        settings.host = name.to_owned();
        settings.lease_timeout = lease_timeout;
        NatsStreams::connect(settings, runtime.handle().clone()).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()))
    };
    let (a, b) = (host("host-a"), host("host-b"));
    a.ensure(&[settings("lines", 4)]).expect("create");
    let claim = |store: &NatsStreams, consumer: &str, sharing| {
        store.claim("lines", consumer, 4, sharing).unwrap_or_else(|e| panic!("{}: claim: {e}", store.host()))
    };
    assert_eq!(held(&claim(&a, "etl", Sharing::Shards)), vec![0, 1, 2, 3], "a host alone reads every shard");

    // A second host joins: within a few rounds each reads two, and every shard is read by one.
    wait_until(Duration::from_secs(30), "two shards each", || {
        let (ca, cb) = (claim(&a, "etl", Sharing::Shards), claim(&b, "etl", Sharing::Shards));
        held(&ca).len() == 2 && held(&cb).len() == 2 && ca.held.iter().zip(&cb.held).all(|(x, y)| x != y)
    });
    let b_shard = held(&claim(&b, "etl", Sharing::Shards))[0];
    b.checkpoint("lines", b_shard, "etl", 5).expect("the holder checkpoints");
    assert_eq!(
        claim(&b, "etl", Sharing::Shards).holders[b_shard as usize].as_deref(),
        Some("host-b"),
        "the claim names the holder"
    );

    // b's stage stops claiming, as during a batch longer than the timeout: its host
    // renews the leases for it, so a takes none meanwhile...
    let until = Instant::now() + lease_timeout * 3;
    while Instant::now() < until {
        let ours = claim(&a, "etl", Sharing::Shards);
        assert_eq!(held(&ours).len(), 2, "a host whose stage is busy keeps its leases: {ours:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // ...but not forever (a stuck stage), nor when its host freezes: after four timeouts
    // without a claim and then the lease timeout, a takes its shards, with their positions.
    wait_until(Duration::from_secs(30), "a takes the shards b stopped renewing", || {
        held(&claim(&a, "etl", Sharing::Shards)).len() == 4
    });
    assert_eq!(a.register_consumer("lines", b_shard, "etl"), Ok(5), "the shard goes on from b's last checkpoint");
    // b wakes: its checkpoint is refused, and written nowhere.
    assert!(
        matches!(b.checkpoint("lines", b_shard, "etl", 9), Err(StreamError::LeaseLost { shard, .. }) if shard == b_shard),
        "a host that lost its lease cannot checkpoint the shard"
    );
    assert_eq!(a.register_consumer("lines", b_shard, "etl"), Ok(5), "the refused checkpoint changed nothing");
    let woken = claim(&b, "etl", Sharing::Shards);
    assert!(held(&woken).len() < 4, "b does not read the shards a holds: {woken:?}");
    a.checkpoint("lines", b_shard, "etl", 6).expect("the new holder checkpoints");

    // Both drain and let go (b took a lease back to balance when it woke): a host that
    // never saw these leases takes all four at once, which it would not if they had
    // only stopped (it would count them alive for the timeout).
    a.release("lines", "etl").expect("release");
    b.release("lines", "etl").expect("release");
    let c = host("host-c");
    assert_eq!(held(&claim(&c, "etl", Sharing::Shards)), vec![0, 1, 2, 3], "released leases are free at once");
    assert_eq!(c.register_consumer("lines", b_shard, "etl"), Ok(6), "with their positions");

    // A consumer read whole (its state on its host's disk) stays with its host past the timeout.
    assert_eq!(held(&claim(&a, "billing", Sharing::Whole)).len(), 4);
    let until = Instant::now() + lease_timeout * 2;
    while Instant::now() < until {
        let other = claim(&b, "billing", Sharing::Whole);
        assert!(held(&other).is_empty(), "a whole consumer never moves by a timeout: {other:?}");
        assert_eq!(other.holders[0].as_deref(), Some("host-a"));
        std::thread::sleep(Duration::from_millis(200));
    }
    a.release("lines", "billing").expect("release");
    wait_until(Duration::from_secs(10), "b takes the whole consumer a let go of", || {
        held(&claim(&b, "billing", Sharing::Whole)).len() == 4
    });

    // A consumer whose state the cluster keeps (windows) moves by the timeout, with its
    // state: 600 kB, saved in parts in one atomic batch with the lease.
    let state: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(held(&claim(&b, "windows", Sharing::Single)).len(), 4);
    b.save_state("lines", "windows", &state).expect("the holder saves its state");
    assert_eq!(a.load_state("lines", "windows").as_ref(), Ok(&Some(state.clone())), "any host reads it");
    wait_until(Duration::from_secs(30), "a takes over the consumer b stopped renewing", || {
        held(&claim(&a, "windows", Sharing::Single)).len() == 4
    });
    assert!(
        matches!(b.save_state("lines", "windows", b"stale"), Err(StreamError::LeaseLost { .. })),
        "a host that lost the consumer cannot save its state"
    );
    assert_eq!(a.load_state("lines", "windows").as_ref(), Ok(&Some(state)), "the refused save wrote nothing");
    a.save_state("lines", "windows", b"small").expect("the new holder saves");
    assert_eq!(b.load_state("lines", "windows"), Ok(Some(b"small".to_vec())), "a smaller state replaces a larger one");
}

/// A stage's operator whose plugin fails on its first batch, during which the
/// stage goes to another host; every later call's effects are refused, as a
/// fenced store refuses them once another host holds the stage.
struct LosesItsStage {
    this: Arc<NatsStreams>,
    other: Arc<NatsStreams>,
    calls: Arc<std::sync::Mutex<Vec<usize>>>,
}

impl weir_host::stage::Operator for LosesItsStage {
    fn open(&mut self) -> Result<Option<Vec<u64>>, String> {
        Ok(None)
    }

    fn process(&mut self, records: &[StoredRecord]) -> Result<(), weir_host::stage::BatchError> {
        let first = {
            let mut calls = self.calls.lock().expect("calls");
            calls.push(records.len());
            calls.len() == 1
        };
        if first {
            self.this.release("failing", "notify").expect("release");
            wait_until(Duration::from_secs(30), "the other host takes the stage", || {
                self.other.claim("failing", "notify", 1, Sharing::Single).is_ok_and(|c| c.held[0])
            });
            return Err(weir_host::stage::BatchError::plugin("the plugin failed on the batch"));
        }
        Err(weir_host::stage::BatchError::Effect("another host holds the stage: nothing was written".into()))
    }

    fn checkpoint(&mut self, positions: &[u64], shard: Option<u32>) -> Result<(), String> {
        let shard = shard.unwrap_or(0);
        let position = positions.get(shard as usize).copied().unwrap_or(0);
        self.this.checkpoint("failing", shard, "notify", position).map_err(|e| e.to_string())
    }

    fn sharing(&self) -> Sharing {
        Sharing::Single
    }

    fn command(&mut self, _: weir_host::swap::StageCommand) -> weir_host::swap::CommandReply {
        Err("no plugin to swap".into())
    }
}

/// A host settling a batch its plugin failed on (trying it in halves) when
/// another host takes the stage: the parts' effects are refused, and it leaves
/// the batch to the new holder at once instead of retrying them with backoff.
#[test]
fn a_host_that_loses_a_stage_while_settling_a_failed_batch_leaves_it_to_the_new_holder() {
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let (a, b) = (host(&cluster, &runtime, "host-a"), host(&cluster, &runtime, "host-b"));
    a.ensure(&[settings("failing", 1)]).expect("create");
    let records: Vec<NewRecord> = (0..4).map(|i| record("k", &format!("r{i}"))).collect();
    assert!(a.append("failing", records).expect("append").iter().all(Result::is_ok));
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    let reading = weir_host::stage::driver::Reading {
        input: "failing".into(),
        consumer: "notify".into(),
        batch_size: 10,
        batch_wait: Duration::ZERO,
        on_error: weir_host::manifest::ErrorPolicy::DeadLetter,
        failed_batch: weir_host::manifest::FailedBatch::Bisect,
        deaggregate: false,
    };
    let stats = Arc::new(weir_host::stage::StageStats::default());
    let operator = LosesItsStage { this: a.clone(), other: b.clone(), calls: calls.clone() };
    let stage = weir_host::stage::Driver::new(reading, a.clone(), stats, operator).spawn(None).expect("spawn");
    wait_until(Duration::from_secs(60), "the first part tried", || calls.lock().expect("calls").len() >= 2);
    // The new holder keeps its lease, as its driver would.
    let renewing = Arc::new(AtomicBool::new(true));
    let renewer = {
        let (b, renewing) = (b.clone(), renewing.clone());
        std::thread::spawn(move || {
            while renewing.load(Ordering::Relaxed) {
                let claim = b.claim("failing", "notify", 1, Sharing::Single).expect("claim");
                assert!(claim.held[0], "the new holder keeps the stage");
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    // Long enough for a retry after the first backoff (1 s): none comes.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let status = stage.status();
        assert_eq!(calls.lock().expect("calls").len(), 2, "the refused part is not retried: {calls:?}");
        assert_eq!(status.phase, weir_host::stage::Phase::Running, "no backoff: {:?}", status.last_error);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        a.register_consumer("failing", 0, "notify"),
        Ok(0),
        "nothing checkpointed: the new holder redoes it all"
    );
    stage.drain();
    renewing.store(false, Ordering::Relaxed);
    renewer.join().expect("the renewer");
}

/// Runs `weir` in a child process that [`weir_tests::weir_command`] started; does
/// nothing in an ordinary test run.
#[test]
fn weir_in_a_child_process() {
    weir_tests::run_weir_if_child();
}

/// The top of a manifest whose streams are on `cluster`, for [`WeirHost::start`]:
/// each host fills in its data dir and API port; leases time out after 2 s.
fn shared_manifest(cluster: &NatsCluster, name: &str) -> String {
    let servers: Vec<String> = cluster.servers().iter().map(|s| format!("{s:?}")).collect();
    format!(
        r#"
[pipeline]
name = "{name}"
data-dir = "{{dir}}/data"

[api]
listen = "127.0.0.1:{{port}}"

[storage]
backend = "nats"
servers = [{}]
lease-timeout = "2s"
"#,
        servers.join(", ")
    )
}

/// The lines' and rows' streams (two shards each) and the showcase's `etl` stage between them.
fn etl_section() -> String {
    format!(
        r#"
[streams.toll-lines]
shards = 2
[streams.toll-rows]
shards = 2
[streams.toll-rejects]

[stages.etl]
plugin = "{}"
input = "toll-lines"
output = "toll-rows"
dead-letter = "toll-rejects"
config = {{ currency = "USD" }}
"#,
        weir_tests::root().join("plugins/toll-etl").display()
    )
}

/// A `weir run` process of a pipeline sharing the cluster, with its own data dir,
/// API port and log.
struct WeirHost {
    dir: tempfile::TempDir,
    port: u16,
    child: std::process::Child,
}

impl WeirHost {
    /// Starts `weir run` on `manifest` (with `{dir}` and `{port}` filled in).
    fn start(manifest: &str) -> WeirHost {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = weir_tests::free_port();
        let path = dir.path().join("pipeline.toml");
        let text = manifest.replace("{dir}", &dir.path().display().to_string()).replace("{port}", &port.to_string());
        std::fs::write(&path, text).expect("the manifest");
        let log = std::fs::File::create(dir.path().join("weir.log")).expect("the log");
        let child = weir_tests::weir_command(&["run", &path.display().to_string(), "--insecure-no-auth"])
            .env("WEIR_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start weir run");
        WeirHost { dir, port, child }
    }

    /// Its name for the other hosts, once it has made one.
    fn name(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join("data/host-name")).ok().map(|n| n.trim().to_owned())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weir.log")).unwrap_or_default()
    }

    /// Who reads each shard of `stage`'s input, as this host's status says.
    fn holders(&self, runtime: &tokio::runtime::Runtime, stage: &str) -> Option<Vec<Option<String>>> {
        let url = format!("http://127.0.0.1:{}/v1/pipeline", self.port);
        let status: serde_json::Value = runtime.block_on(async { reqwest::get(url).await.ok()?.json().await.ok() })?;
        let stage = status["stages"].as_array()?.iter().find(|s| s["name"] == stage)?;
        serde_json::from_value(stage["shard_holders"].clone()).ok()
    }

    /// `kill -STOP` or `kill -CONT`.
    fn signal(&self, signal: &str) {
        let pid = self.child.id().to_string();
        let sent = std::process::Command::new("kill").args([signal, &pid]).status().expect("kill");
        assert!(sent.success(), "kill {signal} {pid}");
    }
}

impl Drop for WeirHost {
    fn drop(&mut self) {
        // Stopped, killed already, or killed now: either way it is gone.
        let _ = std::process::Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How many records the etl stage passed on (rows and rejected lines), and the
/// transaction ids among them.
fn transaction_ids(store: &dyn StreamStore) -> (usize, std::collections::BTreeSet<String>) {
    let mut ids = std::collections::BTreeSet::new();
    let mut records = 0;
    for stream in ["toll-rows", "toll-rejects"] {
        for shard in 0..store.shard_count(stream).expect("shards") {
            for record in read_to_end(store, stream, shard, 0) {
                records += 1;
                let text = String::from_utf8_lossy(&record.data);
                if let Some(at) = text.find("T0017-") {
                    ids.insert(text[at..at + 12].to_owned());
                }
            }
        }
    }
    (records, ids)
}

/// Three `weir run` hosts share a transform stage's four shards through one NATS
/// cluster, while a producer writes 6,000 lines. One host is frozen (SIGSTOP) past
/// its lease timeout: the others take its shards, and once it is resumed it learns
/// it lost them. Then another host is killed (SIGKILL): its shards move too. Every
/// line comes out (a row or a rejected line), and no shard's position ever moves
/// back (a resumed host's stale checkpoint would move it back).
#[test]
fn three_hosts_share_a_stage_and_a_frozen_or_killed_host_loses_nothing() {
    const LINES: usize = 6000;
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let manifest = shared_manifest(&cluster, "shared")
        + &format!(
            r#"
[streams.toll-lines]
shards = 4
[streams.toll-rows]
shards = 2
[streams.toll-rejects]

[stages.etl]
plugin = "{plugin}"
input = "toll-lines"
output = "toll-rows"
dead-letter = "toll-rejects"
batch-size = 50
batch-wait = "10ms"
config = {{ currency = "USD" }}
"#,
            plugin = weir_tests::root().join("plugins/toll-etl").display(),
        );
    let mut hosts: Vec<WeirHost> = (0..3).map(|_| WeirHost::start(&manifest)).collect();
    let logs = |hosts: &[WeirHost]| hosts.iter().map(WeirHost::log).collect::<Vec<_>>().join("\n----\n");
    let mut settings = NatsSettings::new(cluster.servers());
    settings.host = "producer".to_owned();
    let producer = NatsStreams::connect(settings, runtime.handle().clone()).expect("the producer connects");

    // Every host reads a share: 2, 1 and 1 of the four shards.
    let views = |hosts: &[WeirHost]| {
        let views: Vec<String> = hosts.iter().map(|h| format!("{:?}", h.holders(&runtime, "etl"))).collect();
        format!("{}\n{}", views.join("\n"), logs(hosts))
    };
    let mut names: Vec<String> = Vec::new();
    wait_or_show(
        Duration::from_secs(120),
        "every host started and named itself",
        || {
            names = hosts.iter().filter_map(WeirHost::name).collect();
            names.len() == 3 && hosts.iter().all(|h| h.holders(&runtime, "etl").is_some())
        },
        || views(&hosts),
    );
    wait_or_show(
        Duration::from_secs(60),
        "the shards balanced over the three hosts",
        || {
            let holders = hosts[0].holders(&runtime, "etl").unwrap_or_default();
            holders.len() == 4 && names.iter().all(|n| holders.contains(&Some(n.clone())))
        },
        || views(&hosts),
    );

    let stop = AtomicBool::new(false);
    let mut resumed_at = 0;
    let lines = weir_tests::toll_lines(LINES);
    let put = |part: &[String]| {
        for chunk in part.chunks(250) {
            let records = chunk.iter().map(|l| record(&l[..12], l)).collect();
            let appended = producer.append("toll-lines", records).expect("put");
            assert!(appended.iter().all(Result::is_ok), "every line is acknowledged");
        }
    };
    std::thread::scope(|s| {
        // Positions, sampled while it runs: they never move back.
        let sampler = s.spawn(|| {
            let mut seen = [0u64; 4];
            while !stop.load(Ordering::Relaxed) {
                for (shard, last) in seen.iter_mut().enumerate() {
                    if let Ok(position) = producer.register_consumer("toll-lines", shard as u32, "etl") {
                        assert!(position >= *last, "shard {shard}'s position moved back from {last} to {position}");
                        *last = position;
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        put(&lines[..LINES / 3]);

        // Freeze host 1 past its lease: the other two take its shards.
        let frozen = names[1].clone();
        hosts[1].signal("-STOP");
        put(&lines[LINES / 3..LINES / 2]);
        wait_until(Duration::from_secs(60), "the frozen host's shards taken", || {
            hosts[0].holders(&runtime, "etl").is_some_and(|h| h.len() == 4 && !h.contains(&Some(frozen.clone())))
        });
        hosts[1].signal("-CONT");
        resumed_at = hosts[1].log().len();
        put(&lines[LINES / 2..2 * LINES / 3]);

        // Kill host 0: its shards go to the two left.
        let killed = names[0].clone();
        hosts[0].child.kill().expect("kill -9 host 0");
        put(&lines[2 * LINES / 3..]);
        wait_until(Duration::from_secs(60), "the killed host's shards taken", || {
            hosts[2].holders(&runtime, "etl").is_some_and(|h| h.len() == 4 && !h.contains(&Some(killed.clone())))
        });

        let deadline = Instant::now() + Duration::from_secs(120);
        let mut out = transaction_ids(&producer);
        while out.1.len() < LINES {
            assert!(Instant::now() < deadline, "{} of {LINES} lines came out\n{}", out.1.len(), logs(&hosts));
            std::thread::sleep(Duration::from_millis(200));
            out = transaction_ids(&producer);
        }
        stop.store(true, Ordering::Relaxed);
        sampler.join().expect("the positions never moved back");
        eprintln!("{LINES} lines, {} records out ({} again after a host lost its shards)", out.0, out.0 - LINES);
    });
    // Once resumed, the host learns what it lost: a checkpoint refused, a shard read by
    // another host, or one taken back at the position that host left it at.
    let resumed = hosts[1].log().get(resumed_at..).unwrap_or_default().to_owned();
    assert!(
        ["the checkpoint was refused", "another host reads the shard now", "this host reads the shard now"]
            .iter()
            .any(|m| resumed.contains(m)),
        "the resumed host learns it lost its shards\n{resumed}"
    );
}

/// The first hours of the showcase's day, as records of their stations.
fn station_records(lines: &[weir_host::simulate::TollLine]) -> Vec<NewRecord> {
    lines
        .iter()
        .map(|line| NewRecord {
            key: line.text.split(',').next().unwrap_or_default().to_owned(),
            event_time_ms: Some(line.time_ms),
            data: Bytes::copy_from_slice(line.text.as_bytes()),
            source: Some(format!("station-{:02}", line.station).into()),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect()
}

/// Every billing result in `billing-windows`: (window start, customer), its
/// revision (a window revised by late rows is given again) and its total, as
/// often as each came.
fn billing_results(store: &dyn StreamStore) -> Vec<((String, String), u64, u64)> {
    let mut results = Vec::new();
    for shard in 0..store.shard_count("billing-windows").expect("shards") {
        for record in read_to_end(store, "billing-windows", shard, 0) {
            let result: serde_json::Value = serde_json::from_slice(&record.data).expect("a result is JSON");
            let window = result["window_start"].as_str().unwrap_or_default().to_owned();
            let customer = result["customer_id"].as_str().unwrap_or_default().to_owned();
            let revision = record.attributes.iter().find(|(name, _)| name == "weir-revision");
            let revision = revision.and_then(|(_, r)| r.parse().ok()).unwrap_or(0);
            results.push(((window, customer), revision, result["total_cents"].as_u64().unwrap_or(u64::MAX)));
        }
    }
    results
}

/// The showcase's billing on two `weir run` hosts: the aggregator and the
/// notifier each run on one host at a time, the windows saved in the cluster
/// with their positions, the month totals and the inbox kept there too. The
/// host running both is killed (SIGKILL) halfway through the morning's tolls:
/// the other host takes both over after the lease timeout, and every window's
/// totals are exactly the rows in it (none missed, none counted twice), every
/// customer's month total is the sum of its windows, and every customer past
/// the threshold has exactly one message in the inbox.
#[test]
fn billing_moves_to_another_host_with_its_windows_and_state_and_counts_and_alerts_every_toll_once() {
    const DAY: i64 = 1_795_564_800_000;
    const MINUTE: i64 = 60_000;
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let plugins = weir_tests::root().join("plugins");
    let manifest = shared_manifest(&cluster, "billing")
        + &etl_section()
        + &format!(
            r#"
[streams.billing-windows]

[stages.billing-sum]
plugin = "{sum}"
input = "toll-rows"
output = "billing-windows"
window = {{ size = "10m", out-of-orderness = "5s", idle-timeout = "5s", allowed-lateness = "3h" }}

[stages.billing-alert]
plugin = "{alert}"
input = "billing-windows"
config = {{ default-threshold-cents = {THRESHOLD}, channel = "app" }}

[tables.month-totals]
[tables.thresholds]

[channels.app]
kind = "inbox"
"#,
            sum = plugins.join("toll-billing-sum").display(),
            alert = plugins.join("toll-billing-alert").display(),
        );
    let mut hosts: Vec<WeirHost> = vec![WeirHost::start(&manifest)];
    let logs = |hosts: &[WeirHost]| hosts.iter().map(WeirHost::log).collect::<Vec<_>>().join("\n----\n");
    let mut settings = NatsSettings::new(cluster.servers());
    settings.host = "producer".to_owned();
    let producer = NatsStreams::connect(settings.clone(), runtime.handle().clone()).expect("the producer connects");
    settings.host = "reader".to_owned();
    let reader = Arc::new(NatsStreams::connect(settings, runtime.handle().clone()).expect("the reader connects"));
    let state = StateStore::shared(reader.clone(), ["month-totals".to_owned(), "thresholds".to_owned()]);
    let holder_of = |host: &WeirHost, stage: &str| host.holders(&runtime, stage)?.first().cloned().flatten();
    let holder = |host: &WeirHost| holder_of(host, "billing-sum");
    // The first host runs both billing stages, then the second joins.
    wait_or_show(
        Duration::from_secs(120),
        "the first host started and runs both billing stages",
        || ["billing-sum", "billing-alert"].iter().all(|stage| holder_of(&hosts[0], stage).is_some()),
        || logs(&hosts),
    );
    hosts.push(WeirHost::start(&manifest));
    let mut names = Vec::new();
    wait_or_show(
        Duration::from_secs(120),
        "both hosts started",
        || {
            names = hosts.iter().filter_map(WeirHost::name).collect::<Vec<_>>();
            names.len() == 2 && hosts.iter().all(|h| holder(h).is_some())
        },
        || logs(&hosts),
    );
    assert_eq!(holder_of(&hosts[1], "billing-alert").as_deref(), Some(names[0].as_str()), "the first runs the alerts");

    // The morning, 06:00 to 08:00, in time order as the stations log it.
    let lines: Vec<_> = weir_host::simulate::generate_day(5, DAY)
        .into_iter()
        .filter(|l| (DAY + 6 * 60 * MINUTE..DAY + 8 * 60 * MINUTE).contains(&l.time_ms))
        .collect();
    let records = station_records(&lines);
    let put = |part: &[NewRecord]| {
        for chunk in part.chunks(250) {
            let appended = producer.append("toll-lines", chunk.to_vec()).expect("put");
            assert!(appended.iter().all(Result::is_ok), "every line is acknowledged");
        }
    };
    let started = Instant::now();
    let half = records.len() / 2;
    put(&records[..half]);
    eprintln!("{:?}: half put", started.elapsed());
    // Once some windows are out, the host running them is killed.
    wait_or_show(
        Duration::from_secs(120),
        "the first windows out",
        || !billing_results(&producer).is_empty(),
        || logs(&hosts),
    );
    eprintln!("{:?}: first windows out", started.elapsed());
    let (killed, survivor) = (0, 1);
    assert_eq!(holder(&hosts[1]).as_deref(), Some(names[killed].as_str()), "the first host runs the windows");
    hosts[killed].child.kill().expect("kill -9 the host running billing");
    put(&records[half..]);
    wait_or_show(
        Duration::from_secs(60),
        "the other host takes the windows and the alerts over",
        || {
            ["billing-sum", "billing-alert"]
                .iter()
                .all(|stage| holder_of(&hosts[survivor], stage).as_deref() == Some(names[survivor].as_str()))
        },
        || logs(&hosts),
    );

    // The etl stage passes every line on, some twice (it is shared by shard, at least
    // once: a shard moving between hosts redoes what was not checkpointed).
    eprintln!("{:?}: taken over", started.elapsed());
    let well_formed = lines.iter().filter(|l| l.text.split(',').count() == 8).count();
    let rows = || {
        let mut rows = Vec::new();
        for shard in 0..producer.shard_count("toll-rows").expect("shards") {
            rows.extend(read_to_end(&producer, "toll-rows", shard, 0));
        }
        rows
    };
    let id = |row: &StoredRecord| {
        let fields: serde_json::Value = serde_json::from_slice(&row.data).expect("a row is JSON");
        fields["transaction_id"].as_str().unwrap_or_default().to_owned()
    };
    wait_or_show(
        Duration::from_secs(120),
        "every well-formed line a row",
        || rows().iter().map(id).collect::<std::collections::BTreeSet<_>>().len() == well_formed,
        || logs(&hosts),
    );
    // What the rows say: each customer's cents per 10-minute window, each row
    // counted as often as it is in the stream; and which windows the watermark
    // must close (every station's last toll, less 5 s).
    let mut expected: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut starts: HashMap<String, i64> = HashMap::new();
    for row in rows() {
        let fields: serde_json::Value = serde_json::from_slice(&row.data).expect("a row is JSON");
        let time = row.event_time_ms;
        let start_ms = time - time.rem_euclid(10 * MINUTE);
        let start = weir_host::time::format_ms(start_ms);
        starts.insert(start.clone(), start_ms);
        let customer = fields["customer_id"].as_str().unwrap_or_default().to_owned();
        *expected.entry((start, customer)).or_default() += fields["amount_cents"].as_u64().unwrap_or(0);
    }
    eprintln!("{:?}: every row out", started.elapsed());
    let mut last_by_station: HashMap<u32, i64> = HashMap::new();
    for line in &lines {
        last_by_station.insert(line.station, line.time_ms);
    }
    let watermark = last_by_station.values().min().copied().unwrap_or(0) - 5_000;
    let required: Vec<&(String, String)> =
        expected.keys().filter(|(start, _)| starts[start] + 10 * MINUTE <= watermark).collect();
    let mut results = Vec::new();
    wait_or_show(
        Duration::from_secs(120),
        "every closed window's totals out",
        || {
            results = billing_results(&producer);
            let got: std::collections::BTreeSet<&(String, String)> = results.iter().map(|(k, ..)| k).collect();
            required.iter().all(|k| got.contains(k))
        },
        || logs(&hosts),
    );
    // A window's last revision counts every row of it once; any result given again is the same.
    let mut last: BTreeMap<&(String, String), (u64, u64)> = BTreeMap::new();
    for (key, revision, cents) in &results {
        let kept = last.entry(key).or_insert((*revision, *cents));
        assert!(*revision != kept.0 || *cents == kept.1, "{key:?}: revision {revision} given twice, differently");
        if *revision > kept.0 {
            *kept = (*revision, *cents);
        }
    }
    for (key, (_, cents)) in &last {
        assert_eq!(Some(cents), expected.get(*key), "{key:?}: each of its rows counted once");
    }
    let again = results.len() - last.len();
    eprintln!(
        "{} lines, {} window totals required, {} results ({again} given again: revisions, or after the takeover)",
        lines.len(),
        required.len(),
        results.len()
    );

    // The alerts: once the notifier has taken in every result, each customer's month
    // total is the sum of its windows' last totals, and every customer past the
    // threshold has one message. A total and its alert commit together, so the inbox
    // read between two equal readings of the totals is the one those totals made.
    let month = weir_host::time::format_ms(DAY)[..7].to_owned();
    let month_totals = |customers: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        let total = |customer: &String| {
            let item = state.get("month-totals", &format!("{customer}|{month}")).expect("a month total");
            let item: Option<serde_json::Value> = item.map(|v| serde_json::from_slice(&v).expect("JSON"));
            item.and_then(|i| i["cents"].as_u64()).unwrap_or(0)
        };
        customers.keys().map(|customer| (customer.clone(), total(customer))).collect()
    };
    let mut totals: BTreeMap<String, u64> = BTreeMap::new();
    let mut alerted: BTreeMap<String, usize> = BTreeMap::new();
    wait_or_show(
        Duration::from_secs(120),
        "every result in the month totals",
        || {
            let mut last: BTreeMap<&(String, String), (u64, u64)> = BTreeMap::new();
            let results = billing_results(&producer);
            for (key, revision, cents) in &results {
                let kept = last.entry(key).or_insert((*revision, *cents));
                if *revision > kept.0 {
                    *kept = (*revision, *cents);
                }
            }
            totals.clear();
            for ((_, customer), (_, cents)) in &last {
                *totals.entry(customer.clone()).or_default() += cents;
            }
            if month_totals(&totals) != totals {
                return false;
            }
            alerted.clear();
            for recipient in inbox_recipients(&reader) {
                *alerted.entry(recipient).or_default() += 1;
            }
            month_totals(&totals) == totals
        },
        || logs(&hosts),
    );
    for (customer, cents) in &totals {
        let messages = alerted.get(customer).copied().unwrap_or(0);
        assert_eq!(messages, usize::from(*cents >= THRESHOLD), "{customer}: {cents} cents, {messages} messages");
    }
    // What the app sees through the API of the host left (a window closed since may
    // have alerted one more, never twice).
    for (customer, cents) in totals.iter().take(200) {
        let url = format!("http://127.0.0.1:{}/v1/inbox/{customer}", hosts[survivor].port);
        let inbox: serde_json::Value =
            runtime.block_on(async { reqwest::get(url).await.expect("GET").json().await.expect("JSON") });
        let messages = inbox["messages"].as_array().map_or(0, Vec::len);
        assert!(messages <= 1, "{customer}: {messages} messages: {inbox}");
        assert!(*cents < THRESHOLD || messages == 1, "{customer}: {cents} cents and no message: {inbox}");
    }
    let past = totals.values().filter(|c| **c >= THRESHOLD).count();
    eprintln!("{} customers billed, {past} past {THRESHOLD} cents, each alerted once", totals.len());
}

/// The threshold of the billing test's customers, in cents.
const THRESHOLD: u64 = 500;

/// The recipient of every message in the `app` inbox, as often as it is there
/// (read from the cluster in one pass, as the inbox's values).
fn inbox_recipients(reader: &NatsStreams) -> Vec<String> {
    let messages = reader.shared_scan("i.app.").expect("the inbox");
    let message = |value: &[u8]| serde_json::from_slice::<InboxMessage>(value).expect("an inbox message");
    messages.iter().map(|(_, value, _)| message(value).recipient).collect()
}

/// The showcase's warehouse delivery on two `weir run` hosts: it reads `toll-rows`
/// on one host at a time, its plans kept in the cluster under its lease, into one
/// lake and one warehouse. The host running it is killed (SIGKILL) while the tolls
/// come: the other host takes it over after the lease timeout and redoes what was
/// not checkpointed with the first host's plans, so every well-formed line is one
/// row of the warehouse, and one row of the lake's rows objects at least.
#[test]
fn a_delivery_moves_to_another_host_and_every_line_is_one_warehouse_row() {
    const DAY: i64 = 1_795_564_800_000;
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let shared = tempfile::tempdir().expect("tempdir");
    let (lake, warehouse) = (shared.path().join("lake"), shared.path().join("warehouse.db"));
    let manifest = shared_manifest(&cluster, "ingest")
        + &etl_section()
        + &format!(
            r#"
[delivery.toll-transactions]
stream = "toll-rows"
buffer-size = "64KiB"
buffer-interval = "1s"
lake = "{lake}"
prefix = "transactions/"

[delivery.toll-transactions.warehouse]
database = "{warehouse}"
table = "toll_transactions"
columns = ["transaction_id", "event_time", "station_id", "customer_id", "amount_cents"]
key = "transaction_id"
"#,
            lake = lake.display(),
            warehouse = warehouse.display(),
        );
    let delivery_holder = |host: &WeirHost| -> Option<String> {
        let url = format!("http://127.0.0.1:{}/v1/pipeline", host.port);
        let status: serde_json::Value = runtime.block_on(async { reqwest::get(url).await.ok()?.json().await.ok() })?;
        let delivery = status["deliveries"].as_array()?.iter().find(|d| d["name"] == "toll-transactions")?;
        delivery["shard_holders"][0].as_str().filter(|h| !h.is_empty()).map(str::to_owned)
    };
    let mut hosts = vec![WeirHost::start(&manifest)];
    let logs = |hosts: &[WeirHost]| hosts.iter().map(WeirHost::log).collect::<Vec<_>>().join("\n----\n");
    wait_or_show(
        Duration::from_secs(120),
        "the first host started and runs the delivery",
        || delivery_holder(&hosts[0]).is_some(),
        || logs(&hosts),
    );
    hosts.push(WeirHost::start(&manifest));
    let mut names = Vec::new();
    wait_or_show(
        Duration::from_secs(120),
        "both hosts started",
        || {
            names = hosts.iter().filter_map(WeirHost::name).collect::<Vec<_>>();
            names.len() == 2 && hosts.iter().all(|h| delivery_holder(h).is_some())
        },
        || logs(&hosts),
    );
    assert_eq!(delivery_holder(&hosts[1]), Some(names[0].clone()), "the first host runs the delivery");

    let mut settings = NatsSettings::new(cluster.servers());
    settings.host = "producer".to_owned();
    let producer = NatsStreams::connect(settings, runtime.handle().clone()).expect("the producer connects");
    let lines: Vec<_> = weir_host::simulate::generate_day(9, DAY).into_iter().take(6000).collect();
    let records = station_records(&lines);
    let put = |part: &[NewRecord]| {
        for chunk in part.chunks(250) {
            let appended = producer.append("toll-lines", chunk.to_vec()).expect("put");
            assert!(appended.iter().all(Result::is_ok), "every line is acknowledged");
        }
    };
    let rows = || -> (i64, i64) {
        let Ok(db) = rusqlite::Connection::open(&warehouse) else { return (0, 0) };
        let count = "SELECT count(*), count(DISTINCT transaction_id) FROM toll_transactions";
        db.query_row(count, [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap_or((0, 0))
    };
    let half = records.len() / 2;
    put(&records[..half]);
    wait_or_show(Duration::from_secs(120), "the first rows loaded", || rows().0 > 0, || logs(&hosts));
    hosts[0].child.kill().expect("kill -9 the host running the delivery");
    put(&records[half..]);
    wait_or_show(
        Duration::from_secs(60),
        "the other host takes the delivery over",
        || delivery_holder(&hosts[1]).as_deref() == Some(names[1].as_str()),
        || logs(&hosts),
    );
    let well_formed: std::collections::BTreeSet<String> = lines
        .iter()
        .filter(|l| l.text.split(',').count() == 8)
        .map(|l| l.text.split(',').next().unwrap_or_default().to_owned())
        .collect();
    wait_or_show(
        Duration::from_secs(120),
        "every well-formed line a row",
        || rows().1 >= well_formed.len() as i64,
        || logs(&hosts),
    );
    let (count, distinct) = rows();
    let expected = well_formed.len() as i64;
    assert_eq!((count, distinct), (expected, expected), "one row per line");
    let db = rusqlite::Connection::open(&warehouse).expect("the warehouse");
    let mut ids = db.prepare("SELECT transaction_id FROM toll_transactions").expect("select");
    let ids: std::collections::BTreeSet<String> =
        ids.query_map([], |r| r.get(0)).expect("rows").collect::<Result<_, _>>().expect("ids");
    assert_eq!(ids, well_formed, "the rows are the well-formed lines");
    // The lake holds each row of the stream once: a batch the other host redid had
    // the first host's plan, so the same bounds and object keys. (The stream itself
    // holds some rows twice: etl redid what the killed host had not checkpointed.)
    let mut in_lake: BTreeMap<String, usize> = BTreeMap::new();
    for path in weir_tests::files(&lake.join("transactions")) {
        for line in weir_tests::lines(&path) {
            let row: serde_json::Value = serde_json::from_str(&line).expect("a row is JSON");
            *in_lake.entry(row["transaction_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    let mut in_stream: BTreeMap<String, usize> = BTreeMap::new();
    for shard in 0..producer.shard_count("toll-rows").expect("shards") {
        for record in read_to_end(&producer, "toll-rows", shard, 0) {
            let row: serde_json::Value = serde_json::from_slice(&record.data).expect("a row is JSON");
            *in_stream.entry(row["transaction_id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(in_lake, in_stream, "the lake holds each row as often as the stream does");
    let again = in_stream.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} lines, {count} rows in the warehouse, once each; {again} rows twice in the stream (etl redid them) and so in the lake",
        lines.len()
    );
}

/// A stream that declares its records' ids (`deduplicate`) stores each id once
/// whichever host puts it: the cluster keeps the ids (JetStream's message ids),
/// not each host. A repeat is answered with the first one's position and counted.
#[test]
fn hosts_putting_the_same_ids_store_each_once() {
    use weir_host::dedup::{DedupSpec, DedupStore, Identity};
    let runtime = runtime();
    let cluster = runtime.block_on(NatsCluster::start(3));
    let host = |name: &str| {
        let mut settings = NatsSettings::new(cluster.servers());
        settings.host = name.to_owned();
        let nats = NatsStreams::connect(settings, runtime.handle().clone());
        let nats: Arc<dyn StreamStore> = Arc::new(nats.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs())));
        let spec = DedupSpec { identity: Identity::Field("id".into()), horizon: Duration::from_secs(3600) };
        let store = DedupStore::open(nats.clone(), vec![("lines".to_owned(), spec)], weir_host::stream::system_clock());
        (nats, store.expect("a deduplicating store"))
    };
    let ((nats, a), (_, b)) = (host("host-a"), host("host-b"));
    nats.create(settings("lines", 2)).expect("create");
    let line = |id: u32| NewRecord {
        key: format!("station-{}", id % 7),
        event_time_ms: None,
        data: Bytes::from(format!(r#"{{"id":"T{id}","cents":275}}"#)),
        source: None,
        explicit_hash_key: None,
        attributes: Vec::new(),
    };
    // a puts 0..300; b puts 200..400 with 250 twice, in puts large enough for atomic batches.
    let first = a.append("lines", (0..300).map(line).collect()).expect("put");
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    let again: Vec<NewRecord> = (200..400).map(line).chain([line(250)]).collect();
    let second = b.append("lines", again).expect("put");
    assert!(second.iter().all(Result::is_ok), "{second:?}");
    for (k, id) in (200..300).enumerate() {
        assert_eq!(second[k], first[id], "T{id} is answered with where a stored it");
    }
    assert_eq!(second[200], second[50], "a repeat within one put is answered with the first");
    assert_eq!(b.duplicates()["lines"], 101, "the repeats are counted");
    // What the stream holds: each id once.
    let mut held: BTreeMap<String, usize> = BTreeMap::new();
    for shard in 0..2 {
        for record in read_to_end(nats.as_ref(), "lines", shard, 0) {
            let value: serde_json::Value = serde_json::from_slice(&record.data).expect("JSON");
            *held.entry(value["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
    }
    assert_eq!(held.len(), 400, "every id stored");
    assert!(
        held.values().all(|n| *n == 1),
        "each once: {:?}",
        held.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
}
