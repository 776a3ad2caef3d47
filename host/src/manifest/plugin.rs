//! The plugin manifest, `plugins/<name>/plugin.toml`: what a plugin is, the
//! configuration it accepts, the capabilities it needs and how to build it.
//!
//! ```toml
//! [plugin]
//! name = "toll-etl"
//! version = "0.1.0"
//! world = "transformer"          # transformer | aggregator | notifier
//! description = "..."
//!
//! [config.currency]              # one table per accepted config key
//! type = "string"                # string | integer | float | boolean | array | table
//! default = "USD"                # or `required = true`
//! description = "..."
//!
//! [config.totals]                # a resource the plugin uses: the only ones it may
//! type = "state-table"           # state-table | channel | reference: a name, or an array of names
//! default = "month-totals"       # the stage may name another one of the pipeline's
//!
//! [capabilities]
//! clock = false                  # real wall/monotonic clocks (frozen at 0 otherwise)
//! dirs = []                      # guest paths the plugin expects the stage to grant
//!
//! [build]
//! lang = "rust"                  # rust | python | js | c, built by weir (or command = "...", run in this folder)
//! target-dir = "../../target/wasm"
//! output = "../../target/wasm/wasm32-wasip2/release/toll_etl.wasm"
//!
//! [[self-test]]                  # optional, any number: a hot-swap candidate must pass them
//! input = "T0017-000001,..."     # a record's payload (and `key = "..."`)
//! outcome = "ok"                 # ok | processing-failed | dropped
//! output = "..."                 # optional: the payload of its first output record
//! ```

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use weir_plugin::{Resource, World};

use super::diagnostic::{Diagnostic, Diagnostics, SourceFile};
use super::toml_doc::Document;
use super::units::Name;

/// `[plugin]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PluginInfo {
    /// `name = "toll-etl"`
    pub name: Name,
    /// `version = "0.1.0"`
    pub version: Spanned<String>,
    /// `world = "transformer"`
    pub world: World,
    /// `description = "..."`
    #[serde(default)]
    pub description: String,
}

/// The type of a config value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfigType {
    /// A TOML string.
    String,
    /// A TOML integer.
    Integer,
    /// A TOML float or integer.
    Float,
    /// `true` or `false`.
    Boolean,
    /// A TOML array.
    Array,
    /// A TOML table.
    Table,
    /// The name of a state table of the pipeline (or an array of names): one
    /// the plugin may use.
    StateTable,
    /// The name of a notification channel of the pipeline (or an array of names).
    Channel,
    /// The name of a reference table of the pipeline (or an array of names).
    Reference,
}

/// The names a resource-typed config value gives: one string, or an array of them.
pub fn resource_names(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Array(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

impl ConfigType {
    /// Its name in plugin.toml.
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::String => "string",
            ConfigType::Integer => "integer",
            ConfigType::Float => "float",
            ConfigType::Boolean => "boolean",
            ConfigType::Array => "array",
            ConfigType::Table => "table",
            ConfigType::StateTable => "state-table (a name or an array of names)",
            ConfigType::Channel => "channel (a name or an array of names)",
            ConfigType::Reference => "reference (a name or an array of names)",
        }
    }

    /// The resource a value of this type names, if it names one.
    pub fn resource(self) -> Option<Resource> {
        match self {
            ConfigType::StateTable => Some(Resource::StateTable),
            ConfigType::Channel => Some(Resource::Channel),
            ConfigType::Reference => Some(Resource::Reference),
            _ => None,
        }
    }

    /// Whether `value` has this type.
    pub fn accepts(self, value: &toml::Value) -> bool {
        if self.resource().is_some() {
            return resource_names(value).is_some();
        }
        matches!(
            (self, value),
            (ConfigType::String, toml::Value::String(_))
                | (ConfigType::Integer, toml::Value::Integer(_))
                | (ConfigType::Float, toml::Value::Float(_) | toml::Value::Integer(_))
                | (ConfigType::Boolean, toml::Value::Boolean(_))
                | (ConfigType::Array, toml::Value::Array(_))
                | (ConfigType::Table, toml::Value::Table(_))
        )
    }
}

/// What is wrong with the configuration given to a plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The key at fault; none for a required key that is missing.
    pub key: Option<String>,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

/// `[config.<key>]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ConfigKey {
    /// `type = "string"`
    #[serde(rename = "type")]
    pub ty: ConfigType,
    /// `description = "..."`
    #[serde(default)]
    pub description: String,
    /// `default = ...`: handed to the plugin when the stage does not set the key.
    pub default: Option<toml::Value>,
    /// `required = true`: the stage must set it.
    #[serde(default)]
    pub required: bool,
}

/// `[capabilities]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Capabilities {
    /// `clock = true`: the plugin needs real clocks.
    #[serde(default)]
    pub clock: bool,
    /// `dirs = ["/reference"]`: guest paths the stage must grant.
    #[serde(default)]
    pub dirs: Vec<String>,
}

