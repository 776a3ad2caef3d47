//! Hostile guests are contained: a trap, an endless loop, a memory bomb and a
//! file access without a grant each fail with a clear error, and the plugin
//! keeps serving from a fresh instance afterwards.

use std::time::{Duration, Instant};

use weir_host::manifest::{DirGrant, Grants, Limits};
use weir_host::plugin::{Batch, Outcome, PluginError, Transformed, TransformerPlugin};
use weir_tests::{artifacts, config, engine, sandbox};

fn hostile(mode: &str, limits: Limits, grants: Grants) -> TransformerPlugin {
    let engine = engine();
    let compiled = engine.compile(artifacts::HOSTILE.as_ref()).expect("compile hostile");
    TransformerPlugin::new(&engine, compiled, sandbox("hostile@0.1.0", limits, grants), config(&[("mode", mode)]))
        .expect("load hostile")
}

fn batch(payloads: &[&str]) -> Batch {
    let mut b = Batch::with_capacity(payloads.len(), 64);
    for (i, p) in payloads.iter().enumerate() {
        b.push(&format!("k{i}"), i as i64, p.as_bytes());
    }
    b
}

fn texts(t: &Transformed) -> Vec<String> {
    t.output.records().map(|r| String::from_utf8_lossy(r.payload).into_owned()).collect()
}

/// The plugin still works: a new instance of the well-behaved mode transforms a batch.
fn still_serves(plugin: &TransformerPlugin) {
    plugin.instantiate().expect("a fresh instance after the failure");
    let good = hostile("upper", Limits::default(), Grants::default());
    let out = good.instantiate().expect("instantiate").transform(&batch(&["ok"])).expect("transform");
    assert_eq!(texts(&out), vec!["OK"]);
}

#[test]
fn outcomes_follow_the_contract() {
    let plugin = hostile("upper", Limits::default(), Grants::default());
    let mut instance = plugin.instantiate().expect("instantiate");
    let out = instance.transform(&batch(&["a", "drop", "twice", "b"])).expect("transform");
    assert_eq!(out.outcomes, vec![Outcome::Ok(1), Outcome::Dropped, Outcome::Ok(2), Outcome::Ok(1)]);
    assert_eq!(texts(&out), vec!["A", "TWICE-1", "TWICE-2", "B"]);
    let keys: Vec<_> = out.output.records().map(|r| (r.key.to_owned(), r.event_time_ms)).collect();
    assert_eq!(keys, vec![("k0".into(), 0), ("k2".into(), 2), ("k2".into(), 2), ("k3".into(), 3)]);
    let per_record: Vec<usize> = out.per_record().map(|(_, _, recs)| recs.len()).collect();
    assert_eq!(per_record, vec![1, 0, 2, 1]);
    // An empty batch is fine too.
    assert!(instance.transform(&batch(&[])).expect("empty").outcomes.is_empty());
}

#[test]
fn a_trapping_plugin_is_reported_and_replaced() {
    let plugin = hostile("trap-on-boom", Limits::default(), Grants::default());
    let mut instance = plugin.instantiate().expect("instantiate");
    let err = instance.transform(&batch(&["fine", "boom"])).expect_err("trap");
    assert!(matches!(err, PluginError::Trap(_)), "{err:?}");
    assert!(err.poisons_instance());
    assert_eq!(err.code(), "trap");
    still_serves(&plugin);
}

#[test]
fn an_endless_loop_is_interrupted_at_its_deadline() {
    let limits = Limits { timeout: Duration::from_millis(200), ..Limits::default() };
    let plugin = hostile("loop", limits, Grants::default());
    let mut instance = plugin.instantiate().expect("instantiate");
    let started = Instant::now();
    let err = instance.transform(&batch(&["spin"])).expect_err("deadline");
    assert!(matches!(err, PluginError::Timeout(d) if d == Duration::from_millis(200)), "{err:?}");
    assert!(err.to_string().contains("deadline"), "{err}");
    // Generous bound: this asserts the call was interrupted at all, not how fast.
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
    still_serves(&plugin);
}

