//! AdmissionReview round trips through the in-process router (no sockets).

mod common;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::*;
use http_body_util::BodyExt;
use lotabots_webhook::admission::AdmissionReviewResponse;
use lotabots_webhook::server::{LOTABOTS_PATH, PODS_PATH, admission_router, ops_router};
use lotabots_webhook::workloads::PodBearingKind;
use serde_json::{Value, json};
use tower::ServiceExt;

async fn post(
    state: &std::sync::Arc<lotabots_webhook::server::AppState>,
    path: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let app = admission_router(state.clone());
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    (status, bytes)
}

async fn admit(
    policy: lotabots_webhook::policy::Policy,
    body: Value,
) -> (AdmissionReviewResponse, Value) {
    let s = state(policy);
    let (status, bytes) = post(&s, PODS_PATH, body.to_string().into_bytes()).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&bytes)
    );
    let raw: Value = serde_json::from_slice(&bytes).unwrap();
    (serde_json::from_value(raw.clone()).unwrap(), raw)
}

fn privileged_spec() -> Value {
    json!({
        "volumes": [{"name": "rootfs", "hostPath": {"path": "/"}}],
        "containers": [container("app", json!({
            "securityContext": {"privileged": true},
            "volumeMounts": [{"name": "rootfs", "mountPath": "/host"}]
        }))]
    })
}

#[tokio::test]
async fn denied_create_names_container_volume_and_rule() {
    let (r, raw) = admit(policy(), pod_review("abc-123", privileged_spec())).await;
    assert_eq!(r.api_version, "admission.k8s.io/v1");
    assert_eq!(r.kind, "AdmissionReview");
    assert_eq!(r.response.uid, "abc-123");
    assert!(!r.response.allowed);
    let status = r.response.status.unwrap();
    assert_eq!(status.code, 403);
    assert_eq!(status.reason, "Forbidden");
    for needle in [
        "container \"app\"",
        "volume \"rootfs\"",
        "[privileged]",
        "[protectedPaths]",
        "spec.containers[0].securityContext.privileged",
    ] {
        assert!(
            status.message.contains(needle),
            "{needle} not in {}",
            status.message
        );
    }
    // A validating webhook never patches.
    assert!(raw["response"].get("patch").is_none());
    assert!(raw["response"].get("patchType").is_none());
}

#[tokio::test]
async fn allowed_create() {
    let (r, _) = admit(policy(), pod_review("u1", typical_spec())).await;
    assert!(r.response.allowed, "{:?}", r.response.status);
    assert!(r.response.status.is_none());
    assert!(r.response.warnings.is_empty());
}

#[tokio::test]
async fn delete_without_object_is_allowed() {
    let body = review(
        "d1",
        "DELETE",
        "",
        "v1",
        "Pod",
        None,
        Some(wrap(PodBearingKind::Pod, privileged_spec())),
    );
    let (r, _) = admit(policy(), body).await;
    assert_eq!(r.response.uid, "d1");
    assert!(r.response.allowed);
}

#[tokio::test]
async fn update_checks_only_changed_pod_specs() {
    let old = wrap(PodBearingKind::Deployment, privileged_spec());
    // Scaling (or a label, a finalizer) leaves the pod spec alone: allowed even though it
    // violates, so objects that predate the policy can still be scaled and deleted.
    let mut scaled = old.clone();
    scaled["spec"]["replicas"] = json!(5);
    let (r, _) = admit(
        policy(),
        review(
            "u2",
            "UPDATE",
            "apps",
            "v1",
            "Deployment",
            Some(scaled),
            Some(old.clone()),
        ),
    )
    .await;
    assert!(r.response.allowed);
    // A compliant Deployment updated to a violating template is denied.
    let good = wrap(PodBearingKind::Deployment, typical_spec());
    let (r, _) = admit(
        policy(),
        review(
            "u3",
            "UPDATE",
            "apps",
            "v1",
            "Deployment",
            Some(old.clone()),
            Some(good),
        ),
    )
    .await;
    assert!(!r.response.allowed);
    assert!(
        r.response
            .status
            .unwrap()
            .message
            .contains("spec.template.spec.containers[0]")
    );
}

