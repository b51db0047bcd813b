//! Finding the pod spec inside every kind that carries one, and decoding it with the
//! current Kubernetes types.
//!
//! The pod spec is decoded with `k8s-openapi` (the newest API version it has), so fields
//! such as `recursiveReadOnly` arrive typed. Fields the types do not know are not dropped
//! in silence: the decoded spec is compared with the raw JSON and every field left over is
//! reported, so the `unknownFields` rule can warn or deny that they went unchecked.

use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

/// A kind that carries a pod spec.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PodBearingKind {
    /// `v1 Pod`: `spec`.
    Pod,
    /// `apps/v1 Deployment`: `spec.template.spec`.
    Deployment,
    /// `apps/v1 ReplicaSet`: `spec.template.spec`.
    ReplicaSet,
    /// `apps/v1 StatefulSet`: `spec.template.spec`.
    StatefulSet,
    /// `apps/v1 DaemonSet`: `spec.template.spec`.
    DaemonSet,
    /// `batch/v1 Job`: `spec.template.spec`.
    Job,
    /// `batch/v1 CronJob`: `spec.jobTemplate.spec.template.spec`.
    CronJob,
    /// `v1 ReplicationController`: `spec.template.spec` (the template is optional).
    ReplicationController,
    /// `v1 PodTemplate`: `template.spec` (optional).
    PodTemplate,
}

impl PodBearingKind {
    /// Every pod-bearing kind.
    pub const ALL: [PodBearingKind; 9] = [
        PodBearingKind::Pod,
        PodBearingKind::Deployment,
        PodBearingKind::ReplicaSet,
        PodBearingKind::StatefulSet,
        PodBearingKind::DaemonSet,
        PodBearingKind::Job,
        PodBearingKind::CronJob,
        PodBearingKind::ReplicationController,
        PodBearingKind::PodTemplate,
    ];

    /// The kind for an API group (`""` for core) and kind name.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Self> {
        use PodBearingKind::*;
        Some(match (group, kind) {
            ("", "Pod") => Pod,
            ("", "ReplicationController") => ReplicationController,
            ("", "PodTemplate") => PodTemplate,
            ("apps", "Deployment") => Deployment,
            ("apps", "ReplicaSet") => ReplicaSet,
            ("apps", "StatefulSet") => StatefulSet,
            ("apps", "DaemonSet") => DaemonSet,
            ("batch", "Job") => Job,
            ("batch", "CronJob") => CronJob,
            _ => return None,
        })
    }

    /// The kind name.
    pub fn as_str(self) -> &'static str {
        use PodBearingKind::*;
        match self {
            Pod => "Pod",
            Deployment => "Deployment",
            ReplicaSet => "ReplicaSet",
            StatefulSet => "StatefulSet",
            DaemonSet => "DaemonSet",
            Job => "Job",
            CronJob => "CronJob",
            ReplicationController => "ReplicationController",
            PodTemplate => "PodTemplate",
        }
    }

    /// `apiVersion` of the kind's current version.
    pub fn api_version(self) -> &'static str {
        use PodBearingKind::*;
        match self {
            Pod | ReplicationController | PodTemplate => "v1",
            Deployment | ReplicaSet | StatefulSet | DaemonSet => "apps/v1",
            Job | CronJob => "batch/v1",
        }
    }

    /// Keys from the object root to the pod spec.
    pub fn spec_keys(self) -> &'static [&'static str] {
        use PodBearingKind::*;
        match self {
            Pod => &["spec"],
            PodTemplate => &["template", "spec"],
            CronJob => &["spec", "jobTemplate", "spec", "template", "spec"],
            _ => &["spec", "template", "spec"],
        }
    }

    /// The same path, dotted (`spec.template.spec`).
    pub fn spec_path(self) -> &'static str {
        use PodBearingKind::*;
        match self {
            Pod => "spec",
            PodTemplate => "template.spec",
            CronJob => "spec.jobTemplate.spec.template.spec",
            _ => "spec.template.spec",
        }
    }

    /// Whether an object of this kind may lack a pod spec altogether (the API lets a
    /// ReplicationController or a PodTemplate have no template); every other kind must
    /// have one.
    fn spec_optional(self) -> bool {
        matches!(
            self,
            PodBearingKind::ReplicationController | PodBearingKind::PodTemplate
        )
    }
}

impl fmt::Display for PodBearingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why the pod spec could not be taken from an object; each names the field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    /// A field on the way to the pod spec is missing or not an object.
    #[error("{path}: missing (a {kind} must have a pod template)")]
    Missing {
        /// Dotted path of the missing field.
        path: String,
        /// The kind.
        kind: PodBearingKind,
    },
    /// The pod spec does not decode.
    #[error("{path}: {message}")]
    Decode {
        /// Dotted path of the field that does not decode.
        path: String,
        /// What the decoder said.
        message: String,
    },
}

/// A pod spec taken from an object.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractedPod {
    /// The kind it came from.
    pub kind: PodBearingKind,
    /// Dotted path of the spec from the object root.
    pub spec_path: &'static str,
    /// The decoded spec.
    pub spec: PodSpec,
    /// Dotted paths of fields in the spec that the types do not know.
    pub unknown_fields: Vec<String>,
}

