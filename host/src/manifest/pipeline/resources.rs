//! Checking what plugins reach through their imports: `[channels.<name>]`
//! and `[reference.<name>]` entries.

use std::path::Path;
use std::time::Duration;

use crate::manifest::diagnostic::Diagnostics;
use crate::manifest::units::Name;

use super::load::{Checker, value_or_env};
use super::raw::*;
use super::spec::*;

impl Checker<'_> {
    /// A `[channels.<name>]` entry.
    pub(super) fn channel(
        &self,
        name: Name,
        raw: &RawChannel,
        diags: &mut Diagnostics,
    ) -> Option<crate::notify::ChannelSpec> {
        use crate::notify::{ChannelKind, ChannelSpec, WebhookSpec};
        let kind = match self.setting(&raw.kind, &format!("channel `{name}`: kind"), diags)? {
            RawChannelKind::Inbox => ChannelKind::Inbox,
            RawChannelKind::Log => ChannelKind::Log,
            RawChannelKind::Webhook => {
                let Some(url) = &raw.url else {
                    diags.push(
                        self.at(raw.kind.span(), format!("webhook channel `{name}` has no url"))
                            .help("add url = \"https://...\""),
                    );
                    return None;
                };
                if !url.get_ref().starts_with("http://") && !url.get_ref().starts_with("https://") {
                    diags.push(
                        self.at(url.span(), format!("channel `{name}`: `{}` is not an http(s):// URL", url.get_ref())),
                    );
                    return None;
                }
                let owner = format!("channel `{name}`");
                let inline = raw.secret.as_deref().map(|v| (v, raw.kind.span()));
                let env = raw.secret_env.as_ref().map(|v| (v.get_ref().as_str(), v.span()));
                let secret = match value_or_env(self.source, &owner, "secret", inline, env, "signing secret", diags) {
                    Ok(Some(secret)) => secret,
                    Ok(None) => {
                        diags.push(
                            self.at(raw.kind.span(), format!("webhook channel `{name}` needs a signing secret"))
                                .help("add secret-env = \"VARIABLE\" (or secret = \"...\"): deliveries are signed with HMAC-SHA256"),
                        );
                        return None;
                    }
                    Err(()) => return None,
                };
                let retry_duration = match &raw.retry_duration {
                    None => DEFAULT_WEBHOOK_RETRY,
                    Some(d) => self.duration(d, diags)?,
                };
                ChannelKind::Webhook(WebhookSpec { url: url.get_ref().clone(), secret, retry_duration })
            }
        };
        if !matches!(kind, ChannelKind::Webhook(_))
            && let Some(url) = raw.url.as_ref()
        {
            diags.push(self.at(url.span(), format!("channel `{name}`: only webhook channels have a url")));
        }
        Some(ChannelSpec { name: name.to_string(), kind })
    }

    /// A `[reference.<name>]` table.
    pub(super) fn reference(
        &self,
        name: Name,
        raw: &RawReference,
        base: &Path,
        diags: &mut Diagnostics,
    ) -> Option<crate::reference::ReferenceSpec> {
        use crate::reference::ReferenceFormat;
        let owner = format!("reference table `{name}`");
        let lake = self.lake(&owner, &raw.lake, raw.s3.as_ref(), base, diags);
        let object = raw.object.get_ref().trim_start_matches('/').to_owned();
        let format = match &raw.format {
            Some(format) => Some(self.setting::<ReferenceFormat>(format, &format!("{owner}: format"), diags)?),
            None if object.ends_with(".csv") => Some(ReferenceFormat::Csv),
            None if [".jsonl", ".ndjson", ".json"].iter().any(|e| object.ends_with(e)) => {
                Some(ReferenceFormat::JsonLines)
            }
            None => {
                diags.push(
                    self.at(raw.object.span(), format!("{owner}: cannot tell the format of `{object}` from its name"))
                        .help("add format = \"csv\" or \"jsonl\""),
                );
                None
            }
        };
        let key = match raw.key.get_ref() {
            toml::Value::String(column) => vec![column.clone()],
            toml::Value::Array(columns) if !columns.is_empty() && columns.iter().all(toml::Value::is_str) => {
                columns.iter().filter_map(|c| c.as_str().map(str::to_owned)).collect()
            }
            _ => {
                diags.push(
                    self.at(raw.key.span(), format!("{owner}: key must name a column or a list of columns"))
                        .help("write key = \"station_id\" or key = [\"station_id\", \"weekday\"]"),
                );
                return None;
            }
        };
        let refresh = match &raw.refresh {
            None => DEFAULT_REFERENCE_REFRESH,
            Some(r) => {
                let d = self.duration(r, diags)?;
                if d < Duration::from_millis(100) {
                    diags.push(self.at(r.span(), format!("{owner}: refresh must be at least 100ms")));
                }
                d
            }
        };
        Some(crate::reference::ReferenceSpec {
            name: name.to_string(),
            lake: lake?,
            object,
            format: format?,
            key,
            refresh,
        })
    }
}
