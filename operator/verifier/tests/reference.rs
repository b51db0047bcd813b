//! The reference bundle: NVIDIA's real RIMs (tests/fixtures/rim, source in its README) for
//! the XML signature and the pinned RIM root, and RIMs and OCSP responses the tests make
//! themselves, signed by a test CA given as an explicit RIM root override, for the
//! recorded Hopper report's own measurements. Each test changes one thing and asserts the
//! finding it must produce.

mod ocsp_support;
mod support;

use der::asn1::Null;
use jiff::Timestamp;
use lotabots_verifier::cc::reference::rim_chain;
use lotabots_verifier::cc::rim::{RimKind, parse_rim};
use lotabots_verifier::cc::xmldsig::SignatureError;
use lotabots_verifier::cc::{
    BundleOptions, CcCheck, CcInput, CcOutcome, CcVerdict, NVIDIA_RIM_ROOT_PEM, ReferenceBundle,
    Severity, verify_report,
};
use ocsp_support::{Ocsp, good, gt, ocsp_response};
use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, Issuer, KeyPair, PKCS_ECDSA_P384_SHA384};
use support::{
    CHAIN_PEM, Pki, SAMPLE_NONCE, bundle_json, dn, pki, report, sample_measurements, sample_rims,
};
use x509_ocsp::{CertStatus, RevokedInfo};

const VBIOS_RIM: &str = include_str!("fixtures/rim/1010_0200_882_96005E0001_PROD.swidtag");
const DRIVER_RIM: &str = include_str!("fixtures/rim/Driver_RIM_test_no_gpu.swidtag");
const RIM_ROOT_PEM: &str = include_str!("fixtures/rim/verifier_RIM_root.pem");

fn at() -> Timestamp {
    "2025-06-01T00:00:00Z".parse().unwrap()
}

fn nonce() -> [u8; 32] {
    hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap()
}

fn severity(o: &CcOutcome, check: CcCheck) -> Severity {
    o.of(check)
        .map(|f| f.severity)
        .max()
        .unwrap_or_else(|| panic!("no finding for {check:?}: {:#?}", o.findings))
}

fn message(o: &CcOutcome, check: CcCheck) -> String {
    o.of(check)
        .map(|f| f.message.as_str())
        .collect::<Vec<_>>()
        .join(" | ")
}

fn load(json: &[u8]) -> ReferenceBundle {
    ReferenceBundle::from_json(
        json,
        BundleOptions {
            allow_rim_root_override: true,
        },
    )
    .unwrap()
}

fn verify(bundle: &ReferenceBundle) -> CcOutcome {
    let report = report();
    let nonce = nonce();
    verify_report(
        &CcInput::new(&report, CHAIN_PEM.as_bytes(), &nonce, at()).with_reference_bundle(bundle),
    )
}

/// The bundle for the sample with the test PKI: RIMs as `edit` leaves them, an OCSP
/// response for the RIM signer, the device chain's responses missing (policy `note`).
fn sample_bundle(
    pki: &Pki,
    ocsp: &[Vec<u8>],
    edit: impl Fn(RimKind, &mut support::Measurements),
) -> ReferenceBundle {
    load(&bundle_json(
        &sample_rims(pki, edit),
        ocsp,
        "note",
        Some(&pki.root_pem),
    ))
}

fn signer_ocsp(pki: &Pki, status: CertStatus) -> Vec<u8> {
    ocsp_response(&Ocsp {
        cert: &pki.signer_der,
        issuer: &pki.root_der,
        signer: &pki.root_key,
        status,
        this_update: "2025-05-31T00:00:00Z",
        next_update: Some("2025-06-07T00:00:00Z"),
        responder: None,
    })
}

// ---------------------------------------------------------------------------------------
// NVIDIA's real RIMs.

#[test]
fn pinned_rim_root_is_nvidias_published_root() {
    assert_eq!(NVIDIA_RIM_ROOT_PEM.trim(), RIM_ROOT_PEM.trim());
}

