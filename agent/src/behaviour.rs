//! `run` mode's behavioural-probe launches: the operator picks an attested node for a
//! ModelAttestation's behavioural check and writes the request into its
//! `status.behaviour`; the agent of that node watches the ModelAttestations (all
//! namespaces) and launches the probe pod ([`crate::launcher`]) for each request that
//! names it, has no result yet and has not timed out.
//!
//! Which requests to launch is a pure function of the ModelAttestations, the node and the
//! time ([`probe_requests`]); the loop ([`run`]) only feeds it and remembers what it
//! launched ([`Launches`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use kube::Api;
use kube::core::DeserializeGuard;
use kube::runtime::reflector::Store;
use lotabots_crds::gpu_attestation::parse_duration;
use lotabots_crds::model_attestation::{BehaviourStatus, ModelAttestation};
use lotabots_crds::workload::{GpuResources, WorkloadKind, WorkloadOwner, WorkloadRequest};

use crate::launcher::{LaunchError, Launcher};

/// Length of a behavioural request id: 32 lowercase hex digits (the probe pod's name is
/// `behaviour-probes-<id>`).
pub const REQUEST_ID_LEN: usize = 32;
/// Scratch space for the probe suite besides the model: a ConfigMap value is at most
/// 1 MiB.
pub const SUITE_ALLOWANCE_BYTES: u64 = 1 << 20;
/// The least scratch space a probe pod gets, however small the model.
pub const MIN_SCRATCH_BYTES: u64 = 64 << 20;
/// How often the requests are looked at without a change to the ModelAttestations (a
/// launch refused for capacity is retried then).
pub const RECHECK: Duration = Duration::from_secs(30);

/// Where the probe runner puts what it fetches (inside [`lotabots_crds::workload::SCRATCH_DIR`]).
const MODEL_DIR: &str = "/work/model";
const SUITE_FILE: &str = "/work/suite.yaml";

/// Why a ModelAttestation's behavioural request cannot be launched; each names the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request id cannot name a pod.
    #[error(
        "ModelAttestation {object}: status.behaviour.requestId {id:?} is not {REQUEST_ID_LEN} lowercase hex digits; not launching its probes"
    )]
    BadRequestId {
        /// `namespace/name`.
        object: String,
        /// The id as written.
        id: String,
    },
    /// The timeout is not a duration (an object written before the CRD's rule).
    #[error(
        "ModelAttestation {object}: spec.behaviour.timeout {timeout:?} is not a duration such as 15m; not launching its probes"
    )]
    BadTimeout {
        /// `namespace/name`.
        object: String,
        /// The timeout as written.
        timeout: String,
    },
}

