//! What a scan found: per file its format, verdict and findings; per model the worst verdict.

use std::{collections::BTreeSet, fmt};

use serde::{Deserialize, Serialize};

/// A file format the scanner recognises.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A raw Python pickle (`.pkl`, a legacy `torch.save` file).
    Pickle,
    /// A PyTorch zip archive (`torch.save` since 1.6): pickles plus raw storages.
    Pytorch,
    /// safetensors: a JSON header and raw tensor data.
    Safetensors,
    /// GGUF, llama.cpp's format.
    Gguf,
    /// ONNX (`.onnx`), recognised but not analysed.
    Onnx,
    /// A JSON document (configs, tokenizers).
    Json,
    /// UTF-8 text that no loader executes (model card, vocabulary, attributes).
    Text,
    /// Source code a loader may execute (`trust_remote_code`), not analysed.
    Code,
    /// Anything else.
    Unknown,
}

impl Format {
    /// Whether the format holds model weights (the formats a policy's allowed list names);
    /// JSON, text and code are the files around them.
    pub fn is_weights(self) -> bool {
        matches!(
            self,
            Self::Pickle | Self::Pytorch | Self::Safetensors | Self::Gguf | Self::Onnx
        )
    }

    /// The lowercase name used in reports and policies.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pickle => "pickle",
            Self::Pytorch => "pytorch",
            Self::Safetensors => "safetensors",
            Self::Gguf => "gguf",
            Self::Onnx => "onnx",
            Self::Json => "json",
            Self::Text => "text",
            Self::Code => "code",
            Self::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How safe a file (or model) is to load. Ordered from best to worst, so the verdict of a
/// set of files is the maximum of theirs.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Fully parsed within the budgets; nothing objectionable.
    Safe,
    /// Not analysed (unknown format, code, unreadable), or not analysed to the end.
    Unknown,
    /// Imports a global outside the allowlist, or is malformed or over a budget in a way
    /// that a loader might interpret differently from the scanner.
    Unsafe,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Safe => "Safe",
            Self::Unknown => "Unknown",
            Self::Unsafe => "Unsafe",
        })
    }
}

/// Stable category of a finding, for metrics and policy decisions.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// A pickle imports a global outside the safe-globals allowlist.
    ForbiddenGlobal,
    /// A pickle imports or calls something the scanner cannot resolve statically
    /// (`STACK_GLOBAL` on computed strings, the copyreg extension registry, a call of a
    /// value that is not an imported global, `BUILD` on an imported global).
    UnresolvedImport,
    /// The structure is invalid or truncated.
    Malformed,
    /// A budget or bound was exceeded (opcodes, time, header length, zip bomb limits).
    LimitExceeded,
    /// An archive entry with a path-traversal or absolute name, a link, or encryption.
    UnsafeArchiveEntry,
    /// Not analysed: unknown format, code, unsupported compression, unreadable.
    NotScanned,
}

impl FindingKind {
    /// The verdict a finding of this kind forces on its file.
    pub fn verdict(self) -> Verdict {
        match self {
            Self::NotScanned => Verdict::Unknown,
            _ => Verdict::Unsafe,
        }
    }
}

/// A finding of a format scanner, before it is attached to a file: where in the stream
/// (or in which archive member) and what.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// Category.
    pub kind: FindingKind,
    /// Archive member the offset refers to, for findings inside a PyTorch zip.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// Byte offset in the file (or member) where the problem is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// What is wrong, in words a person can act on.
    pub message: String,
}

impl Issue {
    pub(crate) fn new(kind: FindingKind, offset: Option<u64>, message: impl Into<String>) -> Self {
        Self {
            kind,
            member: None,
            offset,
            message: message.into(),
        }
    }

    pub(crate) fn in_member(mut self, member: &str) -> Self {
        self.member = Some(member.to_owned());
        self
    }
}

/// A finding attached to its file.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// Path of the file, relative to the scanned directory (`/`-separated).
    pub file: String,
    /// The finding.
    #[serde(flatten)]
    pub issue: Issue,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)?;
        if let Some(m) = &self.issue.member {
            write!(f, "!{m}")?;
        }
        if let Some(o) = self.issue.offset {
            write!(f, " @{o}")?;
        }
        write!(f, ": {}", self.issue.message)
    }
}

/// Most findings kept per file; one more says how many were dropped.
pub(crate) const MAX_FINDINGS_PER_FILE: usize = 64;

