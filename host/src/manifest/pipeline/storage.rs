//! `[storage]`: where the pipeline's streams are kept. The local disk (under
//! the data dir) is the default; `backend = "nats"` keeps them on a NATS
//! JetStream cluster instead, so that several hosts can share them.

use std::ops::Range;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::manifest::diagnostic::{Diagnostic, Diagnostics, SourceFile};

use super::load::value_or_env;

/// `[storage]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub(super) struct RawStorage {
    pub(super) backend: Option<Spanned<Backend>>,
    #[serde(default)]
    pub(super) servers: Vec<Spanned<String>>,
    pub(super) replicas: Option<Spanned<usize>>,
    pub(super) prefix: Option<Spanned<String>>,
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) lease_timeout: Option<Spanned<String>>,
    pub(super) host: Option<Spanned<String>>,
    pub(super) user: Option<Spanned<String>>,
    pub(super) password: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) token: Option<Spanned<String>>,
    pub(super) token_env: Option<Spanned<String>>,
}

/// Which store keeps the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// Files under the data dir (the default).
    #[default]
    Local,
    /// A NATS JetStream cluster.
    Nats,
}

/// Where the streams are kept.
#[derive(Debug, Clone, Default)]
pub enum Storage {
    /// On the local disk, under `<data-dir>/streams`.
    #[default]
    Local,
    /// On a NATS JetStream cluster.
    Nats(weir_nats::NatsSettings),
}

/// The most servers JetStream keeps a stream on.
const MAX_REPLICAS: usize = 5;

/// Checks `[storage]`: the servers and settings of the NATS backend, only with it.
pub(super) fn storage(source: &SourceFile, raw: &RawStorage, diags: &mut Diagnostics) -> Option<Storage> {
    let at = |span: Range<usize>, message: String| Diagnostic::new(source, span, message);
    let backend = raw.backend.as_ref().map_or(Backend::Local, |b| *b.get_ref());
    if backend == Backend::Local {
        let nats_only = [
            raw.servers.first().map(|s| ("servers", s.span())),
            raw.replicas.as_ref().map(|r| ("replicas", r.span())),
            raw.prefix.as_ref().map(|p| ("prefix", p.span())),
            raw.timeout.as_ref().map(|t| ("timeout", t.span())),
            raw.lease_timeout.as_ref().map(|t| ("lease-timeout", t.span())),
            raw.host.as_ref().map(|h| ("host", h.span())),
            raw.user.as_ref().map(|u| ("user", u.span())),
            raw.password.as_ref().or(raw.password_env.as_ref()).map(|p| ("password", p.span())),
            raw.token.as_ref().or(raw.token_env.as_ref()).map(|t| ("token", t.span())),
        ];
        for (key, span) in nats_only.into_iter().flatten() {
            diags.push(
                at(span, format!("[storage] {key} applies to the NATS backend only"))
                    .help("add backend = \"nats\", or remove it"),
            );
        }
        return Some(Storage::Local);
    }
    let mut ok = true;
    if raw.servers.is_empty() {
        let span = raw.backend.as_ref().map_or(0..0, |b| b.span());
        diags.push(
            at(span, "[storage] backend = \"nats\" needs servers".to_owned())
                .help("add servers = [\"nats://127.0.0.1:4222\"] (one or more servers of the cluster)"),
        );
        ok = false;
    }
    for server in &raw.servers {
        let url = server.get_ref();
        if !weir_nats::is_server_address(url) {
            diags.push(
                at(server.span(), format!("[storage] `{url}` is not a NATS server address"))
                    .help("write it as nats://host:port"),
            );
            ok = false;
        }
    }
    let replicas = raw.replicas.as_ref().map_or(3, |r| *r.get_ref());
    if let Some(r) = raw.replicas.as_ref().filter(|r| !(1..=MAX_REPLICAS).contains(r.get_ref())) {
        diags.push(
            at(r.span(), format!("[storage] replicas = {} is out of range", r.get_ref()))
                .help(format!("use 1 to {MAX_REPLICAS} (3 survives losing one server)")),
        );
        ok = false;
    }
    let prefix = raw.prefix.as_ref().map_or("weir".to_owned(), |p| p.get_ref().clone());
    let prefix_ok = !prefix.is_empty()
        && prefix.len() <= 32
        && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if let Some(p) = raw.prefix.as_ref().filter(|_| !prefix_ok) {
        diags.push(
            at(p.span(), format!("[storage] prefix `{prefix}` cannot start NATS names"))
                .help("use 1 to 32 of a-z, A-Z, 0-9, `-` and `_`"),
        );
        ok = false;
    }
    let duration = |key: &str, raw: &Option<Spanned<String>>, least: Duration, diags: &mut Diagnostics| match raw {
        None => Some(Duration::from_secs(10)),
        Some(t) => match crate::manifest::units::parse_duration(t.get_ref()) {
            Ok(d) if d >= least => Some(d),
            Ok(_) => {
                diags.push(at(t.span(), format!("[storage] {key} must be at least {least:?}")));
                None
            }
            Err(e) => {
                diags.push(at(t.span(), format!("[storage] {key}: {e}")));
                None
            }
        },
    };
    let timeout = duration("timeout", &raw.timeout, Duration::from_millis(100), diags);
    let lease_timeout = duration("lease-timeout", &raw.lease_timeout, Duration::from_secs(1), diags);
    // Empty: the host names itself, once, in its data dir.
    let host = raw.host.as_ref().map_or(String::new(), |h| h.get_ref().clone());
    if let Some(h) =
        raw.host.as_ref().filter(|_| host.is_empty() || host.len() > 128 || host.chars().any(char::is_control))
    {
        diags.push(
            at(h.span(), "[storage] host must be a name of 1 to 128 printable characters".to_owned())
                .help("name each host sharing the cluster differently, or leave host out"),
        );
        ok = false;
    }
    let secret = |key: &str, inline: &Option<Spanned<String>>, env: &Option<Spanned<String>>, diags: &mut _| {
        value_or_env(
            source,
            "[storage]",
            key,
            inline.as_ref().map(|v| (v.get_ref().as_str(), v.span())),
            env.as_ref().map(|v| (v.get_ref().as_str(), v.span())),
            &format!("the NATS {key}"),
            diags,
        )
    };
    let token = secret("token", &raw.token, &raw.token_env, diags);
    let password = secret("password", &raw.password, &raw.password_env, diags);
    let credentials = match (token, password, &raw.user) {
        (Err(()), _, _) | (_, Err(()), _) => None,
        (Ok(None), Ok(None), None) => Some(weir_nats::Credentials::None),
        (Ok(Some(token)), Ok(None), None) => Some(weir_nats::Credentials::Token(token)),
        (Ok(None), Ok(Some(password)), Some(user)) => {
            Some(weir_nats::Credentials::UserPassword { user: user.get_ref().clone(), password })
        }
        (_, _, _) => {
            let span = raw.user.as_ref().map_or(0..0, |u| u.span());
            diags.push(
                at(span, "[storage] give either a token or a user with its password".to_owned())
                    .help("token-env = \"NATS_TOKEN\", or user = \"weir\" with password-env = \"NATS_PASSWORD\""),
            );
            None
        }
    };
    let settings = weir_nats::NatsSettings {
        servers: raw.servers.iter().map(|s| s.get_ref().clone()).collect(),
        replicas,
        prefix,
        timeout: timeout?,
        credentials: credentials?,
        host,
        lease_timeout: lease_timeout?,
    };
    ok.then_some(Storage::Nats(settings))
}
