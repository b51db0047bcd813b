//! `attest-model`: one model judged offline, without a cluster, by the same stages the
//! ModelAttestation controller runs: the signature over the manifest, the integrity of
//! every file against it (and against a pinned digest), then safety and compliance.
//!
//! Exit codes, as the project's other offline commands: 0 when every stage that ran
//! passed; 1 when one failed (every file it objected to is named); 2 when the input is
//! unusable (the message names the file and the problem).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::ValueEnum;
use jiff::Timestamp;
use lotabots_crds::conditions::{self, reason};
use lotabots_crds::model_attestation::{HashAlgorithm, ModelAttestation, ModelAttestationSpec};
use serde::Serialize;

pub use lotabots_crds::model_attestation::Verdict;

use crate::bundle::{Bundle, BundleError, Signer, Trust};
use crate::chain::certificates_from_pem;
use crate::hash_as_signed;
use crate::hashing::{HashError, HashOptions};
use crate::keys::PublicKey;
use crate::manifest::{Manifest, Method, Serialization};
use crate::remote::{Access, ObjectSource};
use crate::source::{LocalSource, Location, Source, read_bounded};

/// `schemaVersion` of the JSON report.
pub const REPORT_SCHEMA: &str = "lotabots.io/model-verdict/v1alpha1";
/// Largest signature bundle read: a manifest of a million resources stays far below it,
/// and a hostile file cannot make the command read without end.
pub const MAX_BUNDLE_BYTES: u64 = 256 << 20;
/// Where a signature is looked for when none is named: model_signing's default.
pub const DEFAULT_SIGNATURE_NAME: &str = "model.sig";

/// Output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned text for people.
    #[default]
    Table,
    /// The report document, for pipelines and archives.
    Json,
}

/// `lotabots-operator attest-model`: verify a model's signature and integrity offline.
#[derive(Debug, Clone, clap::Args)]
pub struct AttestArgs {
    /// The model: a directory or file path, file:///PATH, s3://BUCKET/PREFIX or
    /// gs://BUCKET/PREFIX (object stores are reached with the AWS_* and GCS_* variables
    /// of the environment; see lotabots_model::remote).
    #[arg(value_name = "PATH|URI")]
    pub model: String,
    /// The Sigstore bundle (model_signing's model.sig): a path, or an s3:// or gs://
    /// object. Default: the policy's spec.signature.bundle, else model.sig at the
    /// model's root when a key or CA is given.
    #[arg(long, env = "LOTABOTS_SIGNATURE", value_name = "FILE|URI")]
    pub signature: Option<String>,
    /// PEM public key (EC P-256 or P-384) the signature must verify with.
    #[arg(
        long,
        env = "LOTABOTS_PUBLIC_KEY",
        value_name = "FILE",
        conflicts_with = "certificate_chain"
    )]
    pub public_key: Option<PathBuf>,
    /// PEM CA certificate(s) the bundle's signing certificate must chain to.
    #[arg(long, env = "LOTABOTS_CERTIFICATE_CHAIN", value_name = "FILE")]
    pub certificate_chain: Option<PathBuf>,
    /// A ModelAttestation (YAML) whose spec applies: integrity algorithm, shard size and
    /// expected digest, whether a signature is required, and the policy.
    #[arg(long, env = "LOTABOTS_POLICY", value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, env = "LOTABOTS_FORMAT", default_value_t = Format::Table)]
    pub format: Format,
}

/// Unusable input: exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct InputError {
    /// The file (or flag) at fault.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

impl InputError {
    /// An error about `path` (a file, a flag or a spec field).
    pub fn new(path: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Self {
            path: path.as_ref().display().to_string(),
            problem: problem.into(),
        }
    }
}

/// How a stage ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum StageStatus {
    /// Ran and passed.
    Passed,
    /// Ran and failed.
    Failed,
    /// Did not run (not requested, or not available here); never counted as a pass of
    /// something that was asked for.
    Skipped,
}

