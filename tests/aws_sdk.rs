//! The official AWS SDK for Python (boto3, pinned) works against weir with
//! nothing but an endpoint URL and keys: streams are created, described,
//! written and read through every iterator type, and bad signatures and stale
//! dates are refused with AWS's error types; Firehose puts reach the lake. boto3 is installed into
//! `target/python/boto3` on first use (PyPI), so no manual step is needed.

use std::path::PathBuf;

use weir_tests::{TestHost, files, root};

const BOTO3: &str = "boto3==1.35.99";

fn boto3() -> PathBuf {
    weir_tests::python_packages("boto3", &[BOTO3])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_aws_sdk_for_python_works_against_the_kinesis_api() {
    let python_path = tokio::task::spawn_blocking(boto3).await.expect("install boto3");
    let manifest = r#"
[pipeline]
name = "aws-sdk"
data-dir = "data"

[api]
access-keys = [{ id = "AKIAWEIRTEST", secret = "weir-test-secret-key" }]

[delivery.sdk-rows]
buffer-interval = "15m"
lake = "lake"
"#;
    let mut host = TestHost::start(manifest).await.expect("start");
    let output = tokio::process::Command::new("python3")
        .arg(root().join("tests/aws/kinesis_sdk.py"))
        .env("PYTHONPATH", &python_path)
        .env("ENDPOINT", &host.url)
        .env("ACCESS_KEY_ID", "AKIAWEIRTEST")
        .env("SECRET_ACCESS_KEY", "weir-test-secret-key")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .await
        .expect("run python3");
    host.stop().await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("16 passed, 0 failed"), "{stdout}\n{stderr}");
    // What Firehose took is in the lake once the host has drained.
    let delivered: String =
        files(&host.path("lake")).iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect();
    assert_eq!(delivered, "one\n\ntwo\n\nthree\n\n");
}
