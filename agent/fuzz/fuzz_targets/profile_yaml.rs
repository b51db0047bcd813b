//! Arbitrary bytes → the simulated backend's profile parser (`SimulatedBackend::parse`, what
//! `--backend simulated:<file>` runs on a profile file's text); a profile that parses is
//! probed (`backend::collect`) as the agent would.
//!
//! Invariants: never panics; errors name the profile; a parsed profile has 1 to 64 GPUs,
//! numbered in order, and its evidence serialises to JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotabots_agent::backend::{GpuBackend, ProbeRequest, collect};
use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::NonceOrigin;

fuzz_target!(|data: &[u8]| {
    // Profile files are read with `read_to_string`: not UTF-8 never reaches the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let backend = match SimulatedBackend::parse(text, "fuzz.yaml") {
        Ok(b) => b,
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("fuzz.yaml"),
                "error does not name the profile: {msg}"
            );
            return;
        }
    };
    let _ = backend.profile_name();
    let backend = backend.with_identity_seed("node-1");
    let count = backend.gpu_count().expect("simulated GPUs are counted");
    assert!((1..=64).contains(&count), "{count} GPUs");
    let req = ProbeRequest {
        nonce: [7; 32],
        nonce_origin: NonceOrigin::Verifier,
        node_name: "node-1".into(),
    };
    let evidence = collect(&backend, &req).expect("a parsed profile probes");
    assert_eq!(evidence.gpus.len(), count as usize);
    for (i, g) in evidence.gpus.iter().enumerate() {
        assert_eq!(g.index as usize, i, "GPUs out of order");
    }
    let _ = serde_json::to_vec(&evidence).expect("the evidence serialises");
});