#[test]
fn nvidia_rims_signature_and_chain_verify_to_the_pinned_root() {
    for (xml, kind, version) in [
        (VBIOS_RIM, RimKind::Vbios, "96.00.5E.00.01"),
        (DRIVER_RIM, RimKind::Driver, "545.00"),
    ] {
        let rim = parse_rim(xml, kind).unwrap();
        assert_eq!(rim.version, version);
        assert_eq!(rim.measurements.len(), 64);
        let sig = rim.signature.as_ref().expect("NVIDIA's signature verifies");
        assert!(
            sig.summary.contains("CN=HCC RIM L4 Signer"),
            "{}",
            sig.summary
        );
        assert_eq!(sig.chain.len(), 4);
        let path = rim_chain(&rim, NVIDIA_RIM_ROOT_PEM.as_bytes(), "pinned", at()).unwrap();
        assert!(path.contains("NVIDIA CoRIM signing Root CA"), "{path}");
    }
    // Measurement values as published (index 12 has four alternatives).
    let rim = parse_rim(VBIOS_RIM, RimKind::Vbios).unwrap();
    assert_eq!(
        hex::encode(&rim.measurements[&3].alternatives[0]),
        "73bbf35822549e28ba8fb2671fb7b58f46424a0069205b3ecf1d0fa762adef90b538cc9d692eb5c050147f2f1e8214ab"
    );
    assert_eq!(rim.measurements[&12].alternatives.len(), 4);
    assert!(!rim.measurements[&7].active);
}

#[test]
fn nvidia_rim_signer_expired_after_june_2025() {
    let rim = parse_rim(VBIOS_RIM, RimKind::Vbios).unwrap();
    let later: Timestamp = "2025-07-01T00:00:00Z".parse().unwrap();
    let problems = rim_chain(&rim, NVIDIA_RIM_ROOT_PEM.as_bytes(), "pinned", later).unwrap_err();
    assert!(
        problems
            .iter()
            .any(|p| p.contains("CN=HCC RIM L4 Signer") && p.contains("expired at 2025-06-22")),
        "{problems:?}"
    );
}

#[test]
fn nvidia_rim_does_not_chain_to_another_root() {
    let rim = parse_rim(VBIOS_RIM, RimKind::Vbios).unwrap();
    let other = pki(2030);
    let problems = rim_chain(&rim, other.root_pem.as_bytes(), "test root", at()).unwrap_err();
    assert!(
        problems.iter().any(|p| p.contains("does not lead to")),
        "{problems:?}"
    );
}

