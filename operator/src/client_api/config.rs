//! The client API's flags (each also an environment variable) and the settings they
//! make, checked up front so that a bad configuration stops `run` with a message naming
//! the flag instead of surfacing as refused callers.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use jsonwebtoken::Algorithm;

use super::limits::Limits;
use super::roles::RoleBinding;
use crate::evidence_api::RateLimit;
use crate::tokens::jwks::JwksSource;
use crate::tokens::jwt::ASYMMETRIC;
use crate::tokens::keys::Rotation;

/// Flags of `run` for the client API.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientApiFlags {
    /// Serve the client API (HTTPS, the operator's serving certificate) on this address;
    /// unset: no client API.
    #[arg(long, env = "LOTABOTS_CLIENT_API_LISTEN")]
    pub client_api_listen: Option<SocketAddr>,
    /// Audience Kubernetes ServiceAccount tokens must be minted for to call the API
    /// (checked by TokenReview).
    #[arg(
        long,
        env = "LOTABOTS_CLIENT_API_AUDIENCE",
        default_value = "lotabots-api"
    )]
    pub client_api_audience: String,
    /// Role bindings, comma-separated: `group:NAME=ROLE[/NAMESPACE]` or
    /// `user:NAME=ROLE[/NAMESPACE]`; roles viewer, requester, auditor, admin; without a
    /// namespace the grant is cluster-wide.
    #[arg(long, env = "LOTABOTS_ROLE_BINDINGS", value_delimiter = ',')]
    pub role_binding: Vec<RoleBinding>,
    /// OIDC issuer whose tokens the API accepts (`iss`); unset: ServiceAccount tokens only.
    #[arg(long, env = "LOTABOTS_OIDC_ISSUER", requires_all = ["oidc_audience", "oidc_jwks"])]
    pub oidc_issuer: Option<String>,
    /// Audiences accepted in OIDC tokens (`aud`), comma-separated.
    #[arg(long, env = "LOTABOTS_OIDC_AUDIENCE", value_delimiter = ',')]
    pub oidc_audience: Vec<String>,
    /// The OIDC issuer's keys: an `https://` JWKS URL, or a file.
    #[arg(long, env = "LOTABOTS_OIDC_JWKS")]
    pub oidc_jwks: Option<JwksSource>,
    /// PEM CA bundle to trust for the JWKS URL besides the system's roots.
    #[arg(long, env = "LOTABOTS_OIDC_CA_FILE")]
    pub oidc_ca_file: Option<PathBuf>,
    /// Signature algorithms accepted in OIDC tokens, comma-separated (asymmetric only:
    /// RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA).
    #[arg(
        long,
        env = "LOTABOTS_OIDC_ALGORITHMS",
        value_delimiter = ',',
        default_value = "RS256,ES256"
    )]
    pub oidc_algorithms: Vec<String>,
    /// Clock skew tolerated on OIDC tokens' exp and nbf, in seconds.
    #[arg(long, env = "LOTABOTS_OIDC_LEEWAY_SECONDS", default_value_t = 60)]
    pub oidc_leeway_seconds: u64,
    /// The OIDC claim holding the user name.
    #[arg(long, env = "LOTABOTS_OIDC_USERNAME_CLAIM", default_value = "sub")]
    pub oidc_username_claim: String,
    /// The OIDC claim holding the groups the role bindings match.
    #[arg(long, env = "LOTABOTS_OIDC_GROUPS_CLAIM", default_value = "groups")]
    pub oidc_groups_claim: String,
    /// An OIDC claim holding grants directly (`ROLE` or `ROLE/NAMESPACE` strings).
    #[arg(long, env = "LOTABOTS_OIDC_ROLES_CLAIM")]
    pub oidc_roles_claim: Option<String>,
    /// `iss` of the attestation tokens; default `https://lotabots-operator.NAMESPACE.svc`.
    #[arg(long, env = "LOTABOTS_TOKEN_ISSUER")]
    pub token_issuer: Option<String>,
    /// Lifetime of an attestation token, in seconds.
    #[arg(long, env = "LOTABOTS_TOKEN_TTL_SECONDS", default_value_t = 300)]
    pub token_ttl_seconds: u64,
    /// The Secret (in the operator's namespace) holding the token signing keys; the
    /// operator creates and rotates it.
    #[arg(
        long,
        env = "LOTABOTS_TOKEN_SECRET",
        default_value = "lotabots-token-signing"
    )]
    pub token_secret: String,
    /// A signing key signs for this long before the next takes over, in seconds.
    #[arg(long, env = "LOTABOTS_TOKEN_KEY_ROTATION_SECONDS", default_value_t = 30 * 24 * 3600)]
    pub token_key_rotation_seconds: u64,
    /// A retired signing key stays published this long, in seconds (at least the token
    /// lifetime plus the relying parties' JWKS cache time).
    #[arg(long, env = "LOTABOTS_TOKEN_KEY_OVERLAP_SECONDS", default_value_t = 24 * 3600)]
    pub token_key_overlap_seconds: u64,
    /// Largest request body, in bytes.
    #[arg(long, env = "LOTABOTS_CLIENT_API_BODY_LIMIT_BYTES", default_value_t = 64 * 1024)]
    pub client_api_body_limit_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(
        long,
        env = "LOTABOTS_CLIENT_API_TIMEOUT_SECONDS",
        default_value_t = 10
    )]
    pub client_api_timeout_seconds: u64,
    /// Requests per minute per identity.
    #[arg(
        long,
        env = "LOTABOTS_CLIENT_API_RATE_PER_MINUTE",
        default_value = "600"
    )]
    pub client_api_rate_per_minute: NonZeroU32,
    /// Requests at once per identity.
    #[arg(long, env = "LOTABOTS_CLIENT_API_BURST", default_value = "100")]
    pub client_api_burst: NonZeroU32,
    /// Requests per minute per client address.
    #[arg(
        long,
        env = "LOTABOTS_CLIENT_API_ADDRESS_RATE_PER_MINUTE",
        default_value = "1200"
    )]
    pub client_api_address_rate_per_minute: NonZeroU32,
    /// Requests at once per client address.
    #[arg(long, env = "LOTABOTS_CLIENT_API_ADDRESS_BURST", default_value = "200")]
    pub client_api_address_burst: NonZeroU32,
}

