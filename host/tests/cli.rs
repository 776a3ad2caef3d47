//! The `weir` binary as a newcomer uses it: `weir check` on good and broken
//! manifests, and `weir run` serving HTTP until SIGTERM, draining on the way out.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{WEIR, free_port, start};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// `weir run ARGS` of the quickstart manifest, writing into `dir`, on a free
/// port, without keys; its log (standard error) piped.
fn run_quickstart(dir: &Path, args: &[&str]) -> (std::process::Child, u16) {
    run_quickstart_with(dir, args, "")
}

/// [`run_quickstart`] with `extra` added to the manifest.
fn run_quickstart_with(dir: &Path, args: &[&str], extra: &str) -> (std::process::Child, u16) {
    let manifest = std::fs::read_to_string(root().join("manifests/quickstart.toml"))
        .expect("quickstart")
        .replace("../plugins/toll-etl", &root().join("plugins/toll-etl").display().to_string())
        .replace("../out/quickstart", ".")
        + extra;
    let path = dir.join("quickstart.toml");
    std::fs::write(&path, manifest).expect("write manifest");
    let port = free_port();
    let child = Command::new(WEIR)
        .arg("run")
        .args(args)
        .args(["--insecure-no-auth", "--listen", &format!("127.0.0.1:{port}")])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start weir");
    (child, port)
}

/// Sends SIGTERM and waits: how it exited, and its log.
fn stop_with_sigterm(child: &mut std::process::Child) -> (std::process::ExitStatus, String) {
    let status = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        std::io::Read::read_to_string(&mut e, &mut stderr).expect("read the log");
    }
    (exit, stderr)
}

