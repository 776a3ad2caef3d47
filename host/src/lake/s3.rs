//! A lake in a bucket of an S3-compatible store, spoken to with SigV4-signed
//! `PUT`, `HEAD` and `GET` requests. With an `endpoint` (MinIO, Ceph, a test
//! server) objects are addressed path-style (`<endpoint>/<bucket>/<key>`);
//! without one, AWS S3's virtual-hosted style (`https://<bucket>.s3.<region>.amazonaws.com/<key>`).
//! Credentials are the manifest's, or else `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY` and (for temporary ones) `AWS_SESSION_TOKEN`.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};

use super::{ObjectError, ObjectMeta, S3Spec, key_parts};
use crate::outbound::HttpClient;
use crate::sigv4::{self, AccessKey};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// A bucket (and a key prefix in it).
#[derive(Debug, Clone)]
pub struct S3Lake {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// `scheme://authority/bucket-path-prefix`: a key's URL is this, `/`, the encoded key.
    base: String,
    prefix: String,
    region: String,
    key: AccessKey,
    session_token: Option<String>,
    http: HttpClient,
}

impl S3Lake {
    /// Checks the settings and credentials; makes no request.
    pub fn open(spec: &S3Spec) -> Result<S3Lake, String> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let id = spec.access_key_id.clone().or_else(|| env("AWS_ACCESS_KEY_ID"));
        let secret = spec.secret_access_key.clone().or_else(|| env("AWS_SECRET_ACCESS_KEY"));
        let (Some(id), Some(secret)) = (id, secret) else {
            return Err("no credentials: set access-key-id and secret-access-key-env in the lake's `s3` settings, \
                        or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment"
                .into());
        };
        let base = match &spec.endpoint {
            Some(endpoint) => format!("{}/{}", endpoint.trim_end_matches('/'), spec.bucket),
            // A bucket name with dots does not match the certificate's wildcard: path-style then.
            None if spec.bucket.contains('.') => format!("https://s3.{}.amazonaws.com/{}", spec.region, spec.bucket),
            None => format!("https://{}.s3.{}.amazonaws.com", spec.bucket, spec.region),
        };
        base.parse::<Uri>().map_err(|e| format!("`{base}` is not a URL: {e}"))?;
        let http = HttpClient::new().map_err(|e| e.to_string())?;
        Ok(S3Lake {
            inner: Arc::new(Inner {
                base,
                prefix: spec.prefix.clone(),
                region: spec.region.clone(),
                key: AccessKey { id, secret },
                session_token: env("AWS_SESSION_TOKEN").filter(|_| spec.access_key_id.is_none()),
                http,
            }),
        })
    }

    fn uri(&self, key: &str) -> Result<Uri, ObjectError> {
        key_parts(key)?;
        let full = if self.inner.prefix.is_empty() { key.to_owned() } else { format!("{}/{key}", self.inner.prefix) };
        format!("{}/{}", self.inner.base, sigv4::uri_encode(&full, true))
            .parse()
            .map_err(|_| ObjectError::BadKey(key.to_owned()))
    }

    /// Signs and sends one request about an object; the answer, or the store's error.
    async fn send(&self, method: Method, key: &str, body: Bytes) -> Result<hyper::Response<Bytes>, ObjectError> {
        let uri = self.uri(key)?;
        self.send_to(method, uri, key, body).await
    }

    /// Signs and sends one request to `uri`; `key` names what it is about in errors.
    async fn send_to(
        &self,
        method: Method,
        uri: Uri,
        key: &str,
        body: Bytes,
    ) -> Result<hyper::Response<Bytes>, ObjectError> {
        let method_reads = method != Method::PUT;
        let mut headers = HeaderMap::new();
        let payload = sigv4::hex(&sha256(&body));
        headers.insert("x-amz-content-sha256", header(&payload)?);
        if let Some(token) = &self.inner.session_token {
            headers.insert("x-amz-security-token", header(token)?);
        }
        let signer = sigv4::Signer { key: &self.inner.key, region: &self.inner.region, service: "s3" };
        signer.sign(&method, &uri, &mut headers, &body, SystemTime::now());
        let mut request = Request::builder()
            .method(method)
            .uri(uri)
            .body(body)
            .map_err(|e| ObjectError::Store(format!("cannot make the request: {e}")))?;
        *request.headers_mut() = headers;
        let response = self
            .inner
            .http
            .send(request, REQUEST_TIMEOUT)
            .await
            .map_err(|e| ObjectError::Store(format!("{} is unreachable: {e}", self.inner.base)))?;
        let status = response.status();
        // A missing object; a PUT's 404 means no bucket, which is the store's error.
        if status == StatusCode::NOT_FOUND && method_reads {
            return Err(ObjectError::NotFound(key.to_owned()));
        }
        if !status.is_success() {
            return Err(ObjectError::Store(store_error(status, response.body())));
        }
        Ok(response)
    }

    pub(super) async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        self.send(Method::PUT, key, body).await.map(drop)
    }

    pub(super) async fn head(&self, key: &str) -> Result<ObjectMeta, ObjectError> {
        let response = self.send(Method::HEAD, key, Bytes::new()).await?;
        let text = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        let size = text("content-length").parse().unwrap_or(0);
        Ok(ObjectMeta { version: format!("{}|{}|{size}", text("etag"), text("last-modified")), size })
    }

    pub(super) async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        Ok(self.send(Method::GET, key, Bytes::new()).await?.into_body())
    }

    /// `ListObjectsV2`, page after page.
    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let inside = if self.inner.prefix.is_empty() { String::new() } else { format!("{}/", self.inner.prefix) };
        let full = format!("{inside}{prefix}");
        let bucket = if self.inner.base.matches('/').count() > 2 {
            self.inner.base.clone()
        } else {
            format!("{}/", self.inner.base)
        };
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = format!("list-type=2&prefix={}", sigv4::uri_encode(&full, false));
            if let Some(token) = &token {
                query.push_str(&format!("&continuation-token={}", sigv4::uri_encode(token, false)));
            }
            let uri: Uri = format!("{bucket}?{query}").parse().map_err(|_| ObjectError::BadKey(prefix.to_owned()))?;
            let response = self.send_to(Method::GET, uri, prefix, Bytes::new()).await?;
            let page = String::from_utf8_lossy(response.body()).into_owned();
            for contents in page.split("<Contents>").skip(1) {
                if let Some(key) = xml_text(contents, "Key") {
                    keys.push(key.strip_prefix(&inside).unwrap_or(&key).to_owned());
                }
            }
            token = xml_text(&page, "NextContinuationToken")
                .filter(|_| xml_text(&page, "IsTruncated").as_deref() == Some("true"));
            if token.is_none() {
                return Ok(keys);
            }
        }
    }
}

