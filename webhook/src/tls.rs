//! TLS for the admission endpoint: rustls with TLS 1.3 and 1.2 only, and a certificate and
//! key that are reloaded from their files without a restart, so a rotated certificate
//! (cert-manager renews well before expiry) is served from the next connection on.
//!
//! Key material is never logged: errors name the file and what is wrong, not its content.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::metrics::Metrics;
use crate::reload::watch_files;

/// Why a certificate and key cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file holds no usable certificate.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The key file holds no usable private key (the key itself is never shown).
    #[error("private key: {0}")]
    Key(String),
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("certificate and key: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls server configuration for a PEM certificate chain and PEM private key.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Certificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Certificate(
            "no PEM CERTIFICATE block found".into(),
        ));
    }
    // The pem error type never includes the decoded key bytes, so it is safe to show.
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsError::Key(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // The server speaks HTTP/1.1 only; saying so lets the API server's client settle on it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The TLS configuration in force, swapped whole on reload.
#[derive(Debug)]
pub struct TlsStore {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsStore {
    /// A store holding `config`.
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: RwLock::new(config),
        }
    }

    /// The configuration for the next connection.
    pub fn get(&self) -> Arc<ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the configuration for later connections.
    pub fn set(&self, config: Arc<ServerConfig>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
    }
}

/// Loads the certificate and key files for startup.
pub fn load_files(cert: &Path, key: &Path) -> anyhow::Result<(Arc<ServerConfig>, Vec<Vec<u8>>)> {
    let contents = crate::reload::read_all(&[cert.to_path_buf(), key.to_path_buf()])
        .map_err(|e| anyhow::anyhow!("cannot read {} / {}: {e}", cert.display(), key.display()))?;
    let config = server_config(&contents[0], &contents[1])
        .map_err(|e| anyhow::anyhow!("{} / {}: {e}", cert.display(), key.display()))?;
    Ok((config, contents))
}

/// Watches the certificate and key files and serves each valid new pair. A pair caught
/// half-written (new certificate, old key) fails to load and is retried on the next poll.
pub async fn watch(
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
    initial: Vec<Vec<u8>>,
    store: Arc<TlsStore>,
    metrics: Metrics,
) {
    let shown = format!("{} / {}", cert.display(), key.display());
    watch_files(vec![cert, key], interval, initial, move |now| {
        match server_config(&now[0], &now[1]) {
            Ok(c) => {
                store.set(c);
                tracing::info!(files = %shown, "TLS certificate reloaded");
                metrics.reloads.with_label_values(&["tls", "ok"]).inc();
            }
            Err(e) => {
                tracing::error!(files = %shown, error = %e, "new TLS certificate or key is unusable; keeping the current one");
                metrics.reloads.with_label_values(&["tls", "error"]).inc();
            }
        }
    })
    .await;
}