/// The OIDC issuer, as configured.
#[derive(Clone, Debug)]
pub struct OidcSettings {
    /// `iss`.
    pub issuer: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// Its keys.
    pub jwks: JwksSource,
    /// Extra CA for the JWKS URL.
    pub ca_file: Option<PathBuf>,
    /// Accepted algorithms.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew.
    pub leeway: Duration,
    /// User name claim.
    pub username_claim: String,
    /// Groups claim.
    pub groups_claim: String,
    /// Roles claim.
    pub roles_claim: Option<String>,
}

/// Attestation token settings.
#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// `iss`.
    pub issuer: String,
    /// Lifetime.
    pub ttl: Duration,
    /// The Secret of the keys.
    pub secret: String,
    /// Rotation.
    pub rotation: Rotation,
}

/// Everything the client API needs from the command line.
#[derive(Clone, Debug)]
pub struct ClientApiSettings {
    /// Listen address.
    pub listen: SocketAddr,
    /// The OIDC issuer, if any.
    pub oidc: Option<OidcSettings>,
    /// Audience of ServiceAccount tokens.
    pub service_account_audience: String,
    /// Role bindings.
    pub bindings: Vec<RoleBinding>,
    /// Attestation tokens.
    pub tokens: TokenSettings,
    /// Limits.
    pub limits: Limits,
}

