//! Every benchmark of weir in one run, printed as one table: each measure with
//! weir's figure, a baseline measured in the same run (native Rust doing the
//! same work, the plain database load, the raw disk, a peer), their ratio and
//! the target; then throughput and memory at 1×, 10× and 100× the work.
//!
//! Run: `cargo bench -p weir-tests --bench all --profile dev` (about 9 minutes on
//! a 2-core machine). After `--`: suite names run only those (`toll_etl`,
//! `streams`, `windows`, `warehouse`, `hot_swap`, `kinesis`, `languages`), and
//! `--quick` runs each suite on a little work, to check that it still runs.
//! `cargo test` runs this binary too, always quick: its figures are not checked.

mod hot_swap;
mod kinesis;
mod languages;
mod nats;
mod streams;
mod table;
mod toll_etl;
mod warehouse;
mod windows;

use std::time::Instant;

use table::{Curve, Row, Size};

// As in the `weir` binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the suites found, gathered for the tables.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub curves: Vec<Curve>,
}

/// A suite of benchmarks: measures at the given size, adds its rows and curves.
type Suite = fn(Size, &mut Report);

/// The suites in the order they run. `windows` comes first: it measures the
/// resident memory of window state, best done before anything else was allocated.
const SUITES: [(&str, Suite); 8] = [
    ("windows", windows::run),
    ("toll_etl", toll_etl::run),
    ("streams", streams::run),
    ("kinesis", kinesis::run),
    ("hot_swap", hot_swap::run),
    ("warehouse", warehouse::run),
    ("languages", languages::run),
    ("nats", nats::run),
];

fn main() {
    // A `weir run` host a suite started (`nats`): this binary again.
    if weir_tests::run_weir_if_child() {
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    // `cargo bench` passes `--bench`; `cargo test` does not, and gets a quick run.
    let size = if args.iter().any(|a| a == "--quick") || !args.iter().any(|a| a == "--bench") {
        Size::Quick
    } else {
        Size::Full
    };
    let chosen: Vec<&str> = args.iter().filter(|a| !a.starts_with('-')).map(String::as_str).collect();
    if let Some(unknown) = chosen.iter().find(|name| !SUITES.iter().any(|(suite, _)| suite == *name)) {
        let names: Vec<&str> = SUITES.iter().map(|(name, _)| *name).collect();
        eprintln!("no benchmark is called `{unknown}`: choose among {}", names.join(", "));
        std::process::exit(2);
    }
    let started = Instant::now();
    let mut report = Report::default();
    for (name, run) in SUITES {
        if chosen.is_empty() || chosen.contains(&name) {
            println!("== {name}");
            let suite_started = Instant::now();
            run(size, &mut report);
            println!("   ({name} took {:.0?})", suite_started.elapsed());
        }
    }
    println!();
    println!("{} run of {:.0?} on {}", size.pick("A full", "A quick"), started.elapsed(), machine());
    if size == Size::Quick {
        println!("(quick: little work each, to check the benchmarks run; the figures mean nothing)");
    }
    println!();
    table::print_rows(&report.rows);
    if !report.curves.is_empty() {
        println!();
        table::print_curves(&report.curves);
    }
}

/// The processor, its cores and the memory, as Linux reports them.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split(':').nth(1)))
        .map(str::trim)
        .unwrap_or("an unknown processor");
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kb: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kb| kb.parse().ok())
        .unwrap_or(0);
    format!("{model}, {cores} cores, {:.0} GiB", memory_kb as f64 / (1024.0 * 1024.0))
}

// The one foreign call of the benchmarks; mimalloc is linked in as the allocator.
#[allow(unsafe_code, reason = "a declaration of mimalloc's C function, to return freed pages before measuring")]
unsafe extern "C" {
    /// mimalloc's own: returns freed memory it still holds to the OS.
    fn mi_collect(force: bool);
}

/// Resident memory now, after the allocator gave back what was freed (it keeps
/// freed pages for a few milliseconds, e.g. the tables a growing map left behind).
pub fn resident_bytes() -> u64 {
    // SAFETY: mi_collect takes no pointers; it only returns freed memory to the OS.
    #[allow(unsafe_code, reason = "mi_collect takes no pointers")]
    unsafe {
        mi_collect(true)
    };
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4096
}
