//! The disk store's behaviour: recovery, damage, fsync failures, group
//! commits, capacity, retention, write limits, routing and resharding.

use std::fs::OpenOptions;
use std::sync::atomic::AtomicUsize;

use super::frame::*;
use super::*;
use crate::{Source, StreamStore, shard_id};

fn spec(fsync: FsyncPolicy) -> Vec<DiskStreamSpec> {
    vec![DiskStreamSpec::new("s", 1_000_000, fsync)]
}

fn rec(data: &str) -> NewRecord {
    NewRecord {
        source: None,
        key: format!("k-{data}"),
        event_time_ms: Some(7),
        data: Bytes::copy_from_slice(data.as_bytes()),
        explicit_hash_key: None,
        attributes: Vec::new(),
    }
}

/// Appends to shard 0 of a one-shard stream: the sequence numbers, or the first error.
fn put(s: &DiskStreams, records: Vec<NewRecord>) -> Result<Vec<u64>, StreamError> {
    s.append("s", records)?.into_iter().map(|r| r.map(|a| a.sequence)).collect()
}

fn open(dir: &Path, fsync: FsyncPolicy) -> Result<DiskStreams, StreamError> {
    DiskStreams::open(dir, &spec(fsync), Arc::new(FileSyncer))
}

fn datas(records: &[StoredRecord]) -> Vec<String> {
    records.iter().map(|r| String::from_utf8_lossy(&r.data).into_owned()).collect()
}

fn segment(dir: &Path) -> PathBuf {
    dir.join("s").join(shard_id(0)).join(segment_name(0))
}

#[test]
fn names_that_are_not_one_plain_component_touch_nothing() {
    let outer = tempfile::tempdir().expect("tempdir");
    let root = outer.path().join("data/streams");
    let victim = outer.path().join("victim");
    std::fs::create_dir_all(&victim).expect("victim");
    std::fs::write(victim.join("keep.txt"), "keep").expect("victim file");
    let s = open(&root, FsyncPolicy::Always).expect("open");
    for name in ["../../victim", "..", ".", "a/b", "/tmp/x", "", "x\0y", &"x".repeat(200)] {
        let settings = StreamSettings { name: name.to_owned(), retention: DEFAULT_RETENTION, shards: 1 };
        assert!(matches!(s.create(settings), Err(StreamError::InvalidName(_))), "{name:?}");
        assert!(matches!(s.delete(name), Err(StreamError::UnknownStream(_))), "{name:?}");
    }
    for consumer in ["../../x", "..", "a/b"] {
        assert!(matches!(s.register_consumer("s", 0, consumer), Err(StreamError::InvalidName(_))));
        assert!(matches!(s.checkpoint("s", 0, consumer, 0), Err(StreamError::InvalidName(_))));
    }
    assert_eq!(std::fs::read_to_string(victim.join("keep.txt")).ok().as_deref(), Some("keep"));
    let mut around: Vec<_> =
        std::fs::read_dir(outer.path()).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    around.sort();
    assert_eq!(around, ["data", "victim"], "nothing was created beside the data folder");
    let mut inside: Vec<_> =
        std::fs::read_dir(&root).expect("list").filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    inside.sort();
    assert_eq!(inside, ["s"], "only the manifest's stream has a folder");
}

#[test]
fn records_survive_a_reopen_in_order_with_their_keys_times_and_checkpoints() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path(), FsyncPolicy::Always).expect("open");
        put(&s, vec![rec("a"), rec("b")]).expect("append");
        let appended = put(&s, vec![rec("c")]).expect("append");
        assert_eq!(appended, vec![2]);
        s.register_consumer("s", 0, "etl").expect("register");
        s.checkpoint("s", 0, "etl", 2).expect("checkpoint");
    }
    let s = open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let all = s.read("s", 0, 0, 10).expect("read");
    assert_eq!(datas(&all), vec!["a", "b", "c"]);
    assert_eq!((all[1].sequence, all[1].key.as_str(), all[1].event_time_ms), (1, "k-b", 7));
    assert_eq!(s.register_consumer("s", 0, "etl"), Ok(2), "a consumer resumes after its checkpoint");
    assert_eq!(datas(&s.read("s", 0, 1, 1).expect("read")), vec!["b"]);
    assert_eq!(put(&s, vec![rec("d")]).expect("append")[0], 3);
}

