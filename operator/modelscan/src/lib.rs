//! lotabots model safety scan and compliance rules.
//!
//! The scan decides, without loading anything, whether a model's files are safe to hand to a
//! loader: pickles (raw, or inside PyTorch zip archives) are walked opcode by opcode and every
//! global they import is checked against an allowlist ([`pickle::allowlist`]); safetensors
//! and GGUF headers are checked for consistency. It **fails closed**: a file that cannot be
//! parsed, that exceeds a budget of [`ScanLimits`], or whose format is not recognised is
//! [`Verdict::Unsafe`] or [`Verdict::Unknown`], never [`Verdict::Safe`]. Files are streamed;
//! only headers, short strings and bounded metadata are held in memory.
//!
//! [`compliance`] evaluates a model directory against a [`compliance::CompliancePolicy`]:
//! licence allowlist (SPDX, from the model card's front matter), required model-card
//! fields, the EU AI Act Annex XI documentation profile, total size and allowed formats.
//!
//! ```no_run
//! use lotabots_modelscan::{compliance, scan_path, ScanLimits, Verdict};
//! let dir = std::path::Path::new("/models/minilm");
//! let report = scan_path(dir, &ScanLimits::default()).expect("readable directory");
//! for f in report.findings() {
//!     eprintln!("{f}");
//! }
//! let facts = compliance::ModelFacts::gather(dir, &report).expect("readable model card");
//! let verdict = compliance::evaluate(&facts, &compliance::CompliancePolicy::default());
//! assert!(report.verdict == Verdict::Safe && verdict.passed());
//! ```

mod archive;
pub mod compliance;
#[cfg(feature = "crds")]
mod crd;
mod detect;
pub mod gguf;
mod limits;
pub mod pickle;
mod report;
pub mod safetensors;
mod stream;
mod text;
mod walk;

pub use limits::ScanLimits;
pub use report::{
    FileReport, Finding, FindingKind, Format, Issue, PickleHandling, ScanReport, Verdict,
};
pub use walk::{ScanError, scan_file, scan_path, scan_reader};
