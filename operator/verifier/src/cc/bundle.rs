//! The offline reference bundle: what a verifier without network access needs to judge a
//! GPU's measurements and certificates the way NVIDIA's online services would — the RIMs
//! of the driver and VBIOS releases in the fleet, and recorded OCSP responses for the
//! device certificate chains and the RIM signing chains. See `REFERENCE_BUNDLE.md` for the
//! format with an example; in short (JSON):
//!
//! ```json
//! {
//!   "schemaVersion": "lotabots.io/cc-reference-bundle/v1alpha1",
//!   "rims": [
//!     { "kind": "driver", "swidtag": "<SoftwareIdentity …>…</SoftwareIdentity>" },
//!     { "kind": "vbios",  "swidtag": "<SoftwareIdentity …>…</SoftwareIdentity>" }
//!   ],
//!   "ocspResponses": ["MIIG…(base64 DER OCSPResponse)", "…"],
//!   "missingOcsp": "fail",
//!   "rimRootOverride": "-----BEGIN CERTIFICATE-----…"
//! }
//! ```
//!
//! - `rims`: NVIDIA's signed SWID tags, unchanged (as the RIM service serves them), each
//!   with the firmware it describes. Any number; the verifier picks, for each report, the
//!   driver RIM and the VBIOS RIM whose `colloquialVersion` is the report's version.
//! - `ocspResponses`: DER `OCSPResponse`s, base64, in any order; each certificate's status
//!   is looked up by its `CertID`.
//! - `missingOcsp`: what a certificate without a response in the bundle does: `fail` (the
//!   default, as NVIDIA's verifier fails when it cannot get a status) or `note`.
//! - `rimRootOverride`: a PEM root replacing the pinned NVIDIA RIM root, for test fleets.
//!   Honoured only when the loader allows it explicitly ([`BundleOptions`]); otherwise a
//!   bundle carrying one is refused, so a bundle can never silently vouch for itself.
//!
//! Loading parses everything and checks each RIM's XML signature once (that does not depend
//! on time); chains, validity and revocation are judged per report, at the report's time.
//! Unknown fields are refused, and every error names the field (`rims[1].swidtag: …`).

use serde::Deserialize;

use super::ocsp::{self, ParsedOcsp};
use super::rim::{self, Rim, RimKind};
use super::{NVIDIA_RIM_ROOT_PEM, chain, reference};

/// `schemaVersion` of the bundle document.
pub const BUNDLE_SCHEMA: &str = "lotabots.io/cc-reference-bundle/v1alpha1";
/// Largest bundle accepted, in bytes.
pub const MAX_BUNDLE_LEN: usize = 32 << 20;
/// Most RIMs in one bundle.
pub const MAX_RIMS: usize = 256;
/// Most OCSP responses in one bundle.
pub const MAX_OCSP_RESPONSES: usize = 1024;

/// What a certificate without an OCSP response in the bundle does to the verdict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum MissingOcsp {
    /// Fail the report (NVIDIA's default: no status, no attestation).
    #[default]
    Fail,
    /// Say so in a note and go on.
    Note,
}

/// How a bundle may be loaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct BundleOptions {
    /// Accept the bundle's `rimRootOverride` instead of the pinned NVIDIA RIM root.
    pub allow_rim_root_override: bool,
}

/// A bundle that cannot be used: the field at fault and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleError {
    pub field: String,
    pub problem: String,
}

impl std::fmt::Display for BundleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.problem)
    }
}

impl std::error::Error for BundleError {}

