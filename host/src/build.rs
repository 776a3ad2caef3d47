//! `weir run --build`: runs each plugin's `[build] command` in its folder,
//! once per plugin, before the pipeline starts (like `spin up --build`).

use std::collections::BTreeSet;
use std::process::Command;

use crate::manifest::{Pipeline, PluginManifest};

/// A plugin build that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The command could not be started.
    #[error("plugin `{plugin}`: cannot run `{command}`: {source}")]
    Spawn {
        /// The plugin.
        plugin: String,
        /// Its build command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The command failed.
    #[error("plugin `{plugin}`: `{command}` failed ({status}); its output is above")]
    Failed {
        /// The plugin.
        plugin: String,
        /// Its build command.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
    },
    /// The command succeeded but the component is not where `output` says.
    #[error("plugin `{plugin}`: the build succeeded but `{output}` does not exist; fix [build] output in {manifest}")]
    NoOutput {
        /// The plugin.
        plugin: String,
        /// Expected component path.
        output: String,
        /// The plugin.toml.
        manifest: String,
    },
}

/// Builds one plugin.
pub fn build_plugin(plugin: &PluginManifest) -> Result<(), BuildError> {
    let name = plugin.info.name.to_string();
    if let Some(command) = &plugin.build.command {
        tracing::info!(plugin = %name, %command, "building plugin");
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&plugin.dir)
            .status()
            .map_err(|source| BuildError::Spawn { plugin: name.clone(), command: command.clone(), source })?;
        if !status.success() {
            return Err(BuildError::Failed { plugin: name, command: command.clone(), status });
        }
    }
    let output = plugin.component_path();
    if !output.exists() {
        return Err(BuildError::NoOutput {
            plugin: name,
            output: output.display().to_string(),
            manifest: plugin.path.display().to_string(),
        });
    }
    Ok(())
}

/// Builds every plugin the pipeline uses, each once.
pub fn build_all(pipeline: &Pipeline) -> Result<(), BuildError> {
    let mut done = BTreeSet::new();
    for stage in &pipeline.stages {
        if done.insert(stage.plugin.path.clone()) {
            build_plugin(&stage.plugin)?;
        }
    }
    Ok(())
}
