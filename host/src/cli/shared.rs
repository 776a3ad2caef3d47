//! What the commands share: the endpoint the client verbs talk to, how they
//! run, failures already written for people, tidy paths, and the shutdown signal.

use std::path::Path;

use crate::client::Client;

/// Which weir the client verbs talk to. Requests are signed with
/// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` when they are set.
#[derive(Debug, clap::Args)]
pub(super) struct Target {
    /// The host's API.
    #[arg(long, env = "WEIR_ENDPOINT", default_value = "http://127.0.0.1:7070")]
    pub(super) endpoint: String,
}

/// A failure already written for people (a manifest's problems, each with its
/// place): `main` prints it as it is.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Reported(pub String);

/// A path for people: `a/b/../c` as `a/c`.
pub(super) fn tidy(path: &Path) -> String {
    crate::scaffold::normalize(path).display().to_string()
}

pub(super) fn client_verb<F, Fut>(target: &Target, f: F) -> anyhow::Result<()>
where
    F: FnOnce(Client) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let client = Client::new(&target.endpoint)?;
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(f(client))
}

/// Ctrl-C or SIGTERM.
pub(super) async fn shutdown_signal() {
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