#[test]
fn altered_nvidia_rim_fails_its_digest() {
    // One reference value changed: the document no longer matches the signed digest.
    let altered = VBIOS_RIM.replacen("73bbf358", "73bbf359", 1);
    let rim = parse_rim(&altered, RimKind::Vbios).unwrap();
    match rim.signature {
        Err(SignatureError::Mismatch(m)) => assert!(m.contains("altered after signing"), "{m}"),
        other => panic!("{other:?}"),
    }
    // An attribute added to SignedInfo: the digest still matches, the signature does not.
    let altered = VBIOS_RIM.replacen("<ds:SignedInfo>", "<ds:SignedInfo Id=\"x\">", 1);
    match parse_rim(&altered, RimKind::Vbios).unwrap().signature {
        Err(SignatureError::Mismatch(m)) => assert!(m.contains("ds:SignedInfo"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn signature_shapes_that_could_hide_content_are_refused() {
    let cases = [
        (
            VBIOS_RIM.replacen("<ds:Reference URI=\"\">", "<ds:Reference URI=\"#x\">", 1),
            "only URI=\"\"",
        ),
        (
            VBIOS_RIM.replacen(
                "<ds:Transform Algorithm=\"http://www.w3.org/2000/09/xmldsig#enveloped-signature\"/>",
                "",
                1,
            ),
            "enveloped-signature",
        ),
        (
            VBIOS_RIM.replacen(
                "</SoftwareIdentity>",
                "<ds:Signature xmlns:ds=\"http://www.w3.org/2000/09/xmldsig#\"/></SoftwareIdentity>",
                1,
            ),
            "exactly one",
        ),
    ];
    for (xml, expect) in cases {
        match parse_rim(&xml, RimKind::Vbios).unwrap().signature {
            Err(SignatureError::Structure(m)) => assert!(m.contains(expect), "{m}"),
            other => panic!("{expect}: {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// RIMs for the recorded report.

#[test]
fn matching_rims_attest_and_replace_the_note() {
    let pki = pki(2030);
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |_, _| {});
    let o = verify(&bundle);
    assert_eq!(o.verdict(), CcVerdict::Attested, "{:#?}", o.findings);
    for check in [
        CcCheck::RimVersion,
        CcCheck::RimSignature,
        CcCheck::RimChain,
        CcCheck::ReferenceValues,
    ] {
        assert_eq!(
            severity(&o, check),
            Severity::Passed,
            "{check:?}: {:#?}",
            o.findings
        );
    }
    assert!(!message(&o, CcCheck::ReferenceValues).contains("not checked"));
    assert!(
        message(&o, CcCheck::ReferenceValues).contains(
            "all 63 active reference measurements match the report (43 from the driver RIM \
             550.90.07 (tagId 5e1f0000aaaa…), 21 from the VBIOS RIM 96.00.9F.00.01 (tagId \
             5e1f0000aaaa…)); index 35 not compared: the report says NVDEC0 is disabled"
        ),
        "{}",
        message(&o, CcCheck::ReferenceValues)
    );
    assert!(message(&o, CcCheck::RimChain).contains("RIM root given explicitly"));
    // The RIM signer is good by OCSP; NVIDIA's device certificates have no response in
    // the bundle, which this bundle's policy makes a note.
    let revocation: Vec<_> = o.of(CcCheck::Revocation).collect();
    assert!(revocation.iter().any(|f| {
        f.severity == Severity::Passed
            && f.message
                .contains("CN=Test RIM Signer): good (OCSP by the issuer, CN=Test RIM Root CA")
    }));
    let missing: Vec<_> = revocation
        .iter()
        .filter(|f| f.severity == Severity::Note)
        .collect();
    assert_eq!(missing.len(), 3, "{revocation:#?}");
    assert!(missing[0].message.contains("CN=GH100 A01 GSP BROM"));
    // The checks run in the documented order.
    let order: Vec<CcCheck> = o.findings.iter().map(|f| f.check).collect();
    let pos = |c| order.iter().position(|x| *x == c).unwrap();
    assert!(pos(CcCheck::Fwid) < pos(CcCheck::RimVersion));
    assert!(pos(CcCheck::RimChain) < pos(CcCheck::ReferenceValues));
    assert!(pos(CcCheck::ReferenceValues) < pos(CcCheck::Revocation));
}

#[test]
fn missing_ocsp_fails_by_default() {
    let pki = pki(2030);
    let bundle = load(&bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[signer_ocsp(&pki, good())],
        "fail",
        Some(&pki.root_pem),
    ));
    let o = verify(&bundle);
    assert_eq!(o.verdict(), CcVerdict::Failed);
    assert!(message(&o, CcCheck::Revocation).contains("no OCSP response in the bundle for device certificate chain: certificate 2 of 5 (CN=GH100 A01 GSP BROM)"),
        "{}", message(&o, CcCheck::Revocation));
    // The default policy, when the bundle does not say.
    let mut doc: serde_json::Value = serde_json::from_slice(&bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[],
        "note",
        Some(&pki.root_pem),
    ))
    .unwrap();
    doc.as_object_mut().unwrap().remove("missingOcsp");
    let o = verify(&load(&serde_json::to_vec(&doc).unwrap()));
    assert_eq!(severity(&o, CcCheck::Revocation), Severity::Failed);
}

#[test]
fn measurement_mismatch_names_index_expected_and_found() {
    let pki = pki(2030);
    let wrong = "ab".repeat(48);
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |kind, ms| {
        if kind == RimKind::Vbios {
            ms[5].2 = vec![wrong.clone()];
        }
    });
    let o = verify(&bundle);
    assert_eq!(o.verdict(), CcVerdict::Failed);
    let found = &sample_measurements()[5].1;
    let m = message(&o, CcCheck::ReferenceValues);
    assert!(
        m.contains(
            "measurement index 5 (Measurement_5) does not match the VBIOS RIM 96.00.9F.00.01"
        ),
        "{m}"
    );
    assert!(
        m.contains(&format!("expected {wrong}, found {found}")),
        "{m}"
    );
    // Any alternative matches.
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |kind, ms| {
        if kind == RimKind::Vbios {
            let right = ms[5].2[0].clone();
            ms[5].2 = vec![wrong.clone(), right];
        }
    });
    assert_eq!(verify(&bundle).verdict(), CcVerdict::Attested);
}

#[test]
fn reference_measurement_missing_from_the_report_fails() {
    let pki = pki(2030);
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |kind, ms| {
        if kind == RimKind::Driver {
            ms.push((64, true, vec!["11".repeat(48)]));
        }
    });
    let o = verify(&bundle);
    assert_eq!(o.verdict(), CcVerdict::Failed);
    let m = message(&o, CcCheck::ReferenceValues);
    assert!(m.contains("measurement index 64 (Measurement_64)"), "{m}");
    assert!(m.contains("has no measurement block 65"), "{m}");
}

#[test]
fn report_block_not_described_by_any_rim_fails() {
    let pki = pki(2030);
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |_, ms| {
        ms.retain(|m| m.0 != 40);
    });
    let m = message(&verify(&bundle), CcCheck::ReferenceValues);
    assert!(m.contains("measurement block 41 (index 40"), "{m}");
}

#[test]
fn index_active_in_both_rims_fails() {
    let pki = pki(2030);
    let bundle = sample_bundle(&pki, &[signer_ocsp(&pki, good())], |kind, ms| {
        if kind == RimKind::Driver {
            ms[3].1 = true;
        }
    });
    let m = message(&verify(&bundle), CcCheck::ReferenceValues);
    assert!(m.contains("measurement index 3 is active in both"), "{m}");
}

#[test]
fn rim_for_another_driver_version_fails() {
    let pki = pki(2030);
    let rims: Vec<_> = sample_rims(&pki, |_, _| {})
        .into_iter()
        .map(|(k, x)| {
            (
                k,
                x.replace(
                    "colloquialVersion=\"550.90.07\"",
                    "colloquialVersion=\"545.00\"",
                ),
            )
        })
        .collect();
    let bundle = load(&bundle_json(&rims, &[], "note", Some(&pki.root_pem)));
    let o = verify(&bundle);
    assert_eq!(o.verdict(), CcVerdict::Failed);
    let m = message(&o, CcCheck::RimVersion);
    assert!(
        m.contains("no driver RIM for the report's driver version 550.90.07 in the reference bundle (it has driver RIMs for: 545.00)"),
        "{m}"
    );
    assert_eq!(severity(&o, CcCheck::ReferenceValues), Severity::Unknown);
}

#[test]
fn tampered_rim_fails_its_signature() {
    let pki = pki(2030);
    let mut rims = sample_rims(&pki, |_, _| {});
    rims[1].1 = rims[1].1.replacen(
        "index=\"7\" active=\"True\"",
        "index=\"7\" active=\"False\"",
        1,
    );
    let o = verify(&load(&bundle_json(&rims, &[], "note", Some(&pki.root_pem))));
    assert_eq!(o.verdict(), CcVerdict::Failed);
    assert!(message(&o, CcCheck::RimSignature).contains("VBIOS RIM 96.00.9F.00.01"));
    assert!(message(&o, CcCheck::RimSignature).contains("altered after signing"));
}

#[test]
fn test_rim_without_the_override_fails_the_pinned_root() {
    let pki = pki(2030);
    let o = verify(&load(&bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[],
        "note",
        None,
    )));
    assert_eq!(o.verdict(), CcVerdict::Failed);
    let m = message(&o, CcCheck::RimChain);
    assert!(m.contains("pinned NVIDIA RIM root"), "{m}");
    assert!(m.contains("does not lead to"), "{m}");
}

