//! Confidential computing: verification of a Hopper GPU's SPDM 1.1 attestation report.
//!
//! The report is NVIDIA's concatenation of the `GET_MEASUREMENTS` request (carrying the
//! verifier's nonce) and the signed `MEASUREMENTS` response; the device certificate chain
//! comes as PEM, leaf first. [`verify_report`] runs these checks, in this order, and records
//! one or more findings for each (a check that cannot run says why, never passes silently):
//!
//! 1. [`CcCheck::Parse`]: the report parses as SPDM 1.1 request + response (bounded; errors
//!    name the field and its offset).
//! 2. [`CcCheck::Nonce`]: the request's nonce equals the nonce the verifier issued.
//! 3. [`CcCheck::Chain`]: every certificate is issued and signed by the next, up to the
//!    pinned NVIDIA device identity root compiled into the binary, or a root given explicitly.
//! 4. [`CcCheck::Validity`]: every certificate of the path, root included, is valid at `at`.
//! 5. [`CcCheck::Signature`]: the report's ECDSA P-384 / SHA-384 signature over request and
//!    response (up to the signature) verifies with the leaf's key.
//! 6. [`CcCheck::Fwid`]: the FWID in the leaf certificate (TCG DICE extension) equals the
//!    report's FWID; reports from older drivers carry none, and the finding says so.
//! 7. With a reference bundle ([`CcInput::with_reference_bundle`], see [`bundle`]):
//!    [`CcCheck::RimVersion`]: the bundle has a driver RIM for the report's driver version and
//!    a VBIOS RIM for its VBIOS version (opaque data); [`CcCheck::RimSignature`]: each RIM's
//!    enveloped XML signature verifies; [`CcCheck::RimChain`]: each RIM's signing chain leads
//!    to the pinned NVIDIA RIM root (or the bundle's override, allowed explicitly) and is
//!    valid at `at`.
//! 8. [`CcCheck::ReferenceValues`]: every active reference measurement of the two RIMs
//!    equals the report's block at that index (any alternative); each mismatch or missing
//!    block is a failure naming the index, the expected and the found digests. Without a
//!    bundle: a [`Severity::Note`] says "measurements not checked against reference values".
//! 9. [`CcCheck::Revocation`]: the recorded OCSP responses say every device certificate
//!    (but the GPU-made leaf and the root) and every RIM signing certificate (but the root)
//!    is good at `at`; revoked fails naming the certificate, a missing response fails or is
//!    a note as the bundle's `missingOcsp` says. Without a bundle: a note says revocation
//!    was not checked.
//!
//! Pure functions: no I/O, no clock (the time to judge validity at is an input).

pub mod bundle;
pub mod c14n;
pub mod chain;
pub mod ocsp;
pub mod reference;
pub mod rim;
pub mod spdm;
pub mod xmldsig;

use jiff::Timestamp;
use ring::signature::{ECDSA_P384_SHA384_FIXED, UnparsedPublicKey};
use serde::Serialize;

pub use bundle::{BundleError, BundleOptions, ReferenceBundle};
pub use spdm::{ParseError, ParsedReport, decode_report, parse_report};

/// The pinned NVIDIA device identity root ("NVIDIA Device Identity CA"), as shipped in
/// NVIDIA's `nv-local-gpu-verifier` 2.7.3 (`verifier/certs/verifier_device_root.pem`).
/// SHA-256 of the DER: `102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48`.
pub const NVIDIA_DEVICE_ROOT_PEM: &str = include_str!("roots/nvidia_device_identity_ca.pem");

/// The pinned NVIDIA RIM root ("NVIDIA CoRIM signing Root CA"), as shipped in NVIDIA's
/// `nv-local-gpu-verifier` 2.7.3 (`verifier/certs/verifier_RIM_root.pem`), valid until 2053.
/// SHA-256 of the DER: `12977b5115acb0381179279fffeb5a8c4d264971ebb32298023a465fa41df5d1`.
pub const NVIDIA_RIM_ROOT_PEM: &str = include_str!("roots/nvidia_rim_root.pem");

