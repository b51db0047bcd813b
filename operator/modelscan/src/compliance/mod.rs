//! Compliance rules: licence allowlist, required model-card fields, the EU AI Act
//! Annex XI documentation profile, total size and allowed formats. Each rule that fails is
//! named in the [`ComplianceReport`] with its reasons.
//!
//! The facts come from the model's directory (its `README.md` model card) and from the
//! [`ScanReport`] (formats and sizes), so compliance needs no second pass over the files:
//!
//! ```no_run
//! # use lotabots_modelscan::{compliance::*, scan_path, ScanLimits};
//! # let dir = std::path::Path::new("model");
//! let scan = scan_path(dir, &ScanLimits::default()).unwrap();
//! let facts = ModelFacts::gather(dir, &scan).unwrap();
//! let policy = CompliancePolicy { allowed_licenses: vec!["Apache-2.0".into()], ..Default::default() };
//! for failure in evaluate(&facts, &policy).failures() {
//!     eprintln!("{}: {}", failure.rule, failure.reasons.join("; "));
//! }
//! ```

pub mod annex_xi;
mod card;
pub mod license;

use std::{
    collections::BTreeSet,
    fmt,
    fs::File,
    io::{self, Read},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

pub use card::{CardError, MAX_CARD_BYTES, ModelCard, Section};

use crate::{Format, ScanReport};

/// File name of the model card in a model directory.
pub const MODEL_CARD: &str = "README.md";

/// What a model must comply with. The default requires nothing beyond the formats the
/// `ModelAttestation` CRD allows by default (safetensors, GGUF, ONNX).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct CompliancePolicy {
    /// Weight formats the model may consist of. JSON and plain text files (configs,
    /// tokenizers, the card) are always allowed; code and unknown formats never are.
    pub allowed_formats: BTreeSet<Format>,
    /// SPDX ids the model card's `license` may use. Empty: any licence, none required.
    pub allowed_licenses: Vec<String>,
    /// Front-matter fields (dotted paths) the model card must have, not empty.
    pub required_model_card_fields: Vec<String>,
    /// Whether the card must document every item of EU AI Act Annex XI, Section 1.
    pub annex_xi: bool,
    /// Largest total size of the model's files, in bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_size_bytes: Option<u64>,
}

impl Default for CompliancePolicy {
    fn default() -> Self {
        Self {
            allowed_formats: [Format::Safetensors, Format::Gguf, Format::Onnx].into(),
            allowed_licenses: Vec::new(),
            required_model_card_fields: Vec::new(),
            annex_xi: false,
            max_size_bytes: None,
        }
    }
}

/// Why the facts could not be gathered.
#[derive(Debug, thiserror::Error)]
pub enum ComplianceError {
    /// The model card exists but cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The card's path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// What compliance is judged on.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFacts {
    /// The parsed model card, or why there is none usable.
    pub card: Result<ModelCard, String>,
    /// Every file with its detected format.
    pub files: Vec<(String, Format)>,
    /// Total size in bytes.
    pub total_size: u64,
}

impl ModelFacts {
    /// Facts from a scan and the model card text (`None`: the model has no card).
    pub fn from_parts(card_markdown: Option<&str>, scan: &ScanReport) -> Self {
        let card = match card_markdown {
            None => Err(format!("the model has no {MODEL_CARD}")),
            Some(md) => ModelCard::parse(md).map_err(|e| e.to_string()),
        };
        Self {
            card,
            files: scan
                .files
                .iter()
                .map(|f| (f.path.clone(), f.format))
                .collect(),
            total_size: scan.total_size(),
        }
    }

    /// Facts from a scan and the card found at `path`: `path/README.md` for a directory,
    /// `path` itself for a Markdown file; none for another file. A card over
    /// [`MAX_CARD_BYTES`] or not UTF-8 is an unusable card, not an error.
    pub fn gather(path: &Path, scan: &ScanReport) -> Result<Self, ComplianceError> {
        let card_path = if path.is_dir() {
            path.join(MODEL_CARD)
        } else if path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("md"))
        {
            path.to_owned()
        } else {
            return Ok(Self::from_parts(None, scan));
        };
        let file = match File::open(&card_path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Self::from_parts(None, scan));
            }
            Err(source) => {
                return Err(ComplianceError::Io {
                    path: card_path,
                    source,
                });
            }
        };
        let mut bytes = Vec::new();
        file.take(MAX_CARD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| ComplianceError::Io {
                path: card_path.clone(),
                source,
            })?;
        let mut facts = Self::from_parts(None, scan);
        facts.card = if bytes.len() as u64 > MAX_CARD_BYTES {
            Err(format!(
                "{MODEL_CARD} is larger than {MAX_CARD_BYTES} bytes"
            ))
        } else {
            String::from_utf8(bytes)
                .map_err(|_| format!("{MODEL_CARD} is not UTF-8"))
                .and_then(|md| ModelCard::parse(&md).map_err(|e| e.to_string()))
        };
        Ok(facts)
    }
}

