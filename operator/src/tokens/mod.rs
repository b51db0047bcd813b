//! Attestation tokens: short-lived JWTs, signed ES256 by the operator, that state a
//! verdict on a node's GPUs or on a model so that a relying party can check it offline,
//! against the JWKS the client API publishes at `/.well-known/jwks.json`.
//!
//! The claims follow the Entity Attestation Token (RFC 9711) in spirit: `eat_profile`
//! names this format, `eat_nonce` carries the relying party's nonce, and the verdict,
//! reasons, GPU identities and evidence digest say what was attested.

pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod verify_cmd;

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use jsonwebtoken::Header;
use jsonwebtoken::jwk::JwkSet;
use lotabots_crds::gpu_attestation::Verdict;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use self::jwt::{JwtError, JwtPolicy};
use self::keys::{ALGORITHM, KeyRing};

/// `eat_profile` of our tokens.
pub const PROFILE: &str = "tag:lotabots.io,2026:attestation-token/v1";

/// What a token is about.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SubjectKind {
    /// A node's GPUs; `sub` is the node name.
    Node,
    /// A model; `sub` is its manifest digest.
    Model,
}

/// The claims of an attestation token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, ToSchema)]
pub struct AttestationClaims {
    /// The operator that signed it.
    pub iss: String,
    /// The node name, or the model's manifest digest (`sha256:…`).
    pub sub: String,
    /// The relying party it was requested for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Not valid before (seconds since the epoch).
    pub nbf: i64,
    /// Expires at (seconds since the epoch).
    pub exp: i64,
    /// Unique id of this token.
    pub jti: String,
    /// This token format: always [`PROFILE`].
    pub eat_profile: String,
    /// The relying party's nonce, echoed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eat_nonce: Option<String>,
    /// Whether `sub` is a node or a model.
    pub subject_kind: SubjectKind,
    /// `Attested`, `Failed` or `Unknown`.
    #[schema(value_type = String, example = "Attested")]
    pub verdict: Verdict,
    /// Why, in words a person can act on.
    pub reasons: Vec<String>,
    /// UUIDs of the node's GPUs the evidence named (empty for models).
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Digest of the evidence the verdict rests on (`sha256:…`): the node's evidence
    /// document, or the model's manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    /// The attestation resources the verdict comes from (`NAME` for GpuAttestations,
    /// `NAMESPACE/NAME` for a ModelAttestation).
    pub attestations: Vec<String>,
}

/// The facts a token states; the signer adds issuer, times and id.
#[derive(Clone, Debug, PartialEq)]
pub struct Statement {
    /// What the token is about.
    pub kind: SubjectKind,
    /// The node name or model digest.
    pub subject: String,
    /// The verdict.
    pub verdict: Verdict,
    /// Its reasons.
    pub reasons: Vec<String>,
    /// GPU UUIDs.
    pub gpus: Vec<String>,
    /// The evidence or manifest digest.
    pub evidence_digest: Option<String>,
    /// Where the verdict comes from.
    pub attestations: Vec<String>,
}

/// A signed token and what it says.
#[derive(Clone, Debug)]
pub struct IssuedToken {
    /// The compact JWS.
    pub token: String,
    /// Its claims.
    pub claims: AttestationClaims,
}

/// Signs attestation tokens with the ring's current key.
#[derive(Clone, Debug)]
pub struct TokenSigner {
    issuer: String,
    ttl: Duration,
    keys: Arc<KeyRing>,
}

/// Why a token could not be signed.
#[derive(Debug, thiserror::Error)]
#[error("signing the token: {0}")]
pub struct SignError(String);

impl TokenSigner {
    /// Tokens from `issuer`, valid for `ttl`, signed with `keys`.
    pub fn new(issuer: impl Into<String>, ttl: Duration, keys: Arc<KeyRing>) -> Self {
        Self {
            issuer: issuer.into(),
            ttl,
            keys,
        }
    }

    /// The issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The published keys (current and, during an overlap, previous).
    pub fn jwks(&self) -> JwkSet {
        self.keys.get().jwks()
    }