#[test]
fn check_accepts_the_quickstart_and_lists_every_problem_of_a_broken_manifest() {
    // The artifacts crate has built the plugins, so the component check passes.
    assert!(Path::new(weir_artifacts::TOLL_ETL).exists());
    let ok = Command::new(WEIR).arg("check").arg(root().join("manifests/quickstart.toml")).output().expect("run weir");
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{stdout}{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains("pipeline `quickstart` is valid"), "{stdout}");
    assert!(stdout.contains("[toll-etl@0.1.0 (transformer)] -> rows (ok, sha256"), "{stdout}");

    // The showcase's windows, said in words: what its settings imply for a station.
    let tolls =
        Command::new(WEIR).arg("check").arg(root().join("manifests/abc-tolls.toml")).output().expect("run weir");
    let stdout = String::from_utf8_lossy(&tolls.stdout);
    assert!(tolls.status.success(), "{stdout}{}", String::from_utf8_lossy(&tolls.stderr));
    assert!(stdout.contains("time: tumbling 30m windows by event time; each gives its results once every active source's newest time is 1m past its end"), "{stdout}");
    assert!(
        stdout.contains(
            "time: a record up to 3h (allowed lateness) behind that still counts: its window gives a revised result"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("quiet for 30s stops holding windows back: one offline longer is treated as silent"),
        "{stdout}"
    );

    let bad = Command::new(WEIR)
        .arg("check")
        .arg("ui/many-problems.toml")
        .current_dir(root().join("tests"))
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(bad.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--> ui/many-problems.toml:16:9"), "{stderr}");
    assert!(stderr.contains("18 problems found"), "{stderr}");
}

#[test]
fn run_serves_puts_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (child, port) = run_quickstart(dir.path(), &[]);
    serves_puts_and_drains_on_sigterm(dir.path(), child, port);
}

/// `weir dev nats` as the README has a user start it: it prints the `[storage]`
/// section, the quickstart runs on the cluster with it, and SIGTERM stops the nodes.
#[test]
fn dev_nats_starts_a_cluster_the_quickstart_runs_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Nine ports from here: clients, routes (+2000) and monitoring (+4000).
    let base = 20_000 + free_port() % 10_000;
    let mut nats = Command::new(WEIR)
        .args(["dev", "nats", "--port", &base.to_string(), "--dir"])
        .arg(dir.path().join("nats"))
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start weir dev nats");
    let mut printed = String::new();
    let mut out = std::io::BufReader::new(nats.stdout.take().expect("its output"));
    while !printed.contains("Ctrl-C") {
        let before = printed.len();
        std::io::BufRead::read_line(&mut out, &mut printed).expect("read its output");
        assert!(printed.len() > before, "weir dev nats ended before the cluster was ready: {printed}");
    }
    let storage = printed.find("[storage]").map(|at| &printed[at..]).expect("the [storage] section");
    let storage = storage.split("\n\n").next().unwrap_or_default();
    assert!(storage.contains("backend = \"nats\"") && storage.contains(&format!("127.0.0.1:{base}")), "{storage}");

    let (child, port) = run_quickstart_with(dir.path(), &[], &format!("\n{storage}\n"));
    serves_puts_and_drains_on_sigterm(dir.path(), child, port);

    let (exit, _) = stop_with_sigterm(&mut nats);
    assert!(exit.success(), "weir dev nats exited with {exit}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", base)).is_ok() {
        assert!(Instant::now() < deadline, "a node still listens after weir dev nats stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Puts 300 good and 3 broken lines into the quickstart `child` serves on `port`,
/// stops it with SIGTERM right away, and finds every line in its files in `dir`.
fn serves_puts_and_drains_on_sigterm(dir: &Path, mut child: std::process::Child, port: u16) {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/v1/streams/toll-lines/records");
    let lines: Vec<String> = (0..300)
        .map(|i| format!("T0017-{i:06},2026-11-26T14:{:02}:{:02}Z,17,3,TAG{i:07},C{:06},2,275", i / 60, i % 60, i % 7))
        .collect();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match client.get(format!("http://127.0.0.1:{port}/v1/health")).send().await {
                Ok(r) if r.status().is_success() => break,
                _ if Instant::now() > deadline => panic!("weir did not start listening"),
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        for chunk in lines.chunks(100) {
            let body = format!("{}\nthis line is broken\n", chunk.join("\n"));
            let r = client.post(&url).header("content-type", "text/plain").body(body).send().await.expect("put");
            assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
        }
    });

    // SIGTERM right away: everything acknowledged must still reach the files.
    let (exit, stderr) = stop_with_sigterm(&mut child);
    assert!(exit.success(), "weir exited with {exit}: {stderr}");
    assert!(stderr.contains("draining stages"), "{stderr}");

    let rows = std::fs::read_to_string(dir.join("rows.jsonl")).unwrap_or_default();
    let rejected = std::fs::read_to_string(dir.join("rejected.jsonl")).unwrap_or_default();
    assert_eq!(rows.lines().count(), 300, "every good line is a row");
    assert_eq!(rejected.lines().count(), 3, "every broken line is a dead letter");
    assert!(
        rows.lines()
            .next()
            .unwrap_or("")
            .starts_with(r#"{"transaction_id":"T0017-000000","event_time":"2026-11-26T14:00:00.000Z""#)
    );
    assert!(rejected.contains("expected 8 comma-separated fields"));
}

#[test]
fn run_writes_one_json_object_per_log_line_for_log_shippers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut child, port) = run_quickstart(dir.path(), &["--log-format", "json"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "weir did not start listening");
        std::thread::sleep(Duration::from_millis(50));
    }
    let (exit, stderr) = stop_with_sigterm(&mut child);
    assert!(exit.success(), "weir exited with {exit}: {stderr}");
    let mut messages = Vec::new();
    for line in stderr.lines() {
        let object: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(object["timestamp"].is_string() && object["level"].is_string(), "{line}");
        messages.push(object["fields"]["message"].as_str().unwrap_or_default().to_owned());
    }
    assert!(messages.iter().any(|m| m.contains("draining stages")), "{stderr}");
}

