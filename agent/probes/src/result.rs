//! The [`WorkloadResult`] a probe pod produces, and posting it to the operator.
//!
//! The result carries the nonce, node and request id the launcher gave the pod
//! (`crds::workload::env`), so the operator can bind it to the node attestation it ran
//! after; it is posted over HTTPS verified with the operator's CA, with the pod's
//! projected token (read when posting: the kubelet rotates it).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::workload::{
    ProbeReport, RESULT_PATH, RESULT_SCHEMA_VERSION, WorkloadKind, WorkloadResult,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

/// What the launcher bound the pod to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Binding {
    /// The workload request's id.
    pub request_id: String,
    /// Hex nonce of the node attestation.
    pub nonce: String,
    /// The node the pod was launched for.
    pub node: String,
}

/// A result: the report when the suite ran, else why it could not.
pub fn workload_result(
    binding: &Binding,
    started_at: Timestamp,
    finished_at: Timestamp,
    outcome: Result<ProbeReport, String>,
) -> WorkloadResult {
    let (passed, error, probes) = match outcome {
        Ok(report) => (
            !report.probes.is_empty() && report.probes.iter().all(|p| p.passed),
            None,
            Some(report),
        ),
        Err(e) => (false, Some(e), None),
    };
    WorkloadResult {
        schema_version: RESULT_SCHEMA_VERSION.to_owned(),
        request_id: binding.request_id.clone(),
        kind: WorkloadKind::BehaviourProbes,
        nonce: binding.nonce.clone(),
        node: binding.node.clone(),
        started_at,
        finished_at,
        passed,
        error,
        self_test: None,
        probes,
    }
}

/// Why a result could not be posted.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// Bad configuration: URL, CA bundle, token file.
    #[error("{0}")]
    Config(String),
    /// No answer.
    #[error("posting to {url} failed: {message}")]
    Transport {
        /// Where to.
        url: String,
        /// Why.
        message: String,
    },
    /// The operator refused the result.
    #[error("the operator refused the result ({status}): {body}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The start of its answer.
        body: String,
    },
}

/// Posts results to one operator.
pub struct Poster {
    url: String,
    http: reqwest::Client,
    token_file: PathBuf,
}

impl std::fmt::Debug for Poster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is read per request and never held, so there is no secret to hide.
        f.debug_struct("Poster")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .finish()
    }
}

impl Poster {
    /// A poster to `operator_url` (`https://…`) + [`RESULT_PATH`], trusting the CA
    /// certificates in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(operator_url: &str, ca_pem: &[u8], token_file: PathBuf) -> Result<Self, PostError> {
        let base = operator_url.trim_end_matches('/');
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
        })
    }

    /// Where results go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `result`; any 2xx answer is success.
    pub async fn post(&self, result: &WorkloadResult) -> Result<(), PostError> {
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
        let body =
            serde_json::to_vec(result).map_err(|e| PostError::Config(format!("result: {e}")))?;
        let transport = |e: reqwest::Error| PostError::Transport {
            url: self.url.clone(),
            message: e.to_string(),
        };
        let resp = self
            .http
            .post(&self.url)
            .bearer_auth(token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let bytes = resp.bytes().await.map_err(transport)?;
        Err(PostError::Refused {
            status: status.as_u16(),
            body: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use lotabots_crds::workload::ProbeOutcome;

    use super::*;

    fn report(passes: &[bool]) -> ProbeReport {
        ProbeReport {
            suite_digest: "sha256:aa".into(),
            manifest_digest: "sha256:bb".into(),
            device: "cpu".into(),
            probes: passes
                .iter()
                .enumerate()
                .map(|(i, p)| ProbeOutcome {
                    name: format!("p{i}"),
                    passed: *p,
                    detail: String::new(),
                })
                .collect(),
        }
    }

    #[test]
    fn passed_only_when_every_probe_passed() {
        let b = Binding {
            request_id: "r1".into(),
            nonce: "00ff".into(),
            node: "n1".into(),
        };
        let t = Timestamp::now();
        let r = workload_result(&b, t, t, Ok(report(&[true, true])));
        assert!(r.passed);
        assert_eq!(r.kind, WorkloadKind::BehaviourProbes);
        assert_eq!(r.schema_version, RESULT_SCHEMA_VERSION);
        assert_eq!(
            (r.request_id.as_str(), r.nonce.as_str(), r.node.as_str()),
            ("r1", "00ff", "n1")
        );
        assert!(!workload_result(&b, t, t, Ok(report(&[true, false]))).passed);
        assert!(!workload_result(&b, t, t, Ok(report(&[]))).passed);
        let refused = workload_result(&b, t, t, Err("model refused: x".into()));
        assert!(!refused.passed);
        assert_eq!(refused.error.as_deref(), Some("model refused: x"));
        assert!(refused.probes.is_none());
        let json = serde_json::to_value(&refused).unwrap();
        assert_eq!(json["kind"], "behaviourProbes");
    }

    #[test]
    fn only_https_and_a_real_ca_bundle() {
        let e = Poster::new("http://op", b"", "/t".into()).unwrap_err();
        assert!(e.to_string().contains("must be https://"), "{e}");
        let e = Poster::new("https://op", b"not pem", "/t".into()).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
