//! The behavioural check of a ModelAttestation: which attested node runs its probes, the
//! request id that names the probe pod, and the registry of current requests and their
//! accepted results that the model controller and the workload API share.
//!
//! The registry lives in the leader's memory, like the self-test results: the model
//! controller fills it whenever it writes or sees a `status.behaviour` (so it is rebuilt
//! after a restart), the workload API authorises probe pods and stores their results in
//! it, and a stored result wakes the controller for its ModelAttestation at once.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::mpsc;
use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use lotabots_crds::mig;
use lotabots_crds::model_attestation::{
    BehaviourCheck, BehaviourResult, MAX_STATUS_PROBES, ModelAttestation, ModelAttestationSpec,
    ProbeStatus,
};
use lotabots_crds::workload::WorkloadResult;
use sha2::{Digest, Sha256};

use crate::evidence_api::AcceptedEvidence;

/// Evidence older than this does not vouch for a node a probe pod is sent to.
pub const EVIDENCE_MAX_AGE: Duration = Duration::from_secs(3600);
/// A request without result is given this long beyond `spec.behaviour.timeout` (the
/// pod's start, the model's download) before it is replaced.
pub const TIMEOUT_GRACE: Duration = Duration::from_secs(120);
/// Largest probe suite read from its ConfigMap.
pub const MAX_SUITE_BYTES: usize = 64 << 10;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The request id: the first 32 hex digits of SHA-256 over the length-prefixed fields,
/// so that no two different field lists hash alike.
pub fn request_id(fields: &[&str]) -> String {
    let mut h = Sha256::new();
    for f in fields {
        h.update((f.len() as u64).to_be_bytes());
        h.update(f.as_bytes());
    }
    hex::encode(h.finalize())[..32].to_owned()
}

/// What a probe pod needs of a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeNeed {
    /// Whole GPUs (when no MIG profile).
    pub gpu_count: u32,
    /// One MIG instance of this profile instead.
    pub mig_profile: Option<String>,
    /// Only nodes labelled `lotabots.io/gpu-attested=true`.
    pub attested_only: bool,
}

impl From<&BehaviourCheck> for NodeNeed {
    fn from(b: &BehaviourCheck) -> Self {
        Self {
            gpu_count: b.gpu_count.unwrap_or(1),
            mig_profile: b.mig_profile.clone(),
            attested_only: b.attested_nodes_only,
        }
    }
}

impl std::fmt::Display for NodeNeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.mig_profile {
            Some(p) => write!(f, "a MIG instance of profile {p}")?,
            None => write!(f, "{} GPU(s)", self.gpu_count)?,
        }
        if self.attested_only {
            write!(
                f,
                " on a node labelled {}=true",
                lotabots_crds::labels::GPU_ATTESTED
            )?;
        }
        Ok(())
    }
}

/// Whether `evidence` shows what `need` asks for.
fn offers(evidence: &AcceptedEvidence, need: &NodeNeed) -> bool {
    let gpus = &evidence.evidence.gpus;
    match &need.mig_profile {
        Some(profile) => gpus.iter().any(|g| {
            g.mig.gpu_instances.value().is_some_and(|instances| {
                instances
                    .iter()
                    .any(|i| mig::strip_nvml_prefix(&i.profile_name) == profile)
            })
        }),
        None => gpus.len() >= need.gpu_count as usize,
    }
}

