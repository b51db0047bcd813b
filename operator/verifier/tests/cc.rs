//! Confidential-computing report verification on NVIDIA's recorded Hopper evidence
//! (tests/fixtures/hopper, source in its README) and on variants the tests make themselves:
//! each test changes one thing and asserts the finding it must produce.

use std::sync::LazyLock;

use jiff::Timestamp;
use lotabots_verifier::cc::{
    CcCheck, CcInput, CcOutcome, CcVerdict, NVIDIA_DEVICE_ROOT_PEM, Severity, decode_report,
    parse_report, verify_report,
};
use rcgen::{
    BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P384_SHA384,
};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};

const REPORT_HEX: &str = include_str!("fixtures/hopper/hopperAttestationReport.txt");
const CHAIN_PEM: &str = include_str!("fixtures/hopper/hopperCertChain.txt");
const ROOT_PEM: &str = include_str!("fixtures/hopper/verifier_device_root.pem");
/// The nonce the sample was made with (see the fixture README).
const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
/// The sample's FWID (report opaque field 20 and the leaf certificate's extension).
const SAMPLE_FWID: &str = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d";

/// Report layout offsets (request is 37 bytes; response header 8).
const RESP: usize = 37;
const RECORD: usize = RESP + 8;

fn report() -> Vec<u8> {
    decode_report(REPORT_HEX.as_bytes()).unwrap()
}

fn nonce() -> &'static [u8; 32] {
    static NONCE: LazyLock<[u8; 32]> =
        LazyLock::new(|| hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap());
    &NONCE
}

fn at() -> Timestamp {
    "2025-06-01T00:00:00Z".parse().unwrap()
}

fn verify(report: &[u8], chain: &[u8], nonce: &[u8; 32], at: Timestamp) -> CcOutcome {
    verify_report(&CcInput::new(report, chain, nonce, at))
}

fn severity(o: &CcOutcome, check: CcCheck) -> Severity {
    let all: Vec<_> = o.of(check).collect();
    assert!(
        !all.is_empty(),
        "no finding for {check:?}: {:#?}",
        o.findings
    );
    all.iter().map(|f| f.severity).max().unwrap()
}