    /// Signs `statement` at `now` for `audience`, echoing `nonce`.
    pub fn issue(
        &self,
        statement: Statement,
        audience: Option<String>,
        nonce: Option<String>,
        now: Timestamp,
    ) -> Result<IssuedToken, SignError> {
        let keys = self.keys.get();
        let mut jti = [0u8; 16];
        rand::rng().fill_bytes(&mut jti);
        let iat = now.as_second();
        let claims = AttestationClaims {
            iss: self.issuer.clone(),
            sub: statement.subject,
            aud: audience,
            iat,
            nbf: iat,
            exp: iat.saturating_add(i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)),
            jti: hex::encode(jti),
            eat_profile: PROFILE.into(),
            eat_nonce: nonce,
            subject_kind: statement.kind,
            verdict: statement.verdict,
            reasons: statement.reasons,
            gpus: statement.gpus,
            evidence_digest: statement.evidence_digest,
            attestations: statement.attestations,
        };
        let mut header = Header::new(ALGORITHM);
        header.kid = Some(keys.current.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims, keys.current.encoding_key())
            .map_err(|e| SignError(e.to_string()))?;
        Ok(IssuedToken { token, claims })
    }
}

/// What a verifier of our tokens expects.
#[derive(Clone, Debug, Default)]
pub struct Expectations {
    /// The issuer required, if any.
    pub issuer: Option<String>,
    /// The audience required, if any.
    pub audience: Option<String>,
    /// Clock skew tolerated.
    pub leeway: Duration,
}

/// Verifies an attestation token against `jwks`: ES256 only, a known `kid`, within its
/// validity, our profile.
pub fn verify(
    token: &str,
    jwks: &JwkSet,
    expect: &Expectations,
) -> Result<AttestationClaims, JwtError> {
    let policy = JwtPolicy {
        algorithms: vec![ALGORITHM],
        issuer: expect.issuer.clone(),
        audiences: expect.audience.iter().cloned().collect(),
        leeway: expect.leeway,
    };
    let data = jwt::verify::<AttestationClaims>(token, jwks, &policy)?;
    if data.claims.eat_profile != PROFILE {
        return Err(JwtError::BadClaim(format!(
            "eat_profile is {:?}, not {PROFILE:?}",
            data.claims.eat_profile
        )));
    }
    Ok(data.claims)
}

#[cfg(test)]
mod tests {
    use super::keys::{KeySet, SigningKey};
    use super::*;

    fn signer(ttl: Duration) -> (TokenSigner, Arc<KeyRing>) {
        let ring = Arc::new(KeyRing::new(KeySet {
            current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
            previous: None,
        }));
        (
            TokenSigner::new("https://operator.test", ttl, ring.clone()),
            ring,
        )
    }

    fn statement() -> Statement {
        Statement {
            kind: SubjectKind::Node,
            subject: "gpu-0".into(),
            verdict: Verdict::Attested,
            reasons: vec!["every rule holds".into()],
            gpus: vec!["GPU-1".into()],
            evidence_digest: Some("sha256:ab".into()),
            attestations: vec!["h100".into()],
        }
    }

    #[test]
    fn an_issued_token_verifies_and_carries_the_statement() {
        let (s, _) = signer(Duration::from_secs(300));
        let t = s
            .issue(
                statement(),
                Some("rp".into()),
                Some("n0nce-123".into()),
                Timestamp::now(),
            )
            .unwrap();
        let expect = Expectations {
            issuer: Some("https://operator.test".into()),
            audience: Some("rp".into()),
            leeway: Duration::ZERO,
        };
        let claims = verify(&t.token, &s.jwks(), &expect).unwrap();
        assert_eq!(claims, t.claims);
        assert_eq!(claims.exp - claims.iat, 300);
        let wrong_aud = Expectations {
            audience: Some("other".into()),
            ..expect.clone()
        };
        assert_eq!(
            verify(&t.token, &s.jwks(), &wrong_aud).unwrap_err().label(),
            "wrong_audience"
        );
    }

    #[test]
    fn a_token_of_a_rotated_out_key_is_refused_after_the_overlap() {
        let (s, ring) = signer(Duration::from_secs(300));
        let old = s.issue(statement(), None, None, Timestamp::now()).unwrap();
        let old_keys = ring.get();
        let new = Arc::new(SigningKey::generate(Timestamp::now()).unwrap());
        ring.set(KeySet {
            current: new.clone(),
            previous: Some((old_keys.current.clone(), Timestamp::now())),
        });
        // During the overlap both verify.
        let fresh = s.issue(statement(), None, None, Timestamp::now()).unwrap();
        verify(&old.token, &s.jwks(), &Expectations::default()).unwrap();
        verify(&fresh.token, &s.jwks(), &Expectations::default()).unwrap();
        // After it, only the new key is published.
        ring.set(KeySet {
            current: new,
            previous: None,
        });
        assert_eq!(
            verify(&old.token, &s.jwks(), &Expectations::default()).unwrap_err(),
            JwtError::UnknownKid(old_keys.current.kid().to_owned())
        );
        verify(&fresh.token, &s.jwks(), &Expectations::default()).unwrap();
    }
}
