//! What a plugin costs in each language weir builds, on the same transform:
//! the `weir plugin new` scaffold (trim each record and upper-case it), written
//! in Rust, Python, JavaScript and C, built by its plugin.toml's `[build]`.
//! For each: the component's size, the time to compile it (no cache), to
//! instantiate it (with its `init`), and per record in batches of 1,000, beside
//! native Rust doing the same work in this run. No target: the table helps an
//! author choose. A quick run builds and measures the Rust one only.

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_host::manifest::{Grants, Limits, World};
use weir_host::plugin::{Batch, PluginEngine, TransformerPlugin, check_world};
use weir_host::scaffold::{Lang, new_plugin};
use weir_tests::{plugin_manifest, sandbox};

use crate::Report;
use crate::table::{Figure, Row, Size, Target, median};

const RECORDS: usize = 1_000;
const ROUNDS: usize = 30;

pub fn run(size: Size, report: &mut Report) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut batch = Batch::with_capacity(RECORDS, RECORDS * 64);
    let lines: Vec<String> =
        (0..RECORDS).map(|i| format!("  toll {i:06} at station {} lane {}  ", i % 12, i % 4)).collect();
    for line in &lines {
        batch.push("k", 0, line.as_bytes());
    }

    // Native Rust, the same work on the same records.
    let native = median(
        &(0..ROUNDS)
            .map(|_| {
                let started = Instant::now();
                let out: Vec<String> = lines.iter().map(|l| l.trim().to_uppercase()).collect();
                std::hint::black_box(out);
                started.elapsed()
            })
            .collect::<Vec<_>>(),
    );
    let per_record = |d: Duration| d.as_nanos() as f64 / RECORDS as f64;
    println!("per record, batches of {RECORDS}; native Rust: {:.0} ns", per_record(native));
    println!(
        "{:<11} {:>12} {:>12} {:>14} {:>13} {:>10}",
        "language", "size", "compile", "instantiate", "per record", "÷ native"
    );
    let engine = Arc::new(PluginEngine::with_cache(None).expect("engine"));
    let all = [(Lang::Rust, "rust"), (Lang::C, "c"), (Lang::Js, "javascript"), (Lang::Python, "python")];
    for &(lang, label) in size.pick(&all[..], &all[..1]) {
        let folder = dir.path().join(format!("bench-{label}"));
        let shared = dir.path().join("target").display().to_string();
        new_plugin(&format!("bench-{label}"), World::Transformer, lang, &folder, Some(&shared)).expect("scaffold");
        let manifest = plugin_manifest(&folder);
        weir_host::build::build_plugin(&manifest).expect("build");
        let component = manifest.component_path();
        let bytes = std::fs::metadata(&component).expect("component").len();
        let started = Instant::now();
        let compiled = check_world(&engine, &component, World::Transformer).expect("a transformer");
        let compile = started.elapsed();
        let spec = sandbox(label, Limits::default(), Grants::default());
        let plugin = TransformerPlugin::new(&engine, compiled, spec, manifest.default_config()).expect("load");
        let instantiate = median(
            &(0..ROUNDS)
                .map(|_| {
                    let started = Instant::now();
                    std::hint::black_box(plugin.instantiate().expect("instantiate"));
                    started.elapsed()
                })
                .collect::<Vec<_>>(),
        );
        let mut instance = plugin.instantiate().expect("instantiate");
        let transform = median(
            &(0..ROUNDS)
                .map(|_| {
                    let started = Instant::now();
                    let out = instance.transform(&batch).expect("transform");
                    assert_eq!(out.output.len(), RECORDS);
                    started.elapsed()
                })
                .collect::<Vec<_>>(),
        );
        println!(
            "{label:<11} {:>9.2} MB {:>9.0} ms {:>11.2} ms {:>10.0} ns {:>10.1}",
            bytes as f64 / 1e6,
            compile.as_secs_f64() * 1e3,
            instantiate.as_secs_f64() * 1e3,
            per_record(transform),
            per_record(transform) / per_record(native).max(1e-9),
        );
        report.rows.push(Row::rates(
            format!("{label} transform (trim, upper-case) ÷ native Rust, batches of {RECORDS}"),
            Figure::PerSecond(RECORDS as f64 / transform.as_secs_f64(), "records"),
            Figure::PerSecond(RECORDS as f64 / native.as_secs_f64(), "records"),
            "native",
            Target::Report,
        ));
    }
}
