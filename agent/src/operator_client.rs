//! The agent's side of the operator's evidence API: fetch a challenge, submit evidence.
//!
//! Over HTTPS only, trusting the CA the operator's certificate is issued by (mounted from
//! a ConfigMap or Secret); authenticated with the pod's projected ServiceAccount token,
//! read again for every request because the kubelet rotates it (the shared
//! `lotabots-operator-client`, which the workload pods post their results with too).

use std::path::PathBuf;

use lotabots_crds::evidence::{NONCE_LEN, NodeEvidence, parse_nonce};
use lotabots_operator_client::{Client, ConfigError, SendError};
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
#[derive(Clone, Debug)]
pub struct OperatorClient {
    inner: Client,
}

impl OperatorClient {
    /// A client of the operator at `base_url` (`https://…`), trusting the CA certificates
    /// in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(base_url: &str, ca_pem: &[u8], token_file: PathBuf) -> Result<Self, ClientError> {
        let inner = Client::new(base_url, ca_pem, token_file)?;
        Ok(Self { inner })
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

    /// One attempt (the attestation loop decides when to try again); a refusal carries
    /// the operator's error label.
    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let answer = self.inner.send(path, body).await?;
        if answer.status.is_success() {
            return serde_json::from_str(&answer.body).map_err(|e| ClientError::Transport {
                url: format!("{}{path}", self.inner.base()),
                message: format!("unexpected answer: {e}"),
            });
        }
        let (code, message) = match serde_json::from_str::<ApiError>(&answer.body) {
            Ok(e) => (e.error, e.message),
            Err(_) => ("unknown".into(), answer.body.chars().take(200).collect()),
        };
        Err(ClientError::Refused {
            status: answer.status.as_u16(),
            code,
            message,
        })
    }
}

impl From<ConfigError> for ClientError {
    fn from(e: ConfigError) -> Self {
        ClientError::Config(e.0)
    }
}

impl From<SendError> for ClientError {
    fn from(e: SendError) -> Self {
        match e {
            SendError::Config(e) => e.into(),
            SendError::Transport { url, message } => ClientError::Transport { url, message },
        }
    }
}
