//! Who is calling the client API: an OIDC JWT from the configured issuer, verified
//! against its JWKS with pinned algorithms, or a Kubernetes ServiceAccount token, checked
//! by the API server's TokenReview for the API's audience. Roles come from the bindings
//! (and an optional roles claim); a caller with no grant is refused.
//!
//! A token whose unverified `iss` is the OIDC issuer goes the OIDC way and nowhere else,
//! so a forged OIDC token cannot fall through to another check; every other token is
//! reviewed by the API server, which rejects anything it did not issue. Reviews are
//! cached briefly by the token's SHA-256 so that a busy client does not cost one API
//! server round trip per request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::{Api, PostParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::problem::ApiError;
use super::roles::{Grant, Identity, RoleBinding, grants_of};
use crate::tokens::jwks::CachedJwks;
use crate::tokens::jwt::{self, JwtPolicy};

/// The OIDC issuer the API trusts.
pub struct OidcConfig {
    /// `iss` required.
    pub issuer: String,
    /// One of these must be in `aud`.
    pub audiences: Vec<String>,
    /// The issuer's keys.
    pub jwks: Arc<CachedJwks>,
    /// Accepted algorithms (asymmetric only).
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp`/`nbf`.
    pub leeway: Duration,
    /// The claim holding the user name.
    pub username_claim: String,
    /// The claim holding the groups (a string array).
    pub groups_claim: String,
    /// A claim holding grants directly (`ROLE` or `ROLE/NAMESPACE` strings), if any.
    pub roles_claim: Option<String>,
}

/// Checks ServiceAccount tokens with the API server.
pub struct TokenReviewConfig {
    /// The TokenReview API.
    pub reviews: Api<TokenReview>,
    /// The audience client tokens must be minted for.
    pub audience: String,
    /// How long a review is reused.
    pub cache_ttl: Duration,
}

/// A reviewed user: name and groups.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReviewedUser {
    /// `system:serviceaccount:NS:NAME` for ServiceAccounts.
    pub username: String,
    /// Its groups.
    pub groups: Vec<String>,
}

/// Authenticates client API callers.
pub struct ClientAuthenticator {
    oidc: Option<OidcConfig>,
    review: Option<TokenReviewConfig>,
    bindings: Vec<RoleBinding>,
    cache: Mutex<HashMap<[u8; 32], (ReviewedUser, Instant)>>,
}

/// Most reviews cached at once; past it the cache starts over (bounded memory).
const MAX_CACHED_REVIEWS: usize = 10_000;

impl ClientAuthenticator {
    /// An authenticator with the given methods (either may be off) and role bindings.
    pub fn new(
        oidc: Option<OidcConfig>,
        review: Option<TokenReviewConfig>,
        bindings: Vec<RoleBinding>,
    ) -> Self {
        Self {
            oidc,
            review,
            bindings,
            cache: Mutex::default(),
        }
    }

    /// The identity behind `token`, with at least one grant.
    pub async fn authenticate(&self, token: &str) -> Result<Identity, ApiError> {
        let identity = match &self.oidc {
            Some(oidc) if unverified_issuer(token).as_deref() == Some(oidc.issuer.as_str()) => {
                self.oidc_identity(oidc, token).await?
            }
            _ => match &self.review {
                Some(review) => self.reviewed_identity(review, token).await?,
                None => {
                    return Err(ApiError::Unauthenticated(
                        "the token is not from the configured OIDC issuer, and ServiceAccount tokens are not accepted"
                            .into(),
                    ));
                }
            },
        };
        if identity.grants.is_empty() {
            return Err(ApiError::Forbidden(format!(
                "{} has no role on this API (no role binding matches its user name or groups)",
                identity.user
            )));
        }
        Ok(identity)
    }

    async fn oidc_identity(&self, oidc: &OidcConfig, token: &str) -> Result<Identity, ApiError> {
        let kid = jsonwebtoken::decode_header(token).ok().and_then(|h| h.kid);
        let keys = oidc
            .jwks
            .keys(kid.as_deref())
            .await
            .map_err(|e| ApiError::Unavailable(format!("the OIDC issuer's keys: {e}")))?;
        let policy = JwtPolicy {
            algorithms: oidc.algorithms.clone(),
            issuer: Some(oidc.issuer.clone()),
            audiences: oidc.audiences.clone(),
            leeway: oidc.leeway,
        };
        let data = jwt::verify::<serde_json::Map<String, Value>>(token, &keys, &policy)
            .map_err(|e| ApiError::Unauthenticated(format!("OIDC token refused: {e}")))?;
        let claims = data.claims;
        let user = claims
            .get(&oidc.username_claim)
            .and_then(Value::as_str)
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(format!(
                    "OIDC token refused: no {:?} claim (the user name)",
                    oidc.username_claim
                ))
            })?
            .to_owned();
        let strings = |name: &str| -> Vec<String> {
            match claims.get(name) {
                Some(Value::Array(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                Some(Value::String(one)) => vec![one.clone()],
                _ => Vec::new(),
            }
        };
        let groups = strings(&oidc.groups_claim);
        let mut grants = grants_of(&user, &groups, &self.bindings);
        if let Some(claim) = &oidc.roles_claim {
            // Unknown role names are ignored rather than failing the caller: the issuer
            // may hold roles of other applications in the same claim.
            grants.extend(
                strings(claim)
                    .iter()
                    .filter_map(|g| g.parse::<Grant>().ok()),
            );
        }
        Ok(Identity {
            user,
            method: "oidc",
            grants,
        })
    }

    async fn reviewed_identity(
        &self,
        review: &TokenReviewConfig,
        token: &str,
    ) -> Result<Identity, ApiError> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            cache
                .get(&key)
                .filter(|(_, at)| at.elapsed() < review.cache_ttl)
                .map(|(u, _)| u.clone())
        };
        let user = match cached {
            Some(u) => u,
            None => {
                let request = TokenReview {
                    spec: TokenReviewSpec {
                        token: token.to_owned(),
                        audiences: Some(vec![review.audience.clone()]),
                    },
                    ..Default::default()
                };
                let reviewed = review
                    .reviews
                    .create(&PostParams::default(), &request)
                    .await
                    .map_err(|e| ApiError::Unavailable(format!("token review failed: {e}")))?;
                let user = user_from_review(reviewed.status.as_ref(), &review.audience)?;
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED_REVIEWS {
                    cache.clear();
                }
                cache.insert(key, (user.clone(), Instant::now()));
                user
            }
        };
        let grants: BTreeSet<Grant> = grants_of(&user.username, &user.groups, &self.bindings);
        Ok(Identity {
            user: user.username,
            method: "serviceaccount",
            grants,
        })
    }
}

/// The user of a TokenReview's status, if the API server authenticated the token for
/// `audience`; pure, so every refusal is tested.
pub fn user_from_review(
    status: Option<&TokenReviewStatus>,
    audience: &str,
) -> Result<ReviewedUser, ApiError> {
    let refused = |why: String| ApiError::Unauthenticated(format!("token refused: {why}"));
    let status = status.ok_or_else(|| refused("the review has no status".into()))?;
    if status.authenticated != Some(true) {
        return Err(refused(status.error.clone().unwrap_or_else(|| {
            "the API server did not authenticate it".into()
        })));
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(refused(format!(
            "it is for audiences {audiences:?}, not {audience:?}"
        )));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| refused("the review names no user".into()))?;
    let username = user
        .username
        .clone()
        .filter(|u| !u.is_empty())
        .ok_or_else(|| refused("the review names no user".into()))?;
    Ok(ReviewedUser {
        username,
        groups: user.groups.clone().unwrap_or_default(),
    })
}

/// The `iss` claim of a JWT, read without verifying anything (only to route it).
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    let value: Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    #[test]
    fn reviews_are_refused_unless_authenticated_for_our_audience() {
        let ok = TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(vec!["lotabots-api".into()]),
            user: Some(UserInfo {
                username: Some("system:serviceaccount:team-a:ci".into()),
                groups: Some(vec!["system:serviceaccounts:team-a".into()]),
                ..Default::default()
            }),
            error: None,
        };
        let user = user_from_review(Some(&ok), "lotabots-api").unwrap();
        assert_eq!(user.groups, ["system:serviceaccounts:team-a"]);
        let err = user_from_review(Some(&ok), "lotabots").unwrap_err();
        assert!(err.to_string().contains("not \"lotabots\""), "{err}");
        let mut denied = ok.clone();
        denied.authenticated = Some(false);
        denied.error = Some("token has expired".into());
        assert!(
            user_from_review(Some(&denied), "lotabots-api")
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        assert!(user_from_review(None, "lotabots-api").is_err());
    }
}
