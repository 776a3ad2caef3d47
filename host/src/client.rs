//! A small client of weir's Kinesis and Firehose APIs for the command line
//! (`weir stream`, `weir put`, `weir tail`, `weir agent`): JSON 1.1 requests
//! signed with SigV4 using the key in `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY` (unsigned without one).

use std::time::SystemTime;

use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::api::AccessKey;
use crate::sigv4;

/// What went wrong talking to weir.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a URL.
    #[error("`{0}` is not an http:// URL such as http://127.0.0.1:7070")]
    Endpoint(String),
    /// No connection or no answer.
    #[error("cannot reach weir at {endpoint}: {message} (is `weir run` running there?)")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// Why.
        message: String,
    },
    /// weir answered with an error.
    #[error("{kind}: {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// AWS error type.
        kind: String,
        /// What weir said.
        message: String,
    },
}

/// Which of weir's AWS-compatible APIs a call goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Kinesis Data Streams (`Kinesis_20131202.*`).
    Kinesis,
    /// Kinesis Data Firehose (`Firehose_20150804.*`).
    Firehose,
}

impl Service {
    fn target_prefix(self) -> &'static str {
        match self {
            Service::Kinesis => "Kinesis_20131202",
            Service::Firehose => "Firehose_20150804",
        }
    }

    fn signing_name(self) -> &'static str {
        match self {
            Service::Kinesis => "kinesis",
            Service::Firehose => "firehose",
        }
    }
}

/// A Kinesis- and Firehose-protocol client of one weir host.
pub struct Client {
    endpoint: Uri,
    key: Option<AccessKey>,
    http: HttpClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client of `endpoint`, signing with the key from the environment if there is one.
    pub fn new(endpoint: &str) -> Result<Self, ClientError> {
        let endpoint: Uri = endpoint.parse().map_err(|_| ClientError::Endpoint(endpoint.to_owned()))?;
        if endpoint.scheme_str() != Some("http") || endpoint.authority().is_none() {
            return Err(ClientError::Endpoint(endpoint.to_string()));
        }
        let key = match (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY")) {
            (Ok(id), Ok(secret)) if !id.is_empty() => Some(AccessKey { id, secret }),
            _ => None,
        };
        Ok(Self { endpoint, key, http: HttpClient::builder(TokioExecutor::new()).build_http() })
    }

    /// Calls a Kinesis operation, e.g. `ListStreams`, and returns its JSON answer.
    pub async fn call(&self, operation: &str, input: &Value) -> Result<Value, ClientError> {
        self.call_service(Service::Kinesis, operation, input).await
    }

    /// Calls an operation of `service`, e.g. Firehose's `PutRecordBatch`, and returns its JSON answer.
    pub async fn call_service(&self, service: Service, operation: &str, input: &Value) -> Result<Value, ClientError> {
        let body = Bytes::from(input.to_string());
        let uri: Uri = format!("{}/", self.endpoint.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|_| ClientError::Endpoint(self.endpoint.to_string()))?;
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/x-amz-json-1.1"));
        if let Ok(target) = HeaderValue::from_str(&format!("{}.{operation}", service.target_prefix())) {
            headers.insert("x-amz-target", target);
        }
        let (status, bytes) = self.send(Method::POST, uri, headers, body, service.signing_name()).await?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(value);
        }
        Err(ClientError::Api {
            status,
            kind: value["__type"].as_str().unwrap_or("Error").to_owned(),
            message: value["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned),
        })
    }

    /// Calls weir's native API, e.g. `PUT /v1/stages/etl/plugin`, and returns its JSON answer.
    pub async fn native(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Value, ClientError> {
        let bytes = self.native_bytes(method, path, headers, body).await?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }

    /// Like [`Client::native`], returning the answer's bytes (e.g. a state item).
    pub async fn native_bytes(
        &self,
        method: Method,
        path: &str,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<Bytes, ClientError> {
        let uri: Uri = format!("{}{path}", self.endpoint.to_string().trim_end_matches('/'))
            .parse()
            .map_err(|_| ClientError::Endpoint(self.endpoint.to_string()))?;
        if !headers.contains_key("content-type") {
            headers.insert("content-type", HeaderValue::from_static("application/octet-stream"));
        }
        let (status, bytes) = self.send(method, uri, headers, body, "kinesis").await?;
        if (200..300).contains(&status) {
            return Ok(bytes);
        }
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let error = &value["error"];
        Err(ClientError::Api {
            status,
            kind: error["code"].as_str().unwrap_or("Error").to_owned(),
            message: error["message"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_owned),
        })
    }

    /// Signs (with a key) and sends a request; the status and the answer's bytes.
    async fn send(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
        service: &str,
    ) -> Result<(u16, Bytes), ClientError> {
        if let Some(key) = &self.key {
            let signer = sigv4::Signer { key, region: "us-east-1", service };
            signer.sign(&method, &uri, &mut headers, &body, SystemTime::now());
        }
        let mut request =
            Request::builder().method(method).uri(uri).body(Full::new(body)).map_err(|e| self.unreachable(e))?;
        *request.headers_mut() = headers;
        let response = self.http.request(request).await.map_err(|e| self.unreachable(e))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| self.unreachable(e))?.to_bytes();
        Ok((status.as_u16(), bytes))
    }

    fn unreachable(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Unreachable { endpoint: self.endpoint.to_string(), message: e.to_string() }
    }
}