#[test]
fn a_memory_bomb_is_stopped_at_the_cap() {
    let limits = Limits { memory_bytes: 16 << 20, ..Limits::default() };
    let plugin = hostile("grow", limits, Grants::default());
    let mut instance = plugin.instantiate().expect("instantiate");
    let err = instance.transform(&batch(&["eat"])).expect_err("memory cap");
    assert!(matches!(err, PluginError::MemoryCap(n) if n == 16 << 20), "{err:?}");
    assert!(err.to_string().contains("memory cap of 16777216 bytes"), "{err}");
    still_serves(&plugin);
}

#[test]
fn files_are_denied_without_a_grant_and_readable_with_one() {
    let denied = hostile("open-file", Limits::default(), Grants::default());
    let out = denied.instantiate().expect("instantiate").transform(&batch(&["x"])).expect("transform");
    match &out.outcomes[0] {
        Outcome::ProcessingFailed(reason) => assert!(reason.starts_with("open /etc/passwd:"), "{reason}"),
        other => panic!("reading /etc/passwd without a grant must fail, got {other:?}"),
    }

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("hello.txt"), "granted").expect("write");
    let grants = Grants {
        clock: false,
        dirs: vec![DirGrant { host: dir.path().to_owned(), guest: "/data".into(), writable: false }],
        ..Grants::default()
    };
    let engine = engine();
    let compiled = engine.compile(artifacts::HOSTILE.as_ref()).expect("compile");
    let plugin = TransformerPlugin::new(
        &engine,
        compiled,
        sandbox("hostile@0.1.0", Limits::default(), grants),
        config(&[("mode", "open-file"), ("path", "/data/hello.txt")]),
    )
    .expect("load");
    let out = plugin.instantiate().expect("instantiate").transform(&batch(&["x"])).expect("transform");
    assert_eq!(texts(&out), vec!["granted"]);
}

#[test]
fn the_clock_is_frozen_at_the_epoch_unless_granted() {
    let read_clock = |grants: Grants| {
        let out =
            hostile("clock", Limits::default(), grants).instantiate().expect("instantiate").transform(&batch(&["t"]));
        texts(&out.expect("transform"))[0].parse::<u64>().expect("milliseconds")
    };
    assert_eq!(read_clock(Grants::default()), 0);
    let granted = read_clock(Grants { clock: true, ..Grants::default() });
    assert!(granted > 1_700_000_000_000, "a granted clock is real: {granted}");
}

#[test]
fn a_plugin_refusing_its_config_fails_at_init() {
    let plugin = hostile("refuse-init", Limits::default(), Grants::default());
    let err = plugin.instantiate().err().expect("init must fail");
    assert!(matches!(&err, PluginError::Init(m) if m.contains("refusing to start")), "{err:?}");
}

#[test]
fn a_component_of_another_world_is_refused_with_the_reason() {
    let engine = engine();
    let err = weir_host::plugin::check_world(
        &engine,
        artifacts::ECHO_NOTIFIER.as_ref(),
        weir_host::manifest::World::Transformer,
    )
    .err()
    .expect("a notifier is not a transformer");
    let text = err.to_string();
    assert!(text.contains("does not implement the `weir:plugin/transformer` world"), "{text}");
    let err =
        weir_host::plugin::check_world(&engine, "/nonexistent.wasm".as_ref(), weir_host::manifest::World::Transformer)
            .err()
            .expect("missing file");
    assert!(err.to_string().contains("cannot read component `/nonexistent.wasm`"), "{err}");
}

const OUTPUT_LIMITS: &str = r#"
[pipeline]
name = "output-limits"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
[streams.out]

[stages.upper]
plugin = "{root}/tests/guests/hostile"
input = "in"
output = "out"
dead-letter = "letters"
batch-wait = "1ms"

