//! The lake: where delivery streams write their objects (rows, raw backups,
//! errors), where warehouse loads are staged and where reference tables are
//! read from. A [`Lake`] is a local directory (the embedded default) or a
//! bucket of any S3-compatible store (AWS S3, MinIO, Ceph, ...), spoken to
//! directly over HTTP with SigV4-signed requests: put, head and get are all
//! weir needs.

mod local;
mod prefix;
mod s3;

use std::path::PathBuf;

use bytes::Bytes;

pub use prefix::{check_prefix, object_prefix};

/// Where a lake is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LakeSpec {
    /// A local directory, created if missing.
    Local(PathBuf),
    /// A bucket (and a key prefix in it) of an S3-compatible store.
    S3(S3Spec),
}

/// An S3-compatible bucket. Credentials not given here come from the usual
/// AWS environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Spec {
    /// The bucket.
    pub bucket: String,
    /// Key prefix inside the bucket (empty: the whole bucket).
    pub prefix: String,
    /// The endpoint of an S3-compatible store, e.g. `http://127.0.0.1:9000`;
    /// none: AWS S3 itself.
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Access key id, if not from the environment.
    pub access_key_id: Option<String>,
    /// Secret access key, if not from the environment.
    pub secret_access_key: Option<String>,
}

impl LakeSpec {
    /// Reads `lake = "..."`: `s3://bucket[/prefix]`, or else a directory
    /// relative to `base`.
    pub fn parse(text: &str, base: &std::path::Path) -> Result<LakeSpec, String> {
        let Some(rest) = text.strip_prefix("s3://") else {
            if text.contains("://") {
                return Err(format!("`{text}` is neither a directory nor an s3://bucket/prefix URL"));
            }
            return Ok(LakeSpec::Local(base.join(text)));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
        if !valid {
            return Err(format!(
                "`{bucket}` is not a bucket name: 3 to 63 lowercase letters, digits, `-` and `.` (s3://bucket/prefix)"
            ));
        }
        Ok(LakeSpec::S3(S3Spec {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: "us-east-1".to_owned(),
            access_key_id: None,
            secret_access_key: None,
        }))
    }

    /// How to name the lake in messages and API answers (no secrets).
    pub fn describe(&self) -> String {
        match self {
            LakeSpec::Local(dir) => dir.display().to_string(),
            LakeSpec::S3(s3) if s3.prefix.is_empty() => format!("s3://{}", s3.bucket),
            LakeSpec::S3(s3) => format!("s3://{}/{}", s3.bucket, s3.prefix),
        }
    }
}

/// The lake could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("lake `{lake}` is not usable: {message}")]
pub struct LakeError {
    /// Which lake.
    pub lake: String,
    /// Why.
    pub message: String,
}

/// Why an object could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// No object under that key.
    #[error("no object `{0}`")]
    NotFound(String),
    /// The key cannot name an object here (a `..` or empty part, a leading `/`).
    #[error("`{0}` is not an object key: write parts separated by `/`, none empty, `.` or `..`")]
    BadKey(String),
    /// The store failed or refused the request.
    #[error("{0}")]
    Store(String),
}

/// What [`Lake::head`] tells of an object: enough to see that it changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Changes whenever the object does (its ETag, or size and modification time).
    pub version: String,
    /// Its size in bytes.
    pub size: u64,
}

/// An opened lake.
#[derive(Debug, Clone)]
pub enum Lake {
    /// A local directory.
    Local(local::LocalLake),
    /// An S3-compatible bucket.
    S3(s3::S3Lake),
}

/// Opens a lake. A request is tried once (with a timeout): callers retry for
/// their own retry durations and report what could not be written.
pub fn open(spec: &LakeSpec) -> Result<Lake, LakeError> {
    let error = |message: String| LakeError { lake: spec.describe(), message };
    match spec {
        LakeSpec::Local(dir) => local::LocalLake::open(dir).map(Lake::Local).map_err(|e| error(e.to_string())),
        LakeSpec::S3(s3) => s3::S3Lake::open(s3).map(Lake::S3).map_err(error),
    }
}

impl Lake {
    /// Writes `body` as the object `key` (replacing it): durable when this returns.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), ObjectError> {
        match self {
            Lake::Local(l) => l.put(key, body).await,
            Lake::S3(s) => s.put(key, body).await,
        }
    }

    /// What the object `key` is, without reading it.
    pub async fn head(&self, key: &str) -> Result<ObjectMeta, ObjectError> {
        match self {
            Lake::Local(l) => l.head(key).await,
            Lake::S3(s) => s.head(key).await,
        }
    }

    /// The bytes of the object `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, ObjectError> {
        match self {
            Lake::Local(l) => l.get(key).await,
            Lake::S3(s) => s.get(key).await,
        }
    }

    /// The keys of every object whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, ObjectError> {
        let mut keys = match self {
            Lake::Local(l) => l.list(prefix).await?,
            Lake::S3(s) => s.list(prefix).await?,
        };
        keys.sort();
        Ok(keys)
    }
}

/// The parts of an object key, if every one is a plain name (so a key can
/// never reach outside its lake, on disk or in a bucket).
fn key_parts(key: &str) -> Result<Vec<&str>, ObjectError> {
    let parts: Vec<&str> = key.split('/').collect();
    let plain = parts.iter().all(|p| crate::names::child_path(std::path::Path::new(""), p).is_ok());
    if plain { Ok(parts) } else { Err(ObjectError::BadKey(key.to_owned())) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lake_is_a_directory_or_an_s3_url() {
        let base = std::path::Path::new("/srv/weir");
        assert_eq!(LakeSpec::parse("lake", base), Ok(LakeSpec::Local(base.join("lake"))));
        let LakeSpec::S3(s3) = LakeSpec::parse("s3://abc-tolls/raw/zone-1/", base).expect("s3") else {
            panic!("an s3 lake");
        };
        assert_eq!((s3.bucket.as_str(), s3.prefix.as_str()), ("abc-tolls", "raw/zone-1"));
        assert!(LakeSpec::parse("s3://Bad_Bucket", base).is_err());
        assert!(LakeSpec::parse("gs://bucket", base).expect_err("gcs").contains("neither a directory"));
    }
}
