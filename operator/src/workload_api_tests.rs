//! The workload API through its in-process router, with a scripted TokenReview and pod
//! store: an honest pod's result is stored, and every refusal is named, counted and
//! stores nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::body::Body;
use axum::http::Request;
use http_body_util::BodyExt;
use k8s_openapi::api::authentication::v1::UserInfo;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use lotabots_crds::workload::{
    BandwidthCheck, DeviceSelfTest, MatmulCheck, MemoryCheck, SelfTestReport,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::evidence_api::{AcceptedEvidence, EvidenceSink};

pub(super) const WORKLOAD_SA: &str = "lotabots-workloads/lotabots-workload";
pub(super) const NONCE_A: &str = "aa00000000000000000000000000000000000000000000000000000000000000";
const NONCE_B: &str = "bb00000000000000000000000000000000000000000000000000000000000000";

/// Token → review status.
pub(super) struct Reviews(pub(super) HashMap<&'static str, TokenReviewStatus>);

impl TokenReviewer for Reviews {
    fn review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<TokenReviewStatus, String>> {
        let found = self.0.get(token).cloned();
        Box::pin(async move {
            Ok(found.unwrap_or(TokenReviewStatus {
                authenticated: Some(false),
                error: Some("invalid bearer token".into()),
                ..Default::default()
            }))
        })
    }
}

/// Pods by `namespace/name`; removable, to play a deleted pod.
#[derive(Default)]
pub(super) struct Pods(pub(super) Mutex<HashMap<String, Pod>>);

impl PodSource for Pods {
    fn pod<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Pod>, String>> {
        let found = self
            .0
            .lock()
            .unwrap()
            .get(&format!("{namespace}/{name}"))
            .cloned();
        Box::pin(async move { Ok(found) })
    }
}

/// A review of a token of `user`, bound to pod `pod` (UID `uid-<pod>`) on `node`.
pub(super) fn review(user: &str, pod: Option<&str>, node: Option<&str>) -> TokenReviewStatus {
    let mut extra = BTreeMap::new();
    if let Some(p) = pod {
        extra.insert(POD_NAME_EXTRA.to_owned(), vec![p.to_owned()]);
        extra.insert(POD_UID_EXTRA.to_owned(), vec![format!("uid-{p}")]);
    }
    if let Some(n) = node {
        extra.insert(NODE_NAME_EXTRA.to_owned(), vec![n.to_owned()]);
    }
    TokenReviewStatus {
        authenticated: Some(true),
        audiences: Some(vec![AUDIENCE.into()]),
        user: Some(UserInfo {
            username: Some(user.into()),
            extra: Some(extra),
            ..Default::default()
        }),
        error: None,
    }
}

pub(super) const WORKLOAD_USER: &str = "system:serviceaccount:lotabots-workloads:lotabots-workload";

/// A workload pod on `node`, labelled with `request`, owned by GpuAttestation `fleet`.
fn pod(name: &str, node: &str, request: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("lotabots-workloads".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([(
                labels::WORKLOAD_ID.to_owned(),
                request.to_owned(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "lotabots.io/v1alpha1".into(),
                kind: "GpuAttestation".into(),
                name: "fleet".into(),
                uid: "att-uid".into(),
                ..Default::default()
            }]),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn evidence(node: &str, nonce: &str) -> AcceptedEvidence {
    crate::test_evidence::accepted(node, nonce, Timestamp::now(), 0, &[], "sha256:00")
}

/// A passing (simulated or not) self-test result of `request` on `node`.
fn result(request: &str, node: &str, nonce: &str, simulated: bool) -> WorkloadResult {
    WorkloadResult {
        schema_version: RESULT_SCHEMA_VERSION.into(),
        request_id: request.into(),
        kind: WorkloadKind::GpuSelfTest,
        nonce: nonce.into(),
        node: node.into(),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        passed: true,
        error: None,
        self_test: Some(SelfTestReport {
            simulated,
            driver_version: Some(12080),
            devices: vec![DeviceSelfTest {
                ordinal: 0,
                uuid: "GPU-0".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                matmul: MatmulCheck {
                    n: 1024,
                    max_abs_error: 1e-5,
                    tolerance: 1e-3,
                    gflops: 40_000.0,
                    passed: true,
                },
                memory: MemoryCheck {
                    bytes_tested: 1 << 30,
                    share: 0.5,
                    errors: 0,
                    passed: true,
                },
                bandwidth: BandwidthCheck {
                    bytes: 1 << 28,
                    gbps: 2500.0,
                },
            }],
        }),
        probes: None,
    }
}

struct Fixture {
    router: Router,
    results: Arc<WorkloadResults>,
    evidence: Arc<LatestEvidence>,
    pods: Arc<Pods>,
    metrics: WorkloadMetrics,
}

fn fixture(accept_simulated: bool) -> Fixture {
    let reviews = Reviews(HashMap::from([
        ("tok-a", review(WORKLOAD_USER, Some("st-a"), Some("node-a"))),
        ("tok-b", review(WORKLOAD_USER, Some("st-b"), Some("node-b"))),
        (
            "tok-agent",
            review(
                "system:serviceaccount:lotabots-system:lotabots-agent",
                Some("agent-a"),
                Some("node-a"),
            ),
        ),
        ("tok-unbound", review(WORKLOAD_USER, None, Some("node-a"))),
        ("tok-no-node", review(WORKLOAD_USER, Some("st-a"), None)),
        (
            "tok-gone",
            review(WORKLOAD_USER, Some("st-gone"), Some("node-a")),
        ),
        (
            "tok-other-request",
            review(WORKLOAD_USER, Some("st-other"), Some("node-a")),
        ),
        (
            "tok-wrong-aud",
            TokenReviewStatus {
                audiences: Some(vec!["https://kubernetes.default.svc".into()]),
                ..review(WORKLOAD_USER, Some("st-a"), Some("node-a"))
            },
        ),
    ]));
    let pods = Arc::new(Pods::default());
    {
        let mut map = pods.0.lock().unwrap();
        for p in [
            pod("st-a", "node-a", "aa01"),
            pod("st-b", "node-b", "bb01"),
            pod("st-other", "node-a", "ffff"),
        ] {
            map.insert(
                format!("lotabots-workloads/{}", p.metadata.name.clone().unwrap()),
                p,
            );
        }
    }
    let evidence = Arc::new(LatestEvidence::default());
    evidence.accept(evidence_of("node-a", NONCE_A));
    evidence.accept(evidence_of("node-b", NONCE_B));
    let results = Arc::new(WorkloadResults::default());
    let metrics = WorkloadMetrics::register(&Registry::new()).unwrap();
    let api = Arc::new(WorkloadApi::new(
        Arc::new(reviews),
        pods.clone(),
        evidence.clone(),
        results.clone(),
        WorkloadSettings {
            service_account: WORKLOAD_SA.into(),
            accept_simulated,
        },
        metrics.clone(),
    ));
    Fixture {
        router: api.router(),
        results,
        evidence,
        pods,
        metrics,
    }
}

fn evidence_of(node: &str, nonce: &str) -> AcceptedEvidence {
    evidence(node, nonce)
}

async fn post(f: &Fixture, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut req = Request::post(RESULT_PATH).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = f
        .router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    if !status.is_success() {
        assert_eq!(
            resp.headers()[header::CONTENT_TYPE],
            PROBLEM_JSON,
            "refusals are problem documents"
        );
    }
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn body(r: &WorkloadResult) -> Vec<u8> {
    serde_json::to_vec(r).unwrap()
}

/// Posts `body` with `token`, expects a refusal with `status` and `code` whose detail
/// contains `detail`, and checks that nothing was stored and the refusal was counted.
async fn refused(
    f: &Fixture,
    token: Option<&str>,
    body: Vec<u8>,
    status: StatusCode,
    code: &str,
    detail: &str,
) {
    let before = f.metrics.results(code);
    let stored = f.results.len();
    let (got, problem) = post(f, token, body).await;
    assert_eq!(got, status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    assert_eq!(
        problem["type"],
        format!("https://lotabots.io/problems/{code}")
    );
    assert_eq!(problem["status"], status.as_u16());
    let text = problem["detail"].as_str().unwrap();
    assert!(text.contains(detail), "{code}: {text:?} lacks {detail:?}");
    assert_eq!(f.metrics.results(code), before + 1, "{code} is counted");
    assert_eq!(f.results.len(), stored, "{code}: nothing is stored");
    assert_eq!(f.metrics.results("accepted"), 0, "{code}");
}

#[tokio::test]
async fn an_honest_pod_result_is_stored_under_its_node_and_owner() {
    let f = fixture(false);
    let r = result("aa01", "node-a", NONCE_A, false);
    let (status, receipt) = post(&f, Some("tok-a"), body(&r)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    assert_eq!(
        receipt,
        json!({"node": "node-a", "requestId": "aa01", "attestation": "fleet"})
    );
    let stored = f.results.get("node-a", "fleet").unwrap();
    assert_eq!(stored.result, r);
    assert_eq!(
        stored.attestation,
        AttestationRef {
            name: "fleet".into(),
            uid: "att-uid".into()
        }
    );
    assert_eq!(stored.pod, "lotabots-workloads/st-a");
    assert_eq!(f.metrics.results("accepted"), 1);
    // A retry after a lost response is answered, not stored twice.
    let (status, _) = post(&f, Some("tok-a"), body(&r)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.metrics.results("duplicate"), 1);
    // The same request may not change its answer.
    let mut changed = r.clone();
    changed.passed = false;
    let before = f.metrics.results("already_reported");
    let (status, problem) = post(&f, Some("tok-a"), body(&changed)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "already_reported");
    assert_eq!(f.metrics.results("already_reported"), before + 1);
    assert_eq!(f.results.get("node-a", "fleet").unwrap().result, r);
}

#[tokio::test]
async fn callers_that_are_not_a_workload_pod_are_refused() {
    let f = fixture(true);
    let good = body(&result("aa01", "node-a", NONCE_A, false));
    refused(
        &f,
        None,
        good.clone(),
        StatusCode::UNAUTHORIZED,
        "missing_token",
        "missing bearer token",
    )
    .await;
    refused(
        &f,
        Some("tok-forged"),
        good.clone(),
        StatusCode::UNAUTHORIZED,
        "token_rejected",
        "invalid bearer token",
    )
    .await;
    refused(
        &f,
        Some("tok-wrong-aud"),
        good.clone(),
        StatusCode::FORBIDDEN,
        "wrong_audience",
        "kubernetes.default.svc",
    )
    .await;
    // The agent's own ServiceAccount is not the workload's.
    refused(
        &f,
        Some("tok-agent"),
        good.clone(),
        StatusCode::FORBIDDEN,
        "not_workload_account",
        "lotabots-system:lotabots-agent is not the workload ServiceAccount lotabots-workloads/lotabots-workload",
    )
    .await;
    refused(
        &f,
        Some("tok-unbound"),
        good.clone(),
        StatusCode::FORBIDDEN,
        "not_pod_bound",
        POD_NAME_EXTRA,
    )
    .await;
    refused(
        &f,
        Some("tok-no-node"),
        good,
        StatusCode::FORBIDDEN,
        "not_pod_bound",
        NODE_NAME_EXTRA,
    )
    .await;
}

#[tokio::test]
async fn the_pod_must_exist_run_on_the_node_and_carry_the_request() {
    let f = fixture(true);
    // The token's pod is gone (the API server would refuse its token too, but the
    // operator does not rely on that alone).
    refused(
        &f,
        Some("tok-gone"),
        body(&result("aa01", "node-a", NONCE_A, false)),
        StatusCode::FORBIDDEN,
        "pod_mismatch",
        "lotabots-workloads/st-gone: does not exist",
    )
    .await;
    // A pod launched for another request cannot post this one's result.
    refused(
        &f,
        Some("tok-other-request"),
        body(&result("aa01", "node-a", NONCE_A, false)),
        StatusCode::FORBIDDEN,
        "wrong_request",
        "labelled lotabots.io/workload-id=Some(\"ffff\"), not the result's requestId \"aa01\"",
    )
    .await;
    // Replaced by a pod of the same name (another UID).
    f.pods
        .0
        .lock()
        .unwrap()
        .get_mut("lotabots-workloads/st-a")
        .unwrap()
        .metadata
        .uid = Some("uid-new".into());
    refused(
        &f,
        Some("tok-a"),
        body(&result("aa01", "node-a", NONCE_A, false)),
        StatusCode::FORBIDDEN,
        "pod_mismatch",
        "the pod was replaced",
    )
    .await;
    // Not owned by a GpuAttestation: nothing to file it under.
    {
        let mut pods = f.pods.0.lock().unwrap();
        let p = pods.get_mut("lotabots-workloads/st-b").unwrap();
        p.metadata.owner_references = None;
    }
    refused(
        &f,
        Some("tok-b"),
        body(&result("bb01", "node-b", NONCE_B, false)),
        StatusCode::FORBIDDEN,
        "no_owner",
        "not owned by a GpuAttestation",
    )
    .await;
}

#[tokio::test]
async fn a_result_is_bound_to_the_token_node_and_its_current_round() {
    let f = fixture(true);
    // Node b's pod claims node a.
    refused(
        &f,
        Some("tok-b"),
        body(&result("bb01", "node-a", NONCE_A, false)),
        StatusCode::FORBIDDEN,
        "wrong_node",
        "bound to a pod on node \"node-b\" but the result is for \"node-a\"",
    )
    .await;
    // Node b's nonce replayed onto node a.
    refused(
        &f,
        Some("tok-a"),
        body(&result("aa01", "node-a", NONCE_B, false)),
        StatusCode::CONFLICT,
        "stale_nonce",
        "is not the nonce of node \"node-a\"'s latest accepted evidence",
    )
    .await;
    // Accepted in its round, then the node re-attests: the same result is now a replay.
    let r = result("aa01", "node-a", NONCE_A, false);
    assert_eq!(
        post(&f, Some("tok-a"), body(&r)).await.0,
        StatusCode::ACCEPTED
    );
    let next = NONCE_B.replace("bb", "cc");
    f.evidence.accept(evidence_of("node-a", &next));
    let stored = f.results.len();
    let (status, problem) = post(&f, Some("tok-a"), body(&r)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{problem}");
    assert_eq!(problem["code"], "stale_nonce");
    assert_eq!(f.results.len(), stored);
}

#[tokio::test]
async fn a_node_without_evidence_has_no_round_to_bind_to() {
    let f = fixture(true);
    let reviews = Reviews(HashMap::from([(
        "tok-c",
        review(WORKLOAD_USER, Some("st-c"), Some("node-c")),
    )]));
    let api = Arc::new(WorkloadApi::new(
        Arc::new(reviews),
        f.pods.clone(),
        f.evidence.clone(),
        f.results.clone(),
        WorkloadSettings::default(),
        f.metrics.clone(),
    ));
    let g = Fixture {
        router: api.router(),
        ..f
    };
    refused(
        &g,
        Some("tok-c"),
        body(&result("cc01", "node-c", NONCE_A, false)),
        StatusCode::CONFLICT,
        "no_evidence",
        "node \"node-c\" has no accepted evidence",
    )
    .await;
}

#[tokio::test]
async fn simulated_results_need_the_operator_to_accept_them() {
    let strict = fixture(false);
    refused(
        &strict,
        Some("tok-a"),
        body(&result("aa01", "node-a", NONCE_A, true)),
        StatusCode::FORBIDDEN,
        "simulated_refused",
        "--accept-simulated-workloads",
    )
    .await;
    let lax = fixture(true);
    let (status, _) = post(
        &lax,
        Some("tok-a"),
        body(&result("aa01", "node-a", NONCE_A, true)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
}

#[tokio::test]
async fn malformed_foreign_and_oversized_results_are_refused() {
    let f = fixture(true);
    let good = result("aa01", "node-a", NONCE_A, false);
    let mut v = serde_json::to_value(&good).unwrap();
    v["schemaVersion"] = json!("lotabots.io/workload-result/v9");
    refused(
        &f,
        Some("tok-a"),
        serde_json::to_vec(&v).unwrap(),
        StatusCode::BAD_REQUEST,
        "unsupported_schema",
        "\"lotabots.io/workload-result/v9\" is not supported",
    )
    .await;
    let mut v = serde_json::to_value(&good).unwrap();
    v["selfTest"]["devices"][0]["matmul"]["gflops"] = json!("fast");
    refused(
        &f,
        Some("tok-a"),
        serde_json::to_vec(&v).unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed",
        "selfTest.devices[0].matmul.gflops",
    )
    .await;
    refused(
        &f,
        Some("tok-a"),
        b"{not json".to_vec(),
        StatusCode::BAD_REQUEST,
        "malformed",
        "not JSON",
    )
    .await;
    let mut passing_without_report = good.clone();
    passing_without_report.self_test = None;
    refused(
        &f,
        Some("tok-a"),
        body(&passing_without_report),
        StatusCode::BAD_REQUEST,
        "malformed",
        "a passing self-test must carry selfTest",
    )
    .await;
    let mut bad_id = good.clone();
    bad_id.request_id = "../../etc".into();
    let mut not_hex = good.clone();
    not_hex.request_id = "zz01".into();
    refused(
        &f,
        Some("tok-a"),
        body(&not_hex),
        StatusCode::BAD_REQUEST,
        "malformed",
        "requestId \"zz01\" must be 1 to 63 lowercase hex characters",
    )
    .await;
    refused(
        &f,
        Some("tok-a"),
        body(&bad_id),
        StatusCode::BAD_REQUEST,
        "malformed",
        "lowercase hex",
    )
    .await;
    let mut probes = good.clone();
    probes.kind = WorkloadKind::BehaviourProbes;
    refused(
        &f,
        Some("tok-a"),
        body(&probes),
        StatusCode::UNPROCESSABLE_ENTITY,
        "unsupported_kind",
        "behaviour-probes",
    )
    .await;
    refused(
        &f,
        Some("tok-a"),
        vec![b' '; MAX_RESULT_BYTES + 1],
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        "larger than 262144 bytes",
    )
    .await;
}

#[tokio::test]
async fn a_follower_sends_the_pod_to_the_leader() {
    let f = fixture(true);
    let leading = Arc::new(AtomicBool::new(false));
    let api = Arc::new(
        WorkloadApi::new(
            Arc::new(Reviews(HashMap::from([(
                "tok-a",
                review(WORKLOAD_USER, Some("st-a"), Some("node-a")),
            )]))),
            f.pods.clone(),
            f.evidence.clone(),
            f.results.clone(),
            WorkloadSettings::default(),
            f.metrics.clone(),
        )
        .leader_only(leading.clone()),
    );
    let g = Fixture {
        router: api.router(),
        ..f
    };
    let r = body(&result("aa01", "node-a", NONCE_A, false));
    refused(
        &g,
        Some("tok-a"),
        r.clone(),
        StatusCode::SERVICE_UNAVAILABLE,
        "not_leader",
        "does not lead",
    )
    .await;
    leading.store(true, Ordering::SeqCst);
    assert_eq!(post(&g, Some("tok-a"), r).await.0, StatusCode::ACCEPTED);
}

#[test]
fn settings_name_the_workload_namespace() {
    let s = WorkloadSettings::default();
    assert_eq!(s.service_account, WORKLOAD_SA);
    assert_eq!(s.namespace(), "lotabots-workloads");
    assert!(!s.accept_simulated);
}
