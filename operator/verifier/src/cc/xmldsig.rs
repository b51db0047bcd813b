//! Enveloped XML signatures (W3C XML-DSig 1.1) as NVIDIA signs its RIMs: one `<Signature>`
//! as the last child of the document element, one `<Reference URI="">` over the whole
//! document with the `enveloped-signature` transform and a canonicalization, an ECDSA
//! signature over the canonical `<SignedInfo>`, and the signing chain in
//! `<KeyInfo><X509Data>`, leaf first.
//!
//! Only that shape is accepted: a second signature, another reference, an XPath transform
//! or a reference to an ID are refused, so no part of the document can escape the digest
//! (the signature-wrapping attacks on XML-DSig all rely on such freedom). The chain is not
//! judged here; [`verify_enveloped`] returns it for the caller to check against its root.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::digest;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use roxmltree::{Document, Node};
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::c14n::{self, Algorithm};

/// The XML-DSig namespace.
pub const DSIG_NS: &str = "http://www.w3.org/2000/09/xmldsig#";
/// The enveloped-signature transform.
pub const ENVELOPED: &str = "http://www.w3.org/2000/09/xmldsig#enveloped-signature";
/// ECDSA with SHA-384 (NVIDIA's RIMs).
pub const ECDSA_SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384";
/// ECDSA with SHA-256.
pub const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";
/// SHA-384 digest (NVIDIA's RIMs).
pub const SHA384: &str = "http://www.w3.org/2001/04/xmldsig-more#sha384";
/// SHA-256 digest.
pub const SHA256: &str = "http://www.w3.org/2001/04/xmlenc#sha256";
/// The exclusive canonicalization's `InclusiveNamespaces` namespace.
const EXC_C14N_NS: &str = "http://www.w3.org/2001/10/xml-exc-c14n#";

/// What a verified signature tells: the signing chain (DER, leaf first, as the document
/// carries it) and a summary for findings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedSignature {
    pub chain: Vec<Vec<u8>>,
    pub summary: String,
}

/// Why a document's signature is not acceptable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SignatureError {
    /// The signature is not in the one shape accepted (or uses an algorithm not supported).
    Structure(String),
    /// The document or its `SignedInfo` was altered after signing, or another key signed it.
    Mismatch(String),
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Structure(m) | Self::Mismatch(m) => f.write_str(m),
        }
    }
}

fn structure(m: impl Into<String>) -> SignatureError {
    SignatureError::Structure(m.into())
}

