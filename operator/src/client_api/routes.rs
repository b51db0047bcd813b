//! The handlers. Each authenticates the caller (the [`Caller`] extractor), checks the
//! route's permission in the resource's namespace, and answers from the caches; every
//! failure is a problem document naming what was wrong.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use base64::Engine as _;
use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_crds::model_attestation::{ModelAttestation, ModelAttestationSpec};
use serde::de::DeserializeOwned;

use super::ClientApi;
use super::problem::{ApiError, FieldProblem, Problem};
use super::roles::{Identity, Namespaces, Permission, is_dns_label, is_dns_subdomain};
use super::views::*;
use crate::tokens::{Statement, SubjectKind};

/// The authenticated caller of a request.
pub struct Caller(pub Identity);

impl axum::extract::FromRequestParts<Arc<ClientApi>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        api: &Arc<ClientApi>,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map(|c| c.0.ip())
            .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
        api.limiters.check_address(addr)?;
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing bearer token (Authorization: Bearer <OIDC or ServiceAccount token>)"
                        .into(),
                )
            })?;
        let identity = api.auth.authenticate(token).await?;
        api.limiters.check_identity(&identity.user)?;
        Ok(Caller(identity))
    }
}

/// Decodes a query string into `T`, naming the parameter at fault.
fn query<T: DeserializeOwned + Default>(raw: Option<String>) -> Result<T, ApiError> {
    let Some(raw) = raw.filter(|q| !q.is_empty()) else {
        return Ok(T::default());
    };
    let pairs = form_urlencoded::parse(raw.as_bytes());
    let mut seen = BTreeSet::new();
    for (k, _) in pairs {
        if !seen.insert(k.clone()) {
            return Err(ApiError::param(k, "given more than once"));
        }
    }
    serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs)).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        // An unknown parameter fails on its name, before a path exists: take it from
        // serde's message ("unknown field `x`, expected …").
        let field = if path == "." {
            message
                .split('`')
                .nth(1)
                .map(str::to_owned)
                .unwrap_or_else(|| "query".into())
        } else {
            path
        };
        ApiError::param(field, message)
    })
}

/// A path parameter that must be a DNS subdomain (object and node names) or, for
/// namespaces, a DNS label.
fn name(field: &str, value: &str) -> Result<(), ApiError> {
    let ok = if field == "namespace" {
        is_dns_label(value)
    } else {
        is_dns_subdomain(value)
    };
    if ok {
        Ok(())
    } else if field == "namespace" {
        Err(ApiError::param(
            field,
            format!(
                "{value:?} is not a namespace name (lowercase letters, digits, '-', at most 63)"
            ),
        ))
    } else {
        Err(ApiError::param(
            field,
            format!(
                "{value:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.', at most 253)"
            ),
        ))
    }
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(v)| v)
        .map_err(|e| ApiError::param("path", e.body_text()))
}

/// The body's bytes, an oversized body being a 413.
fn body_bytes(body: Result<Bytes, BytesRejection>, limit: usize) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::TooLarge(limit),
        _ => ApiError::body("/", e.body_text()),
    })
}

/// A JSON body, decoded strictly; a bad field is named by its JSON pointer.
fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> Result<T, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(body))
        .map_err(|e| ApiError::body(json_pointer(e.path()), e.inner().to_string()))
}

/// A JSON body that may be left out or `null` (then `T::default()`).
fn optional_json_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        return Ok(T::default());
    }
    // `null` is as good as no body.
    json_body::<Option<T>>(headers, body).map(Option::unwrap_or_default)
}

/// `serde_path_to_error`'s path as a JSON pointer (`/spec/source/uri`, `/` for the root).
fn json_pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let pointer: String = path
        .iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(format!("/{index}")),
            Segment::Map { key } => Some(format!("/{key}")),
            Segment::Enum { variant } => Some(format!("/{variant}")),
            Segment::Unknown => None,
        })
        .collect();
    if pointer.is_empty() {
        "/".into()
    } else {
        pointer
    }
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 500;

