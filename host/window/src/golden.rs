//! Golden tests: each file in `cases/` is a window spec, input records and clock ticks,
//! and the results (each pane: on time, then revisions) and late records expected, compared in any order. The harness folds
//! natively (a sum of each record's value) and runs every case twice: straight through,
//! and restarting from a snapshot before every input, which must not change a thing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{FoldRecord, TimeSource, WindowKind, WindowOperator, WindowSpec};
use weir_stream::time::format_ms;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Case {
    /// What the case shows; printed when it fails.
    description: String,
    window: CaseWindow,
    input: Vec<Input>,
    #[serde(default)]
    result: Vec<ExpectedResult>,
    #[serde(default)]
    late: Vec<ExpectedLate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct CaseWindow {
    /// `tumbling` or `sliding`.
    kind: String,
    size: String,
    slide: Option<String>,
    #[serde(default)]
    time: TimeSource,
    out_of_orderness: Option<String>,
    allowed_lateness: Option<String>,
    idle_timeout: Option<String>,
    #[serde(default)]
    expected_keys: BTreeSet<String>,
    /// Shards declared at the first input's clock, before any record.
    #[serde(default)]
    shards: Vec<u32>,
}

/// A record (with `key`), or a clock tick (only `now`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Input {
    #[serde(default)]
    shard: u32,
    key: Option<String>,
    /// The record's event time.
    time: Option<String>,
    #[serde(default)]
    value: i64,
    /// The host's clock, which is also the arrival time; defaults to `time`.
    now: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ExpectedResult {
    /// `[start, end]`.
    window: [String; 2],
    key: String,
    sum: i64,
    /// The pane: 0 on time (the default), then 1, 2, ... for revisions late records caused.
    #[serde(default)]
    revision: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ExpectedLate {
    key: String,
    time: String,
    /// Words the reason must contain.
    reason: String,
}

/// What a run produced, in a canonical order: (start, end, key, sum, revision) and (key, time, reason).
#[derive(Debug, PartialEq)]
struct Outcome {
    results: Vec<(String, String, String, i64, u32)>,
    late: Vec<(String, String, String)>,
}

fn ms(rfc3339: &str) -> i64 {
    weir_stream::time::system_ms(humantime::parse_rfc3339(rfc3339).unwrap_or_else(|e| panic!("`{rfc3339}`: {e}")))
}

fn duration(text: &Option<String>) -> Option<Duration> {
    text.as_deref().map(|t| humantime::parse_duration(t).unwrap_or_else(|e| panic!("`{t}`: {e}")))
}

fn spec_of(window: &CaseWindow) -> WindowSpec {
    let size = duration(&Some(window.size.clone())).expect("a size");
    let kind = match window.kind.as_str() {
        "tumbling" => WindowKind::tumbling(size),
        "sliding" => WindowKind::sliding(size, duration(&window.slide).expect("sliding windows need a slide")),
        other => panic!("unknown window kind `{other}`"),
    }
    .expect("a valid window size");
    WindowSpec {
        kind,
        time: window.time,
        out_of_orderness: duration(&window.out_of_orderness).unwrap_or_default(),
        allowed_lateness: duration(&window.allowed_lateness).unwrap_or_default(),
        idle_timeout: duration(&window.idle_timeout),
        max_ahead: None,
    }
}

fn sum_of(state: &[u8]) -> i64 {
    match state {
        [] => 0,
        bytes => i64::from_le_bytes(bytes.try_into().expect("a sum state is 8 bytes")),
    }
}

/// Runs a case, restarting from a snapshot before every input when `restart` is set.
fn run(case: &Case, restart: bool) -> Outcome {
    let spec = spec_of(&case.window);
    let start_ms =
        case.input.first().map_or(0, |input| ms(input.now.as_ref().or(input.time.as_ref()).expect("a time")));
    let mut operator = WindowOperator::new(spec.clone()).expect("a valid spec");
    operator.set_expected_keys(case.window.expected_keys.clone());
    for shard in &case.window.shards {
        operator.add_shard(*shard, start_ms);
    }
    let mut outcome = Outcome { results: Vec::new(), late: Vec::new() };
    let mut clock_ms = start_ms;
    for input in &case.input {
        let event_ms = input.time.as_deref().map(ms);
        let now_ms = input.now.as_deref().map(ms).or(event_ms).expect("an input needs a time or a now");
        if restart {
            // Restarted at once after the previous input: no downtime.
            let snapshot = operator.snapshot();
            operator = WindowOperator::restore(spec.clone(), &snapshot, clock_ms).expect("the snapshot restores");
            operator.set_expected_keys(case.window.expected_keys.clone());
        }
        if let Some(key) = &input.key {
            let time_ms = spec.time.pick(event_ms.expect("a record needs a time"), now_ms);
            let record = FoldRecord { shard: input.shard, source: None, key, time_ms };
            let mut plan = operator.plan_fold([record], now_ms);
            for set_aside in &plan.set_aside {
                outcome.late.push((key.clone(), format_ms(time_ms), set_aside.reason.clone()));
            }
            for state in &mut plan.states {
                *state = (sum_of(state) + input.value).to_le_bytes().to_vec();
            }
            operator.apply_fold(plan);
        }
        for closed in operator.close_due(now_ms) {
            for (key, state) in closed.keys.iter().zip(&closed.states) {
                let (start, end) = (format_ms(closed.window.start), format_ms(closed.window.end));
                outcome.results.push((start, end, key.clone(), sum_of(state), closed.revision));
            }
        }
        clock_ms = now_ms;
    }
    outcome.results.sort();
    outcome.late.sort();
    outcome
}

fn check(path: &Path) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
    let case: Case = toml::from_str(&text).map_err(|e| e.to_string())?;
    let mut expected_results: Vec<_> = case
        .result
        .iter()
        .map(|r| (format_ms(ms(&r.window[0])), format_ms(ms(&r.window[1])), r.key.clone(), r.sum, r.revision))
        .collect();
    expected_results.sort();
    let mut expected_late: Vec<_> = case.late.iter().map(|l| (l.key.clone(), format_ms(ms(&l.time)))).collect();
    expected_late.sort();

    let straight = run(&case, false);
    let late_of = |outcome: &Outcome| outcome.late.iter().map(|(k, t, _)| (k.clone(), t.clone())).collect::<Vec<_>>();
    if straight.results != expected_results || late_of(&straight) != expected_late {
        return Err(format!(
            "{}\n  results:  {:?}\n  expected: {expected_results:?}\n  late:     {:?}\n  expected: {expected_late:?}",
            case.description, straight.results, straight.late
        ));
    }
    for expected in &case.late {
        let time = format_ms(ms(&expected.time));
        let reasons = straight.late.iter().filter(|(key, at, _)| *key == expected.key && *at == time);
        if let Some((_, _, reason)) = reasons.clone().find(|(_, _, reason)| !reason.contains(&expected.reason)) {
            return Err(format!("{}\n  late reason {reason:?} lacks {:?}", case.description, expected.reason));
        }
    }
    let restarted = run(&case, true);
    if restarted != straight {
        return Err(format!("{}\n  restarting changed the outcome:\n  {restarted:?}", case.description));
    }
    Ok(())
}

#[test]
fn every_case_in_the_cases_folder_holds() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/cases");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("the cases folder")
        .map(|entry| entry.expect("a readable folder").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    paths.sort();
    assert!(paths.len() >= 7, "expected the golden cases in {}", dir.display());
    let failures: Vec<String> =
        paths.iter().filter_map(|path| check(path).err().map(|e| format!("{}: {e}", path.display()))).collect();
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), paths.len(), failures.join("\n\n"));
}
