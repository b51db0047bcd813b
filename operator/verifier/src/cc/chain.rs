//! The device certificate chain: PEM reading, path checks up to the trusted root,
//! validity periods, and the TCG DICE FWID in the leaf.

use jiff::Timestamp;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;

/// Most certificates accepted in a chain (NVIDIA's Hopper chains have five).
pub const MAX_CHAIN_LEN: usize = 10;
/// Largest PEM input accepted, in bytes.
pub const MAX_PEM_LEN: usize = 256 * 1024;

/// TCG DICE FWID / TcbInfo extension (`tcg-dice-TcbInfo`), as NVIDIA's GPU leaf certificates
/// carry it, and the variant OID NVIDIA's tools also accept.
pub const FWID_OIDS: [&str; 2] = ["2.23.133.5.4.1", "2.23.133.5.4.1.1"];

/// Reads the `CERTIFICATE` blocks of a PEM document, in order, as DER.
pub fn read_pem_certs(pem: &[u8], what: &str) -> Result<Vec<Vec<u8>>, String> {
    if pem.len() > MAX_PEM_LEN {
        return Err(format!(
            "{what}: {} bytes of PEM, more than the {MAX_PEM_LEN} accepted",
            pem.len()
        ));
    }
    let mut out = Vec::new();
    for (i, block) in Pem::iter_from_buffer(pem).enumerate() {
        let block = block.map_err(|e| format!("{what}: PEM block {} unreadable: {e}", i + 1))?;
        if block.label != "CERTIFICATE" {
            return Err(format!(
                "{what}: PEM block {} is a {:?}, expected a CERTIFICATE",
                i + 1,
                block.label
            ));
        }
        if out.len() == MAX_CHAIN_LEN {
            return Err(format!("{what}: more than {MAX_CHAIN_LEN} certificates"));
        }
        out.push(block.contents);
    }
    if out.is_empty() {
        return Err(format!("{what}: no PEM CERTIFICATE block found"));
    }
    Ok(out)
}

/// Parses DER certificates; `what` and the position name a failing one.
pub fn parse_certs<'a>(
    ders: &'a [Vec<u8>],
    what: &str,
) -> Result<Vec<X509Certificate<'a>>, String> {
    ders.iter()
        .enumerate()
        .map(|(i, der)| match X509Certificate::from_der(der) {
            Ok(([], cert)) => Ok(cert),
            Ok((rest, _)) => Err(format!(
                "{what}: certificate {} of {} has {} bytes after its DER encoding",
                i + 1,
                ders.len(),
                rest.len()
            )),
            Err(e) => Err(format!(
                "{what}: certificate {} of {} is not a valid X.509 certificate: {e}",
                i + 1,
                ders.len()
            )),
        })
        .collect()
}

/// A certificate's common name, or its whole subject when it has none.
pub fn subject_name(cert: &X509Certificate<'_>) -> String {
    cert.subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(|cn| format!("CN={cn}"))
        .unwrap_or_else(|| cert.subject().to_string())
}

/// How findings name a certificate of the chain: "certificate 2 of 5 (CN=…)".
pub fn describe(cert: &X509Certificate<'_>, pos: usize, total: usize) -> String {
    format!(
        "certificate {} of {total} ({})",
        pos + 1,
        subject_name(cert)
    )
}

