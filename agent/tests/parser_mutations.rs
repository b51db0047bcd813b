//! Bounded random mutation of the inputs the agent parses — profile files, evidence
//! documents, nonces: whatever the bytes, parsing returns a value or a clear error, never
//! a panic. (A fixed seed keeps failures reproducible; raise MUTATIONS to search longer.)

use lotabots_agent::simulated::SimulatedBackend;
use lotabots_crds::evidence::{NodeEvidence, parse_nonce};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const MUTATIONS: usize = 3_000;

fn mutate(rng: &mut StdRng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..rng.random_range(1..8) {
        if out.is_empty() {
            out.push(rng.random());
            continue;
        }
        let at = rng.random_range(0..out.len());
        match rng.random_range(0..5) {
            0 => out[at] = rng.random(),
            1 => {
                out.remove(at);
            }
            2 => {
                let syntax = b"{}[]:,-\n \"!&*<";
                out.insert(at, syntax[rng.random_range(0..syntax.len())]);
            }
            3 => out.truncate(at),
            _ => {
                // Duplicate a slice: repeated keys, deeper nesting.
                let end = (at + rng.random_range(1..64)).min(out.len());
                let chunk = out[at..end].to_vec();
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

#[test]
fn mutated_profiles_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x107ab07);
    let seeds = [
        include_str!("../profiles/h100-80gb-hbm3.yaml"),
        include_str!("../profiles/a100-80gb-mig.yaml"),
        include_str!("../profiles/faulty-node.yaml"),
    ];
    let mut rejected = 0;
    for i in 0..MUTATIONS {
        let input = mutate(&mut rng, seeds[i % seeds.len()].as_bytes());
        let text = String::from_utf8_lossy(&input);
        match SimulatedBackend::parse(&text, "mutant.yaml") {
            Ok(_) => {}
            Err(e) => {
                let msg = e.to_string();
                assert!(
                    msg.starts_with("invalid simulated profile mutant.yaml: "),
                    "{msg}"
                );
                rejected += 1;
            }
        }
    }
    assert!(
        rejected > MUTATIONS / 2,
        "mutations should mostly break profiles ({rejected})"
    );
}

#[test]
fn mutated_evidence_and_nonces_never_panic() {
    let mut rng = StdRng::seed_from_u64(0xe71de);
    let b = SimulatedBackend::load("a100-80gb-mig").unwrap();
    let e =
        lotabots_agent::backend::collect(&b, &lotabots_agent::backend::ProbeRequest::local("n"))
            .unwrap();
    let json = serde_json::to_vec(&e).unwrap();
    for _ in 0..MUTATIONS {
        let input = mutate(&mut rng, &json);
        if let Ok(parsed) = serde_json::from_slice::<NodeEvidence>(&input) {
            // Whatever parses has a digest.
            parsed.digest().unwrap();
        }
        let nonce = mutate(&mut rng, e.nonce.as_bytes());
        let _ = parse_nonce(&String::from_utf8_lossy(&nonce));
    }
}
