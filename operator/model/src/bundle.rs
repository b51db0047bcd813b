//! Sigstore bundles v0.3 carrying a DSSE envelope over a model-signing statement: signing
//! with a private key (optionally with its certificate chain) and verifying offline
//! against a public key or a trusted CA.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::chain::{self, ChainError};
use crate::keys::{PublicKey, SigningKey};
use crate::manifest::Manifest;
use crate::statement::{self, PAYLOAD_TYPE, StatementError};

/// The media type model_signing writes and requires.
pub const BUNDLE_MEDIA_TYPE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// The same version in the newer Sigstore spelling, accepted when reading.
const BUNDLE_MEDIA_TYPE_ALT: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";

/// A Sigstore bundle (the subset model signatures use).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    /// [`BUNDLE_MEDIA_TYPE`].
    pub media_type: String,
    /// The key hint or certificates the signature verifies with.
    pub verification_material: VerificationMaterial,
    /// The signed statement.
    pub dsse_envelope: Envelope,
}

/// How to identify the signer.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// `key` method: which public key signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<PublicKeyIdentifier>,
    /// `certificate` method: the leaf certificate and its chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub x509_certificate_chain: Option<CertificateChain>,
    /// `sigstore` (keyless) method: one Fulcio certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate: Option<Certificate>,
    /// Transparency log entries (keyless only; empty for key and certificate).
    #[serde(default)]
    pub tlog_entries: Vec<serde_json::Value>,
}

/// `publicKey` of the verification material.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicKeyIdentifier {
    /// SHA-256 of the signer's PEM public key, hex (model_signing ≥ 1.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The DER key itself, base64 (model_signing < 1.1); not trusted, only compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_bytes: Option<String>,
}

/// `x509CertificateChain`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CertificateChain {
    /// Leaf first.
    pub certificates: Vec<Certificate>,
}

/// One DER certificate, base64.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// The DER bytes, base64.
    pub raw_bytes: String,
}

/// A DSSE envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The statement, base64.
    pub payload: String,
    /// [`PAYLOAD_TYPE`].
    pub payload_type: String,
    /// Signatures over the PAE of type and payload.
    pub signatures: Vec<EnvelopeSignature>,
}

/// One DSSE signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EnvelopeSignature {
    /// The ECDSA signature, base64.
    pub sig: String,
    /// Unused by model signatures; `""`, absent or null.
    #[serde(default)]
    pub keyid: Option<String>,
}

/// DSSE v1 pre-authentication encoding: what the signature covers.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// What the signature must verify against.
#[derive(Debug, Clone)]
pub enum Trust {
    /// The `key` method: this public key.
    PublicKey(PublicKey),
    /// The `certificate` method: a chain to one of these CA certificates (DER), valid at
    /// `at`.
    CertificateAuthorities {
        /// Trusted CA certificates, DER.
        anchors: Vec<Vec<u8>>,
        /// When the chain must be valid (now, normally).
        at: Timestamp,
    },
}

/// Who signed, once verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Signer {
    /// `key` or `certificate`.
    pub method: &'static str,
    /// The key hint, or the leaf certificate's subject.
    pub identity: String,
    /// For certificates: the trusted CA the chain ends at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
}

/// Why a bundle does not verify.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The file is not a Sigstore bundle of a model signature.
    #[error("not a model-signing Sigstore bundle: {0}")]
    Malformed(String),
    /// The signature is not by the trusted key or chain.
    #[error("{0}")]
    Untrusted(String),
    /// The certificate chain does not verify.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// The signed payload is not a valid model-signing statement.
    #[error(transparent)]
    Statement(#[from] StatementError),
}

