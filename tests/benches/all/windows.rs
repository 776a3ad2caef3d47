//! Windowed aggregation throughput and window-state memory.
//!
//! 1. The 10-minute per-customer tumbling sum of `toll-billing-sum` on
//!    10,000,000 generated rows from 100,000 customers, in batches of 1,000:
//!    through the host's window operator and the aggregator component (as an
//!    aggregator stage runs it), beside a native Rust fold into a HashMap of
//!    (window, customer) → (total, count) parsing the same rows. Windows close
//!    as the rows move on (event time advances 10 minutes every 1,000,000 rows),
//!    and both sides check their totals agree. Records/s and the ratio.
//! 2. Resident memory of window state for 1,000,000 open keys (one window),
//!    measured from /proc/self/statm around filling the operator.
//! 3. The curve: 1/100 and 1/10 of the rows and customers, then all of them;
//!    the state of that many open keys.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weir_host::manifest::{Grants, Limits};
use weir_host::plugin::{AggregatorPlugin, Batch};
use weir_host::window::{FoldRecord, WindowKind, WindowOperator, WindowSpec};
use weir_tests::{artifacts, engine, sandbox};

use crate::table::{Curve, Figure, Point, Row, Size, Target};
use crate::{Report, resident_bytes};

const BATCH: usize = 1_000;
/// 2026-11-25T00:00:00Z
const START: i64 = 1_795_564_800_000;
const WINDOW_MS: i64 = 600_000;
/// Rows generated once; longer runs repeat them ten windows later each time.
const DISTINCT: usize = 1_000_000;

/// How much a run folds: a customer per 100 rows, ten windows per `DISTINCT` rows.
#[derive(Clone, Copy)]
struct Work {
    records: usize,
    customers: usize,
}

/// The generated rows: customer, event time, payload.
type Rows = Vec<(String, i64, String)>;

