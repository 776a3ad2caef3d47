//! Builds every plugin under `plugins/` and every test guest under
//! `tests/guests/` as its plugin.toml's `[build]` says, with the same code as
//! `weir plugin build` (`weir-toolchains`), so `cargo test` needs no manual
//! step. Generates a constant with the component path of each.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let root = root.canonicalize().expect("workspace root");
    for watched in ["plugins", "tests/guests", "sdk", "wit", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let mut code = String::new();
    let mut plugins = Vec::new();
    for (group, is_plugin) in [("plugins", true), ("tests/guests", false)] {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(root.join(group))
            .unwrap_or_else(|e| panic!("cannot list {group}: {e}"))
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.join("plugin.toml").is_file())
            .collect();
        dirs.sort();
        for dir in dirs {
            let (name, output) = build(&dir);
            let ident = name.to_uppercase().replace('-', "_");
            let _ = writeln!(code, "/// The `{name}` component, built from `{group}/{name}`.");
            let _ = writeln!(code, "pub const {ident}: &str = {:?};", output.display().to_string());
            if is_plugin {
                plugins.push((name, ident));
            }
        }
    }
    let _ = writeln!(code, "/// Every plugin of `plugins/`: (name, component path). Each must be exercised by a test.");
    let list: Vec<String> = plugins.iter().map(|(n, i)| format!("({n:?}, {i})")).collect();
    let _ = writeln!(code, "pub const PLUGINS: &[(&str, &str)] = &[{}];", list.join(", "));
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("artifacts.rs");
    std::fs::write(out, code).expect("write artifacts.rs");
}

/// The parts of a plugin.toml a build needs.
#[derive(serde::Deserialize)]
struct PluginToml {
    plugin: PluginInfo,
    build: weir_toolchains::BuildSection,
}

#[derive(serde::Deserialize)]
struct PluginInfo {
    name: String,
    world: String,
}

/// Builds one plugin as `weir plugin build` does; returns its name and component path.
fn build(dir: &Path) -> (String, PathBuf) {
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("read plugin.toml");
    let doc: PluginToml = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let plugin = weir_toolchains::Plugin { name: &doc.plugin.name, dir, world: &doc.plugin.world, build: &doc.build };
    let tools = weir_toolchains::Tools::new(weir_toolchains::Tools::default_cache());
    let path = weir_toolchains::build(&plugin, &tools).unwrap_or_else(|e| panic!("{e}"));
    let path = path.canonicalize().unwrap_or_else(|e| panic!("plugin `{}`: {}: {e}", doc.plugin.name, path.display()));
    (doc.plugin.name, path)
}
