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
    insecure_public: bool,
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
                pipeline.api.unset_secrets.iter().map(|(id, var)| format!("`{var}` ({})", secret_of(id))).collect();
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
    let addr = pipeline.api.listen;
    if !addr.ip().is_loopback() {
        let missing = match (pipeline.api.tls.is_none(), insecure_no_auth) {
            (true, true) => Some("TLS ([api] tls) and authentication (--insecure-no-auth is set)"),
            (true, false) => Some("TLS ([api] tls = { cert = \"...\", key = \"...\" })"),
            (false, true) => Some("authentication (--insecure-no-auth is set)"),
            (false, false) => None,
        };
        match (missing, insecure_public) {
            (Some(missing), false) => anyhow::bail!(
                "{addr} can be reached from other machines, and the API would be served without {missing}: \
                 listen on 127.0.0.1, or pass --insecure-public if this network is trusted"
            ),
            (Some(missing), true) => {
                tracing::warn!(%addr, "--insecure-public: serving without {missing} on an address other machines can reach")
            }
            (None, _) => {}
        }
    }
    let tls = pipeline.api.tls.as_ref().map(crate::api::tls::acceptor).transpose()?;
    if build {
        crate::build::build_all(&pipeline)?;
    }
    let engine = Arc::new(PluginEngine::new()?);
    let name = pipeline.name.clone();
    // One runtime: the API's, and the I/O of the stages', deliveries' and channels' threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    crate::io::install(runtime.handle().clone());
    let host = crate::pipeline::Host::start(pipeline, &engine)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}; is another weir running? (use --listen)"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        tracing::info!(pipeline = %name, %addr, scheme, "weir is running; Ctrl-C to stop");
        let stopping = host.clone();
        let shutdown = async move {
            shutdown_signal().await;
            stopping.stop_feeds();
        };
        let router = crate::api::router(host.clone(), auth);
        crate::api::server::serve(listener, tls, router, host.pipeline.api.limits, shutdown).await?;
        tracing::info!("draining stages");
        tokio::task::spawn_blocking(move || host.drain()).await?;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

/// What an unset secret is for: an access key (by id), or a setting (`[api] ...`).
fn secret_of(id: &str) -> String {
    if id.starts_with('[') { id.to_owned() } else { format!("access key `{id}`") }
}
