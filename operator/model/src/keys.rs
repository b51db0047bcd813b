//! ECDSA keys of model signatures: P-256 with SHA-256 and P-384 with SHA-384, the curves
//! Sigstore's key and certificate methods use, read from PEM (SPKI public keys; PKCS#8 or
//! SEC1 private keys).

use std::fmt;

use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePublicKey as _, LineEnding};
use sha2::{Digest as _, Sha256};

/// A key that cannot be used; the message says why (never the key material).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// A public key that verifies model signatures.
#[derive(Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// NIST P-256, signatures over SHA-256.
    P256(p256::ecdsa::VerifyingKey),
    /// NIST P-384, signatures over SHA-384.
    P384(p384::ecdsa::VerifyingKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.curve(), self.hint())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) on P-256 or P-384.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
            return Ok(Self::P384(k));
        }
        Err(KeyError(
            "not a PEM public key (SubjectPublicKeyInfo) on EC P-256 or P-384".into(),
        ))
    }

    /// Reads a DER SubjectPublicKeyInfo (as in a certificate) on P-256 or P-384.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        if let Ok(k) = p256::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P256(k));
        }
        if let Ok(k) = p384::ecdsa::VerifyingKey::from_public_key_der(der) {
            return Ok(Self::P384(k));
        }
        Err(KeyError(
            "the certificate's key is not EC P-256 or P-384".into(),
        ))
    }

    /// The curve's name.
    pub fn curve(&self) -> &'static str {
        match self {
            Self::P256(_) => "P-256",
            Self::P384(_) => "P-384",
        }
    }

    /// The key as PEM SubjectPublicKeyInfo, 64-column lines, as OpenSSL and Python's
    /// `cryptography` write it.
    pub fn to_pem(&self) -> String {
        match self {
            Self::P256(k) => k.to_public_key_pem(LineEnding::LF),
            Self::P384(k) => k.to_public_key_pem(LineEnding::LF),
        }
        .expect("an EC public key encodes")
    }

    /// model_signing's key hint: SHA-256 of [`Self::to_pem`], in lowercase hex.
    pub fn hint(&self) -> String {
        hex::encode(Sha256::digest(self.to_pem().as_bytes()))
    }

    /// Verifies an ECDSA signature (DER, or fixed-size `r‖s`) over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        use p256::ecdsa::signature::Verifier as _;
        match self {
            Self::P256(k) => p256::ecdsa::Signature::from_der(sig)
                .or_else(|_| p256::ecdsa::Signature::from_slice(sig))
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
            Self::P384(k) => p384::ecdsa::Signature::from_der(sig)
                .or_else(|_| p384::ecdsa::Signature::from_slice(sig))
                .is_ok_and(|s| k.verify(msg, &s).is_ok()),
        }
    }
}

/// A private key that signs (the operator's own statements, or a model in tests).
pub enum SigningKey {
    /// NIST P-256.
    P256(p256::ecdsa::SigningKey),
    /// NIST P-384.
    P384(p384::ecdsa::SigningKey),
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret scalar: the public half identifies the key well enough.
        write!(f, "SigningKey({:?})", self.public_key())
    }
}

impl SigningKey {
    /// Reads a PEM `PRIVATE KEY` (PKCS#8) or `EC PRIVATE KEY` (SEC1) on P-256 or P-384.
    /// Encrypted keys are not supported.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        if pem.contains("ENCRYPTED PRIVATE KEY") || pem.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(KeyError(
                "encrypted private keys are not supported; decrypt it first".into(),
            ));
        }
        if let Ok(k) =
            p256::SecretKey::from_pkcs8_pem(pem).or_else(|_| p256::SecretKey::from_sec1_pem(pem))
        {
            return Ok(Self::P256(k.into()));
        }
        if let Ok(k) =
            p384::SecretKey::from_pkcs8_pem(pem).or_else(|_| p384::SecretKey::from_sec1_pem(pem))
        {
            return Ok(Self::P384(k.into()));
        }
        Err(KeyError(
            "not a PEM private key (PKCS#8 or SEC1) on EC P-256 or P-384".into(),
        ))
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Self::P256(k) => PublicKey::P256(*k.verifying_key()),
            Self::P384(k) => PublicKey::P384(*k.verifying_key()),
        }
    }

    /// An ECDSA signature over `msg` (SHA-256 on P-256, SHA-384 on P-384), DER-encoded as
    /// model_signing writes it.
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        match self {
            Self::P256(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
            Self::P384(k) => {
                let s: p384::ecdsa::Signature = k.sign(msg);
                s.to_der().as_bytes().to_vec()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_hint() {
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let key = SigningKey::from_pem(&pem).unwrap();
        let public = key.public_key();
        let sig = key.sign(b"payload");
        assert!(public.verify(b"payload", &sig));
        assert!(!public.verify(b"payload!", &sig));
        assert!(!public.verify(b"payload", b"junk"));
        let pem = public.to_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_pem(&pem).unwrap(), public);
        assert_eq!(public.hint().len(), 64);
        assert!(!format!("{key:?}").contains("SecretKey"));
    }

    #[test]
    fn rejects_other_material() {
        assert!(
            PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
                .is_err()
        );
        let e = SigningKey::from_pem("-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap_err();
        assert!(e.0.contains("encrypted"));
        assert!(SigningKey::from_pem("hello").is_err());
    }
}