/// Verifies the enveloped signature of `doc`; see the module documentation.
pub fn verify_enveloped(doc: &Document<'_>) -> Result<VerifiedSignature, SignatureError> {
    let root = doc.root_element();
    let signatures: Vec<Node<'_, '_>> = doc
        .descendants()
        .filter(|n| n.is_element() && n.tag_name().namespace() == Some(DSIG_NS))
        .filter(|n| n.tag_name().name() == "Signature")
        .collect();
    let signature = match signatures.as_slice() {
        [] => {
            return Err(structure(
                "no ds:Signature element: the document is unsigned",
            ));
        }
        [s] if s.parent_element() == Some(root) => *s,
        [_] => {
            return Err(structure(
                "the ds:Signature is not a child of the document element",
            ));
        }
        more => {
            return Err(structure(format!(
                "{} ds:Signature elements; exactly one is accepted",
                more.len()
            )));
        }
    };
    let mut parts = signature.children().filter(Node::is_element);
    let signed_info = expect(parts.next(), "SignedInfo")?;
    let signature_value = expect(parts.next(), "SignatureValue")?;
    let key_info = expect(parts.next(), "KeyInfo")?;
    if let Some(extra) = parts.next() {
        return Err(structure(format!(
            "unexpected element {} in ds:Signature (ds:Object and others are not accepted)",
            extra.tag_name().name()
        )));
    }

    let mut info = signed_info.children().filter(Node::is_element);
    let c14n_method = expect(info.next(), "CanonicalizationMethod")?;
    let signature_method = expect(info.next(), "SignatureMethod")?;
    let reference = expect(info.next(), "Reference")?;
    if info.next().is_some() {
        return Err(structure(
            "ds:SignedInfo holds more than one ds:Reference; exactly one, over the whole \
             document, is accepted",
        ));
    }
    let signed_info_c14n = algorithm_of(c14n_method, "CanonicalizationMethod")?;
    let sig_alg = attr(signature_method, "Algorithm")?;

    // The reference: the whole document, minus the signature.
    if reference.attribute("URI") != Some("") {
        return Err(structure(format!(
            "ds:Reference URI is {:?}; only URI=\"\" (the whole document) is accepted",
            reference.attribute("URI").unwrap_or("(none)")
        )));
    }
    let mut refs = reference.children().filter(Node::is_element);
    let mut next = refs.next();
    let mut enveloped = false;
    // Without a canonicalization transform, a node-set becomes octets by Canonical XML 1.0.
    let mut reference_c14n = Algorithm::Inclusive10;
    if let Some(transforms) = next.filter(|n| is_dsig(*n, "Transforms")) {
        for t in transforms.children().filter(Node::is_element) {
            if !is_dsig(t, "Transform") {
                return Err(structure(
                    "ds:Transforms holds something else than ds:Transform",
                ));
            }
            let uri = attr(t, "Algorithm")?;
            if uri == ENVELOPED && !enveloped {
                enveloped = true;
            } else if enveloped && let Some(a) = Algorithm::from_uri(uri) {
                reference_c14n = with_prefix_list(a, t);
            } else {
                return Err(structure(format!(
                    "transform {uri} not accepted (only enveloped-signature, then one \
                     canonicalization)"
                )));
            }
        }
        next = refs.next();
    }
    if !enveloped {
        return Err(structure(
            "the reference lacks the enveloped-signature transform",
        ));
    }
    let digest_method = expect(next, "DigestMethod")?;
    let digest_value = expect(refs.next(), "DigestValue")?;
    let digest_alg = match attr(digest_method, "Algorithm")? {
        SHA384 => &digest::SHA384,
        SHA256 => &digest::SHA256,
        other => {
            return Err(structure(format!(
                "digest algorithm {other} not supported (SHA-384, SHA-256)"
            )));
        }
    };
    let expected_digest = base64_text(digest_value, "DigestValue")?;

    let canonical = c14n::canonicalize(doc.root(), &reference_c14n, Some(signature.id()))
        .map_err(|e| structure(format!("cannot canonicalize the document: {e}")))?;
    let actual = digest::digest(digest_alg, canonical.as_bytes());
    if actual.as_ref() != expected_digest.as_slice() {
        return Err(SignatureError::Mismatch(format!(
            "the document does not match its signed digest (DigestValue {}, computed {}): \
             it was altered after signing",
            hex::encode(&expected_digest),
            hex::encode(actual.as_ref())
        )));
    }

    // The signing key: the first certificate of KeyInfo/X509Data.
    let chain = key_info_chain(key_info)?;
    let (_, leaf) = X509Certificate::from_der(&chain[0])
        .map_err(|e| structure(format!("the signing certificate does not parse: {e}")))?;
    let spki = leaf.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let verifier = match (sig_alg, curve) {
        (ECDSA_SHA384, Some(c)) if c == OID_NIST_EC_P384 => &ECDSA_P384_SHA384_FIXED,
        (ECDSA_SHA256, Some(c)) if c == OID_EC_P256 => &ECDSA_P256_SHA256_FIXED,
        (ECDSA_SHA384 | ECDSA_SHA256, curve) => {
            return Err(structure(format!(
                "signature method {sig_alg} does not fit the signing key (algorithm {}, curve {:?})",
                spki.algorithm.algorithm,
                curve.map(|c| c.to_id_string())
            )));
        }
        (other, _) => {
            return Err(structure(format!(
                "signature method {other} not supported (ECDSA with SHA-384 or SHA-256)"
            )));
        }
    };
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(structure("the signing key is not an EC key"));
    }
    let signed = c14n::canonicalize(signed_info, &signed_info_c14n, None)
        .map_err(|e| structure(format!("cannot canonicalize ds:SignedInfo: {e}")))?;
    let sig = base64_text(signature_value, "SignatureValue")?;
    UnparsedPublicKey::new(verifier, &spki.subject_public_key.data)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| {
            SignatureError::Mismatch(format!(
                "the signature over ds:SignedInfo does not verify with the key of {}: \
                 SignedInfo was altered or another key signed it",
                super::chain::subject_name(&leaf)
            ))
        })?;
    Ok(VerifiedSignature {
        summary: format!(
            "XML signature ({}, digest {}) over the whole document verifies with the key of {}",
            sig_alg.rsplit('#').next().unwrap_or(sig_alg),
            hex::encode(actual.as_ref())
                .get(..16)
                .map(|h| format!("{h}…"))
                .unwrap_or_default(),
            super::chain::subject_name(&leaf)
        ),
        chain,
    })
}

