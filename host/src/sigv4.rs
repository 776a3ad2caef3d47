//! AWS Signature Version 4: verifying requests to weir's API, so the official
//! AWS SDKs and CLI can talk to weir with nothing but an endpoint URL and an
//! access key (requests signed with an unknown key, a wrong signature, or a
//! date more than five minutes off are refused), and signing the requests weir
//! makes (the command line to a host, the lake to an S3-compatible store).

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, Uri};
use sha2::{Digest, Sha256};

/// Largest accepted difference between a request's `X-Amz-Date` and the host's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// An access key the host accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKey {
    /// The access key id, e.g. `AKIAIOSFODNN7EXAMPLE`.
    pub id: String,
    /// The secret access key.
    pub secret: String,
}

impl std::fmt::Debug for AccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("AccessKey").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Why a request was refused, with AWS's error type names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("request is missing an Authorization header signed with AWS Signature Version 4")]
    Missing,
    /// The header is not a SigV4 header.
    #[error("Authorization header is malformed: {0}")]
    Malformed(String),
    /// Unknown access key id.
    #[error("The security token included in the request is invalid: unknown access key `{0}`")]
    UnknownKey(String),
    /// Date missing or too far from now.
    #[error("Signature expired or not yet valid: {0}")]
    Expired(String),
    /// The signature does not match.
    #[error(
        "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method."
    )]
    BadSignature,
}

impl AuthError {
    /// The `__type` an AWS client expects.
    pub fn aws_type(&self) -> &'static str {
        match self {
            AuthError::Missing => "MissingAuthenticationTokenException",
            AuthError::Malformed(_) => "IncompleteSignatureException",
            AuthError::UnknownKey(_) => "UnrecognizedClientException",
            AuthError::Expired(_) | AuthError::BadSignature => "InvalidSignatureException",
        }
    }
}

fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 (RFC 2104), with ring: SigV4, webhook signatures, shard iterators.
pub fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// Whether `tag` is the HMAC-SHA256 of `data` under `key`, compared in constant time.
pub fn hmac_matches(key: &[u8], data: &[u8], tag: &[u8]) -> bool {
    ring::hmac::verify(&ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key), data, tag).is_ok()
}

/// Percent-encodes as SigV4 wants: everything but `A-Z a-z 0-9 - _ . ~` (and `/` in paths).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn canonical_query(query: &str) -> String {
    let mut pairs: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&percent_decode(k), false), uri_encode(&percent_decode(v), false))
        })
        .collect();
    pairs.sort();
    pairs.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&")
}

struct Parsed<'a> {
    key_id: &'a str,
    scope: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Result<Parsed<'_>, AuthError> {
    let rest = value
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or_else(|| AuthError::Malformed("expected the AWS4-HMAC-SHA256 scheme".into()))?;
    let mut fields = BTreeMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| AuthError::Malformed(format!("`{part}`")))?;
        fields.insert(k, v);
    }
    let field = |k: &str| fields.get(k).copied().ok_or_else(|| AuthError::Malformed(format!("missing {k}")));
    let credential = field("Credential")?;
    let (key_id, scope) =
        credential.split_once('/').ok_or_else(|| AuthError::Malformed("Credential has no scope".into()))?;
    Ok(Parsed { key_id, scope, signed_headers: field("SignedHeaders")?, signature: field("Signature")? })
}

/// `YYYYMMDDTHHMMSSZ` to seconds since the Unix epoch.
fn parse_amz_date(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    // ASCII only, so the slicing below cannot split a character.
    if b.len() != 16 || !s.is_ascii() || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let rfc3339 = format!("{}-{}-{}T{}:{}:{}Z", &s[0..4], &s[4..6], &s[6..8], &s[9..11], &s[11..13], &s[13..15]);
    let t = humantime::parse_rfc3339(&rfc3339).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_secs() as i64)
}

