//! Building weir plugins from source, the way `weir plugin build`, `weir run
//! --build` and weir's own tests do: a plugin.toml's `[build]` names its
//! language and weir runs that language's toolchain, at a pinned version,
//! installed on first use into weir's cache (never system-wide):
//!
//! | `lang` | toolchain | installed from |
//! |---|---|---|
//! | `rust` | cargo, target `wasm32-wasip2` | rustup adds the target when it is missing |
//! | `python` | componentize-py 0.25.1 | PyPI |
//! | `js` | componentize-js 0.23.0 | npm (the lockfile weir carries) |
//! | `c` | zig 0.17.1 (clang and wasi-libc), wasm-tools 1.262 | PyPI |
//!
//! Everything else a build needs (the WIT package, the Python and JavaScript
//! helpers, the C bindings and the WASI adapter) is carried in [`embedded`], so
//! a plugin builds anywhere, with no weir checkout. `command = "..."` runs any
//! other build instead. A missing prerequisite is refused at once, before any
//! long step, with the command that fixes it.

pub mod embedded;
mod install;
pub use install::pip_package;
mod lang;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

/// A language weir builds plugins in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lang {
    /// Rust with weir-sdk: cargo for `wasm32-wasip2`.
    Rust,
    /// Python: componentize-py.
    Python,
    /// JavaScript: componentize-js.
    Js,
    /// C: zig's clang with wasi-libc, then wasm-tools.
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

/// `[build]` of a plugin.toml.
///
/// ```toml
/// [build]
/// lang = "rust"                  # rust | python | js | c: weir builds it (or command = "...";
///                                # with neither, `output` is a prebuilt component)
/// output = "target/wasm32-wasip2/release/my_plugin.wasm"
/// target-dir = "target"          # where builds write (cargo's target dir; staging for the others)
/// module = "app"                 # python: the module exporting the world
/// main = "app.js"                # js: the main file (every .js file of the folder goes along)
/// sources = ["plugin.c"]         # c: the sources
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BuildSection {
    /// `lang = "rust"`: built by weir with the language's toolchain.
    pub lang: Option<Lang>,
    /// `command = "make"`: any other build, run with `sh -c` in the plugin's folder.
    /// With neither, the component is prebuilt: nothing to build.
    pub command: Option<String>,
    /// The component the build writes, relative to the plugin's folder.
    pub output: String,
    /// Where builds write, relative to the plugin's folder (default `target`).
    pub target_dir: Option<String>,
    /// Python: the module exporting the world (default `app`).
    pub module: Option<String>,
    /// JavaScript: the main file (default `app.js`).
    pub main: Option<String>,
    /// C: the source files (default `plugin.c`).
    pub sources: Option<Vec<String>>,
}

impl BuildSection {
    /// What is wrong with the section, said so that it can be fixed.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lang.is_some() && self.command.is_some() {
            out.push("give `lang` or `command`, not both".to_owned());
        }
        let only = |set: bool, key: &str, lang: Lang| {
            (set && self.lang != Some(lang)).then(|| format!("`{key}` is for lang = \"{}\" only", lang_key(lang)))
        };
        out.extend(only(self.module.is_some(), "module", Lang::Python));
        out.extend(only(self.main.is_some(), "main", Lang::Js));
        out.extend(only(self.sources.is_some(), "sources", Lang::C));
        if self.output.is_empty() {
            out.push("`output` names the component the build writes, e.g. \"target/plugin.wasm\"".into());
        }
        out
    }
}

impl std::str::FromStr for Lang {
    type Err = String;

    /// `rust`, `python`, `js` or `c`, as `[build] lang` is written.
    fn from_str(s: &str) -> Result<Lang, String> {
        [Lang::Rust, Lang::Python, Lang::Js, Lang::C]
            .into_iter()
            .find(|l| lang_key(*l) == s)
            .ok_or_else(|| format!("`{s}` is not a language weir builds: rust, python, js or c"))
    }
}

