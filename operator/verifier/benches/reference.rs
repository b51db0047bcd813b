//! What a reference bundle costs: loading one (two RIMs' XML signatures, OCSP parsing), and
//! verifying NVIDIA's recorded Hopper report with and without one (the bundle: test RIMs for
//! the report's own measurements, one OCSP response for their signer; NVIDIA's device
//! certificates without responses, a note by the bundle's policy).
//!
//! `cargo bench -p lotabots-verifier --bench reference`

#[path = "../tests/ocsp_support/mod.rs"]
mod ocsp_support;
#[path = "../tests/support/mod.rs"]
mod support;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use jiff::Timestamp;
use lotabots_verifier::cc::{BundleOptions, CcInput, CcVerdict, ReferenceBundle, verify_report};
use ocsp_support::{Ocsp, good, ocsp_response};

fn bench(c: &mut Criterion) {
    let pki = support::pki(2030);
    let ocsp = ocsp_response(&Ocsp {
        cert: &pki.signer_der,
        issuer: &pki.root_der,
        signer: &pki.root_key,
        status: good(),
        this_update: "2025-05-31T00:00:00Z",
        next_update: Some("2025-06-07T00:00:00Z"),
        responder: None,
    });
    let json = support::bundle_json(
        &support::sample_rims(&pki, |_, _| {}),
        &[ocsp],
        "note",
        Some(&pki.root_pem),
    );
    let options = BundleOptions {
        allow_rim_root_override: true,
    };
    let bundle = ReferenceBundle::from_json(&json, options).unwrap();
    let report = support::report();
    let nonce: [u8; 32] = hex::decode(support::SAMPLE_NONCE)
        .unwrap()
        .try_into()
        .unwrap();
    let at: Timestamp = "2025-06-01T00:00:00Z".parse().unwrap();
    let chain = support::CHAIN_PEM.as_bytes();
    let with = CcInput::new(&report, chain, &nonce, at).with_reference_bundle(&bundle);
    assert_eq!(verify_report(&with).verdict(), CcVerdict::Attested);

    let mut g = c.benchmark_group("reference_bundle");
    g.bench_function("load (2 RIMs, 1 OCSP response)", |b| {
        b.iter(|| ReferenceBundle::from_json(black_box(&json), options).unwrap())
    });
    g.bench_function("verify_report without bundle", |b| {
        b.iter(|| verify_report(black_box(&CcInput::new(&report, chain, &nonce, at))))
    });
    g.bench_function("verify_report with bundle", |b| {
        b.iter(|| verify_report(black_box(&with)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
