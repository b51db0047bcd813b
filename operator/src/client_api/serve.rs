//! Running the client API in `run`: signing keys from their Secret (rotated in the
//! background), the attestation caches, the authenticator, and the HTTPS listener with the
//! operator's serving certificate. Every part is supervised: if any stops, `serve`
//! returns an error and `run` ends the process.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum_server::tls_rustls::RustlsConfig;
use jiff::Timestamp;
use kube::Api;

use super::audit::AuditTrail;
use super::auth::{ClientAuthenticator, OidcConfig, TokenReviewConfig};
use super::config::ClientApiSettings;
use super::source::{Attestations, KubeModelRequests};
use super::{ClientApi, ClientApiMetrics, ClientApiParts};
use crate::evidence_api::LatestEvidence;
use crate::tokens::TokenSigner;
use crate::tokens::jwks::{CachedJwks, http_client};
use crate::tokens::keys::{KeyRing, KeyStore};

/// How often the signing keys are checked for rotation.
const KEY_CHECK: Duration = Duration::from_secs(600);

/// Serves the client API until a part of it fails.
pub async fn serve(
    client: kube::Client,
    namespace: String,
    settings: ClientApiSettings,
    tls: RustlsConfig,
    evidence: Option<Arc<LatestEvidence>>,
    audit: Option<Arc<dyn AuditTrail>>,
    metrics: ClientApiMetrics,
) -> anyhow::Result<()> {
    let store = KeyStore {
        namespace,
        secret: settings.tokens.secret.clone(),
        rotation: settings.tokens.rotation,
    };
    let (keys, changes) = store
        .reconcile(&client, Timestamp::now())
        .await
        .with_context(|| {
            format!(
                "loading the token signing keys from Secret {}",
                store.secret
            )
        })?;
    for change in changes {
        tracing::info!(%change, "token signing keys");
    }
    let ring = Arc::new(KeyRing::new(keys));
    let keys_upkeep = store.keep_current(client.clone(), ring.clone(), KEY_CHECK);

    let oidc = match &settings.oidc {
        None => None,
        Some(o) => {
            let ca = match &o.ca_file {
                Some(p) => Some(
                    std::fs::read(p)
                        .with_context(|| format!("reading --oidc-ca-file {}", p.display()))?,
                ),
                None => None,
            };
            let http =
                http_client(ca.as_deref()).map_err(|e| anyhow::anyhow!("--oidc-ca-file: {e}"))?;
            let jwks = Arc::new(CachedJwks::new(
                o.jwks.clone(),
                http,
                Duration::from_secs(300),
                Duration::from_secs(30),
            ));
            // Fail at start, not at the first caller, when the keys cannot be had.
            jwks.keys(None)
                .await
                .with_context(|| format!("loading the OIDC keys from {}", o.jwks))?;
            Some(OidcConfig {
                issuer: o.issuer.clone(),
                audiences: o.audiences.clone(),
                jwks,
                algorithms: o.algorithms.clone(),
                leeway: o.leeway,
                username_claim: o.username_claim.clone(),
                groups_claim: o.groups_claim.clone(),
                roles_claim: o.roles_claim.clone(),
            })
        }
    };
    let auth = ClientAuthenticator::new(
        oidc,
        Some(TokenReviewConfig {
            reviews: Api::all(client.clone()),
            audience: settings.service_account_audience.clone(),
            cache_ttl: Duration::from_secs(10),
        }),
        settings.bindings.clone(),
    );
    let (data, watches) = Attestations::watch(client.clone(), evidence);
    let api = Arc::new(ClientApi::new(ClientApiParts {
        auth,
        data,
        models: Arc::new(KubeModelRequests(client)),
        audit,
        signer: TokenSigner::new(settings.tokens.issuer.clone(), settings.tokens.ttl, ring),
        limits: settings.limits,
        metrics,
    }));
    let server = axum_server::bind_rustls(settings.listen, tls).serve(
        api.clone()
            .router()
            .into_make_service_with_connect_info::<SocketAddr>(),
    );
    tracing::info!(listen = %settings.listen, issuer = %settings.tokens.issuer, "client API serving");
    tokio::select! {
        r = server => Err(anyhow::anyhow!("the client API server stopped: {r:?}")),
        () = watches => Err(anyhow::anyhow!("the client API's attestation watches stopped")),
        () = keys_upkeep => Err(anyhow::anyhow!("token signing key upkeep stopped")),
        () = super::housekeeping(api, Duration::from_secs(60)) => Err(anyhow::anyhow!("client API housekeeping stopped")),
    }
}
