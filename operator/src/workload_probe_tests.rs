//! Behavioural-probe pods on the workload API, through its in-process router: an honest
//! pod fetches its suite and model and files its result; each binding (request, node,
//! nonce, digests, owner) refuses what does not match, names it and counts it.

use std::collections::{BTreeMap, HashMap};

use axum::body::Body;
use axum::http::Request;
use futures::StreamExt;
use http_body_util::BodyExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use lotabots_crds::workload::{ModelFile, ProbeOutcome, ProbeReport};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::tests::{NONCE_A, Pods, Reviews, WORKLOAD_SA, WORKLOAD_USER, evidence, review};
use super::*;
use crate::behaviour::ModelRef;
use crate::evidence_api::EvidenceSink;

const MA_UID: &str = "ma-uid";
const SUITE: &[u8] = b"probes:\n  - name: capital\n";

fn request_id() -> String {
    "ab".repeat(16)
}

fn manifest() -> String {
    format!("sha256:{}", "11".repeat(32))
}

/// A probe pod on `node` for `request`, launched for the ModelAttestation `owner_uid`.
fn probe_pod(name: &str, node: &str, request: &str, owner_uid: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("lotabots-workloads".into()),
            uid: Some(format!("uid-{name}")),
            labels: Some(BTreeMap::from([
                (labels::WORKLOAD_ID.to_owned(), request.to_owned()),
                (labels::OWNER_UID.to_owned(), owner_uid.to_owned()),
            ])),
            ..Default::default()
        },
        spec: Some(k8s_openapi::api::core::v1::PodSpec {
            node_name: Some(node.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

struct Fixture {
    router: Router,
    requests: Arc<BehaviourRequests>,
    metrics: WorkloadMetrics,
    model: tempfile::TempDir,
}

fn fixture() -> Fixture {
    let id = request_id();
    let reviews = Reviews(HashMap::from([
        ("tok-p", review(WORKLOAD_USER, Some("bp"), Some("node-a"))),
        (
            "tok-other-owner",
            review(WORKLOAD_USER, Some("bp-other"), Some("node-a")),
        ),
        (
            "tok-node-b",
            review(WORKLOAD_USER, Some("bp-b"), Some("node-b")),
        ),
        (
            "tok-unknown",
            review(WORKLOAD_USER, Some("bp-unknown"), Some("node-a")),
        ),
    ]));
    let pods = Arc::new(Pods::default());
    {
        let mut map = pods.0.lock().unwrap();
        for p in [
            probe_pod("bp", "node-a", &id, MA_UID),
            probe_pod("bp-other", "node-a", &id, "another-uid"),
            probe_pod("bp-b", "node-b", &id, MA_UID),
            probe_pod("bp-unknown", "node-a", &"cd".repeat(16), MA_UID),
        ] {
            map.insert(
                format!("lotabots-workloads/{}", p.metadata.name.clone().unwrap()),
                p,
            );
        }
    }
    let model = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(model.path().join("sub")).unwrap();
    std::fs::write(model.path().join("sub/w.safetensors"), b"weights").unwrap();
    std::fs::write(model.path().join("config.json"), b"{}").unwrap();
    let spec = serde_json::from_value(json!({
        "source": {"uri": format!("file://{}", model.path().display())},
        "behaviour": {"image": "probes@sha256:00", "probes": {"name": "probes", "key": "suite.yaml"}}
    }))
    .unwrap();
    let requests = Arc::new(BehaviourRequests::default());
    requests.register(CurrentRequest {
        id: id.clone(),
        model: ModelRef {
            namespace: "team".into(),
            name: "m".into(),
            uid: MA_UID.into(),
        },
        node: "node-a".into(),
        nonce: NONCE_A.into(),
        manifest_digest: manifest(),
        suite_digest: crate::behaviour::sha256_digest(SUITE),
        suite: SUITE.into(),
        spec,
    });
    let latest = Arc::new(LatestEvidence::default());
    latest.accept(evidence("node-a", NONCE_A));
    let metrics = WorkloadMetrics::register(&Registry::new()).unwrap();
    // A file:// model without a signature needs nothing from the API server.
    let (client, _) = crate::test_api::api_server(Value::Null, |_, _| Some(500));
    let api = Arc::new(
        WorkloadApi::new(
            Arc::new(reviews),
            pods,
            latest,
            Arc::new(WorkloadResults::default()),
            WorkloadSettings {
                service_account: WORKLOAD_SA.into(),
                accept_simulated: false,
            },
            metrics.clone(),
        )
        .with_behaviour(
            requests.clone(),
            Arc::new(KubeModels {
                client,
                model_root: "/nonexistent".into(),
            }),
        ),
    );
    Fixture {
        router: api.router(),
        requests,
        metrics,
        model,
    }
}

fn probe_result(request: &str, nonce: &str) -> WorkloadResult {
    WorkloadResult {
        schema_version: RESULT_SCHEMA_VERSION.into(),
        request_id: request.into(),
        kind: WorkloadKind::BehaviourProbes,
        nonce: nonce.into(),
        node: "node-a".into(),
        started_at: Timestamp::now(),
        finished_at: Timestamp::now(),
        passed: true,
        error: None,
        self_test: None,
        probes: Some(ProbeReport {
            suite_digest: crate::behaviour::sha256_digest(SUITE),
            manifest_digest: manifest(),
            device: "cuda".into(),
            probes: vec![ProbeOutcome {
                name: "capital".into(),
                passed: true,
                detail: "Paris".into(),
            }],
        }),
    }
}

async fn send(f: &Fixture, req: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = f.router.clone().oneshot(req).await.unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    if !status.is_success() {
        assert_eq!(headers[header::CONTENT_TYPE], PROBLEM_JSON);
    }
    (
        status,
        headers,
        resp.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn post(f: &Fixture, token: &str, r: &WorkloadResult) -> (StatusCode, Value) {
    let req = Request::post(RESULT_PATH)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(serde_json::to_vec(r).unwrap()))
        .unwrap();
    let (status, _, body) = send(f, req).await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn fetch(f: &Fixture, token: Option<&str>, path: &str) -> (StatusCode, HeaderMap, Bytes) {
    let mut req = Request::get(format!("{MODEL_PATH}/{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    send(f, req.body(Body::empty()).unwrap()).await
}

/// Posts `r` with `token` and expects a refusal `code` naming `detail`, counted and
/// nothing stored.
async fn refused(
    f: &Fixture,
    token: &str,
    r: &WorkloadResult,
    status: StatusCode,
    code: &str,
    detail: &str,
) {
    let before = f.metrics.results(code);
    let (got, problem) = post(f, token, r).await;
    assert_eq!(got, status, "{problem}");
    assert_eq!(problem["code"], code, "{problem}");
    let text = problem["detail"].as_str().unwrap();
    assert!(text.contains(detail), "{code}: {text:?} lacks {detail:?}");
    assert_eq!(f.metrics.results(code), before + 1, "{code} is counted");
    assert!(
        f.requests.result(&request_id()).is_none(),
        "{code}: nothing stored"
    );
}

#[tokio::test]
async fn a_probe_result_is_stored_and_wakes_the_controller() {
    let f = fixture();
    let mut wakeups = f.requests.wakeups().unwrap();
    let r = probe_result(&request_id(), NONCE_A);
    let (status, receipt) = post(&f, "tok-p", &r).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{receipt}");
    assert_eq!(receipt["attestation"], "team/m");
    let stored = f.requests.result(&request_id()).unwrap();
    assert_eq!(stored.result, r);
    assert_eq!(stored.pod, "lotabots-workloads/bp");
    let woken = wakeups.next().await.unwrap();
    assert_eq!(
        (woken.name.as_str(), woken.namespace.as_deref()),
        ("m", Some("team"))
    );
    assert_eq!(f.metrics.results("accepted"), 1);
    // The same result again is a duplicate; another one is refused.
    assert_eq!(post(&f, "tok-p", &r).await.0, StatusCode::OK);
    let mut changed = r.clone();
    changed.passed = false;
    let (status, problem) = post(&f, "tok-p", &changed).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_reported"))
    );
}

#[tokio::test]
async fn a_run_that_could_not_start_is_a_failed_result() {
    let f = fixture();
    let mut r = probe_result(&request_id(), NONCE_A);
    r.passed = false;
    r.probes = None;
    r.error =
        Some("the model's files do not hash to the manifest: sub/w.safetensors differs".into());
    assert_eq!(post(&f, "tok-p", &r).await.0, StatusCode::ACCEPTED);
    let status = f.requests.result(&request_id()).unwrap().to_status();
    assert!(!status.passed);
    assert!(status.error.unwrap().contains("sub/w.safetensors"));
    r.error = None;
    let f = fixture();
    refused(
        &f,
        "tok-p",
        &r,
        StatusCode::BAD_REQUEST,
        "malformed",
        "must carry probes",
    )
    .await;
}

#[tokio::test]
async fn a_probe_result_is_bound_to_its_request() {
    let f = fixture();
    let id = request_id();
    let unknown = "cd".repeat(16);
    refused(
        &f,
        "tok-unknown",
        &probe_result(&unknown, NONCE_A),
        StatusCode::CONFLICT,
        "not_current_request",
        &unknown,
    )
    .await;
    let mut on_b = probe_result(&id, NONCE_A);
    on_b.node = "node-b".into();
    refused(
        &f,
        "tok-node-b",
        &on_b,
        StatusCode::FORBIDDEN,
        "not_request_node",
        "node-b",
    )
    .await;
    refused(
        &f,
        "tok-p",
        &probe_result(&id, &"ee".repeat(32)),
        StatusCode::CONFLICT,
        "wrong_nonce",
        &"ee".repeat(32),
    )
    .await;
    let mut suite = probe_result(&id, NONCE_A);
    suite.probes.as_mut().unwrap().suite_digest = "sha256:00".into();
    refused(
        &f,
        "tok-p",
        &suite,
        StatusCode::CONFLICT,
        "wrong_suite_digest",
        "probes.suiteDigest",
    )
    .await;
    let mut model = probe_result(&id, NONCE_A);
    model.probes.as_mut().unwrap().manifest_digest = "sha256:00".into();
    refused(
        &f,
        "tok-p",
        &model,
        StatusCode::CONFLICT,
        "wrong_manifest_digest",
        "probes.manifestDigest",
    )
    .await;
    refused(
        &f,
        "tok-other-owner",
        &probe_result(&id, NONCE_A),
        StatusCode::FORBIDDEN,
        "wrong_owner",
        "another-uid",
    )
    .await;
}

#[tokio::test]
async fn the_pod_fetches_its_suite_and_the_model_files() {
    let f = fixture();
    let id = request_id();
    let (status, headers, body) = fetch(&f, Some("tok-p"), &format!("{id}/suite")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/yaml");
    assert_eq!(body.as_ref(), SUITE);

    let (status, _, body) = fetch(&f, Some("tok-p"), &format!("{id}/files")).await;
    assert_eq!(status, StatusCode::OK);
    let listing: ModelFiles = serde_json::from_slice(&body).unwrap();
    assert_eq!(listing.manifest_digest, manifest());
    assert_eq!(
        listing.files,
        [
            ModelFile {
                path: "config.json".into(),
                size: 2
            },
            ModelFile {
                path: "sub/w.safetensors".into(),
                size: 7
            },
        ]
    );

    let (status, headers, body) =
        fetch(&f, Some("tok-p"), &format!("{id}/files/sub/w.safetensors")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_LENGTH], "7");
    assert_eq!(
        body.as_ref(),
        std::fs::read(f.model.path().join("sub/w.safetensors")).unwrap()
    );
    assert_eq!(f.metrics.fetches("served"), 3);
}

#[tokio::test]
async fn only_listed_files_are_served_to_the_requests_pod() {
    let f = fixture();
    let id = request_id();
    std::fs::write(f.model.path().parent().unwrap().join("secret"), b"x").ok();
    for (path, status, code) in [
        ("missing.bin", StatusCode::NOT_FOUND, "no_such_file"),
        ("../secret", StatusCode::BAD_REQUEST, "malformed"),
        ("%2e%2e/secret", StatusCode::BAD_REQUEST, "malformed"),
        (
            "sub%2F..%2F..%2Fsecret",
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        ("sub//w.safetensors", StatusCode::BAD_REQUEST, "malformed"),
    ] {
        let before = f.metrics.fetches(code);
        let (got, _, body) = fetch(&f, Some("tok-p"), &format!("{id}/files/{path}")).await;
        let problem: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (got, problem["code"].as_str()),
            (status, Some(code)),
            "{path}: {problem}"
        );
        assert_eq!(f.metrics.fetches(code), before + 1, "{path}");
    }
    for (token, status, code) in [
        (None, StatusCode::UNAUTHORIZED, "missing_token"),
        (
            Some("tok-other-owner"),
            StatusCode::FORBIDDEN,
            "wrong_owner",
        ),
        (
            Some("tok-node-b"),
            StatusCode::FORBIDDEN,
            "not_request_node",
        ),
        (Some("tok-unknown"), StatusCode::FORBIDDEN, "wrong_request"),
    ] {
        for what in ["suite", "files", "files/config.json"] {
            let (got, _, body) = fetch(&f, token, &format!("{id}/{what}")).await;
            let problem: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                (got, problem["code"].as_str()),
                (status, Some(code)),
                "{token:?} {what}"
            );
        }
    }
    let (got, _, _) = fetch(&f, Some("tok-p"), &format!("{}/suite", "cd".repeat(16))).await;
    assert_eq!(got, StatusCode::CONFLICT, "not a current request");
    assert_eq!(f.metrics.fetches("served"), 0);
}
