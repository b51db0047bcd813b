//! The pod launcher: runs [`WorkloadRequest`]s as hardened pods on the agent's own node
//! (the pod itself is built by [`spec::build`]), keeps at most a configured number of them
//! alive on the node, and removes them once done ([`Launcher::reap`]).
//!
//! - Launching is idempotent: the pod's name is derived from the request id, so a retried
//!   request finds its pod (`409 AlreadyExists` counts as success).
//! - Transient API failures (unreachable, 429, 5xx) are retried with exponential backoff;
//!   a refusal (403 from the webhook or RBAC, 422 invalid) is returned at once, with the
//!   API server's message, since retrying cannot change it.
//! - A node already running `max_pods` workload pods refuses a new one
//!   ([`LaunchError::AtCapacity`]); the caller retries on its next round.
//!
//! Clean-up ([`reap`]): a pod that `Succeeded` has posted its result (the workload binaries
//! exit 0 only after the operator accepted their result), so it is deleted at once; a
//! `Failed` pod is kept for `finished_ttl` so that its logs can be read, then deleted; a
//! pod that never finished is deleted `finished_ttl` after its deadline would have ended
//! it (a pod that cannot be scheduled never starts its deadline clock); a pod whose owner
//! lives in another namespace (see [`spec::owner_metadata`]) is deleted once the owner is
//! gone. Pods owned by a cluster-scoped GpuAttestation are removed by the garbage
//! collector when it is deleted.

pub mod reap;
pub mod spec;

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, PostParams,
};
use lotabots_crds::workload::WorkloadRequest;

pub use reap::{ReapReason, reap_reason};
pub use spec::{PodSettings, SpecError};

/// How the launcher behaves.
#[derive(Clone, Debug)]
pub struct LauncherConfig {
    /// What shapes every pod.
    pub pod: PodSettings,
    /// Workload pods that may be alive on the node at once.
    pub max_pods: usize,
    /// Attempts to create a pod when the API server fails transiently.
    pub create_attempts: u32,
    /// The first wait between attempts; it doubles each time.
    pub first_backoff: Duration,
    /// How long a failed (or never finished) pod is kept before it is deleted.
    pub finished_ttl: Duration,
}

impl LauncherConfig {
    /// Defaults around `pod`: 2 pods per node, 5 attempts from 1 s, failed pods kept 10 min.
    pub fn new(pod: PodSettings) -> Self {
        Self {
            pod,
            max_pods: 2,
            create_attempts: 5,
            first_backoff: Duration::from_secs(1),
            finished_ttl: Duration::from_secs(600),
        }
    }
}

/// What a launch did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Launched {
    /// The pod was created now.
    Created(String),
    /// The pod existed already (an earlier attempt of the same request).
    AlreadyExists(String),
}

impl Launched {
    /// The pod's name.
    pub fn pod_name(&self) -> &str {
        match self {
            Launched::Created(n) | Launched::AlreadyExists(n) => n,
        }
    }
}

/// Why a workload could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The request cannot become a pod.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The request is for another node; an agent launches on its own node only.
    #[error("workload request {id} is for node {requested:?}, but this agent runs on {own:?}")]
    WrongNode {
        /// The request id.
        id: String,
        /// The node the request names.
        requested: String,
        /// This agent's node.
        own: String,
    },
    /// The node already runs as many workload pods as allowed.
    #[error(
        "node {node} already runs {running} workload pods (limit {limit}); workload {id} waits for one to finish"
    )]
    AtCapacity {
        /// The node.
        node: String,
        /// Pods alive on it.
        running: usize,
        /// The limit.
        limit: usize,
        /// The request id.
        id: String,
    },
    /// The API server refused the pod (webhook, RBAC, Pod Security, validation).
    #[error("the API server refused workload pod {namespace}/{pod} ({code} {reason}): {message}")]
    Refused {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// HTTP status.
        code: u16,
        /// Kubernetes reason (`Forbidden`, `Invalid`).
        reason: String,
        /// The API server's message.
        message: String,
    },
    /// The API server could not be reached or failed, after every attempt.
    #[error("creating workload pod {namespace}/{pod} failed after {attempts} attempts: {last}")]
    Unavailable {
        /// Namespace.
        namespace: String,
        /// Pod name.
        pod: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: kube::Error,
    },
    /// Listing the node's workload pods failed.
    #[error("listing the workload pods of node {node} in {namespace}: {source}")]
    List {
        /// The node.
        node: String,
        /// Namespace.
        namespace: String,
        /// Why.
        source: kube::Error,
    },
}

