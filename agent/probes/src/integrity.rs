//! The model's files against the attested manifest digest, before anything is loaded.
//!
//! The operator attested a manifest (OpenSSF model-signing: one digest per file, and the
//! in-toto subject digest over them); the pod is told that subject digest. Here the model
//! directory is hashed with `lotabots-model` exactly as `attest-model` hashes it, and its
//! subject digest must equal the attested one. When a signed manifest is at hand (the
//! Sigstore bundle `model.sig` inside the model, or a bundle or bare in-toto statement
//! given explicitly) and it describes the attested digest, its per-file digests say
//! which file differs; without one only the two digests can be named.
//!
//! The signature itself is not verified again: the operator did that. A signed manifest is
//! trusted here only because its resource digests hash to the attested subject digest,
//! which nobody can arrange for other digests.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use lotabots_model::bundle::Bundle;
use lotabots_model::hash_as_signed;
use lotabots_model::hashing::{HashError, HashOptions};
use lotabots_model::manifest::{FileProblem, Manifest, Serialization};
use lotabots_model::source::LocalSource;
use lotabots_model::statement;

/// Where a signed manifest is looked for when none is named: model_signing's default.
pub const DEFAULT_SIGNATURE_NAME: &str = lotabots_model::attest::DEFAULT_SIGNATURE_NAME;

/// What the model's files must match.
#[derive(Debug, Clone)]
pub struct Expectation {
    /// The attested manifest (subject) digest, `sha256:<64 lowercase hex>`.
    pub manifest_digest: String,
    /// How the manifest was computed when no signed manifest says so (the
    /// ModelAttestation's `spec.integrity`: SHA-256 whole files by default).
    pub serialization: Serialization,
    /// A signed manifest (Sigstore bundle or bare in-toto statement) naming each file's
    /// digest; `None`: `model.sig` at the model's root when it is there.
    pub signed_manifest: Option<PathBuf>,
}

impl Expectation {
    /// Files hashed whole with SHA-256, `model.sig` used when present.
    pub fn new(manifest_digest: &str) -> Result<Self, String> {
        Ok(Self {
            manifest_digest: parse_manifest_digest(manifest_digest)?,
            serialization: Serialization::files(
                lotabots_crds::model_attestation::HashAlgorithm::Sha256,
            ),
            signed_manifest: None,
        })
    }
}

/// Normalises a manifest digest: `sha256:HEX` or bare `HEX` (as `spec.integrity.
/// expectedDigest` writes it), 64 hex digits, any case.
pub fn parse_manifest_digest(s: &str) -> Result<String, String> {
    parse_sha256_digest("manifest digest", s)
}

/// Normalises a SHA-256 digest, `sha256:HEX` or bare `HEX` (64 hex digits, any case), to
/// `sha256:` + lowercase hex; the error calls it `what`.
pub fn parse_sha256_digest(what: &str, s: &str) -> Result<String, String> {
    let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
    if hex_part.len() != 64 || !hex_part.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{what} {s:?} is not sha256:<64 hex digits>"));
    }
    Ok(format!("sha256:{}", hex_part.to_ascii_lowercase()))
}

