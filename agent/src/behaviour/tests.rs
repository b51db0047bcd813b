//! [`super::probe_request`] from ModelAttestation fixtures, and what [`super::Launches`]
//! remembers.

use super::*;
use serde_json::json;

const NODE: &str = "gpu-node-a";
const ID: &str = "0123456789abcdef0123456789abcdef";

fn at(s: &str) -> Timestamp {
    s.parse().expect("a timestamp")
}

/// Requested at 12:00:00 with a 15 m timeout, for [`NODE`], no result yet.
fn ma() -> ModelAttestation {
    serde_json::from_value(json!({
        "apiVersion": "lotabots.io/v1alpha1",
        "kind": "ModelAttestation",
        "metadata": {"name": "minilm", "namespace": "team-a", "uid": "6f1c2d9e-0000-4000-8000-000000000002"},
        "spec": {
            "source": {"uri": "s3://models/minilm"},
            "integrity": {"algorithm": "blake3", "shardSizeBytes": 1048576},
            "behaviour": {
                "image": "ghcr.io/lotabots/probes@sha256:cc",
                "probes": {"name": "suite", "key": "suite.yaml"},
                "gpuCount": 2,
                "timeout": "15m"
            }
        },
        "status": {"behaviour": {
            "requestId": ID,
            "node": NODE,
            "nonce": "ab".repeat(32),
            "evidenceDigest": format!("sha256:{}", "01".repeat(32)),
            "manifestDigest": format!("blake3:{}", "02".repeat(32)),
            "suiteDigest": format!("sha256:{}", "03".repeat(32)),
            "modelBytes": 1_000_000_000u64,
            "requestedAt": "2026-11-29T12:00:00Z"
        }}
    }))
    .expect("a valid ModelAttestation")
}

fn behaviour(ma: &mut ModelAttestation) -> &mut BehaviourStatus {
    ma.status.as_mut().unwrap().behaviour.as_mut().unwrap()
}

fn request_at(ma: &ModelAttestation, now: &str) -> Option<WorkloadRequest> {
    probe_request(ma, NODE, at(now)).expect("a usable request")
}

#[test]
fn a_pending_request_for_this_node_becomes_one_probe_pod() {
    let req = request_at(&ma(), "2026-11-29T12:05:00Z").expect("launched");
    assert_eq!(req.id, ID);
    assert_eq!(req.kind, WorkloadKind::BehaviourProbes);
    assert_eq!(req.pod_name(), format!("behaviour-probes-{ID}"));
    assert_eq!(req.image, "ghcr.io/lotabots/probes@sha256:cc");
    assert_eq!(req.node, NODE);
    assert_eq!(req.nonce, "ab".repeat(32));
    assert_eq!(
        req.owner,
        WorkloadOwner {
            api_version: "lotabots.io/v1alpha1".into(),
            kind: "ModelAttestation".into(),
            name: "minilm".into(),
            uid: "6f1c2d9e-0000-4000-8000-000000000002".into(),
            namespace: Some("team-a".into()),
        }
    );
    assert_eq!(
        req.resources,
        GpuResources {
            gpu_count: Some(2),
            mig_profile: None
        }
    );
    assert_eq!(
        req.deadline_seconds, 600,
        "what is left of the 15 m timeout after 5 m"
    );
    crate::launcher::spec::validate(&req).expect("a request the launcher accepts");
}

#[test]
fn the_deadline_is_the_timeout_left_rounded_up_and_never_more_than_the_timeout() {
    let left = |now: &str| request_at(&ma(), now).map(|r| r.deadline_seconds);
    assert_eq!(left("2026-11-29T12:00:00Z"), Some(900));
    assert_eq!(left("2026-11-29T12:14:59.5Z"), Some(1));
    assert_eq!(
        left("2026-11-29T11:00:00Z"),
        Some(900),
        "an operator clock ahead of ours"
    );
}