/// What to verify.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CcInput<'a> {
    /// The report, binary (see [`decode_report`] for NVIDIA's hex text).
    pub report: &'a [u8],
    /// The device certificate chain, PEM, leaf first (the root may be included).
    pub chain_pem: &'a [u8],
    /// The nonce the verifier issued.
    pub expected_nonce: &'a [u8; 32],
    /// A root (PEM, one certificate) that replaces the pinned NVIDIA root; `None`: pinned.
    pub root: Option<&'a [u8]>,
    /// The time to judge certificate validity at.
    pub at: Timestamp,
    /// RIMs and OCSP responses to judge measurements and revocation with; `None`: those
    /// two checks are notes saying they were not done.
    pub reference: Option<&'a ReferenceBundle>,
}

impl<'a> CcInput<'a> {
    /// Verifies against the pinned NVIDIA root.
    pub fn new(
        report: &'a [u8],
        chain_pem: &'a [u8],
        expected_nonce: &'a [u8; 32],
        at: Timestamp,
    ) -> Self {
        Self {
            report,
            chain_pem,
            expected_nonce,
            root: None,
            at,
            reference: None,
        }
    }

    /// Replaces the pinned NVIDIA root with `root_pem` (explicit; the chain finding names it).
    pub fn with_root(mut self, root_pem: &'a [u8]) -> Self {
        self.root = Some(root_pem);
        self
    }

    /// Judges the measurements and revocation with `bundle` (see [`bundle`]).
    pub fn with_reference_bundle(mut self, bundle: &'a ReferenceBundle) -> Self {
        self.reference = Some(bundle);
        self
    }
}

/// How much a finding weighs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Severity {
    /// The check ran and passed.
    Passed,
    /// Information a person should see, no effect on the verdict (e.g. what was not checked).
    Note,
    /// The check could not run (e.g. the report did not parse, so its signature could not be
    /// checked): the evidence is not attested, but nothing was shown false either.
    Unknown,
    /// The check ran and failed.
    Failed,
}

/// The checks, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub enum CcCheck {
    Parse,
    Nonce,
    Chain,
    Validity,
    Signature,
    Fwid,
    RimVersion,
    RimSignature,
    RimChain,
    ReferenceValues,
    Revocation,
}

impl CcCheck {
    /// A short name for tables and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Parse => "report format",
            Self::Nonce => "nonce",
            Self::Chain => "certificate chain",
            Self::Validity => "certificate validity",
            Self::Signature => "report signature",
            Self::Fwid => "FWID",
            Self::RimVersion => "RIM version",
            Self::RimSignature => "RIM signature",
            Self::RimChain => "RIM certificate chain",
            Self::ReferenceValues => "reference values",
            Self::Revocation => "revocation",
        }
    }
}

/// One finding: which check, how it weighs, and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CcFinding {
    pub severity: Severity,
    pub check: CcCheck,
    pub message: String,
}

/// The overall result, from the heaviest finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum CcVerdict {
    /// No failure and nothing unknown (notes allowed: they say what was not checked).
    Attested,
    /// At least one check could not run, none failed.
    Unknown,
    /// At least one check failed.
    Failed,
}

/// What [`verify_report`] found.
#[derive(Clone, Debug, Serialize)]
pub struct CcOutcome {
    /// Findings in the order the checks ran.
    pub findings: Vec<CcFinding>,
    /// The parsed report, when it parsed (even if other checks failed).
    pub parsed: Option<ParsedReport>,
}

impl CcOutcome {
    /// Failed if any finding failed; else Unknown if any is unknown; else Attested.
    pub fn verdict(&self) -> CcVerdict {
        match self.findings.iter().map(|f| f.severity).max() {
            Some(Severity::Failed) => CcVerdict::Failed,
            Some(Severity::Unknown) => CcVerdict::Unknown,
            _ => CcVerdict::Attested,
        }
    }

    /// The findings of one check.
    pub fn of(&self, check: CcCheck) -> impl Iterator<Item = &CcFinding> {
        self.findings.iter().filter(move |f| f.check == check)
    }

    /// The findings that are failures or unknowns (the reasons a report is not attested).
    pub fn problems(&self) -> impl Iterator<Item = &CcFinding> {
        self.findings
            .iter()
            .filter(|f| f.severity >= Severity::Unknown)
    }
}

pub(crate) struct Findings(Vec<CcFinding>);

impl Findings {
    fn push(&mut self, severity: Severity, check: CcCheck, message: impl Into<String>) {
        self.0.push(CcFinding {
            severity,
            check,
            message: message.into(),
        });
    }
}

