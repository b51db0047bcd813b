//! lotabots model attestation: OpenSSF model-signing v1.0 manifests, Sigstore bundle
//! signing and offline verification, and the `attest-model` command.
//!
//! The pieces, in the order a verification uses them:
//! - [`source`]: where the files are ([`source::Source`]: local paths, and `s3://` and
//!   `gs://` prefixes in [`remote`]);
//! - [`hashing`]: the parallel, streaming manifest of a model ([`hashing::hash_model`]);
//! - [`manifest`] and [`statement`]: the manifest and its in-toto statement, byte-compatible
//!   with the Python reference `model_signing` 1.x;
//! - [`bundle`], [`keys`], [`chain`]: Sigstore bundles (DSSE), P-256/P-384 keys and
//!   certificate chains;
//! - [`verify_model`] / [`sign_model`]: both together;
//! - [`attest`]: the offline command.

pub mod attest;
pub mod bundle;
pub mod chain;
pub mod hashing;
pub mod ignore;
pub mod keys;
pub mod manifest;
pub mod remote;
pub mod safety;
pub mod source;
pub mod statement;

use bundle::{Bundle, BundleError, Signer, Trust};
use hashing::{HashError, HashOptions, hash_model};
use manifest::{FileProblem, Manifest, Serialization};
use source::Source;

/// A verified signature and how the model compares with what it signs.
#[derive(Debug, Clone)]
pub struct ModelVerification {
    /// Who signed.
    pub signer: Signer,
    /// The signed manifest.
    pub signed: Manifest,
    /// The model as hashed with the signed serialization parameters.
    pub found: Manifest,
    /// Every file that is missing, extra or modified; empty when the model is intact.
    pub problems: Vec<FileProblem>,
}

/// Why a model could not be verified at all.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The signature does not verify.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The model could not be hashed.
    #[error(transparent)]
    Hash(#[from] HashError),
}

/// Verifies `bundle` against `trust`, then hashes the model with the serialization the
/// signature records (leaving out `signature_name`, the bundle's own path inside the
/// model, if any) and compares file by file.
pub fn verify_model(
    source: &dyn Source,
    bundle: &Bundle,
    trust: &Trust,
    signature_name: Option<&str>,
    opts: &HashOptions,
) -> Result<ModelVerification, VerifyError> {
    let (signed, signer) = bundle.verify(trust)?;
    let found = hash_as_signed(
        source,
        &signed.serialization,
        signature_name,
        Some(&signed),
        opts,
    )?;
    let problems = found.diff(&signed);
    Ok(ModelVerification {
        signer,
        signed,
        found,
        problems,
    })
}

/// Hashes the model with `serialization`, also leaving out `signature_name` (a bundle
/// inside the model is never part of its own manifest), and records `serialization` as
/// given. With `signed`, a single-file model takes the signed manifest's spelling of its
/// name, so that the two compare.
pub fn hash_as_signed(
    source: &dyn Source,
    serialization: &Serialization,
    signature_name: Option<&str>,
    signed: Option<&Manifest>,
    opts: &HashOptions,
) -> Result<Manifest, HashError> {
    let mut hashing = serialization.clone();
    if let Some(name) = signature_name {
        hashing.ignore.insert(name).map_err(|problem| {
            HashError::Source(source::SourceError {
                path: name.to_owned(),
                problem,
            })
        })?;
    }
    let mut found = hash_model(source, &hashing, opts)?;
    found.serialization = serialization.clone();
    if let Some(signed) = signed
        && source.is_single_file()
    {
        found.align_single_file_name(signed);
    }
    Ok(found)
}

/// Hashes the model with `serialization` (plus `signature_name` ignored, when the bundle
/// will be written inside the model, and recorded as ignored) and signs the manifest.
pub fn sign_model(
    source: &dyn Source,
    mut serialization: Serialization,
    signature_name: Option<&str>,
    key: &keys::SigningKey,
    certificates: Option<&[Vec<u8>]>,
    opts: &HashOptions,
) -> Result<(Manifest, Bundle), VerifyError> {
    if let Some(name) = signature_name {
        serialization
            .ignore
            .insert(name)
            .map_err(|e| VerifyError::Bundle(BundleError::Malformed(e)))?;
    }
    let manifest = hash_model(source, &serialization, opts)?;
    let bundle = Bundle::sign(&manifest, key, certificates)?;
    Ok((manifest, bundle))
}