/// The scan of one file.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct FileReport {
    /// Path relative to the scanned directory (`/`-separated); the file name for a single
    /// file.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Format detected from the content (and the extension where content is ambiguous).
    pub format: Format,
    /// The worst verdict of the findings; `Safe` when there are none.
    pub verdict: Verdict,
    /// Globals the file's pickles import, `module.name`, sorted (empty for other formats).
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub globals: BTreeSet<String>,
    /// What the scan objected to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Issue>,
}

impl FileReport {
    pub(crate) fn new(
        path: String,
        size: u64,
        format: Format,
        mut findings: Vec<Issue>,
        globals: BTreeSet<String>,
    ) -> Self {
        let verdict = findings
            .iter()
            .map(|i| i.kind.verdict())
            .max()
            .unwrap_or(Verdict::Safe);
        if findings.len() > MAX_FINDINGS_PER_FILE {
            let dropped = findings.len() - MAX_FINDINGS_PER_FILE;
            findings.truncate(MAX_FINDINGS_PER_FILE);
            findings.push(Issue::new(
                findings[0].kind,
                None,
                format!("{dropped} more findings of this file not listed"),
            ));
        }
        Self {
            path,
            size,
            format,
            verdict,
            globals,
            findings,
        }
    }
}

/// The scan of a model: every file, and the worst verdict.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ScanReport {
    /// `Unsafe` if any file is, else `Unknown` if any file is (or there are no files), else
    /// `Safe`.
    pub verdict: Verdict,
    /// Every regular file, sorted by path.
    pub files: Vec<FileReport>,
}

impl ScanReport {
    /// The report of these files (scanned one by one, e.g. with
    /// [`crate::scan_reader`]): sorted by path, with the worst verdict.
    pub fn from_files(mut files: Vec<FileReport>) -> Self {
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let verdict = files
            .iter()
            .map(|f| f.verdict)
            .max()
            .unwrap_or(Verdict::Unknown);
        Self { verdict, files }
    }

    /// Every finding, attached to its file, in file order.
    pub fn findings(&self) -> impl Iterator<Item = Finding> + '_ {
        self.files.iter().flat_map(|f| {
            f.findings.iter().map(|i| Finding {
                file: f.path.clone(),
                issue: i.clone(),
            })
        })
    }

    /// The formats detected, each once.
    pub fn formats(&self) -> BTreeSet<Format> {
        self.files.iter().map(|f| f.format).collect()
    }

    /// Sum of the files' sizes in bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Paths of the files with the given verdict.
    pub fn files_with(&self, verdict: Verdict) -> impl Iterator<Item = &str> {
        self.files
            .iter()
            .filter(move |f| f.verdict == verdict)
            .map(|f| f.path.as_str())
    }
}

/// What to do with pickled content (the `ModelAttestation` CRD's `spec.policy.pickle`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PickleHandling {
    /// Any pickle-bearing file (raw pickle, PyTorch archive) is unsafe.
    #[default]
    Deny,
    /// Pickles are judged by the allowlist: the scan's verdict as it is.
    AllowSafeGlobals,
    /// Imports outside the allowlist are accepted (loading such a pickle can run any
    /// code); malformed or over-budget pickles still are not.
    Allow,
}

impl FileReport {
    /// This file's verdict under a pickle handling.
    pub fn verdict_under(&self, handling: PickleHandling) -> Verdict {
        let pickled =
            matches!(self.format, Format::Pickle | Format::Pytorch) || !self.globals.is_empty();
        match handling {
            PickleHandling::Deny if pickled => Verdict::Unsafe,
            PickleHandling::Allow if pickled => self
                .findings
                .iter()
                .filter(|i| {
                    !matches!(
                        i.kind,
                        FindingKind::ForbiddenGlobal | FindingKind::UnresolvedImport
                    )
                })
                .map(|i| i.kind.verdict())
                .max()
                .unwrap_or(Verdict::Safe),
            _ => self.verdict,
        }
    }
}

impl ScanReport {
    /// The model's verdict under a pickle handling (the worst of its files').
    pub fn verdict_under(&self, handling: PickleHandling) -> Verdict {
        self.files
            .iter()
            .map(|f| f.verdict_under(handling))
            .max()
            .unwrap_or(Verdict::Unknown)
    }
}
