//! The [`WorkloadResult`] a probe pod produces, and posting it to the operator.
//!
//! The result carries the nonce, node and request id the launcher gave the pod
//! (`crds::workload::env`), so the operator can bind it to the node attestation it ran
//! after; it is posted over HTTPS verified with the operator's CA, with the pod's
//! projected token (read when posting: the kubelet rotates it).

use std::path::PathBuf;

use jiff::Timestamp;
use lotabots_crds::workload::{ProbeReport, RESULT_SCHEMA_VERSION, WorkloadKind, WorkloadResult};
use lotabots_operator_client::{self as shared, Client, Retry};

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
    /// No answer, or a server error.
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

/// Posts results to one operator, through the shared operator client
/// (`lotabots-operator-client`), in a single attempt.
#[derive(Debug)]
pub struct Poster {
    client: Client,
    url: String,
}

impl Poster {
    /// A poster to `operator_url` (`https://…`) + `RESULT_PATH`, trusting the CA
    /// certificates in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(operator_url: &str, ca_pem: &[u8], token_file: PathBuf) -> Result<Self, PostError> {
        let client =
            Client::new(operator_url, ca_pem, token_file).map_err(|e| PostError::Config(e.0))?;
        Ok(Self::with_client(client))
    }

    /// A poster through `client` (the one the model was fetched with).
    pub fn with_client(client: Client) -> Self {
        Self {
            url: client.result_url(),
            client,
        }
    }

    /// Where results go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `result`; any 2xx answer is success.
    pub async fn post(&self, result: &WorkloadResult) -> Result<(), PostError> {
        match self.client.post_result(result, Retry::once()).await {
            Ok(_) => Ok(()),
            Err(shared::PostError::Config(m)) => Err(PostError::Config(m)),
            Err(shared::PostError::Refused { status, body, .. }) => Err(PostError::Refused {
                status,
                body: body.chars().take(300).collect(),
            }),
            // One attempt: no answer, or a server error (5xx, 408, 429) the operator
            // may not give again.
            Err(shared::PostError::Exhausted { url, last, .. }) => Err(PostError::Transport {
                url,
                message: last.chars().take(300).collect(),
            }),
        }
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
