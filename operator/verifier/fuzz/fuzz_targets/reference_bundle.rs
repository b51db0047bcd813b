//! Arbitrary bytes → the reference-bundle parsers: `{…` as a bundle document
//! (`ReferenceBundle::from_json`), `<…` as a RIM (`rim::parse_rim`, which canonicalizes and
//! checks the XML signature), anything else as a DER OCSP response (`ocsp::parse_ocsp`). A
//! bundle that loads goes on to `verify_report` with NVIDIA's recorded Hopper report.
//!
//! Invariants: never panics; parsing is deterministic; every error and every finding has a
//! message; a RIM whose signature verifies yields measurements and a signing chain.
#![no_main]

use std::sync::LazyLock;

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use lotabots_verifier::cc::rim::{RimKind, parse_rim};
use lotabots_verifier::cc::{
    BundleOptions, CcInput, ReferenceBundle, decode_report, ocsp, verify_report,
};

const REPORT_HEX: &str = include_str!("../../tests/fixtures/hopper/hopperAttestationReport.txt");
const CHAIN_PEM: &str = include_str!("../../tests/fixtures/hopper/hopperCertChain.txt");
const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

static REPORT: LazyLock<Vec<u8>> =
    LazyLock::new(|| decode_report(REPORT_HEX.as_bytes()).expect("the sample decodes"));
static NONCE: LazyLock<[u8; 32]> =
    LazyLock::new(|| hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap());
static AT: LazyLock<Timestamp> = LazyLock::new(|| "2025-06-01T00:00:00Z".parse().unwrap());

fuzz_target!(|data: &[u8]| {
    match data.first() {
        Some(b'{') => {
            let options = BundleOptions {
                allow_rim_root_override: true,
            };
            match ReferenceBundle::from_json(data, options) {
                Err(e) => {
                    assert!(!e.field.is_empty() && !e.problem.is_empty());
                    let again = ReferenceBundle::from_json(data, options).unwrap_err();
                    assert_eq!(e, again, "bundle errors are not deterministic");
                }
                Ok(bundle) => {
                    let input = CcInput::new(&REPORT, CHAIN_PEM.as_bytes(), &NONCE, *AT)
                        .with_reference_bundle(&bundle);
                    let outcome = verify_report(&input);
                    assert!(outcome.findings.iter().all(|f| !f.message.is_empty()));
                }
            }
        }
        Some(b'<') => {
            let Ok(xml) = std::str::from_utf8(data) else {
                return;
            };
            let first = parse_rim(xml, RimKind::Vbios);
            let second = parse_rim(xml, RimKind::Vbios);
            match (first, second) {
                (Err(a), Err(b)) => {
                    assert!(!a.is_empty());
                    assert_eq!(a, b, "RIM errors are not deterministic");
                }
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.measurements, b.measurements);
                    assert_eq!(a.signature, b.signature);
                    assert!(!a.measurements.is_empty());
                    match &a.signature {
                        Ok(sig) => assert!(!sig.chain.is_empty() && !sig.summary.is_empty()),
                        Err(e) => assert!(!e.to_string().is_empty()),
                    }
                }
                _ => panic!("RIM parsing is not deterministic"),
            }
        }
        _ => {
            if let Err(e) = ocsp::parse_ocsp(data) {
                assert!(!e.is_empty());
            }
        }
    }
});