#[test]
fn expired_rim_signer_fails_the_chain() {
    let pki = pki(2025);
    let o = verify(&sample_bundle(&pki, &[], |_, _| {}));
    assert_eq!(o.verdict(), CcVerdict::Failed);
    assert!(
        message(&o, CcCheck::RimChain).contains("CN=Test RIM Signer) expired at 2025-01-01"),
        "{}",
        message(&o, CcCheck::RimChain)
    );
}

#[test]
fn override_is_refused_unless_allowed() {
    let pki = pki(2030);
    let json = bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[],
        "note",
        Some(&pki.root_pem),
    );
    let e = ReferenceBundle::from_json(&json, BundleOptions::default()).unwrap_err();
    assert_eq!(e.field, "rimRootOverride");
    assert!(e.problem.contains("--allow-rim-root-override"), "{e}");
}

// ---------------------------------------------------------------------------------------
// OCSP.

fn revocation_of(pki: &Pki, response: Vec<u8>) -> (Severity, String) {
    let o = verify(&sample_bundle(pki, &[response], |_, _| {}));
    let signer: Vec<_> = o
        .of(CcCheck::Revocation)
        .filter(|f| f.message.contains("Test RIM Signer"))
        .collect();
    assert_eq!(signer.len(), 1, "{:#?}", o.findings);
    (signer[0].severity, signer[0].message.clone())
}