fn is_dsig(n: Node<'_, '_>, name: &str) -> bool {
    n.tag_name().namespace() == Some(DSIG_NS) && n.tag_name().name() == name
}

fn expect<'a, 'i>(n: Option<Node<'a, 'i>>, name: &str) -> Result<Node<'a, 'i>, SignatureError> {
    match n {
        Some(n) if is_dsig(n, name) => Ok(n),
        Some(n) => Err(structure(format!(
            "expected ds:{name}, found {}",
            n.tag_name().name()
        ))),
        None => Err(structure(format!("ds:{name} missing"))),
    }
}

fn attr<'a>(n: Node<'a, '_>, name: &str) -> Result<&'a str, SignatureError> {
    n.attribute(name).ok_or_else(|| {
        structure(format!(
            "ds:{} has no {name} attribute",
            n.tag_name().name()
        ))
    })
}

fn algorithm_of(n: Node<'_, '_>, what: &str) -> Result<Algorithm, SignatureError> {
    let uri = attr(n, "Algorithm")?;
    Algorithm::from_uri(uri)
        .map(|a| with_prefix_list(a, n))
        .ok_or_else(|| {
            structure(format!(
                "{what} {uri} not supported (Canonical XML 1.1/1.0 or Exclusive, without comments)"
            ))
        })
}

/// Adds the `InclusiveNamespaces PrefixList` of an exclusive canonicalization element.
fn with_prefix_list(a: Algorithm, n: Node<'_, '_>) -> Algorithm {
    match a {
        Algorithm::Exclusive { .. } => Algorithm::Exclusive {
            inclusive_prefixes: n
                .children()
                .find(|c| {
                    c.tag_name().namespace() == Some(EXC_C14N_NS)
                        && c.tag_name().name() == "InclusiveNamespaces"
                })
                .and_then(|c| c.attribute("PrefixList"))
                .map(|l| l.split_whitespace().map(str::to_owned).collect())
                .unwrap_or_default(),
        },
        other => other,
    }
}

fn base64_text(n: Node<'_, '_>, what: &str) -> Result<Vec<u8>, SignatureError> {
    let text: String = n
        .children()
        .filter(Node::is_text)
        .filter_map(|t| t.text())
        .flat_map(|t| t.chars())
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    STANDARD
        .decode(text)
        .map_err(|e| structure(format!("ds:{what} is not base64: {e}")))
}

/// The certificates of `KeyInfo/X509Data`, DER, in document order.
fn key_info_chain(key_info: Node<'_, '_>) -> Result<Vec<Vec<u8>>, SignatureError> {
    let data = key_info
        .children()
        .find(|n| is_dsig(*n, "X509Data"))
        .ok_or_else(|| structure("ds:KeyInfo has no ds:X509Data"))?;
    let chain = data
        .children()
        .filter(|n| is_dsig(*n, "X509Certificate"))
        .take(super::chain::MAX_CHAIN_LEN + 1)
        .map(|n| base64_text(n, "X509Certificate"))
        .collect::<Result<Vec<_>, _>>()?;
    if chain.is_empty() {
        return Err(structure("ds:X509Data holds no ds:X509Certificate"));
    }
    if chain.len() > super::chain::MAX_CHAIN_LEN {
        return Err(structure(format!(
            "more than {} certificates in ds:X509Data",
            super::chain::MAX_CHAIN_LEN
        )));
    }
    Ok(chain)
}
