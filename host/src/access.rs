//! Who may do what. Each access key has a policy: grants of actions
//! (`kinesis:PutRecords`, `admin:*`) on resources (`stream/toll-lines`,
//! `inbox/app/*`), IAM's way but small. An app reading one customer's inbox
//! holds no key at all: a recipient token, minted by a key that may, lets it
//! read that one inbox until the token expires.
//!
//! Resources are `<kind>/<name>`: `stream/`, `deliverystream/`, `table/`,
//! `channel/`, `stage/`, `inbox/<channel>/<recipient>`, and `pipeline` for the
//! pipeline's status.
//! Calls that list every resource of a kind (`kinesis:ListStreams`) are on `*`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;

/// The services an action may name, and what each covers.
pub const SERVICES: [&str; 6] = ["kinesis", "firehose", "state", "inbox", "notify", "admin"];
/// The kinds of resource a grant may name.
pub const RESOURCE_KINDS: [&str; 7] = ["stream", "deliverystream", "table", "inbox", "channel", "stage", "pipeline"];

/// What a key may do.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Policy {
    /// Everything: a key declared without `allow`.
    #[default]
    Everything,
    /// Only what one of these grants.
    Grants(Vec<Grant>),
}

/// Actions allowed on resources; `*` in a pattern stands for any run of characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// `service:Action` patterns, matched ignoring case as IAM does (`kinesis:Put*`).
    pub actions: Vec<String>,
    /// `kind/name` patterns (`stream/toll-*`), or `*`.
    pub resources: Vec<String>,
}

impl Policy {
    /// Whether `action` on `resource` is allowed.
    pub fn allows(&self, action: &str, resource: &str) -> bool {
        match self {
            Policy::Everything => true,
            Policy::Grants(grants) => grants.iter().any(|g| {
                g.actions.iter().any(|a| matches(&a.to_ascii_lowercase(), &action.to_ascii_lowercase()))
                    && g.resources.iter().any(|r| matches(r, resource))
            }),
        }
    }
}

/// Whether `text` matches `pattern`, where `*` stands for any run of characters.
fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else { return rest.is_empty() };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

/// Why an action pattern or a resource pattern of a grant is not one weir knows.
pub fn check_action(action: &str) -> Result<(), String> {
    if action == "*" {
        return Ok(());
    }
    match action.split_once(':') {
        Some((service, name)) if SERVICES.contains(&service) && !name.is_empty() => Ok(()),
        _ => Err(format!("`{action}` is not `service:Action` with a service of {}", SERVICES.join(", "))),
    }
}

/// See [`check_action`].
pub fn check_resource(resource: &str) -> Result<(), String> {
    let kind = resource.split('/').next().unwrap_or("");
    if resource == "*" || resource == "pipeline" || (RESOURCE_KINDS.contains(&kind) && resource.len() > kind.len() + 1)
    {
        Ok(())
    } else {
        Err(format!("`{resource}` is not `*`, `pipeline` or `kind/name` with a kind of {}", RESOURCE_KINDS.join(", ")))
    }
}

/// Who is calling: the key (or token) that signed the request, and what it may do.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The access key id, `recipient-token` or `anyone` (without authentication).
    pub who: String,
    /// What it may do.
    pub policy: Arc<Policy>,
    /// When its right ends (epoch ms): a recipient token's expiry, which ends
    /// a live feed it opened too. `None` for keys.
    pub until_ms: Option<u64>,
}

/// A call its caller may not make: answered `AccessDeniedException` (403).
#[derive(Debug, thiserror::Error)]
#[error("User: {who} is not authorized to perform: {action} on resource: {resource}")]
pub struct Denied {
    who: String,
    action: String,
    resource: String,
}

impl Caller {
    /// Anyone, with `--insecure-no-auth`.
    pub fn anyone() -> Self {
        Self { who: "anyone".into(), policy: Arc::new(Policy::Everything), until_ms: None }
    }

    /// A scraper holding `[api] metrics-token-env`'s token: it may read `/metrics` only.
    pub fn scraper() -> Self {
        let grant = Grant { actions: vec!["admin:GetMetrics".into()], resources: vec!["pipeline".into()] };
        Self { who: "metrics-token".into(), policy: Arc::new(Policy::Grants(vec![grant])), until_ms: None }
    }

