//! Test support shared by the verifier's reference-bundle tests and the operator's CLI
//! tests (included there with `#[path]`): a test PKI, RIMs laid out and enveloped-signed as
//! NVIDIA's are, for the recorded Hopper report's own measurements, and bundle documents.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use lotabots_verifier::cc::c14n::{self, Algorithm};
use lotabots_verifier::cc::rim::RimKind;
use lotabots_verifier::cc::{decode_report, parse_report};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P384_SHA384,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};

pub const REPORT_HEX: &str = include_str!("../fixtures/hopper/hopperAttestationReport.txt");
pub const CHAIN_PEM: &str = include_str!("../fixtures/hopper/hopperCertChain.txt");
pub const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

const SWID: &str = "http://standards.iso.org/iso/19770/-2/2015/schema.xsd";
const SHA384_NS: &str = "http://www.w3.org/2001/04/xmlenc#sha384";

/// A RIM's measurements as the tests write them: (index, active, alternatives in hex).
pub type Measurements = Vec<(u32, bool, Vec<String>)>;

pub fn report() -> Vec<u8> {
    decode_report(REPORT_HEX.as_bytes()).unwrap()
}

// ---------------------------------------------------------------------------------------
// A test PKI for RIM signing and OCSP.

pub fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

pub struct Pki {
    pub root_params: CertificateParams,
    pub root_key: KeyPair,
    pub root_pem: String,
    pub root_der: Vec<u8>,
    pub signer_key: KeyPair,
    pub signer_der: Vec<u8>,
}

pub fn pki(signer_until: i32) -> Pki {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.distinguished_name = dn("Test RIM Root CA");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    root_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    root_params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let root = root_params.self_signed(&root_key).unwrap();
    let signer_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name = dn("Test RIM Signer");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = rcgen::date_time_ymd(signer_until, 1, 1);
    let signer = params
        .signed_by(&signer_key, &Issuer::from_params(&root_params, &root_key))
        .unwrap();
    Pki {
        root_pem: root.pem(),
        root_der: root.der().to_vec(),
        root_params,
        root_key,
        signer_key,
        signer_der: signer.der().to_vec(),
    }
}

/// A RIM as NVIDIA lays them out, enveloped-signed with `key`, carrying `chain` in KeyInfo.
pub fn signed_rim(
    version: &str,
    measurements: &[(u32, bool, Vec<String>)],
    key: &KeyPair,
    chain: &[&[u8]],
) -> String {
    let resources: String = measurements
        .iter()
        .map(|(i, active, alts)| {
            let hashes: String = alts
                .iter()
                .enumerate()
                .map(|(n, h)| format!(" ns2:Hash{n}=\"{h}\""))
                .collect();
            let active = if *active { "True" } else { "False" };
            format!(
                "\n        <ns0:Resource type=\"Measurement\" index=\"{i}\" active=\"{active}\" alternatives=\"{}\"{hashes} name=\"Measurement_{i}\" size=\"48\"/>",
                alts.len()
            )
        })
        .collect();
    let body = format!(
        "<SoftwareIdentity xmlns=\"{SWID}\" xmlns:ns0=\"{SWID}\" xmlns:ns2=\"{SHA384_NS}\" corpus=\"false\" name=\"GH100\" tagId=\"5e1f0000aaaabbbbcccc\" version=\"1.0\">\n    <ns0:Meta colloquialVersion=\"{version}\" product=\"GH100\"/>\n    <ns0:Payload>{resources}\n    </ns0:Payload>\n</SoftwareIdentity>"
    );
    let unsigned = roxmltree::Document::parse(&body).unwrap();
    let canonical = c14n::canonicalize(unsigned.root(), &Algorithm::Inclusive11, None).unwrap();
    let digest = STANDARD.encode(ring::digest::digest(
        &ring::digest::SHA384,
        canonical.as_bytes(),
    ));
    let certs: String = chain
        .iter()
        .map(|d| {
            format!(
                "<ds:X509Certificate>{}</ds:X509Certificate>",
                STANDARD.encode(d)
            )
        })
        .collect();
    let c14n11 = "http://www.w3.org/2006/12/xml-c14n11";
    let signature = format!(
        "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"><ds:SignedInfo><ds:CanonicalizationMethod Algorithm=\"{c14n11}\"/><ds:SignatureMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384\"/><ds:Reference URI=\"\"><ds:Transforms><ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/><ds:Transform Algorithm=\"{c14n11}\"/></ds:Transforms><ds:DigestMethod Algorithm=\"http://www.w3.org/2001/04/xmldsig-more#sha384\"/><ds:DigestValue>{digest}</ds:DigestValue></ds:Reference></ds:SignedInfo><ds:SignatureValue>SIGNATURE</ds:SignatureValue><ds:KeyInfo><ds:X509Data>{certs}</ds:X509Data></ds:KeyInfo></ds:Signature>"
    );
    let with_sig = body.replace(
        "</SoftwareIdentity>",
        &format!("{signature}</SoftwareIdentity>"),
    );
    let doc = roxmltree::Document::parse(&with_sig).unwrap();
    let info = doc
        .descendants()
        .find(|n| n.tag_name().name() == "SignedInfo")
        .unwrap();
    let signed = c14n::canonicalize(info, &Algorithm::Inclusive11, None).unwrap();
    let rng = SystemRandom::new();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, key.serialized_der(), &rng)
            .unwrap();
    let sig = signer.sign(&rng, signed.as_bytes()).unwrap();
    with_sig.replace("SIGNATURE", &STANDARD.encode(sig.as_ref()))
}

