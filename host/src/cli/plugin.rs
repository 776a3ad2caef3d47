//! `weir plugin`: inspect, test, scaffold and build plugins (no weir needed),
//! and swap, roll back and list the plugins of a running pipeline.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Subcommand;

use crate::client::Client;
use crate::plugin::PluginEngine;

#[derive(Debug, Subcommand)]
pub(super) enum PluginAction {
    /// Replace a stage's plugin while its stream flows; refused candidates change nothing.
    Swap {
        /// The pipeline (as named in its manifest).
        pipeline: String,
        /// The stage.
        stage: String,
        /// The new component.
        component: PathBuf,
        /// Its version, shown in `weir plugin list` (default: `upload`).
        #[arg(long)]
        version: Option<String>,
        /// An aggregator stage's open windows' states, when the new plugin keeps them in
        /// another state version: `keep` (refuse such a plugin), `migrate` (through its
        /// `state-migration` export) or `reset` (drop them).
        #[arg(long, default_value = "keep")]
        state: crate::swap::StateChange,
    },
    /// Go back to the version the stage ran before its last swap.
    Rollback {
        /// The pipeline.
        pipeline: String,
        /// The stage.
        stage: String,
    },
    /// Which version runs on which stage, since when, with its counters.
    List {
        /// The pipeline.
        pipeline: String,
    },
    /// What a component is: its world, WIT version, imports and toolchain (no weir needed).
    Inspect {
        /// A component (.wasm), or a plugin folder / plugin.toml (its name, version and component).
        plugin: PathBuf,
    },
    /// Run a plugin on sample records and print each record's outcome (no weir needed).
    Test {
        /// A component (.wasm), or a plugin folder / plugin.toml (its config defaults and
        /// self-tests apply).
        plugin: PathBuf,
        /// Records, one per line; without it, the plugin.toml's `[[self-test]]` records,
        /// checked against what they expect.
        #[arg(long)]
        input: Option<PathBuf>,
        /// A config value, `key=value` (repeatable; TOML arrays and tables as JSON text).
        #[arg(long = "config", value_name = "KEY=VALUE")]
        config: Vec<String>,
        /// Build the plugin first, as its plugin.toml's `[build]` says.
        #[arg(long)]
        build: bool,
        /// A file holding exactly what the test must print: a difference fails it.
        #[arg(long)]
        expect: Option<PathBuf>,
    },
    /// Scaffold a plugin that builds and passes its test (sample.txt, expected.txt) as written.
    New {
        /// Its name (lowercase, digits and '-').
        name: String,
        /// Its world: transformer, aggregator or notifier.
        #[arg(long, default_value = "transformer")]
        world: crate::manifest::World,
        /// Its language: rust, python, js or c.
        #[arg(long)]
        lang: crate::scaffold::Lang,
        /// Where to write it (default: ./<name>).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Where its builds write, relative to its folder (default: `target`); plugins
        /// sharing one build their dependencies once.
        #[arg(long)]
        target_dir: Option<String>,
    },
    /// Build a plugin folder as its plugin.toml's [build] says (installing its language's
    /// pinned toolchain on first use).
    Build {
        /// A plugin folder, or its plugin.toml.
        plugin: PathBuf,
    },
}

pub(super) fn plugin_test(
    plugin: &Path,
    input: Option<PathBuf>,
    config: &[String],
    build: bool,
    expect: Option<PathBuf>,
) -> anyhow::Result<()> {
    let target = crate::author::TestTarget::resolve(plugin, build)?;
    let records = match input {
        None => None,
        Some(file) => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
            Some(text.lines().map(str::to_owned).collect::<Vec<_>>())
        }
    };
    let config = config
        .iter()
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) => Ok((k.to_owned(), v.to_owned())),
            None => anyhow::bail!("--config {pair}: write key=value"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let engine = Arc::new(PluginEngine::new()?);
    let crate::author::TestReport { text: report, failed } =
        crate::author::run_test(&engine, &target, records.as_deref(), &config)?;
    print!("{report}");
    if let Some(file) = expect {
        let expected = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
        if let Some((line, (want, got))) = expected.lines().zip(report.lines()).enumerate().find(|(_, (w, g))| w != g) {
            anyhow::bail!("line {} differs from {}:\n  expected: {want}\n  got:      {got}", line + 1, file.display());
        }
        anyhow::ensure!(
            expected.lines().count() == report.lines().count(),
            "{} expects {} lines, the test printed {}",
            file.display(),
            expected.lines().count(),
            report.lines().count()
        );
    }
    anyhow::ensure!(failed == 0, "the plugin failed on {failed} of the records (see their lines above)");
    Ok(())
}