/// Checks a request's signature against `keys`; returns the access key id used.
pub fn verify(
    keys: &[AccessKey],
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<String, AuthError> {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).ok_or(AuthError::Missing)?;
    let parsed = parse_authorization(authorization)?;
    let key = keys.iter().find(|k| k.id == parsed.key_id).ok_or_else(|| AuthError::UnknownKey(parsed.key_id.into()))?;

    let amz_date = headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| AuthError::Expired("the request has no X-Amz-Date header".into()))?;
    let signed_at =
        parse_amz_date(amz_date).ok_or_else(|| AuthError::Expired(format!("bad X-Amz-Date `{amz_date}`")))?;
    let now_secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    if (now_secs - signed_at).unsigned_abs() > MAX_CLOCK_SKEW.as_secs() {
        return Err(AuthError::Expired(format!(
            "the request was signed at {amz_date}, more than 5 minutes from the server's time"
        )));
    }
    if !parsed.scope.starts_with(&amz_date[..8]) || !parsed.scope.ends_with("/aws4_request") {
        return Err(AuthError::Malformed(format!(
            "credential scope `{}` does not match the request date",
            parsed.scope
        )));
    }

    let expected = signature(key, method, uri, headers, parsed.signed_headers, parsed.scope, amz_date, body)?;
    // Constant-time comparison: do not leak how much of the signature matched.
    let matches = expected.len() == parsed.signature.len()
        && expected.bytes().zip(parsed.signature.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if matches { Ok(key.id.clone()) } else { Err(AuthError::BadSignature) }
}

/// The signature of a request: what `verify` recomputes and `sign` produces.
#[allow(clippy::too_many_arguments, reason = "the inputs of the SigV4 algorithm, one by one")]
fn signature(
    key: &AccessKey,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    signed_headers: &str,
    scope: &str,
    amz_date: &str,
    body: &[u8],
) -> Result<String, AuthError> {
    let mut canonical_headers = String::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("").split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() && name != "host" {
            return Err(AuthError::Malformed(format!("signed header `{name}` is not in the request")));
        }
        let value =
            if values.is_empty() { uri.authority().map_or("", |a| a.as_str()).to_owned() } else { values.join(",") };
        canonical_headers.push_str(&format!("{name}:{value}\n"));
    }
    let payload_hash = match headers.get("x-amz-content-sha256").and_then(|v| v.to_str().ok()) {
        Some("UNSIGNED-PAYLOAD") => "UNSIGNED-PAYLOAD".to_owned(),
        _ => sha256_hex(body),
    };
    let canonical_request = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        method.as_str(),
        uri_encode(&percent_decode(uri.path()), true),
        canonical_query(uri.query().unwrap_or("")),
        canonical_headers,
        signed_headers,
        payload_hash
    );
    let string_to_sign = format!("AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}", sha256_hex(canonical_request.as_bytes()));
    let mut signing_key = format!("AWS4{}", key.secret).into_bytes();
    for part in scope.split('/') {
        signing_key = hmac(&signing_key, part.as_bytes()).to_vec();
    }
    Ok(hex(&hmac(&signing_key, string_to_sign.as_bytes())))
}

/// `YYYYMMDDTHHMMSSZ` for a time.
fn amz_date(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string().replace(['-', ':'], "")
}

/// Who signs requests, for which region and service (the `weir` command
/// line acting as a client).
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    /// The key to sign with.
    pub key: &'a AccessKey,
    /// e.g. `us-east-1`.
    pub region: &'a str,
    /// e.g. `kinesis`.
    pub service: &'a str,
}

