//! Windowed aggregation throughput and window-state memory, measured in one run.
//!
//! 1. The 10-minute per-customer tumbling sum of `toll-billing-sum` on
//!    10,000,000 generated rows from 100,000 customers, in batches of 1,000:
//!    through the host's window operator and the aggregator component (as an
//!    aggregator stage runs it), beside a native Rust fold into a HashMap of
//!    (window, customer) → (total, count) parsing the same rows. Windows close
//!    as the rows move on (event time advances 10 minutes every 1,000,000 rows),
//!    and both sides check their totals agree. Prints records/s and the ratio.
//! 2. Resident memory of window state for 1,000,000 open keys (one window),
//!    measured from /proc/self/statm around filling the operator.
//!
//! Run: `cargo bench -p weir-tests --bench windows --profile dev`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weir_host::manifest::{Grants, Limits};
use weir_host::plugin::{AggregatorPlugin, Batch};
use weir_host::window::{FoldRecord, WindowKind, WindowOperator, WindowSpec};
use weir_tests::{artifacts, engine, sandbox};

// As in the `weir` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const RECORDS: usize = 10_000_000;
const CUSTOMERS: usize = 100_000;
const BATCH: usize = 1_000;
/// 2026-11-25T00:00:00Z
const START: i64 = 1_795_564_800_000;
const WINDOW_MS: i64 = 600_000;

/// One generated row: customer, event time, payload.
fn row(i: usize) -> (String, i64, String) {
    let customer = format!("C{:06}", i % CUSTOMERS);
    let at = START + (i as i64) * WINDOW_MS / 1_000_000;
    let payload = format!(r#"{{"customer_id":"{customer}","amount_cents":{}}}"#, 100 + i % 900);
    (customer, at, payload)
}

#[derive(serde::Deserialize)]
struct Row {
    amount_cents: u64,
}

/// (window start, customer) -> (total cents, transactions)
type Totals = HashMap<(i64, String), (u64, u32)>;

fn native(rows: &[(String, i64, String)]) -> (f64, Totals) {
    let started = Instant::now();
    let mut totals = Totals::new();
    for i in 0..RECORDS {
        let (customer, at, payload) = &rows[i % rows.len()];
        let at = at + (i / rows.len()) as i64 * WINDOW_MS * 10;
        let row: Row = serde_json::from_str(payload).expect("row");
        let t = totals.entry((at - at.rem_euclid(WINDOW_MS), customer.clone())).or_default();
        t.0 += row.amount_cents;
        t.1 += 1;
    }
    (RECORDS as f64 / started.elapsed().as_secs_f64(), totals)
}

fn component(rows: &[(String, i64, String)]) -> (f64, Totals) {
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
    while i < RECORDS {
        let batch_rows: Vec<(&str, i64, &str)> = (i..(i + BATCH).min(RECORDS))
            .map(|j| {
                let (customer, at, payload) = &rows[j % rows.len()];
                (customer.as_str(), at + (j / rows.len()) as i64 * WINDOW_MS * 10, payload.as_str())
            })
            .collect();
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
    let rate = RECORDS as f64 / started.elapsed().as_secs_f64();
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

// The one foreign call of the benchmarks; mimalloc is linked in as the allocator.
#[allow(unsafe_code, reason = "a declaration of mimalloc's C function, to return freed pages before measuring")]
unsafe extern "C" {
    /// mimalloc's own: returns freed memory it still holds to the OS.
    fn mi_collect(force: bool);
}

/// Resident memory now, after the allocator gave back what was freed (it keeps
/// freed pages for a few milliseconds, e.g. the tables a growing map left behind).
fn resident_bytes() -> u64 {
    // SAFETY: mi_collect takes no pointers; it only returns freed memory to the OS.
    #[allow(unsafe_code, reason = "mi_collect takes no pointers")]
    unsafe {
        mi_collect(true)
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}

fn state_memory() -> (u64, usize) {
    let window = WindowSpec::new(WindowKind::tumbling(Duration::from_secs(600)).expect("window"));
    let mut operator = WindowOperator::new(window).expect("operator");
    operator.add_shard(0, 0);
    let before = resident_bytes();
    // Keys are made a chunk at a time, so only the operator's memory grows.
    for chunk in 0..100 {
        let keys: Vec<String> = (chunk * 10_000..(chunk + 1) * 10_000).map(|i| format!("C{i:07}")).collect();
        let mut plan = operator
            .plan_fold(keys.iter().map(|k| FoldRecord { shard: 0, source: None, key: k, time_ms: START }), START);
        // A toll-billing-sum state: 12 bytes.
        plan.states.iter_mut().for_each(|s| *s = vec![0u8; 12]);
        operator.apply_fold(plan);
    }
    let metrics = operator.metrics(START);
    (resident_bytes().saturating_sub(before), metrics.open_keys)
}

fn main() {
    // First, in a fresh process: no freed memory to reuse, so resident growth is the state's.
    let (bytes, keys) = state_memory();
    let rows: Vec<(String, i64, String)> = (0..1_000_000).map(row).collect();
    println!("{RECORDS} rows, {CUSTOMERS} customers, 10-minute tumbling windows, batches of {BATCH}");
    let (native_rate, native_totals) = native(&rows);
    let (component_rate, component_totals) = component(&rows);
    // Every window the component closed has the native totals.
    let mut checked = 0;
    for (key, total) in &component_totals {
        assert_eq!(native_totals.get(key), Some(total), "{key:?}");
        checked += 1;
    }
    assert!(checked > CUSTOMERS, "windows closed during the run ({checked} results)");
    println!("  native HashMap fold:                 {native_rate:>10.0} records/s");
    println!(
        "  window operator + component fold:    {component_rate:>10.0} records/s   ratio {:.2}",
        component_rate / native_rate
    );
    println!(
        "  window state: {keys} open keys use {:.0} MB resident ({:.0} MB per 1M keys)",
        bytes as f64 / 1e6,
        bytes as f64 / 1e6 / (keys as f64 / 1e6)
    );
}