/// Parses accepted algorithm names; `none`, HMAC and unknown names are refused.
pub fn parse_algorithms(names: &[String]) -> anyhow::Result<Vec<Algorithm>> {
    let mut out = Vec::new();
    for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        let alg: Algorithm = name
            .parse()
            .map_err(|_| anyhow::anyhow!("--oidc-algorithms: unknown algorithm {name:?}"))?;
        if !ASYMMETRIC.contains(&alg) {
            bail!(
                "--oidc-algorithms: {name} is not accepted: only asymmetric algorithms (a shared HMAC secret is not a verifiable credential)"
            );
        }
        out.push(alg);
    }
    if out.is_empty() {
        bail!("--oidc-algorithms: at least one algorithm is required");
    }
    Ok(out)
}

impl ClientApiFlags {
    /// The settings, or `None` without `--client-api-listen`. `namespace` is the
    /// operator's (for the default token issuer).
    pub fn settings(&self, namespace: &str) -> anyhow::Result<Option<ClientApiSettings>> {
        let Some(listen) = self.client_api_listen else {
            return Ok(None);
        };
        let oidc = match &self.oidc_issuer {
            None => None,
            Some(issuer) => {
                let audiences: Vec<String> = self
                    .oidc_audience
                    .iter()
                    .map(|a| a.trim().to_owned())
                    .filter(|a| !a.is_empty())
                    .collect();
                if audiences.is_empty() {
                    bail!("--oidc-audience is required with --oidc-issuer");
                }
                Some(OidcSettings {
                    issuer: issuer.clone(),
                    audiences,
                    jwks: self
                        .oidc_jwks
                        .clone()
                        .context("--oidc-jwks is required with --oidc-issuer")?,
                    ca_file: self.oidc_ca_file.clone(),
                    algorithms: parse_algorithms(&self.oidc_algorithms)?,
                    leeway: Duration::from_secs(self.oidc_leeway_seconds),
                    username_claim: self.oidc_username_claim.clone(),
                    groups_claim: self.oidc_groups_claim.clone(),
                    roles_claim: self.oidc_roles_claim.clone(),
                })
            }
        };
        let ttl = Duration::from_secs(self.token_ttl_seconds);
        if ttl.is_zero() {
            bail!("--token-ttl-seconds must be positive");
        }
        let rotation = Rotation {
            every: Duration::from_secs(self.token_key_rotation_seconds),
            overlap: Duration::from_secs(self.token_key_overlap_seconds),
        };
        if rotation.overlap < ttl {
            bail!(
                "--token-key-overlap-seconds ({}) must be at least --token-ttl-seconds ({}): tokens signed before a rotation must stay verifiable until they expire",
                rotation.overlap.as_secs(),
                ttl.as_secs()
            );
        }
        if rotation.every.is_zero() {
            bail!("--token-key-rotation-seconds must be positive");
        }
        Ok(Some(ClientApiSettings {
            listen,
            oidc,
            service_account_audience: self.client_api_audience.clone(),
            bindings: self.role_binding.clone(),
            tokens: TokenSettings {
                issuer: self
                    .token_issuer
                    .clone()
                    .unwrap_or_else(|| format!("https://lotabots-operator.{namespace}.svc")),
                ttl,
                secret: self.token_secret.clone(),
                rotation,
            },
            limits: Limits {
                body_bytes: self.client_api_body_limit_bytes,
                timeout: Duration::from_secs(self.client_api_timeout_seconds.max(1)),
                per_identity: RateLimit {
                    per_minute: self.client_api_rate_per_minute,
                    burst: self.client_api_burst,
                },
                per_address: RateLimit {
                    per_minute: self.client_api_address_rate_per_minute,
                    burst: self.client_api_address_burst,
                },
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn none_hmac_and_unknown_algorithms_are_refused() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_algorithms(&s(&["RS256", "ES256"])).unwrap(),
            [Algorithm::RS256, Algorithm::ES256]
        );
        for bad in ["HS256", "none", "XX999"] {
            let err = parse_algorithms(&s(&[bad])).unwrap_err().to_string();
            assert!(err.contains(bad), "{err}");
        }
    }
}