#[test]
fn sources_are_kept_and_frames_without_them_read_as_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let from = |data: &str, source: Option<&str>| NewRecord { source: source.map(Source::from), ..rec(data) };
    {
        let s = open(dir.path(), FsyncPolicy::Always).expect("open");
        put(&s, vec![rec("a")]).expect("a frame of format 1");
        put(&s, vec![from("b", Some("station-7")), from("c", Some("station-7")), from("d", None)])
            .expect("a frame of format 2");
        // What every put path checks first.
        assert!(matches!(crate::check_record(&from("e", Some(""))), Err(StreamError::InvalidRecord(_))));
        let long = "x".repeat(crate::MAX_SOURCE_BYTES + 1);
        assert!(matches!(crate::check_record(&from("e", Some(&long))), Err(StreamError::InvalidRecord(_))));
    }
    let bytes = std::fs::read(segment(dir.path())).expect("segment");
    assert_eq!((&bytes[..2], bytes.windows(2).filter(|w| *w == MAGIC_SOURCES).count()), (&MAGIC[..], 1));
    let s = open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let all = s.read("s", 0, 0, 10).expect("read");
    let sources: Vec<Option<&str>> = all.iter().map(|r| r.source.as_deref()).collect();
    assert_eq!(sources, [None, Some("station-7"), Some("station-7"), None]);
    assert_eq!(datas(&all), ["a", "b", "c", "d"]);
    assert!(std::sync::Arc::ptr_eq(
        all[1].source.as_ref().expect("b's source"),
        all[2].source.as_ref().expect("c's source")
    ));
}

#[test]
fn attributes_are_kept_beside_frames_without_them_and_their_limits_are_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let with = |data: &str, attributes: &[(&str, &str)]| NewRecord {
        attributes: attributes.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect(),
        source: Some(Source::from("agg")),
        ..rec(data)
    };
    {
        let s = open(dir.path(), FsyncPolicy::Always).expect("open");
        put(&s, vec![rec("a")]).expect("a frame of format 1");
        put(&s, vec![with("b", &[("weir-revision", "1"), ("note", "")]), with("c", &[])]).expect("format 3");
        // Too many, a name too long, a value too long: refused by the store itself.
        let many: Vec<(String, String)> =
            (0..=crate::MAX_ATTRIBUTES).map(|i| (format!("a{i}"), String::new())).collect();
        let name = "n".repeat(crate::MAX_ATTRIBUTE_NAME_BYTES + 1);
        let value = "v".repeat(crate::MAX_ATTRIBUTE_VALUE_BYTES + 1);
        for bad in [NewRecord { attributes: many, ..rec("x") }, with("x", &[(&name, "")]), with("x", &[("n", &value)])]
        {
            assert!(matches!(put(&s, vec![bad]), Err(StreamError::InvalidRecord(_))));
        }
    }
    let bytes = std::fs::read(segment(dir.path())).expect("segment");
    assert_eq!(bytes.windows(2).filter(|w| *w == MAGIC_ATTRIBUTES).count(), 1);
    let s = open(dir.path(), FsyncPolicy::Always).expect("reopen");
    let all = s.read("s", 0, 0, 10).expect("read");
    assert_eq!(datas(&all), ["a", "b", "c"]);
    let attributes: Vec<&Vec<(String, String)>> = all.iter().map(|r| &r.attributes).collect();
    assert_eq!(attributes[1], &vec![("weir-revision".to_owned(), "1".to_owned()), ("note".to_owned(), String::new())]);
    assert!(attributes[0].is_empty() && attributes[2].is_empty());
    assert_eq!(all[1].source.as_deref(), Some("agg"), "the source is kept beside them");
}