#[test]
fn a_timed_out_request_is_not_launched() {
    assert!(request_at(&ma(), "2026-11-29T12:15:00Z").is_none());
    assert!(request_at(&ma(), "2026-11-30T00:00:00Z").is_none());
    let mut longer = ma();
    longer.spec.behaviour.as_mut().unwrap().timeout = "1h".into();
    assert!(request_at(&longer, "2026-11-29T12:15:00Z").is_some());
}

#[test]
fn a_request_for_another_node_is_not_launched() {
    let mut other = ma();
    behaviour(&mut other).node = "gpu-node-b".into();
    assert!(request_at(&other, "2026-11-29T12:01:00Z").is_none());
    assert!(
        probe_request(&ma(), "gpu-node-b", at("2026-11-29T12:01:00Z"))
            .unwrap()
            .is_none()
    );
}

#[test]
fn a_request_with_a_result_is_not_launched_again() {
    let mut done = ma();
    behaviour(&mut done).result = Some(
        serde_json::from_value(json!({"passed": true, "finishedAt": "2026-11-29T12:03:00Z"}))
            .unwrap(),
    );
    assert!(request_at(&done, "2026-11-29T12:04:00Z").is_none());
}

#[test]
fn nothing_without_a_request_or_without_spec_behaviour() {
    let mut none = ma();
    none.status.as_mut().unwrap().behaviour = None;
    assert!(request_at(&none, "2026-11-29T12:01:00Z").is_none());
    let mut dropped = ma();
    dropped.spec.behaviour = None;
    assert!(request_at(&dropped, "2026-11-29T12:01:00Z").is_none());
}

#[test]
fn a_malformed_request_id_is_refused_naming_the_object() {
    for bad in [
        "0123456789ABCDEF0123456789ABCDEF",
        "0123456789abcdef",
        "0123456789abcdef0123456789abcdef00",
        "../../0123456789abcdef0123456789a",
        "",
    ] {
        let mut m = ma();
        behaviour(&mut m).request_id = bad.into();
        let err = probe_request(&m, NODE, at("2026-11-29T12:01:00Z")).unwrap_err();
        assert!(matches!(err, RequestError::BadRequestId { .. }), "{bad:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("team-a/minilm") && msg.contains("requestId"),
            "{msg}"
        );
    }
    assert!(is_request_id(ID));
}

#[test]
fn a_malformed_timeout_is_refused_naming_the_object() {
    let mut m = ma();
    m.spec.behaviour.as_mut().unwrap().timeout = "soon".into();
    let err = probe_request(&m, NODE, at("2026-11-29T12:01:00Z")).unwrap_err();
    assert!(err.to_string().contains("team-a/minilm"), "{err}");
    assert!(err.to_string().contains("spec.behaviour.timeout"), "{err}");
}

#[test]
fn the_runner_is_told_where_to_fetch_to_and_what_to_check_against() {
    let req = request_at(&ma(), "2026-11-29T12:01:00Z").unwrap();
    let want = BTreeMap::from(
        [
            ("fetch", "operator".to_string()),
            ("modelDir", "/work/model".into()),
            ("suite", "/work/suite.yaml".into()),
            ("manifestDigest", format!("blake3:{}", "02".repeat(32))),
            ("suiteDigest", format!("sha256:{}", "03".repeat(32))),
            ("hashAlgorithm", "blake3".into()),
            ("shardSizeBytes", "1048576".into()),
        ]
        .map(|(k, v)| (k.to_string(), v)),
    );
    assert_eq!(req.params, want);
    assert!(
        MODEL_DIR.starts_with(lotabots_crds::workload::SCRATCH_DIR)
            && SUITE_FILE.starts_with(lotabots_crds::workload::SCRATCH_DIR),
        "both on the scratch volume"
    );

    let mut whole_files = ma();
    whole_files.spec.integrity = Default::default();
    let params = request_at(&whole_files, "2026-11-29T12:01:00Z")
        .unwrap()
        .params;
    assert_eq!(params["hashAlgorithm"], "sha256");
    assert!(!params.contains_key("shardSizeBytes"));
}