/// The node a ModelAttestation's probes run on: among the nodes whose latest accepted
/// evidence is at most [`EVIDENCE_MAX_AGE`] old, shows what `need` asks for and (with
/// `attested_only`) is in `attested`, the one with the highest SHA-256 of
/// (`uid`, node) — rendezvous hashing, so that models spread over the nodes and each
/// keeps its node while that node stays eligible. `Err` says what was looked for.
pub fn choose_node(
    uid: &str,
    need: &NodeNeed,
    candidates: &[Arc<AcceptedEvidence>],
    attested: &BTreeSet<String>,
    now: Timestamp,
) -> Result<Arc<AcceptedEvidence>, String> {
    let fresh = |e: &AcceptedEvidence| {
        let age = now.duration_since(e.received_at);
        !age.is_negative() && age.unsigned_abs() <= EVIDENCE_MAX_AGE
    };
    let score = |node: &str| {
        let mut h = Sha256::new();
        h.update(uid.as_bytes());
        h.update([0]);
        h.update(node.as_bytes());
        h.finalize()
    };
    candidates
        .iter()
        .filter(|e| fresh(e) && offers(e, need))
        .filter(|e| !need.attested_only || attested.contains(&e.node))
        .max_by_key(|e| score(&e.node))
        .cloned()
        .ok_or_else(|| {
            format!(
                "no node with accepted evidence from the last {} min offers {need}",
                EVIDENCE_MAX_AGE.as_secs() / 60
            )
        })
}

/// A ModelAttestation by namespace, name and UID.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ModelRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its UID (a ModelAttestation created again under the same name is another one).
    pub uid: String,
}

/// A current behaviour request, as the workload API checks pods and results against it.
#[derive(Clone, Debug)]
pub struct CurrentRequest {
    /// The request id.
    pub id: String,
    /// The ModelAttestation it is for.
    pub model: ModelRef,
    /// The node its pod must run on.
    pub node: String,
    /// The nonce of that node's evidence the result must carry.
    pub nonce: String,
    /// The manifest digest the model's files must hash to.
    pub manifest_digest: String,
    /// The probe suite's digest.
    pub suite_digest: String,
    /// The probe suite's bytes.
    pub suite: Arc<[u8]>,
    /// The ModelAttestation's spec, from which the model's source is opened.
    pub spec: ModelAttestationSpec,
}

/// A probe result that passed the workload API's checks.
#[derive(Clone, Debug, PartialEq)]
pub struct AcceptedProbes {
    /// `namespace/name` of the pod that posted it.
    pub pod: String,
    /// The result as posted.
    pub result: WorkloadResult,
    /// When the operator accepted it.
    pub received_at: Timestamp,
}

impl AcceptedProbes {
    /// The result as the status shows it: bounded lists and texts.
    pub fn to_status(&self) -> BehaviourResult {
        let r = &self.result;
        let probes = r
            .probes
            .as_ref()
            .map(|p| p.probes.as_slice())
            .unwrap_or_default();
        BehaviourResult {
            passed: r.passed
                && r.error.is_none()
                && r.probes.is_some()
                && probes.iter().all(|p| p.passed),
            device: r.probes.as_ref().map(|p| clip(&p.device, 16)),
            error: r.error.as_deref().map(|e| clip(e, 1024)),
            probes: probes
                .iter()
                .take(MAX_STATUS_PROBES)
                .map(|p| ProbeStatus {
                    name: clip(&p.name, 128),
                    passed: p.passed,
                    detail: clip(&p.detail, 256),
                })
                .collect(),
            finished_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(r.finished_at),
        }
    }
}

fn clip(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_owned();
    }
    let mut out: String = s.chars().take(max - 1).collect();
    out.push('…');
    out
}

#[derive(Default)]
struct Inner {
    /// Current requests by id.
    requests: HashMap<String, Arc<CurrentRequest>>,
    /// The current request id of each ModelAttestation, by UID.
    by_model: HashMap<String, String>,
    /// Accepted results by request id.
    results: HashMap<String, Arc<AcceptedProbes>>,
}

/// The current behaviour requests and their accepted results, shared by the model
/// controller and the workload API.
pub struct BehaviourRequests {
    inner: Mutex<Inner>,
    wake: mpsc::UnboundedSender<ObjectRef<ModelAttestation>>,
    wakeups: Mutex<Option<mpsc::UnboundedReceiver<ObjectRef<ModelAttestation>>>>,
}

impl Default for BehaviourRequests {
    fn default() -> Self {
        let (wake, wakeups) = mpsc::unbounded();
        Self {
            inner: Mutex::default(),
            wake,
            wakeups: Mutex::new(Some(wakeups)),
        }
    }
}

/// Why a probe result was not stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotStored {
    /// The request is no longer current.
    NotCurrent,
    /// Another result was accepted for it before.
    AlreadyReported,
}

