//! The agent's side of the operator's evidence API: fetch a challenge, submit evidence.
//!
//! Over HTTPS only, trusting the CA the operator's certificate is issued by (mounted from
//! a ConfigMap or Secret); authenticated with the pod's projected ServiceAccount token,
//! read again for every request because the kubelet rotates it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lotabots_crds::evidence::{NONCE_LEN, NodeEvidence, parse_nonce};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

/// Why talking to the operator failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Bad configuration: URL, CA bundle, token file.
    #[error("{0}")]
    Config(String),
    /// The request did not get an answer.
    #[error("request to {url} failed: {message}")]
    Transport {
        /// Where to.
        url: String,
        /// Why.
        message: String,
    },
    /// The operator answered with a refusal.
    #[error("operator refused ({status}, {code}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The error label (`unknown_nonce`, `wrong_node`, …).
        code: String,
        /// The operator's explanation.
        message: String,
    },
}

/// What the operator returns for a challenge.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Challenge {
    nonce: String,
}

/// What the operator returns for accepted evidence.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct Receipt {
    /// The node it was accepted for.
    pub node: String,
    /// The evidence digest the operator computed.
    pub digest: String,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    error: String,
    message: String,
}

/// A client of one operator.
#[derive(Clone)]
pub struct OperatorClient {
    base: String,
    http: reqwest::Client,
    token_file: PathBuf,
}

impl std::fmt::Debug for OperatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is never held in memory between requests, so there is nothing secret
        // to leave out; the path is enough to debug a misconfiguration.
        f.debug_struct("OperatorClient")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl OperatorClient {
    /// A client of the operator at `base_url` (`https://…`), trusting the CA certificates
    /// in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(base_url: &str, ca_pem: &[u8], token_file: PathBuf) -> Result<Self, ClientError> {
        let base = base_url.trim_end_matches('/').to_owned();
        if !base.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "operator URL {base:?} must be https://"
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ClientError::Config(format!("operator CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ClientError::Config(format!("operator CA bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ClientError::Config(
                "operator CA bundle holds no certificate".into(),
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ClientError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            base,
            http,
            token_file,
        })
    }

    /// Asks for a fresh nonce bound to this node.
    pub async fn challenge(&self) -> Result<[u8; NONCE_LEN], ClientError> {
        let c: Challenge = self.post("/v1/challenges", Vec::new()).await?;
        parse_nonce(&c.nonce)
            .map_err(|e| ClientError::Config(format!("operator sent a bad nonce: {e}")))
    }

    /// Submits evidence bound to a nonce from [`challenge`](Self::challenge).
    pub async fn submit(&self, evidence: &NodeEvidence) -> Result<Receipt, ClientError> {
        let body = serde_json::to_vec(evidence)
            .map_err(|e| ClientError::Config(format!("evidence: {e}")))?;
        self.post("/v1/evidence/gpu", body).await
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
            ClientError::Config(format!("token file {}: {e}", self.token_file.display()))
        })?;
        let url = format!("{}{path}", self.base);
        let transport = |e: reqwest::Error| ClientError::Transport {
            url: url.clone(),
            message: e.to_string(),
        };
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token.trim())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Transport {
                url: url.clone(),
                message: format!("unexpected answer: {e}"),
            });
        }
        let (code, message) = match serde_json::from_slice::<ApiError>(&bytes) {
            Ok(e) => (e.error, e.message),
            Err(_) => (
                "unknown".into(),
                String::from_utf8_lossy(&bytes).chars().take(200).collect(),
            ),
        };
        Err(ClientError::Refused {
            status: status.as_u16(),
            code,
            message,
        })
    }
}
