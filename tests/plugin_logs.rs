//! A plugin's log lines reach the host's log tagged with its plugin's name,
//! whatever language it is written in. Alone in its test binary: tracing
//! caches per call site whether anyone listens, so a test on another thread
//! logging through the same call site without a subscriber could hide the
//! lines from this one.

use std::sync::{Arc, Mutex};

use weir_host::manifest::{Grants, Limits, World};
use weir_host::plugin::{MemoryServices, NotifierPlugin, TransformerPlugin, check_world};
use weir_tests::{engine, plugin_component, plugin_manifest, root, sandbox};

/// A plugin of each language, and a line it logs when it starts with its defaults.
const LOGGING: &[(&str, &str)] = &[
    ("traffic-monitor-alert", "alerting operators"),
    ("traffic-monitor-alert-py", "alerting operators"),
    ("toll-enrich-js", "regions for 0 stations"),
    ("toll-validate-c", "validating toll lines"),
];

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn plugin_logs_reach_the_host_log_under_the_plugin_name_in_every_language() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        for &(name, _) in LOGGING {
            let component = plugin_component(name);
            let manifest = plugin_manifest(&root().join("plugins").join(name));
            let world = manifest.info.world;
            let compiled = check_world(&engine(), component.as_ref(), world).expect("fits its world");
            let spec = sandbox(name, Limits::default(), Grants::default());
            let config = manifest.default_config();
            match world {
                World::Transformer => {
                    TransformerPlugin::new(&engine(), compiled, spec, config)
                        .expect("load")
                        .instantiate()
                        .expect("starts");
                }
                World::Notifier => {
                    let plugin = NotifierPlugin::new(&engine(), compiled, spec, config).expect("load");
                    plugin.instantiate(Arc::new(MemoryServices::default())).expect("starts");
                }
                World::Aggregator => panic!("{name}: add an aggregator's start here"),
            }
        }
    });
    let logs = buffer.0.lock().map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    for &(name, line) in LOGGING {
        assert!(
            logs.lines().any(|l| l.contains(line) && l.contains(&format!("plugin=\"{name}\""))),
            "{name}: `{line}`, tagged with its name, is in the host's log:\n{logs}"
        );
    }
}
