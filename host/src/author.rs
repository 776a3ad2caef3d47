//! The plugin author's workflow, without a running weir: `weir plugin inspect`
//! tells what a component is (its world, the WIT version it was built against,
//! what it imports and which toolchain made it), `weir plugin test` runs one on
//! sample records (or on its plugin.toml's self-tests) and prints what it did,
//! and `weir plugin new` scaffolds a plugin (see [`crate::scaffold`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, bail};

use crate::manifest::plugin::ConfigType;
use crate::manifest::{Diagnostics, Grants, Limits, PluginManifest, Uses, World};
use crate::plugin::{
    AggregatorPlugin, BadRecords, Batch, CompiledComponent, MemoryServices, NotifierPlugin, Outcome, PluginEngine,
    PluginError, PluginIdent, SandboxSpec, TransformerPlugin, check_world, fits_world,
};

/// What `weir plugin inspect` found out about a component.
#[derive(Debug)]
pub struct Inspection {
    /// Size of the file in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The weir world it fits, if any.
    pub world: Option<World>,
    /// The WIT packages of weir it exports, with their versions (e.g. `weir:plugin/transform@0.2.0`).
    pub exports: Vec<String>,
    /// Every interface it imports.
    pub imports: Vec<String>,
    /// Its producers section: language, tools and SDKs with versions.
    pub producers: Vec<String>,
}

/// The world a compiled component fits, if any.
fn world_of(engine: &PluginEngine, compiled: &CompiledComponent) -> Option<World> {
    [World::Transformer, World::Aggregator, World::Notifier]
        .into_iter()
        .find(|&w| fits_world(engine, compiled, w).is_ok())
}

/// Reads and compiles a component and finds out which world it fits.
pub fn inspect(engine: &PluginEngine, path: &Path) -> anyhow::Result<Inspection> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let compiled = engine.compile_bytes(&bytes, path)?;
    let world = world_of(engine, &compiled);
    let ty = compiled.component.component_type();
    let exports = ty.exports(engine.engine()).map(|(name, _)| name.to_owned()).collect();
    let imports = ty.imports(engine.engine()).map(|(name, _)| name.to_owned()).collect();
    Ok(Inspection {
        bytes: bytes.len() as u64,
        sha256: compiled.sha256,
        world,
        exports,
        imports,
        producers: producers(&bytes),
    })
}

/// The distinct `field: name version` entries of every producers section in the component.
fn producers(bytes: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let Ok(wasmparser::Payload::CustomSection(section)) = payload else { continue };
        let wasmparser::KnownCustom::Producers(reader) = section.as_known() else { continue };
        for field in reader.into_iter().flatten() {
            for value in field.values.into_iter().flatten() {
                let entry = format!("{}: {} {}", field.name, value.name, value.version).trim_end().to_owned();
                if !found.contains(&entry) {
                    found.push(entry);
                }
            }
        }
    }
    found
}

impl std::fmt::Display for Inspection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let world =
            self.world.map_or("none of weir's worlds (transformer, aggregator, notifier)".into(), |w| w.to_string());
        writeln!(f, "world     {world}")?;
        let weir: Vec<&String> = self.exports.iter().filter(|e| e.starts_with("weir:")).collect();
        let version = weir.first().and_then(|e| e.split('@').nth(1)).unwrap_or("unknown");
        writeln!(f, "wit       weir:plugin@{version}")?;
        writeln!(f, "size      {} bytes ({:.1} MB)", self.bytes, self.bytes as f64 / 1e6)?;
        writeln!(f, "sha256    {}", self.sha256)?;
        writeln!(f, "exports")?;
        for e in &self.exports {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "imports")?;
        for i in &self.imports {
            // The sandbox links every WASI interface but gives the network nothing.
            let note = if i.starts_with("wasi:sockets/") { "  (linked; every connection is denied)" } else { "" };
            writeln!(f, "  {i}{note}")?;
        }
        if !self.producers.is_empty() {
            writeln!(f, "producers")?;
            for p in &self.producers {
                writeln!(f, "  {p}")?;
            }
        }
        Ok(())
    }
}

/// What `weir plugin test` runs: a component, its configuration, and where it came from.
pub struct TestTarget {
    /// The component.
    pub component: PathBuf,
    /// Its plugin.toml, when the target was a plugin folder or manifest.
    pub manifest: Option<PluginManifest>,
}