#[test]
fn a_torn_tail_is_truncated_and_later_appends_continue_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let s = open(dir.path(), FsyncPolicy::Never).expect("open");
        put(&s, vec![rec("a")]).expect("append");
        put(&s, vec![rec("b"), rec("c")]).expect("append");
    }
    let len = std::fs::metadata(segment(dir.path())).expect("meta").len();
    let file = OpenOptions::new().write(true).open(segment(dir.path())).expect("open");
    file.set_len(len - 3).expect("tear the last frame");
    drop(file);
    let s = open(dir.path(), FsyncPolicy::Never).expect("recover");
    assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["a"]);
    assert_eq!(put(&s, vec![rec("d")]).expect("append")[0], 1);
    assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["a", "d"]);
}

#[test]
fn a_flipped_bit_in_the_middle_is_refused_with_file_and_offset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first_frame_len;
    {
        let s = open(dir.path(), FsyncPolicy::Never).expect("open");
        put(&s, vec![rec("first")]).expect("append");
        first_frame_len = std::fs::metadata(segment(dir.path())).expect("meta").len();
        put(&s, vec![rec("second")]).expect("append");
        put(&s, vec![rec("third")]).expect("append");
    }
    // Flip one bit in every position of the second frame in turn: each must be caught.
    let original = std::fs::read(segment(dir.path())).expect("read");
    let second_len = (original.len() as u64 - first_frame_len) as usize / 2;
    for byte in first_frame_len as usize..first_frame_len as usize + second_len {
        let mut damaged = original.clone();
        damaged[byte] ^= 0x10;
        std::fs::write(segment(dir.path()), &damaged).expect("write");
        match open(dir.path(), FsyncPolicy::Never) {
            Err(StreamError::Corrupt { file, offset, .. }) => {
                assert!(file.ends_with("00000000000000000000.log"));
                assert_eq!(offset, first_frame_len, "byte {byte}");
            }
            Err(other) => panic!("byte {byte}: {other}"),
            Ok(s) => panic!(
                "byte {byte}: a corrupted stream opened and serves {:?}",
                datas(&s.read("s", 0, 0, 9).unwrap_or_default())
            ),
        }
    }
}

#[test]
fn damage_after_opening_is_never_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = open(dir.path(), FsyncPolicy::Never).expect("open");
    put(&s, vec![rec("precious")]).expect("append");
    let mut bytes = std::fs::read(segment(dir.path())).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    let file = OpenOptions::new().write(true).open(segment(dir.path())).expect("open");
    file.write_all_at(&bytes, 0).expect("damage");
    assert!(matches!(s.read("s", 0, 0, 10), Err(StreamError::Corrupt { .. })));
}

struct FailAfter(AtomicUsize);

impl Syncer for FailAfter {
    fn sync(&self, file: &File) -> std::io::Result<()> {
        if self.0.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(std::io::Error::other("injected fsync failure"));
        }
        file.sync_data()
    }
}

#[test]
fn after_an_fsync_failure_nothing_more_is_acknowledged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let syncer = Arc::new(FailAfter(AtomicUsize::new(2)));
    let s = DiskStreams::open(dir.path(), &spec(FsyncPolicy::Always), syncer).expect("open");
    put(&s, vec![rec("1")]).expect("first sync works");
    put(&s, vec![rec("2")]).expect("second sync works");
    let err = put(&s, vec![rec("3")]).expect_err("third sync fails");
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    let later = put(&s, vec![rec("4")]).expect_err("fail-stop");
    assert!(matches!(later, StreamError::Failed { .. }), "{later}");
    assert_eq!(s.end("s", 0), Ok(2), "the unsynced record is not readable");
    assert_eq!(datas(&s.read("s", 0, 0, 10).expect("read")), vec!["1", "2"]);
}

