//! AdmissionReview v1: decoding the request, deciding, and encoding the response.
//!
//! The same [`review`] function serves the HTTPS endpoint and the offline `check` command,
//! so what a pipeline sees offline is what the cluster will do.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd_validation::{self, LotabotsKind};
use crate::evaluate::{Violation, evaluate_pod};
use crate::node_binding::{self, Binding, Requester};
use crate::policy::{Mode, Policy, Rule};
use crate::verdict::Verdict;
use crate::workloads::{ExtractError, PodBearingKind, extract_pod};

/// `apiVersion` of AdmissionReview this webhook speaks.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of an AdmissionReview.
pub const ADMISSION_KIND: &str = "AdmissionReview";

/// An API group, version and kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// API group, `""` for core.
    #[serde(default)]
    pub group: String,
    /// Version.
    #[serde(default)]
    pub version: String,
    /// Kind.
    pub kind: String,
}

/// An AdmissionReview as sent by the API server.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// Must be `admission.k8s.io/v1`.
    pub api_version: String,
    /// Must be `AdmissionReview`.
    pub kind: String,
    /// The request.
    pub request: Option<AdmissionRequest>,
}

/// The operation being admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// Object creation.
    Create,
    /// Object replacement or patch.
    Update,
    /// Object deletion.
    Delete,
    /// A connect (exec, attach, port-forward) to a subresource.
    Connect,
}

/// The request inside an AdmissionReview (only the fields this webhook reads).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// Kind of the object, converted to the version the webhook registered for
    /// (`matchPolicy: Equivalent`).
    pub kind: GroupVersionKind,
    /// Subresource (`ephemeralcontainers`), if any.
    #[serde(default)]
    pub sub_resource: Option<String>,
    /// Object name (may be empty on CREATE with `generateName`).
    #[serde(default)]
    pub name: Option<String>,
    /// Namespace (empty for cluster-scoped objects).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Operation.
    pub operation: Operation,
    /// The new object; absent on DELETE.
    #[serde(default)]
    pub object: Option<Value>,
    /// The existing object on UPDATE and DELETE.
    #[serde(default)]
    pub old_object: Option<Value>,
    /// Whether the request is a dry run (no side effects may be made).
    #[serde(default)]
    pub dry_run: Option<bool>,
    /// Who asked (`username`, `extra`); kept as JSON and read only by the node-binding
    /// rule ([`crate::node_binding`]), so that an odd shape here never stops a request
    /// from anyone else being decoded.
    #[serde(default)]
    pub user_info: Option<Value>,
}

/// The status of a denied AdmissionResponse (a `metav1.Status` subset).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// HTTP code: 403 for a policy denial, 422 for an invalid resource, 400 for an
    /// undecodable one.
    pub code: u16,
    /// `Forbidden`, `Invalid`, `BadRequest`.
    pub reason: String,
    /// What is wrong, naming container, volume, rule or field.
    pub message: String,
}

/// The response inside an AdmissionReview. A validating webhook sends no patch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// The decision.
    pub allowed: bool,
    /// Why it is denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
    /// Warnings kubectl prints (each at most 120 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Annotations for the API server's audit log (`audit`-mode violations).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub audit_annotations: BTreeMap<String, String>,
}

/// The AdmissionReview sent back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReviewResponse {
    /// `admission.k8s.io/v1`.
    pub api_version: String,
    /// `AdmissionReview`.
    pub kind: String,
    /// The response.
    pub response: AdmissionResponse,
}

/// Audit-annotation key for `audit`-mode violations (the API server prefixes it with the
/// webhook's name).
pub const AUDIT_ANNOTATION: &str = "policy-audit";

/// Why a body is not an AdmissionReview this webhook can answer. Answered with HTTP 400,
/// since there is no uid to echo.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReviewError {
    /// Not JSON, or not the shape of an AdmissionReview.
    #[error("not an AdmissionReview: {0}")]
    Decode(String),
    /// Another apiVersion or kind.
    #[error("expected apiVersion {ADMISSION_API_VERSION} kind {ADMISSION_KIND}, got {0} {1}")]
    WrongType(String, String),
    /// No `request`.
    #[error("AdmissionReview has no request")]
    NoRequest,
}

/// What was decided about one request, with what the caller needs to log and count.
#[derive(Clone, Debug)]
pub struct Reviewed {
    /// The response to send.
    pub response: AdmissionReviewResponse,
    /// The verdict behind it.
    pub verdict: Verdict,
    /// `Kind namespace/name`, for logs and output.
    pub object: String,
    /// The kind as requested (`Deployment.apps`).
    pub kind: String,
    /// The kind for metric labels: a kind this webhook checks, or `other`, so that a
    /// client posting made-up kinds cannot grow the metrics without bound.
    pub kind_label: &'static str,
    /// The operation.
    pub operation: Operation,
    /// Whether the request was a dry run.
    pub dry_run: bool,
}