/// One file a stage objected to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Objection {
    /// The file, relative to the model root.
    pub path: String,
    /// What is wrong with it.
    pub problem: String,
}

/// The result of one stage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    /// The condition type it sets on a ModelAttestation (`SignatureVerified`, …).
    pub stage: &'static str,
    /// Passed, failed or skipped.
    pub status: StageStatus,
    /// The condition reason (`DigestMismatch`, …).
    pub reason: &'static str,
    /// What happened, in words.
    pub message: String,
    /// Every file the stage objected to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<Objection>,
    /// How long the stage took, when it ran here (for metrics; not part of the report,
    /// which must not change with the machine's speed).
    #[serde(skip)]
    pub took: Option<std::time::Duration>,
}

impl StageResult {
    /// A stage result without objections or timing.
    pub fn new(
        stage: &'static str,
        status: StageStatus,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            stage,
            status,
            reason,
            message: message.into(),
            files: Vec::new(),
            took: None,
        }
    }
}

/// The serialization the manifest was computed with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SerializationSummary {
    /// `files` or `shards`.
    pub method: &'static str,
    /// `sha256` or `blake3`.
    pub hash_type: &'static str,
    /// Bytes per shard, for `shards`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shard_size: Option<u64>,
}

impl From<&Serialization> for SerializationSummary {
    fn from(s: &Serialization) -> Self {
        let (method, shard_size) = match s.method {
            Method::Files => ("files", None),
            Method::Shards { shard_size } => ("shards", Some(shard_size)),
        };
        Self {
            method,
            hash_type: s.hash.as_str(),
            shard_size,
        }
    }
}

/// The stable, archivable report of `--format json`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Always [`REPORT_SCHEMA`].
    pub schema_version: &'static str,
    /// The model as given.
    pub model: String,
    /// `Attested` when every stage that ran passed, `Failed` otherwise.
    pub verdict: Verdict,
    /// `sha256:` root digest of the model's manifest as found (the in-toto subject).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest_digest: Option<String>,
    /// How the manifest was computed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serialization: Option<SerializationSummary>,
    /// Files in the manifest.
    pub files: usize,
    /// Who signed, when the signature verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer: Option<Signer>,
    /// When the model was judged.
    pub checked_at: Timestamp,
    /// Every stage, in pipeline order.
    pub stages: Vec<StageResult>,
    /// Bytes read and hashed for the manifest (for metrics; not part of the report).
    #[serde(skip)]
    pub bytes_hashed: u64,
}

impl Report {
    /// 0 when every stage that ran passed, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.verdict != Verdict::Attested)
    }

    /// The report as aligned text.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "MODEL     {} ({} files)", self.model, self.files);
        if let Some(d) = &self.manifest_digest {
            let _ = writeln!(out, "MANIFEST  {d}");
        }
        if let Some(s) = &self.signer {
            let _ = writeln!(out, "SIGNER    {} {}", s.method, s.identity);
        }
        let _ = writeln!(out, "VERDICT   {:?}", self.verdict);
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:<18} MESSAGE",
            "STAGE", "STATUS", "REASON"
        );
        for s in &self.stages {
            let _ = writeln!(
                out,
                "{:<18} {:<8} {:<18} {}",
                s.stage,
                format!("{:?}", s.status),
                s.reason,
                s.message
            );
            for f in &s.files {
                let _ = writeln!(out, "  {}: {}", f.path, f.problem);
            }
        }
        out
    }
}

