//! `lotabots-operator verify-gpu-evidence`: one evidence document judged offline, by the
//! same verifier the evidence API's controller runs, for CI pipelines and incident review.
//!
//! Exit codes, as the project's other offline commands: 0 attested; 1 failed or unknown
//! (every reason printed); 2 unusable input (the message names the file and the problem).
//!
//! With `--reference-bundle` the confidential-computing reports (of `--report` and of the
//! evidence's GPUs alike) are judged against the bundle's RIMs and OCSP responses, through
//! the same [`Context::reference_bundle`] the operator's controller uses.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use lotabots_crds::evidence::{NodeEvidence, parse_nonce};
use lotabots_crds::gpu_attestation::{GpuAttestation, GpuPolicy, Verdict};
use lotabots_verifier::cc::{
    BundleOptions, CcInput, ReferenceBundle, decode_report, verify_report,
};
use lotabots_verifier::{Context, NodeVerdict, cc_findings, verify_node};
use serde::Serialize;
use sha2::{Digest, Sha256};

/// `schemaVersion` of the JSON verdict document. v1alpha2 added `check` to the findings
/// of confidential-computing reports (`parse`, …, `rimVersion`, `rimSignature`, `rimChain`,
/// `referenceValues`, `revocation`) and `referenceBundleDigest`.
pub const VERDICT_SCHEMA: &str = "lotabots.io/gpu-verdict/v1alpha2";

/// What to verify.
#[derive(Debug, Clone)]
pub struct VerifyArgs {
    /// The agent's evidence document (JSON).
    pub evidence: Option<PathBuf>,
    /// An SPDM measurement exchange (hex or binary), verified with `chain`.
    pub report: Option<PathBuf>,
    /// The device certificate chain of `report` (PEM, leaf first).
    pub chain: Option<PathBuf>,
    /// A device root to use instead of the pinned NVIDIA root (PEM).
    pub device_root: Option<PathBuf>,
    /// The nonce issued for it (64 hex characters).
    pub nonce: String,
    /// A GpuAttestation whose policy applies; none: only the envelope is checked.
    pub policy: Option<PathBuf>,
    /// Judge at this time instead of now.
    pub at: Option<Timestamp>,
    /// Oldest evidence accepted.
    pub max_age: Duration,
    /// Accept evidence from the simulated backend.
    pub allow_simulated: bool,
    /// RIMs and OCSP responses to judge confidential-computing reports with (JSON).
    pub reference_bundle: Option<PathBuf>,
    /// Accept the bundle's `rimRootOverride` instead of the pinned NVIDIA RIM root.
    pub allow_rim_root_override: bool,
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

/// The stable, archivable verdict document of `--format json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerdictDocument {
    /// Always [`VERDICT_SCHEMA`].
    pub schema_version: &'static str,
    /// `Attested`, `Failed` or `Unknown`.
    pub verdict: Verdict,
    /// The node the evidence names (empty without evidence).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// `sha256:` over the evidence's canonical JSON (RFC 8785).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub evidence_digest: Option<String>,
    /// `sha256:` over the SPDM report's bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report_digest: Option<String>,
    /// `sha256:` over the reference bundle's bytes, when one was used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_bundle_digest: Option<String>,
    /// The policy applied (the GpuAttestation's name), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The time the evidence was judged at.
    pub checked_at: Timestamp,
    /// Every finding, failures first.
    pub findings: Vec<lotabots_verifier::Finding>,
}

impl VerdictDocument {
    /// The process exit code for this verdict.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.verdict != Verdict::Attested)
    }

    /// The `--format table` view.
    pub fn render_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "VERDICT   {}", self.verdict);
        let _ = writeln!(
            s,
            "NODE      {}",
            if self.node.is_empty() {
                "-"
            } else {
                &self.node
            }
        );
        let _ = writeln!(
            s,
            "POLICY    {}",
            self.policy
                .as_deref()
                .unwrap_or("(none: envelope checks only)")
        );
        if let Some(d) = &self.evidence_digest {
            let _ = writeln!(s, "EVIDENCE  {d}");
        }
        if let Some(d) = &self.report_digest {
            let _ = writeln!(s, "REPORT    {d}");
        }
        if let Some(d) = &self.reference_bundle_digest {
            let _ = writeln!(s, "BUNDLE    {d}");
        }
        let _ = writeln!(s, "CHECKED   {}", self.checked_at);
        if self.findings.is_empty() {
            let _ = writeln!(s, "\nno findings: every rule of the policy holds");
            return s;
        }
        let _ = writeln!(s, "\n{:<14} {:<22} {:<4} MESSAGE", "OUTCOME", "RULE", "GPU");
        for f in &self.findings {
            let gpu = f.gpu.map(|g| g.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                s,
                "{:<14} {:<22} {:<4} {}",
                format!("{:?}", f.outcome),
                format!("{:?}", f.rule),
                gpu,
                f.message
            );
        }
        s
    }
}