#[test]
fn concurrent_puts_share_group_commits_and_keep_order_per_producer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = Arc::new(open(dir.path(), FsyncPolicy::Group(Duration::from_millis(2))).expect("open"));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let s = s.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    put(&s, vec![rec(&format!("{w}-{i}"))]).expect("append");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    let all = datas(&s.read("s", 0, 0, 1000).expect("read"));
    assert_eq!(all.len(), 200);
    for w in 0..4 {
        let mine: Vec<_> = all.iter().filter(|d| d.starts_with(&format!("{w}-"))).cloned().collect();
        let expected: Vec<_> = (0..50).map(|i| format!("{w}-{i}")).collect();
        assert_eq!(mine, expected, "producer {w} order");
    }
}

#[test]
fn a_full_stream_refuses_puts_until_consumers_catch_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let specs = vec![DiskStreamSpec::new("s", 2, FsyncPolicy::Never)];
    let s = DiskStreams::open(dir.path(), &specs, Arc::new(FileSyncer)).expect("open");
    s.register_consumer("s", 0, "c").expect("register");
    put(&s, vec![rec("1"), rec("2")]).expect("append");
    assert!(matches!(put(&s, vec![rec("3")]), Err(StreamError::Full { .. })));
    s.checkpoint("s", 0, "c", 2).expect("checkpoint");
    put(&s, vec![rec("3")]).expect("room again");
}

#[test]
fn retention_drops_whole_old_segments_by_age_and_by_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut by_size = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    by_size.segment_bytes = 1024;
    by_size.max_bytes = Some(4096);
    let s = DiskStreams::open(dir.path(), &[by_size.clone()], Arc::new(FileSyncer)).expect("open");
    for i in 0..100 {
        put(&s, vec![rec(&format!("{i:0>100}"))]).expect("append");
    }
    let files = std::fs::read_dir(dir.path().join("s"))
        .expect("ls")
        .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log")));
    let bytes: u64 = std::fs::read_dir(dir.path().join("s"))
        .expect("ls")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    assert!(bytes <= 4096 + 1024, "{bytes} bytes kept");
    assert!(files.count() < 10);
    let kept = s.read("s", 0, 99, 10).expect("the newest record stays");
    assert_eq!(datas(&kept), vec![format!("{:0>100}", 99)]);
    let Err(StreamError::Trimmed { oldest, .. }) = s.read("s", 0, 0, 10) else { panic!("old records must be gone") };
    assert!(oldest > 0 && oldest <= 99);
    assert_eq!(datas(&s.read("s", 0, oldest, 1).expect("read from the oldest")).len(), 1);
    drop(s);
    // The same holds after a restart.
    let s = DiskStreams::open(dir.path(), &[by_size], Arc::new(FileSyncer)).expect("reopen");
    assert_eq!(s.end("s", 0), Ok(100));
    assert!(matches!(s.read("s", 0, 0, 1), Err(StreamError::Trimmed { .. })));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut by_age = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    by_age.segment_bytes = 256;
    by_age.retention = Duration::from_millis(500);
    let s = DiskStreams::open(dir.path(), &[by_age], Arc::new(FileSyncer)).expect("open");
    for i in 0..10 {
        put(&s, vec![rec(&format!("{i:0>100}"))]).expect("append");
    }
    assert_eq!(s.read("s", 0, 0, 100).expect("young records stay").len(), 10);
    std::thread::sleep(Duration::from_millis(700));
    put(&s, vec![rec("fresh")]).expect("append");
    let Err(StreamError::Trimmed { oldest, .. }) = s.read("s", 0, 0, 10) else {
        panic!("expired records must be gone")
    };
    assert_eq!(oldest, 10, "everything but the active segment expired");
    assert_eq!(datas(&s.read("s", 0, 10, 10).expect("read")), vec!["fresh"]);
}