impl LaunchError {
    /// A short label for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            LaunchError::Spec(_) => "invalid_request",
            LaunchError::WrongNode { .. } => "wrong_node",
            LaunchError::AtCapacity { .. } => "at_capacity",
            LaunchError::Refused { .. } => "refused",
            LaunchError::Unavailable { .. } | LaunchError::List { .. } => "unavailable",
        }
    }

    /// Whether the same request may launch on a later try: the node was at capacity or the
    /// API server failed. A refusal or an unusable request stays so.
    pub fn retry_later(&self) -> bool {
        matches!(
            self,
            LaunchError::AtCapacity { .. }
                | LaunchError::Unavailable { .. }
                | LaunchError::List { .. }
        )
    }
}

/// Whether a failed create is worth retrying: the API server was unreachable, throttled
/// or failed internally. A refusal is final.
pub fn retryable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// The wait before attempt `attempt` (1-based, after a failure): `first`, doubling, at
/// most a minute.
pub fn backoff(first: Duration, attempt: u32) -> Duration {
    first
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(Duration::from_secs(60))
}

/// Launches and reaps the workload pods of one node.
pub struct Launcher {
    client: kube::Client,
    pods: Api<Pod>,
    node: String,
    cfg: LauncherConfig,
    // One launch at a time: the capacity check and the create must not interleave.
    launching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Launcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launcher")
            .field("node", &self.node)
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Launcher {
    /// A launcher for `node`.
    pub fn new(client: kube::Client, node: impl Into<String>, cfg: LauncherConfig) -> Self {
        Self {
            pods: Api::namespaced(client.clone(), &cfg.pod.namespace),
            client,
            node: node.into(),
            cfg,
            launching: tokio::sync::Mutex::new(()),
        }
    }

    /// The node it launches on.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The configuration.
    pub fn config(&self) -> &LauncherConfig {
        &self.cfg
    }

    /// Creates the pod for `req` unless it exists; see the module docs.
    pub async fn launch(&self, req: &WorkloadRequest) -> Result<Launched, LaunchError> {
        if req.node != self.node {
            return Err(LaunchError::WrongNode {
                id: req.id.clone(),
                requested: req.node.clone(),
                own: self.node.clone(),
            });
        }
        let pod = spec::build(req, &self.cfg.pod)?;
        let name = req.pod_name();
        let _one_at_a_time = self.launching.lock().await;
        let alive = self.alive_pods().await?;
        if alive.contains(&name) {
            return Ok(Launched::AlreadyExists(name));
        }
        if alive.len() >= self.cfg.max_pods {
            return Err(LaunchError::AtCapacity {
                node: self.node.clone(),
                running: alive.len(),
                limit: self.cfg.max_pods,
                id: req.id.clone(),
            });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.pods.create(&PostParams::default(), &pod).await {
                Ok(_) => {
                    tracing::info!(pod = %name, node = %self.node, kind = req.kind.as_str(), "workload pod created");
                    return Ok(Launched::Created(name));
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() => {
                    return Ok(Launched::AlreadyExists(name));
                }
                Err(e) if retryable(&e) && attempt < self.cfg.create_attempts => {
                    let wait = backoff(self.cfg.first_backoff, attempt);
                    tracing::warn!(pod = %name, error = %e, attempt, ?wait, "creating the workload pod failed; retrying");
                    tokio::time::sleep(wait).await;
                }
                Err(kube::Error::Api(s)) if !retryable_status(s.code) => {
                    return Err(LaunchError::Refused {
                        namespace: self.cfg.pod.namespace.clone(),
                        pod: name,
                        code: s.code,
                        reason: s.reason.clone(),
                        message: s.message.clone(),
                    });
                }
                Err(last) => {
                    return Err(LaunchError::Unavailable {
                        namespace: self.cfg.pod.namespace.clone(),
                        pod: name,
                        attempts: attempt,
                        last,
                    });
                }
            }
        }
    }

    /// The names of this node's workload pods that are neither finished nor being deleted.
    async fn alive_pods(&self) -> Result<Vec<String>, LaunchError> {
        Ok(self
            .node_pods()
            .await?
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && !reap::finished(p))
            .filter_map(|p| p.metadata.name)
            .collect())
    }

    async fn node_pods(&self) -> Result<Vec<Pod>, LaunchError> {
        let lp = ListParams::default().labels(&spec::node_selector_labels(&self.node));
        self.pods
            .list(&lp)
            .await
            .map(|l| l.items)
            .map_err(|source| LaunchError::List {
                node: self.node.clone(),
                namespace: self.cfg.pod.namespace.clone(),
                source,
            })
    }

    /// Deletes this node's workload pods that are done (see the module docs); returns the
    /// pods deleted and why. A failure to delete one pod is logged and does not stop the
    /// others.
    pub async fn reap(&self) -> Result<Vec<(String, ReapReason)>, LaunchError> {
        let now = jiff::Timestamp::now();
        let mut deleted = Vec::new();
        for pod in self.node_pods().await? {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let Some(name) = pod.metadata.name.clone() else {
                continue;
            };
            let reason = match reap_reason(&pod, now, self.cfg.finished_ttl) {
                Some(r) => Some(r),
                None => self.owner_gone(&pod).await.then_some(ReapReason::OwnerGone),
            };
            let Some(reason) = reason else { continue };
            match self.pods.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(pod = %name, reason = reason.as_str(), "workload pod deleted");
                    deleted.push((name, reason));
                }
                Err(kube::Error::Api(s)) if s.is_not_found() => {}
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "deleting the workload pod failed")
                }
            }
        }
        Ok(deleted)
    }

    /// [`Self::reap`], logging a failure (the next call tries again).
    pub async fn reap_logged(&self) {
        if let Err(e) = self.reap().await {
            tracing::warn!(error = %e, "cannot reap finished workload pods");
        }
    }

    /// Whether the pod records an owner in another namespace that no longer exists (by
    /// UID: an object recreated under the same name is another owner). When the owner
    /// cannot be read (RBAC, API down) the pod is kept: its deadline and TTL still end it.
    async fn owner_gone(&self, pod: &Pod) -> bool {
        let Some(owner) = reap::label_owner(pod) else {
            return false;
        };
        let (group, version) = owner
            .api_version
            .split_once('/')
            .unwrap_or(("", owner.api_version.as_str()));
        let gvk = GroupVersionKind::gvk(group, version, &owner.kind);
        let ar = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &owner.namespace, &ar);
        match api.get_metadata_opt(&owner.name).await {
            Ok(None) => true,
            Ok(Some(o)) => o.metadata.uid.as_deref() != Some(owner.uid.as_str()),
            Err(e) => {
                tracing::warn!(owner = %format!("{}/{}", owner.namespace, owner.name), error = %e,
                    "cannot tell whether the workload pod's owner exists; keeping the pod");
                false
            }
        }
    }
}