/// A loaded reference bundle.
#[derive(Clone, Debug)]
pub struct ReferenceBundle {
    pub rims: Vec<Rim>,
    pub ocsp: Vec<ParsedOcsp>,
    pub missing_ocsp: MissingOcsp,
    /// The RIM root to use instead of the pinned one (PEM, one certificate), when the
    /// bundle carried one and the loader allowed it.
    pub rim_root_override: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Document {
    schema_version: String,
    rims: Vec<RimEntry>,
    #[serde(default)]
    ocsp_responses: Vec<String>,
    #[serde(default)]
    missing_ocsp: MissingOcsp,
    #[serde(default)]
    rim_root_override: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RimEntry {
    kind: RimKind,
    swidtag: String,
}

fn error(field: impl Into<String>, problem: impl Into<String>) -> BundleError {
    BundleError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl ReferenceBundle {
    /// Loads a bundle document (JSON).
    pub fn from_json(bytes: &[u8], options: BundleOptions) -> Result<Self, BundleError> {
        use base64::Engine as _;
        if bytes.len() > MAX_BUNDLE_LEN {
            return Err(error(
                "(document)",
                format!(
                    "{} bytes, more than the {MAX_BUNDLE_LEN} accepted",
                    bytes.len()
                ),
            ));
        }
        let doc: Document =
            serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(bytes))
                .map_err(|e| {
                    let path = e.path().to_string();
                    error(
                        // The root, or a field whose name is empty: name the document.
                        if path == "." || path.is_empty() {
                            "(document)".into()
                        } else {
                            path
                        },
                        e.inner().to_string(),
                    )
                })?;
        if doc.schema_version != BUNDLE_SCHEMA {
            return Err(error(
                "schemaVersion",
                format!(
                    "{:?} is not supported (expected {BUNDLE_SCHEMA})",
                    doc.schema_version
                ),
            ));
        }
        if doc.rims.is_empty() {
            return Err(error("rims", "empty: a bundle carries at least one RIM"));
        }
        if doc.rims.len() > MAX_RIMS {
            return Err(error("rims", format!("more than {MAX_RIMS} RIMs")));
        }
        if doc.ocsp_responses.len() > MAX_OCSP_RESPONSES {
            return Err(error(
                "ocspResponses",
                format!("more than {MAX_OCSP_RESPONSES} responses"),
            ));
        }
        let rims = doc
            .rims
            .iter()
            .enumerate()
            .map(|(i, r)| {
                rim::parse_rim(&r.swidtag, r.kind)
                    .map_err(|e| error(format!("rims[{i}].swidtag"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ocsp = doc
            .ocsp_responses
            .iter()
            .enumerate()
            .map(|(i, b64)| {
                let field = format!("ocspResponses[{i}]");
                let der = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| error(&field, format!("not base64: {e}")))?;
                ocsp::parse_ocsp(&der).map_err(|e| error(&field, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let rim_root_override = match doc.rim_root_override {
            None => None,
            Some(_) if !options.allow_rim_root_override => {
                return Err(error(
                    "rimRootOverride",
                    "the bundle replaces the pinned NVIDIA RIM root; it is only accepted when \
                     the override is allowed explicitly (--allow-rim-root-override)",
                ));
            }
            Some(pem) => {
                let ders = chain::read_pem_certs(pem.as_bytes(), "rimRootOverride")
                    .map_err(|e| error("rimRootOverride", e))?;
                if ders.len() != 1 {
                    return Err(error(
                        "rimRootOverride",
                        format!("{} certificates, expected exactly one", ders.len()),
                    ));
                }
                chain::parse_certs(&ders, "rimRootOverride")
                    .map_err(|e| error("rimRootOverride", e))?;
                Some(pem.into_bytes())
            }
        };
        // The time-independent part of each RIM's chain check, once per bundle rather than
        // once per report.
        let (root_pem, root_label) = match &rim_root_override {
            Some(pem) => (pem.as_slice(), reference::OVERRIDE_ROOT_LABEL),
            None => (NVIDIA_RIM_ROOT_PEM.as_bytes(), reference::PINNED_ROOT_LABEL),
        };
        let mut rims = rims;
        for rim in &mut rims {
            if rim.signature.is_ok() {
                rim.links = Some(reference::rim_links(rim, root_pem, root_label));
            }
        }
        Ok(Self {
            rims,
            ocsp,
            missing_ocsp: doc.missing_ocsp,
            rim_root_override,
        })
    }
}