fn lang_key(lang: Lang) -> &'static str {
    match lang {
        Lang::Rust => "rust",
        Lang::Python => "python",
        Lang::Js => "js",
        Lang::C => "c",
    }
}

/// One plugin to build.
#[derive(Debug, Clone, Copy)]
pub struct Plugin<'a> {
    /// Its name (plugin.toml's `[plugin] name`).
    pub name: &'a str,
    /// Its folder (the one holding plugin.toml).
    pub dir: &'a Path,
    /// The world it exports: `transformer`, `aggregator` or `notifier`.
    pub world: &'a str,
    /// How it builds.
    pub build: &'a BuildSection,
}

impl Plugin<'_> {
    /// The component file.
    pub fn output(&self) -> PathBuf {
        self.dir.join(&self.build.output)
    }

    fn target_dir(&self) -> PathBuf {
        self.dir.join(self.build.target_dir.as_deref().unwrap_or("target"))
    }

    /// A folder of this plugin's own for intermediate files.
    fn stage(&self) -> PathBuf {
        self.target_dir().join("weir").join(self.name)
    }
}

/// Why a plugin did not build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Something the build needs is not on this machine and weir cannot add it.
    #[error("plugin `{plugin}`: {what}: {fix}")]
    Missing {
        /// The plugin.
        plugin: String,
        /// What is missing.
        what: String,
        /// The command (or step) that fixes it.
        fix: String,
    },
    /// A pinned tool could not be installed.
    #[error("cannot install {tool}: {message}")]
    Install {
        /// The tool and its version.
        tool: String,
        /// Why, and what to run by hand.
        message: String,
    },
    /// A command could not be started.
    #[error("plugin `{plugin}`: cannot run `{command}`: {source}")]
    Spawn {
        /// The plugin.
        plugin: String,
        /// The command.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// A command failed; its own output says why.
    #[error("plugin `{plugin}`: `{command}` failed ({status}); its output is above")]
    Failed {
        /// The plugin.
        plugin: String,
        /// The command.
        command: String,
        /// Exit status.
        status: std::process::ExitStatus,
    },
    /// The build succeeded but wrote no component where `output` says.
    #[error("plugin `{plugin}`: the build succeeded but `{output}` does not exist: fix `output` in [build]")]
    NoOutput {
        /// The plugin.
        plugin: String,
        /// Where the component was expected.
        output: String,
    },
    /// A file of the build could not be written.
    #[error("plugin `{plugin}`: cannot write {path}: {source}")]
    Io {
        /// The plugin.
        plugin: String,
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The `[build]` section says nothing weir can do.
    #[error("plugin `{plugin}`: [build]: {problem}")]
    Section {
        /// The plugin.
        plugin: String,
        /// What is wrong.
        problem: String,
    },
}

/// The programs builds run and where pinned tools are kept. [`Tools::new`]
/// finds them on `PATH`; tests point them elsewhere.
#[derive(Debug, Clone)]
pub struct Tools {
    /// Pinned tools, one folder each (`<cache>/componentize-py-0.25.1`, ...).
    pub cache: PathBuf,
    /// `rustup`, to add the wasm target.
    pub rustup: OsString,
    /// `cargo`.
    pub cargo: OsString,
    /// `python3`, with pip.
    pub python: OsString,
    /// `node`.
    pub node: OsString,
    /// `npm`.
    pub npm: OsString,
}

impl Tools {
    /// The usual programs on `PATH`, pinned tools under `cache`.
    pub fn new(cache: PathBuf) -> Tools {
        Tools {
            cache,
            rustup: "rustup".into(),
            cargo: "cargo".into(),
            python: "python3".into(),
            node: "node".into(),
            npm: "npm".into(),
        }
    }

    /// weir's cache (`WEIR_CACHE_DIR`, else `~/.cache/weir`): its `toolchains` folder.
    pub fn default_cache() -> PathBuf {
        let root = std::env::var_os("WEIR_CACHE_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            home.join("weir")
        });
        root.join("toolchains")
    }
}