pub(super) fn plugin_new(
    name: &str,
    world: crate::manifest::World,
    lang: crate::scaffold::Lang,
    dir: Option<PathBuf>,
    target_dir: Option<&str>,
) -> anyhow::Result<()> {
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    crate::scaffold::new_plugin(name, world, lang, &dir, target_dir)?;
    println!(
        "wrote {} ({} {}); try: weir plugin test {} --build --input {} --expect {}",
        dir.display(),
        lang.label(),
        world,
        dir.display(),
        dir.join("sample.txt").display(),
        dir.join("expected.txt").display()
    );
    Ok(())
}

/// `weir plugin build`: builds a plugin folder as its plugin.toml's `[build]` says.
pub(super) fn plugin_build(plugin: &Path) -> anyhow::Result<()> {
    let file = crate::manifest::PluginManifest::file_for(plugin);
    let mut diags = crate::manifest::Diagnostics::default();
    let manifest = crate::manifest::PluginManifest::load(&file, &mut diags)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let Some(manifest) = manifest.filter(|_| diags.is_empty()) else { anyhow::bail!("{diags}") };
    let component = crate::build::build_plugin(&manifest)?;
    println!("built {} {}: {}", manifest.info.name, manifest.info.version.get_ref(), component.display());
    Ok(())
}

pub(super) async fn plugin(client: Client, action: PluginAction) -> anyhow::Result<()> {
    use axum::http::{HeaderMap, HeaderValue, Method};
    let pipeline = match &action {
        PluginAction::Swap { pipeline, .. }
        | PluginAction::Rollback { pipeline, .. }
        | PluginAction::List { pipeline } => pipeline.clone(),
        _ => anyhow::bail!("`weir plugin` verbs that need no running weir are handled before this"),
    };
    // The host runs one pipeline: make sure it is the one meant.
    let status = client.native(Method::GET, "/v1/pipeline", HeaderMap::new(), Default::default()).await?;
    let running = status["pipeline"].as_str().unwrap_or("");
    anyhow::ensure!(running == pipeline, "the weir at this endpoint runs pipeline `{running}`, not `{pipeline}`");
    let answer = match action {
        PluginAction::Swap { stage, component, version, state, .. } => {
            let bytes = std::fs::read(&component).with_context(|| format!("cannot read {}", component.display()))?;
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("application/wasm"));
            headers.insert("x-weir-state", HeaderValue::from_static(state.as_str()));
            if let Some(v) = version {
                headers.insert("x-weir-plugin-version", HeaderValue::from_str(&v).context("--version")?);
            }
            let path = format!("/v1/stages/{stage}/plugin");
            client.native(Method::PUT, &path, headers, bytes.into()).await?
        }
        PluginAction::Rollback { stage, .. } => {
            let path = format!("/v1/stages/{stage}/plugin/rollback");
            client.native(Method::POST, &path, HeaderMap::new(), Default::default()).await?
        }
        PluginAction::Inspect { .. }
        | PluginAction::Test { .. }
        | PluginAction::New { .. }
        | PluginAction::Build { .. } => {
            unreachable!("refused by the match above")
        }
        PluginAction::List { .. } => {
            for stage in status["stages"].as_array().into_iter().flatten() {
                println!("stage `{}`:", stage["name"].as_str().unwrap_or(""));
                for v in stage["versions"].as_array().into_iter().flatten() {
                    let pause =
                        v["swap_pause_ms"].as_f64().map(|ms| format!("  swap paused {ms:.2} ms")).unwrap_or_default();
                    println!(
                        "  {} {} sha256 {} since {}  in {} out {} failures {}{pause}",
                        if v["active"] == true { "*" } else { " " },
                        v["plugin"].as_str().unwrap_or(""),
                        &v["sha256"].as_str().unwrap_or("")[..12.min(v["sha256"].as_str().unwrap_or("").len())],
                        v["since"].as_str().unwrap_or(""),
                        v["records_in"],
                        v["records_out"],
                        v["failures"],
                    );
                }
            }
            return Ok(());
        }
    };
    println!("{}", serde_json::to_string_pretty(&answer)?);
    Ok(())
}