    /// Refuses `action` on `resource` unless the caller's policy allows it.
    pub fn may(&self, action: &str, resource: &str) -> Result<(), Denied> {
        if self.policy.allows(action, resource) {
            return Ok(());
        }
        tracing::info!(who = %self.who, action, resource, "call denied");
        Err(Denied { who: self.who.clone(), action: action.into(), resource: resource.into() })
    }
}

/// Recipient tokens: `<base64url(channel/recipient:expiry ms)>.<base64url(HMAC-SHA256)>`,
/// signed with a key of the pipeline's kept in its data folder (so tokens
/// outlive a restart and no two pipelines accept each other's).
#[derive(Clone)]
pub struct RecipientTokens {
    key: [u8; 32],
}

/// The longest a recipient token may live.
pub const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

impl RecipientTokens {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// A token that lets its holder read one inbox (`<channel>/<recipient>`)
    /// until `now + life` (at most a day); and when it expires, in epoch ms.
    pub fn mint(&self, inbox: &str, life: Duration, now: SystemTime) -> (String, u64) {
        let expires = millis(now + life.min(MAX_TOKEN_LIFE));
        let body = format!("{inbox}:{expires}");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        (format!("{}.{}", b64.encode(&body), b64.encode(crate::sigv4::hmac(&self.key, body.as_bytes()))), expires)
    }

    /// The caller a token makes (who may read its one inbox), if it is genuine and unexpired.
    pub fn caller(&self, token: &str, now: SystemTime) -> Option<Caller> {
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let (body, tag) = token.split_once('.')?;
        let (body, tag) = (b64.decode(body).ok()?, b64.decode(tag).ok()?);
        // Constant time: a forger learns nothing from how long a refusal takes.
        if !crate::sigv4::hmac_matches(&self.key, &body, &tag) {
            return None;
        }
        let body = String::from_utf8(body).ok()?;
        let (inbox, expires) = body.rsplit_once(':')?;
        let expires = expires.parse::<u64>().ok()?;
        if expires < millis(now) {
            return None;
        }
        let grant = Grant { actions: vec!["inbox:Read".into()], resources: vec![format!("inbox/{inbox}")] };
        let policy = Arc::new(Policy::Grants(vec![grant]));
        Some(Caller { who: format!("recipient-token:{inbox}"), policy, until_ms: Some(expires) })
    }
}

/// Epoch milliseconds.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The audit log: who did what on the control plane, and every refusal, one
/// JSON line each in `<data-dir>/audit.log`: `{"time_ms", "who", "action",
/// "resource", "result"}`. The data plane (puts, reads, inbox reads) is not
/// in it: the stream holds what was put.
pub struct Audit {
    file: std::sync::Mutex<Option<std::fs::File>>,
    path: std::path::PathBuf,
}

/// Whether an action changes something outside the data plane (and so is audited when allowed).
pub fn is_control(action: &str) -> bool {
    let (service, name) = action.split_once(':').unwrap_or(("", action));
    match service {
        "admin" => !name.starts_with("Describe") && !name.starts_with("List"),
        "kinesis" | "firehose" => !["Put", "Get", "Describe", "List", "Subscribe"].iter().any(|p| name.starts_with(p)),
        "state" => name != "GetItem",
        "inbox" => name == "IssueToken",
        _ => false,
    }
}

impl Audit {
    /// The log in `data_dir`, opened (and made) on first use.
    pub fn at(data_dir: &std::path::Path) -> Self {
        Self { file: std::sync::Mutex::new(None), path: data_dir.join("audit.log") }
    }

    /// Records one call: `result` is `ok`, `denied`, or the error the call got.
    pub fn record(&self, who: &str, action: &str, resource: &str, result: &str) {
        let line = serde_json::json!({
            "time_ms": millis(SystemTime::now()), "who": who, "action": action, "resource": resource, "result": result,
        });
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if file.is_none() {
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(opened) => *file = Some(opened),
                Err(e) => tracing::error!(path = %self.path.display(), error = %e, "cannot open the audit log"),
            }
        }
        if let Some(f) = file.as_mut()
            && let Err(e) = std::io::Write::write_all(f, format!("{line}\n").as_bytes())
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write the audit log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(pairs: &[(&str, &str)]) -> Policy {
        Policy::Grants(
            pairs.iter().map(|(a, r)| Grant { actions: vec![(*a).into()], resources: vec![(*r).into()] }).collect(),
        )
    }