#[test]
fn scratch_holds_the_model_and_suite_with_headroom() {
    let req = request_at(&ma(), "2026-11-29T12:01:00Z").unwrap();
    // (1e9 + 1 MiB) * 1.1, rounded up.
    assert_eq!(req.scratch_bytes, Some(1_101_153_434));
    assert_eq!(scratch_bytes(0), MIN_SCRATCH_BYTES, "at least 64 MiB");
    assert_eq!(scratch_bytes(1 << 20), MIN_SCRATCH_BYTES);
    assert_eq!(
        scratch_bytes(100 << 20),
        (101 << 20) + (101u64 << 20).div_ceil(10)
    );
    assert_eq!(scratch_bytes(u64::MAX), u64::MAX, "saturates");
}

#[test]
fn a_mig_profile_is_passed_on() {
    let mut m = ma();
    let check = m.spec.behaviour.as_mut().unwrap();
    check.gpu_count = None;
    check.mig_profile = Some("1g.10gb".into());
    let req = request_at(&m, "2026-11-29T12:01:00Z").unwrap();
    assert_eq!(req.resources.mig_profile.as_deref(), Some("1g.10gb"));
    assert_eq!(req.resources.gpu_count, None);
}

#[test]
fn each_usable_request_of_the_list_and_each_problem_is_reported() {
    let mut bad = ma();
    behaviour(&mut bad).request_id = "nope".into();
    bad.metadata.name = Some("broken".into());
    let mut other = ma();
    behaviour(&mut other).node = "gpu-node-b".into();
    let all = [ma(), bad, other];
    let planned = probe_requests(&all, NODE, at("2026-11-29T12:01:00Z"));
    assert_eq!(planned.len(), 2);
    assert_eq!(planned[0].as_ref().unwrap().id, ID);
    assert!(
        planned[1]
            .as_ref()
            .unwrap_err()
            .to_string()
            .contains("team-a/broken")
    );
}

fn at_capacity() -> LaunchError {
    LaunchError::AtCapacity {
        node: NODE.into(),
        running: 2,
        limit: 2,
        id: ID.into(),
    }
}

fn refused() -> LaunchError {
    LaunchError::Refused {
        namespace: "lotabots-workloads".into(),
        pod: "p".into(),
        code: 403,
        reason: "Forbidden".into(),
        message: "m".into(),
    }
}

#[test]
fn a_launched_id_is_not_launched_again_until_no_longer_requested() {
    let planned = probe_requests([&ma()], NODE, at("2026-11-29T12:01:00Z"));
    let mut launches = Launches::default();
    launches.retain(&planned);
    assert!(launches.is_new(ID));
    launches.record(ID, Ok(()));
    assert!(!launches.is_new(ID), "a reaped pod is not recreated");
    launches.retain(&planned);
    assert!(!launches.is_new(ID), "still requested: still remembered");
    launches.retain(&[]);
    assert!(
        launches.is_new(ID) && launches.is_empty(),
        "forgotten once done"
    );
}

#[test]
fn capacity_and_transient_failures_are_retried_refusals_are_not() {
    let mut launches = Launches::default();
    launches.record(ID, Err(&at_capacity()));
    assert!(launches.is_new(ID), "retried on the next pass");
    launches.record(ID, Err(&refused()));
    assert!(!launches.is_new(ID), "a refusal is not retried every 30 s");
    assert_eq!(launches.len(), 1);
}

#[test]
fn a_problem_is_reported_once_while_it_lasts() {
    let mut bad = ma();
    behaviour(&mut bad).request_id = "nope".into();
    let planned = probe_requests([&bad], NODE, at("2026-11-29T12:01:00Z"));
    let problem = planned[0].clone().unwrap_err();
    let mut launches = Launches::default();
    assert!(launches.first_report(&problem));
    launches.retain(&planned);
    assert!(!launches.first_report(&problem));
    launches.retain(&[]);
    assert!(
        launches.first_report(&problem),
        "reported again after it went away"
    );
}
