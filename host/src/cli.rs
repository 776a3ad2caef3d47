//! The `weir` command line: `run`, `check`.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::api::Auth;
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
        /// Build every plugin first (runs each plugin.toml's [build] command).
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
}

/// Runs the command line; the binary's `main` calls this.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
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
                Err(e) => {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            }
        }
        Command::Run { manifest, build, listen, insecure_no_auth } => run(manifest, build, listen, insecure_no_auth),
    }
}

fn run(
    manifest: PathBuf,
    build: bool,
    listen: Option<std::net::SocketAddr>,
    insecure_no_auth: bool,
) -> anyhow::Result<()> {
    let mut pipeline = match crate::manifest::load(&manifest) {
        Ok(p) => p,
        Err(d) => {
            eprintln!("{d}");
            std::process::exit(1);
        }
    };
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let addr = pipeline.api.listen;
        let name = pipeline.name.clone();
        let host = crate::pipeline::Host::start(pipeline, &engine)?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another weir running? (use --listen)"))?;
        tracing::info!(pipeline = %name, %addr, "weir is running; Ctrl-C to stop");
        axum::serve(listener, crate::api::router(host.clone(), auth)).with_graceful_shutdown(shutdown_signal()).await?;
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