/// Decodes an AdmissionReview body, with the failing field named on error.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest, ReviewError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let review: AdmissionReview = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        ReviewError::Decode(if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        })
    })?;
    de.end()
        .map_err(|e| ReviewError::Decode(format!("trailing data: {e}")))?;
    if review.api_version != ADMISSION_API_VERSION || review.kind != ADMISSION_KIND {
        return Err(ReviewError::WrongType(review.api_version, review.kind));
    }
    review.request.ok_or(ReviewError::NoRequest)
}

/// What an `enforce` violation does to a workload (anything but a Pod).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkloadEnforcement {
    /// Deny it, as for a Pod: what the offline check reports, and the earliest feedback.
    #[default]
    Deny,
    /// Allow it with a warning, as Pod Security Admission does: the pods it creates are
    /// denied anyway, and a workload webhook that fails open (`failurePolicy: Ignore`)
    /// should not block on its own.
    Warn,
}

/// Decodes and reviews an AdmissionReview body.
pub fn review_body(policy: &Policy, body: &[u8]) -> Result<Reviewed, ReviewError> {
    Ok(review(policy, decode(body)?))
}

/// Decodes and reviews an AdmissionReview body, with `workloads` deciding what enforced
/// violations do to workloads.
pub fn review_body_with(
    policy: &Policy,
    body: &[u8],
    workloads: WorkloadEnforcement,
) -> Result<Reviewed, ReviewError> {
    Ok(review_with(policy, decode(body)?, workloads))
}

/// Decides one request, denying workloads like pods.
pub fn review(policy: &Policy, req: AdmissionRequest) -> Reviewed {
    review_with(policy, req, WorkloadEnforcement::Deny)
}

/// Decides one request.
pub fn review_with(
    policy: &Policy,
    req: AdmissionRequest,
    workloads: WorkloadEnforcement,
) -> Reviewed {
    let kind = if req.kind.group.is_empty() {
        req.kind.kind.clone()
    } else {
        format!("{}.{}", req.kind.kind, req.kind.group)
    };
    let group = req.kind.group.as_str();
    let kind_label = PodBearingKind::from_group_kind(group, &req.kind.kind)
        .map(PodBearingKind::as_str)
        .or_else(|| LotabotsKind::from_group_kind(group, &req.kind.kind).map(LotabotsKind::as_str))
        .unwrap_or("other");
    let object = describe(&req);
    let mut verdict = decide(policy, &req);
    let is_workload = PodBearingKind::from_group_kind(group, &req.kind.kind)
        .is_some_and(|k| k != PodBearingKind::Pod);
    // A node agent's workload is denied outright (node_binding): its pods would be created
    // by a controller, not by the agent, and never be checked against its node.
    let by_agent = Requester(req.user_info.as_ref())
        .username()
        .is_some_and(|u| policy.agent_pods.is_agent(u));
    if workloads == WorkloadEnforcement::Warn && is_workload && !by_agent {
        soften(&mut verdict);
    }
    let response = respond(&req.uid, &verdict);
    Reviewed {
        response,
        verdict,
        object,
        kind,
        kind_label,
        operation: req.operation,
        dry_run: req.dry_run.unwrap_or(false),
    }
}