/// Items after the `continue` key, at most `limit`, and the next `continue`.
fn paginate<T>(
    mut items: Vec<(String, T)>,
    continue_: Option<&str>,
    limit: Option<u32>,
) -> Result<(Vec<T>, Option<String>), ApiError> {
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(n) if (1..=MAX_PAGE).contains(&n) => n,
        Some(n) => {
            return Err(ApiError::param(
                "limit",
                format!("{n} is not between 1 and {MAX_PAGE}"),
            ));
        }
    } as usize;
    let after = continue_
        .map(|c| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ApiError::param("continue", "not a continue token of this API (pass the previous page's `continue` unchanged)")
                })
        })
        .transpose()?;
    items.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rest = items
        .into_iter()
        .filter(|(k, _)| after.as_ref().is_none_or(|a| k > a))
        .peekable();
    let mut page = Vec::new();
    let mut last = None;
    while page.len() < limit {
        match rest.next() {
            Some((k, v)) => {
                last = Some(k);
                page.push(v);
            }
            None => break,
        }
    }
    let next = if rest.peek().is_some() {
        last.map(|k| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(k))
    } else {
        None
    };
    Ok((page, next))
}

fn require(caller: &Identity, perm: Permission, namespace: Option<&str>) -> Result<(), ApiError> {
    if caller.may(perm, namespace) {
        return Ok(());
    }
    let what = match perm {
        Permission::Read => "read attestations",
        Permission::Token => "fetch attestation tokens",
        Permission::Request => "request model attestations",
        Permission::Audit => "read the audit trail",
    };
    Err(ApiError::Forbidden(match namespace {
        Some(ns) => format!("{} may not {what} in namespace {ns:?}", caller.user),
        None => format!("{} may not {what} cluster-wide", caller.user),
    }))
}