/// `[build]`: how the plugin is built from source (see [`weir_toolchains::BuildSection`]).
pub type Build = weir_toolchains::BuildSection;

/// A plugin manifest, read and checked.
#[derive(Debug, Clone)]
pub struct PluginManifest {
    /// The plugin.toml file.
    pub path: PathBuf,
    /// Its folder; `[build]` paths are relative to it.
    pub dir: PathBuf,
    /// `[plugin]`
    pub info: PluginInfo,
    /// `[config.*]`, in file order.
    pub config: Vec<(String, ConfigKey)>,
    /// `[capabilities]`
    pub capabilities: Capabilities,
    /// `[build]`
    pub build: Build,
    /// `[[self-test]]`
    pub self_tests: Vec<SelfTest>,
}

/// `[[self-test]]`: a record the plugin must handle as stated (checked before a hot swap).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SelfTest {
    /// The record's payload.
    pub input: String,
    /// The record's key.
    #[serde(default)]
    pub key: String,
    /// The outcome the plugin must give it.
    pub outcome: ExpectedOutcome,
    /// The payload of its first output record, if it matters.
    pub output: Option<String>,
}

/// A transformer's outcome for one record, as a self-test expects it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpectedOutcome {
    /// Transformed.
    #[default]
    Ok,
    /// Refused with a reason.
    ProcessingFailed,
    /// Dropped on purpose.
    Dropped,
}

impl PluginManifest {
    /// The component file.
    pub fn component_path(&self) -> PathBuf {
        self.dir.join(&self.build.output)
    }

    /// The configuration a plugin gets from the keys `set` and its defaults;
    /// or every key it does not take, value of the wrong type and required key missing.
    pub fn resolve_config(&self, set: &[(&str, &toml::Value)]) -> Result<Vec<(String, String)>, Vec<ConfigProblem>> {
        let mut problems = Vec::new();
        let declared: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        for &(key, value) in set {
            match self.config.iter().find(|(k, _)| k == key) {
                None => problems.push(ConfigProblem {
                    key: Some(key.to_owned()),
                    message: format!("plugin `{}` has no config key `{key}`", self.info.name),
                    help: Some(if declared.is_empty() {
                        "this plugin takes no configuration".to_owned()
                    } else {
                        format!("it accepts: {}", declared.join(", "))
                    }),
                }),
                Some((_, spec)) if !spec.ty.accepts(value) => problems.push(ConfigProblem {
                    key: Some(key.to_owned()),
                    message: format!("config `{key}` must be of type {}, not `{value}`", spec.ty.name()),
                    help: None,
                }),
                Some(_) => {}
            }
        }
        let mut out = Vec::new();
        for (key, spec) in &self.config {
            let value = set.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
            match (value, &spec.default) {
                (Some(v), _) | (None, Some(v)) => out.push((key.clone(), config_value_text(v))),
                (None, None) if spec.required => problems.push(ConfigProblem {
                    key: None,
                    message: format!("plugin `{}` requires config `{key}`", self.info.name),
                    help: Some(format!("add `{key} = ...` to the stage's config ({})", spec.description)),
                }),
                (None, None) => {}
            }
        }
        if problems.is_empty() { Ok(out) } else { Err(problems) }
    }

    /// The pipeline resources the plugin uses with the config keys `set` (and
    /// its defaults): per config key of a resource type, the names it gives.
    pub fn uses(&self, set: &[(&str, &toml::Value)]) -> Vec<(String, Resource, Vec<String>)> {
        self.config
            .iter()
            .filter_map(|(key, spec)| {
                let kind = spec.ty.resource()?;
                let value = set.iter().find(|(k, _)| k == key).map(|(_, v)| *v).or(spec.default.as_ref())?;
                Some((key.clone(), kind, resource_names(value)?))
            })
            .collect()
    }

    /// The configuration a plugin gets from its defaults alone.
    pub fn default_config(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .filter_map(|(k, spec)| spec.default.as_ref().map(|v| (k.clone(), config_value_text(v))))
            .collect()
    }

    /// The plugin.toml that `path` names: the file itself, or the one in that folder.
    pub fn file_for(path: &Path) -> PathBuf {
        if path.is_dir() { path.join("plugin.toml") } else { path.to_owned() }
    }

