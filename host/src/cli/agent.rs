//! `weir agent`: follow log files into a stream until Ctrl-C / SIGTERM.

use std::path::PathBuf;

use super::shared::{Reported, shutdown_signal};

pub(super) fn agent(config: PathBuf) -> anyhow::Result<()> {
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
