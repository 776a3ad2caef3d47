//! The processing pause a hot swap causes, and throughput while swapping.
//!
//! A stage (`swap-v1`, batches of up to 256) takes a continuous load of puts.
//! First 3 s without swaps (steady throughput, and the normal gap between
//! batch completions); then 20 swaps between two builds through the admin
//! API. A batch's completion is when its output reaches the output stream
//! (its records' arrival time, in ms). The pause of a swap is the longest gap
//! between consecutive completions from the swap request until just after it
//! was applied. Prints p50/p99 of the pauses, the pause beyond the normal
//! gap, throughput while swapping ÷ steady throughput, and checks that no
//! record was lost or duplicated.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use weir_host::pipeline::Producer;
use weir_host::stream::{NewRecord, now_ms};
use weir_tests::{TestHost, artifacts};

use crate::Report;
use crate::table::{Figure, Row, Size, Target, quantile};

const MANIFEST: &str = r#"
[pipeline]
name = "swap-bench"
data-dir = "data"

[sources.http]
kind = "http"
stream = "in"

[streams.in]
capacity = 100000000
[streams.out]
capacity = 100000000

[stages.tag]
plugin = "{root}/tests/guests/swap-v1"
input = "in"
output = "out"
batch-size = 256
batch-wait = "5ms"
"#;

pub fn run(size: Size, report: &mut Report) {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(measure(size, report));
}

async fn measure(size: Size, report: &mut Report) {
    let (swaps, steady) = (size.pick(20, 3), size.pick(Duration::from_secs(3), Duration::from_millis(500)));
    let mut host = TestHost::start(MANIFEST).await.expect("start");
    let builds = [std::fs::read(artifacts::SWAP_V2).expect("v2"), std::fs::read(artifacts::SWAP_V1).expect("v1")];
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, host) = (stop.clone(), host.host.clone());
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let records: Vec<NewRecord> = (sent..sent + 100)
                    .map(|n| NewRecord {
                        source: None,
                        key: format!("k{}", n % 16),
                        event_time_ms: None,
                        data: Bytes::from(format!("n{n:09}")),
                        explicit_hash_key: None,
                        attributes: Vec::new(),
                    })
                    .collect();
                host.put("in", records, Producer::Native).expect("put");
                sent += 100;
                // Paced below the stage's capacity, so the stage keeps up and gaps show pauses.
                std::thread::sleep(Duration::from_micros(500));
            }
            sent
        })
    };
    let processed = |host: &TestHost| host.host.status().stages[0].records_in;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (steady_from, steady_start) = (processed(&host), Instant::now());
    let steady_window = (now_ms(), 0);
    tokio::time::sleep(steady).await;
    let steady_rate = (processed(&host) - steady_from) as f64 / steady_start.elapsed().as_secs_f64();
    let steady_window = (steady_window.0, now_ms());

    let client = reqwest::Client::new();
    let (swap_from, swap_start) = (processed(&host), Instant::now());
    let mut windows = Vec::new();
    for i in 0..swaps {
        let requested = now_ms();
        let response = client
            .put(format!("{}/v1/stages/tag/plugin", host.url))
            .body(builds[i % 2].clone())
            .send()
            .await
            .expect("swap");
        assert!(response.status().is_success(), "swap {i}: {}", response.text().await.unwrap_or_default());
        windows.push((requested, now_ms() + 20));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let swap_rate = (processed(&host) - swap_from) as f64 / swap_start.elapsed().as_secs_f64();

    stop.store(true, Ordering::Relaxed);
    let sent = producer.join().expect("producer");
    host.wait_until("the stage to catch up", |s| s.stages[0].records_in == sent).await;

    // Batch completions: the distinct arrival times of the output records.
    let mut arrivals = Vec::new();
    let mut payloads = std::collections::HashSet::new();
    let mut from = 0u64;
    loop {
        let records = host.host.read("out", 0, from, 50_000).expect("read");
        let Some(last) = records.last() else { break };
        from = last.sequence + 1;
        for r in &records {
            arrivals.push(r.arrival_ms);
            let text = String::from_utf8_lossy(&r.data);
            let payload = text.rsplit('|').next().unwrap_or("").to_owned();
            assert!(payloads.insert(payload), "a record was processed twice");
        }
    }
    assert_eq!(payloads.len() as u64, sent, "every record was processed");
    arrivals.dedup();
    let gaps_within = |(from, to): (i64, i64)| {
        arrivals.windows(2).filter(|w| w[1] >= from && w[0] <= to).map(|w| w[1] - w[0]).max().unwrap_or(0)
    };
    let mut steady_gaps: Vec<i64> = arrivals
        .windows(2)
        .filter(|w| w[0] >= steady_window.0 && w[1] <= steady_window.1)
        .map(|w| w[1] - w[0])
        .collect();
    steady_gaps.sort_unstable();
    let normal = quantile(&steady_gaps, 0.99);
    let mut pauses: Vec<i64> = windows.iter().map(|w| gaps_within(*w)).collect();
    pauses.sort_unstable();
    let (p50, p99) = (quantile(&pauses, 0.5), quantile(&pauses, 0.99));
    println!("{swaps} swaps under load ({sent} records, 0 lost, 0 duplicated)");
    println!("  normal gap between batch completions (p99, no swaps): {normal} ms");
    println!(
        "  pause around a swap: p50 {p50} ms, p99 {p99} ms; beyond the normal gap: p50 {} ms, p99 {} ms",
        (p50 - normal).max(0),
        (p99 - normal).max(0)
    );
    println!(
        "  throughput: steady {steady_rate:.0} records/s, while swapping {swap_rate:.0} records/s, ratio {:.2}",
        swap_rate / steady_rate
    );
    report.rows.push(Row::figure(
        "hot-swap pause p99 under load, beyond the normal gap between batches (0 lost)",
        Figure::Time(Duration::from_millis((p99 - normal).max(0) as u64)),
        Target::TimeAtMost(Duration::from_millis(10)),
    ));
    host.stop().await;
}
