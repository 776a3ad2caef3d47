//! Running the `weir` binary from tests: a free loopback port, `weir run`
//! on it, and waiting until it answers.
#![allow(dead_code, reason = "each test binary uses its own part of these helpers")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test.
pub const WEIR: &str = env!("CARGO_BIN_EXE_weir");

/// A loopback port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// `weir run` of `manifest` on `127.0.0.1:<port>`, quiet.
pub fn start(manifest: &Path, port: u16) -> Child {
    Command::new(WEIR)
        .args(["run", "--insecure-no-auth", "--listen", &format!("127.0.0.1:{port}")])
        .arg(manifest)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir")
}

/// Waits until weir answers its health check (30 s at most).
pub async fn wait_ready(client: &reqwest::Client, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(format!("http://127.0.0.1:{port}/v1/health")).send().await.is_err() {
        assert!(Instant::now() < deadline, "weir did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next number of a xorshift sequence: varied kill points, the same on every run.
pub fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