fn message(o: &CcOutcome, check: CcCheck) -> String {
    o.of(check)
        .map(|f| f.message.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The PEM blocks of the sample chain, leaf first.
fn chain_blocks() -> Vec<String> {
    CHAIN_PEM
        .split_inclusive("-----END CERTIFICATE-----")
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .collect()
}

fn join(blocks: &[String]) -> Vec<u8> {
    blocks.join("\n").into_bytes()
}

/// Offset of the opaque data's length field in the sample.
fn opaque_len_at(r: &[u8]) -> usize {
    let l1 =
        usize::from(r[RESP + 5]) | usize::from(r[RESP + 6]) << 8 | usize::from(r[RESP + 7]) << 16;
    RECORD + l1 + 32
}

// ---------------------------------------------------------------------------------------
// The recorded sample.

#[test]
fn recorded_sample_verifies_against_pinned_root() {
    let o = verify(&report(), CHAIN_PEM.as_bytes(), nonce(), at());
    assert_eq!(o.verdict(), CcVerdict::Attested, "{:#?}", o.findings);
    for check in [
        CcCheck::Parse,
        CcCheck::Nonce,
        CcCheck::Chain,
        CcCheck::Validity,
        CcCheck::Signature,
        CcCheck::Fwid,
    ] {
        assert_eq!(
            severity(&o, check),
            Severity::Passed,
            "{check:?}: {:#?}",
            o.findings
        );
    }
    assert!(message(&o, CcCheck::Chain).contains("pinned NVIDIA device identity root"));
    assert!(message(&o, CcCheck::Chain).contains("CN=GH100 A01 GSP FMC LF"));
    assert!(message(&o, CcCheck::Fwid).contains(SAMPLE_FWID));
    // Never a silent pass on what was not checked.
    assert_eq!(severity(&o, CcCheck::ReferenceValues), Severity::Note);
    assert!(
        message(&o, CcCheck::ReferenceValues)
            .contains("measurements not checked against reference values")
    );
    assert_eq!(severity(&o, CcCheck::Revocation), Severity::Note);
    // The checks run in the documented order.
    let order: Vec<CcCheck> = o.findings.iter().map(|f| f.check).collect();
    assert_eq!(
        order,
        [
            CcCheck::Parse,
            CcCheck::Nonce,
            CcCheck::Chain,
            CcCheck::Validity,
            CcCheck::Signature,
            CcCheck::Fwid,
            CcCheck::ReferenceValues,
            CcCheck::Revocation
        ]
    );
}

#[test]
fn recorded_sample_parses_into_its_fields() {
    let p = parse_report(&report()).unwrap();
    assert_eq!(p.request.spdm_version, 0x11);
    assert_eq!(p.request.param2, 0xFF, "all measurements requested");
    assert_eq!(hex::encode(p.request.nonce), SAMPLE_NONCE);
    assert_eq!(p.response.blocks.len(), 64);
    assert!(p.response.blocks.iter().enumerate().all(|(i, b)| {
        usize::from(b.index) == i + 1 && b.value.len() == 48 && b.value_type == Some(1)
    }));
    assert_eq!(p.driver_version().as_deref(), Some("550.90.07"));
    assert_eq!(p.vbios_version().as_deref(), Some("96.00.9F.00.01"));
    assert_eq!(hex::encode(p.fwid().unwrap()), SAMPLE_FWID);
    assert_eq!(p.response.signature.len(), 96);
    assert_eq!(p.signed_len, report().len() - 96);
    // The parsed report is exposed by the outcome and serializes (hex for bytes).
    let o = verify(&report(), CHAIN_PEM.as_bytes(), nonce(), at());
    assert_eq!(o.parsed.as_ref(), Some(&p));
    let json = serde_json::to_value(&o).unwrap();
    assert_eq!(json["parsed"]["request"]["nonce"], SAMPLE_NONCE);
    assert_eq!(json["findings"][0]["severity"], "passed");
}

#[test]
fn pinned_root_is_nvidias_published_root() {
    assert_eq!(NVIDIA_DEVICE_ROOT_PEM, ROOT_PEM);
    let der = x509_der(ROOT_PEM);
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    assert_eq!(
        hex::encode(digest.as_ref()),
        "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    );
    // The sample chain ends with it.
    assert_eq!(x509_der(chain_blocks().last().unwrap()), der);
}

fn x509_der(pem: &str) -> Vec<u8> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .contents
}

#[test]
fn hex_text_and_binary_reports_decode_alike() {
    let bin = report();
    assert_eq!(bin.len(), 4117);
    assert_eq!(decode_report(&bin).unwrap(), bin, "binary is taken as is");
    let spaced = format!("0x{}\n", REPORT_HEX.trim());
    assert_eq!(decode_report(spaced.as_bytes()).unwrap(), bin);
    assert!(decode_report(b"  \n").unwrap_err().contains("empty"));
    assert!(decode_report(b"abc").unwrap_err().contains("not valid hex"));
}

// ---------------------------------------------------------------------------------------
// Nonce and signature.

#[test]
fn wrong_nonce_is_a_nonce_failure() {
    let mut other = *nonce();
    other[0] ^= 1;
    let o = verify(&report(), CHAIN_PEM.as_bytes(), &other, at());
    assert_eq!(o.verdict(), CcVerdict::Failed);
    assert_eq!(severity(&o, CcCheck::Nonce), Severity::Failed);
    assert!(message(&o, CcCheck::Nonce).contains(SAMPLE_NONCE));
    // The report itself is genuine: only the nonce fails.
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Passed);
    assert_eq!(o.problems().count(), 1, "{:#?}", o.findings);
}

#[test]
fn flipped_measurement_byte_fails_the_signature() {
    let mut r = report();
    // Block 2's digest: header 4 + DMTF header 3 into the second 55-byte block.
    let at_byte = RECORD + 55 + 7 + 10;
    r[at_byte] ^= 0x01;
    let o = verify(&r, CHAIN_PEM.as_bytes(), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Parse), Severity::Passed);
    assert_eq!(severity(&o, CcCheck::Nonce), Severity::Passed);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Failed);
    assert!(message(&o, CcCheck::Signature).contains("does not verify"));
    assert_eq!(o.verdict(), CcVerdict::Failed);
}