#[tokio::test]
async fn ephemeral_containers_subresource() {
    let pod = wrap(PodBearingKind::Pod, typical_spec());
    let mut with_debug = pod.clone();
    with_debug["spec"]["ephemeralContainers"] = json!([{
        "name": "debug", "image": "busybox", "targetContainerName": "server",
        "securityContext": {"privileged": true, "capabilities": {"add": ["SYS_PTRACE"]}}
    }]);
    let mut body = review(
        "e1",
        "UPDATE",
        "",
        "v1",
        "Pod",
        Some(with_debug),
        Some(pod.clone()),
    );
    body["request"]["subResource"] = json!("ephemeralcontainers");
    let (r, _) = admit(policy(), body).await;
    assert!(!r.response.allowed);
    let msg = r.response.status.unwrap().message;
    assert!(msg.contains("container \"debug\""), "{msg}");
    assert!(
        msg.contains("spec.ephemeralContainers[0].securityContext.privileged"),
        "{msg}"
    );
    assert!(msg.contains("[capabilities]"), "{msg}");
    // Other pod subresources (status) add nothing to run.
    let mut status_update = review(
        "e2",
        "UPDATE",
        "",
        "v1",
        "Pod",
        Some(wrap(PodBearingKind::Pod, privileged_spec())),
        Some(pod),
    );
    status_update["request"]["subResource"] = json!("status");
    let (r, _) = admit(policy(), status_update).await;
    assert!(r.response.allowed);
}

#[tokio::test]
async fn dry_run_gets_the_same_verdict_and_is_labelled() {
    let s = state(policy());
    let mut body = pod_review("dr", privileged_spec());
    body["request"]["dryRun"] = json!(true);
    let (status, bytes) = post(&s, PODS_PATH, body.to_string().into_bytes()).await;
    assert_eq!(status, StatusCode::OK);
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(!r.response.allowed);
    let m = s.metrics.render();
    assert!(
        m.contains(r#"lotabots_webhook_admission_requests_total{decision="denied",dry_run="true",kind="Pod",operation="CREATE"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn unknown_kind_is_allowed_with_a_warning() {
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}});
    let (r, _) = admit(
        policy(),
        review("k1", "CREATE", "", "v1", "ConfigMap", Some(cm), None),
    )
    .await;
    assert!(r.response.allowed);
    assert_eq!(r.response.warnings.len(), 1);
    assert!(
        r.response.warnings[0].contains("ConfigMap"),
        "{:?}",
        r.response.warnings
    );
}

#[tokio::test]
async fn unknown_pod_fields_warn() {
    let mut spec = typical_spec();
    spec["containers"][0]["securityContext"]["futureEscape"] = json!(true);
    let (r, _) = admit(policy(), pod_review("f1", spec)).await;
    assert!(r.response.allowed);
    assert_eq!(r.response.warnings.len(), 1, "{:?}", r.response.warnings);
    assert!(
        r.response.warnings[0].contains("futureEscape"),
        "{:?}",
        r.response.warnings
    );
}

#[tokio::test]
async fn modes_warn_and_audit() {
    let (r, _) = admit(policy_in_mode("warn"), pod_review("w1", privileged_spec())).await;
    assert!(r.response.allowed);
    assert_eq!(r.response.warnings.len(), 2, "{:?}", r.response.warnings);
    for w in &r.response.warnings {
        assert!(w.chars().count() <= 120, "{w}");
    }
    assert!(
        r.response
            .warnings
            .iter()
            .any(|w| w.starts_with("[privileged] container \"app\""))
    );
    // A long message is cut to 120 characters.
    let long = "x".repeat(150);
    let mut spec = privileged_spec();
    spec["containers"][0]["name"] = json!(long);
    let (r, _) = admit(policy_in_mode("warn"), pod_review("w2", spec)).await;
    assert!(
        r.response.warnings.iter().all(|w| w.chars().count() <= 120),
        "{:?}",
        r.response.warnings
    );
    assert!(
        r.response
            .warnings
            .iter()
            .any(|w| w.chars().count() == 120 && w.ends_with('…')),
        "{:?}",
        r.response.warnings
    );

    let (r, _) = admit(policy_in_mode("audit"), pod_review("a1", privileged_spec())).await;
    assert!(r.response.allowed);
    assert!(r.response.warnings.is_empty());
    let audit = &r.response.audit_annotations["policy-audit"];
    assert!(
        audit.contains("[privileged]") && audit.contains("[protectedPaths]"),
        "{audit}"
    );
}