#[test]
fn stream_put_and_tail_talk_to_a_running_weir_with_signed_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("keys.toml");
    std::fs::write(
        &manifest,
        "[pipeline]\nname = \"cli\"\ndata-dir = \"data\"\n\n[api]\naccess-keys = [{ id = \"AKIACLI\", secret-env = \"CLI_TEST_SECRET\" }]\n",
    )
    .expect("manifest");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut host = Command::new(WEIR)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .arg(&manifest)
        .env("CLI_TEST_SECRET", "cli-secret")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let weir = |args: &[&str], secret: &str, stdin: &str| {
        let mut child = Command::new(WEIR)
            .args(args)
            .env("WEIR_ENDPOINT", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIACLI")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run weir");
        if let Some(mut input) = child.stdin.take() {
            std::io::Write::write_all(&mut input, stdin.as_bytes()).expect("stdin");
        }
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !weir(&["stream", "list"], "cli-secret", "").0 {
        assert!(Instant::now() < deadline, "weir did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }

    let (ok, out, err) = weir(&["stream", "create", "clicks"], "cli-secret", "");
    assert!(ok, "{out}{err}");
    assert_eq!(weir(&["stream", "list"], "cli-secret", "").1, "clicks\n");
    let (ok, out, err) = weir(&["put", "clicks"], "cli-secret", "first\nsecond\n");
    assert!(ok, "{out}{err}");
    // Kinesis's sequence numbers: 56 digits, increasing within the shard.
    let numbers: Vec<&str> = out.lines().collect();
    assert!(numbers.len() == 2 && numbers.iter().all(|n| n.len() == 56) && numbers[0] < numbers[1], "{out}");
    assert!(err.contains("put 2 record(s) into `clicks`"), "{err}");
    let (ok, out, err) = weir(&["tail", "clicks", "--from", "trim-horizon", "--no-follow"], "cli-secret", "");
    assert!(ok, "{err}");
    assert_eq!(out, "first\nsecond\n");
    let from_second = ["tail", "clicks", "--from", "at-sequence", "--sequence", numbers[1], "--no-follow", "--keys"];
    let (ok, out, err) = weir(&from_second, "cli-secret", "");
    assert!(ok, "{err}");
    assert_eq!(out, format!("shardId-000000000000  {}  weir-cli  second\n", numbers[1]));
    let (ok, out, _) = weir(&["stream", "describe", "clicks"], "cli-secret", "");
    assert!(ok && out.contains("\"RetentionPeriodHours\": 24"), "{out}");
    let (ok, out, err) = weir(&["stream", "reshard", "clicks", "2"], "cli-secret", "");
    assert!(ok && out.contains("1 -> 2 shards"), "{out}{err}");
    assert!(weir(&["put", "clicks", "third"], "cli-secret", "").0);
    let (ok, out, err) = weir(&["tail", "clicks", "--from", "trim-horizon", "--no-follow"], "cli-secret", "");
    assert!(ok, "{err}");
    assert_eq!(out, "first\nsecond\nthird\n", "the closed parent first, then its children");

    let (ok, _, err) = weir(&["put", "clicks", "x"], "wrong-secret", "");
    assert!(!ok);
    assert!(err.contains("InvalidSignatureException"), "{err}");
    let (ok, _, err) = weir(&["stream", "describe", "nope"], "cli-secret", "");
    assert!(!ok && err.contains("ResourceNotFoundException"), "{err}");

    let (ok, _, err) = weir(&["stream", "delete", "clicks"], "cli-secret", "");
    assert!(ok, "{err}");
    assert_eq!(weir(&["stream", "list"], "cli-secret", "").1, "");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn run_refuses_to_start_without_keys_unless_told_it_is_development() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("open.toml");
    std::fs::write(&manifest, "[pipeline]\nname = \"open\"\ndata-dir = \"data\"\n").expect("manifest");
    let out = Command::new(WEIR).arg("run").arg(&manifest).output().expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("[api] has no access-keys") && stderr.contains("--insecure-no-auth"), "{stderr}");
    // The showcase's keys read their secrets from the environment: each unset one is named.
    let out = Command::new(WEIR)
        .arg("run")
        .arg(root().join("manifests/abc-tolls.toml"))
        .env_remove("ABC_TOLLS_PRODUCER_SECRET")
        .env("ABC_TOLLS_APP_SECRET", "set")
        .env_remove("ABC_TOLLS_OPERATOR_SECRET")
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`ABC_TOLLS_PRODUCER_SECRET` (access key `ABCTOLLSPRODUCER`), `ABC_TOLLS_OPERATOR_SECRET`")
            && !stderr.contains("ABC_TOLLS_APP_SECRET")
            && stderr.contains("--insecure-no-auth"),
        "{stderr}"
    );
    // An address other machines can reach needs TLS (and keys) unless told otherwise.
    std::fs::write(
        &manifest,
        "[pipeline]\nname = \"open\"\ndata-dir = \"data\"\n[api]\naccess-keys = [{ id = \"K\", secret = \"s\" }]\n",
    )
    .expect("manifest");
    let out = Command::new(WEIR).arg("run").arg(&manifest).args(["--listen", "0.0.0.0:0"]).output().expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("without TLS") && stderr.contains("--insecure-public"), "{stderr}");
}

