//! Every pod-bearing kind wrapping the same pod specs gets the same verdict, with the
//! field paths of its own layout.

mod common;

use common::*;
use lotabots_webhook::admission::review_body;
use lotabots_webhook::verdict::Decision;
use lotabots_webhook::workloads::{PodBearingKind, extract_pod};
use serde_json::json;

fn bad_spec() -> serde_json::Value {
    json!({
        "volumes": [{"name": "sock", "hostPath": {"path": "/var/run/docker.sock"}}],
        "containers": [container("app", json!({
            "securityContext": {"privileged": true},
            "volumeMounts": [{"name": "sock", "mountPath": "/var/run/docker.sock"}]
        }))]
    })
}

fn group_version(kind: PodBearingKind) -> (&'static str, &'static str) {
    match kind.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", kind.api_version()),
    }
}

#[test]
fn every_kind_is_checked_the_same() {
    let p = policy();
    for kind in PodBearingKind::ALL {
        let (group, version) = group_version(kind);
        for (spec, want) in [
            (typical_spec(), Decision::Allowed),
            (bad_spec(), Decision::Denied),
        ] {
            let body = review(
                "u",
                "CREATE",
                group,
                version,
                kind.as_str(),
                Some(wrap(kind, spec)),
                None,
            );
            let r = review_body(&p, body.to_string().as_bytes()).unwrap();
            assert_eq!(r.verdict.decision(), want, "{kind}: {:?}", r.response);
            if want == Decision::Denied {
                let fields: Vec<&str> = r
                    .verdict
                    .violations
                    .iter()
                    .map(|v| v.field.as_str())
                    .collect();
                let priv_field = format!(
                    "{}.containers[0].securityContext.privileged",
                    kind.spec_path()
                );
                let vol_field = format!("{}.volumes[0].hostPath.path", kind.spec_path());
                assert!(fields.contains(&priv_field.as_str()), "{kind}: {fields:?}");
                assert!(fields.contains(&vol_field.as_str()), "{kind}: {fields:?}");
                let msg = r.response.response.status.unwrap().message;
                assert!(msg.contains("[privileged] container \"app\""), "{msg}");
                assert!(msg.contains("[protectedPaths] volume \"sock\""), "{msg}");
            }
        }
    }
}

#[test]
fn extraction_paths() {
    for kind in PodBearingKind::ALL {
        let obj = wrap(kind, typical_spec());
        let x = extract_pod(kind, &obj).unwrap().unwrap();
        assert_eq!(x.kind, kind);
        assert_eq!(x.spec.containers.len(), 2, "{kind}");
        assert_eq!(x.spec_path, kind.spec_path());
        assert!(
            x.unknown_fields.is_empty(),
            "{kind}: {:?}",
            x.unknown_fields
        );
        let (group, _) = group_version(kind);
        assert_eq!(
            PodBearingKind::from_group_kind(group, kind.as_str()),
            Some(kind)
        );
    }
    // The same kind name in another group is not the built-in kind.
    assert_eq!(
        PodBearingKind::from_group_kind("example.com", "Deployment"),
        None
    );
    assert_eq!(PodBearingKind::from_group_kind("", "Deployment"), None);
}

#[test]
fn missing_template_is_named() {
    let p = policy();
    for kind in [
        PodBearingKind::Deployment,
        PodBearingKind::CronJob,
        PodBearingKind::Job,
    ] {
        let (group, version) = group_version(kind);
        let obj = json!({"apiVersion": kind.api_version(), "kind": kind.as_str(), "metadata": {"name": "x"}, "spec": {}});
        let body = review(
            "u",
            "CREATE",
            group,
            version,
            kind.as_str(),
            Some(obj),
            None,
        );
        let r = review_body(&p, body.to_string().as_bytes()).unwrap();
        let status = r.response.response.status.expect("denied");
        assert_eq!(status.code, 400);
        assert!(
            status.message.contains("spec."),
            "{kind}: {}",
            status.message
        );
    }
    // A ReplicationController or PodTemplate without a template has nothing to run.
    let obj = json!({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"}});
    let body = review("u", "CREATE", "", "v1", "PodTemplate", Some(obj), None);
    assert!(
        review_body(&p, body.to_string().as_bytes())
            .unwrap()
            .response
            .response
            .allowed
    );
}