impl TestTarget {
    /// A `.wasm` file, or a plugin folder / plugin.toml (built first when `build`).
    pub fn resolve(target: &Path, build: bool) -> anyhow::Result<TestTarget> {
        if target.extension().is_some_and(|e| e == "wasm") {
            return Ok(TestTarget { component: target.to_owned(), manifest: None });
        }
        let file = PluginManifest::file_for(target);
        let mut diags = Diagnostics::default();
        let manifest = PluginManifest::load(&file, &mut diags)
            .with_context(|| format!("{} is neither a .wasm component nor a plugin folder", target.display()))?;
        let Some(manifest) = manifest.filter(|_| diags.is_empty()) else { bail!("{diags}") };
        if build {
            crate::build::build_plugin(&manifest)?;
        }
        Ok(TestTarget { component: manifest.component_path(), manifest: Some(manifest) })
    }
}

/// A `--config` value as its key's declared type: strings verbatim, other types read as TOML.
fn typed_value(manifest: &PluginManifest, key: &str, text: &str) -> toml::Value {
    let declared = manifest.config.iter().find(|(k, _)| k == key).map(|(_, spec)| spec.ty);
    let as_text = || toml::Value::String(text.to_owned());
    if matches!(declared, None | Some(ConfigType::String)) {
        return as_text();
    }
    toml::from_str::<toml::Table>(&format!("value = {text}"))
        .ok()
        .and_then(|mut t| t.remove("value"))
        .unwrap_or_else(as_text)
}

/// What `weir plugin test` found: its report, record by record, and how many
/// records the plugin failed on (trapped, ran past its deadline or memory).
#[derive(Debug)]
pub struct TestReport {
    /// One line per record (with a transformer's outputs below it), then a summary.
    pub text: String,
    /// Records the plugin failed on; each has its line in `text`.
    pub failed: usize,
}

/// Runs a component on `input` records (or, without input, its plugin.toml's
/// self-tests) and describes what it did, record by record. A transformer's batch
/// that fails as a whole is run again one record at a time, so that the report
/// names the records at fault and goes on with the others. An error means the
/// plugin did not start or a self-test did not hold.
pub fn run_test(
    engine: &Arc<PluginEngine>,
    target: &TestTarget,
    input: Option<&[String]>,
    overrides: &[(String, String)],
) -> anyhow::Result<TestReport> {
    let name = target.manifest.as_ref().map_or_else(
        || target.component.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        |m| m.info.name.to_string(),
    );
    // The tables, channels and reference tables the plugin may use: those its
    // config names (given or by default), as in a pipeline.
    let mut uses = Uses::default();
    let config = match &target.manifest {
        // Checked as a stage's config is: known keys, declared types, required keys.
        Some(manifest) => {
            let values: Vec<(&str, toml::Value)> =
                overrides.iter().map(|(k, v)| (k.as_str(), typed_value(manifest, k, v))).collect();
            let set: Vec<(&str, &toml::Value)> = values.iter().map(|(k, v)| (*k, v)).collect();
            for (_, kind, names) in manifest.uses(&set) {
                names.into_iter().for_each(|name| uses.add(kind, name));
            }
            manifest.resolve_config(&set).map_err(|problems| {
                let lines: Vec<String> = problems
                    .into_iter()
                    .map(|p| match p.help {
                        Some(help) => format!("--config: {} ({help})", p.message),
                        None => format!("--config: {}", p.message),
                    })
                    .collect();
                anyhow::anyhow!(lines.join("\n"))
            })?
        }
        // A bare component declares no keys: its config is what is given.
        None => overrides.to_vec(),
    };
    let (compiled, world) = match &target.manifest {
        Some(m) => (check_world(engine, &target.component, m.info.world)?, m.info.world),
        None => {
            let compiled = engine.compile(&target.component)?;
            let world = world_of(engine, &compiled).context("the component fits none of weir's worlds")?;
            (compiled, world)
        }
    };
    let spec = SandboxSpec {
        ident: Arc::new(PluginIdent { pipeline: "test".into(), stage: "test".into(), plugin: name.clone() }),
        limits: Limits::default(),
        grants: Grants { uses, ..Grants::default() },
    };
    let self_tests = target.manifest.as_ref().map(|m| m.self_tests.clone()).unwrap_or_default();
    let now = crate::stream::now_ms();
    let (batch, records) = match input {
        Some(lines) => {
            let mut batch = Batch::with_capacity(lines.len(), lines.iter().map(String::len).sum());
            for r in lines {
                batch.push("", now, r.as_bytes());
            }
            (batch, lines.len())
        }
        None if world == World::Transformer && !self_tests.is_empty() => {
            (crate::pipeline::self_test_batch(&self_tests), self_tests.len())
        }
        None => bail!("give records to run it on: --input <file> (one record per line)"),
    };
    let mut out = String::new();
    // Records the plugin failed on (trapped, timed out, out of memory), not ones it set aside.
    let mut failed = 0;
    match world {
        World::Transformer => {
            let plugin = TransformerPlugin::new(engine, compiled, spec, config)?;
            let result = plugin.instantiate()?.transform(&batch);
            let mut set_aside = 0;
            match &result {
                Ok(result) => {
                    for (i, outcome, outputs) in result.per_record() {
                        set_aside += usize::from(report_outcome(&mut out, i, outcome, &outputs));
                    }
                }
                // The call failed as a whole (a trap, a deadline, the memory cap): each record
                // alone, on a fresh instance, so that the ones at fault are named and the others
                // still show what they give.
                Err(e) => {
                    let _ = writeln!(out, "the batch failed ({e}); each record alone:");
                    for i in 0..records {
                        match plugin.instantiate()?.transform(&batch.only(&[i])) {
                            Ok(one) => {
                                for (_, outcome, outputs) in one.per_record() {
                                    set_aside += usize::from(report_outcome(&mut out, i, outcome, &outputs));
                                }
                            }
                            Err(e) => {
                                failed += 1;
                                let _ = writeln!(out, "record {}: failed: {e}", i + 1);
                            }
                        }
                    }
                }
            }
            let _ = writeln!(out, "{records} records, {set_aside} set aside, {failed} failed");
            if input.is_none() {
                let result = result.map_err(|e| anyhow::anyhow!("{name}: the self-tests' batch failed: {e}"))?;
                crate::pipeline::check_self_tests(&result, &self_tests).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
                let _ = writeln!(out, "{} self-tests of plugin.toml passed", self_tests.len());
            }
        }
        World::Notifier => {
            let plugin = NotifierPlugin::new(engine, compiled, spec, config)?;
            // As a stage does: a batch the plugin fails changes nothing (fresh
            // services), and one it calls a record of bad goes again without it.
            let (services, refused) = without_bad_records(records, |kept| {
                let services = Arc::new(MemoryServices::default());
                plugin.instantiate(services.clone())?.consume(&batch.only(kept))?;
                Ok(services)
            })?;
            report_refused(&mut out, &refused);
            let sent = services.sent();
            for n in &sent {
                let _ = writeln!(out, "{} -> {} [{}]: {}", n.channel, n.recipient, n.idempotency_key, n.subject);
            }
            let _ = writeln!(out, "{records} records, {} set aside, {} notifications", refused.len(), sent.len());
        }
        World::Aggregator => {
            // One window holding every record, one state per key.
            let plugin = AggregatorPlugin::new(engine, compiled, spec, config)?;
            let mut instance = plugin.instantiate()?;
            let (states, refused) = without_bad_records(records, |kept| {
                // A failed fold leaves the states as they were: start from none again.
                let mut states = vec![Vec::new()];
                instance.fold(&batch.only(kept), &vec![0; kept.len()], &mut states)?;
                Ok(states)
            })?;
            report_refused(&mut out, &refused);
            let emitted = instance.emit(now - 1, now + 1, &[String::new()], &states)?;
            for r in emitted.records() {
                let _ = writeln!(out, "{}", String::from_utf8_lossy(r.payload));
            }
            let folded = records - refused.len();
            let _ = writeln!(
                out,
                "{folded} records folded into one window, {} set aside, {} results",
                refused.len(),
                emitted.len()
            );
        }
    }
    Ok(TestReport { text: out, failed })
}