/// Runs the command and prints the report; the exit code follows the module's contract.
pub fn run(args: &AttestArgs) -> ExitCode {
    match attest(args, &HashOptions::default()) {
        Ok(report) => {
            match args.format {
                Format::Table => print!("{}", report.render_table()),
                Format::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("the report serialises")
                ),
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("lotabots-operator: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Where a signature bundle is.
#[derive(Debug, Clone)]
pub enum SignatureRef {
    /// A local file (inside a local model, or anywhere).
    Path(PathBuf),
    /// A file of the model's own source by its model-relative name (a bundle under an
    /// object-store model's prefix); it is left out of the model's manifest.
    InModel(String),
    /// A file of another source (a bundle in another bucket or prefix).
    Elsewhere {
        /// The source holding it.
        source: Arc<dyn Source>,
        /// Its name there.
        name: String,
    },
}

impl SignatureRef {
    /// The path or URI, for messages.
    pub fn display(&self, model: &dyn Source) -> String {
        match self {
            Self::Path(p) => p.display().to_string(),
            Self::InModel(name) => model.display_name(name),
            Self::Elsewhere { source, name } => source.display_name(name),
        }
    }

    /// The bundle's bytes (at most [`MAX_BUNDLE_BYTES`]); `Ok(None)` when it does not
    /// exist.
    fn read(&self, model: &dyn Source) -> Result<Option<Vec<u8>>, crate::source::SourceError> {
        match self {
            Self::Path(p) => read_bounded(p, MAX_BUNDLE_BYTES),
            Self::InModel(name) => model.read_small(name, MAX_BUNDLE_BYTES),
            Self::Elsewhere { source, name } => source.read_small(name, MAX_BUNDLE_BYTES),
        }
    }

    /// Its model-relative name when it lies inside the model (then it is not part of the
    /// model's own manifest).
    pub fn name_in(&self, model: &dyn Source) -> Option<String> {
        match self {
            Self::Path(p) => model.local().and_then(|l| l.relative_name(p)),
            Self::InModel(name) => Some(name.clone()),
            Self::Elsewhere { .. } => None,
        }
    }
}

/// Everything the stages run on, however it was gathered: from the command line
/// (`attest-model`), or from a ModelAttestation and the objects it names (the
/// controller).
#[derive(Debug, Clone)]
pub struct Inputs {
    /// The model's files.
    pub source: Arc<dyn Source>,
    /// The ModelAttestation spec that applies, if any.
    pub spec: Option<ModelAttestationSpec>,
    /// What the signature must verify against; `None`: the signature is not checked.
    pub trust: Option<Trust>,
    /// Where the signature bundle is.
    pub signature: Option<SignatureRef>,
    /// Whether the bundle was named explicitly: then a missing one is unusable input
    /// rather than the `SignatureMissing` failure of a default location.
    pub signature_explicit: bool,
}

fn read_inputs(args: &AttestArgs) -> Result<Inputs, InputError> {
    let location = Location::parse(&args.model).map_err(|e| InputError::new("MODEL", e))?;
    // Object stores are reached with the environment's settings, read once.
    let mut access: Option<Access> = None;
    let mut connect = |loc: &Location| -> Result<Arc<dyn Source>, InputError> {
        let access = match &access {
            Some(a) => a.clone(),
            None => access
                .insert(Access::from_env().map_err(|e| InputError::new(e.key, e.problem))?)
                .clone(),
        };
        let source = ObjectSource::connect_blocking(loc, &access)
            .map_err(|e| InputError::new(&e.path, e.problem))?;
        Ok(Arc::new(source))
    };
    let source: Arc<dyn Source> = match &location {
        Location::Local(root) => {
            Arc::new(LocalSource::new(root).map_err(|e| InputError::new(&e.path, e.problem))?)
        }
        remote => {
            let access = Access::from_env().map_err(|e| InputError::new(e.key, e.problem))?;
            let source = ObjectSource::connect_blocking(remote, &access)
                .map_err(|e| InputError::new(&e.path, e.problem))?;
            // Unreachable or empty is unusable input (exit 2), not a model failing.
            source
                .check_reachable()
                .map_err(|e| InputError::new(&e.path, e.problem))?;
            Arc::new(source)
        }
    };
    let spec = args.policy.as_deref().map(read_policy).transpose()?;
    let trust = match (&args.public_key, &args.certificate_chain) {
        (Some(p), _) => {
            let pem = read_text(p)?;
            Some(Trust::PublicKey(
                PublicKey::from_pem(&pem).map_err(|e| InputError::new(p, e.0))?,
            ))
        }
        (None, Some(p)) => {
            let pem = std::fs::read(p).map_err(|e| InputError::new(p, e.to_string()))?;
            let anchors = certificates_from_pem(&pem).map_err(|e| InputError::new(p, e))?;
            Some(Trust::CertificateAuthorities {
                anchors,
                at: Timestamp::now(),
            })
        }
        (None, None) => None,
    };
    let policy_bundle = spec
        .as_ref()
        .and_then(|s| s.signature.as_ref())
        .map(|s| s.bundle.clone());
    if trust.is_none() && (args.signature.is_some() || policy_bundle.is_some()) {
        return Err(InputError::new(
            "--public-key/--certificate-chain",
            "a signature is to be verified (--signature or the policy's spec.signature): give the key or CA it must verify with",
        ));
    }
    let (signature, explicit) = match (&args.signature, policy_bundle) {
        (Some(p), _) => {
            let sig = match Location::parse(p) {
                Ok(Location::Local(_)) | Err(_) => SignatureRef::Path(PathBuf::from(p)),
                Ok(_) => locate_bundle(&location, &source, p, &mut connect)?,
            };
            (Some(sig), true)
        }
        (None, Some(Some(b))) => (
            Some(locate_bundle(&location, &source, &b, &mut connect)?),
            false,
        ),
        (None, _) if trust.is_some() => (Some(default_signature(&source)), false),
        (None, _) => (None, false),
    };
    Ok(Inputs {
        source,
        spec,
        trust,
        signature,
        signature_explicit: explicit,
    })
}

fn read_text(path: &Path) -> Result<String, InputError> {
    std::fs::read_to_string(path).map_err(|e| InputError::new(path, e.to_string()))
}

fn read_policy(path: &Path) -> Result<ModelAttestationSpec, InputError> {
    let text = read_text(path)?;
    let ma: ModelAttestation = serde_yaml::from_str(&text)
        .map_err(|e| InputError::new(path, format!("not a ModelAttestation: {e}")))?;
    ma.spec.validate().map_err(|errs| {
        let all: Vec<String> = errs
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        InputError::new(path, all.join("; "))
    })?;
    Ok(ma.spec)
}

/// Opens an object-store location (with the model's credentials) as a source.
pub type Connect<'a> = dyn FnMut(&Location) -> Result<Arc<dyn Source>, InputError> + 'a;

/// Where `spec.signature.bundle` points for the model at `model` (read through
/// `source`): a `file:///PATH`; a path relative to the model (beside it, for a
/// single-file local model); or an `s3://`/`gs://` object, which is a file of the model
/// when it lies under the model's prefix and is otherwise read through a source that
/// `connect` opens for its parent prefix (with the model's credentials).
pub fn locate_bundle(
    model: &Location,
    source: &Arc<dyn Source>,
    bundle: &str,
    connect: &mut Connect<'_>,
) -> Result<SignatureRef, InputError> {
    let field = "spec.signature.bundle";
    match Location::parse(bundle) {
        Ok(Location::Local(p)) if bundle.starts_with("file://") => Ok(SignatureRef::Path(p)),
        Ok(Location::Local(p)) => match source.local() {
            Some(local) if local.is_single_file() => Ok(SignatureRef::Path(
                local.root().parent().unwrap_or(Path::new(".")).join(p),
            )),
            Some(local) => Ok(SignatureRef::Path(local.root().join(p))),
            None => Ok(SignatureRef::InModel(
                bundle.trim_start_matches("./").to_owned(),
            )),
        },
        Ok(object) => {
            if let Some(name) = name_under(model, &object) {
                return Ok(SignatureRef::InModel(name));
            }
            let (parent, name) = split_object(&object).ok_or_else(|| {
                InputError::new(field, format!("{bundle:?} does not name an object"))
            })?;
            Ok(SignatureRef::Elsewhere {
                source: connect(&parent)?,
                name,
            })
        }
        Err(e) => Err(InputError::new(field, e)),
    }
}

/// The model-relative name of `object` when it lies under the prefix of `model` (same
/// store and bucket).
fn name_under(model: &Location, object: &Location) -> Option<String> {
    let (mb, mp, ob, op) = match (model, object) {
        (
            Location::S3 {
                bucket: mb,
                prefix: mp,
            },
            Location::S3 {
                bucket: ob,
                prefix: op,
            },
        )
        | (
            Location::Gcs {
                bucket: mb,
                prefix: mp,
            },
            Location::Gcs {
                bucket: ob,
                prefix: op,
            },
        ) => (mb, mp, ob, op),
        _ => return None,
    };
    if mb != ob {
        return None;
    }
    let mp = mp.trim_end_matches('/');
    let rel = if mp.is_empty() {
        op.as_str()
    } else {
        op.strip_prefix(mp)?.strip_prefix('/')?
    };
    (!rel.is_empty()).then(|| rel.to_owned())
}

/// An object location split into its parent prefix and its final name.
fn split_object(object: &Location) -> Option<(Location, String)> {
    let (prefix, name) = match object {
        Location::S3 { prefix, .. } | Location::Gcs { prefix, .. } => {
            match prefix.trim_end_matches('/').rsplit_once('/') {
                Some((parent, name)) => (parent.to_owned(), name.to_owned()),
                None => (String::new(), prefix.trim_end_matches('/').to_owned()),
            }
        }
        Location::Local(_) => return None,
    };
    if name.is_empty() {
        return None;
    }
    Some(match object {
        Location::S3 { bucket, .. } => (
            Location::S3 {
                bucket: bucket.clone(),
                prefix,
            },
            name,
        ),
        Location::Gcs { bucket, .. } => (
            Location::Gcs {
                bucket: bucket.clone(),
                prefix,
            },
            name,
        ),
        Location::Local(_) => return None,
    })
}

/// `model.sig` at the model's root (beside a single-file local model): model_signing's
/// default.
pub fn default_signature(source: &Arc<dyn Source>) -> SignatureRef {
    match source.local() {
        Some(local) if local.is_single_file() => SignatureRef::Path(
            local
                .root()
                .parent()
                .unwrap_or(Path::new("."))
                .join(DEFAULT_SIGNATURE_NAME),
        ),
        Some(local) => SignatureRef::Path(local.root().join(DEFAULT_SIGNATURE_NAME)),
        None => SignatureRef::InModel(DEFAULT_SIGNATURE_NAME.to_owned()),
    }
}

/// The serialization a policy (or the defaults) asks for when there is no signature to
/// take it from. Like model_signing, BLAKE3 is never sharded (it is parallel already).
fn policy_serialization(spec: Option<&ModelAttestationSpec>) -> Serialization {
    let integrity = spec.map(|s| s.integrity.clone()).unwrap_or_default();
    match (integrity.algorithm, integrity.shard_size_bytes) {
        (HashAlgorithm::Sha256, Some(size)) => Serialization::shards(HashAlgorithm::Sha256, size),
        (algorithm, _) => Serialization::files(algorithm),
    }
}

/// How the integrity stage hashes the model of `inputs`: as the signed manifest says
/// when the signature verifies, else as the spec's integrity policy says. A copy of the
/// model (a probe pod's) is listed and hashed the same way.
pub fn manifest_serialization(inputs: &Inputs) -> Serialization {
    let signed = || {
        let (trust, signature) = (inputs.trust.as_ref()?, inputs.signature.as_ref()?);
        let bytes = signature.read(&*inputs.source).ok()??;
        let (manifest, _) = Bundle::from_json(&bytes).ok()?.verify(trust).ok()?;
        Some(manifest.serialization)
    };
    signed().unwrap_or_else(|| policy_serialization(inputs.spec.as_ref()))
}

/// Runs every stage on the model the arguments name.
pub fn attest(args: &AttestArgs, opts: &HashOptions) -> Result<Report, InputError> {
    run_stages(&args.model, &read_inputs(args)?, opts)
}

/// Runs every stage on `inputs`: the signature, the integrity of every file, safety and
/// compliance, in that order; `model` is how the report names the model. Errors are
/// unusable input (an unreadable or malformed signature bundle, named).
pub fn run_stages(model: &str, inputs: &Inputs, opts: &HashOptions) -> Result<Report, InputError> {
    let source: &dyn Source = &*inputs.source;
    let signature_name = inputs.signature.as_ref().and_then(|s| s.name_in(source));
    let spec = inputs.spec.as_ref();

    let started = std::time::Instant::now();
    // Signature first: a verified signature decides how the model is re-hashed.
    let mut signed: Option<(Manifest, Signer)> = None;
    let signature_stage = match (&inputs.trust, &inputs.signature) {
        (Some(trust), Some(sig)) => match sig.read(source) {
            Ok(None) if !inputs.signature_explicit => StageResult::new(
                conditions::SIGNATURE_VERIFIED,
                StageStatus::Failed,
                reason::SIGNATURE_MISSING,
                format!("no signature bundle at {}", sig.display(source)),
            ),
            Ok(None) => {
                return Err(InputError::new(
                    sig.display(source),
                    "no such file or object",
                ));
            }
            Err(e) => return Err(InputError::new(&e.path, e.problem)),
            Ok(Some(bytes)) => {
                let path = sig.display(source);
                let bundle =
                    Bundle::from_json(&bytes).map_err(|e| InputError::new(&path, e.to_string()))?;
                match bundle.verify(trust) {
                    Ok((manifest, signer)) => {
                        let msg = format!(
                            "signed by {} {} ({} resources)",
                            signer.method,
                            signer.identity,
                            manifest.resources.len()
                        );
                        signed = Some((manifest, signer));
                        StageResult::new(
                            conditions::SIGNATURE_VERIFIED,
                            StageStatus::Passed,
                            reason::SIGNATURE_VALID,
                            msg,
                        )
                    }
                    Err(e @ BundleError::Malformed(_)) => {
                        return Err(InputError::new(&path, e.to_string()));
                    }
                    Err(e) => StageResult::new(
                        conditions::SIGNATURE_VERIFIED,
                        StageStatus::Failed,
                        reason::SIGNATURE_INVALID,
                        e.to_string(),
                    ),
                }
            }
        },
        _ => StageResult::new(
            conditions::SIGNATURE_VERIFIED,
            StageStatus::Skipped,
            reason::NOT_REQUESTED,
            "no key or CA given: the signature is not checked",
        ),
    };

    let mut signature_stage = signature_stage;
    signature_stage.took = Some(started.elapsed());

    // Integrity: the signed parameters when there is a signature, else the policy's.
    let started = std::time::Instant::now();
    let bytes_hashed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let opts = &HashOptions {
        bytes_read: Some(bytes_hashed.clone()),
        ..opts.clone()
    };
    let serialization = signed
        .as_ref()
        .map(|(m, _)| m.serialization.clone())
        .unwrap_or_else(|| policy_serialization(spec));
    let signed_manifest = signed.as_ref().map(|(m, _)| m);
    let hashed = hash_as_signed(
        source,
        &serialization,
        signature_name.as_deref(),
        signed_manifest,
        opts,
    );
    let mut integrity_stage = match &hashed {
        Ok(found) => integrity(found, signed_manifest, spec, &signature_stage),
        Err(e) => unhashable(source, e),
    };
    integrity_stage.took = Some(started.elapsed());
    let found = hashed.ok();

    let mut stages = vec![integrity_stage, signature_stage];
    // Safety and compliance judge the same files the manifest covers.
    let mut not_model = serialization.ignore.clone();
    if let Some(name) = &signature_name {
        not_model
            .insert(name)
            .map_err(|e| InputError::new("--signature", e))?;
    }
    let policy = spec.map(|s| s.policy.clone()).unwrap_or_default();
    let started = std::time::Instant::now();
    let [mut safety, compliance] = match source.local() {
        Some(local) => crate::safety::scan_and_comply(local.root(), &policy, &not_model),
        None => crate::safety::scan_and_comply_source(source, &policy, &not_model),
    };
    // One pass scans and then judges compliance on the scan: the time is the scan's.
    safety.took = Some(started.elapsed());
    stages.extend([safety, compliance]);
    let verdict = if stages.iter().any(|s| s.status == StageStatus::Failed) {
        Verdict::Failed
    } else {
        Verdict::Attested
    };
    Ok(Report {
        schema_version: REPORT_SCHEMA,
        model: model.to_owned(),
        verdict,
        manifest_digest: found.as_ref().map(Manifest::digest_string),
        serialization: found.as_ref().map(|m| (&m.serialization).into()),
        files: found.as_ref().map_or(0, Manifest::file_count),
        signer: signed.map(|(_, s)| s),
        checked_at: Timestamp::now(),
        stages,
        bytes_hashed: bytes_hashed.load(std::sync::atomic::Ordering::Relaxed),
    })
}

/// The model exists but holds something a manifest cannot cover (a symbolic link, a
/// socket, a file name that is not UTF-8, a file changing while read, no file at all):
/// that is the model failing integrity, not unusable input.
fn unhashable(source: &dyn Source, e: &HashError) -> StageResult {
    let mut r = StageResult::new(
        conditions::INTEGRITY_VERIFIED,
        StageStatus::Failed,
        reason::DIGEST_MISMATCH,
        format!("the model cannot be hashed: {e}"),
    );
    let named = match e {
        HashError::Source(se) => Some((se.path.clone(), se.problem.clone())),
        HashError::Changed { path, .. } => Some((path.clone(), e.to_string())),
        HashError::Empty(_) | HashError::Pool(_) => None,
    };
    if let Some((path, problem)) = named {
        // Walk errors carry root/NAME; name the file as the manifest would (lexically: a
        // link must be named, not the target it resolves to).
        let name = match source.local() {
            Some(local) => Path::new(&path)
                .strip_prefix(local.root())
                .ok()
                .and_then(|rel| rel.to_str())
                .map(str::to_owned),
            None => path
                .strip_prefix(&source.location())
                .and_then(|rel| rel.strip_prefix('/'))
                .map(str::to_owned),
        }
        .filter(|rel| !rel.is_empty())
        .unwrap_or_else(|| path.clone());
        r.files.push(Objection {
            path: name,
            problem,
        });
    }
    r
}

fn integrity(
    found: &Manifest,
    signed: Option<&Manifest>,
    spec: Option<&ModelAttestationSpec>,
    signature_stage: &StageResult,
) -> StageResult {
    let stage = conditions::INTEGRITY_VERIFIED;
    let mut objections = Vec::new();
    let mut failures = Vec::new();
    if let Some(signed) = signed {
        objections.extend(found.diff(signed).into_iter().map(|p| Objection {
            problem: p.problem.describe().to_owned(),
            path: p.path,
        }));
        if !objections.is_empty() {
            failures.push(format!(
                "{} file(s) differ from the signed manifest",
                objections.len()
            ));
        }
        if let Some(spec) = spec
            && spec.integrity.algorithm != signed.serialization.hash
        {
            failures.push(format!(
                "the signature hashes with {}, the policy requires {}",
                signed.serialization.hash.as_str(),
                spec.integrity.algorithm.as_str()
            ));
        }
    }
    let pinned = spec.and_then(|s| s.integrity.expected_digest.as_deref());
    if let Some(pinned) = pinned {
        let digest = hex::encode(found.root_digest());
        if !digest.eq_ignore_ascii_case(pinned) {
            failures.push(format!(
                "manifest digest sha256:{digest} is not the expected sha256:{pinned}"
            ));
        }
    }
    if !failures.is_empty() {
        let mut r = StageResult::new(
            stage,
            StageStatus::Failed,
            reason::DIGEST_MISMATCH,
            failures.join("; "),
        );
        r.files = objections;
        return r;
    }
    match (signed, pinned) {
        (Some(_), _) | (None, Some(_)) => StageResult::new(
            stage,
            StageStatus::Passed,
            reason::DIGEST_MATCH,
            match (signed.is_some(), pinned.is_some()) {
                (true, true) => {
                    "every file matches the signed manifest, which has the expected digest"
                }
                (true, false) => "every file matches the signed manifest",
                _ => "the manifest has the expected digest",
            },
        ),
        (None, None) if signature_stage.status == StageStatus::Failed => StageResult::new(
            stage,
            StageStatus::Skipped,
            reason::PENDING,
            "nothing trusted to compare with: the signature did not verify",
        ),
        (None, None) => StageResult::new(
            stage,
            StageStatus::Skipped,
            reason::NOT_REQUESTED,
            "no signature and no spec.integrity.expectedDigest: the manifest digest is reported, not checked",
        ),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser};

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: AttestArgs,
    }

    #[test]
    fn arguments_are_consistent() {
        Cli::command().debug_assert();
        let cli =
            Cli::try_parse_from(["x", "/m", "--public-key", "k.pem", "--format", "json"]).unwrap();
        assert_eq!(cli.args.format, Format::Json);
        let both =
            Cli::try_parse_from(["x", "/m", "--public-key", "k", "--certificate-chain", "c"]);
        assert!(both.is_err(), "a key and a CA at once must be refused");
    }

    #[test]
    fn bundles_in_buckets_are_model_files_only_under_the_model_prefix() {
        let loc = |s: &str| Location::parse(s).unwrap();
        let model = loc("s3://models/llama/8b/");
        assert_eq!(
            name_under(&model, &loc("s3://models/llama/8b/sigs/model.sig")).as_deref(),
            Some("sigs/model.sig")
        );
        for elsewhere in [
            "s3://models/llama/8b-sigs/model.sig",
            "s3://other/llama/8b/model.sig",
            "gs://models/llama/8b/model.sig",
            "s3://models/llama/8b",
        ] {
            assert_eq!(name_under(&model, &loc(elsewhere)), None, "{elsewhere}");
        }
        assert_eq!(
            name_under(&loc("gs://whole"), &loc("gs://whole/a/b.sig")).as_deref(),
            Some("a/b.sig")
        );
        assert_eq!(
            split_object(&loc("s3://sigs/release/llama.sig")),
            Some((loc("s3://sigs/release"), "llama.sig".to_owned()))
        );
        assert_eq!(
            split_object(&loc("gs://sigs/llama.sig")),
            Some((loc("gs://sigs"), "llama.sig".to_owned()))
        );
        assert_eq!(split_object(&loc("s3://sigs")), None);
    }

    #[test]
    fn policy_serialization_follows_model_signing() {
        use lotabots_crds::model_attestation::Integrity;
        let spec = |algorithm, shard_size_bytes| ModelAttestationSpec {
            source: Default::default(),
            integrity: Integrity {
                algorithm,
                shard_size_bytes,
                expected_digest: None,
            },
            signature: None,
            policy: Default::default(),
            behaviour: None,
        };
        let s = policy_serialization(Some(&spec(HashAlgorithm::Sha256, Some(4096))));
        assert_eq!(s.method, Method::Shards { shard_size: 4096 });
        // BLAKE3 is never sharded, as in model_signing.
        let s = policy_serialization(Some(&spec(HashAlgorithm::Blake3, Some(4096))));
        assert_eq!(s.method, Method::Files);
        assert_eq!(
            policy_serialization(None),
            Serialization::files(HashAlgorithm::Sha256)
        );
    }
}
