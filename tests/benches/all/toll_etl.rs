//! The toll-etl transform on the same generated lines, natively in-process and
//! through the WebAssembly component, at several batch sizes: records/s and the
//! ratio component/native measured in the same run (median of three turns each),
//! and what recording the metrics adds to each batch, as a share of its time in
//! the component. `WEIR_BENCH_LINES` sets the number of lines (1,000,000 by
//! default); `WEIR_BENCH_BATCHES=64,256` picks the batch sizes.

use std::time::Instant;

use toll_etl::TollEtl;
use weir_host::manifest::{Grants, Limits};
use weir_host::plugin::{Outcome, TransformerPlugin};
use weir_sdk::Transformer as _;
use weir_tests::{artifacts, config, engine, sandbox};

use crate::Report;
use crate::table::{Figure, Row, Size, Target, median};

/// Deterministic toll lines, about 1% of them malformed.
fn generate(n: usize) -> Vec<String> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|i| {
            let r = next();
            let station = 1 + r % 120;
            let secs = 1_795_000_000 + (i as u64) / 20;
            let (h, m, s) = (secs / 3600 % 24, secs / 60 % 60, secs % 60);
            let line = format!(
                "T{station:04}-{i:09},2026-11-26T{h:02}:{m:02}:{s:02}.{:03}Z,{station},{},TAG{:07},C{:06},{},{}",
                r % 1000,
                1 + (r >> 8) % 6,
                (r >> 16) % 10_000_000,
                (r >> 20) % 100_000,
                1 + (r >> 40) % 5,
                50 + (r >> 44) % 2000,
            );
            if r % 100 == 0 { line.replace(",", ";") } else { line }
        })
        .collect()
}

struct Run {
    records_per_sec: f64,
    ok: usize,
    output_bytes: usize,
}

fn native(lines: &[String], batch: usize) -> Run {
    let mut plugin = TollEtl::init(&weir_sdk::Config::default()).expect("init");
    let (mut ok, mut output_bytes) = (0, 0);
    let start = Instant::now();
    for chunk in lines.chunks(batch) {
        let mut input = weir_sdk::Batch::new();
        for line in chunk {
            input.push("", 0, line.as_bytes());
        }
        let (outcomes, output) =
            weir_sdk::__private::transform_batch(&mut plugin, &input, |o, n| (o, n)).expect("no batch error");
        ok += outcomes.iter().filter(|(o, _)| *o == weir_sdk::Outcome::Ok).count();
        output_bytes += output.iter().map(|r| r.payload().len()).sum::<usize>();
    }
    Run { records_per_sec: lines.len() as f64 / start.elapsed().as_secs_f64(), ok, output_bytes }
}

fn component(plugin: &TransformerPlugin, lines: &[String], batch: usize) -> Run {
    let mut instance = plugin.instantiate().expect("instantiate");
    let (mut ok, mut output_bytes) = (0, 0);
    let start = Instant::now();
    for chunk in lines.chunks(batch) {
        let mut input = weir_host::plugin::Batch::with_capacity(chunk.len(), chunk.len() * 80);
        for line in chunk {
            input.push("", 0, line.as_bytes());
        }
        let out = instance.transform(&input).expect("transform");
        ok += out.outcomes.iter().filter(|o| matches!(o, Outcome::Ok(_))).count();
        output_bytes += out.output.payloads.len();
    }
    Run { records_per_sec: lines.len() as f64 / start.elapsed().as_secs_f64(), ok, output_bytes }
}

pub fn run(size: Size, report: &mut Report) {
    let n: usize =
        std::env::var("WEIR_BENCH_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(size.pick(1_000_000, 20_000));
    let lines = generate(n);
    let engine = engine();
    let compiled = engine.compile(artifacts::TOLL_ETL.as_ref()).expect("compile toll-etl");
    let limits = Limits { timeout: std::time::Duration::from_secs(60), memory_bytes: 1 << 30 };
    let plugin =
        TransformerPlugin::new(&engine, compiled, sandbox("toll-etl@0.1.0", limits, Grants::default()), config(&[]))
            .expect("load toll-etl");

    println!("toll-etl on {n} generated lines (about 1% malformed), same run, same lines");
    println!("{:>6}  {:>16}  {:>16}  {:>16}", "batch", "native rec/s", "component rec/s", "component/native");
    let batches: Vec<usize> = match std::env::var("WEIR_BENCH_BATCHES") {
        Ok(list) => list.split(',').filter_map(|b| b.trim().parse().ok()).collect(),
        Err(_) => size.pick(vec![1, 64, 256, 1024], vec![256]),
    };
    let mut component_rates = Vec::new();
    for batch in batches {
        // Three turns each, alternating, so a noisy neighbour hurts both alike.
        let (mut natives, mut components) = (Vec::new(), Vec::new());
        for _ in 0..size.pick(3, 1) {
            let (a, b) = (native(&lines, batch), component(&plugin, &lines, batch));
            assert_eq!(
                (a.ok, a.output_bytes),
                (b.ok, b.output_bytes),
                "native and component must produce the same rows"
            );
            natives.push(a.records_per_sec);
            components.push(b.records_per_sec);
        }
        let (a, b) = (median(&natives), median(&components));
        println!("{batch:>6}  {a:>16.0}  {b:>16.0}  {:>16.2}", b / a);
        if batch == 256 || batch == 1024 {
            report.rows.push(Row::rates(
                format!("toll-etl component ÷ native Rust, batch {batch}"),
                Figure::PerSecond(b, "records"),
                Figure::PerSecond(a, "records"),
                "native",
                if batch == 256 { Target::RatioAtLeast(0.85) } else { Target::Report },
            ));
        }
        component_rates.push((batch, b));
    }
    // A stage times each batch and each plugin call: two timings per batch.
    let (_, per_timing) = weir_tests::metrics_recording_cost();
    for (batch, rate) in component_rates {
        let batch_time = batch as f64 / rate;
        println!(
            "metrics recorded per batch of {batch:>4} (two timings): {:?}, {:.3}% of the batch's time in the component",
            per_timing * 2,
            (per_timing * 2).as_secs_f64() / batch_time * 100.0
        );
    }
}