#[test]
fn a_write_limit_admits_what_fits_and_throttles_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    spec.write_limit = Some(WriteLimit { bytes_per_second: 1 << 20, records_per_second: 5 });
    let s = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("open");
    let batch: Vec<NewRecord> = (0..8).map(|i| rec(&i.to_string())).collect();
    let admitted = |records| s.append("s", records).expect("append").iter().filter(|r| r.is_ok()).count();
    assert_eq!(admitted(batch), 5, "a second's worth");
    let results = s.append("s", vec![rec("x")]).expect("append");
    assert!(matches!(results[0], Err(StreamError::Throttled { .. })), "{results:?}");
    std::thread::sleep(Duration::from_millis(450));
    // About half a second's worth came back (more only if the sleep overran a lot).
    let refilled = admitted((0..5).map(|i| rec(&format!("r{i}"))).collect());
    assert!((2..5).contains(&refilled), "refilled {refilled}");
}

#[test]
fn records_go_to_the_shard_owning_their_hash_and_keep_order_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    spec.shards = 4;
    let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("open");
    let info = s.info("s").expect("info");
    assert_eq!(info.shards.len(), 4);
    assert_eq!((info.shards[0].hash_start, info.shards[3].hash_end), (0, u128::MAX));
    for pair in info.shards.windows(2) {
        assert_eq!(pair[0].hash_end + 1, pair[1].hash_start, "ranges are contiguous");
    }
    let records: Vec<NewRecord> = (0..200)
        .map(|i| NewRecord {
            source: None,
            key: format!("customer-{}", i % 20),
            event_time_ms: None,
            data: Bytes::from(format!("{}-{i}", i % 20)),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect();
    let results = s.append("s", records).expect("append");
    let mut used = std::collections::BTreeSet::new();
    for (i, r) in results.iter().enumerate() {
        let a = r.as_ref().expect("appended");
        let hash = hash_key(&format!("customer-{}", i % 20));
        let owner = &info.shards[a.shard as usize];
        assert!(owner.hash_start <= hash && hash <= owner.hash_end, "record {i} in the wrong shard");
        used.insert(a.shard);
    }
    assert!(used.len() > 1, "20 keys spread over several shards");
    let mut seen: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for shard in 0..4 {
        for r in s.read("s", shard, 0, 1000).expect("read") {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            let (key, n) = text.split_once('-').expect("key-n");
            seen.entry(key.to_owned()).or_default().push(n.parse().expect("n"));
        }
    }
    assert_eq!(seen.values().map(Vec::len).sum::<usize>(), 200);
    for (key, ns) in &seen {
        assert!(ns.windows(2).all(|w| w[0] < w[1]), "key {key} out of order: {ns:?}");
    }
    // An explicit hash key wins over the partition key.
    let pinned = NewRecord { source: None, explicit_hash_key: Some(u128::MAX), ..rec("pinned") };
    assert_eq!(s.append("s", vec![pinned]).expect("append")[0].as_ref().map(|a| a.shard), Ok(3));
    drop(s);
    let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("reopen");
    assert_eq!(s.info("s").expect("info").records(), 201);
}

#[test]
fn resharding_closes_parents_and_routes_new_records_to_their_children() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    spec.shards = 2;
    let s = DiskStreams::open(dir.path(), &[spec.clone()], Arc::new(FileSyncer)).expect("open");
    let keyed = |n: u32| NewRecord { source: None, key: format!("key-{n}"), ..rec(&n.to_string()) };
    s.append("s", (0..50).map(keyed).collect()).expect("append");
    s.reshard("s", Reshard::Uniform(3)).expect("reshard");
    let results = s.append("s", (50..100).map(keyed).collect()).expect("append");
    assert!(results.iter().all(|r| r.as_ref().is_ok_and(|a| a.shard >= 2)), "new records go to the children");
    let check = |s: &DiskStreams| {
        let info = s.info("s").expect("info");
        assert_eq!(info.shards.len(), 5);
        assert_eq!(info.shards[0].closed_at, Some(info.shards[0].end), "parents are closed at their end");
        assert_eq!(info.shards[1].closed_at, Some(info.shards[1].end));
        assert_eq!(info.shards[2].parents, vec![0], "the first child covers part of shard 0 only");
        assert_eq!(info.shards[3].parents, vec![0, 1], "the middle child straddles both parents");
        assert_eq!(info.shards[4].parents, vec![1]);
        assert_eq!(info.records(), 100);
        let lineage = s.lineage("s").expect("lineage");
        assert_eq!(lineage[3].parents, vec![0, 1]);
    };
    check(&s);
    drop(s);
    // The lineage survives a restart, whatever the manifest's `shards` says now.
    let s = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("reopen");
    check(&s);
    let results = s.append("s", vec![keyed(7)]).expect("append");
    assert!(results[0].as_ref().is_ok_and(|a| a.shard >= 2));
}