fn describe(req: &AdmissionRequest) -> String {
    let name = req
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            let meta = req
                .object
                .as_ref()
                .or(req.old_object.as_ref())?
                .get("metadata")?;
            meta.get("name")
                .or_else(|| meta.get("generateName"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default();
    match req.namespace.as_deref().filter(|n| !n.is_empty()) {
        Some(ns) => format!("{} {ns}/{name}", req.kind.kind),
        None => format!("{} {name}", req.kind.kind),
    }
}

fn decide(policy: &Policy, req: &AdmissionRequest) -> Verdict {
    match req.operation {
        // CONNECT carries no pod spec and cannot add a mount.
        Operation::Connect => return Verdict::default(),
        Operation::Delete => return decide_delete(policy, req),
        Operation::Create | Operation::Update => {}
    }
    let group = req.kind.group.as_str();
    if let Some(k) = LotabotsKind::from_group_kind(group, &req.kind.kind) {
        let Some(obj) = &req.object else {
            return Verdict::rejected(400, "BadRequest", "request.object: missing");
        };
        let errs = crd_validation::validate(k, obj);
        return if errs.is_empty() {
            Verdict::default()
        } else {
            Verdict::rejected(422, "Invalid", crd_validation::message(k, &errs))
        };
    }
    let Some(kind) = PodBearingKind::from_group_kind(group, &req.kind.kind) else {
        return Verdict::note(format!(
            "lotabots-webhook does not check {} objects; allowed unchecked",
            req.kind.kind
        ));
    };
    // Of the pod subresources only ephemeralcontainers changes what runs; the others
    // (status, binding, eviction, resize) carry no new container or volume.
    if kind == PodBearingKind::Pod
        && let Some(sub) = req.sub_resource.as_deref().filter(|s| !s.is_empty())
        && sub != "ephemeralcontainers"
    {
        return Verdict::default();
    }
    let who = Requester(req.user_info.as_ref());
    if kind != PodBearingKind::Pod
        && let Binding::Denied(why) =
            node_binding::check_workload(&policy.agent_pods, who, &req.kind.kind)
    {
        return Verdict::rejected(403, "Forbidden", why);
    }
    let Some(obj) = &req.object else {
        return Verdict::rejected(400, "BadRequest", "request.object: missing");
    };
    let new = match extract_pod(kind, obj) {
        Ok(Some(p)) => p,
        Ok(None) => return Verdict::default(),
        Err(e) => return Verdict::rejected(400, "BadRequest", extract_message(&e)),
    };
    if kind == PodBearingKind::Pod
        && let Binding::Denied(why) = node_binding::check_pod(
            &policy.agent_pods,
            who,
            request_namespace(req, obj),
            &new.spec,
            new.spec_path,
        )
    {
        return Verdict::rejected(403, "Forbidden", why);
    }
    // An UPDATE that leaves the pod spec as it was (labels, finalizers, scale, status) adds
    // nothing to run. Denying it would block finalizer removal and scaling of objects that
    // predate the policy, which is how a webhook wedges a cluster.
    if req.operation == Operation::Update
        && let Some(old) = &req.old_object
        && let Ok(Some(old)) = extract_pod(kind, old)
        && old.spec == new.spec
    {
        return Verdict::default();
    }
    let namespace = request_namespace(req, obj);
    let mut violations = evaluate_pod(policy, namespace, &new.spec, new.spec_path);
    if !new.unknown_fields.is_empty() {
        let rule = Rule::UnknownFields;
        let who = crate::evaluate::PodIdentity::of(namespace, &new.spec);
        if !policy.pod_exempt(rule, who.namespace, who.service_account) {
            let shown: Vec<&str> = new
                .unknown_fields
                .iter()
                .take(3)
                .map(String::as_str)
                .collect();
            let more = new.unknown_fields.len().saturating_sub(3);
            violations.push(Violation {
                rule,
                mode: policy.rule(rule).mode,
                container: None,
                volume: None,
                field: new.unknown_fields[0].clone(),
                message: format!(
                    "fields unknown to this webhook went unchecked: {}{}",
                    shown.join(", "),
                    if more > 0 {
                        format!(" and {more} more")
                    } else {
                        String::new()
                    }
                ),
            });
        }
    }
    Verdict {
        violations,
        ..Verdict::default()
    }
}

/// A DELETE carries no new object, so it cannot add a mount; only an agent's delete of a
/// pod is checked, against its node ([`node_binding::check_pod_delete`]).
fn decide_delete(policy: &Policy, req: &AdmissionRequest) -> Verdict {
    if PodBearingKind::from_group_kind(&req.kind.group, &req.kind.kind) != Some(PodBearingKind::Pod)
    {
        return Verdict::default();
    }
    let old = req.old_object.as_ref();
    let namespace = request_namespace(req, old.unwrap_or(&Value::Null));
    match node_binding::check_pod_delete(
        &policy.agent_pods,
        Requester(req.user_info.as_ref()),
        namespace,
        old,
    ) {
        Binding::Denied(why) => Verdict::rejected(403, "Forbidden", why),
        Binding::NotAgent | Binding::Allowed => Verdict::default(),
    }
}

/// The namespace of the request, else of the object, else `default`.
fn request_namespace<'a>(req: &'a AdmissionRequest, obj: &'a Value) -> &'a str {
    req.namespace
        .as_deref()
        .filter(|n| !n.is_empty())
        .or_else(|| {
            obj.get("metadata")
                .and_then(|m| m.get("namespace"))
                .and_then(Value::as_str)
        })
        .unwrap_or("default")
}

/// Turns enforced violations and rejections into warnings, saying the pods would be denied.
fn soften(v: &mut Verdict) {
    for x in &mut v.violations {
        if x.mode == Mode::Enforce {
            x.mode = Mode::Warn;
            x.message = format!("{} (its pods will be denied)", x.message);
        }
    }
    if let Some(r) = v.rejection.take() {
        v.notes
            .push(format!("{} (its pods will be denied)", r.message));
    }
}

fn extract_message(e: &ExtractError) -> String {
    format!("cannot read the pod spec: {e}")
}

/// The AdmissionReview response for a verdict.
pub fn respond(uid: &str, verdict: &Verdict) -> AdmissionReviewResponse {
    let status = verdict.denial().map(|r| ResponseStatus {
        code: r.code,
        reason: r.reason.to_owned(),
        message: r.message,
    });
    let audits = verdict.audits();
    let mut audit_annotations = BTreeMap::new();
    if !audits.is_empty() {
        audit_annotations.insert(AUDIT_ANNOTATION.to_owned(), audits.join("; "));
    }
    AdmissionReviewResponse {
        api_version: ADMISSION_API_VERSION.to_owned(),
        kind: ADMISSION_KIND.to_owned(),
        response: AdmissionResponse {
            uid: uid.to_owned(),
            allowed: status.is_none(),
            status,
            warnings: verdict.warnings(),
            audit_annotations,
        },
    }
}
