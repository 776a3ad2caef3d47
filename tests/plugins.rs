//! Every plugin in `plugins/` is built by `cargo test` (see `tests/artifacts`),
//! fits the world its plugin.toml declares and starts with its default config.
//! Each is exercised further by its own tests; this one catches a new plugin
//! that nothing loads yet.

use std::path::Path;

use weir_host::manifest::{Grants, Limits, World};
use weir_host::plugin::{AggregatorPlugin, Batch, MemoryServices, NotifierPlugin, TransformerPlugin, check_world};
use weir_tests::{artifacts, engine, plugin_manifest, root, sandbox};

#[test]
fn every_plugin_builds_fits_its_world_and_starts_with_its_defaults() {
    assert!(!artifacts::PLUGINS.is_empty());
    let engine = engine();
    for (name, component) in artifacts::PLUGINS {
        let manifest = plugin_manifest(&root().join("plugins").join(name));
        assert_eq!(manifest.component_path().canonicalize().ok().as_deref(), Some(Path::new(component)));
        let compiled = check_world(&engine, component.as_ref(), manifest.info.world).expect("fits its world");
        let defaults = manifest.default_config();
        let spec = sandbox(name, Limits::default(), Grants::default());
        let empty = Batch::with_capacity(0, 0);
        match manifest.info.world {
            World::Transformer => {
                let plugin = TransformerPlugin::new(&engine, compiled, spec, defaults).expect("load");
                plugin.instantiate().expect("starts").transform(&empty).expect("empty batch");
            }
            World::Aggregator => {
                let plugin = AggregatorPlugin::new(&engine, compiled, spec, defaults).expect("load");
                plugin.instantiate().expect("starts").fold(&empty, &[], &mut []).expect("empty batch");
            }
            World::Notifier => {
                let plugin = NotifierPlugin::new(&engine, compiled, spec, defaults).expect("load");
                let services = std::sync::Arc::new(MemoryServices::default());
                plugin.instantiate(services).expect("starts").consume(&empty).expect("empty batch");
            }
        }
    }
}