#[test]
fn plugin_swap_list_and_rollback_through_the_signed_admin_api() {
    let _built = weir_artifacts::TOLL_ETL;
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("swap.toml");
    let plugin = root().join("plugins/toll-etl");
    std::fs::write(
        &manifest,
        format!(
            "[pipeline]\nname = \"tolls\"\ndata-dir = \"data\"\n\n[api]\naccess-keys = [{{ id = \"AKIACLI\", secret = \"cli-secret\" }}]\n\n\
             [sources.http]\nkind = \"http\"\nstream = \"lines\"\n\n[streams.lines]\n[streams.rows]\n\n\
             [stages.etl]\nplugin = \"{}\"\ninput = \"lines\"\noutput = \"rows\"\n",
            plugin.display()
        ),
    )
    .expect("manifest");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut host = Command::new(WEIR)
        .args(["run", "--listen", &format!("127.0.0.1:{port}")])
        .arg(&manifest)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let weir = |args: &[&str]| {
        let out = Command::new(WEIR)
            .args(args)
            .env("WEIR_ENDPOINT", &endpoint)
            .env("AWS_ACCESS_KEY_ID", "AKIACLI")
            .env("AWS_SECRET_ACCESS_KEY", "cli-secret")
            .output()
            .expect("run weir");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !weir(&["plugin", "list", "tolls"]).0 {
        assert!(Instant::now() < deadline, "weir did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let component = weir_artifacts::TOLL_ETL;
    let (ok, out, err) = weir(&["plugin", "swap", "tolls", "etl", component, "--version", "0.1.1"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("\"plugin\": \"toll-etl@0.1.1\""), "{out}");
    let (ok, out, _) = weir(&["plugin", "list", "tolls"]);
    assert!(ok);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[1].contains("toll-etl@0.1.0") && lines[2].starts_with("  * toll-etl@0.1.1"), "{out}");
    let (ok, out, err) = weir(&["plugin", "rollback", "tolls", "etl"]);
    assert!(ok && out.contains("toll-etl@0.1.0"), "{out}{err}");
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"not a component").expect("garbage");
    let (ok, _, err) = weir(&["plugin", "swap", "tolls", "etl", &garbage.display().to_string()]);
    assert!(!ok && err.contains("CandidateRefused"), "{err}");
    // A transformer that accepts the malformed self-test line is not a toll-etl.
    let (ok, _, err) = weir(&["plugin", "swap", "tolls", "etl", weir_artifacts::SWAP_V2]);
    assert!(!ok && err.contains("self-test 2: expected ProcessingFailed, got Ok"), "{err}");
    let (ok, _, err) = weir(&["plugin", "list", "other-pipeline"]);
    assert!(!ok && err.contains("runs pipeline `tolls`, not `other-pipeline`"), "{err}");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn table_put_get_and_delete_talk_to_a_running_weir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("tables.toml");
    std::fs::write(&manifest, "[pipeline]\nname = \"tables\"\ndata-dir = \"data\"\n\n[tables.thresholds]\n")
        .expect("manifest");
    let port = free_port();
    let mut host = start(&manifest, port);
    let endpoint = format!("http://127.0.0.1:{port}");
    let weir = |args: &[&str]| {
        let out = Command::new(WEIR).args(args).env("WEIR_ENDPOINT", &endpoint).output().expect("run weir");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !weir(&["table", "put", "thresholds", "C 1/x", "5000"]).0 {
        assert!(Instant::now() < deadline, "weir did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(weir(&["table", "get", "thresholds", "C 1/x"]), (true, "5000\n".to_owned(), String::new()));
    let (ok, status, err) = weir(&["status"]);
    assert!(ok && status.starts_with("pipeline tables, up ") && status.contains("late  revisions"), "{status}{err}");
    assert!(weir(&["table", "delete", "thresholds", "C 1/x"]).0);
    let (ok, _, err) = weir(&["table", "get", "thresholds", "C 1/x"]);
    assert!(!ok && err.contains("has no item"), "{err}");
    let (ok, _, err) = weir(&["table", "get", "limits", "C1"]);
    assert!(!ok && err.contains("[tables.limits]"), "{err}");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn simulate_sends_a_day_and_the_thresholds_to_a_running_weir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifest = dir.path().join("sink.toml");
    std::fs::write(
        &manifest,
        "[pipeline]\nname = \"sink\"\ndata-dir = \"data\"\n\n[sources.http]\nkind = \"http\"\nstream = \"toll-lines\"\n\n\
         [streams.toll-lines]\n\n[tables.thresholds]\n",
    )
    .expect("manifest");
    let port = free_port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut host = start(&manifest, port);
    let weir =
        |args: &[&str]| Command::new(WEIR).args(args).env("WEIR_ENDPOINT", &endpoint).output().expect("run weir");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !weir(&["stream", "list"]).status.success() {
        assert!(Instant::now() < deadline, "weir did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = weir(&["simulate", "--to", &endpoint, "--day", "2026-11-25", "--seed", "7"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let sent: u64 = stdout.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("sent N toll lines");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let status: serde_json::Value = runtime
        .block_on(async { reqwest::get(format!("{endpoint}/v1/pipeline")).await?.json().await })
        .expect("pipeline status");
    assert_eq!(status["streams"]["toll-lines"], sent, "every line accepted once");
    let got = weir(&["table", "get", "thresholds", "C000100"]);
    assert_eq!(String::from_utf8_lossy(&got.stdout), "1500\n", "one customer in a hundred has a $15 threshold");
    assert!(sent > 10_000, "a day of traffic: {sent}");
    let _ = host.kill();
    let _ = host.wait();
}

#[test]
fn a_scaffolded_plugin_of_each_world_and_language_builds_and_passes_its_own_test_outside_any_checkout() {
    // A folder of the user's own, with no weir checkout above it.
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(!dir.path().ancestors().any(|d| d.join("wit/plugin.wit").is_file()));
    // The plugins share one target dir, as a user with several would choose: dependencies build once.
    let shared = dir.path().join("target").to_string_lossy().into_owned();
    let run = |args: &[&str]| {
        let out = Command::new(WEIR).args(args).output().expect("run weir");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "weir {args:?}:\n{text}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    for world in ["transformer", "notifier", "aggregator"] {
        for lang in ["rust", "python", "js", "c"] {
            let name = format!("{world}-{lang}");
            let plugin = dir.path().join(&name);
            let file = |f: &str| plugin.join(f).to_string_lossy().into_owned();
            let plugin_arg = plugin.to_string_lossy();
            run(&[
                "plugin",
                "new",
                &name,
                "--world",
                world,
                "--lang",
                lang,
                "--dir",
                &plugin_arg,
                "--target-dir",
                &shared,
            ]);
            // The scaffold's own test, unchanged: the sample gives exactly the expected report.
            let sample = ["--input", &file("sample.txt"), "--expect", &file("expected.txt")];
            run(&[&["plugin", "test", &*plugin_arg, "--build"], &sample[..]].concat());

            let inspected = run(&["plugin", "inspect", &plugin_arg]);
            assert!(inspected.contains(&format!("plugin    {name} 0.1.0")), "{name}: {inspected}");
            assert!(inspected.contains(&format!("world     {world}")), "{name}: {inspected}");
            for line in ["wit       weir:plugin@0.2.0", "size      ", "sha256    ", "\nexports\n  ", "\nimports\n"] {
                assert!(inspected.contains(line), "{name}: no `{line}` in {inspected}");
            }
            if world == "transformer" {
                let tested = run(&["plugin", "test", &plugin_arg]);
                assert!(tested.contains("2 self-tests of plugin.toml passed"), "{name}: {tested}");
            }
        }
    }
    // A scaffolded plugin runs in a pipeline: `weir run --build` builds it, records flow through it.
    let manifest = dir.path().join("pipeline.toml");
    std::fs::write(
        &manifest,
        "[pipeline]\nname = \"mine\"\ndata-dir = \"data\"\n\n[sources.http]\nkind = \"http\"\nstream = \"in\"\n\n\
         [streams.in]\n\n[stages.upper]\nplugin = \"transformer-rust\"\ninput = \"in\"\noutput = \"out\"\n\
         batch-wait = \"5ms\"\n\n[sinks.out]\nkind = \"file\"\npath = \"out.jsonl\"\n",
    )
    .expect("manifest");
    let port = free_port();
    let mut host = Command::new(WEIR)
        .args(["run", "--build", "--insecure-no-auth", "--listen", &format!("127.0.0.1:{port}")])
        .arg(&manifest)
        .env("WEIR_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start weir");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let client = reqwest::Client::new();
    runtime.block_on(async {
        common::wait_ready(&client, port).await;
        let url = format!("http://127.0.0.1:{port}/v1/streams/in/records");
        let put = client.post(url).header("content-type", "text/plain").body("  hello weir  \n").send().await;
        assert!(put.expect("put").status().is_success());
    });
    let out = dir.path().join("out.jsonl");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&out).is_ok_and(|t| t.contains("HELLO WEIR")) {
        assert!(Instant::now() < deadline, "the scaffolded plugin's output never reached the sink");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = host.kill();
    let _ = host.wait();

    // --config is checked as a stage's config is, then handed to the plugin.
    let plugin = dir.path().join("transformer-c");
    let (plugin_arg, sample) = (plugin.to_string_lossy(), plugin.join("sample.txt").to_string_lossy().into_owned());
    let prefixed = run(&["plugin", "test", &plugin_arg, "--input", &sample, "--config", "prefix=> "]);
    assert!(prefixed.lines().any(|l| l.starts_with("  > ")), "{prefixed}");
    let typo = Command::new(WEIR)
        .args(["plugin", "test", &plugin_arg, "--input", &sample, "--config", "prefx=> "])
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(!typo.status.success() && stderr.contains("has no config key `prefx` (it accepts: prefix)"), "{stderr}");
    // A report that differs from the expected one fails, saying where.
    std::fs::write(plugin.join("expected.txt"), "record 1: ok, 1 out\n  hello weir\n").expect("write");
    let out = Command::new(WEIR)
        .args(["plugin", "test"])
        .arg(&plugin)
        .arg("--input")
        .arg(plugin.join("sample.txt"))
        .arg("--expect")
        .arg(plugin.join("expected.txt"))
        .output()
        .expect("run weir");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("line 2 differs"), "{stderr}");
    let again = Command::new(WEIR)
        .args(["plugin", "new", "transformer-c", "--lang", "c", "--dir"])
        .arg(&plugin)
        .output()
        .expect("run weir");
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"));
}

/// README command 1 as a newcomer runs it, twice: the same report both times
/// (the day starts afresh), and a data-dir a simulation did not make is left alone.
#[test]
fn simulate_run_twice_reports_the_same_day_and_leaves_foreign_data_alone() {
    // The shipped manifests beside the shipped plugins, with out/ in a folder of the test's.
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("list").filter_map(|e| e.ok()) {
            if entry.path().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
            }
        }
    };
    copy(&root().join("manifests"), &dir.path().join("manifests"));
    copy(&root().join("manifests/abc-tolls"), &dir.path().join("manifests/abc-tolls"));
    std::os::unix::fs::symlink(root().join("plugins"), dir.path().join("plugins")).expect("plugins");
    let manifest = dir.path().join("manifests/abc-tolls.toml");
    let simulate = || {
        let out = Command::new(WEIR)
            .args(["simulate", "--day", "2026-11-25", "--seed", "3", "--run"])
            .arg(&manifest)
            .env("WEIR_LOG", "warn")
            .output()
            .expect("run weir");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let report = |stdout: &str| stdout.lines().skip(1).map(str::to_owned).collect::<Vec<_>>();
    let (ok, first, stderr) = simulate();
    assert!(ok, "{first}{stderr}");
    assert!(first.contains("rows in the warehouse"), "{first}");
    let (ok, second, stderr) = simulate();
    assert!(ok, "{second}{stderr}");
    assert_eq!(report(&second), report(&first), "a rerun reports the same day");

    // A data-dir holding someone else's data: refused in one line, nothing removed.
    let data = dir.path().join("out/abc-tolls/data");
    std::fs::remove_file(data.join("made-by-weir-simulate")).expect("the simulation's mark");
    std::fs::write(data.join("precious.txt"), "not a simulation's").expect("write");
    let (ok, _, stderr) = simulate();
    assert!(!ok);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("holds data that weir simulate did not make"), "{stderr}");
    assert!(data.join("precious.txt").is_file());
    assert!(!stderr.contains("backtrace"), "errors are for people: {stderr}");
}