/// A compliance rule.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    /// The licence is in the allowlist.
    License,
    /// The model card has the required fields.
    ModelCardFields,
    /// The model card documents EU AI Act Annex XI, Section 1.
    AnnexXi,
    /// The model is no larger than the limit.
    MaxSize,
    /// Every file is in an allowed format.
    AllowedFormats,
}

impl Rule {
    /// The rule's stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::License => "license",
            Self::ModelCardFields => "model-card-fields",
            Self::AnnexXi => "annex-xi",
            Self::MaxSize => "max-size",
            Self::AllowedFormats => "allowed-formats",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one rule came out.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The rule held.
    Passed,
    /// The rule failed; the reasons say why.
    Failed,
    /// The policy does not ask for this rule.
    NotRequested,
}

/// The result of one rule.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct RuleResult {
    /// The rule.
    pub rule: Rule,
    /// Its outcome.
    pub outcome: Outcome,
    /// Why it failed (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<String>,
}

/// Every rule's result.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ComplianceReport {
    /// One per rule, in the order of [`Rule`].
    pub rules: Vec<RuleResult>,
}

impl ComplianceReport {
    /// Whether no rule failed.
    pub fn passed(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The rules that failed.
    pub fn failures(&self) -> impl Iterator<Item = &RuleResult> {
        self.rules.iter().filter(|r| r.outcome == Outcome::Failed)
    }
}

fn result(rule: Rule, requested: bool, reasons: Vec<String>) -> RuleResult {
    let outcome = match (requested, reasons.is_empty()) {
        (false, _) => Outcome::NotRequested,
        (true, true) => Outcome::Passed,
        (true, false) => Outcome::Failed,
    };
    RuleResult {
        rule,
        outcome,
        reasons,
    }
}

/// The card, or the reason it is unusable as the one reason of a rule that needs it.
fn with_card(facts: &ModelFacts, check: impl FnOnce(&ModelCard) -> Vec<String>) -> Vec<String> {
    match &facts.card {
        Ok(card) => check(card),
        Err(why) => vec![why.clone()],
    }
}

/// Gathers the facts at `path` (a model directory or its card) and evaluates `policy`.
pub fn evaluate_path(
    path: &Path,
    scan: &ScanReport,
    policy: &CompliancePolicy,
) -> Result<ComplianceReport, ComplianceError> {
    Ok(evaluate(&ModelFacts::gather(path, scan)?, policy))
}

/// Evaluates every rule of `policy` on `facts`.
pub fn evaluate(facts: &ModelFacts, policy: &CompliancePolicy) -> ComplianceReport {
    let licence = if policy.allowed_licenses.is_empty() {
        Vec::new()
    } else {
        with_card(facts, |card| {
            license::check(card, &policy.allowed_licenses)
                .err()
                .into_iter()
                .collect()
        })
    };
    let fields = if policy.required_model_card_fields.is_empty() {
        Vec::new()
    } else {
        with_card(facts, |card| {
            policy
                .required_model_card_fields
                .iter()
                .filter(|f| card.field(f).is_none())
                .map(|f| format!("model card field {f:?} is missing or empty"))
                .collect()
        })
    };
    let annex = if policy.annex_xi {
        with_card(facts, |card| {
            annex_xi::missing(card)
                .into_iter()
                .map(|item| {
                    format!(
                        "Annex XI {} ({}) not documented: {}; add a front-matter key ({}) or a heading ({})",
                        item.point,
                        item.id,
                        item.requirement,
                        item.keys.join(", "),
                        item.headings.join(", ")
                    )
                })
                .collect()
        })
    } else {
        Vec::new()
    };
    let size = match policy.max_size_bytes {
        Some(max) if facts.total_size > max => vec![format!(
            "the model's files total {} bytes, over the limit of {max}",
            facts.total_size
        )],
        _ => Vec::new(),
    };
    let formats = facts
        .files
        .iter()
        .filter(|(_, format)| match format {
            Format::Json | Format::Text => false,
            f => !policy.allowed_formats.contains(f),
        })
        .map(|(path, format)| format!("{path}: format {format} is not allowed"))
        .collect();
    ComplianceReport {
        rules: vec![
            result(Rule::License, !policy.allowed_licenses.is_empty(), licence),
            result(
                Rule::ModelCardFields,
                !policy.required_model_card_fields.is_empty(),
                fields,
            ),
            result(Rule::AnnexXi, policy.annex_xi, annex),
            result(Rule::MaxSize, policy.max_size_bytes.is_some(), size),
            result(Rule::AllowedFormats, true, formats),
        ],
    }
}