/// Whether `id` is [`REQUEST_ID_LEN`] lowercase hex digits.
pub fn is_request_id(id: &str) -> bool {
    id.len() == REQUEST_ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Scratch bytes for a model of `model_bytes`: the model and the suite, plus 10 %
/// headroom (file-system overhead, partial downloads), at least [`MIN_SCRATCH_BYTES`].
pub fn scratch_bytes(model_bytes: u64) -> u64 {
    let payload = model_bytes.saturating_add(SUITE_ALLOWANCE_BYTES);
    payload
        .saturating_add(payload.div_ceil(10))
        .max(MIN_SCRATCH_BYTES)
}

/// The request `ma` asks `node` to launch at `now`, if any: its `status.behaviour` names
/// `node`, has no result, and `requestedAt + spec.behaviour.timeout` is after `now`.
///
/// The pod's deadline is what is left of the timeout (rounded up), so that a pod launched
/// late, after an agent restart, does not outlive the request the operator waits on.
pub fn probe_request(
    ma: &ModelAttestation,
    node: &str,
    now: Timestamp,
) -> Result<Option<WorkloadRequest>, RequestError> {
    let (Some(check), Some(status)) = (
        ma.spec.behaviour.as_ref(),
        ma.status.as_ref().and_then(|s| s.behaviour.as_ref()),
    ) else {
        return Ok(None);
    };
    let (Some(name), Some(namespace), Some(uid)) = (
        ma.metadata.name.as_ref(),
        ma.metadata.namespace.as_ref(),
        ma.metadata.uid.as_ref(),
    ) else {
        // Every object the API server returns has them.
        return Ok(None);
    };
    if status.node != node || status.result.is_some() {
        return Ok(None);
    }
    let object = format!("{namespace}/{name}");
    let timeout = parse_duration(&check.timeout).ok_or_else(|| RequestError::BadTimeout {
        object: object.clone(),
        timeout: check.timeout.clone(),
    })?;
    let Some(deadline_seconds) = seconds_left(status, timeout, now) else {
        return Ok(None);
    };
    if !is_request_id(&status.request_id) {
        return Err(RequestError::BadRequestId {
            object,
            id: status.request_id.clone(),
        });
    }
    Ok(Some(WorkloadRequest {
        id: status.request_id.clone(),
        kind: WorkloadKind::BehaviourProbes,
        image: check.image.clone(),
        node: node.to_owned(),
        nonce: status.nonce.clone(),
        owner: WorkloadOwner {
            api_version: format!("{}/{}", lotabots_crds::GROUP, lotabots_crds::VERSION),
            kind: "ModelAttestation".into(),
            name: name.clone(),
            uid: uid.clone(),
            namespace: Some(namespace.clone()),
        },
        deadline_seconds,
        resources: GpuResources {
            gpu_count: check.gpu_count,
            mig_profile: check.mig_profile.clone(),
        },
        scratch_bytes: Some(scratch_bytes(status.model_bytes)),
        params: runner_params(ma, status),
    }))
}

/// Whole seconds left of the request's timeout at `now` (at least 1, at most the
/// timeout, should the operator's clock run ahead); none once it has passed.
fn seconds_left(status: &BehaviourStatus, timeout: Duration, now: Timestamp) -> Option<u64> {
    let end = status
        .requested_at
        .0
        .checked_add(jiff::SignedDuration::try_from(timeout).ok()?)
        .ok()?;
    let left = Duration::try_from(now.duration_until(end)).ok()?;
    if left.is_zero() {
        return None;
    }
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    Some(secs.min(timeout.as_secs()).max(1))
}

/// The probe runner's parameters ([`lotabots_crds::workload::env::PARAMS`]): fetch the
/// model and suite from the operator into the scratch volume and check them against the
/// request's digests, hashing as the ModelAttestation's manifest does.
fn runner_params(ma: &ModelAttestation, status: &BehaviourStatus) -> BTreeMap<String, String> {
    let integrity = &ma.spec.integrity;
    let mut params = BTreeMap::from([
        ("fetch".to_owned(), "operator".to_owned()),
        ("modelDir".to_owned(), MODEL_DIR.to_owned()),
        ("suite".to_owned(), SUITE_FILE.to_owned()),
        ("manifestDigest".to_owned(), status.manifest_digest.clone()),
        ("suiteDigest".to_owned(), status.suite_digest.clone()),
        (
            "hashAlgorithm".to_owned(),
            integrity.algorithm.as_str().to_owned(),
        ),
    ]);
    if let Some(shard) = integrity.shard_size_bytes {
        params.insert("shardSizeBytes".to_owned(), shard.to_string());
    }
    params
}

/// [`probe_request`] over every ModelAttestation: the requests to launch, and the
/// problems to report.
pub fn probe_requests<'a>(
    attestations: impl IntoIterator<Item = &'a ModelAttestation>,
    node: &str,
    now: Timestamp,
) -> Vec<Result<WorkloadRequest, RequestError>> {
    attestations
        .into_iter()
        .filter_map(|ma| probe_request(ma, node, now).transpose())
        .collect()
}

/// The request ids this agent process launched (or that were refused for good): each is
/// launched at most once, so that a probe pod reaped after it succeeded is not created
/// again before the operator's status shows its result. An id is forgotten once no
/// ModelAttestation asks for it, which bounds the set by the pending requests. Likewise
/// each unusable request is reported once, not on every pass.
#[derive(Debug, Default)]
pub struct Launches {
    done: HashSet<String>,
    reported: HashSet<String>,
}

impl Launches {
    /// Forgets the ids and problems that `planned` (this pass's [`probe_requests`]) no
    /// longer holds.
    pub fn retain(&mut self, planned: &[Result<WorkloadRequest, RequestError>]) {
        let ids: HashSet<&str> = planned
            .iter()
            .filter_map(|r| r.as_ref().ok().map(|r| r.id.as_str()))
            .collect();
        let problems: HashSet<String> = planned
            .iter()
            .filter_map(|r| r.as_ref().err().map(ToString::to_string))
            .collect();
        self.done.retain(|id| ids.contains(id.as_str()));
        self.reported.retain(|p| problems.contains(p));
    }

