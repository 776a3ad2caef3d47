//! The `weir` command line: `run` and `check` a pipeline; `stream`, `put` and
//! `tail` talk to a running one through its Kinesis API; `agent` sends the
//! lines of log files to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use base64::Engine as _;
use serde_json::{Value, json};

use crate::api::Auth;
use crate::client::Client;
use crate::plugin::PluginEngine;

/// weir: a self-hosted streaming runtime with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a pipeline: serve its HTTP API and run its stages until Ctrl-C / SIGTERM.
    Run {
        /// The pipeline manifest.
        manifest: PathBuf,
        /// Build every plugin first, as each plugin.toml's [build] says.
        #[arg(long)]
        build: bool,
        /// Listen here instead of the manifest's [api] listen address.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Accept unsigned requests: for local development only.
        #[arg(long)]
        insecure_no_auth: bool,
    },
    /// Check a pipeline manifest, its plugin manifests and their components.
    Check {
        /// The pipeline manifest.
        manifest: PathBuf,
    },
    /// Create, list, describe or delete streams of a running weir.
    Stream {
        #[command(subcommand)]
        action: StreamAction,
        #[command(flatten)]
        target: Target,
    },
    /// Put records into a stream: the DATA arguments, or else each line of standard input.
    Put {
        /// The stream.
        stream: String,
        /// Records to put; none: read lines from standard input.
        data: Vec<String>,
        /// Partition key of every record.
        #[arg(long, default_value = "weir-cli")]
        partition_key: String,
        #[command(flatten)]
        target: Target,
    },
    /// Simulate a day of ABC Tolls traffic (seeded): run it through a pipeline and report, or
    /// write station logs for the agent.
    Simulate {
        /// Run this pipeline (manifests/abc-tolls.toml) on the day, in this process, and report.
        #[arg(long, conflicts_with = "logs")]
        run: Option<PathBuf>,
        /// Build every plugin first (with --run).
        #[arg(long)]
        build: bool,
        /// Write one log file per station into this folder instead.
        #[arg(long, conflicts_with = "to")]
        logs: Option<PathBuf>,
        /// Or send the day to the weir running abc-tolls at this endpoint (thresholds through
        /// its state table API, lines with PutRecords into `toll-lines`), e.g. http://127.0.0.1:7070.
        #[arg(long, conflicts_with = "run")]
        to: Option<String>,
        /// The day, UTC, e.g. 2026-11-25 (default: yesterday; records far ahead of the
        /// clock would be set aside).
        #[arg(long)]
        day: Option<String>,
        /// The same seed gives the same day.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// With --run: print where the time went, phase by phase.
        #[arg(long)]
        timings: bool,
    },
    /// Read and write items of a running pipeline's state tables (e.g. a customer's threshold).
    Table {
        #[command(subcommand)]
        action: TableAction,
        #[command(flatten)]
        target: Target,
    },
    /// Hot-swap, roll back and list the plugins of a running pipeline's stages.
    Plugin {
        #[command(subcommand)]
        action: PluginAction,
        #[command(flatten)]
        target: Target,
    },
    /// Print a stream's records as they arrive, like `tail -f`.
    Tail {
        /// The stream.
        stream: String,
        /// Where to start.
        #[arg(long, value_enum, default_value = "latest")]
        from: TailFrom,
        /// With `--from at-timestamp`: an RFC 3339 time, e.g. 2026-11-26T14:00:00Z.
        #[arg(long)]
        timestamp: Option<String>,
        /// Stop at the end of the stream instead of waiting for more.
        #[arg(long)]
        no_follow: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Follow log files and send their lines to a stream or delivery stream (as the Kinesis Agent),
    /// until Ctrl-C / SIGTERM.
    Agent {
        /// The agent config: weir TOML, or the Kinesis Agent's agent.json (by the .json extension).
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum TableAction {
    /// Print an item's value.
    Get {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
    },
    /// Set an item's value.
    Put {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
        /// The new value.
        value: String,
    },
    /// Remove an item.
    Delete {
        /// The table.
        table: String,
        /// The item's key.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum PluginAction {
    /// Replace a stage's plugin while its stream flows; refused candidates change nothing.
    Swap {
        /// The pipeline (as named in its manifest).
        pipeline: String,
        /// The stage.
        stage: String,
        /// The new component.
        component: PathBuf,
        /// Its version, shown in `weir plugin list` (default: `upload`).
        #[arg(long)]
        version: Option<String>,
        /// An aggregator stage's open windows' states, when the new plugin keeps them in
        /// another state version: `keep` (refuse such a plugin), `migrate` (through its
        /// `state-migration` export) or `reset` (drop them).
        #[arg(long, default_value = "keep")]
        state: crate::swap::StateChange,
    },
    /// Go back to the version the stage ran before its last swap.
    Rollback {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
    },
    /// Which version runs on which stage, since when, with its counters.
    List {
        /// The pipeline.
        pipeline: String,
    },
    /// What a component is: its world, WIT version, imports and toolchain (no weir needed).
    Inspect {
        /// A component (.wasm), or a plugin folder / plugin.toml (its name, version and component).
        plugin: PathBuf,
    },
    /// Run a plugin on sample records and print each record's outcome (no weir needed).
    Test {
        /// A component (.wasm), or a plugin folder / plugin.toml (its config defaults and
        /// self-tests apply).
        plugin: PathBuf,
        /// Records, one per line; without it, the plugin.toml's `[[self-test]]` records,
        /// checked against what they expect.
        #[arg(long)]
        input: Option<PathBuf>,
        /// A config value, `key=value` (repeatable; TOML arrays and tables as JSON text).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Build the plugin first, as its plugin.toml's `[build]` says.
        #[arg(long)]
        build: bool,
        /// A file holding exactly what the test must print: a difference fails it.
        #[arg(long)]
        expect: Option<PathBuf>,
    },
    /// Scaffold a plugin that builds and passes its test (sample.txt, expected.txt) as written.
    New {
        /// Its name (lowercase, digits and '-').
        name: String,
        /// Its world.
        #[arg(long, value_enum, default_value = "transformer")]
        world: crate::manifest::World,
        /// Its language: rust, python, js or c.
        #[arg(long)]
        lang: crate::scaffold::Lang,
        /// Where to write it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where its builds write, relative to its folder (default: `target`); plugins
        /// sharing one build their dependencies once.
        #[arg(long)]
        target_dir: Option<String>,
    },
    /// Build a plugin folder as its plugin.toml's [build] says (installing its language's
    /// pinned toolchain on first use).
    Build {
        /// A plugin folder, or its plugin.toml.
        plugin: PathBuf,
    },
}

/// Which weir the client verbs talk to. Requests are signed with
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` when they are set.
#[derive(Debug, clap::Args)]
struct Target {
    /// The host's API.
    #[arg(long, env = "WEIR_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    endpoint: String,
}

#[derive(Debug, Subcommand)]
enum StreamAction {
    /// Create a stream.
    Create {
        /// Stream name.
        name: String,
    },
    /// List streams.
    List,
    /// Describe a stream (JSON).
    Describe {
        /// Stream name.
        name: String,
    },
    /// Delete a stream and its records.
    Delete {
        /// Stream name.
        name: String,
    },
    /// Change the number of shards (uniform scaling): the open shards close and
    /// this many children split the hash key space; consumers finish parents first.
    Reshard {
        /// Stream name.
        name: String,
        /// The new number of open shards.
        shards: u32,
    },
}

/// Where `weir tail` starts.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TailFrom {
    /// The oldest record kept.
    TrimHorizon,
    /// Only records put from now on.
    Latest,
    /// Records that arrived at or after `--timestamp`.
    AtTimestamp,
}

/// A failure already written for people (a manifest's problems, each with its
/// place): `main` prints it as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// Runs the command line; the binary's `main` calls this.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(crate::progress::LogWriter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli.command {
        Command::Check { manifest } => {
            let engine = PluginEngine::new()?;
            match crate::check::check(&manifest, &engine) {
                Ok(summary) => {
                    print!("{summary}");
                    Ok(())
                }
                Err(e) => Err(Reported(e.to_string()).into()),
            }
        }
        Command::Run { manifest, build, listen, insecure_no_auth } => run(manifest, build, listen, insecure_no_auth),
        Command::Stream { action, target } => client_verb(&target, |c| stream(c, action)),
        Command::Put { stream, data, partition_key, target } => {
            client_verb(&target, |c| put(c, stream, data, partition_key))
        }
        Command::Tail { stream, from, timestamp, no_follow, target } => {
            client_verb(&target, |c| tail(c, stream, from, timestamp, no_follow))
        }
        Command::Agent { config } => agent(config),
        Command::Plugin { action, target } => match action {
            PluginAction::Inspect { plugin } => {
                let target = crate::author::TestTarget::resolve(&plugin, false)?;
                let inspection = crate::author::inspect(&PluginEngine::new()?, &target.component)?;
                if let Some(m) = &target.manifest {
                    println!("plugin    {} {} ({})", m.info.name, m.info.version.get_ref(), target.component.display());
                    if inspection.world != Some(m.info.world) {
                        println!("warning   plugin.toml says world `{}`: rebuild, or fix plugin.toml", m.info.world);
                    }
                }
                print!("{inspection}");
                Ok(())
            }
            PluginAction::Test { plugin, input, config, build, expect } => {
                plugin_test(&plugin, input, &config, build, expect)
            }
            PluginAction::New { name, world, lang, dir, target_dir } => {
                plugin_new(&name, world, lang, dir, target_dir.as_deref())
            }
            PluginAction::Build { plugin } => plugin_build(&plugin),
            action => client_verb(&target, |c| plugin(c, action)),
        },
        Command::Table { action, target } => client_verb(&target, |c| table(c, action)),
        Command::Simulate { run, build, logs, to, day, seed, timings } => {
            let yesterday = crate::sink::format_ms(crate::stream::now_ms() - 86_400_000)[..10].to_owned();
            let day = day.unwrap_or(yesterday);
            match to {
                Some(endpoint) => {
                    let lines = simulated_day(&day, seed)?;
                    client_verb(&Target { endpoint }, |c| send_day(c, lines))
                }
                None => simulate(run, build, logs, &day, seed, timings),
            }
        }
    }
}

fn plugin_test(
    plugin: &Path,
    input: Option<PathBuf>,
    config: &[String],
    build: bool,
    expect: Option<PathBuf>,
) -> anyhow::Result<()> {
    let target = crate::author::TestTarget::resolve(plugin, build)?;
    let records = match input {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Some(text.lines().map(str::to_owned).collect::<Vec<_>>())
        }
    };
    let config = config
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => anyhow::bail!("--config {pair}: write key=value"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let engine = Arc::new(PluginEngine::new()?);
    let report = crate::author::run_test(&engine, &target, records.as_deref(), &config)?;
    print!("{report}");
    if let Some(file) = expect {
        let expected = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        if let Some((line, (want, got))) = expected.lines().zip(report.lines()).enumerate().find(|(_, (w, g))| w != g) {
            anyhow::bail!("line {} differs from {}:\n  expected: {want}\n  got:      {got}", line + 1, file.display());
        }
        anyhow::ensure!(
            expected.lines().count() == report.lines().count(),
            "{} expects {} lines, the test printed {}",
            file.display(),
            expected.lines().count(),
            report.lines().count()
        );
    }
    Ok(())
}

fn plugin_new(
    name: &str,
    world: crate::manifest::World,
    lang: crate::scaffold::Lang,
    dir: Option<PathBuf>,
    target_dir: Option<&str>,
) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    crate::scaffold::new_plugin(name, world, lang, &dir, target_dir)?;
    println!(
        "wrote {} ({} {}); try: weir plugin test {} --build --input {} --expect {}",
        dir.display(),
        lang.label(),
        world,
        dir.display(),
        dir.join("sample.txt").display(),
        dir.join("expected.txt").display()
    );
    Ok(())
}

/// `weir plugin build`: builds a plugin folder as its plugin.toml's `[build]` says.
fn plugin_build(plugin: &Path) -> anyhow::Result<()> {
    let file = crate::manifest::PluginManifest::file_for(plugin);
    let mut diags = crate::manifest::Diagnostics::default();
    let manifest = crate::manifest::PluginManifest::load(&file, &mut diags)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let Some(manifest) = manifest.filter(|_| diags.is_empty()) else { anyhow::bail!("{diags}") };
    let component = crate::build::build_plugin(&manifest)?;
    println!("built {} {}: {}", manifest.info.name, manifest.info.version.get_ref(), component.display());
    Ok(())
}

async fn plugin(client: Client, action: PluginAction) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, HeaderValue, Method};
    let pipeline = match &action {
        PluginAction::Swap { pipeline, .. }
        | PluginAction::Rollback { pipeline, .. }
        | PluginAction::List { pipeline } => pipeline.clone(),
        _ => anyhow::bail!("`weir plugin` verbs that need no running weir are handled before this"),
    };
    // The host runs one pipeline: make sure it is the one meant.
    let status = client.native(Method::GET, "/v1/pipeline", HeaderMap::new(), Default::default()).await?;
    let running = status["pipeline"].as_str().unwrap_or("");
    anyhow::ensure!(running == pipeline, "the weir at this endpoint runs pipeline `{running}`, not `{pipeline}`");
    let answer = match action {
        PluginAction::Swap { stage, component, version, state, .. } => {
            let bytes = std::fs::read(&component).with_context(|| format!("cannot read {}", component.display()))?;
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/wasm"));
            headers.insert("x-weir-state", HeaderValue::from_static(state.as_str()));
            if let Some(v) = version {
                headers.insert("x-weir-plugin-version", HeaderValue::from_str(&v).context("--version")?);
            }
            let path = format!("/v1/stages/{stage}/plugin");
            client.native(Method::PUT, &path, headers, bytes.into()).await?
        }
        PluginAction::Rollback { stage, .. } => {
            let path = format!("/v1/stages/{stage}/plugin/rollback");
            client.native(Method::POST, &path, HeaderMap::new(), Default::default()).await?
        }
        PluginAction::Inspect { .. }
        | PluginAction::Test { .. }
        | PluginAction::New { .. }
        | PluginAction::Build { .. } => {
            unreachable!("refused by the match above")
        }
        PluginAction::List { .. } => {
            for stage in status["stages"].as_array().into_iter().flatten() {
                println!("stage `{}`:", stage["name"].as_str().unwrap_or(""));
                for v in stage["versions"].as_array().into_iter().flatten() {
                    println!(
                        "  {} {} sha256 {} since {}  in {} out {} failures {}",
                        if v["active"] == true { "*" } else { " " },
                        v["plugin"].as_str().unwrap_or(""),
                        &v["sha256"].as_str().unwrap_or("")[..12.min(v["sha256"].as_str().unwrap_or("").len())],
                        v["since"].as_str().unwrap_or(""),
                        v["records_in"],
                        v["records_out"],
                        v["failures"],
                    );
                }
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}

/// The generated day, announced on stderr.
fn simulated_day(day: &str, seed: u64) -> anyhow::Result<Vec<crate::simulate::TollLine>> {
    use crate::simulate;
    let day_start = humantime::parse_rfc3339(&format!("{day}T00:00:00Z"))
        .map(crate::sink::system_ms)
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

/// Draws a progress bar on stderr.
/// Sends a simulated day to a running weir: the customers' thresholds, then the lines.
async fn send_day(client: Client, lines: Vec<crate::simulate::TollLine>) -> anyhow::Result<()> {
    use crate::simulate::{CUSTOMERS, thresholds};
    use axum::http::{HeaderMap, Method};
    // Every threshold in one batch write.
    let items: serde_json::Map<String, Value> = thresholds().map(|(k, v)| (k, Value::String(v))).collect();
    let body = json!({ "items": items }).to_string();
    let mut headers = HeaderMap::new();
    headers.insert("content-type", axum::http::HeaderValue::from_static("application/json"));
    client.native_bytes(Method::POST, "/v1/tables/thresholds/items", headers, body.into()).await?;
    // The agent's sender: only refused records go again, after a growing wait.
    let counters = Arc::new(crate::agent::Counters::default());
    let destination = crate::agent::Destination::Stream("toll-lines".into());
    let backoff = (std::time::Duration::from_millis(50), std::time::Duration::from_secs(5));
    let sender = crate::agent::Sender::to(client, destination, backoff, counters.clone());
    let (_running, mut stop) = tokio::sync::watch::channel(false);
    let mut sent = 0usize;
    for chunk in lines.chunks(crate::api::MAX_RECORDS_PER_PUT) {
        let records: Vec<crate::agent::Outgoing> = chunk
            .iter()
            .map(|l| crate::agent::Outgoing {
                data: l.text.clone().into_bytes(),
                key: format!("station-{}", l.station),
            })
            .collect();
        sender.send(&records, &mut stop).await.map_err(anyhow::Error::new)?;
        sent += chunk.len();
        crate::progress::show(sent as f64 / lines.len().max(1) as f64);
    }
    crate::progress::show(1.0);
    let refused = counters.snapshot().records_refused;
    if refused > 0 {
        eprintln!("weir refused {refused} lines for good (see its log)");
    }
    println!("sent {sent} toll lines to `toll-lines` and {CUSTOMERS} thresholds; see GET /v1/pipeline for progress");
    Ok(())
}

fn simulate(
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

/// A path for people: `a/b/../c` as `a/c`.
fn tidy(path: &Path) -> String {
    crate::scaffold::normalize(path).display().to_string()
}

async fn table(client: Client, action: TableAction) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, Method};
    let item = |table: &str, key: &str| format!("/v1/tables/{table}/items/{}", crate::sigv4::uri_encode(key, false));
    match action {
        TableAction::Get { table, key } => {
            let value =
                client.native_bytes(Method::GET, &item(&table, &key), HeaderMap::new(), Default::default()).await?;
            println!("{}", String::from_utf8_lossy(&value));
        }
        TableAction::Put { table, key, value } => {
            client.native_bytes(Method::PUT, &item(&table, &key), HeaderMap::new(), value.into()).await?;
        }
        TableAction::Delete { table, key } => {
            client.native_bytes(Method::DELETE, &item(&table, &key), HeaderMap::new(), Default::default()).await?;
        }
    }
    Ok(())
}

fn client_verb<F, Fut>(target: &Target, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = Client::new(&target.endpoint)?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f(client))
}

async fn stream(client: Client, action: StreamAction) -> anyhow::Result<()> {
    match action {
        StreamAction::Create { name } => {
            client.call("CreateStream", &json!({"StreamName": name, "ShardCount": 1})).await?;
            println!("created stream `{name}`");
        }
        StreamAction::List => {
            let answer = client.call("ListStreams", &json!({})).await?;
            for name in answer["StreamNames"].as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or(""));
            }
        }
        StreamAction::Describe { name } => {
            let answer = client.call("DescribeStreamSummary", &json!({"StreamName": name})).await?;
            println!("{}", serde_json::to_string_pretty(&answer["StreamDescriptionSummary"])?);
        }
        StreamAction::Delete { name } => {
            client.call("DeleteStream", &json!({"StreamName": name})).await?;
            println!("deleted stream `{name}`");
        }
        StreamAction::Reshard { name, shards } => {
            let request = json!({"StreamName": name, "TargetShardCount": shards, "ScalingType": "UNIFORM_SCALING"});
            let answer = client.call("UpdateShardCount", &request).await?;
            println!("stream `{name}`: {} -> {shards} shards", answer["CurrentShardCount"]);
        }
    }
    Ok(())
}

async fn put(client: Client, stream: String, data: Vec<String>, partition_key: String) -> anyhow::Result<()> {
    let lines = if data.is_empty() {
        std::io::read_to_string(std::io::stdin())?.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect()
    } else {
        data
    };
    let mut put = 0usize;
    for chunk in lines.chunks(crate::api::MAX_RECORDS_PER_PUT) {
        let records: Vec<_> = chunk
            .iter()
            .map(|line| json!({"Data": base64::engine::general_purpose::STANDARD.encode(line), "PartitionKey": partition_key}))
            .collect();
        let answer = client.call("PutRecords", &json!({"StreamName": stream, "Records": records})).await?;
        for (line, result) in chunk.iter().zip(answer["Records"].as_array().into_iter().flatten()) {
            match result["SequenceNumber"].as_str() {
                Some(seq) => {
                    put += 1;
                    println!("{seq}");
                }
                None => anyhow::bail!(
                    "record `{line}` was refused: {}: {}",
                    result["ErrorCode"].as_str().unwrap_or("?"),
                    result["ErrorMessage"].as_str().unwrap_or("")
                ),
            }
        }
    }
    eprintln!("put {put} record(s) into `{stream}`");
    Ok(())
}

async fn tail(
    client: Client,
    stream: String,
    from: TailFrom,
    timestamp: Option<String>,
    no_follow: bool,
) -> anyhow::Result<()> {
    let mut request = json!({"StreamName": stream});
    match from {
        TailFrom::TrimHorizon => request["ShardIteratorType"] = json!("TRIM_HORIZON"),
        TailFrom::Latest => request["ShardIteratorType"] = json!("LATEST"),
        TailFrom::AtTimestamp => {
            let text =
                timestamp.ok_or_else(|| anyhow::anyhow!("--from at-timestamp needs --timestamp <RFC 3339 time>"))?;
            let at = humantime::parse_rfc3339_weak(&text)
                .with_context(|| format!("--timestamp `{text}` is not RFC 3339"))?;
            request["ShardIteratorType"] = json!("AT_TIMESTAMP");
            request["Timestamp"] = json!(crate::sink::system_ms(at) as f64 / 1000.0);
        }
    }
    // One iterator per shard, read in turn: order holds per shard (so per key).
    // A shard closed by resharding ends; its children are picked up from the start.
    let mut iterators: Vec<(String, Value)> = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut first_listing = true;
    loop {
        let shards = client.call("ListShards", &json!({"StreamName": stream})).await?;
        for shard in shards["Shards"].as_array().into_iter().flatten() {
            let id = shard["ShardId"].as_str().unwrap_or("").to_owned();
            if !seen.insert(id.clone()) {
                continue;
            }
            let mut at = request.clone();
            at["ShardId"] = json!(id);
            if !first_listing {
                at["ShardIteratorType"] = json!("TRIM_HORIZON");
            }
            let iterator = client.call("GetShardIterator", &at).await?["ShardIterator"].clone();
            iterators.push((id, iterator));
        }
        first_listing = false;
        let mut printed = 0;
        let mut ended = false;
        for (_, iterator) in &mut iterators {
            if iterator.is_null() {
                continue;
            }
            let answer = client.call("GetRecords", &json!({"ShardIterator": iterator, "Limit": 1000})).await?;
            for record in answer["Records"].as_array().into_iter().flatten() {
                let data = base64::engine::general_purpose::STANDARD.decode(record["Data"].as_str().unwrap_or(""))?;
                match String::from_utf8(data) {
                    Ok(text) => println!("{text}"),
                    Err(e) => println!("base64:{}", base64::engine::general_purpose::STANDARD.encode(e.as_bytes())),
                }
                printed += 1;
            }
            *iterator = answer["NextShardIterator"].clone();
            ended |= iterator.is_null();
        }
        if printed == 0 && !ended {
            if no_follow {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

fn agent(config: PathBuf) -> anyhow::Result<()> {
    let config = crate::agent::AgentConfig::load(&config).map_err(|e| Reported(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let span = tracing::info_span!("agent");
        let handle = {
            let _entered = span.enter();
            crate::agent::Agent::start(config)?
        };
        tracing::info!(parent: &span, "agent is running; Ctrl-C to stop");
        shutdown_signal().await;
        tracing::info!(parent: &span, "stopping: sending what is batched");
        let counters = handle.stop().await;
        tracing::info!(
            parent: &span,
            lines_read = counters.lines_read,
            records_sent = counters.records_sent,
            records_refused = counters.records_refused,
            records_skipped = counters.records_skipped,
            retries = counters.retries,
            "agent stopped"
        );
        anyhow::Ok(())
    })
}

fn run(
    manifest: PathBuf,
    build: bool,
    listen: Option<std::net::SocketAddr>,
    insecure_no_auth: bool,
) -> anyhow::Result<()> {
    let mut pipeline = crate::manifest::load(&manifest).map_err(|d| Reported(d.to_string()))?;
    if let Some(addr) = listen {
        pipeline.api.listen = addr;
    }
    let auth = match (insecure_no_auth, pipeline.api.access_keys.is_empty()) {
        (true, _) => {
            tracing::warn!(
                "--insecure-no-auth: the API accepts unsigned requests from anyone who can reach it; use it for local development only"
            );
            Auth::InsecureNoAuth
        }
        (false, false) => Auth::Keys(pipeline.api.access_keys.clone()),
        (false, true) => anyhow::bail!(
            "{}: [api] has no access-keys, so no request could be authenticated. Add \
             `access-keys = [{{ id = \"...\", secret-env = \"WEIR_SECRET\" }}]` to [api], \
             or pass --insecure-no-auth for local development",
            manifest.display()
        ),
    };
    if build {
        crate::build::build_all(&pipeline)?;
    }
    let engine = Arc::new(PluginEngine::new()?);
    let (addr, name) = (pipeline.api.listen, pipeline.name.clone());
    let host = crate::pipeline::Host::start(pipeline, &engine)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another weir running? (use --listen)"))?;
        tracing::info!(pipeline = %name, %addr, "weir is running; Ctrl-C to stop");
        let stopping = host.clone();
        let shutdown = async move {
            shutdown_signal().await;
            stopping.stop_feeds();
        };
        axum::serve(listener, crate::api::router(host.clone(), auth)).with_graceful_shutdown(shutdown).await?;
        tracing::info!("draining stages");
        tokio::task::spawn_blocking(move || host.drain()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
