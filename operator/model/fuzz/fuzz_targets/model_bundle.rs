//! Arbitrary bytes → `Bundle::from_json` → `verify` against the seed's P-256 key and
//! against a trusted CA (the seed chain's), at a fixed time.
//!
//! Invariants: never panics; verification is deterministic; a bundle accepted under the
//! key or the CA carries one of the seeds' exact payloads (nothing else was signed by that
//! key, so anything else accepted would be a forgery).
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use lotabots_model::bundle::{Bundle, Trust};
use lotabots_model::chain::certificates_from_pem;
use lotabots_model::keys::PublicKey;

static KEY: LazyLock<Trust> = LazyLock::new(|| {
    Trust::PublicKey(PublicKey::from_pem(include_str!("../seeds/key.pub")).expect("seed key"))
});
static CA: LazyLock<Trust> = LazyLock::new(|| Trust::CertificateAuthorities {
    anchors: certificates_from_pem(include_bytes!("../seeds/ca.pem")).expect("seed CA"),
    // Inside the seed certificates' validity (issued 2026-11-29 for ten years).
    at: "2027-06-01T00:00:00Z".parse().unwrap(),
});
static SIGNED: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let seed = |json: &[u8], trust: &Trust| {
        Bundle::from_json(json)
            .expect("seed bundle")
            .verify_payload(trust)
            .expect("seed verifies")
            .0
    };
    vec![
        seed(include_bytes!("../seeds/model_bundle/key.sig"), &KEY),
        seed(include_bytes!("../seeds/model_bundle/cert.sig"), &CA),
    ]
});

fuzz_target!(|data: &[u8]| {
    let Ok(bundle) = Bundle::from_json(data) else {
        return;
    };
    for trust in [&*KEY, &*CA] {
        let run = || {
            bundle
                .verify(trust)
                .map(|(m, s)| (m, s.identity))
                .map_err(|e| e.to_string())
        };
        assert_eq!(run(), run(), "verification is not deterministic");
    }
    for trust in [&*KEY, &*CA] {
        if let Ok((payload, _)) = bundle.verify_payload(trust) {
            assert!(
                SIGNED.contains(&payload),
                "a payload the key never signed was accepted"
            );
        }
    }
});
