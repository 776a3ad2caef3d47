//! `weir plugin new`: a working plugin to start from, of any world, in any
//! language weir builds: its plugin.toml (with the `[build]` command of its
//! language's toolchain), the source, a README, and a test: `sample.txt` with
//! `expected.txt`, what `weir plugin test <folder> --build --input sample.txt
//! --expect expected.txt` must print. Every language's plugin of a world
//! behaves the same, so they share the test.
//!
//! The scaffold refers to a weir checkout for the WIT package, the SDKs and the
//! toolchain scripts: relatively when it sits inside that checkout.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context as _, bail};

use crate::manifest::{Name, World};

mod templates;

/// A language `weir plugin new` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust, with weir-sdk (cargo, wasm32-wasip2).
    Rust,
    /// Python, with componentize-py.
    Python,
    /// JavaScript, with componentize-js.
    Js,
    /// C, with clang and wasi-libc.
    C,
}

impl Lang {
    /// The language's name for people.
    pub fn label(self) -> &'static str {
        match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
            Lang::C => "C",
        }
    }
}

/// Writes a new plugin of `world` named `name` into `dir`, for the weir checkout at `weir`.
pub fn new_plugin(name: &str, world: World, lang: Lang, dir: &Path, weir: &Path) -> anyhow::Result<()> {
    // The rule plugin.toml's `name` is read with, so the scaffold loads as written.
    Name::parse(name).map_err(|e| anyhow::anyhow!("plugin name {e}"))?;
    if dir.exists() {
        bail!("{} exists already: choose another name or --dir", dir.display());
    }
    if !weir.join("wit/plugin.wit").is_file() || !weir.join("sdk/toolchains").is_dir() {
        bail!("{} is not a weir checkout (no wit/plugin.wit): pass --weir <checkout>", weir.display());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (weir, dir_abs) = (absolute(weir)?, absolute(dir)?);
    // In weir's own plugins/ folder a Rust plugin is a member of weir's workspace.
    let member = dir_abs.parent() == Some(weir.join("plugins").as_path());
    let root = relative_to(&weir, &dir_abs);
    let root = root.to_string_lossy().replace('\\', "/");
    let under = name.replace('-', "_");
    let world_name = world.to_string();
    let source = templates::source(world, lang);
    let output = match lang {
        Lang::Rust => format!("{root}/target/wasm/wasm32-wasip2/release/{under}.wasm"),
        Lang::Python => format!("{root}/target/wasm/python/{under}.wasm"),
        Lang::Js => format!("{root}/target/wasm/js/{under}.wasm"),
        Lang::C => format!("{root}/target/wasm/c/{under}.wasm"),
    };
    let script = |tool: &str, main: &str| format!("sh {root}/sdk/toolchains/{tool}.sh {world_name} {output} {main}");
    let (mut all, build): (Vec<(&str, String)>, String) = match lang {
        Lang::Rust if member => (
            vec![("Cargo.toml", templates::RUST_MEMBER_CARGO.to_owned()), ("src/lib.rs", source.to_owned())],
            format!("cargo build --release --target wasm32-wasip2 --target-dir {root}/target/wasm -p {name}"),
        ),
        Lang::Rust => (
            vec![("Cargo.toml", templates::RUST_CARGO.replace("{root}", &root)), ("src/lib.rs", source.to_owned())],
            format!("cargo build --release --target wasm32-wasip2 --target-dir {root}/target/wasm"),
        ),
        Lang::Python => (vec![("app.py", source.to_owned())], script("componentize-py", "app")),
        Lang::Js => (vec![("app.js", source.to_owned())], script("componentize-js", "app.js")),
        Lang::C => (vec![("plugin.c", source.to_owned())], script("componentize-c", "plugin.c")),
    };
    let (description, config, self_tests, sample, expected) = templates::world_files(world);
    let lang_name = lang.label();
    let manifest = templates::PLUGIN_TOML
        .replace("{description}", description)
        .replace("{config}", config)
        .replace("{self_tests}", self_tests)
        .replace("{world}", &world_name)
        .replace("{lang}", lang_name)
        .replace("{build}", &build)
        .replace("{output}", &output);
    let readme = templates::README
        .replace("{description}", description)
        .replace("{world}", &world_name)
        .replace("{lang}", lang_name);
    all.push(("plugin.toml", manifest));
    all.push(("README.md", readme));
    all.push(("sample.txt", sample.to_owned()));
    all.push(("expected.txt", expected.to_owned()));
    if lang == Lang::Rust && !member {
        // weir's own lock: the same dependency versions, so the shared target dir is reused.
        if let Ok(lock) = std::fs::read_to_string(weir.join("Cargo.lock")) {
            all.push(("Cargo.lock", lock));
        }
    }
    for (file, text) in all {
        let path = dir.join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("cannot create {}", parent.display()))?;
        }
        let text = text.replace("{name}", name).replace("{crate}", &under);
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

/// `target` as seen from `from`: relative when they share a prefix below the root, else absolute.
fn relative_to(target: &Path, from: &Path) -> PathBuf {
    let (t, f): (Vec<_>, Vec<_>) = (target.components().collect(), from.components().collect());
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    if common <= 1 {
        return target.to_owned();
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    if out.as_os_str().is_empty() { PathBuf::from(".") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkout_is_named_relatively_when_the_plugin_is_inside_it() {
        let rel = |t: &str, f: &str| relative_to(Path::new(t), Path::new(f)).display().to_string();
        assert_eq!(rel("/work/weir", "/work/weir/plugins/p"), "../..");
        assert_eq!(rel("/work/weir", "/work/mine/p"), "../../weir");
        assert_eq!(rel("/work/weir", "/tmp/p"), "/work/weir");
    }

    #[test]
    fn a_bad_name_is_refused_with_what_to_do() {
        let dir = tempfile::tempdir().expect("tempdir");
        let weir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let err = |name: &str, world| {
            new_plugin(name, world, Lang::C, &dir.path().join("x"), &weir).expect_err("refused").to_string()
        };
        assert!(err("Toll_Enrich", World::Transformer).contains("lowercase letters"));
    }
}
