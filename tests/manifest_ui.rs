//! Snapshot tests of `weir check`'s report on broken manifests: every problem
//! at once, each with file, line, column and advice. One case per `ui/*.toml`;
//! the expected report is the `.stderr` file beside it. Bless new output with
//! `WEIR_BLESS=1 cargo test -p weir-tests --test manifest_ui`.

use std::path::Path;

#[test]
fn broken_manifests_report_every_problem_with_its_position() {
    let bless = std::env::var_os("WEIR_BLESS").is_some();
    let mut cases: Vec<_> = std::fs::read_dir("ui")
        .expect("tests/ui")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "ui cases missing: {cases:?}");
    let mut failures = Vec::new();
    for case in &cases {
        let report = match weir_host::check::check_manifest(case) {
            Ok(_) => panic!("{} should be refused", case.display()),
            Err(e) => format!("{e}\n"),
        };
        let expected_path = case.with_extension("stderr");
        if bless {
            std::fs::write(&expected_path, &report).expect("bless");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != report {
            failures.push(format!("--- {} expected:\n{expected}\n--- got:\n{report}", expected_path.display()));
        }
    }
    assert!(failures.is_empty(), "{}\n(bless with WEIR_BLESS=1)", failures.join("\n"));
}

#[test]
fn the_shipped_manifests_are_valid() {
    for manifest in ["../manifests/quickstart.toml", "../manifests/abc-tolls.toml"] {
        if let Err(e) = weir_host::check::check_manifest(Path::new(manifest)) {
            panic!("{manifest}:\n{e}");
        }
    }
    for agent in ["../manifests/abc-tolls/agent.toml"] {
        if let Err(e) = weir_host::agent::AgentConfig::load(Path::new(agent)) {
            panic!("{agent}:\n{e}");
        }
    }
}
