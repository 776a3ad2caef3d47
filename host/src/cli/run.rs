//! `weir run`: serve a pipeline's API and run its stages until Ctrl-C /
//! SIGTERM, then drain them.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;

use super::shared::{Reported, shutdown_signal};
use crate::api::Auth;
use crate::plugin::PluginEngine;

pub(super) fn run(
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
        (false, _) if !pipeline.api.unset_secrets.is_empty() => {
            let unset: Vec<String> =
                pipeline.api.unset_secrets.iter().map(|(id, var)| format!("`{var}` (access key `{id}`)")).collect();
            anyhow::bail!(
                "{}: the secrets of [api]'s access keys are read from the environment, and {} {} not set. \
                 Export them, or pass --insecure-no-auth for local development",
                manifest.display(),
                unset.join(", "),
                if unset.len() == 1 { "is" } else { "are" }
            )
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
    // One runtime: the API's, and the I/O of the stages', deliveries' and channels' threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    crate::io::install(runtime.handle().clone());
    let host = crate::pipeline::Host::start(pipeline, &engine)?;
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