#[tokio::test]
async fn audit_is_counted() {
    let s = state(policy_in_mode("audit"));
    let (status, _) = post(
        &s,
        PODS_PATH,
        pod_review("a2", privileged_spec()).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let m = s.metrics.render();
    assert!(m.contains(r#"lotabots_webhook_policy_violations_total{dry_run="false",mode="audit",rule="privileged"} 1"#), "{m}");
}

#[tokio::test]
async fn undecodable_pod_is_denied_naming_the_field() {
    let mut spec = typical_spec();
    spec["containers"][1]["securityContext"] = json!({"privileged": "yes"});
    let (r, _) = admit(policy(), pod_review("bad", spec)).await;
    assert_eq!(r.response.uid, "bad");
    assert!(!r.response.allowed);
    let st = r.response.status.unwrap();
    assert_eq!(st.code, 400);
    assert!(
        st.message
            .contains("spec.containers[1].securityContext.privileged"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn malformed_reviews_get_400_with_a_reason() {
    let s = state(policy());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"not json".to_vec(), "not an AdmissionReview"),
        (b"{}".to_vec(), "apiVersion"),
        (json!({"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": null}).to_string().into_bytes(), "admission.k8s.io/v1beta1"),
        (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}).to_string().into_bytes(), "no request"),
        (json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "x", "kind": {"kind": "Pod"}, "operation": "SMASH"}}).to_string().into_bytes(), "request.operation"),
    ];
    for (body, want) in cases {
        let (status, bytes) = post(&s, PODS_PATH, body).await;
        let text = String::from_utf8_lossy(&bytes);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(text.contains(want), "{want} not in {text}");
    }
}

#[tokio::test]
async fn body_limit() {
    // Over the limit: 413 with a message that says so.
    let s = state_with_limit(policy(), 4096);
    let mut spec = typical_spec();
    spec["containers"][0]["args"] = json!(["x".repeat(8000)]);
    let (status, bytes) = post(
        &s,
        PODS_PATH,
        pod_review("big", spec).to_string().into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&bytes).contains("4096-byte limit"));

    // The default limit takes an UPDATE of a large object (two 3 MiB copies).
    let s = state(policy());
    let mut obj = wrap(PodBearingKind::Deployment, typical_spec());
    obj["metadata"]["annotations"] = json!({"big": "y".repeat(3 * 1024 * 1024)});
    let body = review(
        "big2",
        "UPDATE",
        "apps",
        "v1",
        "Deployment",
        Some(obj.clone()),
        Some(obj),
    );
    let bytes = body.to_string().into_bytes();
    assert!(bytes.len() > 6 * 1024 * 1024);
    let (status, out) = post(&s, PODS_PATH, bytes).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&out));
}