#[test]
fn every_signed_region_is_covered_by_the_signature() {
    let base = report();
    let opaque_at = opaque_len_at(&base) + 2;
    // request nonce, response header param, measurement, responder nonce, opaque data
    // (the board id value), and the signature itself.
    for (what, i) in [
        ("request nonce", 10),
        ("response Param2", RESP + 3),
        ("measurement value", RECORD + 7),
        ("responder nonce", opaque_len_at(&base) - 16),
        ("opaque data", opaque_at + 4 + 8 + 4),
        ("signature", base.len() - 5),
    ] {
        let mut r = base.clone();
        r[i] ^= 0x20;
        let o = verify(&r, CHAIN_PEM.as_bytes(), nonce(), at());
        assert_eq!(severity(&o, CcCheck::Parse), Severity::Passed, "{what}");
        assert_eq!(severity(&o, CcCheck::Signature), Severity::Failed, "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// Parse errors.

#[test]
fn truncated_report_names_the_field() {
    let r = report();
    for (len, field) in [
        (0, "request SPDMVersion"),
        (20, "request Nonce"),
        (36, "request SlotIDParam"),
        (RESP + 6, "response MeasurementRecordLength"),
        (RECORD + 100, "response MeasurementRecord"),
        (opaque_len_at(&r) - 1, "response Nonce"),
        (opaque_len_at(&r) + 1, "response OpaqueLength"),
        (opaque_len_at(&r) + 20, "response OpaqueData"),
        (r.len() - 1, "response Signature"),
    ] {
        let e = parse_report(&r[..len]).unwrap_err();
        assert_eq!(e.field, field, "truncated at {len}: {e}");
        let o = verify(&r[..len], CHAIN_PEM.as_bytes(), nonce(), at());
        assert_eq!(o.verdict(), CcVerdict::Failed);
        let msg = message(&o, CcCheck::Parse);
        assert!(
            msg.contains(field) && msg.contains("offset") && msg.contains("truncated"),
            "{msg}"
        );
        assert!(o.parsed.is_none());
        for check in [CcCheck::Nonce, CcCheck::Signature, CcCheck::Fwid] {
            assert_eq!(severity(&o, check), Severity::Unknown, "{check:?}");
        }
        // The chain is judged even so.
        assert_eq!(severity(&o, CcCheck::Chain), Severity::Passed);
    }
}

#[test]
fn bad_header_fields_are_named() {
    let base = report();
    let case = |i: usize, v: u8| {
        let mut r = base.clone();
        r[i] = v;
        parse_report(&r).unwrap_err()
    };
    let e = case(0, 0x12);
    assert_eq!((e.field, e.offset), ("request SPDMVersion", 0));
    assert!(e.to_string().contains("SPDM 1.1"), "{e}");
    assert_eq!(case(1, 0x81).field, "request RequestResponseCode");
    let e = case(2, 0x00);
    assert_eq!(e.field, "request Param1");
    assert!(e.to_string().contains("signature requested"), "{e}");
    assert_eq!(case(RESP, 0x10).field, "response SPDMVersion");
    let e = case(RESP + 1, 0x7F);
    assert_eq!(
        (e.field, e.offset),
        ("response RequestResponseCode", RESP + 1)
    );
    assert!(e.to_string().contains("SPDM ERROR"), "{e}");
    assert_eq!(case(RESP + 4, 63).field, "response NumberOfBlocks");
    // A DMTF value size that disagrees with the block size.
    let e = case(RECORD + 5, 47);
    assert_eq!(
        (e.field, e.offset),
        ("DMTFSpecMeasurementValueSize", RECORD + 5)
    );
    // Record length pointing past the end of the report.
    let e = case(RESP + 7, 0xFF);
    assert_eq!(e.field, "response MeasurementRecord");
    // Opaque length above SPDM 1.1's 1024.
    let mut r = base.clone();
    let ol = opaque_len_at(&r);
    r[ol..ol + 2].copy_from_slice(&2000u16.to_le_bytes());
    let e = parse_report(&r).unwrap_err();
    assert_eq!((e.field, e.offset), ("response OpaqueLength", ol));
    // An opaque field size running past the opaque data.
    let mut r = base.clone();
    r[ol + 2 + 3] = 0xFF;
    assert_eq!(
        parse_report(&r).unwrap_err().field,
        "opaque data field value"
    );
    // A second FWID field in the opaque data (which one would count?).
    let mut r = base[..base.len() - 96].to_vec();
    let len = u16::from_le_bytes([r[ol], r[ol + 1]]) + 52;
    r[ol..ol + 2].copy_from_slice(&len.to_le_bytes());
    r.extend_from_slice(&[20, 0, 48, 0]);
    r.extend_from_slice(&[0xAB; 48]);
    r.extend_from_slice(&base[base.len() - 96..]);
    let e = parse_report(&r).unwrap_err();
    assert_eq!(e.field, "opaque data field FWID", "{e}");
    assert_eq!(e.offset, base.len() - 96);
    // Bytes after the signature.
    let mut r = base.clone();
    r.push(0);
    let e = parse_report(&r).unwrap_err();
    assert_eq!(e.field, "response Signature");
    assert!(
        e.to_string()
            .contains("1 unexpected bytes after the signature"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------------------
// The chain.

#[test]
fn chain_without_its_root_still_reaches_the_pinned_root() {
    let mut blocks = chain_blocks();
    blocks.pop();
    let o = verify(&report(), &join(&blocks), nonce(), at());
    assert_eq!(o.verdict(), CcVerdict::Attested, "{:#?}", o.findings);
    assert!(message(&o, CcCheck::Chain).contains("4 certificates"));
    // The root's own validity is still judged.
    assert!(message(&o, CcCheck::Validity).contains("all 5 certificates"));
}

#[test]
fn chain_with_a_certificate_removed_fails() {
    let mut blocks = chain_blocks();
    blocks.remove(2); // the provisioner ICA
    let o = verify(&report(), &join(&blocks), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    let msg = message(&o, CcCheck::Chain);
    assert!(
        msg.contains("certificate 2 of 4 (CN=GH100 A01 GSP BROM)"),
        "{msg}"
    );
    assert!(msg.contains("a certificate missing"), "{msg}");
    assert_eq!(o.verdict(), CcVerdict::Failed);
}

#[test]
fn chain_in_wrong_order_fails() {
    let mut blocks = chain_blocks();
    blocks.swap(1, 2);
    let o = verify(&report(), &join(&blocks), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert!(message(&o, CcCheck::Chain).contains("wrong order"));
    // Leaf last: the report's signature is then checked with the wrong key.
    let mut blocks = chain_blocks();
    blocks.reverse();
    let o = verify(&report(), &join(&blocks), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Failed);
}

#[test]
fn leaf_alone_does_not_reach_the_root() {
    let blocks = chain_blocks();
    let o = verify(&report(), &join(&blocks[..1]), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert!(message(&o, CcCheck::Chain).contains("does not lead to the pinned NVIDIA"));
}

#[test]
fn chain_that_is_not_pem_fails_and_signature_is_unknown() {
    let o = verify(&report(), b"not a certificate", nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert!(message(&o, CcCheck::Chain).contains("no PEM CERTIFICATE block"));
    assert_eq!(severity(&o, CcCheck::Validity), Severity::Unknown);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Unknown);
    assert_eq!(severity(&o, CcCheck::Fwid), Severity::Unknown);
    // A key instead of a certificate.
    let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let o = verify(&report(), key.serialize_pem().as_bytes(), nonce(), at());
    assert!(message(&o, CcCheck::Chain).contains("expected a CERTIFICATE"));
    // Garbage inside a certificate block.
    let bad = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let o = verify(&report(), bad.as_bytes(), nonce(), at());
    assert!(message(&o, CcCheck::Chain).contains("certificate 1 of 1 is not a valid X.509"));
}

#[test]
fn validity_is_judged_at_the_given_time() {
    // Before the leaf's notBefore (2020-10-17).
    let early: Timestamp = "2020-01-01T00:00:00Z".parse().unwrap();
    let o = verify(&report(), CHAIN_PEM.as_bytes(), nonce(), early);
    assert_eq!(severity(&o, CcCheck::Validity), Severity::Failed);
    let msg = message(&o, CcCheck::Validity);
    assert!(
        msg.contains("certificate 1 of 5 (CN=GH100 A01 GSP FMC LF) is not yet valid"),
        "{msg}"
    );
    assert!(msg.contains("2020-10-17T00:00:00Z"), "{msg}");
    // Every certificate is judged, not only the first failing one (ICA 1: from 2022-03-01).
    assert_eq!(o.of(CcCheck::Validity).count(), 5);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Passed);
    assert_eq!(o.verdict(), CcVerdict::Failed);
}

// ---------------------------------------------------------------------------------------
// Self-made chains (rcgen, P-384) and reports re-signed with their keys.

struct MadeChain {
    root_pem: String,
    chain_pem: String,
    leaf_key: KeyPair,
}

fn dn(cn: &str) -> rcgen::DistinguishedName {
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    if content.len() < 0x80 {
        out.push(content.len() as u8);
    } else {
        out.push(0x81);
        out.push(content.len() as u8);
    }
    out.extend_from_slice(content);
    out
}

/// NVIDIA's form of the FWID extension: SEQUENCE { INTEGER 1, SEQUENCE { sha384, digest } }.
fn fwid_extension(digest: &[u8]) -> CustomExtension {
    let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    let fwid = der(0x30, &[der(0x06, &sha384), der(0x04, digest)].concat());
    let value = der(0x30, &[der(0x02, &[1]), fwid].concat());
    CustomExtension::from_oid_content(&[2, 23, 133, 5, 4, 1], value)
}

/// The TCG DICE `DiceTcbInfo` form: fwids [6] IMPLICIT SEQUENCE OF FWID.
fn dice_tcb_info_extension(digest: &[u8]) -> CustomExtension {
    let sha384 = [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
    let fwid = der(0x30, &[der(0x06, &sha384), der(0x04, digest)].concat());
    let value = der(0x30, &[der(0x80, b"NVIDIA"), der(0xA6, &fwid)].concat());
    CustomExtension::from_oid_content(&[2, 23, 133, 5, 4, 1], value)
}

fn make_chain(leaf_ext: Option<CustomExtension>, not_after_year: i32) -> MadeChain {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut root_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    root_params.distinguished_name = dn("Self-made Device Identity CA");
    root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root_params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    root_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    root_params.not_after = rcgen::date_time_ymd(2040, 1, 1);
    let root = root_params.self_signed(&root_key).unwrap();

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut leaf_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf_params.distinguished_name = dn("Self-made GSP FMC LF");
    leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf_params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    leaf_params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
    leaf_params.custom_extensions.extend(leaf_ext);
    let issuer = Issuer::from_params(&root_params, &root_key);
    let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
    MadeChain {
        root_pem: root.pem(),
        chain_pem: leaf.pem(),
        leaf_key,
    }
}

/// Re-signs `report` (its last 96 bytes replaced) with `key`, as a device holding it would.
fn resign(report: &[u8], key: &KeyPair) -> Vec<u8> {
    let rng = SystemRandom::new();
    let signer =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, key.serialized_der(), &rng)
            .unwrap();
    let signed = &report[..report.len() - 96];
    let sig = signer.sign(&rng, signed).unwrap();
    [signed, sig.as_ref()].concat()
}

fn fwid() -> Vec<u8> {
    hex::decode(SAMPLE_FWID).unwrap()
}

#[test]
fn self_made_root_is_refused_unless_given_explicitly() {
    let made = make_chain(Some(fwid_extension(&fwid())), 2035);
    let forged = resign(&report(), &made.leaf_key);
    // Against the pinned root: refused, however well-formed the forgery.
    let o = verify(&forged, made.chain_pem.as_bytes(), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert!(message(&o, CcCheck::Chain).contains("does not lead to the pinned NVIDIA"));
    assert_eq!(o.verdict(), CcVerdict::Failed);
    // Its own root included in the chain changes nothing.
    let with_root = format!("{}{}", made.chain_pem, made.root_pem);
    let o = verify(&forged, with_root.as_bytes(), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);

    // Given explicitly, the custom root is used, and said so; then every check passes: the
    // signature check really uses the leaf's key (positive control).
    let input = CcInput::new(&forged, made.chain_pem.as_bytes(), nonce(), at())
        .with_root(made.root_pem.as_bytes());
    let o = verify_report(&input);
    assert_eq!(o.verdict(), CcVerdict::Attested, "{:#?}", o.findings);
    assert!(message(&o, CcCheck::Chain).contains("custom root given explicitly"));
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Passed);
    assert_eq!(severity(&o, CcCheck::Fwid), Severity::Passed);

    // The genuine report does not verify with the self-made leaf.
    let genuine = report();
    let input = CcInput::new(&genuine, made.chain_pem.as_bytes(), nonce(), at())
        .with_root(made.root_pem.as_bytes());
    let o = verify_report(&input);
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Passed);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Failed);

    // The NVIDIA chain does not verify against a custom root.
    let input = CcInput::new(&genuine, CHAIN_PEM.as_bytes(), nonce(), at())
        .with_root(made.root_pem.as_bytes());
    let o = verify_report(&input);
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
}

#[test]
fn impostor_claiming_nvidias_root_as_issuer_fails_its_signature() {
    // A self-made intermediate whose issuer name is exactly NVIDIA's root's: the names
    // chain, only the signature can tell.
    let fake_root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut fake_root = CertificateParams::new(Vec::<String>::new()).unwrap();
    fake_root
        .distinguished_name
        .push(DnType::CommonName, "NVIDIA Device Identity CA");
    fake_root
        .distinguished_name
        .push(DnType::OrganizationName, "NVIDIA");
    let ica_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut ica = CertificateParams::new(Vec::<String>::new()).unwrap();
    ica.distinguished_name = dn("NVIDIA GH100 Identity");
    ica.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ica.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ica_cert = ica
        .signed_by(&ica_key, &Issuer::from_params(&fake_root, &fake_root_key))
        .unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
    leaf.distinguished_name = dn("GH100 A01 GSP FMC LF");
    leaf.custom_extensions.push(fwid_extension(&fwid()));
    let leaf_cert = leaf
        .signed_by(&leaf_key, &Issuer::from_params(&ica, &ica_key))
        .unwrap();
    let chain = format!("{}{}", leaf_cert.pem(), ica_cert.pem());
    let forged = resign(&report(), &leaf_key);
    let o = verify(&forged, chain.as_bytes(), nonce(), at());
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    let msg = message(&o, CcCheck::Chain);
    assert!(
        msg.contains("the signature on certificate 2 of 2 (CN=NVIDIA GH100 Identity) does not verify with the key of the pinned NVIDIA device identity root"),
        "{msg}"
    );
    // Everything else about the forgery is consistent, so only the chain fails.
    assert_eq!(o.problems().count(), 1, "{:#?}", o.findings);
}

#[test]
fn issuers_must_be_certificate_authorities() {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut root = CertificateParams::new(Vec::<String>::new()).unwrap();
    root.distinguished_name = dn("Test Root");
    root.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    root.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let chain_through = |root: &CertificateParams, mid: &CertificateParams, mid_key: &KeyPair| {
        let root_pem = root.self_signed(&root_key).unwrap().pem();
        let mid_cert = mid
            .signed_by(mid_key, &Issuer::from_params(root, &root_key))
            .unwrap();
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut leaf = CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf.distinguished_name = dn("Leaf");
        let leaf_cert = leaf
            .signed_by(&leaf_key, &Issuer::from_params(mid, mid_key))
            .unwrap();
        let chain = format!("{}{}", leaf_cert.pem(), mid_cert.pem());
        let genuine = report();
        let input =
            CcInput::new(&genuine, chain.as_bytes(), nonce(), at()).with_root(root_pem.as_bytes());
        message(&verify_report(&input), CcCheck::Chain)
    };
    let mid_key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let mut mid = CertificateParams::new(Vec::<String>::new()).unwrap();
    mid.distinguished_name = dn("Middle");
    mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    assert!(chain_through(&root, &mid, &mid_key).contains("2 certificates, each signed"));
    mid.is_ca = IsCa::NoCa;
    let msg = chain_through(&root, &mid, &mid_key);
    assert!(
        msg.contains("(CN=Middle) issues certificate 1 of 2 (CN=Leaf) but is not a CA"),
        "{msg}"
    );
    mid.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    mid.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    let msg = chain_through(&root, &mid, &mid_key);
    assert!(
        msg.contains("(CN=Middle) may not sign certificates"),
        "{msg}"
    );
    // pathLenConstraint: 0 on the middle certificate allows the leaf below it; 0 on the
    // root does not allow the middle CA below it.
    mid.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    mid.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    assert!(chain_through(&root, &mid, &mid_key).contains("each signed"));
    root.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    let msg = chain_through(&root, &mid, &mid_key);
    assert!(
        msg.contains("allows 0 CA certificates below it, the chain has 1"),
        "{msg}"
    );
}

#[test]
fn custom_root_must_be_one_certificate() {
    let made = make_chain(None, 2035);
    let two = format!("{}{}", made.root_pem, made.root_pem);
    let genuine = report();
    let input =
        CcInput::new(&genuine, made.chain_pem.as_bytes(), nonce(), at()).with_root(two.as_bytes());
    let o = verify_report(&input);
    assert_eq!(severity(&o, CcCheck::Chain), Severity::Failed);
    assert!(message(&o, CcCheck::Chain).contains("expected exactly one"));
}

#[test]
fn expired_certificate_fails_validity() {
    let made = make_chain(Some(fwid_extension(&fwid())), 2030);
    let forged = resign(&report(), &made.leaf_key);
    let judge = |t: &str| {
        let input = CcInput::new(
            &forged,
            made.chain_pem.as_bytes(),
            nonce(),
            t.parse().unwrap(),
        )
        .with_root(made.root_pem.as_bytes());
        verify_report(&input)
    };
    let o = judge("2029-12-31T00:00:00Z");
    assert_eq!(o.verdict(), CcVerdict::Attested, "{:#?}", o.findings);
    let o = judge("2030-01-02T00:00:00Z");
    assert_eq!(severity(&o, CcCheck::Validity), Severity::Failed);
    let msg = message(&o, CcCheck::Validity);
    assert!(
        msg.contains(
            "certificate 1 of 1 (CN=Self-made GSP FMC LF) expired at 2030-01-01T00:00:00Z"
        ),
        "{msg}"
    );
    assert_eq!(o.verdict(), CcVerdict::Failed);
    // The root's validity counts too.
    let o = judge("2041-01-01T00:00:00Z");
    assert!(
        message(&o, CcCheck::Validity).contains("the custom root"),
        "{:#?}",
        o.findings
    );
}

#[test]
fn fwid_mismatch_and_absence_are_reported() {
    // Leaf FWID differs from the report's: fails although the signature verifies.
    let mut other = fwid();
    other[0] ^= 0xFF;
    let made = make_chain(Some(fwid_extension(&other)), 2035);
    let forged = resign(&report(), &made.leaf_key);
    let run = |made: &MadeChain, r: &[u8]| {
        verify_report(
            &CcInput::new(r, made.chain_pem.as_bytes(), nonce(), at())
                .with_root(made.root_pem.as_bytes()),
        )
    };
    let o = run(&made, &forged);
    assert_eq!(severity(&o, CcCheck::Signature), Severity::Passed);
    assert_eq!(severity(&o, CcCheck::Fwid), Severity::Failed);
    let msg = message(&o, CcCheck::Fwid);
    assert!(
        msg.contains(SAMPLE_FWID) && msg.contains(&hex::encode(&other)),
        "{msg}"
    );
    assert_eq!(o.verdict(), CcVerdict::Failed);

    // Leaf without the extension while the report carries an FWID: fails.
    let made = make_chain(None, 2035);
    let o = run(&made, &resign(&report(), &made.leaf_key));
    assert_eq!(severity(&o, CcCheck::Fwid), Severity::Failed);
    assert!(message(&o, CcCheck::Fwid).contains("no TCG DICE FWID extension"));

    // The DiceTcbInfo encoding of the extension is read as well.
    let made = make_chain(Some(dice_tcb_info_extension(&fwid())), 2035);
    let o = run(&made, &resign(&report(), &made.leaf_key));
    assert_eq!(
        severity(&o, CcCheck::Fwid),
        Severity::Passed,
        "{:#?}",
        o.findings
    );

    // A report without FWID (older drivers): a note, not a pass and not a failure.
    let made = make_chain(Some(fwid_extension(&fwid())), 2035);
    let without = resign(&strip_fwid(&report()), &made.leaf_key);
    assert!(parse_report(&without).unwrap().fwid().is_none());
    let o = run(&made, &without);
    assert_eq!(severity(&o, CcCheck::Fwid), Severity::Note);
    assert!(message(&o, CcCheck::Fwid).contains("report carries no FWID"));
    assert_eq!(o.verdict(), CcVerdict::Attested);
}

/// The sample with opaque field 20 (FWID) removed and OpaqueLength adjusted (unsigned:
/// the caller re-signs).
fn strip_fwid(r: &[u8]) -> Vec<u8> {
    let ol = opaque_len_at(r);
    let len = usize::from(u16::from_le_bytes([r[ol], r[ol + 1]]));
    let opaque = &r[ol + 2..ol + 2 + len];
    let mut kept = Vec::new();
    let mut i = 0;
    while i < opaque.len() {
        let id = u16::from_le_bytes([opaque[i], opaque[i + 1]]);
        let size = usize::from(u16::from_le_bytes([opaque[i + 2], opaque[i + 3]]));
        if id != 20 {
            kept.extend_from_slice(&opaque[i..i + 4 + size]);
        }
        i += 4 + size;
    }
    assert_eq!(kept.len(), len - 52);
    let mut out = r[..ol].to_vec();
    out.extend_from_slice(&(kept.len() as u16).to_le_bytes());
    out.extend_from_slice(&kept);
    out.extend_from_slice(&r[r.len() - 96..]);
    out
}

// ---------------------------------------------------------------------------------------
// Robustness.

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut r = base.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 => {
                let i = rng.below(r.len());
                if let Some(b) = r.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(r.len());
                if let Some(b) = r.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            2 => r.truncate(rng.below(r.len() + 1)),
            3 => {
                let i = rng.below(r.len() + 1);
                let extra: Vec<u8> = (0..rng.below(64)).map(|_| rng.next() as u8).collect();
                r.splice(i..i, extra);
            }
            4 => {
                // Length fields: block count, record length, a block size, opaque length.
                let fields = [
                    RESP + 4,
                    RESP + 5,
                    RESP + 7,
                    RECORD + 2,
                    RECORD + 5,
                    opaque_len_at(base),
                    opaque_len_at(base) + 1,
                ];
                let i = fields[rng.below(fields.len())];
                if let Some(b) = r.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            _ => {
                let i = rng.below(r.len());
                let n = rng.below(r.len() - i + 1);
                r.drain(i..i + n);
            }
        }
    }
    r
}

#[test]
fn random_mutations_never_panic() {
    let base = report();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let mut rejected = 0;
    for _ in 0..20_000 {
        let r = mutate(&mut rng, &base);
        if let Err(e) = parse_report(&r) {
            rejected += 1;
            assert!(!e.to_string().is_empty());
        }
    }
    assert!(
        rejected > 1_000,
        "mutations should mostly break the format: {rejected}"
    );
    // The whole verification (chain included) on fewer mutants, and on mutated chains.
    let chain = CHAIN_PEM.as_bytes();
    for i in 0..150 {
        let r = mutate(&mut rng, &base);
        let o = verify(&r, chain, nonce(), at());
        if r != base {
            assert_ne!(o.verdict(), CcVerdict::Attested, "mutant {i} attested");
        }
        let c = mutate(&mut rng, chain);
        let o = verify(&base, &c, nonce(), at());
        assert!(!o.findings.is_empty());
        // Hex decoding of mutated text never panics either.
        let _ = decode_report(&mutate(&mut rng, REPORT_HEX.as_bytes()));
    }
}
