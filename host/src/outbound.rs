//! The HTTP requests weir makes to others: webhook deliveries, the lake on an
//! S3-compatible store, and the `weir` command line calling a host. One hyper
//! client, `http://` or `https://` (rustls with the ring provider, the
//! system's certificate store), each request bounded by a timeout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum OutboundError {
    /// The client could not be set up (no certificate store).
    #[error("cannot make HTTPS requests: {0}")]
    Setup(String),
    /// The request could not be built (a bad URL or header).
    #[error("the request is not valid: {0}")]
    Request(String),
    /// No connection, or no answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A client for `http://` and `https://` URLs; cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting the system's certificate store.
    pub fn new() -> Result<HttpClient, OutboundError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(provider)
            .map_err(|e| OutboundError::Setup(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(HttpClient { inner: Client::builder(TokioExecutor::new()).build(https) })
    }

    /// Sends a request and reads the whole answer, within `timeout`.
    pub async fn send(&self, request: Request<Bytes>, timeout: Duration) -> Result<Response<Bytes>, OutboundError> {
        let request = request.map(Full::new);
        let exchange = async {
            let response = self.inner.request(request).await.map_err(|e| OutboundError::Unreachable(describe(&e)))?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| OutboundError::Unreachable(e.to_string()))?.to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        tokio::time::timeout(timeout, exchange).await.map_err(|_| OutboundError::Timeout(timeout))?
    }
}

/// An error with its causes: hyper's own message alone says only "client error (Connect)".
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
