//! The `check` command as a user runs it: manifests (multi-document YAML, JSON) and
//! AdmissionReview files, one verdict per object, exit 1 when any is denied.

mod common;

use assert_cmd::Command;
use common::*;
use lotabots_webhook::workloads::PodBearingKind;
use predicates::prelude::*;
use serde_json::json;

fn bin() -> Command {
    Command::cargo_bin("lotabots-webhook").unwrap()
}

fn bad_spec() -> serde_json::Value {
    json!({
        "volumes": [{"name": "sock", "hostPath": {"path": "/run/containerd/containerd.sock"}}],
        "containers": [container("app", json!({"volumeMounts": [{"name": "sock", "mountPath": "/s"}]}))]
    })
}

fn yaml(v: &serde_json::Value) -> String {
    serde_yaml::to_string(v).unwrap()
}

#[test]
fn manifests_and_reviews() {
    let dir = tempfile::tempdir().unwrap();
    let multi = dir.path().join("app.yaml");
    std::fs::write(
        &multi,
        format!(
            "{}---\n{}---\n# empty document\n---\n{}",
            yaml(&wrap(PodBearingKind::Deployment, typical_spec())),
            yaml(&wrap(PodBearingKind::CronJob, bad_spec())),
            yaml(&json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}))
        ),
    )
    .unwrap();
    let review_file = dir.path().join("review.json");
    std::fs::write(
        &review_file,
        serde_json::to_string_pretty(&pod_review("r1", typical_spec())).unwrap(),
    )
    .unwrap();

    // Two objects allowed and one warned: exit 0.
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        yaml(&wrap(PodBearingKind::Deployment, typical_spec())),
    )
    .unwrap();
    let policy_file = dir.path().join("policy.yaml");
    std::fs::write(&policy_file, TEST_POLICY).unwrap();
    bin()
        .args(["check", "--policy"])
        .arg(&policy_file)
        .arg(&good)
        .arg(&review_file)
        .assert()
        .success()
        .stdout(predicate::str::contains("Deployment apps/web: allowed"))
        .stdout(predicate::str::contains(
            "review.json: Pod apps/web: allowed",
        ));

    // The CronJob mounts the containerd socket: exit 1, with the reason.
    bin()
        .args(["check", "--policy"])
        .arg(&policy_file)
        .arg(&multi)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            "app.yaml: Deployment apps/web: allowed",
        ))
        .stdout(predicate::str::contains(
            "app.yaml#1: CronJob apps/web: denied",
        ))
        .stdout(predicate::str::contains(
            "spec.jobTemplate.spec.template.spec.volumes[0].hostPath.path",
        ))
        .stdout(predicate::str::contains("ConfigMap default/c: warned"));
}

#[test]
fn default_policy_when_none_given() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("pod.json");
    // JSON manifests work too; /data/models is allowed read-only by the shipped policy.
    let spec = json!({
        "volumes": [{"name": "m", "hostPath": {"path": "/data/models/llama"}}],
        "containers": [container("app", json!({"volumeMounts": [{"name": "m", "mountPath": "/m", "readOnly": true}]}))]
    });
    std::fs::write(&f, wrap(PodBearingKind::Pod, spec).to_string()).unwrap();
    bin()
        .arg("check")
        .arg(&f)
        .assert()
        .success()
        .stdout(predicate::str::contains("allowed"));
    std::fs::write(&f, wrap(PodBearingKind::Pod, bad_spec()).to_string()).unwrap();
    bin()
        .arg("check")
        .arg(&f)
        .assert()
        .code(1)
        .stdout(predicate::str::contains("[protectedPaths] volume \"sock\""));
}

#[test]
fn errors_are_not_passes() {
    let dir = tempfile::tempdir().unwrap();
    bin()
        .arg("check")
        .arg(dir.path().join("missing.yaml"))
        .assert()
        .code(2)
        .stdout(predicate::str::contains("missing.yaml"));
    let bad_policy = dir.path().join("p.yaml");
    std::fs::write(
        &bad_policy,
        "rules: {hostPath: {allowed: [{path: /etc/ssl}]}}",
    )
    .unwrap();
    let f = dir.path().join("x.yaml");
    std::fs::write(&f, yaml(&wrap(PodBearingKind::Pod, typical_spec()))).unwrap();
    bin()
        .args(["check", "--policy"])
        .arg(&bad_policy)
        .arg(&f)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("rules.hostPath.allowed[0].path"));
    let junk = dir.path().join("junk.yaml");
    std::fs::write(&junk, "just: [a, document, without, kind]").unwrap();
    bin()
        .arg("check")
        .arg(&junk)
        .assert()
        .code(2)
        .stdout(predicate::str::contains("no kind"));
    bin().arg("check").assert().failure();
}
