//! The latest accepted GPU self-test result per (node, GpuAttestation): what the workload
//! API stores and the GpuAttestation controller folds into the node verdicts.
//!
//! In memory, like the latest evidence: a result is bound to the nonce of one attestation
//! round, and a new leader starts new rounds anyway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use lotabots_crds::workload::WorkloadResult;

/// The GpuAttestation a self-test ran for: its name and UID (a GpuAttestation deleted and
/// created again under the same name does not inherit the old one's results).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AttestationRef {
    /// Its name (cluster-scoped).
    pub name: String,
    /// Its UID.
    pub uid: String,
}

/// A result that passed the workload API's checks.
#[derive(Clone, Debug, PartialEq)]
pub struct AcceptedResult {
    /// The node its pod ran on (from the pod-bound token, checked against the pod).
    pub node: String,
    /// The GpuAttestation that owns the pod.
    pub attestation: AttestationRef,
    /// `namespace/name` of the pod that posted it.
    pub pod: String,
    /// The result as posted.
    pub result: WorkloadResult,
    /// When the operator accepted it.
    pub received_at: Timestamp,
}

/// Latest accepted result per (node, GpuAttestation name), with a counter that changes on
/// every acceptance so that the controller re-reconciles.
pub struct WorkloadResults {
    latest: Mutex<HashMap<(String, String), Arc<AcceptedResult>>>,
    arrivals: tokio::sync::watch::Sender<u64>,
}

impl Default for WorkloadResults {
    fn default() -> Self {
        Self {
            latest: Mutex::default(),
            arrivals: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl WorkloadResults {
    /// Changes on every accepted result.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.arrivals.subscribe()
    }

    /// The latest result of `node` for the GpuAttestation `attestation` (any UID: the
    /// caller compares it with the one it judges).
    pub fn get(&self, node: &str, attestation: &str) -> Option<Arc<AcceptedResult>> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(node.to_owned(), attestation.to_owned()))
            .cloned()
    }

    /// Stores `result` as the latest of its node and GpuAttestation and wakes subscribers.
    pub fn accept(&self, result: AcceptedResult) {
        let key = (result.node.clone(), result.attestation.name.clone());
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, Arc::new(result));
        self.arrivals.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// How many (node, GpuAttestation) pairs have a result.
    pub fn len(&self) -> usize {
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether no result was accepted yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