/// Reads the inputs and judges the evidence and/or the report.
pub fn verify(args: &VerifyArgs) -> Result<VerdictDocument, InputError> {
    let flag = |f: &str, problem: &str| InputError {
        path: f.into(),
        problem: problem.into(),
    };
    let nonce = parse_nonce(&args.nonce).map_err(|e| flag("--nonce", &e.to_string()))?;
    if args.evidence.is_none() && args.report.is_none() {
        return Err(flag(
            "--evidence",
            "give --evidence FILE, --report FILE --chain FILE, or both",
        ));
    }
    if args.report.is_some() != args.chain.is_some() {
        return Err(flag("--report", "--report and --chain go together"));
    }
    let checked_at = args.at.unwrap_or_else(Timestamp::now);
    let bundle = match &args.reference_bundle {
        Some(path) => {
            let (bundle, digest) = load_reference_bundle(path, args.allow_rim_root_override)?;
            if bundle.rim_root_override.is_some() {
                eprintln!(
                    "lotabots-operator: using the RIM root of {} instead of the pinned NVIDIA RIM root",
                    path.display()
                );
            }
            Some((Arc::new(bundle), digest))
        }
        None if args.allow_rim_root_override => {
            return Err(flag(
                "--allow-rim-root-override",
                "only applies with --reference-bundle",
            ));
        }
        None => None,
    };
    let mut findings = Vec::new();
    let mut doc = VerdictDocument {
        schema_version: VERDICT_SCHEMA,
        verdict: Verdict::Unknown,
        node: String::new(),
        evidence_digest: None,
        report_digest: None,
        reference_bundle_digest: None,
        policy: None,
        checked_at,
        findings: Vec::new(),
    };
    doc.reference_bundle_digest = bundle.as_ref().map(|(_, d)| d.clone());
    let bundle = bundle.map(|(b, _)| b);
    if let Some(path) = &args.evidence {
        let evidence: NodeEvidence = read_json(path)?;
        doc.evidence_digest = Some(
            evidence
                .digest()
                .map_err(|e| input(path, format!("does not canonicalise: {e}")))?,
        );
        let policy = match &args.policy {
            Some(p) => {
                let att = read_policy(p)?;
                doc.policy = att.metadata.name.clone();
                att.spec.policy
            }
            None => GpuPolicy::default(),
        };
        let ctx = Context {
            expected_nonce: Some(hex::encode(nonce)),
            max_age: args.max_age,
            allow_simulated: args.allow_simulated,
            reference_bundle: bundle.clone(),
            ..Context::at(checked_at)
        };
        findings.extend(verify_node(&evidence, &policy, &ctx).findings);
        doc.node = evidence.node_name;
    }
    if let (Some(report_path), Some(chain_path)) = (&args.report, &args.chain) {
        let report = decode_report(&read(report_path)?)
            .map_err(|e| input(report_path, format!("not an SPDM report: {e}")))?;
        let chain = read(chain_path)?;
        doc.report_digest = Some(format!("sha256:{}", hex::encode(Sha256::digest(&report))));
        let root = args.device_root.as_deref().map(read).transpose()?;
        let mut input = CcInput::new(&report, &chain, &nonce, checked_at);
        if let (Some(root), Some(path)) = (root.as_deref(), &args.device_root) {
            eprintln!(
                "lotabots-operator: using the device root {} instead of the pinned NVIDIA root",
                path.display()
            );
            input = input.with_root(root);
        }
        if let Some(bundle) = &bundle {
            input = input.with_reference_bundle(bundle);
        }
        let outcome = verify_report(&input);
        findings.extend(cc_findings(
            &outcome,
            None,
            &report_path.display().to_string(),
        ));
    }
    let verdict = NodeVerdict::from_findings(findings);
    doc.verdict = verdict.verdict;
    doc.findings = verdict.findings;
    Ok(doc)
}

/// Reads and loads a reference bundle (see `lotabots_verifier::cc::bundle`), returning it
/// with `sha256:` over its bytes. The error names the file and the field at fault.
pub fn load_reference_bundle(
    path: &Path,
    allow_rim_root_override: bool,
) -> Result<(ReferenceBundle, String), InputError> {
    let bytes = read(path)?;
    let bundle = ReferenceBundle::from_json(
        &bytes,
        BundleOptions {
            allow_rim_root_override,
        },
    )
    .map_err(|e| input(path, format!("not a usable reference bundle: {e}")))?;
    Ok((
        bundle,
        format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
    ))
}

fn input(path: &Path, problem: impl Into<String>) -> InputError {
    InputError {
        path: path.display().to_string(),
        problem: problem.into(),
    }
}

fn read(path: &Path) -> Result<Vec<u8>, InputError> {
    std::fs::read(path).map_err(|e| input(path, format!("cannot read: {e}")))
}

fn read_json(path: &Path) -> Result<NodeEvidence, InputError> {
    let bytes = read(path)?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&bytes)).map_err(
        |e| {
            input(
                path,
                format!("not an evidence document: at {}: {}", e.path(), e.inner()),
            )
        },
    )
}

fn read_policy(path: &Path) -> Result<GpuAttestation, InputError> {
    let bytes = read(path)?;
    let value: serde_yaml::Value =
        serde_yaml::from_slice(&bytes).map_err(|e| input(path, format!("not YAML: {e}")))?;
    let kind = value.get("kind").and_then(serde_yaml::Value::as_str);
    let api_version = value.get("apiVersion").and_then(serde_yaml::Value::as_str);
    if kind != Some("GpuAttestation") || api_version != Some("lotabots.io/v1alpha1") {
        return Err(input(
            path,
            format!(
                "not a GpuAttestation (apiVersion {api_version:?}, kind {kind:?}; expected lotabots.io/v1alpha1 GpuAttestation)"
            ),
        ));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        input(
            path,
            format!("not a GpuAttestation: at {}: {}", e.path(), e.inner()),
        )
    })
}
