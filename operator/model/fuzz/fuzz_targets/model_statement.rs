//! Arbitrary bytes → `statement::from_payload` (the signed in-toto statement of a model).
//!
//! Invariants: never panics; a statement that parses re-serializes (`to_payload`) to one
//! that parses to the same manifest, and its subject digest is the manifest's root digest.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lotabots_model::statement::{from_payload, to_payload};

fuzz_target!(|data: &[u8]| {
    let Ok(manifest) = from_payload(data) else {
        return;
    };
    let again = from_payload(&to_payload(&manifest)).expect("our own statement parses");
    assert_eq!(again, manifest, "the statement does not round-trip");
    assert_eq!(again.root_digest(), manifest.root_digest());
});