    /// Whether `id` is still to be launched.
    pub fn is_new(&self, id: &str) -> bool {
        !self.done.contains(id)
    }

    /// Records the outcome of launching `id`: remembered unless it is worth retrying on
    /// the next pass (the node was at capacity, the API server failed).
    pub fn record(&mut self, id: &str, outcome: Result<(), &LaunchError>) {
        let settled = match outcome {
            Ok(()) => true,
            Err(e) => !e.retry_later(),
        };
        if settled {
            self.done.insert(id.to_owned());
        }
    }

    /// Whether `problem` is new (to be logged); it is remembered until [`Launches::retain`]
    /// no longer sees it.
    pub fn first_report(&mut self, problem: &RequestError) -> bool {
        self.reported.insert(problem.to_string())
    }

    /// How many request ids are remembered.
    pub fn len(&self) -> usize {
        self.done.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }
}

/// Watches the ModelAttestations of every namespace and launches the probe pods this
/// node is asked for, on every change and every [`RECHECK`]. Returns when the watch ends
/// (which ends the agent, so that Kubernetes restarts it).
pub async fn run(client: kube::Client, launcher: Arc<Launcher>) {
    // A malformed ModelAttestation is kept as an error rather than failing the whole
    // list, so that one bad object does not stop the others' probes.
    let crate::watch::Watched {
        store,
        changed,
        task: mut watch,
    } = crate::watch::watch(Api::<DeserializeGuard<ModelAttestation>>::all(client));
    let mut launches = Launches::default();
    tokio::select! {
        r = store.wait_until_ready() => {
            if r.is_err() {
                tracing::error!("the ModelAttestation watch ended before its first list");
                return;
            }
        }
        _ = &mut watch => {
            tracing::error!("the ModelAttestation watch ended before its first list");
            return;
        }
    }
    loop {
        launch_pass(&store, &launcher, &mut launches).await;
        tokio::select! {
            // Probe pods end on their own schedule, not the attestation rounds': finished
            // ones are also cleared on this cadence.
            () = tokio::time::sleep(RECHECK) => launcher.reap_logged().await,
            () = changed.notified() => {}
            _ = &mut watch => {
                tracing::error!("the ModelAttestation watch ended");
                return;
            }
        }
    }
}

/// One look at the ModelAttestations: launch what is new, forget what is no longer asked.
async fn launch_pass(
    store: &Store<DeserializeGuard<ModelAttestation>>,
    launcher: &Launcher,
    launches: &mut Launches,
) {
    let objects = store.state();
    let valid = objects.iter().filter_map(|g| match &g.0 {
        Ok(ma) => Some(ma),
        Err(e) => {
            tracing::debug!(name = ?e.metadata.name, namespace = ?e.metadata.namespace, error = %e,
                "skipping a ModelAttestation that does not deserialise");
            None
        }
    });
    let planned = probe_requests(valid, launcher.node(), Timestamp::now());
    launches.retain(&planned);
    for request in planned {
        let req = match request {
            Ok(req) => req,
            Err(e) => {
                if launches.first_report(&e) {
                    tracing::warn!(error = %e, "behavioural probe request skipped");
                }
                continue;
            }
        };
        if !launches.is_new(&req.id) {
            continue;
        }
        let owner = format!(
            "{}/{}",
            req.owner.namespace.as_deref().unwrap_or_default(),
            req.owner.name
        );
        let outcome = launcher.launch(&req).await;
        match &outcome {
            Ok(l) => tracing::info!(pod = l.pod_name(), %owner, kind = req.kind.as_str(),
                deadline_seconds = req.deadline_seconds, "behavioural probes launched"),
            Err(e) if e.retry_later() => tracing::info!(error = %e, reason = e.label(), %owner,
                "behavioural probes not launched yet; retrying"),
            Err(e) => tracing::warn!(error = %e, reason = e.label(), %owner,
                "behavioural probes not launched"),
        }
        launches.record(&req.id, outcome.as_ref().map(|_| ()));
    }
}

#[cfg(test)]
mod tests;
