//! The API over TLS (rustls with ring, the crypto stack weir already uses for
//! its outbound HTTPS). The certificate chain and private key come from PEM
//! files named in the manifest (`[api] tls`) and are read again when either
//! file changes (looked at, at most once a second, when a client connects), so a
//! renewed certificate takes effect without a restart. HTTP/2 and HTTP/1.1 are
//! offered by ALPN; [`super::server`] serves the connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::ring::sign::any_supported_type;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};

/// How often, at most, the files are looked at for a change.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

/// The certificate files (`[api] tls = { cert = "...", key = "..." }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, PEM, the server's own certificate first.
    pub cert: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why the certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the TLS certificate chain {path}: {reason}")]
    Cert { path: PathBuf, reason: String },
    #[error("cannot read the TLS private key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
}

/// The key and chain in use, and when the files were last looked at.
struct Current {
    certified: Arc<CertifiedKey>,
    modified: (Option<SystemTime>, Option<SystemTime>),
    checked: Instant,
}

/// Serves the certificate, read again from its files when they change.
struct Reloading {
    files: TlsFiles,
    current: Mutex<Current>,
}

impl std::fmt::Debug for Reloading {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloading").field("files", &self.files).finish_non_exhaustive()
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Reads the chain and key and checks that they make a usable signing key.
fn load(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let cert_error = |reason: String| TlsError::Cert { path: files.cert.clone(), reason };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| cert_error(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    if chain.is_empty() {
        return Err(cert_error("it holds no CERTIFICATE".into()));
    }
    let key_error = |reason: String| TlsError::Key { path: files.key.clone(), reason };
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| key_error(e.to_string()))?;
    let signing = any_supported_type(&key).map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| key_error(format!("it does not belong to the certificate: {e}")))?;
    Ok(certified)
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.checked.elapsed() >= RELOAD_CHECK {
            current.checked = Instant::now();
            let now = (modified(&self.files.cert), modified(&self.files.key));
            if now != current.modified {
                // A renewal writes two files: until both are there and match, the old pair serves.
                match load(&self.files) {
                    Ok(certified) => {
                        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                        current.certified = Arc::new(certified);
                        current.modified = now;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "TLS certificate changed but cannot be used yet; keeping the old one")
                    }
                }
            }
        }
        Some(current.certified.clone())
    }
}

/// A TLS acceptor for the files, read now so that a bad file stops the start.
pub fn acceptor(files: &TlsFiles) -> Result<TlsAcceptor, TlsError> {
    let modified = (modified(&files.cert), modified(&files.key));
    let certified = Arc::new(load(files)?);
    let resolver = Reloading {
        files: files.clone(),
        current: Mutex::new(Current { certified, modified, checked: Instant::now() }),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Cert { path: files.cert.clone(), reason: e.to_string() })?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
