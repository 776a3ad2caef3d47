//! `weir plugin new`: a working plugin to start from, of any world, in any
//! language weir builds, in any folder: its plugin.toml (with the `[build]`
//! that `weir plugin build` runs), the source, a README, and a test:
//! `sample.txt` with `expected.txt`, what `weir plugin test <folder> --build
//! --input sample.txt --expect expected.txt` must print. Every language's
//! plugin of a world behaves the same, so they share the test.
//!
//! Nothing refers to a weir checkout: a Rust plugin gets a copy of the SDK and
//! the WIT package in `.weir/` (and weir's Cargo.lock, so it builds with the
//! versions weir was tested with); the other languages' builds take what they
//! need from the `weir` binary. A plugin scaffolded into `plugins/` of a weir
//! checkout joins its workspace instead, like weir's own plugins.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};
pub use weir_toolchains::Lang;
use weir_toolchains::embedded;

use crate::manifest::{Name, World};

mod templates;

/// weir's own lockfile: a scaffolded Rust plugin starts from the versions weir was tested with.
const WEIR_LOCK: &str = include_str!("../../../Cargo.lock");

/// Writes a new plugin of `world` named `name` into `dir`; its builds write to
/// `target_dir` (relative to `dir`; default `target`, or weir's own in a checkout).
pub fn new_plugin(name: &str, world: World, lang: Lang, dir: &Path, target_dir: Option<&str>) -> anyhow::Result<()> {
    // The rule plugin.toml's `name` is read with, so the scaffold loads as written.
    Name::parse(name).map_err(|e| anyhow::anyhow!("plugin name {e}"))?;
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists already and is not empty: choose another name or --dir", dir.display());
    }
    let dir_abs = absolute(dir)?;
    // In a weir checkout's plugins/ folder a Rust plugin is a member of weir's workspace.
    let member = dir_abs
        .parent()
        .filter(|p| p.ends_with("plugins"))
        .and_then(Path::parent)
        .filter(|weir| weir.join("wit/plugin.wit").is_file() && weir.join("Cargo.toml").is_file());
    let under = name.replace('-', "_");
    let world_name = world.to_string();
    let source = templates::source(world, lang);
    let target_dir = match (target_dir, member) {
        (Some(t), _) => t.replace('\\', "/"),
        (None, Some(_)) => "../../target/wasm".to_owned(),
        (None, None) => "target".to_owned(),
    };
    let output = match lang {
        Lang::Rust => format!("{target_dir}/wasm32-wasip2/release/{under}.wasm"),
        Lang::Python => format!("{target_dir}/python/{under}.wasm"),
        Lang::Js => format!("{target_dir}/js/{under}.wasm"),
        Lang::C => format!("{target_dir}/c/{under}.wasm"),
    };
    let (mut all, lang_key, entry): (Vec<(String, String)>, &str, String) = match lang {
        Lang::Rust if member.is_some() => (
            vec![("Cargo.toml".into(), templates::RUST_MEMBER_CARGO.to_owned()), ("src/lib.rs".into(), source.into())],
            "rust",
            String::new(),
        ),
        Lang::Rust => {
            let mut files = vec![
                ("Cargo.toml".into(), templates::RUST_CARGO.to_owned()),
                ("src/lib.rs".into(), source.to_owned()),
                ("Cargo.lock".into(), WEIR_LOCK.to_owned()),
                (".weir/sdk/Cargo.toml".into(), embedded::RUST_SDK_CARGO.to_owned()),
            ];
            files.extend(embedded::RUST_SDK.iter().map(|(f, text)| (format!(".weir/sdk/{f}"), (*text).to_owned())));
            files.extend(embedded::WIT.iter().map(|(f, text)| (format!(".weir/wit/{f}"), (*text).to_owned())));
            (files, "rust", String::new())
        }
        Lang::Python => (vec![("app.py".into(), source.into())], "python", "module = \"app\"\n".into()),
        Lang::Js => (vec![("app.js".into(), source.into())], "js", "main = \"app.js\"\n".into()),
        Lang::C => (vec![("plugin.c".into(), source.into())], "c", "sources = [\"plugin.c\"]\n".into()),
    };
    let build = format!("lang = \"{lang_key}\"\n{entry}target-dir = \"{target_dir}\"\noutput = \"{output}\"");
    let (description, config, self_tests, sample, expected) = templates::world_files(world);
    let lang_name = lang.label();
    let manifest = templates::PLUGIN_TOML
        .replace("{description}", description)
        .replace("{config}", config)
        .replace("{self_tests}", self_tests)
        .replace("{world}", &world_name)
        .replace("{lang}", lang_name)
        .replace("{build}", &build);
    let readme = templates::README
        .replace("{description}", description)
        .replace("{world}", &world_name)
        .replace("{lang}", lang_name);
    all.push(("plugin.toml".into(), manifest));
    all.push(("README.md".into(), readme));
    all.push(("sample.txt".into(), sample.to_owned()));
    all.push(("expected.txt".into(), expected.to_owned()));
    if member.is_none() {
        all.push((".gitignore".into(), "/target\n".into()));
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (file, text) in all {
        let path = dir.join(&file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // The SDK's own files are copied as they are; templates get the plugin's names.
        let text = if file.starts_with(".weir/") || file == "Cargo.lock" {
            text
        } else {
            text.replace("{name}", name).replace("{crate}", &under)
        };
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

fn absolute(path: &Path) -> anyhow::Result<PathBuf> {
    let path = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?;
    // Lexically: the target folder does not exist yet.
    Ok(normalize(&path))
}

/// `a/b/../c` as `a/c`, without looking at the file system.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_name_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = |name: &str, world| {
            new_plugin(name, world, Lang::C, &dir.path().join("x"), None).expect_err("refused").to_string()
        };
        assert!(err("Toll_Enrich", World::Transformer).contains("lowercase letters"));
    }
}