impl BehaviourRequests {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The ModelAttestations whose results arrived, for the controller's
    /// `reconcile_on`; `None` after the first call (one controller takes them).
    pub fn wakeups(&self) -> Option<mpsc::UnboundedReceiver<ObjectRef<ModelAttestation>>> {
        self.wakeups
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    /// Makes `request` its ModelAttestation's current one, replacing (and forgetting the
    /// result of) any other.
    pub fn register(&self, request: CurrentRequest) {
        let mut inner = self.lock();
        let id = request.id.clone();
        if let Some(old) = inner.by_model.insert(request.model.uid.clone(), id.clone())
            && old != id
        {
            inner.requests.remove(&old);
            inner.results.remove(&old);
        }
        inner.requests.insert(id, Arc::new(request));
    }

    /// Forgets the request of the ModelAttestation with `uid` (it has none any more).
    pub fn forget(&self, uid: &str) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_model.remove(uid) {
            inner.requests.remove(&old);
            inner.results.remove(&old);
        }
    }

    /// Forgets the requests of every ModelAttestation whose UID is not in `live`: the
    /// deleted ones (the controller has no finalizer, so nothing else says they are gone).
    pub fn retain_models(&self, live: &HashSet<String>) {
        let mut inner = self.lock();
        let gone: Vec<String> = inner
            .by_model
            .keys()
            .filter(|uid| !live.contains(*uid))
            .cloned()
            .collect();
        for uid in gone {
            if let Some(id) = inner.by_model.remove(&uid) {
                inner.requests.remove(&id);
                inner.results.remove(&id);
            }
        }
    }

    /// The current request `id`.
    pub fn get(&self, id: &str) -> Option<Arc<CurrentRequest>> {
        self.lock().requests.get(id).cloned()
    }

    /// The accepted result of request `id`.
    pub fn result(&self, id: &str) -> Option<Arc<AcceptedProbes>> {
        self.lock().results.get(id).cloned()
    }

    /// Stores the result of the current request `id` and wakes the controller for its
    /// ModelAttestation; `Ok(false)`: the same result was stored before.
    pub fn accept(&self, id: &str, result: AcceptedProbes) -> Result<bool, NotStored> {
        let mut inner = self.lock();
        let request = inner
            .requests
            .get(id)
            .cloned()
            .ok_or(NotStored::NotCurrent)?;
        if let Some(previous) = inner.results.get(id) {
            return if previous.result == result.result {
                Ok(false)
            } else {
                Err(NotStored::AlreadyReported)
            };
        }
        inner.results.insert(id.to_owned(), Arc::new(result));
        drop(inner);
        let model = ObjectRef::new(&request.model.name).within(&request.model.namespace);
        // No receiver (the controller is not running): the resync folds it instead.
        let _ = self.wake.unbounded_send(model);
        Ok(true)
    }

    /// How many requests are current.
    pub fn len(&self) -> usize {
        self.lock().requests.len()
    }

    /// Whether no request is current.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    use crate::test_evidence::shared as evidence;

    fn need(gpus: u32, mig: Option<&str>, attested_only: bool) -> NodeNeed {
        NodeNeed {
            gpu_count: gpus,
            mig_profile: mig.map(str::to_owned),
            attested_only,
        }
    }

    fn attested(nodes: &[&str]) -> BTreeSet<String> {
        nodes.iter().map(|n| (*n).to_owned()).collect()
    }

    #[test]
    fn only_fresh_evidence_vouches_for_a_node() {
        let now = at(10_000);
        let stale = evidence("old", at(10_000 - 3601), 1, &[]);
        let fresh = evidence("new", at(10_000 - 3599), 1, &[]);
        let all = attested(&["old", "new"]);
        let chosen = choose_node(
            "uid",
            &need(1, None, true),
            &[stale.clone(), fresh],
            &all,
            now,
        );
        assert_eq!(chosen.unwrap().node, "new");
        let none = choose_node("uid", &need(1, None, true), &[stale], &all, now).unwrap_err();
        assert!(none.contains("last 60 min"), "{none}");
        assert!(none.contains("1 GPU(s)"), "{none}");
    }

