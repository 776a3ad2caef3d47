//! The lake: where delivery streams write their objects (rows, raw backups,
//! errors) and where warehouse loads are staged. Everything goes through
//! object_store's `ObjectStore`, so the same code writes to a local directory
//! (the embedded default) or to any S3-compatible endpoint (AWS S3, MinIO,
//! Ceph, ...).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, RetryConfig};

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

/// Opens a lake. Its own retries are short: callers retry for their own
/// retry durations and report what could not be written.
pub fn open(spec: &LakeSpec) -> Result<Arc<dyn ObjectStore>, LakeError> {
    let error = |message: String| LakeError { lake: spec.describe(), message };
    match spec {
        LakeSpec::Local(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| error(e.to_string()))?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(dir).map_err(|e| error(e.to_string()))?))
        }
        LakeSpec::S3(s3) => {
            let retry = RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(&s3.bucket)
                .with_region(&s3.region)
                .with_retry(retry)
                .with_client_options(ClientOptions::new().with_timeout(Duration::from_secs(30)));
            if let Some(endpoint) = &s3.endpoint {
                builder = builder.with_endpoint(endpoint).with_allow_http(endpoint.starts_with("http://"));
            }
            if let Some(id) = &s3.access_key_id {
                builder = builder.with_access_key_id(id);
            }
            if let Some(secret) = &s3.secret_access_key {
                builder = builder.with_secret_access_key(secret);
            }
            let store = builder.build().map_err(|e| error(e.to_string()))?;
            Ok(if s3.prefix.is_empty() {
                Arc::new(store)
            } else {
                Arc::new(PrefixStore::new(store, s3.prefix.as_str()))
            })
        }
    }
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