/// The report's measurements as (index, value): RIM index = SPDM block index − 1.
pub fn sample_measurements() -> Vec<(u32, String)> {
    parse_report(&report())
        .unwrap()
        .response
        .blocks
        .iter()
        .map(|b| (u32::from(b.index) - 1, hex::encode(&b.value)))
        .collect()
}

/// Driver and VBIOS RIMs for the sample: VBIOS indices 0..=20 active, driver 21..=63, each
/// RIM listing the other's indices as inactive (as NVIDIA's do).
pub fn sample_rims(pki: &Pki, edit: impl Fn(RimKind, &mut Measurements)) -> Vec<(RimKind, String)> {
    [
        (RimKind::Driver, "550.90.07"),
        (RimKind::Vbios, "96.00.9F.00.01"),
    ]
    .into_iter()
    .map(|(kind, version)| {
        let mut ms: Measurements = sample_measurements()
            .into_iter()
            .map(|(i, v)| ((i <= 20) == (kind == RimKind::Vbios), i, v))
            .map(|(active, i, v)| {
                if active {
                    (i, true, vec![v])
                } else {
                    (i, false, vec!["00".repeat(48)])
                }
            })
            .collect();
        edit(kind, &mut ms);
        let xml = signed_rim(
            version,
            &ms,
            &pki.signer_key,
            &[&pki.signer_der, &pki.root_der],
        );
        (kind, xml)
    })
    .collect()
}

pub fn bundle_json(
    rims: &[(RimKind, String)],
    ocsp: &[Vec<u8>],
    missing: &str,
    root_override: Option<&str>,
) -> Vec<u8> {
    let mut doc = serde_json::json!({
        "schemaVersion": "lotabots.io/cc-reference-bundle/v1alpha1",
        "rims": rims.iter().map(|(k, x)| serde_json::json!({
            "kind": if *k == RimKind::Driver { "driver" } else { "vbios" },
            "swidtag": x,
        })).collect::<Vec<_>>(),
        "ocspResponses": ocsp.iter().map(|d| STANDARD.encode(d)).collect::<Vec<_>>(),
        "missingOcsp": missing,
    });
    if let Some(pem) = root_override {
        doc["rimRootOverride"] = pem.into();
    }
    serde_json::to_vec(&doc).unwrap()
}