impl Signer<'_> {
    /// Signs a request in place: adds `x-amz-date`, `host` and `authorization`.
    pub fn sign(&self, method: &Method, uri: &Uri, headers: &mut HeaderMap, body: &[u8], now: SystemTime) {
        let date = amz_date(now);
        let scope = format!("{}/{}/{}/aws4_request", &date[..8], self.region, self.service);
        if let Ok(v) = date.parse() {
            headers.insert("x-amz-date", v);
        }
        if let Some(Ok(v)) = uri.authority().map(|a| a.as_str().parse()) {
            headers.insert("host", v);
        }
        let mut names: Vec<String> = headers.keys().map(|k| k.as_str().to_owned()).collect();
        names.sort();
        names.dedup();
        let signed = names.join(";");
        if let Ok(sig) = signature(self.key, method, uri, headers, &signed, &scope, &date, body)
            && let Ok(v) =
                format!("AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed}, Signature={sig}", self.key.id)
                    .parse()
        {
            headers.insert("authorization", v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<AccessKey> {
        vec![AccessKey { id: "AKIDEXAMPLE".into(), secret: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into() }]
    }

    /// The `get-vanilla-query-order-key-case` case of AWS's SigV4 test suite.
    fn vanilla() -> (Method, Uri, HeaderMap) {
        let mut headers = HeaderMap::new();
        headers.insert("host", "example.amazonaws.com".parse().expect("header"));
        headers.insert("x-amz-date", "20150830T123600Z".parse().expect("header"));
        headers.insert(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"
                .parse()
                .expect("header"),
        );
        (Method::GET, "/?Param2=value2&Param1=value1".parse().expect("uri"), headers)
    }

    fn at(s: &str) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(parse_amz_date(s).expect("date") as u64)
    }

    #[test]
    fn the_aws_test_suite_signature_verifies() {
        let (m, u, h) = vanilla();
        assert_eq!(verify(&keys(), &m, &u, &h, b"", at("20150830T123600Z")), Ok("AKIDEXAMPLE".into()));
    }

    #[test]
    fn a_wrong_secret_a_changed_request_or_a_stale_date_is_refused() {
        let (m, u, h) = vanilla();
        let wrong = vec![AccessKey { id: "AKIDEXAMPLE".into(), secret: "not-the-secret".into() }];
        assert_eq!(verify(&wrong, &m, &u, &h, b"", at("20150830T123600Z")), Err(AuthError::BadSignature));
        let other: Uri = "/?Param2=value2&Param1=changed".parse().expect("uri");
        assert_eq!(verify(&keys(), &m, &other, &h, b"", at("20150830T123600Z")), Err(AuthError::BadSignature));
        let err = verify(&keys(), &m, &u, &h, b"", at("20150830T124200Z")).expect_err("6 minutes later");
        assert_eq!(err.aws_type(), "InvalidSignatureException");
        let unknown = vec![AccessKey { id: "OTHER".into(), secret: "x".into() }];
        assert_eq!(
            verify(&unknown, &m, &u, &h, b"", at("20150830T123600Z")).map_err(|e| e.aws_type()),
            Err("UnrecognizedClientException")
        );
        let mut unsigned = h.clone();
        unsigned.remove("authorization");
        assert_eq!(verify(&keys(), &m, &u, &unsigned, b"", at("20150830T123600Z")), Err(AuthError::Missing));
    }

    #[test]
    fn what_sign_signs_verify_accepts() {
        let uri: Uri = "http://127.0.0.1:7070/?b=2&a=1".parse().expect("uri");
        let mut headers = HeaderMap::new();
        headers.insert("x-amz-target", "Kinesis_20131202.ListStreams".parse().expect("header"));
        let now = at("20261126T120000Z");
        let signer = Signer { key: &keys()[0], region: "us-east-1", service: "kinesis" };
        signer.sign(&Method::POST, &uri, &mut headers, b"{}", now);
        assert_eq!(headers["x-amz-date"], "20261126T120000Z");
        assert_eq!(verify(&keys(), &Method::POST, &uri, &headers, b"{}", now), Ok("AKIDEXAMPLE".into()));
        assert_eq!(verify(&keys(), &Method::POST, &uri, &headers, b"{ }", now), Err(AuthError::BadSignature));
    }

    #[test]
    fn hostile_dates_are_refused_not_panicked_on() {
        for date in ["2015083€T12360Z", "20150830T1236ÿZ", "", "20150830T123600", "2015-08-30T12:36:00Z"] {
            assert_eq!(parse_amz_date(date), None, "{date}");
        }
    }

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2.
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
