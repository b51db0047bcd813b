//! `run` mode's attestation loop: the agent watches the GpuAttestations, and while one
//! selects its node it attests on the shortest of their intervals (with jitter, so that a
//! fleet started together does not submit together): fetch a challenge from the operator,
//! probe with that nonce, submit. Failures back off exponentially.
//!
//! After a successful round, each selecting GpuAttestation with a `workloadCheck` gets a
//! GPU self-test pod on this node ([`crate::launcher`]), bound to that round's nonce.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::Store;
use lotabots_crds::evidence::{NONCE_LEN, NonceOrigin};
use lotabots_crds::gpu_attestation::{GpuAttestation, parse_duration};
use lotabots_crds::workload::{GpuResources, WorkloadKind, WorkloadOwner, WorkloadRequest};
use rand::Rng;
use sha2::Digest;

use crate::backend::{BackendError, GpuBackend, ProbeRequest, collect};
use crate::launcher::Launcher;
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
    attest_round(backend, operator, node).await.map(|(_, r)| r)
}

/// [`attest_once`], also returning the round's nonce (workloads are bound to it).
pub async fn attest_round(
    backend: Arc<dyn GpuBackend>,
    operator: &OperatorClient,
    node: &str,
) -> Result<([u8; NONCE_LEN], Receipt), AttestError> {
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
    Ok((nonce, operator.submit(&evidence).await?))
}