/// Why the model was refused.
#[derive(Debug, thiserror::Error)]
pub enum IntegrityError {
    /// The files hash to another manifest.
    #[error("{}", describe_mismatch(.expected, .found, .files, .why_unnamed.as_deref()))]
    Mismatch {
        /// The attested digest.
        expected: String,
        /// The digest of the files as found.
        found: String,
        /// Each file that is missing, extra or modified (empty when no signed manifest
        /// could name them).
        files: Vec<FileProblem>,
        /// Why the files could not be named, when they are not.
        why_unnamed: Option<String>,
    },
    /// The model could not be hashed at all (missing, unreadable, a symbolic link, …).
    #[error("the model cannot be hashed: {0}")]
    Unhashable(#[from] HashError),
    /// The signed manifest named explicitly cannot be used.
    #[error("signed manifest {path}: {problem}")]
    SignedManifest {
        /// The file.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

fn describe_mismatch(
    expected: &str,
    found: &str,
    files: &[FileProblem],
    why_unnamed: Option<&str>,
) -> String {
    let mut s = format!(
        "the model's files do not match the attested manifest {expected} (they hash to {found})"
    );
    if files.is_empty() {
        if let Some(why) = why_unnamed {
            s.push_str(&format!("; which file differs is not known: {why}"));
        }
    } else {
        let each: Vec<String> = files.iter().map(ToString::to_string).collect();
        s.push_str(": ");
        s.push_str(&each.join("; "));
    }
    s
}

/// The model as verified: its manifest, equal to the attested one.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The manifest of the files as hashed (its digest is the attested digest).
    pub manifest: Manifest,
    /// The signature file left out of the manifest, when the model holds one.
    pub signature_name: Option<String>,
}

/// Largest signed manifest read (as `attest-model`).
const MAX_SIGNED_MANIFEST_BYTES: u64 = lotabots_model::attest::MAX_BUNDLE_BYTES;

/// Hashes the model at `model_dir` and checks it against `expected`.
pub fn verify(
    model_dir: &Path,
    expected: &Expectation,
    opts: &HashOptions,
) -> Result<Verified, IntegrityError> {
    let source = LocalSource::new(model_dir).map_err(HashError::from)?;
    let (signed_path, explicit) = match &expected.signed_manifest {
        Some(p) => (Some(p.clone()), true),
        None => {
            let default = model_dir.join(DEFAULT_SIGNATURE_NAME);
            (default.is_file().then_some(default), false)
        }
    };
    // The signed manifest, when there is one and it describes the attested digest.
    let mut why_unnamed = Some(format!(
        "no signed manifest ({DEFAULT_SIGNATURE_NAME} in the model, or --signed-manifest) lists the files"
    ));
    let mut signed: Option<(Manifest, Option<String>)> = None;
    if let Some(path) = &signed_path {
        let problem = |p: String| IntegrityError::SignedManifest {
            path: path.display().to_string(),
            problem: p,
        };
        match read_signed_manifest(path) {
            Ok(m) if m.digest_string() == expected.manifest_digest => {
                signed = Some((m, source.relative_name(path)));
            }
            Ok(m) if explicit => {
                return Err(problem(format!(
                    "describes the manifest {}, not the attested {}",
                    m.digest_string(),
                    expected.manifest_digest
                )));
            }
            Err(e) if explicit => return Err(problem(e)),
            // A model.sig that does not describe the attested manifest may belong to an
            // unsigned attestation that hashed it as a file: hash plainly instead.
            Ok(m) => {
                why_unnamed = Some(format!(
                    "{} describes another manifest ({})",
                    path.display(),
                    m.digest_string()
                ));
            }
            Err(e) => why_unnamed = Some(format!("{}: {e}", path.display())),
        }
    }
    let (found, files, signature_name) = match &signed {
        Some((signed, signature_name)) => {
            let found = hash_as_signed(
                &source,
                &signed.serialization,
                signature_name.as_deref(),
                Some(signed),
                opts,
            )?;
            let files = found.diff(signed);
            (found, files, signature_name.clone())
        }
        None => (
            hash_as_signed(&source, &expected.serialization, None, None, opts)?,
            Vec::new(),
            None,
        ),
    };
    let digest = found.digest_string();
    if digest != expected.manifest_digest || !files.is_empty() {
        return Err(IntegrityError::Mismatch {
            expected: expected.manifest_digest.clone(),
            found: digest,
            why_unnamed: if signed.is_some() { None } else { why_unnamed },
            files,
        });
    }
    Ok(Verified {
        manifest: found,
        signature_name,
    })
}

/// Reads a Sigstore bundle (its DSSE payload is the statement) or a bare in-toto
/// statement, and returns the manifest it describes (checked: its subject digest is
/// over its resource digests).
pub fn read_signed_manifest(path: &Path) -> Result<Manifest, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| {
            f.take(MAX_SIGNED_MANIFEST_BYTES + 1)
                .read_to_end(&mut bytes)
        })
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_SIGNED_MANIFEST_BYTES {
        return Err(format!(
            "larger than {MAX_SIGNED_MANIFEST_BYTES} bytes: not a signed manifest"
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| format!("not JSON: {e}"))?;
    let payload = if json.get("dsseEnvelope").is_some() {
        let bundle = Bundle::from_json(&bytes).map_err(|e| e.to_string())?;
        if bundle.dsse_envelope.payload_type != statement::PAYLOAD_TYPE {
            return Err(format!(
                "payload type {:?}, expected {}",
                bundle.dsse_envelope.payload_type,
                statement::PAYLOAD_TYPE
            ));
        }
        base64::engine::general_purpose::STANDARD
            .decode(bundle.dsse_envelope.payload.as_bytes())
            .map_err(|e| format!("DSSE payload is not base64: {e}"))?
    } else if json.get("_type").is_some() {
        bytes
    } else {
        return Err(
            "neither a Sigstore bundle (dsseEnvelope) nor an in-toto statement (_type)".into(),
        );
    };
    statement::from_payload(&payload).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use lotabots_crds::model_attestation::HashAlgorithm;
    use lotabots_model::hashing::hash_model;

    use super::*;

    fn model() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        std::fs::write(dir.path().join("sub/weights.bin"), vec![7u8; 3000]).unwrap();
        dir
    }

    fn manifest_of(dir: &Path, ser: &Serialization) -> Manifest {
        let src = LocalSource::new(dir).unwrap();
        hash_model(&src, ser, &HashOptions::default()).unwrap()
    }

    fn files() -> Serialization {
        Serialization::files(HashAlgorithm::Sha256)
    }

    #[test]
    fn digests_are_normalised_and_checked() {
        let hex = "AB".repeat(32);
        let want = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parse_manifest_digest(&hex).unwrap(), want);
        assert_eq!(
            parse_manifest_digest(&format!("sha256:{hex}")).unwrap(),
            want
        );
        for bad in [
            "",
            "sha256:",
            "sha256:abc",
            &"g".repeat(64),
            &format!("sha512:{hex}"),
        ] {
            let e = parse_manifest_digest(bad).unwrap_err();
            assert!(e.contains("is not sha256:<64 hex digits>"), "{bad}: {e}");
        }
    }