/// Verifies a report; see the module documentation for the checks and their order.
pub fn verify_report(input: &CcInput<'_>) -> CcOutcome {
    let mut f = Findings(Vec::new());

    // 1. Parse.
    let parsed = match parse_report(input.report) {
        Ok(p) => {
            f.push(
                Severity::Passed,
                CcCheck::Parse,
                format!(
                    "SPDM 1.1 measurement report: {} bytes, {} measurement blocks, {} opaque fields",
                    input.report.len(),
                    p.response.blocks.len(),
                    p.response.opaque.len()
                ),
            );
            Some(p)
        }
        Err(e) => {
            f.push(
                Severity::Failed,
                CcCheck::Parse,
                format!("attestation report unusable: {e}"),
            );
            None
        }
    };

    // 2. Nonce.
    match &parsed {
        Some(p) if p.request.nonce == *input.expected_nonce => f.push(
            Severity::Passed,
            CcCheck::Nonce,
            format!(
                "request nonce {} is the issued nonce",
                hex::encode(p.request.nonce)
            ),
        ),
        Some(p) => f.push(
            Severity::Failed,
            CcCheck::Nonce,
            format!(
                "request nonce {} is not the issued nonce {} (stale or replayed report)",
                hex::encode(p.request.nonce),
                hex::encode(input.expected_nonce)
            ),
        ),
        None => f.push(
            Severity::Unknown,
            CcCheck::Nonce,
            "nonce not checked: the report did not parse",
        ),
    }

    // 3. Chain. The DER buffers outlive the parsed certificates that borrow them.
    let root_label = if input.root.is_some() {
        "custom root given explicitly instead of the pinned NVIDIA root"
    } else {
        "pinned NVIDIA device identity root"
    };
    let chain_ders = chain::read_pem_certs(input.chain_pem, "certificate chain");
    let root_ders = chain::read_pem_certs(
        input.root.unwrap_or(NVIDIA_DEVICE_ROOT_PEM.as_bytes()),
        root_label,
    )
    .and_then(|ders| {
        if ders.len() == 1 {
            Ok(ders)
        } else {
            Err(format!(
                "{root_label}: {} certificates, expected exactly one",
                ders.len()
            ))
        }
    });
    let chain = chain_ders
        .as_deref()
        .map_err(Clone::clone)
        .and_then(|d| chain::parse_certs(d, "certificate chain"));
    let root = root_ders
        .as_deref()
        .map_err(Clone::clone)
        .and_then(|d| chain::parse_certs(d, root_label))
        .and_then(|v| {
            v.into_iter()
                .next()
                .ok_or_else(|| format!("{root_label}: no certificate"))
        });
    match (&chain, &root) {
        (Err(e), _) | (_, Err(e)) => {
            f.push(Severity::Failed, CcCheck::Chain, e.clone());
        }
        (Ok(chain), Ok(root)) => match chain::verify_chain(chain, root, root_label) {
            Ok(path) => f.push(Severity::Passed, CcCheck::Chain, path),
            Err(e) => f.push(Severity::Failed, CcCheck::Chain, e),
        },
    }

    // 4. Validity of every certificate on the path, the root included.
    match (&chain, &root) {
        (Ok(chain), Ok(root)) => {
            let n = chain.len();
            let mut named: Vec<(String, &x509_parser::certificate::X509Certificate<'_>)> = chain
                .iter()
                .enumerate()
                .map(|(i, c)| (chain::describe(c, i, n), c))
                .collect();
            if chain.last().map(|c| c.as_raw()) != Some(root.as_raw()) {
                named.push((
                    format!("the {root_label} ({})", chain::subject_name(root)),
                    root,
                ));
            }
            let failures: Vec<String> = named
                .iter()
                .filter_map(|(name, c)| chain::check_validity(c, name, input.at).err())
                .collect();
            if failures.is_empty() {
                f.push(
                    Severity::Passed,
                    CcCheck::Validity,
                    format!("all {} certificates valid at {}", named.len(), input.at),
                );
            }
            for msg in failures {
                f.push(Severity::Failed, CcCheck::Validity, msg);
            }
        }
        _ => f.push(
            Severity::Unknown,
            CcCheck::Validity,
            "certificate validity not checked: the certificates did not parse",
        ),
    }

    // 5. Signature, with the leaf's key.
    let leaf = chain.as_ref().ok().and_then(|c| c.first());
    match (&parsed, leaf) {
        (Some(p), Some(leaf)) => match chain::p384_public_key(leaf) {
            Ok(point) => {
                let key = UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, point);
                let signed = input.report.get(..p.signed_len).unwrap_or_default();
                match key.verify(signed, &p.response.signature) {
                    Ok(()) => f.push(
                        Severity::Passed,
                        CcCheck::Signature,
                        format!(
                            "ECDSA P-384/SHA-384 signature over request and response ({} bytes) \
                             verifies with the leaf key ({})",
                            p.signed_len,
                            chain::subject_name(leaf)
                        ),
                    ),
                    Err(_) => f.push(
                        Severity::Failed,
                        CcCheck::Signature,
                        format!(
                            "the report's ECDSA P-384/SHA-384 signature does not verify with the \
                             leaf key ({}): the report was altered or signed by another device",
                            chain::subject_name(leaf)
                        ),
                    ),
                }
            }
            Err(e) => f.push(Severity::Failed, CcCheck::Signature, e),
        },
        (None, _) => f.push(
            Severity::Unknown,
            CcCheck::Signature,
            "signature not checked: the report did not parse",
        ),
        (_, None) => f.push(
            Severity::Unknown,
            CcCheck::Signature,
            "signature not checked: no usable leaf certificate",
        ),
    }

    // 6. FWID: leaf certificate against report.
    match (&parsed, leaf) {
        (Some(p), Some(leaf)) => {
            let cert_fwid = chain::leaf_fwid(leaf);
            match (p.fwid(), cert_fwid) {
                (_, Err(e)) => f.push(Severity::Failed, CcCheck::Fwid, e),
                (None, Ok(cert)) => f.push(
                    Severity::Note,
                    CcCheck::Fwid,
                    format!(
                        "the report carries no FWID (older drivers omit it), so the leaf \
                         certificate's FWID{} was not compared",
                        cert.map(|c| format!(" {}", hex::encode(c.digest)))
                            .unwrap_or_default()
                    ),
                ),
                (Some(report), Ok(None)) => f.push(
                    Severity::Failed,
                    CcCheck::Fwid,
                    format!(
                        "the report carries FWID {} but the leaf certificate has no TCG DICE \
                         FWID extension ({})",
                        hex::encode(report),
                        chain::FWID_OIDS[0]
                    ),
                ),
                (Some(report), Ok(Some(cert))) if cert.digest == report => f.push(
                    Severity::Passed,
                    CcCheck::Fwid,
                    format!(
                        "FWID {} in the report matches the leaf certificate",
                        hex::encode(report)
                    ),
                ),
                (Some(report), Ok(Some(cert))) => f.push(
                    Severity::Failed,
                    CcCheck::Fwid,
                    format!(
                        "report FWID {} differs from the leaf certificate's FWID {}: the report \
                         comes from other firmware than the certificate attests",
                        hex::encode(report),
                        hex::encode(&cert.digest)
                    ),
                ),
            }
        }
        (None, _) => f.push(
            Severity::Unknown,
            CcCheck::Fwid,
            "FWID not checked: the report did not parse",
        ),
        (_, None) => f.push(
            Severity::Unknown,
            CcCheck::Fwid,
            "FWID not checked: no usable leaf certificate",
        ),
    }

    // 7-9. Reference values and revocation, with a bundle; without one, said plainly.
    match input.reference {
        Some(bundle) => {
            let path = match (&chain, &root) {
                (Ok(chain), Ok(root)) => {
                    let mut path: Vec<&x509_parser::certificate::X509Certificate<'_>> =
                        chain.iter().collect();
                    if chain.last().map(|c| c.as_raw()) != Some(root.as_raw()) {
                        path.push(root);
                    }
                    Some(path)
                }
                _ => None,
            };
            reference::check(&mut f, bundle, parsed.as_ref(), path.as_deref(), input.at);
        }
        None => {
            f.push(
                Severity::Note,
                CcCheck::ReferenceValues,
                "measurements not checked against reference values (no RIM bundle): attested \
                 on identity and freshness only",
            );
            f.push(
                Severity::Note,
                CcCheck::Revocation,
                "certificate revocation not checked (no OCSP responses)",
            );
        }
    }

    CcOutcome {
        findings: f.0,
        parsed,
    }
}