/// The id of the self-test of `owner_uid`'s workload check on `node` after the round with
/// `nonce`: the first 32 hex digits of SHA-256 over the three, so that a retried launch
/// names the same pod.
pub fn self_test_id(owner_uid: &str, node: &str, nonce: &[u8; NONCE_LEN]) -> String {
    let mut h = sha2::Sha256::new();
    for part in [owner_uid.as_bytes(), node.as_bytes(), nonce.as_slice()] {
        // Length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    hex::encode(&h.finalize()[..16])
}

/// The self-tests to launch on `node` after a round with `nonce`: one per GpuAttestation
/// that selects the node (its `labels`) and sets `spec.workloadCheck`.
pub fn self_test_requests<'a>(
    attestations: impl IntoIterator<Item = &'a GpuAttestation>,
    labels: &BTreeMap<String, String>,
    node: &str,
    nonce: &[u8; NONCE_LEN],
) -> Vec<WorkloadRequest> {
    attestations
        .into_iter()
        .filter(|a| a.spec.selects(labels))
        .filter_map(|a| {
            let check = a.spec.workload_check.as_ref()?;
            let uid = a.metadata.uid.clone()?;
            let name = a.metadata.name.clone()?;
            // The CRD's CEL rule bounds the timeout; an unparsable one (an object written
            // before the rule) falls back to the default rather than skipping the check.
            let deadline = parse_duration(&check.timeout)
                .unwrap_or(Duration::from_secs(600))
                .as_secs()
                .max(1);
            Some(WorkloadRequest {
                id: self_test_id(&uid, node, nonce),
                kind: WorkloadKind::GpuSelfTest,
                image: check.image.clone(),
                node: node.to_owned(),
                nonce: hex::encode(nonce),
                owner: WorkloadOwner {
                    api_version: format!("{}/{}", lotabots_crds::GROUP, lotabots_crds::VERSION),
                    kind: "GpuAttestation".into(),
                    name,
                    uid,
                    namespace: None,
                },
                deadline_seconds: deadline,
                resources: GpuResources::default(),
                scratch_bytes: None,
                params: BTreeMap::new(),
            })
        })
        .collect()
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

/// Runs until the process ends, launching no workloads.
pub async fn run_loop(
    client: kube::Client,
    backend: Arc<dyn GpuBackend>,
    operator: OperatorClient,
    node: String,
    state: Arc<AgentState>,
) {
    run_loop_launching(client, backend, operator, node, state, None).await;
}

/// Runs until the process ends; with a launcher, each successful round launches the
/// self-tests its GpuAttestations ask for, and every round reaps finished workload pods.
pub async fn run_loop_launching(
    client: kube::Client,
    backend: Arc<dyn GpuBackend>,
    operator: OperatorClient,
    node: String,
    state: Arc<AgentState>,
    launcher: Option<Arc<Launcher>>,
) {
    // Any change to the GpuAttestations wakes an idle agent at once: a new one that
    // selects this node should not wait for the next idle check.
    let crate::watch::Watched {
        store,
        changed,
        task: watch,
    } = crate::watch::watch(Api::<GpuAttestation>::all(client.clone()));
    let nodes: Api<PartialObjectMeta<Node>> = Api::all(client);
    let mut failures = 0u32;
    loop {
        let mut idle = false;
        let wait = match next_round(&store, &nodes, &node).await {
            Ok((None, _)) => {
                idle = true;
                IDLE_RECHECK
            }
            Ok((Some(interval), labels)) => {
                match attest_round(backend.clone(), &operator, &node).await {
                    Ok((nonce, receipt)) => {
                        failures = 0;
                        state.metrics().submission("accepted");
                        state.set_ready(true);
                        tracing::info!(digest = %receipt.digest, next_in = ?interval, "evidence accepted");
                        if let Some(l) = &launcher {
                            let requests = self_test_requests(
                                store.state().iter().map(|a| &**a),
                                &labels,
                                &node,
                                &nonce,
                            );
                            launch_all(l, &requests).await;
                        }
                        jittered(interval, rand::rng().random())
                    }
                    Err(e) => {
                        failures += 1;
                        state.metrics().submission(&e.label());
                        tracing::warn!(error = %e, failures, "attestation failed");
                        backoff(failures)
                    }
                }
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "cannot read the GpuAttestations or this node");
                backoff(failures)
            }
        };
        if let Some(l) = &launcher {
            l.reap_logged().await;
        }
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

/// Launches each request; a failure is logged and left to the next round (the request id
/// is new each round, since the nonce is).
async fn launch_all(launcher: &Launcher, requests: &[WorkloadRequest]) {
    for req in requests {
        match launcher.launch(req).await {
            Ok(l) => {
                tracing::info!(pod = l.pod_name(), owner = %req.owner.name, "GPU self-test launched")
            }
            Err(e) => {
                tracing::warn!(error = %e, reason = e.label(), owner = %req.owner.name, "GPU self-test not launched")
            }
        }
    }
}

/// The interval to attest on now, if any GpuAttestation selects this node, and the node's
/// labels.
async fn next_round(
    store: &Store<GpuAttestation>,
    nodes: &Api<PartialObjectMeta<Node>>,
    node: &str,
) -> kube::Result<(Option<Duration>, BTreeMap<String, String>)> {
    store
        .wait_until_ready()
        .await
        .map_err(|e| kube::Error::Service(Box::new(e)))?;
    let meta = nodes.get_metadata(node).await?;
    let labels = meta.metadata.labels.unwrap_or_default();
    Ok((
        interval_for(store.state().iter().map(|a| &**a), &labels),
        labels,
    ))
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

    #[test]
    fn a_workload_check_becomes_one_idempotent_self_test_per_round() {
        let mut with_check = att("5m", None);
        with_check.metadata.uid = Some("uid-1".into());
        with_check.metadata.name = Some("fleet".into());
        with_check.spec.workload_check = Some(
            serde_json::from_value(serde_json::json!({
                "image": "ghcr.io/lotabots/selftest@sha256:ab",
                "timeout": "3m",
            }))
            .unwrap(),
        );
        let mut without = att("5m", None);
        without.metadata.uid = Some("uid-2".into());
        let labels = BTreeMap::from([("nvidia.com/gpu.present".to_string(), "true".to_string())]);
        let nonce = [7u8; NONCE_LEN];
        let reqs = self_test_requests([&with_check, &without], &labels, "node-a", &nonce);
        assert_eq!(reqs.len(), 1, "only the attestation with a workloadCheck");
        let r = &reqs[0];
        assert_eq!(r.kind, WorkloadKind::GpuSelfTest);
        assert_eq!(r.image, "ghcr.io/lotabots/selftest@sha256:ab");
        assert_eq!(r.deadline_seconds, 180);
        assert_eq!(r.nonce, "07".repeat(32));
        assert_eq!(
            (r.owner.kind.as_str(), r.owner.uid.as_str()),
            ("GpuAttestation", "uid-1")
        );
        assert_eq!(r.owner.namespace, None);
        assert_eq!(
            r.id,
            self_test_id("uid-1", "node-a", &nonce),
            "deterministic"
        );
        assert_eq!(r.id.len(), 32);
        assert_ne!(r.id, self_test_id("uid-1", "node-b", &nonce));
        assert_ne!(r.id, self_test_id("uid-1", "node-a", &[8u8; NONCE_LEN]));
        assert_ne!(
            self_test_id("ab", "c", &nonce),
            self_test_id("a", "bc", &nonce)
        );
        crate::launcher::spec::validate(r).expect("a request the launcher accepts");
        assert!(
            self_test_requests([&with_check], &BTreeMap::new(), "node-a", &nonce).is_empty(),
            "not for a node the attestation does not select"
        );
    }
}