/// Writes a transformed record's outcome (numbered from 1, as the input's lines are)
/// and its outputs; returns whether it was set aside.
fn report_outcome(out: &mut String, i: usize, outcome: &Outcome, outputs: &crate::plugin::RecordOutputs<'_>) -> bool {
    match outcome {
        Outcome::Ok(n) => {
            let _ = writeln!(out, "record {}: ok, {n} out", i + 1);
            for o in outputs.iter() {
                let _ = writeln!(out, "  {}", String::from_utf8_lossy(o.payload));
            }
            false
        }
        Outcome::Dropped => {
            let _ = writeln!(out, "record {}: dropped", i + 1);
            false
        }
        Outcome::ProcessingFailed(reason) => {
            let _ = writeln!(out, "record {}: processing-failed: {reason}", i + 1);
            true
        }
    }
}

/// Calls `call` on the records `0..records` and, each time the plugin calls one
/// of them bad, again without it: the last call's result, and the refused
/// records (index in the input, reason) in input order.
fn without_bad_records<T>(
    records: usize,
    mut call: impl FnMut(&[usize]) -> Result<T, PluginError>,
) -> Result<(T, Vec<(usize, String)>), PluginError> {
    let mut bad = BadRecords::new(records);
    loop {
        match call(bad.kept()) {
            Ok(done) => return Ok((done, bad.refused().to_vec())),
            Err(e) => bad.refuse(e)?,
        }
    }
}

/// One line per record the plugin called bad, numbered from 1 as the input's lines are.
fn report_refused(out: &mut String, refused: &[(usize, String)]) {
    for (i, reason) in refused {
        let _ = writeln!(out, "record {}: bad record: {reason}", i + 1);
    }
}
