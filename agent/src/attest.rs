//! `run` mode's attestation loop: the agent watches the GpuAttestations, and while one
//! selects its node it attests on the shortest of their intervals (with jitter, so that a
//! fleet started together does not submit together): fetch a challenge from the operator,
//! probe with that nonce, submit. Failures back off exponentially.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use lotabots_crds::evidence::NonceOrigin;
use lotabots_crds::gpu_attestation::{GpuAttestation, parse_duration};
use rand::Rng;

use crate::backend::{BackendError, GpuBackend, ProbeRequest, collect};
use crate::operator_client::{ClientError, OperatorClient, Receipt};
use crate::server::AgentState;

/// Why one attestation failed.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    /// Talking to the operator failed.
    #[error(transparent)]
    Operator(#[from] ClientError),
    /// Probing the GPUs failed.
    #[error(transparent)]
    Probe(#[from] BackendError),
}

impl AttestError {
    /// A short label for metrics.
    pub fn label(&self) -> String {
        match self {
            AttestError::Operator(ClientError::Refused { code, .. }) => code.clone(),
            AttestError::Operator(ClientError::Transport { .. }) => "unreachable".into(),
            AttestError::Operator(ClientError::Config(_)) => "config".into(),
            AttestError::Probe(_) => "probe_failed".into(),
        }
    }
}

/// One round: challenge, probe bound to it, submit.
pub async fn attest_once(
    backend: Arc<dyn GpuBackend>,
    operator: &OperatorClient,
    node: &str,
) -> Result<Receipt, AttestError> {
    let nonce = operator.challenge().await?;
    let req = ProbeRequest {
        nonce,
        nonce_origin: NonceOrigin::Verifier,
        node_name: node.to_owned(),
    };
    // NVML calls block: off the async threads.
    let evidence = tokio::task::spawn_blocking(move || collect(backend.as_ref(), &req))
        .await
        .map_err(|e| BackendError::Query {
            query: "probe task",
            message: e.to_string(),
        })??;
    Ok(operator.submit(&evidence).await?)
}

/// The shortest re-attestation interval among the GpuAttestations that select a node with
/// `labels`; none when no GpuAttestation selects it.
pub fn interval_for<'a>(
    attestations: impl IntoIterator<Item = &'a GpuAttestation>,
    labels: &BTreeMap<String, String>,
) -> Option<Duration> {
    attestations
        .into_iter()
        .filter(|a| a.spec.selects(labels))
        .filter_map(|a| parse_duration(&a.spec.reattestation_interval))
        .min()
}

/// `d` moved by up to ±10 %, `r` in [0, 1).
pub fn jittered(d: Duration, r: f64) -> Duration {
    d.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// The wait after `failures` consecutive failures: 5 s doubling up to 5 min.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(5u64.saturating_mul(1 << failures.saturating_sub(1).min(6)))
        .min(Duration::from_secs(300))
}

/// How long to look again when no GpuAttestation selects the node.
const IDLE_RECHECK: Duration = Duration::from_secs(30);

/// Runs until the process ends.
pub async fn run_loop(
    client: kube::Client,
    backend: Arc<dyn GpuBackend>,
    operator: OperatorClient,
    node: String,
    state: Arc<AgentState>,
) {
    let (store, writer) = reflector::store::<GpuAttestation>();
    // Any change to the GpuAttestations wakes an idle agent at once: a new one that
    // selects this node should not wait for the next idle check.
    let changed = Arc::new(tokio::sync::Notify::new());
    let watch = {
        let changed = changed.clone();
        reflector::reflector(
            writer,
            watcher(
                Api::<GpuAttestation>::all(client.clone()),
                watcher::Config::default(),
            ),
        )
        .default_backoff()
        .for_each(move |_| {
            changed.notify_one();
            async {}
        })
    };
    let watch = tokio::spawn(watch);
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client);
    let mut failures = 0u32;
    loop {
        let mut idle = false;
        let wait = match next_round(&store, &nodes, &node).await {
            Ok(None) => {
                idle = true;
                IDLE_RECHECK
            }
            Ok(Some(interval)) => match attest_once(backend.clone(), &operator, &node).await {
                Ok(receipt) => {
                    failures = 0;
                    state.metrics().submission("accepted");
                    state.set_ready(true);
                    tracing::info!(digest = %receipt.digest, next_in = ?interval, "evidence accepted");
                    jittered(interval, rand::rng().random())
                }
                Err(e) => {
                    failures += 1;
                    state.metrics().submission(&e.label());
                    tracing::warn!(error = %e, failures, "attestation failed");
                    backoff(failures)
                }
            },
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot read the GpuAttestations or this node");
                backoff(failures)
            }
        };
        if idle {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = changed.notified() => {}
            }
        } else {
            tokio::time::sleep(wait).await;
        }
        if watch.is_finished() {
            tracing::error!("the GpuAttestation watch ended");
            return;
        }
    }
}

/// The interval to attest on now, if any GpuAttestation selects this node.
async fn next_round(
    store: &Store<GpuAttestation>,
    nodes: &Api<PartialObjectMeta<Node>>,
    node: &str,
) -> kube::Result<Option<Duration>> {
    store
        .wait_until_ready()
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
    let meta = nodes.get_metadata(node).await?;
    let labels = meta.metadata.labels.unwrap_or_default();
    Ok(interval_for(store.state().iter().map(|a| &**a), &labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(interval: &str, product: Option<&str>) -> GpuAttestation {
        let mut spec = lotabots_crds::gpu_attestation::GpuAttestationSpec {
            reattestation_interval: interval.into(),
            ..Default::default()
        };
        if let Some(p) = product {
            spec.node_selector = Some(
                serde_json::from_value(
                    serde_json::json!({"matchLabels": {"nvidia.com/gpu.product": p}}),
                )
                .unwrap(),
            );
        }
        GpuAttestation::new("a", spec)
    }

    #[test]
    fn the_shortest_interval_of_the_selecting_attestations_applies() {
        let h100 = BTreeMap::from([
            ("nvidia.com/gpu.present".to_string(), "true".to_string()),
            (
                "nvidia.com/gpu.product".to_string(),
                "NVIDIA-H100".to_string(),
            ),
        ]);
        let all = [
            att("10m", None),
            att("2m", Some("NVIDIA-H100")),
            att("1m", Some("NVIDIA-A100")),
        ];
        assert_eq!(interval_for(&all, &h100), Some(Duration::from_secs(120)));
        assert_eq!(
            interval_for(&all, &BTreeMap::new()),
            None,
            "no GPU labels: nothing selects the node"
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent_and_backoff_is_capped() {
        let d = Duration::from_secs(600);
        assert_eq!(jittered(d, 0.0), Duration::from_secs(540));
        assert_eq!(jittered(d, 0.5), d);
        assert!(jittered(d, 0.999_999) <= Duration::from_secs(660));
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(50), Duration::from_secs(300));
    }
}
