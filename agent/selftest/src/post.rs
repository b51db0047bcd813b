//! Delivers the result to the operator through the shared operator client
//! (`lotabots-operator-client`): HTTPS verified with the mounted CA bundle, authenticated
//! with the pod-bound projected token (read again for every attempt, as the kubelet rotates
//! it), retried with backoff on transport errors and 5xx answers. A 4xx answer is final:
//! the operator looked at the result and refused it.

use std::path::PathBuf;

use lotabots_crds::workload::WorkloadResult;
use lotabots_operator_client::Client;
pub use lotabots_operator_client::{PostError, Retry};

/// A client of one operator's result endpoint.
#[derive(Debug)]
pub struct Poster {
    client: Client,
    url: String,
    retry: Retry,
}

impl Poster {
    /// A poster to `base_url` (`https://…`) + `RESULT_PATH`, trusting the CA
    /// certificates in `ca_pem`, authenticating with the token in `token_file`.
    pub fn new(
        base_url: &str,
        ca_pem: &[u8],
        token_file: PathBuf,
        retry: Retry,
    ) -> Result<Self, PostError> {
        let client = Client::new(base_url, ca_pem, token_file)?;
        Ok(Self {
            url: client.result_url(),
            client,
            retry,
        })
    }

    /// Where results go.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Posts `result`; returns the operator's answer body on success.
    pub async fn post(&self, result: &WorkloadResult) -> Result<String, PostError> {
        self.client.post_result(result, self.retry).await
    }
}