#[tokio::test]
async fn lotabots_resources_are_validated() {
    let s = state(policy());
    let sample = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/lotabots_v1alpha1_gpuattestation_a100_mig.yaml"
    ))
    .unwrap();
    let good: Value = serde_yaml::from_str(&sample).unwrap();
    let body = review(
        "g1",
        "CREATE",
        "lotabots.io",
        "v1alpha1",
        "GpuAttestation",
        Some(good.clone()),
        None,
    );
    let (_, bytes) = post(&s, LOTABOTS_PATH, body.to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(r.response.allowed, "{:?}", r.response.status);

    let mut bad = good;
    bad["spec"]["policy"]["minDriverVersion"] = json!("535.104.05-rc1");
    bad["spec"]["policy"]["mig"]["profiles"][1]["profile"] = json!("2g.21gb");
    let body = review(
        "g2",
        "UPDATE",
        "lotabots.io",
        "v1alpha1",
        "GpuAttestation",
        Some(bad),
        None,
    );
    let (_, bytes) = post(&s, LOTABOTS_PATH, body.to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(r.response.uid, "g2");
    assert!(!r.response.allowed);
    let st = r.response.status.unwrap();
    assert_eq!(st.code, 422);
    assert!(
        st.message.contains("spec.policy.minDriverVersion"),
        "{}",
        st.message
    );
    assert!(
        st.message.contains("spec.policy.mig.profiles[1].profile"),
        "{}",
        st.message
    );
}

#[tokio::test]
async fn ops_endpoints() {
    let s = state(policy());
    let _ = post(
        &s,
        PODS_PATH,
        pod_review("m1", typical_spec()).to_string().into_bytes(),
    )
    .await;
    let get = |path: &str| Request::get(path).body(Body::empty()).unwrap();
    let ops = ops_router(s.clone());
    assert_eq!(
        ops.clone().oneshot(get("/healthz")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        ops.clone().oneshot(get("/readyz")).await.unwrap().status(),
        StatusCode::OK
    );
    s.ready.store(false, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        ops.clone().oneshot(get("/readyz")).await.unwrap().status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let resp = ops.oneshot(get("/metrics")).await.unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(text.contains(r#"lotabots_webhook_admission_requests_total{decision="allowed",dry_run="false",kind="Pod",operation="CREATE"} 1"#), "{text}");
    assert!(
        text.contains("lotabots_webhook_review_duration_seconds_bucket"),
        "{text}"
    );
    // The admission port does not serve the ops paths.
    let (status, _) = post(&s, "/metrics", vec![]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn policy_reload_keeps_the_last_good_policy() {
    use lotabots_webhook::reload::reload_policy;
    let s = state(policy());
    let swap = |text: &str| reload_policy(&s.policy, &s.metrics, "test", text.as_bytes());
    // Valid new policy: privileged now only warns.
    swap("rules: {privileged: {mode: warn}}");
    let (_, bytes) = post(&s, PODS_PATH, pod_review("p1", spec_with(json!({"containers": [container("app", json!({"securityContext": {"privileged": true}}))]}))).to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(r.response.allowed && r.response.warnings.len() == 1);
    // Invalid new policy: rejected, the last good one stays.
    swap("rules: {privileged: {mode: sometimes}}");
    assert_eq!(s.metrics.policy_current.get(), 0);
    let (_, bytes) = post(&s, PODS_PATH, pod_review("p2", spec_with(json!({"containers": [container("app", json!({"securityContext": {"privileged": true}}))]}))).to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(
        r.response.allowed && r.response.warnings.len() == 1,
        "{r:?}"
    );
    let m = s.metrics.render();
    assert!(
        m.contains(r#"lotabots_webhook_reloads_total{result="error",what="policy"} 1"#),
        "{m}"
    );
}

#[tokio::test]
async fn workloads_path_warns_where_pods_path_denies() {
    use lotabots_webhook::server::WORKLOADS_PATH;
    let s = state(policy());
    let body = review(
        "wl",
        "CREATE",
        "apps",
        "v1",
        "Deployment",
        Some(wrap(PodBearingKind::Deployment, privileged_spec())),
        None,
    );
    let (_, bytes) = post(&s, WORKLOADS_PATH, body.to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(r.response.allowed);
    assert_eq!(r.response.warnings.len(), 2, "{:?}", r.response.warnings);
    assert!(
        r.response
            .warnings
            .iter()
            .all(|w| w.contains("pods will be denied") || w.ends_with('…'))
    );
    let (_, bytes) = post(&s, PODS_PATH, body.to_string().into_bytes()).await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(!r.response.allowed);
    // A Pod sent to the workloads path is still denied.
    let (_, bytes) = post(
        &s,
        WORKLOADS_PATH,
        pod_review("p", privileged_spec()).to_string().into_bytes(),
    )
    .await;
    let r: AdmissionReviewResponse = serde_json::from_slice(&bytes).unwrap();
    assert!(!r.response.allowed);
}
