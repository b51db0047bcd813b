//! Revocation from recorded OCSP responses (RFC 6960), judged offline at a given time.
//!
//! For a certificate and its issuer, a response counts when one of its `SingleResponse`s
//! names that certificate (serial number, and the hashes of the issuer's name and key in the
//! `CertID`'s hash algorithm) and:
//!
//! - it is signed by the issuer itself, or by a responder certificate the issuer issued and
//!   signed with the `id-kp-OCSPSigning` extended key usage, valid at the time judged
//!   (RFC 6960 §4.2.2.2);
//! - `thisUpdate ≤ at ≤ nextUpdate` (a response without `nextUpdate` cannot be judged fresh
//!   offline, and is refused);
//! - the status is `good`; `revoked` fails naming the certificate, as does `unknown`
//!   (NVIDIA's verifier fails on both, and does not accept `certificateHold` by default).

use std::borrow::Cow;

use der::{Decode, Encode};
use jiff::Timestamp;
use ring::digest;
use x509_cert::ext::pkix::CrlReason;
use x509_ocsp::{BasicOcspResponse, CertStatus, OcspResponse, OcspResponseStatus, ResponderId};
use x509_parser::asn1_rs::BitString;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use x509_parser::x509::AlgorithmIdentifier;

use super::chain;

/// `id-pkix-ocsp-basic`.
const OCSP_BASIC: &str = "1.3.6.1.5.5.7.48.1.1";
/// Largest OCSP response accepted, in bytes.
pub const MAX_OCSP_LEN: usize = 64 * 1024;

/// A parsed, successful basic OCSP response.
#[derive(Clone, Debug)]
pub struct ParsedOcsp {
    basic: BasicOcspResponse,
    /// DER of `tbsResponseData`, the signed part.
    tbs: Vec<u8>,
    /// DER of the certificates the response carries (a delegated responder's).
    certs: Vec<Vec<u8>>,
}

impl ParsedOcsp {
    /// The serial numbers the response speaks about (hex), for messages.
    pub fn serials(&self) -> Vec<String> {
        self.basic
            .tbs_response_data
            .responses
            .iter()
            .map(|r| hex::encode(r.cert_id.serial_number.as_bytes()))
            .collect()
    }
}

