//! Verifying a JWT against a key set with a pinned list of algorithms: the one code path
//! both the client API (OIDC tokens of its callers) and the attestation-token verifier
//! (ours, `token verify`) go through.
//!
//! The header is untrusted input: its `alg` must be one the caller pinned (so `none`,
//! HMAC algorithms and anything unknown are refused before a key is looked at), its `kid`
//! must name a key of the set, and the key's own type and `alg` must agree with the
//! header — an HS256 token "signed" with a published public key never meets a public key.
//! Embedded `jwk`/`jku`/`x5u` headers are ignored: keys come only from the configured set.

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, TokenData, Validation};
use serde::de::DeserializeOwned;

/// The asymmetric algorithms a verifier may pin. HMAC is never accepted: a shared secret
/// is not a credential a relying party can verify without being able to forge.
pub const ASYMMETRIC: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// What a token must satisfy besides its signature.
#[derive(Clone, Debug)]
pub struct JwtPolicy {
    /// The algorithms accepted (a subset of [`ASYMMETRIC`]).
    pub algorithms: Vec<Algorithm>,
    /// The `iss` required; `None`: any issuer.
    pub issuer: Option<String>,
    /// One of these must be in `aud`; empty: `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why a token was refused; the label is stable (metrics, problem bodies).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts with a JSON header.
    #[error("not a JWT: {0}")]
    Malformed(String),
    /// `alg` is not one of the pinned algorithms (`none`, HS*, unknown names included).
    #[error("algorithm {0} is not accepted (accepted: {1})")]
    AlgorithmNotAllowed(String, String),
    /// The header has no `kid`.
    #[error("the token names no key (no kid in its header)")]
    MissingKid,
    /// The `kid` is not in the key set (never was, or rotated out).
    #[error("unknown signing key {0:?}")]
    UnknownKid(String),
    /// The key of that `kid` is not usable with the header's `alg`.
    #[error("key {kid:?} cannot verify {alg} signatures")]
    KeyMismatch {
        /// The key.
        kid: String,
        /// The header's algorithm.
        alg: String,
    },
    /// The signature does not verify.
    #[error("the signature does not verify")]
    BadSignature,
    /// Past `exp` (plus leeway).
    #[error("the token has expired")]
    Expired,
    /// Before `nbf` (minus leeway).
    #[error("the token is not valid yet (nbf in the future)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("the token's issuer is not {0:?}")]
    WrongIssuer(String),
    /// `aud` names none of the configured audiences.
    #[error("the token's audience is not {0:?}")]
    WrongAudience(Vec<String>),
    /// A required claim is missing or has the wrong type.
    #[error("claim {0}")]
    BadClaim(String),
}

impl JwtError {
    /// A short stable label.
    pub fn label(&self) -> &'static str {
        match self {
            JwtError::Malformed(_) => "malformed",
            JwtError::AlgorithmNotAllowed(..) => "algorithm_not_allowed",
            JwtError::MissingKid => "missing_kid",
            JwtError::UnknownKid(_) => "unknown_kid",
            JwtError::KeyMismatch { .. } => "key_mismatch",
            JwtError::BadSignature => "bad_signature",
            JwtError::Expired => "expired",
            JwtError::NotYetValid => "not_yet_valid",
            JwtError::WrongIssuer(_) => "wrong_issuer",
            JwtError::WrongAudience(_) => "wrong_audience",
            JwtError::BadClaim(_) => "bad_claim",
        }
    }
}

/// The header's `alg`, read without trusting anything else in it. Unknown names (and
/// `none`) come back as the error, with the name the token used.
fn header_alg(token: &str) -> Result<(Algorithm, Option<String>), JwtError> {
    use base64::Engine as _;
    let header_b64 = token
        .split('.')
        .next()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| JwtError::Malformed("empty".into()))?;
    if token.split('.').count() != 3 {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header_b64)
        .map_err(|e| JwtError::Malformed(format!("header is not base64url: {e}")))?;
    #[derive(serde::Deserialize)]
    struct RawHeader {
        alg: Option<String>,
        kid: Option<String>,
    }
    let raw: RawHeader = serde_json::from_slice(&bytes)
        .map_err(|e| JwtError::Malformed(format!("header is not a JSON object: {e}")))?;
    let name = raw
        .alg
        .ok_or_else(|| JwtError::Malformed("header has no alg".into()))?;
    let alg = name.parse::<Algorithm>().map_err(|_| {
        JwtError::AlgorithmNotAllowed(name.clone(), String::new()) // accepted list filled in by the caller
    })?;
    Ok((alg, raw.kid))
}