#[test]
fn a_split_and_a_merge_keep_their_lineage_times_and_creation_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    let s = DiskStreams::open(dir.path(), std::slice::from_ref(&spec), Arc::new(FileSyncer)).expect("open");
    let created = s.info("s").expect("info").created_ms;
    let half = 1u128 << 127;
    s.reshard("s", Reshard::Split { shard: 0, at: half }).expect("split");
    let refused = |r: Result<(), StreamError>| matches!(r, Err(StreamError::InvalidReshard(_)));
    assert!(refused(s.reshard("s", Reshard::Split { shard: 0, at: 5 })), "a closed shard");
    assert!(refused(s.reshard("s", Reshard::Split { shard: 1, at: 0 })), "at its own first hash key");
    assert!(refused(s.reshard("s", Reshard::Split { shard: 1, at: 1 })), "a child of one hash key");
    assert!(refused(s.reshard("s", Reshard::Split { shard: 1, at: half - 1 })), "at its own last hash key");
    s.reshard("s", Reshard::Merge { shard: 2, adjacent: 1 }).expect("merge");
    assert!(refused(s.reshard("s", Reshard::Merge { shard: 3, adjacent: 3 })), "one shard is not two");
    let check = |s: &DiskStreams| {
        let info = s.info("s").expect("info");
        assert_eq!(info.created_ms, created, "the creation time is kept, not read again from the folder");
        let ranges: Vec<(u128, u128, Vec<u32>, bool)> =
            info.shards.iter().map(|s| (s.hash_start, s.hash_end, s.parents.clone(), s.closed_at.is_some())).collect();
        assert_eq!(
            ranges,
            vec![
                (0, u128::MAX, vec![], true),
                (0, half - 1, vec![0], true),
                (half, u128::MAX, vec![0], true),
                (0, u128::MAX, vec![2, 1], false),
            ]
        );
        assert!(info.shards[1].opened_ms <= info.shards[1].closed_ms.expect("closed"));
        assert!(info.shards[3].closed_ms.is_none());
    };
    check(&s);
    drop(s);
    let s = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("reopen");
    check(&s);
}

#[test]
fn a_stream_kept_by_an_older_weir_opens_with_its_lineage_and_a_creation_time_that_stays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stream_dir = dir.path().join("s");
    std::fs::create_dir_all(&stream_dir).expect("folder");
    // Lineage lines without the open and close times, as weir wrote them before.
    let half = (1u128 << 127) - 1;
    let topology = format!("0 0 {} 0 -\n1 0 {half} - 0\n2 {} {} - 0\n", u128::MAX, half + 1, u128::MAX);
    std::fs::write(stream_dir.join(topology::TOPOLOGY_FILE), topology).expect("topology");
    let spec = DiskStreamSpec::new("s", 1_000_000, FsyncPolicy::Never);
    let s = DiskStreams::open(dir.path(), std::slice::from_ref(&spec), Arc::new(FileSyncer)).expect("open");
    let info = s.info("s").expect("info");
    assert_eq!(info.shards.iter().map(|s| s.parents.clone()).collect::<Vec<_>>(), vec![vec![], vec![0], vec![0]]);
    assert_eq!(info.shards[0].closed_ms, Some(info.created_ms), "an unknown close time reads as the stream's start");
    drop(s);
    let again = DiskStreams::open(dir.path(), &[spec], Arc::new(FileSyncer)).expect("reopen");
    assert_eq!(again.info("s").expect("info").created_ms, info.created_ms);
}
