//! `lotabots-operator token verify`: exit 0 for a valid token with verdict Attested, 1 for
//! an invalid token or another verdict (with the reason), 2 for an unusable JWKS.

use std::sync::Arc;
use std::time::Duration;

use assert_cmd::Command;
use clap::CommandFactory;
use jiff::Timestamp;
use lotabots_crds::gpu_attestation::Verdict;
use lotabots_operator::tokens::keys::{KeyRing, KeySet, SigningKey};
use lotabots_operator::tokens::{Statement, SubjectKind, TokenSigner};
use predicates::str::contains;
use tempfile::TempDir;

fn signer(ttl: Duration) -> TokenSigner {
    let ring = Arc::new(KeyRing::new(KeySet {
        current: Arc::new(SigningKey::generate(Timestamp::now()).unwrap()),
        previous: None,
    }));
    TokenSigner::new("https://lotabots-operator.test.svc", ttl, ring)
}

fn token(s: &TokenSigner, verdict: Verdict) -> String {
    s.issue(
        Statement {
            kind: SubjectKind::Node,
            subject: "gpu-0".into(),
            verdict,
            reasons: vec!["because".into()],
            gpus: vec!["GPU-0".into()],
            evidence_digest: Some("sha256:aa".into()),
            attestations: vec!["h100".into()],
        },
        None,
        None,
        Timestamp::now(),
    )
    .unwrap()
    .token
}

fn jwks_file(dir: &TempDir, s: &TokenSigner) -> String {
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, serde_json::to_vec(&s.jwks()).unwrap()).unwrap();
    path.display().to_string()
}

fn verify(token: &str, jwks: &str) -> Command {
    let mut cmd = Command::cargo_bin("lotabots-operator").unwrap();
    cmd.args([
        "token",
        "verify",
        token,
        "--jwks",
        jwks,
        "--leeway-seconds",
        "0",
    ]);
    cmd
}

#[test]
fn the_command_line_is_consistent() {
    lotabots_operator::cli::Cli::command().debug_assert();
}

#[test]
fn a_valid_attested_token_exits_0_and_another_verdict_1() {
    let dir = TempDir::new().unwrap();
    let s = signer(Duration::from_secs(300));
    let jwks = jwks_file(&dir, &s);
    verify(&token(&s, Verdict::Attested), &jwks)
        .arg("--issuer")
        .arg("https://lotabots-operator.test.svc")
        .assert()
        .code(0)
        .stdout(contains("VERDICT   Attested"))
        .stdout(contains("GPU       GPU-0"));
    verify(&token(&s, Verdict::Failed), &jwks)
        .assert()
        .code(1)
        .stdout(contains("VERDICT   Failed"));
    verify(&token(&s, Verdict::Attested), &jwks)
        .args(["--format", "json"])
        .assert()
        .code(0)
        .stdout(contains("\"valid\": true"));
}

#[test]
fn an_invalid_token_exits_1_with_the_reason() {
    let dir = TempDir::new().unwrap();
    let s = signer(Duration::from_secs(1));
    let jwks = jwks_file(&dir, &s);
    let good = token(&s, Verdict::Attested);
    // Another key's JWKS: the kid is unknown.
    let other_dir = TempDir::new().unwrap();
    let other = jwks_file(&other_dir, &signer(Duration::from_secs(60)));
    verify(&good, &other)
        .assert()
        .code(1)
        .stdout(contains("unknown signing key"));
    // A changed payload: the signature no longer holds.
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    parts[1] = parts[1].replacen('e', "f", 1);
    verify(&parts.join("."), &jwks)
        .assert()
        .code(1)
        .stdout(contains("invalid"));
    verify(&good, &jwks)
        .args(["--issuer", "https://someone-else"])
        .assert()
        .code(1)
        .stdout(contains("issuer"));
    std::thread::sleep(Duration::from_millis(2100));
    verify(&good, &jwks)
        .assert()
        .code(1)
        .stdout(contains("expired"));
}

#[test]
fn an_unusable_jwks_exits_2_naming_it() {
    let dir = TempDir::new().unwrap();
    let s = signer(Duration::from_secs(60));
    let t = token(&s, Verdict::Attested);
    verify(&t, "/nonexistent/jwks.json")
        .assert()
        .code(2)
        .stderr(contains("/nonexistent/jwks.json: cannot read"));
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, "{\"nokeys\": 1}").unwrap();
    verify(&t, &bad.display().to_string())
        .assert()
        .code(2)
        .stderr(contains("no \"keys\" array"));
    Command::cargo_bin("lotabots-operator")
        .unwrap()
        .args(["token", "verify"])
        .assert()
        .code(2);
}