#[test]
fn revoked_rim_signer_fails_naming_it() {
    let pki = pki(2030);
    let revoked = CertStatus::Revoked(RevokedInfo {
        revocation_time: gt("2025-05-01T00:00:00Z"),
        revocation_reason: Some(x509_cert::ext::pkix::CrlReason::KeyCompromise),
    });
    let (s, m) = revocation_of(&pki, signer_ocsp(&pki, revoked));
    assert_eq!(s, Severity::Failed);
    assert!(
        m.contains(
            "CN=Test RIM Signer) is REVOKED since 2025-05-01T00:00:00Z (reason: keyCompromise"
        ),
        "{m}"
    );
    let (s, m) = revocation_of(&pki, signer_ocsp(&pki, CertStatus::Unknown(Null)));
    assert_eq!(s, Severity::Failed);
    assert!(m.contains("status unknown"), "{m}");
}

#[test]
fn stale_or_future_ocsp_fails() {
    let pki = pki(2030);
    for (this, next, expect) in [
        (
            "2025-05-01T00:00:00Z",
            Some("2025-05-08T00:00:00Z"),
            "stale: nextUpdate 2025-05-08",
        ),
        (
            "2025-06-02T00:00:00Z",
            Some("2025-06-09T00:00:00Z"),
            "thisUpdate 2025-06-02T00:00:00Z lies after",
        ),
        ("2025-05-31T00:00:00Z", None, "no nextUpdate"),
    ] {
        let r = ocsp_response(&Ocsp {
            cert: &pki.signer_der,
            issuer: &pki.root_der,
            signer: &pki.root_key,
            status: good(),
            this_update: this,
            next_update: next,
            responder: None,
        });
        let (s, m) = revocation_of(&pki, r);
        assert_eq!(s, Severity::Failed, "{m}");
        assert!(m.contains(expect), "{expect}: {m}");
    }
}

#[test]
fn ocsp_for_another_serial_leaves_the_certificate_without_status() {
    let pki = pki(2030);
    let other = self::pki(2030);
    // A response about another certificate of another CA.
    let r = ocsp_response(&Ocsp {
        cert: &other.signer_der,
        issuer: &other.root_der,
        signer: &other.root_key,
        status: good(),
        this_update: "2025-05-31T00:00:00Z",
        next_update: Some("2025-06-07T00:00:00Z"),
        responder: None,
    });
    let (s, m) = revocation_of(&pki, r);
    assert_eq!(s, Severity::Note, "policy note: {m}");
    assert!(
        m.contains("no OCSP response in the bundle for driver RIM 550.90.07"),
        "{m}"
    );
}

#[test]
fn ocsp_signed_by_a_wrong_key_fails() {
    let pki = pki(2030);
    let stranger = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
    let r = ocsp_response(&Ocsp {
        cert: &pki.signer_der,
        issuer: &pki.root_der,
        signer: &stranger,
        status: good(),
        this_update: "2025-05-31T00:00:00Z",
        next_update: Some("2025-06-07T00:00:00Z"),
        responder: None,
    });
    let (s, m) = revocation_of(&pki, r);
    assert_eq!(s, Severity::Failed);
    assert!(
        m.contains("does not verify with the key of CN=Test RIM Root CA"),
        "{m}"
    );
}