/// Parses a DER OCSP response; only successful basic responses are accepted.
pub fn parse_ocsp(der: &[u8]) -> Result<ParsedOcsp, String> {
    if der.len() > MAX_OCSP_LEN {
        return Err(format!(
            "{} bytes, more than the {MAX_OCSP_LEN} accepted",
            der.len()
        ));
    }
    let response =
        OcspResponse::from_der(der).map_err(|e| format!("not a DER OCSPResponse: {e}"))?;
    if response.response_status != OcspResponseStatus::Successful {
        return Err(format!(
            "responseStatus is {:?}, not successful: it carries no certificate status",
            response.response_status
        ));
    }
    let bytes = response
        .response_bytes
        .ok_or("a successful response without responseBytes")?;
    if bytes.response_type.to_string() != OCSP_BASIC {
        return Err(format!(
            "responseType {} is not id-pkix-ocsp-basic",
            bytes.response_type
        ));
    }
    let basic = BasicOcspResponse::from_der(bytes.response.as_bytes())
        .map_err(|e| format!("not a DER BasicOCSPResponse: {e}"))?;
    let tbs = basic
        .tbs_response_data
        .to_der()
        .map_err(|e| format!("tbsResponseData does not re-encode: {e}"))?;
    let certs = basic
        .certs
        .iter()
        .flatten()
        .map(|c| {
            c.to_der()
                .map_err(|e| format!("a responder certificate: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if basic.tbs_response_data.responses.is_empty() {
        return Err("no SingleResponse in it".into());
    }
    Ok(ParsedOcsp { basic, tbs, certs })
}

/// What the responses say about one certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revocation {
    /// A valid response says `good`.
    Good(String),
    /// A valid response says `revoked` or `unknown`.
    Revoked(String),
    /// No response names the certificate.
    Missing(String),
    /// A response names it but cannot be trusted (signature, responder, time).
    Invalid(String),
}

/// The revocation status of `cert` (named `name` in messages), issued by `issuer`, at `at`.
pub fn status(
    responses: &[ParsedOcsp],
    cert: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
    name: &str,
    at: Timestamp,
) -> Revocation {
    let serial = cert.raw_serial();
    let mut invalid = Vec::new();
    let mut other_issuer = false;
    for response in responses {
        for single in &response.basic.tbs_response_data.responses {
            let id = &single.cert_id;
            if strip_zeros(id.serial_number.as_bytes()) != strip_zeros(serial) {
                continue;
            }
            match issuer_matches(id, issuer) {
                Ok(true) => {}
                Ok(false) => {
                    other_issuer = true;
                    continue;
                }
                Err(e) => {
                    invalid.push(format!("the OCSP response for {name}: {e}"));
                    continue;
                }
            }
            let verdict = response
                .signer(issuer, at)
                .and_then(|signer| {
                    fresh(single.this_update.0, single.next_update.map(|t| t.0), at)?;
                    Ok(signer)
                })
                .map_err(|e| format!("the OCSP response for {name} is not acceptable: {e}"));
            match verdict {
                Err(e) => invalid.push(e),
                Ok(signer) => {
                    return match &single.cert_status {
                        CertStatus::Good(_) => Revocation::Good(format!(
                            "{name}: good (OCSP by {signer}, thisUpdate {})",
                            show(single.this_update.0)
                        )),
                        CertStatus::Revoked(info) => Revocation::Revoked(format!(
                            "{name} is REVOKED since {} (reason: {}; OCSP by {signer})",
                            show(info.revocation_time.0),
                            info.revocation_reason
                                .map(reason_name)
                                .unwrap_or("unspecified")
                        )),
                        CertStatus::Unknown(_) => Revocation::Revoked(format!(
                            "{name}: the OCSP responder ({signer}) answers status unknown"
                        )),
                    };
                }
            }
        }
    }
    if let Some(first) = invalid.into_iter().next() {
        return Revocation::Invalid(first);
    }
    Revocation::Missing(format!(
        "no OCSP response in the bundle for {name} (serial {}){}",
        hex::encode(strip_zeros(serial)),
        if other_issuer {
            "; one names its serial under another issuer"
        } else {
            ""
        }
    ))
}

impl ParsedOcsp {
    /// Verifies the response's signature; returns who signed it.
    fn signer(&self, issuer: &X509Certificate<'_>, at: Timestamp) -> Result<String, String> {
        let responder = &self.basic.tbs_response_data.responder_id;
        let names = |c: &X509Certificate<'_>| match responder {
            ResponderId::ByName(n) => n.to_der().is_ok_and(|d| d == c.subject().as_raw()),
            ResponderId::ByKey(h) => {
                digest::digest(
                    &digest::SHA1_FOR_LEGACY_USE_ONLY,
                    &c.public_key().subject_public_key.data,
                )
                .as_ref()
                    == h.as_bytes()
            }
        };
        if names(issuer) {
            self.verify_with(issuer)?;
            return Ok(format!("the issuer, {}", chain::subject_name(issuer)));
        }
        let parsed: Vec<X509Certificate<'_>> = self
            .certs
            .iter()
            .filter_map(|d| X509Certificate::from_der(d).ok().map(|(_, c)| c))
            .collect();
        let Some(delegate) = parsed.iter().find(|c| names(c)) else {
            return Err(
                "its responder is neither the issuer nor a certificate included in the response"
                    .into(),
            );
        };
        let dname = format!("responder {}", chain::subject_name(delegate));
        if delegate.issuer().as_raw() != issuer.subject().as_raw()
            || delegate
                .verify_signature(Some(issuer.public_key()))
                .is_err()
        {
            return Err(format!(
                "{dname} was not issued by {} (RFC 6960 delegation requires the issuer's signature)",
                chain::subject_name(issuer)
            ));
        }
        let ocsp_signing = delegate
            .extended_key_usage()
            .ok()
            .flatten()
            .is_some_and(|eku| eku.value.ocsp_signing);
        if !ocsp_signing {
            return Err(format!(
                "{dname} lacks the id-kp-OCSPSigning extended key usage"
            ));
        }
        chain::check_validity(delegate, &dname, at)?;
        self.verify_with(delegate)?;
        Ok(format!("{dname}, delegated by the issuer"))
    }

    fn verify_with(&self, signer: &X509Certificate<'_>) -> Result<(), String> {
        let alg_der = self
            .basic
            .signature_algorithm
            .to_der()
            .map_err(|e| format!("signatureAlgorithm: {e}"))?;
        let (_, alg) = AlgorithmIdentifier::from_der(&alg_der)
            .map_err(|e| format!("signatureAlgorithm: {e}"))?;
        let signature = BitString {
            unused_bits: 0,
            data: Cow::Borrowed(self.basic.signature.raw_bytes()),
        };
        x509_parser::verify::verify_signature(signer.public_key(), &alg, &signature, &self.tbs)
            .map_err(|e| {
                format!(
                    "its signature ({}) does not verify with the key of {}: {e}",
                    alg.algorithm,
                    chain::subject_name(signer)
                )
            })
    }
}

fn issuer_matches(id: &x509_ocsp::CertId, issuer: &X509Certificate<'_>) -> Result<bool, String> {
    let alg = match id.hash_algorithm.oid.to_string().as_str() {
        "1.3.14.3.2.26" => &digest::SHA1_FOR_LEGACY_USE_ONLY,
        "2.16.840.1.101.3.4.2.1" => &digest::SHA256,
        "2.16.840.1.101.3.4.2.2" => &digest::SHA384,
        "2.16.840.1.101.3.4.2.3" => &digest::SHA512,
        other => return Err(format!("CertID hash algorithm {other} not supported")),
    };
    let name = digest::digest(alg, issuer.subject().as_raw());
    let key = digest::digest(alg, &issuer.public_key().subject_public_key.data);
    Ok(name.as_ref() == id.issuer_name_hash.as_bytes()
        && key.as_ref() == id.issuer_key_hash.as_bytes())
}

fn fresh(
    this_update: der::asn1::GeneralizedTime,
    next_update: Option<der::asn1::GeneralizedTime>,
    at: Timestamp,
) -> Result<(), String> {
    let secs = |t: der::asn1::GeneralizedTime| {
        i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
    };
    if secs(this_update) > at.as_second() {
        return Err(format!(
            "thisUpdate {} lies after the time judged, {at}",
            show(this_update)
        ));
    }
    match next_update {
        None => Err(format!(
            "it has no nextUpdate, so it cannot be judged current at {at} offline"
        )),
        Some(next) if secs(next) < at.as_second() => Err(format!(
            "it is stale: nextUpdate {} passed before {at}",
            show(next)
        )),
        Some(_) => Ok(()),
    }
}

fn show(t: der::asn1::GeneralizedTime) -> String {
    i64::try_from(t.to_unix_duration().as_secs())
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
        .map(|t| t.to_string())
        .unwrap_or_else(|| format!("{t:?}"))
}

/// DER INTEGER content may carry a leading zero byte for positive numbers.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let mut b = b;
    while b.len() > 1 && b[0] == 0 {
        b = &b[1..];
    }
    b
}

fn reason_name(r: CrlReason) -> &'static str {
    match r {
        CrlReason::Unspecified => "unspecified",
        CrlReason::KeyCompromise => "keyCompromise",
        CrlReason::CaCompromise => "cACompromise",
        CrlReason::AffiliationChanged => "affiliationChanged",
        CrlReason::Superseded => "superseded",
        CrlReason::CessationOfOperation => "cessationOfOperation",
        CrlReason::CertificateHold => "certificateHold",
        CrlReason::RemoveFromCRL => "removeFromCRL",
        CrlReason::PrivilegeWithdrawn => "privilegeWithdrawn",
        CrlReason::AaCompromise => "aACompromise",
    }
}