/// The text of the first `<tag>` in `xml`, its entities decoded.
fn xml_text(xml: &str, tag: &str) -> Option<String> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + xml[start..].find(&format!("</{tag}>"))?;
    let text = &xml[start..end];
    Some(
        text.replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&"),
    )
}

fn header(value: &str) -> Result<HeaderValue, ObjectError> {
    HeaderValue::from_str(value).map_err(|_| ObjectError::Store("a header value is not valid".into()))
}

fn sha256(body: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(body).into()
}

/// S3's error answer (`<Error><Code>..</Code><Message>..</Message></Error>`) in a line.
fn store_error(status: StatusCode, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = text[start..].find(&format!("</{name}>"))? + start;
        Some(text[start..end].to_owned())
    };
    match (element("Code"), element("Message")) {
        (Some(code), Some(message)) => format!("{status}: {code}: {message}"),
        (Some(code), None) => format!("{status}: {code}"),
        _ => format!("the store answered {status}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(endpoint: Option<&str>, bucket: &str, prefix: &str) -> S3Spec {
        S3Spec {
            bucket: bucket.into(),
            prefix: prefix.into(),
            endpoint: endpoint.map(str::to_owned),
            region: "eu-west-1".into(),
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("secret".into()),
        }
    }

    #[test]
    fn keys_are_addressed_path_style_at_an_endpoint_and_virtual_hosted_on_aws() {
        let at = |endpoint, bucket, prefix, key| {
            S3Lake::open(&spec(endpoint, bucket, prefix)).expect("open").uri(key).map(|u| u.to_string())
        };
        assert_eq!(
            at(Some("http://127.0.0.1:9000/"), "lake", "", "rows/a b.json").ok().as_deref(),
            Some("http://127.0.0.1:9000/lake/rows/a%20b.json")
        );
        assert_eq!(
            at(None, "abc-tolls", "raw/zone-1", "x.gz").ok().as_deref(),
            Some("https://abc-tolls.s3.eu-west-1.amazonaws.com/raw/zone-1/x.gz")
        );
        assert_eq!(
            at(None, "abc.tolls", "", "x").ok().as_deref(),
            Some("https://s3.eu-west-1.amazonaws.com/abc.tolls/x")
        );
        assert!(matches!(at(None, "b", "", "../x"), Err(ObjectError::BadKey(_))));
    }

    #[test]
    fn the_stores_errors_are_read_from_its_xml() {
        let body = b"<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>The bucket does not exist</Message></Error>";
        assert_eq!(store_error(StatusCode::NOT_FOUND, body), "404 Not Found: NoSuchBucket: The bucket does not exist");
        assert_eq!(store_error(StatusCode::FORBIDDEN, b""), "the store answered 403 Forbidden");
    }
}