#[test]
fn delegated_responder_needs_the_ocsp_signing_usage() {
    let pki = pki(2030);
    for (eku, ok) in [(true, true), (false, false)] {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = dn("Test OCSP Responder");
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        if eku {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::OcspSigning];
        }
        let responder = params
            .signed_by(&key, &Issuer::from_params(&pki.root_params, &pki.root_key))
            .unwrap();
        let r = ocsp_response(&Ocsp {
            cert: &pki.signer_der,
            issuer: &pki.root_der,
            signer: &key,
            status: good(),
            this_update: "2025-05-31T00:00:00Z",
            next_update: Some("2025-06-07T00:00:00Z"),
            responder: Some(responder.der()),
        });
        let (s, m) = revocation_of(&pki, r);
        if ok {
            assert_eq!(s, Severity::Passed, "{m}");
            assert!(
                m.contains("responder CN=Test OCSP Responder, delegated"),
                "{m}"
            );
        } else {
            assert_eq!(s, Severity::Failed, "{m}");
            assert!(m.contains("lacks the id-kp-OCSPSigning"), "{m}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Malformed bundles: the error names the field.

#[test]
fn malformed_bundles_name_the_field() {
    let pki = pki(2030);
    let good_json: serde_json::Value = serde_json::from_slice(&bundle_json(
        &sample_rims(&pki, |_, _| {}),
        &[signer_ocsp(&pki, good())],
        "note",
        None,
    ))
    .unwrap();
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str, &str)> = vec![
        (
            Box::new(|d| d["schemaVersion"] = "v0".into()),
            "schemaVersion",
            "not supported",
        ),
        (
            Box::new(|d| d["rims"][1]["swidtag"] = "<not xml".into()),
            "rims[1].swidtag",
            "not XML",
        ),
        (
            Box::new(|d| d["rims"][0]["swidtag"] = "<a/>".into()),
            "rims[0].swidtag",
            "not a SWID SoftwareIdentity",
        ),
        (
            Box::new(|d| d["rims"][0]["kind"] = "bios".into()),
            "rims[0].kind",
            "unknown variant",
        ),
        (
            Box::new(|d| d["ocspResponses"][0] = "!!".into()),
            "ocspResponses[0]",
            "not base64",
        ),
        (
            Box::new(|d| d["ocspResponses"][0] = "AAAA".into()),
            "ocspResponses[0]",
            "not a DER OCSPResponse",
        ),
        (
            Box::new(|d| d["missingOcsp"] = "maybe".into()),
            "missingOcsp",
            "unknown variant",
        ),
        (
            Box::new(|d| d["extra"] = 1.into()),
            "extra",
            "unknown field `extra`",
        ),
        (
            Box::new(|d| d[""] = 1.into()),
            "(document)",
            "unknown field ``",
        ),
        (
            Box::new(|d| d["rims"] = serde_json::json!([])),
            "rims",
            "empty",
        ),
        (
            Box::new(|d| {
                let x = d["rims"][0]["swidtag"].as_str().unwrap().replacen(
                    " index=\"3\"",
                    " index=\"x\"",
                    1,
                );
                d["rims"][0]["swidtag"] = x.into();
            }),
            "rims[0].swidtag",
            "Payload/Resource[4]: attribute index=\"x\" is not a number",
        ),
    ];
    for (edit, field, problem) in cases {
        let mut doc = good_json.clone();
        edit(&mut doc);
        let e = ReferenceBundle::from_json(
            &serde_json::to_vec(&doc).unwrap(),
            BundleOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.field, field, "{e}");
        assert!(e.problem.contains(problem), "{problem}: {e}");
    }
    let e = ReferenceBundle::from_json(b"{", BundleOptions::default()).unwrap_err();
    assert!(e.problem.contains("EOF"), "{e}");
}

#[test]
fn without_a_bundle_nothing_changes() {
    let report = report();
    let nonce = nonce();
    let o = verify_report(&CcInput::new(&report, CHAIN_PEM.as_bytes(), &nonce, at()));
    assert_eq!(o.verdict(), CcVerdict::Attested);
    assert!(o.of(CcCheck::RimVersion).next().is_none());
    assert!(
        message(&o, CcCheck::ReferenceValues)
            .contains("measurements not checked against reference values")
    );
    assert_eq!(severity(&o, CcCheck::Revocation), Severity::Note);
}