[sinks.letters]
kind = "file"
path = "letters.jsonl"
format = "json"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_whose_outputs_break_the_stage_limits_is_dead_lettered_and_nothing_of_it_written() {
    use weir_host::pipeline::Producer;
    let host = weir_tests::TestHost::start(OUTPUT_LIMITS).await.expect("start");
    // One output of 2 MiB (over the 1 MiB of a stream record), and 2,000 outputs (over 1,000).
    let records = ["a", "huge", "many", "b"]
        .iter()
        .map(|p| weir_host::stream::NewRecord {
            source: None,
            key: "k".into(),
            event_time_ms: None,
            data: bytes::Bytes::from(p.as_bytes().to_vec()),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect();
    host.host.put("in", records, Producer::Native).expect("put");
    host.wait_until("the batch done", |s| s.stages[0].records_in == 4).await;
    let out: Vec<String> = host
        .host
        .read("out", 0, 0, 10_000)
        .expect("read")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    assert_eq!(out, ["A", "B"], "nothing of the inputs over the limits is written");
    let letters = weir_tests::lines(&host.path("letters.jsonl"));
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert!(letters.iter().all(|l| l.contains("\"output-limit\"")), "{letters:?}");
    assert!(letters[0].contains("an output of 2097152 bytes") && letters[0].contains("output-record-size"));
    assert!(letters[1].contains("2000 outputs") && letters[1].contains("outputs-per-record"));
    assert_eq!(host.host.status().stages[0].dead_lettered, 2);

    // A stream takes records of 1 MiB at most: a larger bound is refused where it is written.
    let path = host.path("too-large.toml");
    let text = OUTPUT_LIMITS
        .replace("{root}", &weir_tests::root().display().to_string())
        .replace("batch-wait = \"1ms\"", "batch-wait = \"1ms\"\nlimits = { output-record-size = \"2MiB\" }");
    std::fs::write(&path, text).expect("manifest");
    let problems = weir_host::manifest::load(&path).expect_err("refused").to_string();
    assert!(problems.contains("limits.output-record-size must be between 1B and 1MiB"), "{problems}");
}

const EMIT_LIMITS: &str = r#"
[pipeline]
name = "emit-limits"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
[streams.sums]

[stages.sum]
plugin = "{root}/tests/guests/sum-aggregator"
input = "in"
output = "sums"
dead-letter = "letters"
batch-wait = "1ms"
window = { size = "10m" }

[sinks.letters]
kind = "file"
path = "letters.jsonl"
format = "json"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_result_over_the_stage_limits_is_dead_lettered_and_the_others_written() {
    use weir_host::pipeline::Producer;
    let host = weir_tests::TestHost::start(EMIT_LIMITS).await.expect("start");
    // 2026-11-26T14:00:00Z, and a record of a later window to close the first one.
    let t14 = 1_795_701_600_000;
    let records = [("a", t14), ("huge", t14), ("many", t14), ("b", t14), ("z", t14 + 20 * 60_000)]
        .iter()
        .map(|(key, at)| weir_host::stream::NewRecord {
            source: None,
            key: (*key).into(),
            event_time_ms: Some(*at),
            data: bytes::Bytes::from_static(b"5"),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect();
    host.host.put("in", records, Producer::Native).expect("put");
    host.wait_until("the batch done", |s| s.stages[0].records_in == 5).await;
    host.host.end_input(Duration::from_secs(60)).expect("the window is written");
    let mut sums: Vec<String> = host
        .host
        .read("sums", 0, 0, 10_000)
        .expect("read")
        .iter()
        .map(|r| String::from_utf8_lossy(&r.data).into_owned())
        .collect();
    sums.sort();
    assert_eq!(sums, ["a=5 (1 records)", "b=5 (1 records)"], "nothing of the keys over the limits is written");
    let letters = weir_tests::lines(&host.path("letters.jsonl"));
    assert_eq!(letters.len(), 2, "{letters:?}");
    let letter = |key: &str| letters.iter().find(|l| l.contains(&format!("for key `{key}`"))).expect("a letter");
    assert!(letter("huge").contains("\"output-limit\"") && letter("huge").contains("an output of 2097152 bytes"));
    assert!(letter("many").contains("2000 outputs") && letter("many").contains("outputs-per-record"));
    assert!(letter("many").contains("2026-11-26"), "the letter names the window: {}", letter("many"));
    assert_eq!(host.host.status().stages[0].dead_lettered, 2);
}