fn rows(work: Work) -> Rows {
    let distinct = work.records.min(DISTINCT);
    (0..distinct)
        .map(|i| {
            let customer = format!("C{:06}", i % work.customers);
            // Event time crosses a window every tenth of the rows.
            let at = START + (i as i64) * WINDOW_MS * 10 / distinct as i64;
            let payload = format!(r#"{{"customer_id":"{customer}","amount_cents":{}}}"#, 100 + i % 900);
            (customer, at, payload)
        })
        .collect()
}

/// Row `i` of a run: the generated row, ten windows later for each time round.
fn nth(rows: &Rows, i: usize) -> (&str, i64, &str) {
    let (customer, at, payload) = &rows[i % rows.len()];
    (customer, at + (i / rows.len()) as i64 * WINDOW_MS * 10, payload)
}

#[derive(serde::Deserialize)]
struct Amount {
    amount_cents: u64,
}

/// (window start, customer) -> (total cents, transactions)
type Totals = HashMap<(i64, String), (u64, u32)>;

fn native(rows: &Rows, records: usize) -> (f64, Totals) {
    let started = Instant::now();
    let mut totals = Totals::new();
    for i in 0..records {
        let (customer, at, payload) = nth(rows, i);
        let row: Amount = serde_json::from_str(payload).expect("row");
        let t = totals.entry((at - at.rem_euclid(WINDOW_MS), customer.to_owned())).or_default();
        t.0 += row.amount_cents;
        t.1 += 1;
    }
    (records as f64 / started.elapsed().as_secs_f64(), totals)
}

fn component(rows: &Rows, records: usize) -> (f64, Totals) {
    let engine = engine();
    let compiled = engine.compile(artifacts::TOLL_BILLING_SUM.as_ref()).expect("compile");
    let spec = sandbox("toll-billing-sum", Limits::default(), Grants::default());
    let plugin = AggregatorPlugin::new(&engine, compiled, spec, vec![]).expect("load");
    let mut instance = plugin.instantiate().expect("instantiate");
    let mut window = WindowSpec::new(WindowKind::tumbling(Duration::from_secs(600)).expect("window"));
    window.max_ahead = None;
    let mut operator = WindowOperator::new(window).expect("operator");
    operator.add_shard(0, 0);
    let mut results = Vec::new();
    let started = Instant::now();
    let mut i = 0;
    while i < records {
        let batch_rows: Vec<(&str, i64, &str)> = (i..(i + BATCH).min(records)).map(|j| nth(rows, j)).collect();
        let mut plan = operator.plan_fold(
            batch_rows.iter().map(|(key, at, _)| FoldRecord { shard: 0, source: None, key, time_ms: *at }),
            // The clock stands still: only event time closes windows.
            START,
        );
        let mut batch = Batch::with_capacity(plan.rows.len(), plan.rows.len() * 48);
        for &r in &plan.rows {
            let (key, at, payload) = batch_rows[r];
            batch.push(key, at, payload.as_bytes());
        }
        instance.fold(&batch, &plan.groups, &mut plan.states).expect("fold");
        operator.apply_fold(plan);
        while let Some(closed) = operator.pop_due() {
            let out =
                instance.emit(closed.window.start, closed.window.end, &closed.keys, &closed.states).expect("emit");
            results.push((closed.window.start, out));
        }
        i += BATCH;
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    // Checking the results is not part of the work measured.
    let mut totals = HashMap::new();
    for (start, out) in &results {
        for r in out.records() {
            let v: serde_json::Value = serde_json::from_slice(r.payload).expect("result");
            let total = (v["total_cents"].as_u64().unwrap_or(0), v["transactions"].as_u64().unwrap_or(0) as u32);
            totals.insert((*start, r.key.to_owned()), total);
        }
    }
    (rate, totals)
}

/// Resident memory of `keys` open keys in one window; and how many the operator holds.
fn state_memory(keys: usize) -> (u64, usize) {
    let window = WindowSpec::new(WindowKind::tumbling(Duration::from_secs(600)).expect("window"));
    let mut operator = WindowOperator::new(window).expect("operator");
    operator.add_shard(0, 0);
    let before = resident_bytes();
    // Keys are made a chunk at a time, so only the operator's memory grows.
    let chunk = 10_000.min(keys);
    for from in (0..keys).step_by(chunk) {
        let names: Vec<String> = (from..(from + chunk).min(keys)).map(|i| format!("C{i:07}")).collect();
        let mut plan = operator
            .plan_fold(names.iter().map(|k| FoldRecord { shard: 0, source: None, key: k, time_ms: START }), START);
        // A toll-billing-sum state: 12 bytes.
        plan.states.iter_mut().for_each(|s| *s = vec![0u8; 12]);
        operator.apply_fold(plan);
    }
    let open = operator.metrics(START).open_keys;
    (resident_bytes().saturating_sub(before), open)
}

/// Folds `work` natively and through the component, checks they agree; both rates.
fn measure(work: Work) -> (f64, f64) {
    let rows = rows(work);
    let (native_rate, native_totals) = native(&rows, work.records);
    let (component_rate, component_totals) = component(&rows, work.records);
    // Every window the component closed has the native totals.
    let mut checked = 0;
    for (key, total) in &component_totals {
        assert_eq!(native_totals.get(key), Some(total), "{key:?}");
        checked += 1;
    }
    assert!(checked > work.customers, "windows closed during the run ({checked} results)");
    (native_rate, component_rate)
}

pub fn run(size: Size, report: &mut Report) {
    let full = size.pick(Work { records: 10_000_000, customers: 100_000 }, Work { records: 100_000, customers: 1_000 });
    // First, before the rows are made: resident growth is the state's alone.
    let memory_keys = size.pick(1_000_000, 10_000);
    let (bytes, keys) = state_memory(memory_keys);
    let per_million = bytes as f64 / 1e6 / (keys as f64 / 1e6);
    println!(
        "window state: {keys} open keys use {:.0} MB resident ({per_million:.0} MB per 1M keys)",
        bytes as f64 / 1e6
    );

    let mut points = Vec::new();
    for divisor in [100, 10, 1] {
        let work = Work { records: full.records / divisor, customers: full.customers / divisor };
        let (native_rate, component_rate) = measure(work);
        let (state, _) = state_memory(work.customers);
        println!(
            "{} rows, {} customers, 10-minute tumbling windows, batches of {BATCH}: native fold {native_rate:.0} records/s, \
             window operator + component {component_rate:.0} records/s, ratio {:.2}",
            work.records,
            work.customers,
            component_rate / native_rate
        );
        points.push(Point {
            work: work.records as u64,
            rate: Figure::PerSecond(component_rate, "records"),
            memory: Figure::Megabytes(state as f64 / 1e6),
        });
        if divisor == 1 {
            report.rows.push(Row::rates(
                format!("windowed sum through operator + component ÷ native fold ({} keys)", work.customers),
                Figure::PerSecond(component_rate, "records"),
                Figure::PerSecond(native_rate, "records"),
                "native fold",
                Target::RatioAtLeast(0.7),
            ));
        }
    }
    report.rows.push(Row::figure(
        "window state memory per 1M open keys",
        Figure::Megabytes(per_million),
        Target::MegabytesAtMost(150.0),
    ));
    report.curves.push(Curve {
        measure: "windowed sum (1 key per 100 records; memory: their open state)".to_owned(),
        unit: "records",
        points,
    });
}