/// Checks that `child` was issued and signed by `issuer`, and that `issuer` may sign
/// certificates. `ca_below` counts the CA certificates between the issuer and the leaf
/// (for pathLenConstraint).
fn check_link(
    child: &X509Certificate<'_>,
    child_name: &str,
    issuer: &X509Certificate<'_>,
    issuer_name: &str,
    ca_below: usize,
) -> Result<(), String> {
    if child.issuer().as_raw() != issuer.subject().as_raw() {
        return Err(format!(
            "{child_name} names issuer \"{}\" but the next certificate is {issuer_name} \
             (subject \"{}\"): wrong order or a certificate missing",
            child.issuer(),
            issuer.subject()
        ));
    }
    match issuer.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {
            if let Some(max) = bc.value.path_len_constraint
                && ca_below > max as usize
            {
                return Err(format!(
                    "{issuer_name} allows {max} CA certificates below it, the chain has {ca_below}"
                ));
            }
        }
        Ok(_) => {
            return Err(format!(
                "{issuer_name} issues {child_name} but is not a CA (basicConstraints cA not set)"
            ));
        }
        Err(e) => return Err(format!("{issuer_name}: basicConstraints unreadable: {e}")),
    }
    match issuer.key_usage() {
        Ok(Some(ku)) if !ku.value.key_cert_sign() => {
            return Err(format!(
                "{issuer_name} may not sign certificates (keyUsage lacks keyCertSign)"
            ));
        }
        Ok(_) => {}
        Err(e) => return Err(format!("{issuer_name}: keyUsage unreadable: {e}")),
    }
    child
        .verify_signature(Some(issuer.public_key()))
        .map_err(|e| {
            format!(
                "the signature on {child_name} does not verify with the key of {issuer_name}: {e}"
            )
        })
}

/// Verifies the chain (leaf first) up to `root`: each certificate signed by the next, the
/// last one either the root itself or signed by it. Returns a summary of the path.
pub fn verify_chain(
    chain: &[X509Certificate<'_>],
    root: &X509Certificate<'_>,
    root_label: &str,
) -> Result<String, String> {
    let n = chain.len();
    for i in 0..n.saturating_sub(1) {
        check_link(
            &chain[i],
            &describe(&chain[i], i, n),
            &chain[i + 1],
            &describe(&chain[i + 1], i + 1, n),
            i,
        )?;
    }
    let Some(last) = chain.last() else {
        return Err("the chain is empty".into());
    };
    let path: Vec<String> = chain.iter().map(subject_name).collect();
    if last.as_raw() == root.as_raw() {
        return Ok(format!(
            "{}: {n} certificates, each signed by the next, ending at the {root_label}",
            path.join(" → ")
        ));
    }
    let root_name = format!("the {root_label} ({})", subject_name(root));
    check_link(last, &describe(last, n - 1, n), root, &root_name, n - 1).map_err(|e| {
        if last.issuer().as_raw() == root.subject().as_raw() {
            e
        } else {
            format!(
                "the chain does not lead to {root_name}: its last certificate, {}, is issued \
                 by \"{}\"",
                describe(last, n - 1, n),
                last.issuer()
            )
        }
    })?;
    Ok(format!(
        "{} → {root_name}: {n} certificates, each signed by the next, the last by the root",
        path.join(" → ")
    ))
}

/// Whether `cert` is valid at `at`; `Err` says when it is valid.
pub fn check_validity(cert: &X509Certificate<'_>, name: &str, at: Timestamp) -> Result<(), String> {
    let v = cert.validity();
    let from = v.not_before.timestamp();
    let until = v.not_after.timestamp();
    let now = at.as_second();
    let show = |s: i64| {
        Timestamp::from_second(s)
            .map(|t| t.to_string())
            .unwrap_or_else(|_| format!("{s} s after the epoch"))
    };
    if now < from {
        Err(format!(
            "{name} is not yet valid at {at}: valid from {}",
            show(from)
        ))
    } else if now > until {
        Err(format!("{name} expired at {}, judged at {at}", show(until)))
    } else {
        Ok(())
    }
}

/// The raw P-384 public point of `cert` (SEC1, uncompressed), or why there is none.
pub fn p384_public_key<'a>(cert: &'a X509Certificate<'_>) -> Result<&'a [u8], String> {
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_NIST_EC_P384) {
        return Err(format!(
            "the leaf key is not an EC P-384 key (algorithm {}, parameters {:?})",
            spki.algorithm.algorithm,
            curve.map(|c| c.to_id_string())
        ));
    }
    Ok(&spki.subject_public_key.data)
}

/// The FWID of a certificate's TCG DICE extension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertFwid {
    /// Dotted OID of the digest algorithm (SHA-384 on Hopper).
    pub hash_alg: String,
    pub digest: Vec<u8>,
}

