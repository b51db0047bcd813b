//! Arbitrary bytes → `cc::decode_report` and `cc::parse_report`; reports that parse go on to
//! `cc::verify_report` with NVIDIA's recorded Hopper certificate chain
//! (tests/fixtures/hopper) and the nonce the sample was made with.
//!
//! Invariants: never panics; parsing is deterministic and what parses is what `decode_report`
//! passes through; a report is `Attested` only when its bytes are exactly the recorded
//! sample's (every other report fails the nonce, the signature or the parse).
#![no_main]

use std::sync::LazyLock;

use jiff::Timestamp;
use libfuzzer_sys::fuzz_target;
use lotabots_verifier::cc::{
    CcCheck, CcInput, CcVerdict, decode_report, parse_report, verify_report,
};

const REPORT_HEX: &str = include_str!("../../tests/fixtures/hopper/hopperAttestationReport.txt");
const CHAIN_PEM: &str = include_str!("../../tests/fixtures/hopper/hopperCertChain.txt");
/// The nonce the sample was made with (see the fixture README).
const SAMPLE_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

static ORIGINAL: LazyLock<Vec<u8>> =
    LazyLock::new(|| decode_report(REPORT_HEX.as_bytes()).expect("the sample decodes"));
static NONCE: LazyLock<[u8; 32]> =
    LazyLock::new(|| hex::decode(SAMPLE_NONCE).unwrap().try_into().unwrap());
static AT: LazyLock<Timestamp> = LazyLock::new(|| "2025-06-01T00:00:00Z".parse().unwrap());

fuzz_target!(|data: &[u8]| {
    let raw = parse_report(data);
    if let Err(e) = &raw {
        let _ = e.to_string();
    }
    let report: Vec<u8> = match decode_report(data) {
        Ok(r) => {
            if data.first() == Some(&0x11) || raw.is_ok() {
                // A binary report is passed through unchanged.
                assert_eq!(r, data, "decode_report changed a binary report");
            }
            r
        }
        Err(e) => {
            assert!(!e.is_empty());
            assert!(raw.is_err(), "a report that parses does not decode: {e}");
            assert_ne!(data.first(), Some(&0x11), "binary refused: {e}");
            return;
        }
    };
    let parsed = parse_report(&report);
    assert_eq!(
        parsed.as_ref().ok(),
        parse_report(&report).as_ref().ok(),
        "parsing is not deterministic"
    );
    let Ok(parsed) = parsed else {
        return;
    };
    let _ = (
        parsed.fwid(),
        parsed.driver_version(),
        parsed.vbios_version(),
    );

    let outcome = verify_report(&CcInput::new(&report, CHAIN_PEM.as_bytes(), &NONCE, *AT));
    assert!(outcome.of(CcCheck::Parse).next().is_some());
    for f in &outcome.findings {
        assert!(!f.message.is_empty(), "finding without a message: {f:?}");
    }
    if outcome.verdict() == CcVerdict::Attested {
        assert!(
            report == *ORIGINAL,
            "a report other than the recorded sample was attested: {:#?}",
            outcome.findings
        );
    }
});