/// Builds a plugin; returns its component's path.
pub fn build(plugin: &Plugin<'_>, tools: &Tools) -> Result<PathBuf, BuildError> {
    if let Some(problem) = plugin.build.problems().into_iter().next() {
        return Err(BuildError::Section { plugin: plugin.name.to_owned(), problem });
    }
    // Every path of [build] is the plugin folder's, and commands run in that folder:
    // from here on the folder is absolute, so no path is taken relative twice.
    let dir = std::path::absolute(plugin.dir).map_err(|source| BuildError::Io {
        plugin: plugin.name.to_owned(),
        path: plugin.dir.display().to_string(),
        source,
    })?;
    let plugin = &Plugin { dir: &dir, ..*plugin };
    match (plugin.build.lang, &plugin.build.command) {
        (Some(Lang::Rust), _) => lang::rust(plugin, tools)?,
        (Some(Lang::Python), _) => lang::python(plugin, tools)?,
        (Some(Lang::Js), _) => lang::js(plugin, tools)?,
        (Some(Lang::C), _) => lang::c(plugin, tools)?,
        (None, Some(command)) => {
            let mut sh = Command::new("sh");
            sh.arg("-c").arg(command).current_dir(plugin.dir);
            run(plugin, &mut sh, command)?;
        }
        // A prebuilt component: there is nothing to build, only to find.
        (None, None) => {}
    }
    let output = plugin.output();
    if !output.is_file() {
        return Err(BuildError::NoOutput { plugin: plugin.name.to_owned(), output: output.display().to_string() });
    }
    Ok(output)
}

/// Runs a build step; its output goes to the terminal.
fn run(plugin: &Plugin<'_>, command: &mut Command, shown: &str) -> Result<(), BuildError> {
    let status = command.status().map_err(|source| BuildError::Spawn {
        plugin: plugin.name.to_owned(),
        command: shown.to_owned(),
        source,
    })?;
    if status.success() {
        Ok(())
    } else {
        Err(BuildError::Failed { plugin: plugin.name.to_owned(), command: shown.to_owned(), status })
    }
}

/// A command as the environment of an outer cargo would not leak into: its
/// target dir, wrappers (clippy's), flags and jobserver are its own business.
fn clean(program: &OsString) -> Command {
    let mut command = Command::new(program);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME")
            || ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "RUSTDOC", "CARGO"]
                .contains(&key.as_ref())
        {
            command.env_remove(key.as_ref());
        }
    }
    command
}

/// Writes `contents` to `path` unless it holds them already (so timestamps
/// stay, and builds that watch them are not redone).
fn write_if_changed(plugin: &Plugin<'_>, path: &Path, contents: &[u8]) -> Result<(), BuildError> {
    if std::fs::read(path).is_ok_and(|now| now == contents) {
        return Ok(());
    }
    let io = |source| BuildError::Io { plugin: plugin.name.to_owned(), path: path.display().to_string(), source };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    std::fs::write(path, contents).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> BuildSection {
        toml::from_str(&format!("output = \"x.wasm\"\n{text}")).expect("a [build] section")
    }

    #[test]
    fn a_build_section_says_how_to_build_once() {
        assert!(section("lang = \"rust\"").problems().is_empty());
        assert!(section("command = \"make\"").problems().is_empty());
        assert!(section("").problems().is_empty(), "a prebuilt component");
        assert!(section("lang = \"rust\"\ncommand = \"make\"").problems()[0].contains("not both"));
        assert!(section("lang = \"c\"\nmodule = \"app\"").problems()[0].contains("lang = \"python\" only"));
        assert!(toml::from_str::<BuildSection>("output = \"x\"\nlang = \"go\"").is_err());
    }
}
