//! The OpenAPI document, generated from the handlers' annotations and the types they
//! return, so that it cannot drift from the code; `operator/openapi.json` is its checked-in
//! copy (a test compares them; `lotabots-operator openapi > operator/openapi.json`
//! regenerates it).

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::audit::{AuditEntry, BrokenLink, ChainReport};
use super::problem::{FieldProblem, Problem};
use super::routes;
use super::views::*;
use crate::tokens::{AttestationClaims, SubjectKind};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lotabots client API",
        description = "Attestations of GPU nodes and AI models, attestation tokens (ES256 JWTs, keys at /.well-known/jwks.json) and the audit trail. Authenticate with an OIDC token of the configured issuer or a Kubernetes ServiceAccount token for the API's audience; errors are RFC 9457 problem details.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        routes::list_gpu,
        routes::get_gpu,
        routes::list_models,
        routes::get_model,
        routes::create_model,
        routes::node_token,
        routes::model_token,
        routes::audit,
        routes::audit_verify,
        routes::jwks,
        routes::openapi,
    ),
    components(schemas(
        Problem, FieldProblem, VerdictName, ConditionView, NodeVerdictView, GpuAttestationView,
        GpuAttestationList, ModelAttestationView, ModelAttestationList, ModelAttestationRequest,
        TokenRequestBody, TokenResponse, AttestationClaims, SubjectKind, AuditEntry, AuditPage,
        BrokenLink, ChainReport, ChainVerification,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "gpu", description = "GpuAttestations: the verdicts on GPU nodes"),
        (name = "model", description = "ModelAttestations: the verdicts on models, and requests for new ones"),
        (name = "tokens", description = "Signed attestation tokens and their keys"),
        (name = "audit", description = "The tamper-evident audit trail"),
        (name = "meta", description = "This document"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An OIDC ID or access token of the configured issuer, or a Kubernetes ServiceAccount token minted for the API's audience",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // The crate version, not the build's: the checked-in copy stays stable.
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc
}

/// The document as the checked-in `operator/openapi.json` holds it.
pub fn pretty_json() -> String {
    let mut s = document()
        .to_pretty_json()
        .expect("the OpenAPI document serialises");
    s.push('\n');
    s
}
