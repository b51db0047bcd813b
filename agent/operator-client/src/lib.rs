//! The HTTPS client the agent and its workload pods (GPU self-test, behavioural probes)
//! use to talk to the operator.
//!
//! One construction for all of them: HTTPS only, trusting just the CA certificates the
//! operator's serving certificate is issued by (mounted from a ConfigMap or Secret), rustls
//! with ring; every request authenticated with the pod's projected ServiceAccount token,
//! read again for every request because the kubelet rotates it. [`Client::send`] is one
//! attempt and leaves the answer to the caller (the agent reads the operator's error
//! labels); [`Client::post_result`] delivers a [`WorkloadResult`] with the [`Retry`]
//! policy of workload pods, and [`Client::get_bytes`] and [`Client::download`] fetch with
//! it (a probe pod fetches its model and suite from the operator).

mod get;
mod retry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use lotabots_crds::workload::{RESULT_PATH, WorkloadResult};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

pub use get::{GetError, problem_detail};
pub use reqwest::StatusCode;
pub use retry::{PostError, Retry};

/// Bad configuration: the operator URL, the CA bundle, the token file.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Why one request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Bad configuration (found when reading the token): not worth another attempt.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// No answer: connection, TLS, timeout, a body cut short.
    #[error("request to {url} failed: {message}")]
    Transport {
        /// Where to.
        url: String,
        /// Why, with the error's causes (reqwest's own message says little).
        message: String,
    },
}

/// The operator's answer, whatever its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The body, as text.
    pub body: String,
}

/// A client of one operator.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token_file: PathBuf,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is read per request and never held, so there is no secret to leave
        // out; the path is enough to debug a misconfiguration.
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the operator at `base_url` (`https://…`), trusting the CA certificates
    /// in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(base_url: &str, ca_pem: &[u8], token_file: PathBuf) -> Result<Self, ConfigError> {
        let base = base_url.trim_end_matches('/');
        if !base.starts_with("https://") {
            return Err(ConfigError(format!(
                "operator URL {base:?} must be https://"
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| ConfigError(format!("operator CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| ConfigError(format!("operator CA bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(ConfigError(
                "operator CA bundle holds no certificate".into(),
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            // Every wait for bytes; downloads lift the total below, not this.
            .read_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| ConfigError(format!("HTTP client: {e}")))?;
        Ok(Self {
            base: base.to_owned(),
            http,
            token_file,
        })
    }

    /// The operator's base URL, without a trailing `/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Where [`post_result`](Self::post_result) posts.
    pub fn result_url(&self) -> String {
        format!("{}{RESULT_PATH}", self.base)
    }

    /// One authenticated `POST` of the JSON `body` to `path` (`/v1/…`), with the token as
    /// it is in the file now. Any answer is `Ok`, whatever its status.
    pub async fn send(&self, path: &str, body: Vec<u8>) -> Result<Answer, SendError> {
        let token = read_token(&self.token_file)?;
        let url = format!("{}{path}", self.base);
        let transport = |e: reqwest::Error| SendError::Transport {
            url: url.clone(),
            message: error_chain(&e),
        };
        let resp = self
            .http
            .post(&url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let body = resp.text().await.map_err(transport)?;
        Ok(Answer { status, body })
    }

    /// Delivers a workload pod's `result`, retrying as `retry` says; returns the
    /// operator's answer body.
    pub async fn post_result(
        &self,
        result: &WorkloadResult,
        retry: Retry,
    ) -> Result<String, PostError> {
        let body = serde_json::to_vec(result)
            .map_err(|e| PostError::Config(format!("result does not serialise: {e}")))?;
        retry::post(self, RESULT_PATH, body, retry).await
    }
}

/// The token in `path`, trimmed; an unreadable or empty file is a configuration error
/// (an empty bearer token would only earn a 401 that hides the cause).
fn read_token(path: &Path) -> Result<String, ConfigError> {
    let token = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("token file {}: {e}", path.display())))?;
    let token = token.trim();
    if token.is_empty() {
        return Err(ConfigError(format!(
            "token file {} is empty",
            path.display()
        )));
    }
    Ok(token.to_owned())
}

/// `e` and its causes, `: `-separated.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM certificate to trust (a self-signed one: these tests never connect).
    fn ca() -> String {
        rcgen::generate_simple_self_signed(vec!["op".into()])
            .unwrap()
            .cert
            .pem()
    }

    #[test]
    fn only_https_and_a_real_ca_bundle() {
        let ca = ca();
        let e = Client::new("http://op", ca.as_bytes(), "/t".into()).unwrap_err();
        assert!(e.to_string().contains("must be https://"), "{e}");
        let e = Client::new("https://op", b"not pem", "/t".into()).unwrap_err();
        assert_eq!(e.to_string(), "operator CA bundle holds no certificate");
        let broken = ca.replace("MII", "M!I");
        let e = Client::new("https://op", broken.as_bytes(), "/t".into()).unwrap_err();
        assert!(e.to_string().starts_with("operator CA bundle: "), "{e}");
        let c = Client::new("https://op:8443/", ca.as_bytes(), "/t".into()).unwrap();
        assert_eq!(c.base(), "https://op:8443");
        assert_eq!(c.result_url(), format!("https://op:8443{RESULT_PATH}"));
    }

    #[test]
    fn the_token_is_read_trimmed_and_must_not_be_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let e = read_token(&path).unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
        std::fs::write(&path, " \n").unwrap();
        assert!(
            read_token(&path)
                .unwrap_err()
                .to_string()
                .ends_with("is empty")
        );
        std::fs::write(&path, "abc\n").unwrap();
        assert_eq!(read_token(&path).unwrap(), "abc");
    }

    #[tokio::test]
    async fn a_missing_token_stops_the_request_before_it_is_sent() {
        // Nothing listens on this address: a configuration error shows the token was
        // read first, and that the request never left.
        let c = Client::new(
            "https://127.0.0.1:1",
            ca().as_bytes(),
            "/nonexistent/t".into(),
        )
        .unwrap();
        match c.send("/v1/challenges", Vec::new()).await {
            Err(SendError::Config(e)) => assert!(e.0.contains("/nonexistent/t"), "{e}"),
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
}