/// Takes the pod spec from `object`, a `kind`. `Ok(None)` when the kind allows no template
/// and there is none.
pub fn extract_pod(
    kind: PodBearingKind,
    object: &Value,
) -> Result<Option<ExtractedPod>, ExtractError> {
    let mut at = object;
    let keys = kind.spec_keys();
    for (depth, key) in keys.iter().enumerate() {
        match at.get(key) {
            Some(v) if v.is_object() => at = v,
            // `null` is how an optional template is left out in JSON.
            None | Some(Value::Null) if kind.spec_optional() => return Ok(None),
            _ => {
                return Err(ExtractError::Missing {
                    path: keys[..=depth].join("."),
                    kind,
                });
            }
        }
    }
    let spec_path = kind.spec_path();
    let spec: PodSpec = serde_path_to_error::deserialize(at).map_err(|e| {
        let inner = e.path().to_string();
        ExtractError::Decode {
            path: if inner == "." {
                spec_path.to_owned()
            } else {
                format!("{spec_path}.{inner}")
            },
            message: e.into_inner().to_string(),
        }
    })?;
    let mut unknown_fields = Vec::new();
    // Re-encoding costs a few microseconds and is the only way to see what the typed
    // decode left behind.
    if let Ok(known) = serde_json::to_value(&spec) {
        leftover_fields(at, &known, spec_path, &mut unknown_fields);
    }
    Ok(Some(ExtractedPod {
        kind,
        spec_path,
        spec,
        unknown_fields,
    }))
}

/// One step of a JSON path, kept unformatted until a leftover field needs its path.
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

/// Records every key of `raw` (recursively) that `known` lacks. Null values are skipped:
/// an explicit `null` means "unset", which the types represent by leaving the field out.
fn leftover_fields(raw: &Value, known: &Value, at: &str, out: &mut Vec<String>) {
    let mut path = Vec::new();
    walk(raw, known, at, &mut path, out);
}

fn walk<'a>(
    raw: &'a Value,
    known: &Value,
    at: &str,
    path: &mut Vec<Step<'a>>,
    out: &mut Vec<String>,
) {
    match (raw, known) {
        (Value::Object(r), Value::Object(k)) => {
            for (key, rv) in r {
                if rv.is_null() {
                    continue;
                }
                path.push(Step::Key(key));
                match k.get(key) {
                    None => out.push(render(at, path)),
                    Some(kv) => walk(rv, kv, at, path, out),
                }
                path.pop();
            }
        }
        (Value::Array(r), Value::Array(k)) => {
            for (i, (rv, kv)) in r.iter().zip(k).enumerate() {
                path.push(Step::Index(i));
                walk(rv, kv, at, path, out);
                path.pop();
            }
        }
        _ => {}
    }
}

fn render(at: &str, path: &[Step<'_>]) -> String {
    use std::fmt::Write;
    let mut s = at.to_owned();
    for step in path {
        // Writing to a String cannot fail.
        let _ = match step {
            Step::Key(k) => write!(s, ".{k}"),
            Step::Index(i) => write!(s, "[{i}]"),
        };
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn recursive_read_only_is_decoded() {
        let pod = json!({"spec": {"containers": [{"name": "a", "volumeMounts": [
            {"name": "v", "mountPath": "/v", "readOnly": true, "recursiveReadOnly": "Enabled"}
        ]}]}});
        let x = extract_pod(PodBearingKind::Pod, &pod).unwrap().unwrap();
        let m = &x.spec.containers[0].volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.recursive_read_only.as_deref(), Some("Enabled"));
        assert!(x.unknown_fields.is_empty(), "{:?}", x.unknown_fields);
    }

    #[test]
    fn unknown_fields_are_reported() {
        let pod = json!({"spec": {"containers": [{"name": "a", "futureField": {"x": 1},
            "securityContext": {"privileged": false, "newKnob": true}}], "somethingNew": 1,
            "hostPID": null}});
        let x = extract_pod(PodBearingKind::Pod, &pod).unwrap().unwrap();
        assert_eq!(
            x.unknown_fields,
            vec![
                "spec.containers[0].futureField",
                "spec.containers[0].securityContext.newKnob",
                "spec.somethingNew"
            ]
        );
    }

    #[test]
    fn errors_name_the_field() {
        let bad = json!({"spec": {"template": {"spec": {"containers": [{"name": "a",
            "securityContext": {"privileged": "yes"}}]}}}});
        let err = extract_pod(PodBearingKind::Deployment, &bad).unwrap_err();
        assert!(
            matches!(&err, ExtractError::Decode { path, .. }
                if path == "spec.template.spec.containers[0].securityContext.privileged"),
            "{err}"
        );
        let none = json!({"spec": {"replicas": 1}});
        let err = extract_pod(PodBearingKind::Deployment, &none).unwrap_err();
        assert_eq!(
            err,
            ExtractError::Missing {
                path: "spec.template".into(),
                kind: PodBearingKind::Deployment
            }
        );
        assert_eq!(
            extract_pod(PodBearingKind::ReplicationController, &none).unwrap(),
            None
        );
    }
}