/// List GpuAttestations with their verdicts.
#[utoipa::path(
    get, path = "/v1/gpu-attestations", tag = "gpu",
    params(GpuListQuery),
    responses(
        (status = 200, description = "A page of GpuAttestations, by name", body = GpuAttestationList),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No cluster-wide role", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading or a dependency down", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_gpu(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<GpuAttestationList>, ApiError> {
    let q: GpuListQuery = query(raw)?;
    require(&caller, Permission::Read, None)?;
    if let Some(node) = &q.node {
        name("node", node)?;
    }
    api.data.ready()?;
    let items = api
        .data
        .gpu
        .state()
        .iter()
        .filter(|a| {
            q.node.as_ref().is_none_or(|n| {
                a.status
                    .as_ref()
                    .is_some_and(|s| s.nodes.iter().any(|x| &x.node == n))
            })
        })
        .map(|a| GpuAttestationView::from(a.as_ref()))
        .filter(|v| q.verdict.is_none_or(|want| v.verdict == want))
        .map(|v| (v.name.clone(), v))
        .collect();
    let (items, continue_) = paginate(items, q.continue_.as_deref(), q.limit)?;
    Ok(Json(GpuAttestationList { items, continue_ }))
}

/// Get one GpuAttestation.
#[utoipa::path(
    get, path = "/v1/gpu-attestations/{name}", tag = "gpu",
    params(("name" = String, Path, description = "GpuAttestation name", max_length = 253, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")),
    responses(
        (status = 200, description = "The GpuAttestation", body = GpuAttestationView),
        (status = 400, description = "The name is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No cluster-wide role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such GpuAttestation", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_gpu(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<GpuAttestationView>, ApiError> {
    let att_name = path(p)?;
    name("name", &att_name)?;
    require(&caller, Permission::Read, None)?;
    api.data.ready()?;
    api.data
        .gpu
        .get(&kube::runtime::reflector::ObjectRef::new(&att_name))
        .map(|a| Json(GpuAttestationView::from(a.as_ref())))
        .ok_or_else(|| ApiError::NotFound(format!("no GpuAttestation {att_name:?}")))
}

/// List ModelAttestations in the namespaces the caller may read.
#[utoipa::path(
    get, path = "/v1/model-attestations", tag = "model",
    params(ModelListQuery),
    responses(
        (status = 200, description = "A page of ModelAttestations, by namespace and name", body = ModelAttestationList),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in that namespace", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_models(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<ModelAttestationList>, ApiError> {
    let q: ModelListQuery = query(raw)?;
    if let Some(ns) = &q.namespace {
        name("namespace", ns)?;
        require(&caller, Permission::Read, Some(ns))?;
    }
    let visible = caller.namespaces(Permission::Read);
    if visible == Namespaces::Only(BTreeSet::new()) {
        return Err(ApiError::Forbidden(format!(
            "{} may not read attestations in any namespace",
            caller.user
        )));
    }
    api.data.ready()?;
    let items = api
        .data
        .model
        .state()
        .iter()
        .filter(|a| {
            let ns = a.metadata.namespace.as_deref().unwrap_or_default();
            visible.contains(ns) && q.namespace.as_deref().is_none_or(|want| want == ns)
        })
        .map(|a| ModelAttestationView::from(a.as_ref()))
        .filter(|v| q.verdict.is_none_or(|want| v.verdict == want))
        .map(|v| (format!("{}/{}", v.namespace, v.name), v))
        .collect();
    let (items, continue_) = paginate(items, q.continue_.as_deref(), q.limit)?;
    Ok(Json(ModelAttestationList { items, continue_ }))
}

fn model_of(api: &ClientApi, ns: &str, att_name: &str) -> Result<Arc<ModelAttestation>, ApiError> {
    api.data.ready()?;
    api.data
        .model
        .get(&kube::runtime::reflector::ObjectRef::new(att_name).within(ns))
        .ok_or_else(|| ApiError::NotFound(format!("no ModelAttestation {ns}/{att_name}")))
}

/// Get one ModelAttestation.
#[utoipa::path(
    get, path = "/v1/namespaces/{namespace}/model-attestations/{name}", tag = "model",
    params(
        ("namespace" = String, Path, description = "Namespace", max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        ("name" = String, Path, description = "ModelAttestation name", max_length = 253, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
    ),
    responses(
        (status = 200, description = "The ModelAttestation", body = ModelAttestationView),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in that namespace", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such ModelAttestation", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn get_model(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    p: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<ModelAttestationView>, ApiError> {
    let (ns, att_name) = path(p)?;
    name("namespace", &ns)?;
    name("name", &att_name)?;
    require(&caller, Permission::Read, Some(&ns))?;
    let att = model_of(&api, &ns, &att_name)?;
    Ok(Json(ModelAttestationView::from(att.as_ref())))
}

/// Request a model attestation: creates a ModelAttestation in the namespace.
#[utoipa::path(
    post, path = "/v1/namespaces/{namespace}/model-attestations", tag = "model",
    params(("namespace" = String, Path, description = "Namespace", max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")),
    request_body(content = ModelAttestationRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; the verdict follows in its status", body = ModelAttestationView),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No requester role in that namespace", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such namespace", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "It exists already", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body or the spec is invalid; `errors` names each field", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The Kubernetes API is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_model(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ModelAttestationView>), ApiError> {
    let ns = path(p)?;
    name("namespace", &ns)?;
    require(&caller, Permission::Request, Some(&ns))?;
    let body = body_bytes(body, api.limits.body_bytes)?;
    let req: ModelAttestationRequest = json_body(&headers, &body)?;
    if !is_dns_subdomain(&req.name) {
        return Err(ApiError::body(
            "/name",
            format!(
                "{:?} is not a Kubernetes object name (lowercase letters, digits, '-', '.', at most 253)",
                req.name
            ),
        ));
    }
    let spec: ModelAttestationSpec = serde_path_to_error::deserialize(req.spec).map_err(|e| {
        let inner = json_pointer(e.path());
        ApiError::body(
            format!("/spec{}", inner.trim_end_matches('/')),
            e.inner().to_string(),
        )
    })?;
    spec.validate().map_err(|errs| {
        ApiError::InvalidBody(
            errs.into_iter()
                .map(|e| FieldProblem {
                    field: format!("/{}", e.path.replace('.', "/")),
                    message: e.message,
                })
                .collect(),
        )
    })?;
    let mut att = ModelAttestation::new(&req.name, spec);
    att.metadata.namespace = Some(ns.clone());
    att.metadata.annotations = Some([(REQUESTED_BY.to_owned(), caller.user.clone())].into());
    let created = api.models.create(att).await?;
    tracing::info!(namespace = %ns, name = %req.name, user = %caller.user, "model attestation requested");
    Ok((
        StatusCode::CREATED,
        Json(ModelAttestationView::from(&created)),
    ))
}

fn validate_token_body(body: &TokenRequestBody) -> Result<(), ApiError> {
    if let Some(n) = &body.nonce
        && !(8..=88).contains(&n.len())
    {
        return Err(ApiError::body("/nonce", "must be 8 to 88 characters"));
    }
    if let Some(n) = &body.nonce
        && !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::body(
            "/nonce",
            "must be base64url or hex characters",
        ));
    }
    if let Some(a) = &body.audience
        && !(1..=256).contains(&a.len())
    {
        return Err(ApiError::body("/audience", "must be 1 to 256 characters"));
    }
    Ok(())
}

/// Fetch an attestation token for a node: its verdict under every GpuAttestation that
/// lists it (the worst wins), its GPUs and its evidence digest.
#[utoipa::path(
    post, path = "/v1/nodes/{node}/token", tag = "tokens",
    params(("node" = String, Path, description = "Node name", max_length = 253, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")),
    request_body(content = Option<TokenRequestBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "A signed token", body = TokenResponse),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No cluster-wide role", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No GpuAttestation lists the node", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn node_token(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let node = path(p)?;
    name("node", &node)?;
    require(&caller, Permission::Token, None)?;
    let body = body_bytes(body, api.limits.body_bytes)?;
    let req: TokenRequestBody = optional_json_body(&headers, &body)?;
    validate_token_body(&req)?;
    api.data.ready()?;
    let mut entries: Vec<(String, lotabots_crds::gpu_attestation::NodeSummary)> = api
        .data
        .gpu
        .state()
        .iter()
        .filter_map(|a| {
            let entry = a.status.as_ref()?.nodes.iter().find(|n| n.node == node)?;
            Some((a.metadata.name.clone().unwrap_or_default(), entry.clone()))
        })
        .collect();
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no GpuAttestation lists node {node:?}"
        )));
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    // Verdict's order is Failed < Unknown < Attested: the minimum is the worst.
    let verdict = entries
        .iter()
        .map(|(_, e)| e.verdict)
        .min()
        .unwrap_or(Verdict::Unknown);
    let digests: BTreeSet<&String> = entries
        .iter()
        .filter_map(|(_, e)| e.evidence_digest.as_ref())
        .collect();
    let evidence_digest = (digests.len() == 1)
        .then(|| digests.into_iter().next().cloned())
        .flatten();
    let gpus = api
        .data
        .evidence
        .as_ref()
        .and_then(|e| e.get(&node))
        .filter(|e| Some(&e.digest) == evidence_digest.as_ref())
        .map(|e| {
            e.evidence
                .gpus
                .iter()
                .filter_map(|g| g.uuid.value().cloned())
                .collect()
        })
        .unwrap_or_default();
    let statement = Statement {
        kind: SubjectKind::Node,
        subject: node.clone(),
        verdict,
        reasons: entries
            .iter()
            .flat_map(|(att, e)| e.reasons.iter().map(move |r| format!("{att}: {r}")))
            .collect(),
        gpus,
        evidence_digest,
        attestations: entries.into_iter().map(|(a, _)| a).collect(),
    };
    issue(&api, &caller, statement, req)
}

/// Fetch an attestation token for a model: its verdict, subject its manifest digest.
#[utoipa::path(
    post, path = "/v1/namespaces/{namespace}/model-attestations/{name}/token", tag = "tokens",
    params(
        ("namespace" = String, Path, description = "Namespace", max_length = 63, pattern = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
        ("name" = String, Path, description = "ModelAttestation name", max_length = 253, pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
    ),
    request_body(content = Option<TokenRequestBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "A signed token", body = TokenResponse),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "No role in that namespace", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such ModelAttestation", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "No manifest digest verified yet", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The body is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Cache loading", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn model_token(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    p: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<TokenResponse>, ApiError> {
    let (ns, att_name) = path(p)?;
    name("namespace", &ns)?;
    name("name", &att_name)?;
    require(&caller, Permission::Token, Some(&ns))?;
    let body = body_bytes(body, api.limits.body_bytes)?;
    let req: TokenRequestBody = optional_json_body(&headers, &body)?;
    validate_token_body(&req)?;
    let att = model_of(&api, &ns, &att_name)?;
    let view = ModelAttestationView::from(att.as_ref());
    let digest = view.manifest_digest.clone().ok_or_else(|| {
        ApiError::Conflict(format!(
            "ModelAttestation {ns}/{att_name} has no verified manifest digest yet"
        ))
    })?;
    let verdict = match view.verdict {
        VerdictName::Attested => Verdict::Attested,
        VerdictName::Failed => Verdict::Failed,
        VerdictName::Unknown => Verdict::Unknown,
    };
    let statement = Statement {
        kind: SubjectKind::Model,
        subject: digest.clone(),
        verdict,
        reasons: view.reasons,
        gpus: Vec::new(),
        evidence_digest: Some(digest),
        attestations: vec![format!("{ns}/{att_name}")],
    };
    issue(&api, &caller, statement, req)
}

fn issue(
    api: &ClientApi,
    caller: &Identity,
    statement: Statement,
    req: TokenRequestBody,
) -> Result<Json<TokenResponse>, ApiError> {
    let kind = statement.kind;
    let issued = api
        .signer
        .issue(statement, req.audience, req.nonce, Timestamp::now())
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    api.metrics
        .tokens
        .with_label_values(&[match kind {
            SubjectKind::Node => "node",
            SubjectKind::Model => "model",
        }])
        .inc();
    tracing::info!(user = %caller.user, sub = %issued.claims.sub, jti = %issued.claims.jti, verdict = %issued.claims.verdict, "attestation token issued");
    Ok(Json(TokenResponse::new(issued)))
}

fn audit_trail(api: &ClientApi) -> Result<&Arc<dyn super::audit::AuditTrail>, ApiError> {
    api.audit
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("no audit store is configured".into()))
}

/// Read the audit trail, in order.
#[utoipa::path(
    get, path = "/v1/audit", tag = "audit",
    params(AuditQuery),
    responses(
        (status = 200, description = "A page of the trail", body = AuditPage),
        (status = 400, description = "A parameter is invalid", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an auditor", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The audit store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn audit(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
    RawQuery(raw): RawQuery,
) -> Result<Json<AuditPage>, ApiError> {
    let q: AuditQuery = query(raw)?;
    require(&caller, Permission::Audit, None)?;
    let after = q.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::param("after", format!("{after} is negative")));
    }
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::param(
            "limit",
            format!("{limit} is not between 1 and 1000"),
        ));
    }
    let entries = audit_trail(&api)?
        .entries(after, limit)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_after,
    }))
}

/// Verify the audit chain: every link, and the first broken one.
#[utoipa::path(
    get, path = "/v1/audit/verify", tag = "audit",
    responses(
        (status = 200, description = "The chain's state", body = ChainVerification),
        (status = 401, description = "No valid token", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an auditor", body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "Rate limited", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The audit store is unavailable", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn audit_verify(
    State(api): State<Arc<ClientApi>>,
    Caller(caller): Caller,
) -> Result<Json<ChainVerification>, ApiError> {
    require(&caller, Permission::Audit, None)?;
    let report = audit_trail(&api)?
        .verify()
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(Json(ChainVerification {
        intact: report.first_broken.is_none(),
        rows_checked: report.rows_checked,
        first_broken: report.first_broken,
    }))
}

/// The public keys attestation tokens are signed with (current and, after a rotation,
/// previous).
#[utoipa::path(
    get, path = "/.well-known/jwks.json", tag = "tokens",
    responses((status = 200, description = "A JWK set (RFC 7517)", body = Object, content_type = "application/json")),
)]
pub async fn jwks(State(api): State<Arc<ClientApi>>) -> impl axum::response::IntoResponse {
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(api.signer.jwks()),
    )
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "The OpenAPI document of this API", body = Object, content_type = "application/json")),
)]
pub async fn openapi() -> impl axum::response::IntoResponse {
    Json(super::openapi::document())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_follow_the_continue_token_and_refuse_a_forged_one() {
        let items: Vec<(String, u32)> = (0..5).map(|i| (format!("k{i}"), i)).collect();
        let (p1, c1) = paginate(items.clone(), None, Some(2)).unwrap();
        assert_eq!(p1, [0, 1]);
        let (p2, c2) = paginate(items.clone(), c1.as_deref(), Some(2)).unwrap();
        assert_eq!(p2, [2, 3]);
        let (p3, c3) = paginate(items.clone(), c2.as_deref(), Some(2)).unwrap();
        assert_eq!((p3, c3), (vec![4], None));
        match paginate(items.clone(), Some("%%%"), None).unwrap_err() {
            ApiError::InvalidParameter { field, .. } => assert_eq!(field, "continue"),
            e => panic!("{e:?}"),
        }
        match paginate(items, None, Some(501)).unwrap_err() {
            ApiError::InvalidParameter { field, .. } => assert_eq!(field, "limit"),
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn query_errors_name_the_parameter() {
        for (q, field) in [
            ("limit=abc", "limit"),
            ("verdict=Great", "verdict"),
            ("bogus=1", "bogus"),
            ("limit=1&limit=2", "limit"),
        ] {
            match query::<GpuListQuery>(Some(q.into())).unwrap_err() {
                ApiError::InvalidParameter { field: f, .. } => assert_eq!(f, field, "{q}"),
                e => panic!("{q}: {e:?}"),
            }
        }
        let ok: GpuListQuery = query(Some("limit=5&verdict=Failed&continue=abc".into())).unwrap();
        assert_eq!(
            (ok.limit, ok.verdict, ok.continue_.as_deref()),
            (Some(5), Some(VerdictName::Failed), Some("abc"))
        );
    }
}