    #[test]
    fn patterns_match_runs_of_characters() {
        for (pattern, text, expected) in [
            ("*", "anything/at all", true),
            ("stream/toll-lines", "stream/toll-lines", true),
            ("stream/toll-lines", "stream/toll-lines-2", false),
            ("stream/toll-*", "stream/toll-lines", true),
            ("stream/toll-*", "stream/other", false),
            ("inbox/app/*", "inbox/app/c-42", true),
            ("inbox/*/c-42", "inbox/app/c-42", true),
            ("a*b*c", "abc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ] {
            assert_eq!(matches(pattern, text), expected, "{pattern} ~ {text}");
        }
    }

    #[test]
    fn a_policy_allows_only_what_it_grants() {
        let producer = grants(&[("kinesis:PutRecord*", "stream/toll-lines")]);
        assert!(producer.allows("kinesis:PutRecords", "stream/toll-lines"));
        assert!(producer.allows("Kinesis:putrecord", "stream/toll-lines"), "actions ignore case, as IAM's");
        assert!(!producer.allows("kinesis:DeleteStream", "stream/toll-lines"));
        assert!(!producer.allows("kinesis:PutRecords", "stream/Toll-Lines"), "resources do not");
        assert!(!producer.allows("kinesis:ListStreams", "*"));
        assert!(Policy::Everything.allows("admin:SwapPlugin", "stage/etl"));
        assert!(!Policy::Grants(Vec::new()).allows("kinesis:ListStreams", "*"));
    }

    #[test]
    fn the_control_plane_is_audited_and_the_data_plane_is_not() {
        for action in [
            "kinesis:CreateStream",
            "kinesis:SplitShard",
            "kinesis:StartStreamEncryption",
            "admin:SwapPlugin",
            "admin:RollbackPlugin",
            "state:PutItem",
            "state:DeleteItem",
            "inbox:IssueToken",
            "kinesis:AddTagsToStream",
        ] {
            assert!(is_control(action), "{action}");
        }
        for action in [
            "kinesis:PutRecords",
            "kinesis:GetRecords",
            "kinesis:DescribeStream",
            "kinesis:ListShards",
            "kinesis:SubscribeToShard",
            "firehose:PutRecordBatch",
            "inbox:Read",
            "state:GetItem",
            "admin:DescribePipeline",
        ] {
            assert!(!is_control(action), "{action}");
        }
    }

    #[test]
    fn grants_name_known_services_and_kinds() {
        assert!(check_action("kinesis:PutRecords").is_ok() && check_action("admin:*").is_ok());
        assert!(check_action("s3:GetObject").is_err() && check_action("kinesis").is_err());
        assert!(check_resource("inbox/app/*").is_ok() && check_resource("pipeline").is_ok());
        assert!(check_resource("bucket/x").is_err() && check_resource("stream/").is_err());
    }

    #[test]
    fn a_recipient_token_reads_one_inbox_until_it_expires() {
        let tokens = RecipientTokens::new([7; 32]);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let (token, _) = tokens.mint("app/c-42", Duration::from_secs(600), now);
        let caller = tokens.caller(&token, now).expect("genuine");
        assert!(caller.may("inbox:Read", "inbox/app/c-42").is_ok());
        assert!(caller.may("inbox:Read", "inbox/app/c-43").is_err(), "another recipient");
        assert!(caller.may("inbox:Read", "inbox/operators/c-42").is_err(), "another channel");
        assert!(caller.may("inbox:IssueToken", "inbox/app/c-42").is_err());
        assert!(caller.may("kinesis:PutRecords", "stream/toll-lines").is_err());
        assert!(tokens.caller(&token, now + Duration::from_secs(601)).is_none(), "expired");
        assert!(RecipientTokens::new([8; 32]).caller(&token, now).is_none(), "another pipeline's key");
        let (body, tag) = token.split_once('.').expect("two parts");
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let longer = b64.encode(format!("app/c-42:{}", u64::MAX));
        assert!(tokens.caller(&format!("{longer}.{tag}"), now).is_none(), "a changed expiry");
        let other = b64.encode("app/*:99999999999999");
        assert!(tokens.caller(&format!("{other}.{tag}"), now).is_none(), "a changed inbox");
        assert!(tokens.caller(body, now).is_none() && tokens.caller("", now).is_none());
        let (long, expires) = tokens.mint("app/c-42", Duration::from_secs(10 * 24 * 3600), now);
        assert!(tokens.caller(&long, now).is_some());
        assert_eq!(expires, millis(now + MAX_TOKEN_LIFE), "at most a day");
    }
}