fn names(algs: &[Algorithm]) -> String {
    algs.iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether `jwk` may verify `alg`: the key type must be the algorithm's family, and a
/// key that declares its own `alg` must declare this one.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    use jsonwebtoken::jwk::AlgorithmParameters as P;
    let family_ok = matches!(
        (&jwk.algorithm, alg),
        (
            P::RSA(_),
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ) | (P::EllipticCurve(_), Algorithm::ES256 | Algorithm::ES384)
            | (P::OctetKeyPair(_), Algorithm::EdDSA)
    );
    let declared_ok = match jwk.common.key_algorithm {
        None => true,
        // The two enums share their variant names (the JOSE names) but no conversion.
        Some(declared) => format!("{declared:?}") == format!("{alg:?}"),
    };
    family_ok && declared_ok
}

/// Verifies `token` against `keys` under `policy` and decodes its claims as `T`.
pub fn verify<T: DeserializeOwned>(
    token: &str,
    keys: &JwkSet,
    policy: &JwtPolicy,
) -> Result<TokenData<T>, JwtError> {
    let accepted: Vec<Algorithm> = policy
        .algorithms
        .iter()
        .copied()
        .filter(|a| ASYMMETRIC.contains(a))
        .collect();
    let (alg, kid) = header_alg(token).map_err(|e| match e {
        JwtError::AlgorithmNotAllowed(name, _) => {
            JwtError::AlgorithmNotAllowed(name, names(&accepted))
        }
        other => other,
    })?;
    if !accepted.contains(&alg) {
        return Err(JwtError::AlgorithmNotAllowed(
            format!("{alg:?}"),
            names(&accepted),
        ));
    }
    let kid = kid.ok_or(JwtError::MissingKid)?;
    let jwk = keys
        .find(&kid)
        .ok_or_else(|| JwtError::UnknownKid(kid.clone()))?;
    if !key_fits(jwk, alg) {
        return Err(JwtError::KeyMismatch {
            kid,
            alg: format!("{alg:?}"),
        });
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| JwtError::KeyMismatch {
        kid: kid.clone(),
        alg: format!("{alg:?}"),
    })?;
    let mut validation = Validation::new(alg);
    validation.algorithms = vec![alg];
    validation.leeway = policy.leeway.as_secs();
    validation.validate_nbf = true;
    let mut required = vec!["exp"];
    if let Some(iss) = &policy.issuer {
        validation.set_issuer(&[iss]);
        required.push("iss");
    }
    if policy.audiences.is_empty() {
        validation.validate_aud = false;
    } else {
        validation.set_audience(&policy.audiences);
        required.push("aud");
    }
    validation.set_required_spec_claims(&required);
    jsonwebtoken::decode::<T>(token, &key, &validation).map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => {
            JwtError::WrongIssuer(policy.issuer.clone().unwrap_or_default())
        }
        ErrorKind::InvalidAudience => JwtError::WrongAudience(policy.audiences.clone()),
        ErrorKind::MissingRequiredClaim(c) => JwtError::BadClaim(format!("{c} is missing")),
        ErrorKind::InvalidClaimFormat(c) => JwtError::BadClaim(format!("{c} has the wrong type")),
        ErrorKind::Json(e) => JwtError::BadClaim(format!("claims do not decode: {e}")),
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidKeyFormat | ErrorKind::InvalidEcdsaKey => {
            JwtError::KeyMismatch {
                kid: kid.clone(),
                alg: format!("{alg:?}"),
            }
        }
        other => JwtError::Malformed(format!("{other:?}")),
    })
}
