//! Certificate chains of the `certificate` signing method: the bundle carries the signing
//! (leaf) certificate and possibly intermediates; the verifier trusts one or more CA
//! certificates. The leaf must chain to one of them, every certificate on the way must be
//! valid at the verification time, issuers must be CAs, and the leaf must be allowed to
//! sign (key usage digitalSignature or extended key usage codeSigning, as model_signing
//! requires).

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::{ASN1Time, FromDer as _};

use crate::keys::{KeyError, PublicKey};

/// Longest chain followed (leaf to trust anchor).
const MAX_DEPTH: usize = 8;

/// Why a chain does not verify.
#[derive(Debug, thiserror::Error)]
#[error("certificate chain: {0}")]
pub struct ChainError(pub String);

/// Reads every certificate of a PEM file (DER bytes), failing when there is none.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| format!("not PEM: {e}"))?;
        if item.label != "CERTIFICATE" {
            continue;
        }
        X509Certificate::from_der(&item.contents)
            .map_err(|e| format!("a certificate does not parse: {e}"))?;
        out.push(item.contents);
    }
    if out.is_empty() {
        return Err("contains no PEM CERTIFICATE".into());
    }
    Ok(out)
}

/// The verified signer: its key and who it is.
#[derive(Debug, Clone)]
pub struct VerifiedLeaf {
    /// The leaf certificate's public key.
    pub key: PublicKey,
    /// The leaf's subject, e.g. `CN=release-signer`.
    pub subject: String,
    /// The trust anchor's subject.
    pub anchor: String,
}

/// Verifies `chain` (leaf first, then intermediates, all DER) up to one of `anchors` (DER)
/// at time `at`, returning the leaf's key.
pub fn verify_chain(
    chain: &[Vec<u8>],
    anchors: &[Vec<u8>],
    at: Timestamp,
) -> Result<VerifiedLeaf, ChainError> {
    let err = |m: String| ChainError(m);
    let leaf_der = chain
        .first()
        .ok_or_else(|| err("the bundle has no signing certificate".into()))?;
    let leaf = parse(leaf_der, "the signing certificate")?;
    let intermediates = chain[1..]
        .iter()
        .map(|d| parse(d, "an intermediate certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let anchors = anchors
        .iter()
        .map(|d| parse(d, "a trusted CA certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    let time = ASN1Time::from_timestamp(at.as_second())
        .map_err(|e| err(format!("verification time {at}: {e}")))?;

    check_leaf_usage(&leaf)?;
    let mut used = vec![false; intermediates.len()];
    let mut current = &leaf;
    for _ in 0..MAX_DEPTH {
        check_validity(current, time, at)?;
        if let Some(anchor) = anchors.iter().find(|a| issued_by(current, a)) {
            check_validity(anchor, time, at)?;
            check_is_ca(anchor)?;
            let key =
                PublicKey::from_spki_der(leaf.public_key().raw).map_err(|KeyError(m)| err(m))?;
            return Ok(VerifiedLeaf {
                key,
                subject: leaf.subject().to_string(),
                anchor: anchor.subject().to_string(),
            });
        }
        // Each bundle certificate is used once: a self-signed one that is not trusted ends
        // the path instead of looping on itself.
        let (index, issuer) = intermediates
            .iter()
            .enumerate()
            .find(|(i, c)| !used[*i] && issued_by(current, c))
            .ok_or_else(|| {
                err(format!(
                    "{:?} is not issued by a trusted CA or by another certificate of the bundle (issuer {:?})",
                    current.subject().to_string(),
                    current.issuer().to_string()
                ))
            })?;
        check_is_ca(issuer)?;
        used[index] = true;
        current = issuer;
    }
    Err(err(format!("longer than {MAX_DEPTH} certificates")))
}

fn parse<'a>(der: &'a [u8], what: &str) -> Result<X509Certificate<'a>, ChainError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| ChainError(format!("{what} does not parse: {e}")))
}

/// Whether `issuer` names and signed `cert`.
fn issued_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer() == issuer.subject() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

fn check_validity(
    c: &X509Certificate<'_>,
    time: ASN1Time,
    at: Timestamp,
) -> Result<(), ChainError> {
    if c.validity().is_valid_at(time) {
        return Ok(());
    }
    Err(ChainError(format!(
        "{:?} is not valid at {at} (valid from {} to {})",
        c.subject().to_string(),
        c.validity().not_before,
        c.validity().not_after
    )))
}

fn check_is_ca(c: &X509Certificate<'_>) -> Result<(), ChainError> {
    let is_ca = matches!(c.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let may_sign_certs = match c.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    if is_ca && may_sign_certs {
        return Ok(());
    }
    Err(ChainError(format!(
        "{:?} issues certificates but is not a CA (basicConstraints cA, keyUsage keyCertSign)",
        c.subject().to_string()
    )))
}

fn check_leaf_usage(c: &X509Certificate<'_>) -> Result<(), ChainError> {
    let digital_signature = matches!(c.key_usage(), Ok(Some(ku)) if ku.value.digital_signature());
    let code_signing = matches!(c.extended_key_usage(), Ok(Some(eku)) if eku.value.code_signing);
    if digital_signature || code_signing {
        return Ok(());
    }
    Err(ChainError(format!(
        "the signing certificate {:?} may not sign (needs keyUsage digitalSignature or extendedKeyUsage codeSigning)",
        c.subject().to_string()
    )))
}
