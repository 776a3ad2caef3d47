//! `weir check`: validates a pipeline manifest and the plugin manifests it
//! names, then type-checks each plugin component against its declared world
//! and loads each reference table.

use std::fmt::Write as _;
use std::path::Path;

use crate::manifest::{self, Diagnostics, Pipeline};
use crate::plugin::{PluginEngine, check_world};

/// The outcome of a check.
#[derive(Debug)]
pub enum CheckError {
    /// The manifest has problems (all of them are listed).
    Manifest(Diagnostics),
    /// Plugin components do not load or do not fit their world.
    Plugins(Vec<String>),
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Manifest(d) => write!(f, "{d}"),
            CheckError::Plugins(errors) => {
                for e in errors {
                    writeln!(f, "error: {e}")?;
                }
                write!(f, "{} plugin problem{} found", errors.len(), if errors.len() == 1 { "" } else { "s" })
            }
        }
    }
}

impl std::error::Error for CheckError {}

/// Checks the manifest only.
pub fn check_manifest(path: &Path) -> Result<Pipeline, CheckError> {
    manifest::load(path).map_err(CheckError::Manifest)
}

/// Checks the manifest and every plugin component; returns a summary.
pub fn check(path: &Path, engine: &PluginEngine) -> Result<String, CheckError> {
    let pipeline = check_manifest(path)?;
    let mut errors = Vec::new();
    let mut summary = String::new();
    let _ = writeln!(summary, "{}: pipeline `{}` is valid", path.display(), pipeline.name);
    let _ = writeln!(summary, "  streams: {}", names(pipeline.streams.iter().map(|s| s.name.as_str())));
    let _ = writeln!(summary, "  sinks:   {}", names(pipeline.sinks.iter().map(|s| s.name.as_str())));
    for stage in &pipeline.stages {
        let p = &stage.plugin;
        let verdict = component_verdict(&format!("stage `{}`", stage.name), p, engine, &mut errors);
        let _ = writeln!(
            summary,
            "  stage `{}`: {} -> [{}@{} ({})] -> {} ({verdict})",
            stage.name,
            stage.input,
            p.info.name,
            p.info.version.get_ref(),
            p.info.world,
            match &stage.output {
                manifest::Target::Stream(s) | manifest::Target::Sink(s) => s.as_str(),
                manifest::Target::Effects => "state tables and channels",
            },
        );
        for line in stage.window.iter().flat_map(crate::window::WindowSpec::explain) {
            let _ = writeln!(summary, "    time: {line}");
        }
    }
    for delivery in &pipeline.deliveries {
        let transform = match &delivery.transform {
            None => "no transform".to_owned(),
            Some(t) => {
                let p = &t.plugin;
                let verdict = component_verdict(&format!("delivery `{}`", delivery.name), p, engine, &mut errors);
                format!("[{}@{} ({})] ({verdict})", p.info.name, p.info.version.get_ref(), p.info.world)
            }
        };
        let warehouse = match &delivery.warehouse {
            None => String::new(),
            Some(w) => format!(" + warehouse table `{}`", w.table),
        };
        let _ = writeln!(
            summary,
            "  delivery `{}`: {transform} -> lake {}{warehouse}",
            delivery.name,
            delivery.lake.describe()
        );
    }
    for reference in &pipeline.references {
        // Loaded as at start: the object must exist and parse.
        let verdict = match crate::reference::ReferenceTables::open(std::slice::from_ref(reference)) {
            Ok(tables) => tables.status().first().map(|t| format!("{} rows", t.rows)).unwrap_or_default(),
            Err(e) => {
                errors.push(e.to_string());
                "not loadable".to_owned()
            }
        };
        let _ = writeln!(
            summary,
            "  reference `{}`: {} in lake {} ({verdict})",
            reference.name,
            reference.object,
            reference.lake.describe()
        );
    }
    if errors.is_empty() { Ok(summary) } else { Err(CheckError::Plugins(errors)) }
}

/// Whether a plugin's component exists and fits its world; problems go to `errors`.
fn component_verdict(
    owner: &str,
    p: &manifest::PluginManifest,
    engine: &PluginEngine,
    errors: &mut Vec<String>,
) -> String {
    let component = p.component_path();
    if !component.exists() {
        let hint = format!("build it with `weir plugin build {}` (or `weir run --build`)", p.dir.display());
        errors.push(format!(
            "{owner}: component `{}` of plugin `{}` does not exist; {hint}",
            component.display(),
            p.info.name
        ));
        return "missing".to_owned();
    }
    match check_world(engine, &component, p.info.world) {
        Ok(c) => format!("ok, sha256 {}", &c.sha256[..12]),
        Err(e) => {
            errors.push(format!("{owner}, plugin `{}`: {e}", p.info.name));
            "does not fit its world".to_owned()
        }
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<_> = it.collect();
    if v.is_empty() { "(none)".to_owned() } else { v.join(", ") }
}