fn retryable_status(code: u16) -> bool {
    code == 429 || code >= 500
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            reason: reason.into(),
            message: "m".into(),
            ..Default::default()
        }))
    }

    #[test]
    fn only_transient_failures_are_retried() {
        assert!(retryable(&api_error(500, "InternalError")));
        assert!(retryable(&api_error(503, "ServiceUnavailable")));
        assert!(retryable(&api_error(429, "TooManyRequests")));
        assert!(
            !retryable(&api_error(403, "Forbidden")),
            "a webhook denial is final"
        );
        assert!(!retryable(&api_error(422, "Invalid")));
        assert!(!retryable(&api_error(409, "AlreadyExists")));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = Duration::from_secs(1);
        assert_eq!(backoff(s, 1), Duration::from_secs(1));
        assert_eq!(backoff(s, 2), Duration::from_secs(2));
        assert_eq!(backoff(s, 4), Duration::from_secs(8));
        assert_eq!(backoff(s, 40), Duration::from_secs(60));
    }

    #[test]
    fn errors_say_what_to_do() {
        let e = LaunchError::AtCapacity {
            node: "n1".into(),
            running: 2,
            limit: 2,
            id: "abcd1234".into(),
        };
        assert_eq!(
            e.to_string(),
            "node n1 already runs 2 workload pods (limit 2); workload abcd1234 waits for one to finish"
        );
        assert_eq!(e.label(), "at_capacity");
    }
}
