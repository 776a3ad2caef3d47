//! Conformance: the same contract checks for every plugin of a world, whatever
//! language it is written in. A new language (or plugin) is proven by adding it
//! to `plugins/` (it is then in `artifacts::PLUGINS`) and, for a plugin family
//! implemented in several languages, to that family's list below.
//!
//! - Transformers: one outcome per record, each `[[self-test]]` of its
//!   plugin.toml alone and all in one batch, malformed records answered with a
//!   `processing-failed` reason (never a failed batch or a trap).
//! - Notifiers: a sample batch sends its notifications, the same batch redone
//!   sends none again, a malformed record fails the batch with a reason.
//! - Aggregators (the showcase's, and the scaffold's in every language): the
//!   same results however the records were batched, repeatable emits, an
//!   expected key without records, garbage refused with a reason or counted.
//! - Families: the Rust and Python traffic alerts give the same notifications
//!   and refuse the same bad config with a reason naming the setting.
//!
//! - SDK helpers: the Python and JavaScript ones read an aggregator result's
//!   window and revision as the Rust SDK's `pane` does.
//!
//! That every language's plugin logs through the host under its own name is
//! `tests/plugin_logs.rs`.

use std::sync::Arc;

use weir_host::manifest::plugin::ExpectedOutcome;
use weir_host::manifest::{Limits, PluginManifest, World};
use weir_host::notify::Notification;
use weir_host::pipeline::Producer;
use weir_host::plugin::{
    AggregatorInstance, AggregatorPlugin, Batch, MemoryServices, NotifierPlugin, Outcome, PluginError, SandboxSpec,
    TransformerPlugin, check_world,
};
use weir_host::scaffold::{Lang, new_plugin};
use weir_tests::{artifacts, config, engine, grants, plugin_component, plugin_manifest, root, sandbox};

/// A plugin of `plugins/` with its manifest.
fn plugins_of(world: World) -> Vec<(&'static str, &'static str, PluginManifest)> {
    artifacts::PLUGINS
        .iter()
        .filter_map(|&(name, component)| {
            let manifest = plugin_manifest(&root().join("plugins").join(name));
            (manifest.info.world == world).then_some((name, component, manifest))
        })
        .collect()
}

/// The sandbox a pipeline gives the plugin of `manifest` set up with `config`.
fn sandbox_of(manifest: &PluginManifest, config: &[(String, String)]) -> SandboxSpec {
    sandbox(&manifest.info.name.to_string(), Limits::default(), grants(manifest, config))
}

fn transformer(manifest: &PluginManifest, component: &str, config: Vec<(String, String)>) -> TransformerPlugin {
    let compiled = check_world(&engine(), component.as_ref(), World::Transformer).expect("fits its world");
    TransformerPlugin::new(&engine(), compiled, sandbox_of(manifest, &config), config).expect("load")
}

fn notifier(manifest: &PluginManifest, component: &str, config: Vec<(String, String)>) -> NotifierPlugin {
    let compiled = check_world(&engine(), component.as_ref(), World::Notifier).expect("fits its world");
    NotifierPlugin::new(&engine(), compiled, sandbox_of(manifest, &config), config).expect("load")
}

