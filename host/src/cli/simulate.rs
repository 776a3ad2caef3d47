//! `weir simulate`: a seeded day of ABC Tolls traffic, run here and
//! reported, sent to a running weir, or written as station logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;

use super::shared::{Reported, tidy};
use crate::client::Client;
use crate::plugin::PluginEngine;

/// The generated day, announced on stderr.
pub(super) fn simulated_day(day: &str, seed: u64) -> anyhow::Result<Vec<crate::simulate::TollLine>> {
    use crate::simulate;
    let day_start = humantime::parse_rfc3339(&format!("{day}T00:00:00Z"))
        .map(crate::time::system_ms)
        .with_context(|| format!("--day {day}: write a date such as 2026-11-25"))?;
    let lines = simulate::generate_day(seed, day_start);
    let malformed = lines.iter().filter(|l| !l.text.contains(',')).count();
    eprintln!(
        "simulated {day} (seed {seed}): {} toll lines from {} stations, {malformed} malformed; station {} silent {}:00-{}:00",
        lines.len(),
        simulate::STATIONS,
        simulate::SILENT.0,
        simulate::SILENT.1,
        simulate::SILENT.2
    );
    Ok(lines)
}

/// Sends a simulated day to a running weir: the customers' thresholds, then the lines.
pub(super) async fn send_day(client: Client, lines: Vec<crate::simulate::TollLine>) -> anyhow::Result<()> {
    let refused = crate::simulate::send_day(client, &lines, crate::progress::show).await?;
    if refused > 0 {
        eprintln!("weir refused {refused} lines for good (see its log)");
    }
    println!(
        "sent {} toll lines to `toll-lines` and {} thresholds; see GET /v1/pipeline for progress",
        lines.len(),
        crate::simulate::CUSTOMERS
    );
    Ok(())
}

pub(super) fn simulate(
    run: Option<PathBuf>,
    build: bool,
    logs: Option<PathBuf>,
    day: &str,
    seed: u64,
    timings: bool,
) -> anyhow::Result<()> {
    use crate::simulate;
    let started = std::time::Instant::now();
    let lines = simulated_day(day, seed)?;
    match (run, logs) {
        (_, Some(dir)) => {
            simulate::write_logs(&lines, &dir)?;
            eprintln!("wrote one log per station to {} (point the agent's flows at them)", dir.display());
            Ok(())
        }
        (Some(manifest), None) => {
            let pipeline = crate::manifest::load(&manifest).map_err(|d| Reported(d.to_string()))?;
            if build {
                crate::build::build_all(&pipeline)?;
            }
            simulate::start_afresh(&pipeline)?;
            let warehouse = pipeline.deliveries.iter().find_map(|d| d.warehouse.as_ref()).map(|w| match &w.database {
                crate::warehouse::Database::Sqlite(path) => format!("table {} in {}", w.table, tidy(path)),
                crate::warehouse::Database::Postgres(_) => format!("table {} in PostgreSQL", w.table),
            });
            // The error prefix up to its first expression, e.g. `errors/`.
            let lake = pipeline.deliveries.first().map(|d| {
                (tidy(Path::new(&d.lake.describe())), d.error_prefix.split("!{").next().unwrap_or_default().to_owned())
            });
            let data_dir = pipeline.data_dir.clone();
            let engine = Arc::new(PluginEngine::new()?);
            let host = crate::pipeline::Host::start(pipeline, &engine)?;
            let report = simulate::run_day(&host, &lines, crate::progress::show)?;
            println!("ABC Tolls, {day}: done in {:.1?}", started.elapsed());
            println!("  toll lines ingested     {:>7}  (stream toll-lines)", report.lines);
            println!(
                "  rows in the warehouse   {:>7}  ({})",
                report.rows_loaded,
                warehouse.unwrap_or_else(|| "no warehouse".into())
            );
            let (lake, errors) = lake.unwrap_or_default();
            println!("  malformed, set aside    {:>7}  (with the reason, under {lake}/{errors})", report.set_aside);
            println!(
                "  late, set aside         {:>7}  (later than the windows' allowed lateness, with the reason)",
                report.late
            );
            println!("  windows revised         {:>7}  (by records within the allowed lateness)", report.revisions);
            println!(
                "  duplicates, stored once {:>7}  (records sent again, by their transaction id)",
                report.duplicates
            );
            println!(
                "  billing messages        {:>7}  (inbox `app`: weir run, then GET /v1/inbox/<customer>?channel=app)",
                report.billing_messages
            );
            println!(
                "  traffic alerts          {:>7}  (inbox `operators`: GET /v1/inbox/operators?channel=operators)",
                report.traffic_alerts
            );
            for (channel, url, received) in &report.webhooks {
                println!(
                    "  webhook deliveries      {received:>7}  (channel `{channel}`, taken by a stand-in at {url})"
                );
            }
            println!("  state and streams in {}", tidy(&data_dir));
            if timings {
                println!("where the time went:");
                for (phase, took) in &report.timings {
                    println!("  {phase:<44} {:>6.2}s", took.as_secs_f64());
                }
            }
            Ok(())
        }
        (None, None) => anyhow::bail!("say where the day goes: --run <manifest>, --to <endpoint> or --logs <folder>"),
    }
}