    #[test]
    fn an_intact_model_verifies() {
        let dir = model();
        let m = manifest_of(dir.path(), &files());
        let exp = Expectation::new(&m.digest_string()).unwrap();
        let v = verify(dir.path(), &exp, &HashOptions::default()).unwrap();
        assert_eq!(v.manifest.digest_string(), m.digest_string());
        assert_eq!(v.signature_name, None);
    }

    #[test]
    fn the_serialization_is_part_of_the_digest() {
        let dir = model();
        let sharded = Serialization::shards(HashAlgorithm::Sha256, 1000);
        let m = manifest_of(dir.path(), &sharded);
        // Hashed as whole files, the same bytes give another digest.
        let mut exp = Expectation::new(&m.digest_string()).unwrap();
        assert!(matches!(
            verify(dir.path(), &exp, &HashOptions::default()),
            Err(IntegrityError::Mismatch { .. })
        ));
        exp.serialization = sharded;
        verify(dir.path(), &exp, &HashOptions::default()).unwrap();
    }

    #[test]
    fn without_a_signed_manifest_both_digests_are_named() {
        let dir = model();
        let m = manifest_of(dir.path(), &files());
        std::fs::write(dir.path().join("config.json"), b"{ }").unwrap();
        let exp = Expectation::new(&m.digest_string()).unwrap();
        let e = verify(dir.path(), &exp, &HashOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains(&m.digest_string()), "{msg}");
        assert!(msg.contains("which file differs is not known"), "{msg}");
        assert!(msg.contains("no signed manifest"), "{msg}");
    }

    #[test]
    fn a_statement_names_each_changed_file() {
        let dir = model();
        let m = manifest_of(dir.path(), &files());
        let out = tempfile::tempdir().unwrap();
        let st = out.path().join("manifest.json");
        std::fs::write(&st, statement::to_payload(&m)).unwrap();
        std::fs::write(dir.path().join("sub/weights.bin"), vec![8u8; 3000]).unwrap();
        std::fs::write(dir.path().join("extra.txt"), b"x").unwrap();
        let mut exp = Expectation::new(&m.digest_string()).unwrap();
        exp.signed_manifest = Some(st);
        let e = verify(dir.path(), &exp, &HashOptions::default()).unwrap_err();
        let IntegrityError::Mismatch { files, .. } = &e else {
            panic!("{e}");
        };
        let named: Vec<String> = files.iter().map(ToString::to_string).collect();
        assert_eq!(
            named,
            [
                "extra.txt: extra: in the model but not signed",
                "sub/weights.bin: modified: content differs from the signed digest",
            ]
        );
        let msg = e.to_string();
        assert!(msg.contains("sub/weights.bin: modified"), "{msg}");
    }

    #[test]
    fn a_statement_of_another_manifest_is_refused_when_named() {
        let dir = model();
        let m = manifest_of(dir.path(), &files());
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("x"), b"other model").unwrap();
        let st = other.path().join("st.json");
        std::fs::write(
            &st,
            statement::to_payload(&manifest_of(other.path(), &files())),
        )
        .unwrap();
        let mut exp = Expectation::new(&m.digest_string()).unwrap();
        exp.signed_manifest = Some(st.clone());
        let e = verify(dir.path(), &exp, &HashOptions::default()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("describes the manifest sha256:"), "{msg}");
        assert!(
            msg.contains(&format!("not the attested {}", m.digest_string())),
            "{msg}"
        );

        std::fs::write(&st, b"{\"hello\": 1}").unwrap();
        let e = verify(dir.path(), &exp, &HashOptions::default()).unwrap_err();
        assert!(e.to_string().contains("neither a Sigstore bundle"), "{e}");
    }

    #[test]
    fn model_sig_inside_the_model_is_used_and_left_out() {
        let dir = model();
        // As sign_model does: the bundle's own name is ignored by the manifest it holds.
        let mut ser = files();
        ser.ignore.insert(DEFAULT_SIGNATURE_NAME).unwrap();
        let m = manifest_of(dir.path(), &ser);
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .unwrap()
            .serialize_pem();
        let key = lotabots_model::keys::SigningKey::from_pem(&pem).unwrap();
        let bundle = Bundle::sign(&m, &key, None).unwrap();
        std::fs::write(dir.path().join(DEFAULT_SIGNATURE_NAME), bundle.to_json()).unwrap();
        let exp = Expectation::new(&m.digest_string()).unwrap();
        let v = verify(dir.path(), &exp, &HashOptions::default()).unwrap();
        assert_eq!(v.signature_name.as_deref(), Some(DEFAULT_SIGNATURE_NAME));

        std::fs::write(dir.path().join("config.json"), b"{\"evil\":1}").unwrap();
        let e = verify(dir.path(), &exp, &HashOptions::default()).unwrap_err();
        assert!(
            e.to_string()
                .contains("config.json: modified: content differs from the signed digest"),
            "{e}"
        );
    }
}
