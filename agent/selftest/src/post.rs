//! Delivers the result to the operator: HTTPS verified with the mounted CA bundle,
//! authenticated with the pod-bound projected token (read again for every attempt, as the
//! kubelet rotates it), retried with backoff on transport errors and 5xx answers. A 4xx
//! answer is final: the operator looked at the result and refused it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lotabots_crds::workload::{RESULT_PATH, WorkloadResult};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// Why the result was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Bad configuration: URL, CA bundle, token file.
    #[error("{0}")]
    Config(String),
    /// The operator refused the result (4xx); not retried.
    #[error("operator refused the result at {url} ({status}): {body}")]
    Refused {
        /// Where it was posted.
        url: String,
        /// HTTP status.
        status: u16,
        /// The operator's answer, as text (cut to 2000 characters).
        body: String,
    },
    /// Every attempt failed to get an answer, or got a server error.
    #[error("posting to {url} failed after {attempts} attempts; last: {last}")]
    Exhausted {
        /// Where to.
        url: String,
        /// How many attempts were made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// How often and how patiently to try.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further one.
    pub first_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            attempts: 5,
            first_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(8),
        }
    }
}

/// A client of one operator's result endpoint.
pub struct Poster {
    url: String,
    http: reqwest::Client,
    token_file: PathBuf,
    retry: Retry,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is read per request and never held; the path is enough to debug.
        f.debug_struct("Poster")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .finish_non_exhaustive()
    }
}

impl Poster {
    /// A poster to `base_url` (`https://…`) + [`RESULT_PATH`], trusting the CA
    /// certificates in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(
        base_url: &str,
        ca_pem: &[u8],
        token_file: PathBuf,
        retry: Retry,
    ) -> Result<Self, PostError> {
        let base = base_url.trim_end_matches('/');
        if !base.starts_with("https://") {
            return Err(PostError::Config(format!(
                "operator URL {base:?} must be https://"
            )));
        }
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            let cert = cert.map_err(|e| PostError::Config(format!("operator CA bundle: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| PostError::Config(format!("operator CA bundle: {e}")))?;
        }
        if roots.is_empty() {
            return Err(PostError::Config(
                "operator CA bundle holds no certificate".into(),
            ));
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| PostError::Config(format!("TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| PostError::Config(format!("HTTP client: {e}")))?;
        Ok(Self {
            url: format!("{base}{RESULT_PATH}"),
            http,
            token_file,
            retry: Retry {
                attempts: retry.attempts.max(1),
                ..retry
            },
        })
    }

    /// Where results go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `result`; returns the operator's answer body on success.
    pub async fn post(&self, result: &WorkloadResult) -> Result<String, PostError> {
        let body = serde_json::to_vec(result)
            .map_err(|e| PostError::Config(format!("result does not serialise: {e}")))?;
        let mut backoff = self.retry.first_backoff;
        let mut last = String::new();
        for attempt in 1..=self.retry.attempts {
            if attempt > 1 {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
            match self.attempt(body.clone()).await? {
                Ok(answer) => return Ok(answer),
                Err(why) => {
                    tracing::warn!(attempt, url = %self.url, %why, "posting the result failed");
                    last = why;
                }
            }
        }
        Err(PostError::Exhausted {
            url: self.url.clone(),
            attempts: self.retry.attempts,
            last,
        })
    }

    /// One attempt: `Ok(Ok(body))` delivered, `Ok(Err(why))` worth retrying, `Err` final.
    async fn attempt(&self, body: Vec<u8>) -> Result<Result<String, String>, PostError> {
        let token = std::fs::read_to_string(&self.token_file).map_err(|e| {
            PostError::Config(format!("token file {}: {e}", self.token_file.display()))
        })?;
        let token = token.trim();
        if token.is_empty() {
            return Err(PostError::Config(format!(
                "token file {} is empty",
                self.token_file.display()
            )));
        }
        let resp = match self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(resp) => resp,
            // {:#}-style chain: reqwest's top error says little ("error sending request").
            Err(e) => return Ok(Err(error_chain(&e))),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Ok(Err(error_chain(&e))),
        };
        if status.is_success() {
            return Ok(Ok(text));
        }
        let shown: String = text.chars().take(2000).collect();
        // 408 and 429 ask to come back later; other 4xx are the operator's verdict.
        if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            return Ok(Err(format!("{status}: {shown}")));
        }
        Err(PostError::Refused {
            url: self.url.clone(),
            status: status.as_u16(),
            body: shown,
        })
    }
}

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
