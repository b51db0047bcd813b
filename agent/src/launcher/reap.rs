//! When a workload pod is done with: pure decisions over a pod's status and metadata, so
//! that each rule is tested without an API server.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use lotabots_crds::labels;

/// Why a workload pod is deleted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReapReason {
    /// It succeeded: its result has been posted.
    Succeeded,
    /// It failed, and has been kept for the TTL.
    FailedTtl,
    /// It never finished, and its deadline plus the TTL has passed.
    Expired,
    /// Its owner (in another namespace) is gone.
    OwnerGone,
}

impl ReapReason {
    /// A short label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            ReapReason::Succeeded => "succeeded",
            ReapReason::FailedTtl => "failed_ttl",
            ReapReason::Expired => "expired",
            ReapReason::OwnerGone => "owner_gone",
        }
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or_default()
}

/// Whether the pod has ended (`Succeeded` or `Failed`).
pub fn finished(pod: &Pod) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

/// When the pod ended: the last container termination, else its start, else its creation.
fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref();
    status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| status.and_then(|s| s.start_time.as_ref()).map(|t| t.0))
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

/// Whether `pod` is to be deleted at `now` without looking at its owner.
pub fn reap_reason(pod: &Pod, now: Timestamp, ttl: Duration) -> Option<ReapReason> {
    let older_than = |t: Option<Timestamp>, d: Duration| {
        t.is_some_and(|t| {
            jiff::SignedDuration::try_from(d)
                .ok()
                .and_then(|d| t.checked_add(d).ok())
                .is_some_and(|end| end <= now)
        })
    };
    match phase(pod) {
        "Succeeded" => Some(ReapReason::Succeeded),
        "Failed" => older_than(finished_at(pod), ttl).then_some(ReapReason::FailedTtl),
        _ => {
            // Pending (unschedulable, image not pulled) or Running past what its deadline
            // allows: the deadline counts from the start, which a pod that never starts
            // does not have, so count from creation.
            let deadline = pod
                .spec
                .as_ref()
                .and_then(|s| s.active_deadline_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .map_or(Duration::ZERO, Duration::from_secs);
            let created = pod.metadata.creation_timestamp.as_ref().map(|t| t.0);
            older_than(created, deadline.saturating_add(ttl)).then_some(ReapReason::Expired)
        }
    }
}

/// The owner a pod records by label and annotations (see
/// [`super::spec::owner_metadata`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelOwner {
    /// `apiVersion`.
    pub api_version: String,
    /// Kind.
    pub kind: String,
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID.
    pub uid: String,
}

/// The pod's label-recorded owner, if it has a complete one.
pub fn label_owner(pod: &Pod) -> Option<LabelOwner> {
    let uid = pod
        .metadata
        .labels
        .as_ref()?
        .get(labels::OWNER_UID)?
        .clone();
    let ann = pod.metadata.annotations.as_ref()?;
    let get = |k: &str| ann.get(k).filter(|v| !v.is_empty()).cloned();
    Some(LabelOwner {
        api_version: get(labels::OWNER_API_VERSION_ANNOTATION)?,
        kind: get(labels::OWNER_KIND_ANNOTATION)?,
        namespace: get(labels::OWNER_NAMESPACE_ANNOTATION)?,
        name: get(labels::OWNER_NAME_ANNOTATION)?,
        uid,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateTerminated, ContainerStatus, PodSpec, PodStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const TTL: Duration = Duration::from_secs(600);

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn pod(phase: &str, created: &str, finished: Option<&str>) -> Pod {
        let mut p = Pod::default();
        p.metadata.creation_timestamp = Some(Time(ts(created)));
        p.spec = Some(PodSpec {
            active_deadline_seconds: Some(300),
            ..Default::default()
        });
        p.status = Some(PodStatus {
            phase: Some(phase.into()),
            container_statuses: finished.map(|f| {
                vec![ContainerStatus {
                    name: "workload".into(),
                    state: Some(ContainerState {
                        terminated: Some(ContainerStateTerminated {
                            finished_at: Some(Time(ts(f))),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        });
        p
    }

    #[test]
    fn a_succeeded_pod_goes_at_once() {
        let p = pod(
            "Succeeded",
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:01:00Z"),
        );
        assert_eq!(
            reap_reason(&p, ts("2026-01-01T00:01:01Z"), TTL),
            Some(ReapReason::Succeeded)
        );
    }

    #[test]
    fn a_failed_pod_is_kept_for_the_ttl() {
        let p = pod(
            "Failed",
            "2026-01-01T00:00:00Z",
            Some("2026-01-01T00:01:00Z"),
        );
        assert_eq!(reap_reason(&p, ts("2026-01-01T00:10:59Z"), TTL), None);
        assert_eq!(
            reap_reason(&p, ts("2026-01-01T00:11:00Z"), TTL),
            Some(ReapReason::FailedTtl)
        );
    }

    #[test]
    fn a_pod_that_never_finishes_goes_after_deadline_plus_ttl() {
        let p = pod("Pending", "2026-01-01T00:00:00Z", None);
        assert_eq!(reap_reason(&p, ts("2026-01-01T00:14:59Z"), TTL), None);
        assert_eq!(
            reap_reason(&p, ts("2026-01-01T00:15:00Z"), TTL),
            Some(ReapReason::Expired)
        );
        let running = pod("Running", "2026-01-01T00:00:00Z", None);
        assert_eq!(reap_reason(&running, ts("2026-01-01T00:04:00Z"), TTL), None);
        assert!(!finished(&running) && !finished(&p));
    }

    #[test]
    fn label_owner_needs_every_coordinate() {
        let mut p = Pod::default();
        assert_eq!(label_owner(&p), None);
        let owner = lotabots_crds::workload::WorkloadOwner {
            api_version: "lotabots.io/v1alpha1".into(),
            kind: "ModelAttestation".into(),
            name: "m".into(),
            uid: "u-1".into(),
            namespace: Some("team-a".into()),
        };
        super::super::spec::owner_metadata(&owner, "lotabots-workloads", &mut p.metadata);
        assert_eq!(
            label_owner(&p),
            Some(LabelOwner {
                api_version: "lotabots.io/v1alpha1".into(),
                kind: "ModelAttestation".into(),
                namespace: "team-a".into(),
                name: "m".into(),
                uid: "u-1".into(),
            })
        );
        p.metadata
            .annotations
            .as_mut()
            .unwrap()
            .remove(labels::OWNER_NAME_ANNOTATION);
        assert_eq!(label_owner(&p), None);
    }
}