/// Finds the first FWID in the leaf's TCG DICE extension. `Ok(None)`: no such extension.
///
/// Two encodings exist: NVIDIA's Hopper leaves carry
/// `SEQUENCE { INTEGER, SubjectPublicKeyInfo, FWID }`, the TCG DICE `DiceTcbInfo` carries
/// `fwids [6] IMPLICIT SEQUENCE OF FWID`; `FWID ::= SEQUENCE { hashAlg OID, digest OCTET
/// STRING }` in both.
pub fn leaf_fwid(cert: &X509Certificate<'_>) -> Result<Option<CertFwid>, String> {
    let Some(ext) = cert
        .extensions()
        .iter()
        .find(|e| FWID_OIDS.contains(&e.oid.to_id_string().as_str()))
    else {
        return Ok(None);
    };
    let bad = |why: &str| {
        format!(
            "FWID extension {} unreadable: {why}",
            ext.oid.to_id_string()
        )
    };
    let (tag, content, _) = der_tlv(ext.value).ok_or_else(|| bad("not DER"))?;
    if tag != 0x30 {
        return Err(bad("not a SEQUENCE"));
    }
    let mut rest = content;
    while !rest.is_empty() {
        let (tag, inner, next) = der_tlv(rest).ok_or_else(|| bad("malformed element"))?;
        rest = next;
        match tag {
            // DiceTcbInfo: fwids [6] IMPLICIT SEQUENCE OF FWID.
            0xA6 => {
                let (t, fwid, _) = der_tlv(inner).ok_or_else(|| bad("malformed fwids"))?;
                if t != 0x30 {
                    return Err(bad("fwids entry not a SEQUENCE"));
                }
                return parse_fwid(fwid)
                    .map(Some)
                    .ok_or_else(|| bad("malformed FWID"));
            }
            // NVIDIA's form: the FWID SEQUENCE sits at the top level.
            0x30 => {
                if let Some(fwid) = parse_fwid(inner) {
                    return Ok(Some(fwid));
                }
            }
            _ => {}
        }
    }
    Err(bad("no FWID found in it"))
}

/// `SEQUENCE { OID, OCTET STRING }` content → FWID; `None` when it is something else.
fn parse_fwid(content: &[u8]) -> Option<CertFwid> {
    let (t1, oid, rest) = der_tlv(content)?;
    let (t2, digest, rest) = der_tlv(rest)?;
    if t1 != 0x06 || t2 != 0x04 || !rest.is_empty() || digest.is_empty() {
        return None;
    }
    Some(CertFwid {
        hash_alg: oid_to_string(oid)?,
        digest: digest.to_vec(),
    })
}

/// Dotted form of a DER OID's content.
fn oid_to_string(content: &[u8]) -> Option<String> {
    let (&first, rest) = content.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut acc: u64 = 0;
    for &b in rest {
        acc = acc.checked_mul(128)? | u64::from(b & 0x7F);
        if b & 0x80 == 0 {
            parts.push(acc);
            acc = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// One DER TLV with a single-byte tag: (tag, content, rest). Bounded; `None` when malformed.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = if len0 < 0x80 {
        (usize::from(len0), rest)
    } else {
        let n = usize::from(len0 & 0x7F);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_tlv_is_bounded() {
        assert_eq!(
            der_tlv(&[0x30, 0x02, 1, 2, 3]),
            Some((0x30, &[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(der_tlv(&[0x30, 0x03, 1, 2]), None);
        assert_eq!(der_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]), None);
        assert_eq!(der_tlv(&[0x30, 0x81]), None);
        assert_eq!(der_tlv(&[0x30]), None);
        assert_eq!(
            der_tlv(&[0x30, 0x81, 0x02, 9, 9]),
            Some((0x30, &[9u8, 9][..], &[][..]))
        );
    }

    #[test]
    fn oid_to_string_decodes_sha384() {
        let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
        assert_eq!(
            oid_to_string(&sha384).as_deref(),
            Some("2.16.840.1.101.3.4.2.2")
        );
        assert_eq!(oid_to_string(&[]), None);
        // Arcs beyond 64 bits are refused, not wrapped.
        assert_eq!(
            oid_to_string(&[
                0x2a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f
            ]),
            None
        );
    }
}