/// Records no plugin can make sense of: not text, empty, a wrong JSON, a huge line.
fn garbage() -> Batch {
    let mut batch = Batch::with_capacity(4, 70_000);
    batch.push("k", 0, &[0xff, 0xfe, 0x00, 0x80]);
    batch.push("k", 0, b"");
    batch.push("k", 0, br#"{"unexpected": [1, 2, 3]}"#);
    batch.push("k", 0, "x,".repeat(30_000).as_bytes());
    batch
}

#[test]
fn every_transformer_keeps_the_outcome_contract() {
    let all = plugins_of(World::Transformer);
    assert!(!all.is_empty());
    for (name, component, manifest) in all {
        let mut instance = transformer(&manifest, component, manifest.default_config()).instantiate().expect("starts");
        assert!(!manifest.self_tests.is_empty(), "{name}: declare [[self-test]] records in plugin.toml");
        let mut together = Batch::with_capacity(manifest.self_tests.len(), 1024);
        for test in &manifest.self_tests {
            let mut alone = Batch::with_capacity(1, test.input.len());
            alone.push(&test.key, 0, test.input.as_bytes());
            together.push(&test.key, 0, test.input.as_bytes());
            let out = instance.transform(&alone).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(out.outcomes.len(), 1, "{name}: one outcome per record");
            assert_eq!(expected_outcome(name, &out.outcomes[0]), test.outcome, "{name}: self-test {:?}", test.input);
            if let Some(output) = &test.output {
                let first = out.output.records().next().unwrap_or_else(|| panic!("{name}: no output for {output}"));
                assert_eq!(std::str::from_utf8(first.payload).ok(), Some(output.as_str()), "{name}: output");
            }
        }
        let out = instance.transform(&together).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<ExpectedOutcome> = out.outcomes.iter().map(|o| expected_outcome(name, o)).collect();
        let expected: Vec<ExpectedOutcome> = manifest.self_tests.iter().map(|t| t.outcome).collect();
        assert_eq!(got, expected, "{name}: the self-tests in one batch");
        let produced: u32 = out.outcomes.iter().map(|o| if let Outcome::Ok(n) = o { *n } else { 0 }).sum();
        assert_eq!(out.output.len(), produced as usize, "{name}: ok(n) counts its output records");

        let out = instance.transform(&garbage()).unwrap_or_else(|e| panic!("{name}: garbage failed the batch: {e}"));
        assert_eq!(out.outcomes.len(), 4, "{name}: one outcome per garbage record");
        for outcome in &out.outcomes {
            assert_eq!(expected_outcome(name, outcome), ExpectedOutcome::ProcessingFailed, "{name}: garbage");
        }
    }
}

/// What an outcome is, checking that a failure says why.
fn expected_outcome(name: &str, outcome: &Outcome) -> ExpectedOutcome {
    match outcome {
        Outcome::Ok(_) => ExpectedOutcome::Ok,
        Outcome::Dropped => ExpectedOutcome::Dropped,
        Outcome::ProcessingFailed(reason) => {
            assert!(!reason.trim().is_empty(), "{name}: a failed record says why");
            ExpectedOutcome::ProcessingFailed
        }
    }
}

/// A batch each notifier of `plugins/` must act on, with its config.
fn notifier_sample(name: &str) -> (Vec<(String, String)>, Vec<String>) {
    let window = r#""window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:10:00.000Z""#;
    match name {
        "toll-billing-alert" => (
            config(&[("channel", "app"), ("default-threshold-cents", "10000")]),
            vec![format!(r#"{{"customer_id":"C1",{window},"total_cents":12000}}"#)],
        ),
        "traffic-monitor-alert" | "traffic-monitor-alert-py" => {
            (config(&[("channels", r#"["ops"]"#)]), vec![traffic_count("17", 3, 40), traffic_count("42", 50, 40)])
        }
        other => panic!("add a sample batch for the notifier `{other}` to tests/conformance.rs"),
    }
}

fn traffic_count(station: &str, vehicles: u64, minimum: u64) -> String {
    format!(
        r#"{{"station_id":"{station}","window_start":"2026-11-26T14:00:00.000Z","window_end":"2026-11-26T14:30:00.000Z","vehicles":{vehicles},"by_class":[0,0,0,0,0,0],"minimum":{minimum},"below_minimum":{}}}"#,
        vehicles < minimum
    )
}

fn batch(payloads: &[String]) -> Batch {
    let mut batch = Batch::with_capacity(payloads.len(), 1024);
    for p in payloads {
        batch.push("k", 1_795_708_800_000, p.as_bytes());
    }
    batch
}

#[test]
fn every_notifier_sends_once_and_reports_bad_records() {
    let all = plugins_of(World::Notifier);
    assert!(!all.is_empty());
    for (name, component, manifest) in all {
        let (config, sample) = notifier_sample(name);
        let services = Arc::new(MemoryServices::default());
        let plugin = notifier(&manifest, component, config);
        let mut instance = plugin.instantiate(services.clone()).expect("starts");
        instance.consume(&batch(&sample)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let sent = services.sent().len();
        assert!(sent > 0, "{name}: the sample sends something");
        // At least once: a batch is redone after a crash; nothing goes out twice.
        let mut again = plugin.instantiate(services.clone()).expect("starts");
        again.consume(&batch(&sample)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(services.sent().len(), sent, "{name}: the same batch again sends nothing new");
        match again.consume(&garbage()) {
            Err(PluginError::BadRecord { index: 0, reason }) => assert!(!reason.trim().is_empty(), "{name}: says why"),
            other => panic!("{name}: garbage must be refused as a bad record with a reason, not {other:?}"),
        }
    }
}

/// The traffic alert in each language it is written in.
const TRAFFIC_ALERTS: &[(&str, &str)] = &[("rust", "traffic-monitor-alert"), ("python", "traffic-monitor-alert-py")];

#[test]
fn the_traffic_alert_behaves_the_same_in_every_language() {
    let stations = [("17", 3, 40), ("42", 50, 40), ("55", 0, 5)];
    let input: Vec<String> = stations.iter().map(|&(s, v, m)| traffic_count(s, v, m)).collect();
    let mut results: Vec<(&str, Vec<Notification>)> = Vec::new();
    for &(language, plugin) in TRAFFIC_ALERTS {
        let services = Arc::new(MemoryServices::default());
        // Compiled once (the Python component is 19 MB), started with two configs.
        let compiled = check_world(&engine(), plugin_component(plugin).as_ref(), World::Notifier).expect("fits");
        let manifest = plugin_manifest(&root().join("plugins").join(plugin));
        let load = |config: Vec<(String, String)>| {
            NotifierPlugin::new(&engine(), compiled.clone(), sandbox_of(&manifest, &config), config).expect("load")
        };
        let alert = load(config(&[("channels", r#"["ops-inbox","ops-hook"]"#)]));
        let mut instance = alert.instantiate(services.clone()).expect("starts");
        instance.consume(&batch(&input)).unwrap_or_else(|e| panic!("{language}: {e}"));
        results.push((language, services.sent()));

        let bad = load(config(&[("channels", "ops")]));
        match bad.instantiate(Arc::new(MemoryServices::default())) {
            Err(PluginError::Init(reason)) => assert!(reason.contains("channels"), "{language}: {reason}"),
            other => panic!("{language}: a bad `channels` must stop the start with a reason, not {:?}", other.err()),
        }
    }
    let (_, reference) = &results[0];
    assert_eq!(reference.len(), 4, "two stations below their minimum, two channels each");
    assert_eq!(reference[2].subject, "Station 55 silent 14:00-14:30: no vehicles, minimum 5");
    for (language, sent) in &results[1..] {
        assert_eq!(sent, reference, "{language} sends what rust sends");
    }
}

const LANGUAGES_PIPELINE: &str = r#"
[pipeline]
name = "languages"
data-dir = "data"

[sources.http]
kind = "http"
stream = "toll-lines"

[streams.toll-lines]
[streams.clean-lines]
[streams.rows]

[stages.validate]
plugin = "{root}/plugins/toll-validate-c"
input = "toll-lines"
output = "clean-lines"
dead-letter = "rejected"
batch-wait = "1ms"

[stages.etl]
plugin = "{root}/plugins/toll-etl"
input = "clean-lines"
output = "rows"
batch-wait = "1ms"

[stages.enrich]
plugin = "{root}/plugins/toll-enrich-js"
input = "rows"
output = "enriched"
batch-wait = "1ms"
config = { regions = { "17" = "north", "42" = "harbour" } }

[sinks.enriched]
kind = "file"
path = "enriched.jsonl"

[sinks.rejected]
kind = "file"
path = "rejected.jsonl"
format = "json"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_rust_and_javascript_stages_run_in_one_pipeline() {
    let host = weir_tests::TestHost::start(LANGUAGES_PIPELINE).await.expect("start");
    let lines = [
        "T0017-000001,2026-11-26T14:03:12.345Z,17,3,TAG0012345,C000123,2,275",
        "T0042-000002,2026-11-26T14:05:00.5Z,42,1,TAG0000007,C000123,6,990",
        "T0042-000003,2026-11-26T14:05:01Z,42,1,TAG0000007,C000123,2,275,extra",
        "T0099-000004,2026-11-26T14:06:00Z,99,2,TAG0000009,C000777,1,150",
    ];
    let records = lines
        .iter()
        .map(|l| weir_host::stream::NewRecord {
            source: None,
            key: "k".into(),
            event_time_ms: None,
            data: bytes::Bytes::from(*l),
            explicit_hash_key: None,
            attributes: Vec::new(),
        })
        .collect();
    host.host.put("toll-lines", records, Producer::Native).expect("put");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let (enriched, rejected) = loop {
        let (enriched, rejected) =
            (weir_tests::lines(&host.path("enriched.jsonl")), weir_tests::lines(&host.path("rejected.jsonl")));
        if enriched.len() == 3 && rejected.len() == 1 {
            break (enriched, rejected);
        }
        assert!(std::time::Instant::now() < deadline, "so far: {enriched:?} {rejected:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let rows: Vec<serde_json::Value> = enriched.iter().map(|l| serde_json::from_str(l).expect("a JSON row")).collect();
    let got: Vec<(&str, &str, &str)> = rows
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_str().unwrap_or_default();
            (field("transaction_id"), field("vehicle_class_name"), field("region"))
        })
        .collect();
    assert_eq!(
        got,
        [
            ("T0017-000001", "car", "north"),
            ("T0042-000002", "heavy truck", "harbour"),
            ("T0099-000004", "motorcycle", "unassigned"),
        ]
    );
    let letter: serde_json::Value = serde_json::from_str(&rejected[0]).expect("a dead letter");
    assert_eq!(letter["stage"], "validate", "{letter}");
    assert!(
        letter["reason"].as_str().unwrap_or_default().contains("expected 8 comma-separated fields, found 9"),
        "{letter}"
    );
}

/// Toll rows (what `toll-etl` makes of a simulated morning): the input of every aggregator of `plugins/`.
fn toll_rows() -> Vec<(String, i64, String)> {
    let etl = toll_etl::TollEtl::with_defaults();
    let day = weir_host::simulate::generate_day(11, 1_795_651_200_000);
    day.iter()
        .take(400)
        .filter_map(|line| {
            let row = etl.parse(line.text.as_bytes()).ok()?;
            let mut json = Vec::new();
            etl.write_row(&row, &mut json);
            Some((row.customer_id.to_owned(), row.event_time_ms, String::from_utf8(json).ok()?))
        })
        .collect()
}

/// What an aggregator emits for `rows` folded `per_batch` records at a time into one window.
fn aggregate(instance: &mut AggregatorInstance, rows: &[(String, i64, String)], per_batch: usize) -> Vec<String> {
    let keys: Vec<String> = {
        let mut keys: Vec<String> = rows.iter().map(|(k, _, _)| k.clone()).collect();
        keys.sort();
        keys.dedup();
        keys
    };
    let mut states = vec![Vec::new(); keys.len()];
    for chunk in rows.chunks(per_batch) {
        let mut batch = Batch::with_capacity(chunk.len(), 4096);
        let mut groups = Vec::new();
        for (key, time, payload) in chunk {
            batch.push(key, *time, payload.as_bytes());
            groups.push(keys.binary_search(key).expect("a key") as u32);
        }
        instance.fold(&batch, &groups, &mut states).expect("fold");
    }
    let (start, end) = (1_795_651_200_000, 1_795_651_200_000 + 86_400_000);
    let out = instance.emit(start, end, &keys, &states).expect("emit");
    out.records().map(|r| format!("{} {}", r.key, String::from_utf8_lossy(r.payload))).collect()
}

/// Every aggregator keeps the aggregate contract, in every language: its results do not
/// depend on how records were batched (the host cuts batches as records arrive, and a
/// restart cuts them elsewhere), emitting is repeatable (a restart emits again), an
/// expected key with no records emits, and garbage is refused with a reason or counted,
/// never a trap.
#[test]
fn every_aggregator_gives_the_same_results_however_its_records_are_batched() {
    let rows = toll_rows();
    assert!(rows.len() > 300, "{}", rows.len());
    let mut all: Vec<(String, AggregatorPlugin)> = plugins_of(World::Aggregator)
        .into_iter()
        .map(|(name, component, manifest)| {
            (name.to_owned(), aggregator(&manifest, component, manifest.default_config()))
        })
        .collect();
    // The scaffold's aggregator in each language weir builds.
    let scaffolds = root().join("target/conformance");
    for lang in [Lang::Rust, Lang::Python, Lang::Js, Lang::C] {
        let name = format!("aggregator-{}", lang.label().to_lowercase());
        let dir = scaffolds.join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        let shared = scaffolds.join("target").display().to_string();
        new_plugin(&name, World::Aggregator, lang, &dir, Some(&shared)).expect("scaffold");
        let manifest = plugin_manifest(&dir);
        let component = weir_host::build::build_plugin(&manifest).expect("build");
        all.push((name.clone(), aggregator(&manifest, component.to_str().expect("a path"), manifest.default_config())));
    }
    assert!(all.len() >= 6, "the showcase's aggregators and one per language");
    let mut scaffold_results = Vec::new();
    for (name, plugin) in &all {
        let mut instance = plugin.instantiate().unwrap_or_else(|e| panic!("{name}: {e}"));
        let version = instance.state_version().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(plugin.instantiate().expect("starts").state_version().expect("version"), version, "{name}");
        let whole = aggregate(&mut instance, &rows, rows.len());
        assert!(!whole.is_empty(), "{name}: results for the rows");
        assert_eq!(aggregate(&mut instance, &rows, 1), whole, "{name}: one record per batch");
        assert_eq!(aggregate(&mut instance, &rows, 37), whole, "{name}: batches of 37");
        let mut fresh = plugin.instantiate().expect("starts");
        assert_eq!(aggregate(&mut fresh, &rows, 100), whole, "{name}: another instance, batches of 100");
        if name.starts_with("aggregator-") {
            scaffold_results.push((name, whole));
        }
        // An expected key that saw no records: its state is empty.
        instance.emit(0, 600_000, &["no-records".to_owned()], &[Vec::new()]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut states = vec![Vec::new()];
        match instance.fold(&garbage(), &[0, 0, 0, 0], &mut states) {
            Ok(()) | Err(PluginError::Returned(_) | PluginError::BadRecord { .. }) => {}
            Err(other) => panic!("{name}: garbage must be refused with a reason or folded, not {other:?}"),
        }
    }
    // The scaffold is one plugin written four times: every language counts the same.
    let (first, counts) = &scaffold_results[0];
    for (name, other) in &scaffold_results[1..] {
        assert_eq!(other, counts, "{name} counts differently from {first}");
    }
}

fn aggregator(manifest: &PluginManifest, component: &str, config: Vec<(String, String)>) -> AggregatorPlugin {
    let compiled = check_world(&engine(), component.as_ref(), World::Aggregator).expect("fits its world");
    AggregatorPlugin::new(&engine(), compiled, sandbox_of(manifest, &config), config).expect("load")
}

/// The Python and JavaScript helpers read a result's window and revision from the
/// attributes the host stamps on it (`weir-window-start`, `-end`, `weir-revision`),
/// out of a batch shaped as each language's bindings give it.
#[test]
fn the_python_and_javascript_helpers_read_a_results_pane() {
    use weir_host::stage::aggregate::{PANE_END, PANE_REVISION, PANE_START};
    let dir = tempfile::tempdir().expect("temp dir");
    // Record 1 carries a pane; record 0 none; record 2 a malformed one.
    let python = format!(
        r#"
import sys
from types import SimpleNamespace as N
sys.path.insert(0, {sdk:?})
import weir
a = lambda i, n, v: N(index=i, name=n, value=v)
batch = N(keys=b"k0k1k2", key_ends=[2, 4, 6], event_times=[1, 2, 3], payloads=b"abc", payload_ends=[1, 2, 3],
          attributes=[a(1, "{PANE_START}", "1795701600000"), a(1, "{PANE_END}", "1795702200000"),
                      a(1, "{PANE_REVISION}", "2"), a(2, "{PANE_START}", "soon")])
print([r.pane() for r in weir.records(batch)])
"#,
        sdk = root().join("sdk/python").display().to_string()
    );
    let out = std::process::Command::new("python3").args(["-c", &python]).output().expect("python3 runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[None, (1795701600000, 1795702200000, 2), None]");

    // Node imports the helper as an ES module.
    std::fs::copy(root().join("sdk/js/weir.js"), dir.path().join("weir.mjs")).expect("copy weir.js");
    let javascript = format!(
        r#"
import {{ records, pane }} from './weir.mjs';
const a = (index, name, value) => ({{ index, name, value }});
const bytes = (text) => new TextEncoder().encode(text);
const batch = {{ keys: bytes('k0k1k2'), keyEnds: [2, 4, 6], eventTimes: [1n, 2n, 3n], payloads: bytes('abc'),
  payloadEnds: [1, 2, 3], attributes: [a(1, '{PANE_START}', '1795701600000'), a(1, '{PANE_END}', '1795702200000'),
  a(1, '{PANE_REVISION}', '2'), a(2, '{PANE_START}', 'soon')] }};
console.log(JSON.stringify([...records(batch)].map(pane)));
"#
    );
    std::fs::write(dir.path().join("test.mjs"), javascript).expect("write the script");
    let out = std::process::Command::new("node").arg("test.mjs").current_dir(dir.path()).output().expect("node runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#"[null,{"start":1795701600000,"end":1795702200000,"revision":2},null]"#
    );
}