impl Bundle {
    /// Parses a bundle (JSON).
    pub fn from_json(bytes: &[u8]) -> Result<Self, BundleError> {
        let b: Self =
            serde_json::from_slice(bytes).map_err(|e| BundleError::Malformed(e.to_string()))?;
        if b.media_type != BUNDLE_MEDIA_TYPE && b.media_type != BUNDLE_MEDIA_TYPE_ALT {
            return Err(BundleError::Malformed(format!(
                "media type {:?}, expected {BUNDLE_MEDIA_TYPE}",
                b.media_type
            )));
        }
        Ok(b)
    }

    /// The bundle as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a bundle serialises")
    }

    /// Signs `manifest` with `key`. With `certificates` (DER, the signing certificate
    /// first, then its chain) the bundle uses the `certificate` method, otherwise the
    /// `key` method with the public key's hint.
    pub fn sign(
        manifest: &Manifest,
        key: &SigningKey,
        certificates: Option<&[Vec<u8>]>,
    ) -> Result<Self, BundleError> {
        Self::sign_payload(&statement::to_payload(manifest), key, certificates)
    }

    /// Signs any in-toto statement (`payload`, JSON) the same way: how the operator signs
    /// its own statements (stage results bound to a manifest digest).
    pub fn sign_payload(
        payload: &[u8],
        key: &SigningKey,
        certificates: Option<&[Vec<u8>]>,
    ) -> Result<Self, BundleError> {
        let material = match certificates {
            None => VerificationMaterial {
                public_key: Some(PublicKeyIdentifier {
                    hint: Some(key.public_key().hint()),
                    raw_bytes: None,
                }),
                ..VerificationMaterial::default()
            },
            Some(certs) => {
                let leaf = certs
                    .first()
                    .ok_or_else(|| BundleError::Malformed("no signing certificate given".into()))?;
                let (_, cert) = x509_parser::parse_x509_certificate(leaf)
                    .map_err(|e| BundleError::Malformed(format!("signing certificate: {e}")))?;
                let cert_key = PublicKey::from_spki_der(cert.public_key().raw)
                    .map_err(|e| BundleError::Untrusted(e.0))?;
                if cert_key != key.public_key() {
                    return Err(BundleError::Untrusted(
                        "the signing certificate is not for this private key".into(),
                    ));
                }
                VerificationMaterial {
                    x509_certificate_chain: Some(CertificateChain {
                        certificates: certs
                            .iter()
                            .map(|d| Certificate {
                                raw_bytes: B64.encode(d),
                            })
                            .collect(),
                    }),
                    ..VerificationMaterial::default()
                }
            }
        };
        let sig = key.sign(&pae(PAYLOAD_TYPE, payload));
        Ok(Self {
            media_type: BUNDLE_MEDIA_TYPE.into(),
            verification_material: material,
            dsse_envelope: Envelope {
                payload: B64.encode(payload),
                payload_type: PAYLOAD_TYPE.into(),
                signatures: vec![EnvelopeSignature {
                    sig: B64.encode(sig),
                    keyid: Some(String::new()),
                }],
            },
        })
    }

    /// Verifies the signature against `trust` and returns the signed manifest and signer.
    /// Hashing the model and comparing is the caller's next step.
    pub fn verify(&self, trust: &Trust) -> Result<(Manifest, Signer), BundleError> {
        let (payload, signer) = self.verify_payload(trust)?;
        Ok((statement::from_payload(&payload)?, signer))
    }

    /// Verifies the signature against `trust` and returns the signed in-toto statement
    /// (JSON bytes, not interpreted) and the signer.
    pub fn verify_payload(&self, trust: &Trust) -> Result<(Vec<u8>, Signer), BundleError> {
        let vm = &self.verification_material;
        if vm.certificate.is_some() || !vm.tlog_entries.is_empty() {
            return Err(BundleError::Untrusted(
                "keyless (Fulcio/Rekor) bundles are not supported offline; sign with a key or a certificate".into(),
            ));
        }
        let (key, signer) = match trust {
            Trust::PublicKey(key) => {
                if vm.x509_certificate_chain.is_some() {
                    return Err(BundleError::Untrusted(
                        "the bundle is signed with a certificate; verify it with a CA certificate chain".into(),
                    ));
                }
                let hint = key.hint();
                if let Some(h) = vm.public_key.as_ref().and_then(|p| p.hint.as_deref())
                    && !h.eq_ignore_ascii_case(&hint)
                {
                    return Err(BundleError::Untrusted(format!(
                        "signed by another key (hint {h}), not the trusted key (hint {hint})"
                    )));
                }
                (
                    key.clone(),
                    Signer {
                        method: "key",
                        identity: hint,
                        anchor: None,
                    },
                )
            }
            Trust::CertificateAuthorities { anchors, at } => {
                let chain = vm.x509_certificate_chain.as_ref().ok_or_else(|| {
                    BundleError::Untrusted(
                        "the bundle has no certificate chain; verify it with a public key".into(),
                    )
                })?;
                let ders = chain
                    .certificates
                    .iter()
                    .map(|c| {
                        B64.decode(&c.raw_bytes).map_err(|e| {
                            BundleError::Malformed(format!("certificate is not base64: {e}"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let leaf = chain::verify_chain(&ders, anchors, *at)?;
                (
                    leaf.key,
                    Signer {
                        method: "certificate",
                        identity: leaf.subject,
                        anchor: Some(leaf.anchor),
                    },
                )
            }
        };
        let env = &self.dsse_envelope;
        if env.payload_type != PAYLOAD_TYPE {
            return Err(BundleError::Malformed(format!(
                "payload type {:?}, expected {PAYLOAD_TYPE}",
                env.payload_type
            )));
        }
        let payload = B64
            .decode(&env.payload)
            .map_err(|e| BundleError::Malformed(format!("payload is not base64: {e}")))?;
        if env.signatures.is_empty() {
            return Err(BundleError::Malformed(
                "the envelope has no signature".into(),
            ));
        }
        let message = pae(&env.payload_type, &payload);
        let signed = env.signatures.iter().any(|s| {
            B64.decode(&s.sig)
                .is_ok_and(|sig| key.verify(&message, &sig))
        });
        if !signed {
            return Err(BundleError::Untrusted(format!(
                "the signature does not verify with the {} key {}",
                key.curve(),
                key.hint()
            )));
        }
        Ok((payload, signer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SigningKey {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .unwrap()
            .serialize_pem();
        SigningKey::from_pem(&pem).unwrap()
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(pae("t/x", b"hello"), b"DSSEv1 3 t/x 5 hello");
    }

    #[test]
    fn any_payload_round_trips_and_tampering_is_caught() {
        let key = key();
        let trust = Trust::PublicKey(key.public_key());
        let bundle = Bundle::sign_payload(br#"{"_type":"x"}"#, &key, None).unwrap();
        let parsed = Bundle::from_json(bundle.to_json().as_bytes()).unwrap();
        let (payload, signer) = parsed.verify_payload(&trust).unwrap();
        assert_eq!(payload, br#"{"_type":"x"}"#);
        assert_eq!(signer.identity, key.public_key().hint());

        let mut forged = parsed.clone();
        forged.dsse_envelope.payload = B64.encode(br#"{"_type":"y"}"#);
        let e = forged.verify_payload(&trust).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");

        let mut keyless = parsed.clone();
        keyless
            .verification_material
            .tlog_entries
            .push(serde_json::json!({}));
        assert!(
            keyless
                .verify_payload(&trust)
                .unwrap_err()
                .to_string()
                .contains("keyless")
        );
    }

    #[test]
    fn other_media_types_are_refused() {
        let json = r#"{"mediaType":"application/vnd.dev.sigstore.bundle.v0.1+json","verificationMaterial":{},"dsseEnvelope":{"payload":"","payloadType":"","signatures":[]}}"#;
        let e = Bundle::from_json(json.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("media type"), "{e}");
        assert!(Bundle::from_json(b"[]").is_err());
    }
}