    #[test]
    fn the_node_must_have_enough_gpus_or_the_mig_profile() {
        let now = at(0);
        let nodes = [
            evidence("one", now, 1, &[]),
            evidence("four", now, 4, &[]),
            evidence("mig", now, 1, &["1g.10gb"]),
        ];
        let all = attested(&["one", "four", "mig"]);
        let pick = |n: NodeNeed| choose_node("uid", &n, &nodes, &all, now).map(|e| e.node.clone());
        assert_eq!(pick(need(4, None, true)).unwrap(), "four");
        assert!(pick(need(8, None, true)).unwrap_err().contains("8 GPU(s)"));
        assert_eq!(pick(need(1, Some("1g.10gb"), true)).unwrap(), "mig");
        let e = pick(need(1, Some("3g.40gb"), true)).unwrap_err();
        assert!(e.contains("MIG instance of profile 3g.40gb"), "{e}");
    }

    #[test]
    fn attested_nodes_only_needs_the_label() {
        let now = at(0);
        let nodes = [evidence("a", now, 1, &[]), evidence("b", now, 1, &[])];
        for uid in ["u1", "u2", "u3", "u4"] {
            let only_b = choose_node(uid, &need(1, None, true), &nodes, &attested(&["b"]), now);
            assert_eq!(only_b.unwrap().node, "b");
        }
        let e = choose_node("u", &need(1, None, true), &nodes, &attested(&[]), now).unwrap_err();
        assert!(e.contains("lotabots.io/gpu-attested=true"), "{e}");
        assert!(choose_node("u", &need(1, None, false), &nodes, &attested(&[]), now).is_ok());
    }

    #[test]
    fn the_choice_is_deterministic_and_spreads() {
        let now = at(0);
        let nodes: Vec<_> = (0..8)
            .map(|i| evidence(&format!("n{i}"), now, 1, &[]))
            .collect();
        let all: BTreeSet<String> = nodes.iter().map(|e| e.node.clone()).collect();
        let mut reversed = nodes.clone();
        reversed.reverse();
        let mut chosen = BTreeSet::new();
        for i in 0..32 {
            let uid = format!("uid-{i}");
            let a = choose_node(&uid, &need(1, None, true), &nodes, &all, now).unwrap();
            let b = choose_node(&uid, &need(1, None, true), &reversed, &all, now).unwrap();
            assert_eq!(
                a.node, b.node,
                "the order of the candidates does not matter"
            );
            chosen.insert(a.node.clone());
        }
        assert!(
            chosen.len() > 2,
            "32 models over 8 nodes use more than 2: {chosen:?}"
        );
    }

    fn request(id: &str, uid: &str) -> CurrentRequest {
        CurrentRequest {
            id: id.into(),
            model: ModelRef {
                namespace: "team".into(),
                name: uid.into(),
                uid: uid.into(),
            },
            node: "node-a".into(),
            nonce: "aa".repeat(32),
            manifest_digest: sha256_digest(b"manifest"),
            suite_digest: sha256_digest(b"suite"),
            suite: Arc::from(&b"suite"[..]),
            spec: serde_json::from_value(serde_json::json!({"source": {"uri": "s3://models/m"}}))
                .unwrap(),
        }
    }

    #[test]
    fn requests_of_deleted_model_attestations_are_forgotten() {
        let registry = BehaviourRequests::default();
        registry.register(request("1", "uid-kept"));
        registry.register(request("2", "uid-deleted"));
        registry.retain_models(&HashSet::from(["uid-kept".to_owned()]));
        assert!(registry.get("1").is_some());
        assert!(registry.get("2").is_none());
    }

    #[test]
    fn request_ids_are_length_prefixed_hashes() {
        let id = request_id(&["uid", "1", "sha256:aa"]);
        assert_eq!(id.len(), 32);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_eq!(id, request_id(&["uid", "1", "sha256:aa"]));
        assert_ne!(id, request_id(&["uid1", "", "sha256:aa"]));
    }
}
