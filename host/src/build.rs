//! `weir plugin build` and `weir run --build`: builds plugins from source with
//! their language's toolchain (see `weir_toolchains`), once per plugin, before
//! the pipeline starts (like `spin build`, `spin up --build`).

use std::collections::BTreeSet;
use std::path::PathBuf;

pub use weir_toolchains::BuildError;

use crate::manifest::{Pipeline, PluginManifest};

/// Builds one plugin; returns its component's path.
pub fn build_plugin(plugin: &PluginManifest) -> Result<PathBuf, BuildError> {
    let name = plugin.info.name.to_string();
    let world = plugin.info.world.to_string();
    match (plugin.build.lang, &plugin.build.command) {
        (Some(lang), _) => tracing::info!(plugin = %name, lang = lang.label(), "building plugin"),
        (None, Some(command)) => tracing::info!(plugin = %name, %command, "building plugin"),
        (None, None) => {}
    }
    let target = weir_toolchains::Plugin { name: &name, dir: &plugin.dir, world: &world, build: &plugin.build };
    weir_toolchains::build(&target, &weir_toolchains::Tools::new(weir_toolchains::Tools::default_cache()))
}

/// Builds every plugin the pipeline uses, each once.
pub fn build_all(pipeline: &Pipeline) -> Result<(), BuildError> {
    let mut done = BTreeSet::new();
    let transforms = pipeline.deliveries.iter().filter_map(|d| d.transform.as_ref().map(|t| &t.plugin));
    let plugins = pipeline.stages.iter().map(|s| &s.plugin).chain(transforms);
    for plugin in plugins {
        if done.insert(plugin.path.clone()) {
            build_plugin(plugin)?;
        }
    }
    Ok(())
}
