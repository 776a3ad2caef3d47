//! Builds every plugin under `plugins/` and every test guest under
//! `tests/guests/` with the `[build] command` of its plugin.toml (exactly what
//! `weir run --build` runs), so `cargo test` needs no manual step. Generates a
//! constant with the component path of each.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

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

/// Runs one plugin's build command; returns its name and component path.
fn build(dir: &Path) -> (String, PathBuf) {
    let manifest = dir.join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).expect("read plugin.toml");
    let doc: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let field = |section: &str, key: &str| {
        doc.get(section).and_then(|s| s.get(key)).and_then(|v| v.as_str()).map(str::to_owned)
    };
    let name = field("plugin", "name").unwrap_or_else(|| panic!("{}: no [plugin] name", manifest.display()));
    let output = field("build", "output").unwrap_or_else(|| panic!("{}: no [build] output", manifest.display()));
    if let Some(command) = field("build", "command") {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(&command).current_dir(dir);
        // The outer cargo's settings (target dir, wrappers such as clippy's,
        // flags, jobserver) must not leak into the plugin's own build.
        for (key, _) in std::env::vars_os() {
            let key = key.to_string_lossy().into_owned();
            if (key.starts_with("CARGO_") && key != "CARGO_HOME")
                || ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "RUSTDOC", "CARGO"]
                    .contains(&key.as_str())
            {
                cmd.env_remove(&key);
            }
        }
        let status = cmd.status().unwrap_or_else(|e| panic!("cannot run `{command}`: {e}"));
        assert!(status.success(), "building plugin `{name}` with `{command}` in {} failed: {status}", dir.display());
    }
    let path = dir.join(&output);
    let path =
        path.canonicalize().unwrap_or_else(|e| panic!("plugin `{name}`: {} after the build: {e}", path.display()));
    (name, path)
}
