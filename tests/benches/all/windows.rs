//! Windowed aggregation throughput and window-state memory.
//!
//! 1. The 10-minute per-customer tumbling sum of `toll-billing-sum` on
//!    10,000,000 generated rows from 100,000 customers, in batches of 1,000:
//!    through the host's window operator and the aggregator component (as an
//!    aggregator stage runs it), beside native Rust doing the same work: parse
//!    the same rows, fold them into a HashMap per window of customer → (total,
//!    count), and when event time passes a window's end, write its results as
//!    the plugin does (one JSON record per customer) and drop its map. Each
//!    window holds ten rows of each customer, and closes as the rows move on:
//!    ten windows in all. Both sides check their results agree. Records/s and
//!    the ratio.
//! 2. Resident memory of window state for 1,000,000 open keys (one window),
//!    measured from /proc/self/statm around filling the operator.
//! 3. The curve: 1/100 and 1/10 of the rows and customers (so as many windows,
//!    each of 1/100 and 1/10 the keys), then all of them; and the state of that
//!    many open keys.

use std::collections::{BTreeMap, HashMap};
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

/// How much a run folds: each window holds ten rows of each customer.
#[derive(Clone, Copy)]
struct Work {
    records: usize,
    customers: usize,
}

impl Work {
    fn rows_per_window(self) -> usize {
        self.customers * 10
    }
}

/// The generated rows: customer, event time, payload.
type Rows = Vec<(String, i64, String)>;

fn rows(work: Work) -> Rows {
    let per_window = work.rows_per_window() as i64;
    (0..work.records.min(DISTINCT))
        .map(|i| {
            let customer = format!("C{:06}", i % work.customers);
            let at = START + (i as i64) * WINDOW_MS / per_window;
            let payload = format!(r#"{{"customer_id":"{customer}","amount_cents":{}}}"#, 100 + i % 900);
            (customer, at, payload)
        })
        .collect()
}

/// Row `i` of a run: the generated row, moved on by the windows the rows before it spanned.
fn nth(rows: &Rows, work: Work, i: usize) -> (&str, i64, &str) {
    let (customer, at, payload) = &rows[i % rows.len()];
    let windows_per_round = (rows.len() / work.rows_per_window()) as i64;
    (customer, at + (i / rows.len()) as i64 * windows_per_round * WINDOW_MS, payload)
}

#[derive(serde::Deserialize)]
struct Amount {
    amount_cents: u64,
}

/// A customer's result for a window, as `toll-billing-sum` writes it.
#[derive(serde::Serialize)]
struct WindowTotal<'a> {
    customer_id: &'a str,
    window_start: &'a str,
    window_end: &'a str,
    total_cents: u64,
    transactions: u32,
}

/// Results of closed windows: window start, key, JSON payload.
type Results = Vec<(i64, String, Vec<u8>)>;

/// (window start, customer) -> (total cents, transactions)
type Totals = HashMap<(i64, String), (u64, u32)>;

fn native(rows: &Rows, work: Work) -> (f64, Results) {
    let started = Instant::now();
    let mut open: BTreeMap<i64, HashMap<String, (u64, u32)>> = BTreeMap::new();
    let mut results = Results::new();
    for i in 0..work.records {
        let (customer, at, payload) = nth(rows, work, i);
        // Windows that end at or before this record's time are complete.
        while let Some(window) = open.first_entry() {
            if *window.key() + WINDOW_MS > at {
                break;
            }
            let (start, totals) = window.remove_entry();
            let (window_start, window_end) =
                (weir_sdk::time::timestamp(start), weir_sdk::time::timestamp(start + WINDOW_MS));
            for (customer_id, (total_cents, transactions)) in totals {
                let json = serde_json::to_vec(&WindowTotal {
                    customer_id: &customer_id,
                    window_start: &window_start,
                    window_end: &window_end,
                    total_cents,
                    transactions,
                })
                .expect("json");
                results.push((start, customer_id, json));
            }
        }
        let row: Amount = serde_json::from_str(payload).expect("row");
        let totals = open.entry(at - at.rem_euclid(WINDOW_MS)).or_default();
        let t = match totals.get_mut(customer) {
            Some(t) => t,
            None => totals.entry(customer.to_owned()).or_default(),
        };
        t.0 += row.amount_cents;
        t.1 += 1;
    }
    (work.records as f64 / started.elapsed().as_secs_f64(), results)
}

/// What the results say, to compare both sides' (not part of the work measured).
fn totals(results: &Results) -> Totals {
    results
        .iter()
        .map(|(start, key, json)| {
            let v: serde_json::Value = serde_json::from_slice(json).expect("result");
            let total = (v["total_cents"].as_u64().unwrap_or(0), v["transactions"].as_u64().unwrap_or(0) as u32);
            ((*start, key.clone()), total)
        })
        .collect()
}

fn component(rows: &Rows, work: Work) -> (f64, Results) {
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
    while i < work.records {
        let batch_rows: Vec<(&str, i64, &str)> =
            (i..(i + BATCH).min(work.records)).map(|j| nth(rows, work, j)).collect();
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
    let rate = work.records as f64 / started.elapsed().as_secs_f64();
    let results = results
        .iter()
        .flat_map(|(start, out)| out.records().map(|r| (*start, r.key.to_owned(), r.payload.to_vec())))
        .collect();
    (rate, results)
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
    let (native_rate, native_results) = native(&rows, work);
    let (component_rate, component_results) = component(&rows, work);
    // The same windows closed on both sides, with the same results.
    let (native_totals, component_totals) = (totals(&native_results), totals(&component_results));
    assert_eq!(native_totals, component_totals, "native and component results differ");
    assert!(
        component_totals.len() > work.customers,
        "windows closed during the run ({} results)",
        component_totals.len()
    );
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
        measure: "windowed sum, ten windows of 10 rows per key (memory: one window's open keys)".to_owned(),
        unit: "records",
        points,
    });
}