    /// Reads a plugin.toml; every problem goes to `diags`. A file that cannot be
    /// read is the caller's to report, since the caller knows who named it.
    pub fn load(file: &Path, diags: &mut Diagnostics) -> Result<Option<PluginManifest>, std::io::Error> {
        let text = std::fs::read_to_string(file)?;
        let file = file.to_owned();
        let source = SourceFile::new(&file, &text);
        let doc = Document::parse(source.clone(), &text, diags);
        doc.check_top_level(&["plugin", "config", "capabilities", "build", "self-test"], diags);
        let before = diags.len();
        let info = match doc.get("plugin") {
            Some(_) => doc.single::<Option<PluginInfo>>("plugin", diags).flatten(),
            None => {
                diags.push(Diagnostic::new(&source, 0..0, "missing [plugin] section").help(
                    "add [plugin] with name, version, world (transformer | aggregator | notifier) and description",
                ));
                None
            }
        };
        if let Some(info) = &info {
            let v = info.version.get_ref();
            if let Err(why) = check_semver(v) {
                diags.push(
                    Diagnostic::new(&source, info.version.span(), format!("version `{v}` is not a semantic version: {why}"))
                        .help("write MAJOR.MINOR.PATCH, optionally with a pre-release and build: \"0.1.0\", \"1.2.0-rc.1+build.7\""),
                );
            }
        }
        let config = doc
            .entries::<ConfigKey>("config", diags)
            .into_iter()
            .map(|e| (e.name.as_str().to_owned(), e.value))
            .collect::<Vec<_>>();
        for (key, spec) in &config {
            if let Some(default) = &spec.default
                && !spec.ty.accepts(default)
            {
                let span = doc.get("config").map(|v| v.span()).unwrap_or(0..0);
                diags.push(Diagnostic::new(
                    &source,
                    span,
                    format!("config `{key}`: default `{default}` is not of type {}", spec.ty.name()),
                ));
            }
        }
        let capabilities = doc.single::<Capabilities>("capabilities", diags).unwrap_or_default();
        let self_tests = doc.single::<Vec<SelfTest>>("self-test", diags).unwrap_or_default();
        let build = match doc.get("build") {
            Some(_) => doc.single::<Option<Build>>("build", diags).flatten(),
            None => {
                diags.push(Diagnostic::new(&source, 0..0, "missing [build] section").help(
                    "add [build] with `lang = \"rust\"` (or python, js, c) and `output = \"path/to/plugin.wasm\"`",
                ));
                None
            }
        };
        if let Some(build) = &build {
            let span = doc.get("build").map(|v| v.span()).unwrap_or(0..0);
            for problem in build.problems() {
                diags.push(Diagnostic::new(&source, span.clone(), format!("[build]: {problem}")));
            }
        }
        let (Some(info), Some(build)) = (info, build) else { return Ok(None) };
        if diags.len() > before {
            return Ok(None);
        }
        Ok(Some(PluginManifest {
            dir: file.parent().unwrap_or(Path::new(".")).to_owned(),
            path: file,
            info,
            config,
            capabilities,
            build,
            self_tests,
        }))
    }
}

/// A config value as the plugin receives it: strings verbatim, everything else as JSON text.
fn config_value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => serde_json::to_string(other).unwrap_or_else(|_| other.to_string()),
    }
}

/// Checks a version by SemVer 2.0.0: `MAJOR.MINOR.PATCH`, then optionally `-` and
/// dot-separated pre-release identifiers, then `+` and build identifiers
/// (identifiers are `[0-9A-Za-z-]`; numbers have no leading zero, except in a build).
fn check_semver(version: &str) -> Result<(), String> {
    let (rest, build) = match version.split_once('+') {
        Some((rest, build)) => (rest, Some(build)),
        None => (version, None),
    };
    let (core, pre) = match rest.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (rest, None),
    };
    let number = |part: &str| {
        !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) && (part == "0" || !part.starts_with('0'))
    };
    let parts: Vec<&str> = core.split('.').collect();
    if parts.len() != 3 || !parts.iter().all(|p| number(p)) {
        return Err("it must start with MAJOR.MINOR.PATCH, three numbers without leading zeros".to_owned());
    }
    let identifier = |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if let Some(pre) = pre {
        for id in pre.split('.') {
            if !identifier(id) || (id.bytes().all(|b| b.is_ascii_digit()) && !number(id)) {
                return Err(format!(
                    "pre-release identifier `{id}` must be [0-9A-Za-z-]+, a number without a leading zero"
                ));
            }
        }
    }
    if let Some(build) = build
        && let Some(id) = build.split('.').find(|id| !identifier(id))
    {
        return Err(format!("build identifier `{id}` must be [0-9A-Za-z-]+"));
    }
    Ok(())
}

#[cfg(test)]
mod semver_tests {
    use super::check_semver;

    #[test]
    fn versions_follow_semver_2_in_full() {
        for good in [
            "0.1.0",
            "1.2.3",
            "0.1.0-rc.1",
            "1.0.0-alpha",
            "1.0.0-0.3.7",
            "1.0.0-x.7.z.92",
            "1.0.0+20130313144700",
            "1.0.0-beta+exp.sha.5114f85",
            "1.0.0+21AF26D3---117B344092BD",
        ] {
            assert_eq!(check_semver(good), Ok(()), "{good}");
        }
        for bad in
            ["1.2", "1.2.3.4", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3-rc..1", "1.2.3+", "1.2.3-rc_1", "v1.2.3", ""]
        {
            assert!(check_semver(bad).is_err(), "{bad}");
        }
    }
}
